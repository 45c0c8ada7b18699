"""Health alerts computed from record-time summaries only, so they work on stats-mode traces.

Each rule looks for the *origin* of a problem, not its echoes: a NaN produced by a leaf
also shows in every enclosing module's output, and a gradient zeroed for some batch
elements stays zero all the way down the backward chain. Calls whose descendants already
raised the same alert, and gradients whose zero rows were already zero coming in, are
therefore not reported again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from tracefmt import CallRecord, TensorInfo, TraceReader

__all__ = ["Alert", "AlertKind", "GROWTH_LIMIT", "check_trace"]

AlertKind = Literal[
    "nonfinite", "magnitude", "batch_zero_grad", "saturated_softmax", "zero_param_grad"
]

GROWTH_LIMIT = 1e3
"""An output (or input gradient) this many times larger or smaller than what came in."""

_KIND_LABEL: dict[str, str] = {
    "nonfinite": "first NaN/Inf",
    "magnitude": "magnitude jump",
    "batch_zero_grad": "batch zero grad",
    "saturated_softmax": "saturated softmax",
    "zero_param_grad": "zero param grad",
}


@dataclass(frozen=True)
class Alert:
    """One finding: where (call, module, phase, tensor, batch elements) and what."""

    kind: AlertKind
    call: int | None
    module: str
    phase: Literal["forward", "backward", "param_grads"]
    tensor: str | None
    message: str
    batch_indices: tuple[int, ...] = ()
    step: int = 0
    _order: tuple[int, int, int] = field(default=(0, 0, 0), compare=False, repr=False)

    @property
    def label(self) -> str:
        """Short human name of the kind, for tables and the TUI panel."""
        return _KIND_LABEL[self.kind]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form ``tensortrace check --json`` writes."""
        return {
            "kind": self.kind,
            "call": self.call,
            "module": self.module,
            "phase": self.phase,
            "tensor": self.tensor,
            "batch_indices": list(self.batch_indices),
            "message": self.message,
        }


def _is_input(name: str) -> bool:
    return name.startswith(("args", "kwargs"))


def _nonfinite(info: TensorInfo | None) -> int:
    s = info.summary if info is not None else None
    return 0 if s is None else s.nan + s.posinf + s.neginf


def _is_float(info: TensorInfo) -> bool:
    return info.dtype.startswith(("float", "bfloat", "complex"))


def _max_abs(info: TensorInfo) -> float | None:
    """Largest finite magnitude of a floating tensor, or None when unknown or not a float."""
    s = info.summary
    if s is None or not _is_float(info) or s.finite == 0:
        return None
    return max(abs(s.min), abs(s.max))


