"""``replay --splice``: the whole reference model with the candidates swapped in, diffed.

Isolated replay judges each layer on the reference's own inputs; it cannot say whether a
small per-layer difference stays small once it feeds the rest of the network. Splicing runs
the recipe's model with every matched module replaced (module candidates built with the
recorded constructor arguments and loaded with the reference weights; factory candidates
wrapped in an ``nn.Module`` that owns those weights under the same names), each step from
the reference's weights at that step, torch's RNG at the state the reference had at the
step's first call, and the recipe's ``run_step``; records that run; and diffs the two
traces. The error-growth table lists, layer by layer in forward order, how far outputs
moved; the step results compare the loss.
"""

from __future__ import annotations

import contextlib
import fnmatch
import inspect
import math
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from rich.text import Text
from torch import nn

import recorder
import tracefmt
from recorder import rebuild_torch, tensor_from_trace
from recorder._recipe import _seed_everything, _unwrap, run_recorded_step
from recorder._state import restore_flags

from ._candidates import (
    CandidateSet,
    CandidateSpec,
    load_candidates,
    parameter_names,
    reference_weights,
)
from ._diff import diff_traces
from ._report import ReplayReport
from ._tolerance import ToleranceTable

__all__ = ["splice_run", "GrowthRow", "growth_rows", "render_growth", "FactoryAdapter"]


class FactoryAdapter(nn.Module):
    """A factory candidate as a module: the reference weights are its own parameters and
    buffers, under the reference's state-dict names (so the spliced trace's parameter
    gradients line up), and the factory is called again whenever they are reloaded."""

    def __init__(self, factory: Any, path: str, type_name: str, args: tuple[Any, ...],
                 kwargs: dict[str, Any], weights: dict[str, torch.Tensor],
                 param_names: set[str]) -> None:
        super().__init__()
        self._factory, self._path, self._type = factory, path, type_name
        self._args, self._kwargs = args, kwargs
        for name, t in weights.items():
            owner: nn.Module = self
            *parents, leaf = name.split(".")
            for part in parents:
                if not hasattr(owner, part):
                    owner.add_module(part, nn.Module())
                owner = getattr(owner, part)
            if name in param_names and (t.is_floating_point() or t.is_complex()):
                owner.register_parameter(leaf, nn.Parameter(t.detach().clone()))
            else:
                owner.register_buffer(leaf, t.detach().clone())
        self.rebuild()

    def rebuild(self) -> None:
        """Call the factory on the current weights (after ``load_state_dict``)."""
        weights = dict(self.named_parameters()) | dict(self.named_buffers())
        device = next(iter(weights.values())).device if weights else torch.device("cpu")
        spec = CandidateSpec(self._path, self._type, self._args, self._kwargs, weights, device,
                             self.training)
        fn = self._factory(spec)
        if not callable(fn):
            raise TypeError(f"factory {self._factory!r} returned {type(fn).__name__}, "
                            "not a callable")
        if isinstance(fn, nn.Module):
            fn.train(self.training)
        object.__setattr__(self, "_fn", fn)  # not a submodule: its names must not show

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*args, **kwargs)


@dataclass(frozen=True)
class GrowthRow:
    """One layer call of the spliced run: how far its outputs are from the reference's."""

    step: int
    call: int
    label: str
    depth: int
    max_abs_err: float | None
    status: str
    swapped: bool


