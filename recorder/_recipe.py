"""Recipes: a ``.py`` file or module with ``build_model()`` and ``run_step(model, step)``.

Optional: ``make_optimizer(model)`` (the recorder steps it after each backward, so later
steps see trained weights) and ``DEVICE``-independent data (``run_step`` puts its batch on
the model's device).
"""

from __future__ import annotations

import importlib
import importlib.util
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

import tracefmt

from ._ctor import capture_constructor_args
from ._distributed import start_distributed
from ._recorder import Recorder, RecordOptions

__all__ = ["Recipe", "load_recipe", "import_user_module", "record_recipe", "run_recorded_step"]


def import_user_module(spec: str, *, what: str) -> ModuleType:
    """Import a ``.py`` file (under its file stem as module name) or a dotted module name."""
    path = Path(spec)
    if spec.endswith(".py") or path.exists():
        if not path.is_file():
            raise tracefmt.UsageError(f"no such {what} file", path=path)
        name = path.stem
        if str(path.parent.resolve()) not in sys.path:
            sys.path.insert(0, str(path.parent.resolve()))
        existing = sys.modules.get(name)
        if existing is not None and Path(getattr(existing, "__file__", "") or "").resolve() == path.resolve():
            return existing
        mod_spec = importlib.util.spec_from_file_location(name, path)
        if mod_spec is None or mod_spec.loader is None:
            raise tracefmt.UsageError(f"cannot import {what} file", path=path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        try:
            mod_spec.loader.exec_module(module)
        except SyntaxError as exc:
            del sys.modules[name]
            raise tracefmt.UsageError(f"{what} has a syntax error at line {exc.lineno}: {exc.msg}",
                                      path=path) from None
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        raise tracefmt.UsageError(f"cannot import {what} module {spec!r} ({exc})") from None


@dataclass(frozen=True)
class Recipe:
    """A loaded recipe."""

    name: str
    build_model: Callable[[], nn.Module]
    run_step: Callable[[nn.Module, int], Any]
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None
    module: ModuleType


def load_recipe(spec: str) -> Recipe:
    """Load a recipe file or module; missing functions are a UsageError naming it."""
    module = import_user_module(spec, what="recipe")
    missing = [n for n in ("build_model", "run_step") if not callable(getattr(module, n, None))]
    if missing:
        raise tracefmt.UsageError(f"recipe defines no {' or '.join(missing)}()", path=spec)
    opt = getattr(module, "make_optimizer", None)
    return Recipe(module.__name__, module.build_model, module.run_step,
                  opt if callable(opt) else None, module)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (1 << 32))
    except ImportError:
        pass


def record_recipe(
    recipe: Recipe | str,
    path: str | Path,
    *,
    steps: int = 1,
    device: str = "cpu",
    seed: int | None = None,
    options: RecordOptions | None = None,
    on_progress: Callable[[Recorder], None] | None = None,
) -> dict[str, Any]:
    """Build the recipe's model, run ``steps`` recorded steps, return recording statistics."""
    if isinstance(recipe, str):
        recipe = load_recipe(recipe)
    if seed is not None:
        _seed_everything(seed)
    dist_run = start_distributed(path, device=device)  # torchrun: group up before build_model
    if dist_run is not None:
        path, device = dist_run.trace_path, dist_run.device
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise tracefmt.UsageError("--device cuda asked for, but this torch sees no CUDA device")
    with capture_constructor_args():
        model = recipe.build_model()
    if not isinstance(model, nn.Module):
        raise tracefmt.UsageError(f"build_model() returned {type(model).__name__}, not an nn.Module")
    built, model = model, _unwrap(model).to(dev)
    runner = dist_run.prepare(built, model) if dist_run is not None else model  # keeps DDP
    optimizer = recipe.make_optimizer(model) if recipe.make_optimizer else None
    start = time.perf_counter()
    rec = Recorder(model, path, options=options, recipe=recipe.name, seed=seed, on_progress=on_progress)
    if dist_run is not None:
        dist_run.attach(rec)
    try:
        for step in range(steps):
            model.zero_grad(set_to_none=True)
            run_recorded_step(rec, recipe.run_step, runner, step, optimizer=optimizer)
    except BaseException:
        rec.close(complete=False)
        raise
    rec.close(complete=True)
    if dist_run is not None:
        dist_run.finish()
    return rec.stats | {"seconds": time.perf_counter() - start, "steps": steps, "trace": str(path)}


def _unscale_grads(model: nn.Module, scale: float) -> None:
    """Undo the recording's grad scale before the optimizer steps, so training is unchanged."""
    if scale == 1.0:
        return
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.grad.div_(scale)


def run_recorded_step(rec: Recorder, run_step: Callable[[nn.Module, int], Any], runner: nn.Module,
                      step: int, *, optimizer: torch.optim.Optimizer | None = None) -> None:
    """One recipe step under the recorder: backward (grad-scaled) when the loss has a graph,
    the optimizer on unscaled gradients, then the end of the step."""
    loss = run_step(runner, step)
    if isinstance(loss, torch.Tensor) and loss.requires_grad:
        rec.backward(loss)
        if optimizer is not None:
            rec.record_param_grads()
            _unscale_grads(rec.model, rec.options.grad_scale)
            optimizer.step()
    elif isinstance(loss, (torch.Tensor, float, int)):
        rec.note_loss(float(loss))
    rec.step()


def _unwrap(model: nn.Module) -> nn.Module:
    """Record the user's modules: compiled models by their eager module, DDP by ``.module``."""
    inner = getattr(model, "_orig_mod", None)
    if isinstance(inner, nn.Module):
        model = inner
    if type(model).__name__ in ("DistributedDataParallel", "DataParallel"):
        model = model.module
    return model
