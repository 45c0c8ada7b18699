"""Isolated replay: each recorded call of a module with a candidate, forward then backward.

For every call: restore the recorded RNG state, precision flags and training mode; run the
candidate on the recorded inputs (weights from the call's step); compare its outputs; then
run its backward with the recorded output gradients and compare input gradients. Parameter
gradients are compared per module and step, against the recorded total, once every call of
that module in the step has been replayed (the sum over calls is what autograd recorded).
"""

from __future__ import annotations

import fnmatch
import importlib
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import tracefmt
from recorder import rebuild_torch, tensor_from_trace
from recorder._state import restore_flags
from recorder._torchio import dtype_name
from tracefmt._traceset import reduced_grads_note

from ._candidates import BuiltCandidate, CandidateSet, build_candidate, reference_weights
from ._compare import TensorComparison, compare_tensors
from ._report import CallResult, ReplayReport
from ._tolerance import ToleranceTable, broadcast_term_sum, parse_tolerance_overrides

__all__ = ["ReplayOptions", "replay_trace", "Comparer", "flatten_named"]


@dataclass(frozen=True)
class ReplayOptions:
    """How to replay: device, which calls, tolerances, the float64 noise floor, and whether
    candidates run in a child process (``isolate``, ``timeout`` seconds per call)."""

    device: str = "cpu"
    only: tuple[str, ...] = ()
    step: int | None = None
    tolerances: ToleranceTable | None = None
    noise_floor: bool = False
    keep_outputs: bool = False
    isolate: bool = False
    timeout: float = 60.0