def _type_name(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


class _Splicer:
    def __init__(self, reader: tracefmt.TraceReader, candidates: CandidateSet,
                 device: torch.device, only: tuple[str, ...]) -> None:
        self.reader, self.candidates, self.device = reader, candidates, device
        self.only = only
        self.swapped: dict[str, nn.Module] = {}

    def build(self, recipe: recorder.Recipe, step: int) -> nn.Module:
        model = _unwrap(recipe.build_model()).to(self.device)
        paths = [p for p, _ in model.named_modules()]
        recorded = [m.path for m in self.reader.modules]
        if paths != recorded:
            missing = sorted(set(recorded) - set(paths)) or sorted(set(paths) - set(recorded))
            raise tracefmt.UsageError(
                f"the recipe's model does not match the trace's modules (e.g. {missing[:3]})")
        for path, module in list(model.named_modules()):
            if any(path == s or path.startswith(s + ".") for s in self.swapped):
                continue
            if self.only and not any(fnmatch.fnmatchcase(path or "<root>", g) for g in self.only):
                continue
            hit = self.candidates.match(path, _type_name(module))
            if hit is None:
                continue
            new = self._build_one(path, hit[1], step).to(self.device)
            if path:
                parent, _, name = path.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, name, new)
            else:
                model = new
            self.swapped[path] = new
        return model

    def _build_one(self, path: str, cand: Any, step: int) -> nn.Module:
        info = self.reader.module_info(path)
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = {}
        if info.ctor is not None:
            args = tuple(rebuild_torch(info.ctor.get("args", {"$": "tuple", "items": []}),
                                       self.reader))
            kwargs = dict(rebuild_torch(info.ctor.get("kwargs", {"$": "dict", "items": []}),
                                        self.reader))
        weights = reference_weights(self.reader, path, step, device=self.device)
        if inspect.isclass(cand) and issubclass(cand, nn.Module):
            if info.ctor is None:
                raise tracefmt.UsageError(f"constructor arguments of {path or '<root>'} were not "
                                          "recorded; use a factory candidate")
            module = cand(*args, **kwargs)
            module.load_state_dict(weights, strict=True)
            return module
        return FactoryAdapter(cand, path, info.type, args, kwargs, weights,
                              parameter_names(self.reader, path))

    def load_step(self, model: nn.Module, step: int) -> None:
        """The reference's weights at ``step``: the rest of the model, then each candidate."""
        everything = reference_weights(self.reader, "", step, device=self.device)
        rest = {k: v for k, v in everything.items()
                if not any(s == "" or k.startswith(s + ".") for s in self.swapped)}
        if rest:
            missing, _ = model.load_state_dict(rest, strict=False)
            missing = [k for k in missing
                       if not any(s == "" or k.startswith(s + ".") for s in self.swapped)]
            if missing:
                raise tracefmt.UsageError(f"the trace has no weights for {missing[:3]} at step "
                                          f"{step}")
        for path, module in self.swapped.items():
            module.load_state_dict(reference_weights(self.reader, path, step, device=self.device),
                                   strict=True)
            if isinstance(module, FactoryAdapter):
                module.rebuild()

    def set_modes(self, model: nn.Module, step: int) -> None:
        """Training flags as each module had them at its first call of the step."""
        first = {}
        for call in self.reader.calls(step=step):
            first.setdefault(call.module, call.training)
        model.train(first.get("", model.training))
        for path, module in model.named_modules():
            if path in first and not any(path.startswith(s + ".") for s in self.swapped if s):
                module.training = first[path]
        for path, module in self.swapped.items():
            module.train(first.get(path, module.training))

    def restore_rng(self, step: int) -> None:
        """torch's RNG as the reference had it at the step's first recorded call."""
        first = next(iter(self.reader.calls(step=step)), None)
        rng = (first.rng if first else None) or {}
        if isinstance(rng.get("cpu"), int):
            torch.set_rng_state(tensor_from_trace(self.reader, rng["cpu"], keep_strides=False))
        cuda = rng.get("cuda") or []
        if self.device.type == "cuda" and cuda:
            idx = self.device.index or 0
            if idx < len(cuda):
                state = tensor_from_trace(self.reader, cuda[idx], keep_strides=False)
                torch.cuda.set_rng_state(state, self.device)


