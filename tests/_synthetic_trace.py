"""A synthetic trace written with tracefmt alone (no torch): calls with known tensors, for the
tests of ``check``, ``show`` and the TUI."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tracefmt import (
    BackwardRecord,
    CallRecord,
    EventKind,
    ModuleInfo,
    RunInfo,
    TraceWriter,
    compute_summary,
)


@dataclass
class FakeCall:
    """One recorded call: inputs by name (``args.N`` / ``kwargs.K``), one output, gradients."""

    module: str
    type: str
    inputs: dict[str, np.ndarray]
    output: np.ndarray
    grads: dict[str, np.ndarray] = field(default_factory=dict)
    parent: int | None = None


def _node(tid: int | None) -> dict | None:
    return None if tid is None else {"$": "tensor", "id": tid}


def write_trace(
    path: Path,
    calls: list[FakeCall],
    *,
    params: dict[str, tuple[str, ...]] | None = None,
    param_grads: dict[str, np.ndarray] | None = None,
    backward: list[int] | None = None,
    stats_only: bool = False,
) -> Path:
    """A format-1.0 trace of one step: the calls in order, then backward (reverse by default)."""
    params = params or {}
    paths = [""] + sorted({c.module for c in calls if c.module} | set(params))
    types = {c.module: c.type for c in calls}
    modules = tuple(
        ModuleInfo(i, p, types.get(p, "demo.Module"), params=params.get(p, ()))
        for i, p in enumerate(paths)
    )
    index = {m.path: m.index for m in modules}
    with TraceWriter(path) as w:

        def add(a: np.ndarray) -> int:
            a = np.asarray(a)
            if stats_only:
                name = "bool" if a.dtype == np.bool_ else a.dtype.name
                return w.add_tensor(None, dtype=name, shape=a.shape, summary=compute_summary(a))
            return w.add_tensor(a)

        w.write_run(RunInfo(modules, {}, {"mode": "stats" if stats_only else "full"}))
        w.add_event(EventKind.STEP, {"step": 0, "params": {}, "buffers": {}}, step=0)
        seen: dict[str, int] = {}
        for i, c in enumerate(calls):
            args = [add(a) for n, a in c.inputs.items() if n.startswith("args")]
            kwargs = [
                [n.split(".", 1)[1], _node(add(a))]
                for n, a in c.inputs.items()
                if n.startswith("kwargs")
            ]
            depth = 0 if c.parent is None else c.module.count(".") + 1
            rec = CallRecord(
                call=i,
                step=0,
                module=c.module,
                type=c.type,
                index=seen.get(c.module, 0),
                parent=c.parent,
                depth=depth,
                training=True,
                grad_enabled=True,
                args={"$": "tuple", "items": [_node(t) for t in args]},
                kwargs={"$": "dict", "items": kwargs},
                outputs=_node(add(c.output)),
            )
            seen[c.module] = seen.get(c.module, 0) + 1
            w.add_event(EventKind.CALL, rec.to_dict(), step=0, call=i, module=index[c.module])
        order = backward if backward is not None else list(range(len(calls)))[::-1]
        for pos, i in enumerate(order):
            g = calls[i].grads
            if not g:
                continue
            n_args = sum(1 for n in calls[i].inputs if n.startswith("args"))
            grad_args = [
                _node(add(g[f"args.{k}"])) if f"args.{k}" in g else None for k in range(n_args)
            ]
            rec_b = BackwardRecord(
                call=i,
                order=pos,
                grad_outputs=_node(add(g["outputs"])),
                grad_args={"$": "tuple", "items": grad_args},
            )
            w.add_event(
                EventKind.BACKWARD, rec_b.to_dict(), step=0, call=i, module=index[calls[i].module]
            )
        if param_grads:
            ids = {name: add(g) for name, g in param_grads.items()}
            w.add_event(EventKind.PARAM_GRADS, {"step": 0, "grads": ids, "loss": 1.0}, step=0)
    return path


def batch0_only(g: np.ndarray) -> np.ndarray:
    out = np.zeros_like(g)
    out[0] = g[0]
    return out
