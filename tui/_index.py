"""What the app needs to list and navigate a trace, built once in the reader thread.

The index holds no file handle and no tensor data: the module tree, the calls in forward
and backward order with their badges, and the replay verdicts with the divergences in the
order a user steps through them (forward calls first, then backward execution order).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from tracefmt import ModuleInfo, ResultsReader, TraceReader

__all__ = ["CallRow", "Divergence", "Phase", "TraceIndex", "build_index", "module_parent"]

Phase = Literal["forward", "backward"]

_FAILING = ("fail", "error")


@dataclass(frozen=True)
class CallRow:
    """One call as the call list shows it."""

    call: int
    step: int
    label: str
    module: str
    type: str
    parent: int | None
    has_backward: bool
    nonfinite: bool
    forward: str | None = None
    backward: str | None = None

    def status(self, phase: Phase) -> str | None:
        """The replay verdict of one phase: pass, fail, error, skipped, or None (not replayed)."""
        return self.forward if phase == "forward" else self.backward

    @property
    def diverged(self) -> bool:
        return self.forward in _FAILING or self.backward in _FAILING


@dataclass(frozen=True)
class Divergence:
    """A failing (call, phase) of the results, in stepping order."""

    call: int
    phase: Phase


def module_parent(path: str) -> str | None:
    """The path of a module's parent (None for the root, whose path is empty)."""
    if not path:
        return None
    return path.rpartition(".")[0]


@dataclass
class TraceIndex:
    """The navigable skeleton of a trace (and of its results, when loaded)."""

    name: str
    modules: dict[str, ModuleInfo]
    children: dict[str, list[str]]
    rows: dict[int, CallRow]
    forward_order: list[int]
    backward_order: list[int]
    module_calls: dict[str, list[int]]
    results: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)
    first_divergence: dict[str, int | None] = field(default_factory=dict)
    divergences: list[Divergence] = field(default_factory=list)
    results_name: str | None = None

    def __post_init__(self) -> None:
        self._positions = {
            "forward": {c: i for i, c in enumerate(self.forward_order)},
            "backward": {c: i for i, c in enumerate(self.backward_order)},
        }

    def position(self, call: int, phase: Phase) -> int:
        """Where a call sits in one order (-1 when absent, e.g. no backward)."""
        return self._positions[phase].get(call, -1)

    def order(self, phase: Phase) -> list[int]:
        return self.forward_order if phase == "forward" else self.backward_order

    def result(self, call: int, phase: Phase) -> dict[str, Any] | None:
        return self.results.get((call, phase))

    def tensor_result(self, call: int, phase: Phase, name: str) -> dict[str, Any] | None:
        entry = self.result(call, phase)
        for t in (entry or {}).get("tensors") or []:
            if isinstance(t, dict) and t.get("name") == name:
                return t
        return None

    def step_divergence(self, call: int, phase: Phase, step: int) -> Divergence | None:
        """The divergence ``step`` places after (+1) or before (-1) the given position."""
        if not self.divergences:
            return None
        key = self._position(call, phase)
        keys = [self._position(d.call, d.phase) for d in self.divergences]
        if step > 0:
            after = [i for i, k in enumerate(keys) if k > key]
            return self.divergences[after[0] if after else 0]
        before = [i for i, k in enumerate(keys) if k < key]
        return self.divergences[before[-1] if before else -1]

    def _position(self, call: int, phase: Phase) -> tuple[int, int]:
        return (0 if phase == "forward" else 1, self.position(call, phase))

    def search(self, text: str, *, limit: int = 200) -> list[str]:
        """Module paths whose path or class contains ``text`` (case-insensitive), called first."""
        needle = text.strip().lower()
        found = [
            p
            for p, m in self.modules.items()
            if needle in (m.path or "<root>").lower() or needle in m.type.lower()
        ]
        found.sort(key=lambda p: (not self.module_calls.get(p), p.count("."), p))
        return found[:limit]


def _results_maps(results: ResultsReader) -> tuple[dict, dict]:
    entries: dict[tuple[int, str], dict[str, Any]] = {}
    for entry in results.calls():
        call, phase = entry.get("call"), entry.get("phase")
        if isinstance(call, int) and phase in ("forward", "backward"):
            entries[(call, phase)] = entry
    first: dict[str, int | None] = {}
    fd = results.report.get("first_divergence") or {}
    for phase in ("forward", "backward"):
        item = fd.get(phase) if isinstance(fd, dict) else None
        first[phase] = item.get("call") if isinstance(item, dict) else None
    return entries, first


def _nonfinite(reader: TraceReader, tid: int) -> bool:
    """A tensor the flags did not cover (a live trace grew): from its own summary."""
    s = reader.tensor(tid).summary
    return s is not None and s.nan + s.posinf + s.neginf > 0


def build_index(
    reader: TraceReader,
    results: ResultsReader | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> TraceIndex:
    """Read every call record and its summaries' special-value counts (no tensor data)."""
    modules = {m.path: m for m in reader.modules}
    children: dict[str, list[str]] = {p: [] for p in modules}
    for path in modules:
        parent = module_parent(path)
        while parent is not None and parent not in modules:
            parent = module_parent(parent)
        if parent is not None:
            children[parent].append(path)
    entries, first = _results_maps(results) if results is not None else ({}, {})
    rows: dict[int, CallRow] = {}
    module_calls: dict[str, list[int]] = {}
    total = reader.n_calls
    flagged = reader.nonfinite_flags()  # one column read, not a TensorInfo per tensor
    for n, rec in enumerate(reader.calls()):
        tids = [*rec.tensors().values(), *rec.grad_tensors().values()]
        nonfinite = any(flagged[t] if 0 <= t < len(flagged) else _nonfinite(reader, t)
                        for t in tids)
        fwd, bwd = entries.get((rec.call, "forward")), entries.get((rec.call, "backward"))
        rows[rec.call] = CallRow(
            rec.call,
            rec.step,
            rec.label,
            rec.module,
            rec.type,
            rec.parent,
            rec.backward is not None,
            nonfinite,
            fwd.get("status") if fwd else None,
            bwd.get("status") if bwd else None,
        )
        module_calls.setdefault(rec.module, []).append(rec.call)
        if progress is not None and n % 512 == 0:
            progress(n, total)
    forward = list(rows)
    backward = [c for c in reader.backward_order() if c in rows]
    divergences = [Divergence(c, "forward") for c in forward if rows[c].forward in _FAILING]
    divergences += [Divergence(c, "backward") for c in backward if rows[c].backward in _FAILING]
    return TraceIndex(
        name=reader.path.name,
        modules=modules,
        children=children,
        rows=rows,
        forward_order=forward,
        backward_order=backward,
        module_calls=module_calls,
        results=entries,
        first_divergence=first,
        divergences=divergences,
        results_name=None if results is None else results.path.name,
    )