@contextlib.contextmanager
def _trace_path(keep: str | None) -> Iterator[Path]:
    if keep:
        yield Path(keep)
        return
    tmp = Path(tempfile.mkdtemp(prefix="tensortrace-splice-"))
    try:
        yield tmp / "spliced.h5"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def splice_run(
    trace: str,
    candidates: CandidateSet | str,
    recipe: recorder.Recipe | str,
    *,
    device: str = "cpu",
    step: int | None = None,
    tolerances: ToleranceTable | None = None,
    only: tuple[str, ...] = (),
    splice_trace: str | None = None,
    keep_outputs: bool = False,
) -> tuple[ReplayReport, list[GrowthRow]]:
    """Run the recipe with the candidates spliced in and diff it against ``trace``.

    ``only`` globs limit which module paths get their candidate; ``splice_trace`` keeps the
    spliced run's trace (else it is written to a temporary directory and removed).
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise tracefmt.UsageError("--device cuda asked for, but this torch sees no CUDA device")
    if isinstance(candidates, str):
        candidates = load_candidates(candidates)
    if isinstance(recipe, str):
        recipe = recorder.load_recipe(recipe)
    with tracefmt.open_trace(trace) as reader:
        steps = reader.steps if step is None else [step]
        if step is not None and step not in reader.steps:
            raise tracefmt.UsageError(f"no step {step} in this trace", path=trace)
        options = reader.run.options
        seed = options.get("seed")
        flags = reader.run.environment.get("flags", {}) or {}
        splicer = _Splicer(reader, candidates, dev, only)
        with _trace_path(splice_trace) as out:
            if isinstance(seed, int):
                _seed_everything(seed)
            model = splicer.build(recipe, steps[0])
            rec_options = recorder.RecordOptions(
                grad_scale=float(options.get("grad_scale", 1.0) or 1.0))
            rec = recorder.Recorder(model, out, options=rec_options,
                                    recipe=f"{recipe.name} spliced with {candidates.source}",
                                    seed=seed if isinstance(seed, int) else None)
            try:
                for s in steps:
                    splicer.load_step(model, s)
                    splicer.set_modes(model, s)
                    restore_flags(flags)
                    splicer.restore_rng(s)
                    model.zero_grad(set_to_none=True)
                    rec.step_index = s
                    run_recorded_step(rec, recipe.run_step, model, s)
            except BaseException:
                rec.close(complete=False)
                raise
            rec.close(complete=True)
            report = diff_traces(reader, str(out), tolerances=tolerances, step=step,
                                 keep_outputs=keep_outputs)
        report.mode = "splice"
        report.candidates = candidates.source
        report.device = str(dev)
        return report, growth_rows(report, reader, set(splicer.swapped))


def growth_rows(report: ReplayReport, reader: tracefmt.TraceReader, swapped: set[str]
                ) -> list[GrowthRow]:
    """Forward results in forward order, with each call's depth and largest output error."""
    rows = []
    for r in report.results:
        if r.phase != "forward" or r.status == "skipped":
            continue
        errs = [t.max_abs_err for t in r.tensors if t.max_abs_err is not None]
        nonfinite = any(t.nonfinite_mismatch_count or t.shape_mismatch for t in r.tensors)
        worst = float("nan") if nonfinite else (max(errs) if errs else None)
        depth = reader.call(r.call, backward=False).depth if r.call in reader.call_ids else 0
        rows.append(GrowthRow(r.step, r.call, r.label, depth, worst, r.status, r.module in swapped))
    return rows


def _bar(err: float | None) -> Text:
    """A log-scale bar: one block per decade above 1e-9, red from 1e-3 up (or non-finite)."""
    if err is None:
        return Text("")
    if math.isnan(err) or math.isinf(err):
        return Text("non-finite", style="bold red")
    n = 0 if err <= 0 else max(0, min(12, int(math.floor(math.log10(err))) + 10))
    return Text("█" * n, style="red" if err >= 1e-3 else "yellow" if err >= 1e-6 else "green")


def render_growth(rows: list[GrowthRow], *, max_depth: int | None = 2) -> Table:
    """The error-growth table: layer calls in forward order (those at most ``max_depth``
    deep, and every swapped layer; None for all), largest output error and a log bar."""
    table = Table(title="error growth (largest |output error| per layer, forward order)",
                  title_justify="left", show_edge=False, pad_edge=False)
    for col, just in (("step", "right"), ("call", "right"), ("layer", "left"),
                      ("max|err|", "right"), ("", "left"), ("status", "left")):
        table.add_column(col, justify=just, overflow="fold")
    for r in rows:
        if max_depth is not None and r.depth > max_depth and not r.swapped:
            continue
        label = Text(r.label + (" *" if r.swapped else ""), style="bold" if r.swapped else "")
        err = "-" if r.max_abs_err is None else f"{r.max_abs_err:.2e}"
        table.add_row(str(r.step), str(r.call), label, err, _bar(r.max_abs_err),
                      Text(r.status, style="green" if r.status == "pass" else "bold red"))
    table.caption = "* candidate swapped in"
    return table