def flatten_named(value: Any, prefix: str) -> dict[str, Any]:
    """Tensors of a nested value by the trace's leaf names (``outputs``, ``outputs.1``, ...)."""
    found: list[Any] = []

    def leaf(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            found.append(obj)
            return {"$": "tensor", "id": len(found) - 1}
        if isinstance(obj, (torch.dtype, torch.device)):
            return str(obj)
        return NotImplemented

    node = tracefmt.describe(value, leaf)
    return {name: found[i] for name, i in tracefmt.iter_tensor_leaves(node, prefix)}


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.dtype in (torch.bfloat16,) or "float8" in str(t.dtype) or t.dtype == torch.float16:
        t = t.float() if t.dtype != torch.float16 else t
    if t.dtype == torch.complex32:
        t = t.to(torch.complex64)
    return t.cpu().numpy()


class Comparer:
    """Compares tensors against recorded ones with the right tolerance per dtype and module."""

    def __init__(self, reader: tracefmt.TraceReader, tolerances: ToleranceTable | None) -> None:
        self.reader = reader
        self.table = tolerances or parse_tolerance_overrides(None)

    def compare(self, name: str, ref_id: int, cand: torch.Tensor | None, *, module: str,
                input_scale: float | None = None, f64: torch.Tensor | None = None,
                batched: bool = True) -> TensorComparison:
        """``batched`` False for tensors whose first axis is not the batch (parameters)."""
        info = self.reader.tensor(ref_id)
        ref = self.reader.read(ref_id)
        tol = self.table.tolerance_for(info.dtype, module)
        if cand is None:
            cand_np = np.full(ref.shape, np.nan, dtype=np.float64) if ref.dtype.kind in "fc" \
                else np.zeros(ref.shape, dtype=ref.dtype)
            cand_dtype = info.dtype
        else:
            cand_np = _to_numpy(cand)
            cand_dtype = dtype_name(cand.dtype)
        return compare_tensors(
            ref, cand_np, dtype=info.dtype, tolerance=tol, input_scale=input_scale,
            batch_dim=0 if ref.ndim and batched else None, name=name, candidate_dtype=cand_dtype,
            float64_reference=None if f64 is None else f64.detach().cpu().numpy(),
        )


def _import_type(type_name: str) -> type | None:
    mod, _, cls = type_name.rpartition(".")
    try:
        obj: Any = importlib.import_module(mod)
        for part in cls.split("."):
            obj = getattr(obj, part)
        return obj if isinstance(obj, type) else None
    except (ImportError, AttributeError):
        return None


_NO_CUDA_RNG = ("the trace has no CUDA RNG state (recorded on another device): random ops "
                "such as dropout will not draw what the reference drew")


def _max_abs(tensors: Any) -> float | None:
    vals = [float(t.detach().abs().max()) for t in tensors
            if isinstance(t, torch.Tensor) and t.numel() and (t.is_floating_point() or t.is_complex())]
    vals = [v for v in vals if np.isfinite(v)]
    return max(vals) if vals else None


class _Replayer:
    def __init__(self, reader: tracefmt.TraceReader, candidates: CandidateSet,
                 options: ReplayOptions) -> None:
        self.reader = reader
        self.candidates = candidates
        self.options = options
        self.device = torch.device(options.device)
        self.comparer = Comparer(reader, options.tolerances)
        self.flags = reader.run.environment.get("flags", {}) or {}
        self._built: dict[tuple[str, int], BuiltCandidate] = {}
        self._param_grads: dict[tuple[str, int], dict[str, torch.Tensor]] = defaultdict(dict)
        self._f64_param_grads: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
        # per parameter, the sum of |terms| its gradient adds up, over the step's calls
        self._param_scales: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
        self._f64_missing: set[tuple[str, int]] = set()
        self._remaining: dict[tuple[str, int], int] = {}
        self._all_selected: list[tracefmt.CallRecord] = []
        self.outputs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
        self.lost_param_grads: set[tuple[str, int]] = set()
        self._notes: list[str] = []
        self.on_phase: Callable[[int, str, CallResult | None], None] | None = None

    def selected_calls(self) -> list[tracefmt.CallRecord]:
        out = []
        for call in self.reader.calls(step=self.options.step):
            if self.options.only and not any(
                fnmatch.fnmatchcase(call.module or "<root>", g) for g in self.options.only
            ):
                continue
            if self.candidates.match(call.module, call.type) is None:
                continue
            out.append(call)
        return out

    def prepare(self, call_ids: Iterable[int] | None = None) -> list[tracefmt.CallRecord]:
        """Select the calls and return those to run now (``call_ids``, or all selected).

        Parameter gradients are summed over the calls run here; a module whose earlier calls
        ran elsewhere (a crashed child process) is listed in ``lost_param_grads``.
        """
        calls = self.selected_calls()
        self._all_selected = calls
        if call_ids is not None:
            wanted = set(call_ids)
            calls = [c for c in calls if c.call in wanted]
        self._remaining = dict(Counter((c.module, c.step) for c in calls))
        return calls

    def _candidate(self, call: tracefmt.CallRecord) -> tuple[str, BuiltCandidate]:
        key, cand = self.candidates.match(call.module, call.type)  # type: ignore[misc]
        built = build_candidate(cand, self.reader, call, device=self.device)
        return key, built

    def _restore(self, call: tracefmt.CallRecord) -> None:
        restore_flags(self.flags)
        rng = call.rng or {}
        if isinstance(rng.get("cpu"), int):
            torch.set_rng_state(tensor_from_trace(self.reader, rng["cpu"], keep_strides=False))
        cuda = rng.get("cuda") or []
        idx = self.device.index or 0
        if self.device.type == "cuda" and idx < len(cuda):
            state = tensor_from_trace(self.reader, cuda[idx], keep_strides=False)
            torch.cuda.set_rng_state(state, self.device)
        elif self.device.type == "cuda" and call.training and _NO_CUDA_RNG not in self._notes:
            self._notes.append(_NO_CUDA_RNG)

    def run_call(self, call: tracefmt.CallRecord) -> tuple[CallResult, CallResult | None]:
        base = dict(call=call.call, module=call.module, type=call.type, step=call.step,
                    index=call.index)
        has_bwd = call.backward is not None
        if not call.replayable:
            notes = list(call.notes) or ["not replayable"]
            fwd = CallResult(phase="forward", status="skipped", notes=notes, **base)
            bwd = CallResult(phase="backward", status="skipped", notes=notes, **base) if has_bwd else None
            self._remaining[(call.module, call.step)] -= 1
            return fwd, bwd
        start = time.perf_counter()
        self._notes = []
        if self.on_phase:
            self.on_phase(call.call, "forward", None)
        try:
            key, built = self._candidate(call)
            args = rebuild_torch(call.args, self.reader, device=self.device)
            kwargs = rebuild_torch(call.kwargs, self.reader, device=self.device)
            grads_in = call.backward.grad_args if has_bwd else None
            want = set(tracefmt.iter_tensor_leaves(grads_in, "args")) if grads_in else set()
            want_names = {n for n, _ in want}
            if call.backward is not None:
                want_names |= {n for n, _ in tracefmt.iter_tensor_leaves(call.backward.grad_kwargs, "kwargs")}
            inputs = flatten_named(tuple(args), "args") | flatten_named(dict(kwargs), "kwargs")
            for name, t in inputs.items():
                if name in want_names and (t.is_floating_point() or t.is_complex()):
                    t.requires_grad_(True)
            self._restore(call)
            with torch.set_grad_enabled(call.grad_enabled):
                out = built.fn(*args, **kwargs)
        except Exception as exc:
            tb = traceback.format_exc()
            fwd = CallResult(phase="forward", status="error", error=f"{type(exc).__name__}: {exc}",
                             traceback=tb, seconds=time.perf_counter() - start, **base)
            self._remaining[(call.module, call.step)] -= 1
            bwd = CallResult(phase="backward", status="skipped", notes=["forward raised"], **base) \
                if has_bwd else None
            return fwd, bwd
        f64_out, f64_grads = self._float64_reference(call, args, kwargs) if self.options.noise_floor \
            else (None, None)
        cand_outs = flatten_named(out, "outputs")
        fwd_tensors = []
        for name, ref_id in tracefmt.iter_tensor_leaves(call.outputs, "outputs"):
            fwd_tensors.append(self.comparer.compare(
                name, ref_id, cand_outs.get(name), module=call.module, input_scale=None,
                f64=(f64_out or {}).get(name)))
        notes, self._notes = self._notes, []
        if self.options.noise_floor and f64_out is None:
            notes.append(f"no float64 reference: {call.type} could not be imported or rebuilt "
                         "here, so this call was judged by tolerance")
        fwd = CallResult(phase="forward", status=_status(fwd_tensors), tensors=fwd_tensors,
                         candidate=key, seconds=time.perf_counter() - start, notes=notes, **base)
        if self.options.keep_outputs:
            self.outputs[(call.call, "forward")] = {k: v.detach() for k, v in cand_outs.items()}
        bwd = None
        if has_bwd:
            if self.on_phase:
                self.on_phase(call.call, "backward", fwd)
            bwd = self._backward(call, built, key, inputs, cand_outs, f64_grads, base)
        else:
            self._remaining[(call.module, call.step)] -= 1
        return fwd, bwd

    def _backward(self, call: tracefmt.CallRecord, built: BuiltCandidate, key: str,
                  inputs: dict[str, torch.Tensor], cand_outs: dict[str, torch.Tensor],
                  f64_grads: dict[str, torch.Tensor] | None, base: dict) -> CallResult:
        start = time.perf_counter()
        bwd_rec = call.backward
        assert bwd_rec is not None
        grad_out_ids = dict(tracefmt.iter_tensor_leaves(bwd_rec.grad_outputs, "outputs"))
        try:
            outs, grads = [], []
            for name, gid in grad_out_ids.items():
                t = cand_outs.get(name)
                if t is None or not t.requires_grad:
                    continue
                outs.append(t)
                grads.append(tensor_from_trace(self.reader, gid, device=self.device).to(t.dtype))
            if outs:
                torch.autograd.backward(outs, grads)
        except Exception as exc:
            self._remaining[(call.module, call.step)] -= 1
            return CallResult(phase="backward", status="error", error=f"{type(exc).__name__}: {exc}",
                              traceback=traceback.format_exc(),
                              seconds=time.perf_counter() - start, candidate=key, **base)
        g_scale = _max_abs(grads)
        tensors = []
        for name, gid in tracefmt.iter_tensor_leaves(bwd_rec.grad_args, "args"):
            tensors.append(self._cmp_grad(name, gid, inputs.get(name), call, g_scale, f64_grads))
        for name, gid in tracefmt.iter_tensor_leaves(bwd_rec.grad_kwargs, "kwargs"):
            tensors.append(self._cmp_grad(name, gid, inputs.get(name), call, g_scale, f64_grads))
        mkey = (call.module, call.step)
        acc = self._param_grads[mkey]
        scales = self._param_scales[mkey]
        by_shape: dict[tuple[int, ...], float | None] = {}  # a norm's weight and bias share one
        for pname, p in built.params.items():
            if p.grad is not None:
                acc[pname] = acc[pname] + p.grad.detach() if pname in acc else p.grad.detach().clone()
                shape = tuple(p.shape)
                if shape not in by_shape:
                    by_shape[shape] = broadcast_term_sum(shape, grads)
                term_sum = by_shape[shape]
                if term_sum is not None:
                    scales[pname] = scales.get(pname, 0.0) + term_sum
        self._accumulate_f64(mkey, f64_grads)
        self._remaining[mkey] -= 1
        notes = []
        if self._remaining[mkey] == 0:
            f64_acc = self._f64_param_grads.pop(mkey, None)
            term_sums = self._param_scales.pop(mkey, {})
            tensors.extend(self._param_comparisons(call, acc, g_scale, notes, f64_acc, term_sums))
            self._param_grads.pop(mkey, None)
        if self.options.keep_outputs:
            self.outputs[(call.call, "backward")] = {
                n: inputs[n].grad.detach() for n in inputs if inputs[n].grad is not None}
        return CallResult(phase="backward", status=_status(tensors), tensors=tensors, candidate=key,
                          seconds=time.perf_counter() - start, notes=notes, **base)

    def _cmp_grad(self, name: str, gid: int, t: torch.Tensor | None, call: tracefmt.CallRecord,
                  scale: float | None, f64: dict[str, torch.Tensor] | None) -> TensorComparison:
        grad = t.grad if t is not None else None
        return self.comparer.compare(name, gid, grad, module=call.module, input_scale=scale,
                                     f64=(f64 or {}).get(name))

    def _accumulate_f64(self, mkey: tuple[str, int], f64: dict[str, torch.Tensor] | None) -> None:
        """Sum the float64 reference's parameter gradients like the candidate's; one call
        without them (no noise floor, or the reference class would not rebuild) drops all."""
        if mkey in self._f64_missing:
            return
        params = {k: v for k, v in (f64 or {}).items() if k.startswith("param.")}
        if not params:
            self._f64_missing.add(mkey)
            self._f64_param_grads.pop(mkey, None)
            return
        acc = self._f64_param_grads.setdefault(mkey, {})
        for name, g in params.items():
            acc[name] = acc[name] + g if name in acc else g.detach().clone()

    def _param_comparisons(self, call: tracefmt.CallRecord, acc: dict[str, torch.Tensor],
                           scale: float | None, notes: list[str],
                           f64: dict[str, torch.Tensor] | None = None,
                           term_sums: dict[str, float] | None = None) -> list[TensorComparison]:
        """Compare the step's summed parameter gradients of one module. A gradient that is a
        grad output summed over its leading dims (a bias) is judged against the sum of the
        |terms| it added up (``broadcast_term_sum``), as its rounding error scales with it;
        others against ``scale``, the largest |grad output|."""
        recorded = self.reader.param_grads(call.step)
        if recorded is None:
            return []
        reduced = reduced_grads_note(self.reader)  # DDP/FSDP rank trace: grads are averages
        if reduced is not None:
            notes.append(reduced)
            return []
        if (call.module, call.step) in self.lost_param_grads:
            notes.append("parameter gradients not compared: an earlier call of this module "
                         "ran in a child process that died")
            return []
        info = self.reader.module_info(call.module)
        prefix = f"{call.module}." if call.module else ""
        shared = {v for m in self.reader.modules for v in m.shared.values()}
        out = []
        total_calls = sum(1 for c in self.reader.call_ids
                          if self.reader.call_module_index(c) == info.index
                          and self.reader.call_step(c) == call.step)
        replayed = sum(1 for c in self._all_selected if c.module == call.module and c.step == call.step)
        if total_calls != replayed:
            notes.append("parameter gradients not compared: not every call of this module was replayed")
            return []
        for pname, grad in acc.items():
            full = prefix + pname
            if full in shared or full not in recorded.grads:
                continue
            p_scale = max(scale or 0.0, (term_sums or {}).get(pname, 0.0)) or scale
            out.append(self.comparer.compare(f"param.{pname}", recorded.grads[full], grad,
                                             module=call.module, input_scale=p_scale, batched=False,
                                             f64=(f64 or {}).get(f"param.{pname}")))
        return out

    def _float64_reference(self, call: tracefmt.CallRecord, args: Any, kwargs: Any
                           ) -> tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor] | None]:
        """The reference layer recomputed in float64 from the same inputs, when its class imports."""
        cls = _import_type(call.type)
        info = self.reader.module_info(call.module)
        if cls is None or info.ctor is None:
            return None, None
        try:
            c_args = tuple(rebuild_torch(info.ctor.get("args", {"$": "tuple", "items": []}), self.reader))
            c_kwargs = dict(rebuild_torch(info.ctor.get("kwargs", {"$": "dict", "items": []}), self.reader))
            ref = cls(*c_args, **c_kwargs)
            ref.load_state_dict(reference_weights(self.reader, call.module, call.step), strict=True)
            ref = ref.to(self.device, torch.float64).train(call.training)

            def widen(t: torch.Tensor) -> torch.Tensor:
                if t.is_floating_point():
                    w = t.detach().to(torch.float64)
                    return w.requires_grad_(t.requires_grad)
                return t

            a64 = _map(args, widen)
            k64 = _map(kwargs, widen)
            self._restore(call)
            with torch.set_grad_enabled(call.grad_enabled):
                out = ref(*a64, **k64)
            outs = flatten_named(out, "outputs")
            grads: dict[str, torch.Tensor] = {}
            if call.backward is not None:
                pairs = []
                for name, gid in tracefmt.iter_tensor_leaves(call.backward.grad_outputs, "outputs"):
                    if name in outs and outs[name].requires_grad:
                        pairs.append((outs[name], tensor_from_trace(self.reader, gid, device=self.device).double()))
                if pairs:
                    torch.autograd.backward([p[0] for p in pairs], [p[1] for p in pairs])
                ins = flatten_named(tuple(a64), "args") | flatten_named(dict(k64), "kwargs")
                grads = {n: t.grad for n, t in ins.items() if t.grad is not None}
                grads |= {f"param.{n}": p.grad for n, p in ref.named_parameters()
                          if p.grad is not None}
            return {k: v.detach() for k, v in outs.items()}, grads
        except Exception:
            return None, None

    def run(self, on_progress: Callable[[int, int, CallResult], None] | None = None
            ) -> tuple[list[CallResult], list[CallResult]]:
        calls = self.prepare()
        forward: list[CallResult] = []
        backward: dict[int, CallResult] = {}
        for i, call in enumerate(calls):
            fwd, bwd = self.run_call(call)
            forward.append(fwd)
            if bwd is not None:
                backward[call.call] = bwd
            if on_progress:
                on_progress(i + 1, len(calls), fwd)
        order = [c for c in self.reader.backward_order() if c in backward]
        return forward, [backward[c] for c in order]