def _format_indices(indices: Iterable[int]) -> str:
    """``1-7`` or ``1, 3, 5`` — runs of consecutive batch indices collapsed."""
    idx = sorted(indices)
    parts: list[str] = []
    start = prev = idx[0]
    for i in [*idx[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ", ".join(parts)


def _counts(info: TensorInfo) -> str:
    s = info.summary
    assert s is not None
    found = [(s.nan, "NaN"), (s.posinf, "+Inf"), (s.neginf, "-Inf")]
    return ", ".join(f"{n} {what}" for n, what in found if n)


class _Trace:
    """The reader plus what the rules need: records, summaries, parents, orders."""

    def __init__(self, reader: TraceReader) -> None:
        self.reader = reader
        self.records: dict[int, CallRecord] = {c.call: c for c in reader.calls()}
        self.forward = list(self.records)
        self.backward = [c for c in reader.backward_order() if c in self.records]
        self.bwd_pos = {c: i for i, c in enumerate(self.backward)}
        self._infos: dict[int, TensorInfo] = {}

    def info(self, tid: int) -> TensorInfo:
        if tid not in self._infos:
            self._infos[tid] = self.reader.tensor(tid)
        return self._infos[tid]

    def data(self, call: int) -> dict[str, TensorInfo]:
        return {n: self.info(t) for n, t in self.records[call].tensors().items()}

    def grads(self, call: int) -> dict[str, TensorInfo]:
        return {n: self.info(t) for n, t in self.records[call].grad_tensors().items()}

    def ancestors(self, call: int) -> set[int]:
        out: set[int] = set()
        parent = self.records[call].parent
        while parent is not None and parent not in out and parent in self.records:
            out.add(parent)
            parent = self.records[parent].parent
        return out

    def origins(self, flagged: Iterable[int]) -> list[int]:
        """Flagged calls that are not ancestors of another flagged call."""
        flagged = set(flagged)
        covered: set[int] = set()
        for c in flagged:
            covered |= self.ancestors(c)
        return [c for c in flagged if c not in covered]

    def order(self, call: int, phase: str) -> tuple[int, int, int]:
        step = self.records[call].step
        return (step, 0, call) if phase == "forward" else (step, 1, self.bwd_pos.get(call, 0))

    def alert(
        self,
        kind: AlertKind,
        call: int,
        phase: str,
        tensor: str | None,
        message: str,
        batch: Iterable[int] = (),
    ) -> Alert:
        rec = self.records[call]
        return Alert(
            kind,
            call,
            rec.module,
            phase,
            tensor,
            message,  # type: ignore[arg-type]
            tuple(batch),
            rec.step,
            self.order(call, phase),
        )


def _first_nonfinite(t: _Trace) -> list[Alert]:
    """The first forward call whose output has NaN/Inf from finite inputs; same for backward."""
    alerts: list[Alert] = []
    for phase, order, get in (("forward", t.forward, t.data), ("backward", t.backward, t.grads)):
        flagged = []
        for c in order:
            tensors = get(c)
            made = [n for n, i in tensors.items() if _nonfinite(i)]
            given = [
                n
                for n in tensors
                if (n.startswith("outputs") if phase == "backward" else _is_input(n))
            ]
            produced = [n for n in made if n not in given]
            if produced and not any(_nonfinite(tensors[n]) for n in given):
                flagged.append(c)
        origins = t.origins(flagged)
        if not origins:
            continue
        first = min(origins, key=lambda c: t.order(c, phase))
        tensors = get(first)
        name = next(
            n
            for n, i in tensors.items()
            if _nonfinite(i)
            and not (n.startswith("outputs") if phase == "backward" else _is_input(n))
        )
        what = "gradient" if phase == "backward" else "output"
        came = "gradient coming in" if phase == "backward" else "input"
        counts = _counts(tensors[name])
        msg = f"first NaN/Inf ({phase}): {what} {name} has {counts}; no {came} had any"
        alerts.append(t.alert("nonfinite", first, phase, name, msg))
    return alerts


def _ratio_alert(
    t: _Trace,
    call: int,
    phase: str,
    inputs: Mapping[str, TensorInfo],
    outputs: Mapping[str, TensorInfo],
) -> Alert | None:
    came = [m for m in (_max_abs(i) for i in inputs.values()) if m is not None]
    went = [(m, n) for n, i in outputs.items() if (m := _max_abs(i)) is not None]
    if not came or not went or max(came) == 0.0:
        return None
    peak, name = max(went)
    ratio = peak / max(came)
    if 1.0 / GROWTH_LIMIT <= ratio <= GROWTH_LIMIT:
        return None
    verb = "grows" if ratio > 1.0 else "shrinks"
    what = "input gradient" if phase == "backward" else "activation"
    msg = (
        f"{what} {verb} {ratio:.3g}x in one call ({phase}): max|x| {max(came):.3g} in, "
        f"{peak:.3g} out ({name})"
    )
    return t.alert("magnitude", call, phase, name, msg)


def _magnitude_jumps(t: _Trace) -> list[Alert]:
    """Calls whose output (forward) or input gradient (backward) jumps by orders of magnitude."""
    alerts: dict[tuple[int, str], Alert] = {}
    for c in t.forward:
        data = t.data(c)
        ins = {n: i for n, i in data.items() if _is_input(n)}
        outs = {n: i for n, i in data.items() if n.startswith("outputs")}
        if (a := _ratio_alert(t, c, "forward", ins, outs)) is not None:
            alerts[(c, "forward")] = a
    for c in t.backward:
        grads = t.grads(c)
        ins = {n: i for n, i in grads.items() if n.startswith("outputs")}
        outs = {n: i for n, i in grads.items() if _is_input(n)}
        if (a := _ratio_alert(t, c, "backward", ins, outs)) is not None:
            alerts[(c, "backward")] = a
    out = []
    for phase in ("forward", "backward"):
        flagged = [c for c, p in alerts if p == phase]
        out += [alerts[(c, phase)] for c in t.origins(flagged)]
    return out


def _zero_rows(info: TensorInfo | None) -> np.ndarray | None:
    s = info.summary if info is not None else None
    if s is None or len(s.batch) == 0:
        return None
    return s.batch[:, 1] == 0.0


def _batch_zero_grads(t: _Trace) -> list[Alert]:
    """Gradients zero for some batch elements and not others, where the data is not zero.

    Zero rows are explained (not reported) when the gradient coming in is already zero
    there, or when an input of the call is all zero there: the tensor itself (padding), a
    target of ``ignore_index`` 0, an all-False mask row.
    """
    flagged: dict[int, Alert] = {}
    for c in t.backward:
        grads, data = t.grads(c), t.data(c)
        incoming = [
            z
            for n, i in grads.items()
            if n.startswith("outputs")
            if (z := _zero_rows(i)) is not None
        ]
        explainers = [
            z for n, i in data.items() if _is_input(n) if (z := _zero_rows(i)) is not None
        ]
        for name, info in grads.items():
            if not _is_input(name):
                continue
            zero = _zero_rows(info)
            if zero is None or zero.all() or not zero.any():
                continue
            live = ~zero
            for explained in [*incoming, *explainers]:
                if len(explained) == len(zero):
                    zero = zero & ~explained
            if not zero.any():
                continue
            dead = np.flatnonzero(zero).tolist()
            alive = np.flatnonzero(live).tolist()
            msg = (
                f"gradient {name} is identically zero for batch elements {_format_indices(dead)} "
                f"but not for {_format_indices(alive)}, though their data is not zero"
            )
            flagged[c] = t.alert("batch_zero_grad", c, "backward", name, msg, dead)
            break
    return [flagged[c] for c in t.origins(flagged)]


def _saturated_softmax(t: _Trace) -> list[Alert]:
    """Softmax outputs that are (almost) one-hot: max exactly 1 and nearly all zeros."""
    alerts = []
    for c in t.forward:
        rec = t.records[c]
        if not rec.type.endswith("Softmax"):
            continue
        for name, info in t.data(c).items():
            s = info.summary
            if not name.startswith("outputs") or s is None or not info.shape or s.count == 0:
                continue
            width = info.shape[-1]
            share = s.zeros / s.count
            if width >= 2 and s.max >= 1.0 and share >= 1.0 - 1.5 / width:
                msg = (
                    f"saturated softmax: {name} max is 1.0 and {share:.0%} of it is exactly 0 "
                    f"(rows of {width} are one-hot)"
                )
                alerts.append(t.alert("saturated_softmax", c, "forward", name, msg))
    return alerts


def _zero_param_grads(t: _Trace) -> list[Alert]:
    """Parameters whose whole gradient after a step's backward is zero."""
    owner = {m.full_name(p): m.path for m in t.reader.modules for p in m.params}
    alerts = []
    for step in t.reader.steps:
        rec = t.reader.param_grads(step)
        if rec is None:
            continue
        for pname, tid in rec.grads.items():
            s = t.info(tid).summary
            if s is None or s.count == 0 or s.zeros != s.count:
                continue
            module = owner.get(pname, pname.rpartition(".")[0])
            msg = f"parameter {pname} got an all-zero gradient in step {step}"
            alerts.append(
                Alert(
                    "zero_param_grad",
                    None,
                    module,
                    "param_grads",
                    pname,
                    msg,
                    (),
                    step,
                    (step, 2, len(alerts)),
                )
            )
    return alerts


def check_trace(reader: TraceReader) -> list[Alert]:
    """Every alert, the first NaN/Inf first, then in execution order (step, phase, call)."""
    t = _Trace(reader)
    first = _first_nonfinite(t)
    rest = _magnitude_jumps(t) + _batch_zero_grads(t) + _saturated_softmax(t) + _zero_param_grads(t)
    rest.sort(key=lambda a: a._order)
    return first + rest