def _map(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(_map(x, fn) for x in obj)
    if isinstance(obj, list):
        return [_map(x, fn) for x in obj]
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    return obj


def _status(tensors: list[TensorComparison]) -> str:
    return "pass" if all(t.passed for t in tensors) else "fail"


def replay_trace(
    trace: str | tracefmt.TraceReader,
    candidates: CandidateSet | str,
    *,
    options: ReplayOptions | None = None,
    on_progress: Callable[[int, int, CallResult], None] | None = None,
) -> ReplayReport:
    """Replay every recorded call that has a candidate; return the report."""
    from ._candidates import load_candidates

    options = options or ReplayOptions()
    dev = torch.device(options.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise tracefmt.UsageError("--device cuda asked for, but this torch sees no CUDA device")
    if options.isolate:
        return _replay_isolated(trace, candidates, options, on_progress)
    if isinstance(candidates, str):
        candidates = load_candidates(candidates)
    own = isinstance(trace, str)
    reader = tracefmt.open_trace(trace) if own else trace
    try:
        rep = _Replayer(reader, candidates, options)
        forward, backward = rep.run(on_progress)
        table = rep.comparer.table
        report = ReplayReport(str(reader.path), candidates.source, str(dev), [*forward, *backward],
                              tolerances=table.to_dict())
        report.outputs = rep.outputs  # type: ignore[attr-defined]
        return report
    finally:
        if own:
            reader.close()


def _replay_isolated(trace: str | tracefmt.TraceReader, candidates: CandidateSet | str,
                     options: ReplayOptions,
                     on_progress: Callable[[int, int, CallResult], None] | None) -> ReplayReport:
    from ._isolate import replay_isolated

    if not options.timeout > 0:
        raise tracefmt.UsageError("--timeout must be a positive number of seconds")
    path = str(trace.path if isinstance(trace, tracefmt.TraceReader) else trace)
    tracefmt.open_trace(path).close()
    spec = candidates if isinstance(candidates, str) else candidates.source
    results, run = replay_isolated(path, spec, options=options, on_progress=on_progress)
    table = options.tolerances or parse_tolerance_overrides(None)
    report = ReplayReport(path, spec, str(torch.device(options.device)), results,
                          tolerances=table.to_dict())
    report.outputs = run.outputs  # type: ignore[attr-defined]
    return report


def iter_named_leaves(node: Any, prefix: str) -> Iterator[tuple[str, int]]:
    yield from tracefmt.iter_tensor_leaves(node, prefix)
