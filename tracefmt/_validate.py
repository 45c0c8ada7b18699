"""Checks a trace against spec/trace-format.md beyond what opening it checks.

``open_trace`` refuses files that are not traces at all (exit status 2 in the CLI); this
module finds everything else a conforming writer must not produce and names each problem
by event and tensor id, so a recording bug can be traced to the call that caused it.
"""

from __future__ import annotations

import datetime as _dt
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._dtypes import DTYPES
from ._errors import TraceError, TraceFormatError
from ._layout import (
    BATCH_STATS,
    FLAG_ENCODING_BITS,
    FLAG_PAYLOAD,
    FLAG_SUMMARY,
    FORMAT_MINOR,
    HEAP,
    MAX_BATCH_STATS,
    MAX_ELEMENTS,
    MAX_NDIM,
    TENSORS,
    EventKind,
)
from ._reader import TraceReader, open_trace
from ._records import BackwardRecord, CallRecord, ParamGradsRecord, StepRecord
from ._tree import iter_tensor_leaves
from ._writer import COMPRESSIONS

__all__ = ["ValidationReport", "validate_trace", "iter_bad_tensor_rows", "iter_bad_payloads",
           "KEEP_PROBLEMS"]

KEEP_PROBLEMS = 1000
_BLOCK = 1 << 16
_WINDOW = 16 << 20
_STEPPED = (EventKind.STEP, EventKind.CALL, EventKind.BACKWARD, EventKind.PARAM_GRADS)


@dataclass(frozen=True)
class ValidationReport:
    """What ``validate_trace`` found: counts for the summary line and every problem."""

    path: str
    format_version: tuple[int, int]
    complete: bool
    events: int
    steps: int
    calls: int
    tensors: int
    bytes: int
    last_step: int | None
    last_call: int | None
    problems: tuple[str, ...]
    problems_total: int

    @property
    def status(self) -> str:
        """``valid``, ``incomplete`` (no END event, nothing else wrong) or ``invalid``."""
        if self.problems_total:
            return "invalid"
        return "valid" if self.complete else "incomplete"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.path, "status": self.status,
            "format_version": "{}.{}".format(*self.format_version), "complete": self.complete,
            "events": self.events, "steps": self.steps, "calls": self.calls,
            "tensors": self.tensors, "bytes": self.bytes, "last_step": self.last_step,
            "last_call": self.last_call, "problems": list(self.problems),
            "problems_total": self.problems_total,
        }


def validate_trace(path: str | Path, *, deep: bool = False) -> ValidationReport:
    """Check every rule of the spec that needs no payload; ``deep`` also checks payload CRCs.

    Raises a TraceError when the file cannot be opened as a trace at all.
    """
    with open_trace(path) as reader:
        return _Validator(reader, deep=deep).run()


class _Problems:
    """Problem lines, keeping the first ``KEEP_PROBLEMS`` and counting the rest."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.total = 0

    def add(self, line: str) -> None:
        self.total += 1
        if len(self.lines) < KEEP_PROBLEMS:
            self.lines.append(line)


@dataclass
class _Call:
    step: int
    module: int
    parent: int | None
    depth: int
    event: int


_Commit = Callable[[], None]


class _Validator:
    """One pass over a trace. With ``salvage`` (used by repair) an event with any problem
    changes no state, so the events after it are judged as if it had never been written;
    ``kept`` and ``dropped`` then say which events a repaired copy can hold."""

    def __init__(self, reader: TraceReader, *, deep: bool, salvage: bool = False) -> None:
        self.r = reader
        self.deep = deep
        self.salvage = salvage
        self.p = _Problems()
        self.errs: list[str] = []
        self.n_tensors = reader.n_tensors
        self.bad_tensors: dict[int, str] = {}
        self._flagged: set[int] = set()  # every tensor reported so far
        self.calls: dict[int, _Call] = {}
        self.backwards: set[int] = set()
        self.step_events: set[int] = set()
        self.grad_steps: set[int] = set()
        self.indexes: set[tuple[int, int, int]] = set()
        self.last_order: dict[int, int] = {}
        self.max_call: int | None = None  # highest call id so far
        self.call_step = -1  # the step of the latest call event
        self.floor: int | None = None  # highest call id of the steps before call_step
        self.last_step = -1
        self.kept: list[int] = []
        self.dropped: dict[int, str] = {}

    def run(self) -> ValidationReport:
        r = self.r
        for tid, message in iter_bad_tensor_rows(r):
            self._bad_tensor(tid, message)
        if self.deep:
            for tid, message in iter_bad_payloads(r):
                self._bad_tensor(tid, message)
            for tid, message in iter_bad_encodings(r, skip=set(self._flagged)):
                self._bad_tensor(tid, message)
        rows = r._event_rows
        self._check_attrs()
        self._check_run()
        for i in range(1, len(rows)):
            self.errs = []
            commit = self._check_event(i, rows[i])
            for line in self.errs:
                self.p.add(line)
            if commit is not None and not (self.salvage and self.errs):
                commit()
            if self.salvage and int(rows["kind"][i]) != EventKind.END:
                if self.errs:
                    self.dropped[i] = self.errs[0]
                else:
                    self.kept.append(i)
        if not self.salvage:
            self._check_parents()
        steps = {int(s) for s in rows["step"][np.isin(rows["kind"], (EventKind.STEP, EventKind.CALL))]}
        stepped = rows["step"][np.isin(rows["kind"], _STEPPED)]
        return ValidationReport(
            path=str(r.path), format_version=r.format_version, complete=r.complete,
            events=len(rows), steps=len(steps),
            calls=int(np.count_nonzero(rows["kind"] == EventKind.CALL)),
            tensors=self.n_tensors, bytes=r.bytes_stored,
            last_step=int(stepped.max()) if len(stepped) else None,
            last_call=self.max_call, problems=tuple(self.p.lines), problems_total=self.p.total,
        )

    def _bad_tensor(self, tid: int, message: str) -> None:
        self.p.add(f"tensor {tid}: {message}")
        self._flagged.add(tid)
        if self.salvage:
            self.bad_tensors.setdefault(tid, message)

    # -- events ----------------------------------------------------------------------------

    def _check_attrs(self) -> None:
        r = self.r
        if r.compression not in COMPRESSIONS:
            self.p.add(f"root attribute compression is {r.compression!r}, not one of {COMPRESSIONS}")
        if not r.producer:
            self.p.add("root attribute producer is missing or empty")
        try:
            created = _dt.datetime.fromisoformat(r.created)
        except ValueError:
            self.p.add(f"root attribute created is {r.created!r}, not an ISO 8601 time")
        else:
            if created.utcoffset() is None:
                self.p.add(f"root attribute created ({r.created}) has no UTC offset")

    def _check_run(self) -> None:
        run = self.r.run
        self.errs = []
        seen: set[str] = set()
        for m in run.modules:
            if m.path in seen:
                self.errs.append(f"event 0 (run): module path {m.path!r} appears twice")
            seen.add(m.path)
            if m.ctor is not None:
                for key in ("args", "kwargs"):
                    self._refs("event 0 (run)", m.ctor.get(key), f"modules.{m.index}.ctor.{key}")
        mode = run.options.get("mode")
        if mode is not None and mode not in ("full", "stats"):
            self.errs.append(f"event 0 (run): options.mode is {mode!r}, not 'full' or 'stats'")
        for line in self.errs:
            self.p.add(line)

    def _check_event(self, i: int, row: np.void) -> _Commit | None:
        try:
            kind = EventKind(int(row["kind"]))
        except ValueError:
            if self.salvage or self.r.format_version[1] <= FORMAT_MINOR:
                self.errs.append(f"event {i}: unknown kind {int(row['kind'])}")
            return None
        label = kind.name.lower()
        step = int(row["step"])
        if kind in _STEPPED:
            if step < 0:
                self.errs.append(f"event {i} ({label}): step column is {step}")
            elif step < self.last_step:
                self.errs.append(f"event {i} ({label}): step {step} after step {self.last_step}; "
                                 f"steps must not go back")
        try:
            body = self.r.event_body(i)
            if kind == EventKind.RUN:
                self.errs.append(f"event {i} (run): a second run event; only the first may be one")
                return None
            if kind == EventKind.STEP:
                commit = self._check_step(i, row, StepRecord.from_dict(body))
            elif kind == EventKind.CALL:
                commit = self._check_call(i, row, CallRecord.from_dict(body))
            elif kind == EventKind.BACKWARD:
                commit = self._check_backward(i, row, BackwardRecord.from_dict(body))
            elif kind == EventKind.PARAM_GRADS:
                commit = self._check_grads(i, row, ParamGradsRecord.from_dict(body))
            elif kind == EventKind.END:
                self._check_end(i, body)
                return None
            else:
                if not isinstance(body.get("message"), str):
                    self.errs.append(f"event {i} (note): message is missing or not a string")
                return None
        except TraceFormatError as exc:
            message = exc.message.removeprefix(f"event {i}: ").removeprefix(f"event {i} ")
            self.errs.append(f"event {i} ({label}): {message}")
            return None

        def commit_step() -> None:
            if kind in _STEPPED:
                self.last_step = max(self.last_step, step)
            commit()

        return commit_step

    def _check_step(self, i: int, row: np.void, rec: StepRecord) -> _Commit:
        where = f"event {i} (step {rec.step})"
        if int(row["step"]) != rec.step:
            self.errs.append(f"{where}: row says step {int(row['step'])}")
        if rec.step in self.step_events:
            self.errs.append(f"{where}: a second step event for step {rec.step}")
        self._id_refs(where, rec.params, "params")
        self._id_refs(where, rec.buffers, "buffers")
        return lambda: self.step_events.add(rec.step)

    def _check_call(self, i: int, row: np.void, rec: CallRecord) -> _Commit:
        where = f"event {i} (call {rec.call})"
        add = self.errs.append
        if int(row["call"]) != rec.call or int(row["step"]) != rec.step:
            add(f"{where}: row says call {int(row['call'])} of step {int(row['step'])}, "
                f"body says call {rec.call} of step {rec.step}")
        mod = int(row["module"])
        modules = self.r.modules
        if not 0 <= mod < len(modules):
            add(f"{where}: module index {mod} out of range ({len(modules)} modules)")
        elif (modules[mod].path, modules[mod].type) != (rec.module, rec.type):
            add(f"{where}: body names module {rec.module!r} ({rec.type}), row names module "
                f"{mod} = {modules[mod].path!r} ({modules[mod].type})")
        if rec.call < 0:
            add(f"{where}: negative call id")
        if rec.call in self.calls:
            add(f"{where}: a second call event for call {rec.call}")
        if rec.step > self.call_step:
            floor = self.max_call
        else:
            floor = self.floor
        if floor is not None and rec.call <= floor:
            add(f"{where}: call id {rec.call} is not above the ids of earlier steps' calls "
                f"(up to {floor})")
        if rec.parent is not None and rec.parent >= rec.call:
            add(f"{where}: parent call {rec.parent} has an id not below this call's; "
                f"ids are given when calls start")
        if rec.parent is None and rec.depth != 0:
            add(f"{where}: depth {rec.depth} without a parent call")
        key = (rec.step, mod, rec.index)
        if rec.index < 0 or key in self.indexes:
            add(f"{where}: index {rec.index} of {rec.module or '<root>'} is negative or "
                f"repeats within step {rec.step}")
        if not _tagged(rec.args, "tuple"):
            add(f"{where}: args is not a tuple node")
        if not _tagged(rec.kwargs, "dict"):
            add(f"{where}: kwargs is not a dict node")
        for name, node in (("args", rec.args), ("kwargs", rec.kwargs), ("outputs", rec.outputs)):
            self._refs(where, node, name)
        self._id_refs(where, rec.buffers_before, "buffers_before")
        self._id_refs(where, rec.buffers_after, "buffers_after")
        self._check_rng(where, rec.rng)
        self._check_autocast(where, rec.autocast)
        if rec.parent == rec.call:
            add(f"{where}: is its own parent")

        def commit() -> None:
            self.indexes.add(key)
            if rec.step > self.call_step:
                self.call_step, self.floor = rec.step, self.max_call
            self.max_call = rec.call if self.max_call is None else max(self.max_call, rec.call)
            self.calls[rec.call] = _Call(rec.step, mod, rec.parent, rec.depth, i)

        return commit

    def _check_rng(self, where: str, rng: dict) -> None:
        for device, ids in rng.items():
            flat = ids if isinstance(ids, list) else [ids]
            if not all(isinstance(t, int) and not isinstance(t, bool) for t in flat):
                self.errs.append(f"{where}: rng.{device} is not a tensor id or a list of them")
                continue
            for j, t in enumerate(flat):
                self._ref(where, f"rng.{device}.{j}", t)

    def _check_autocast(self, where: str, autocast: dict) -> None:
        for device, state in autocast.items():
            ok = isinstance(state, dict) and isinstance(state.get("enabled", False), bool) and (
                state.get("dtype") is None or state.get("dtype") in DTYPES)
            if not ok:
                self.errs.append(f"{where}: autocast.{device} is not {{enabled: bool, dtype: name}}")

    def _check_backward(self, i: int, row: np.void, rec: BackwardRecord) -> _Commit:
        where = f"event {i} (backward of call {rec.call})"
        add = self.errs.append
        if int(row["call"]) != rec.call:
            add(f"{where}: row says call {int(row['call'])}")
        call = self.calls.get(rec.call)
        last_order = -1
        if call is None:
            add(f"{where}: call {rec.call} has no call event before it")
        elif rec.call in self.backwards:
            add(f"{where}: a second backward event for call {rec.call}")
        else:
            if int(row["step"]) != call.step:
                add(f"{where}: row says step {int(row['step'])}, the call ran in step {call.step}")
            if int(row["module"]) not in (-1, call.module):
                add(f"{where}: row says module {int(row['module'])}, the call's is {call.module}")
            last_order = self.last_order.get(call.step, -1)
            if rec.order <= last_order:
                add(f"{where}: order {rec.order} does not follow {last_order} "
                    f"within step {call.step}")
        if rec.recomputes < 0:
            add(f"{where}: negative recomputes")
        if not _tagged(rec.grad_args, "tuple"):
            add(f"{where}: grad_args is not a tuple node")
        if not _tagged(rec.grad_kwargs, "dict"):
            add(f"{where}: grad_kwargs is not a dict node")
        for name, node in (("grad_outputs", rec.grad_outputs), ("grad_args", rec.grad_args),
                           ("grad_kwargs", rec.grad_kwargs)):
            self._refs(where, node, name)

        def commit() -> None:
            self.backwards.add(rec.call)
            if call is not None:
                self.last_order[call.step] = max(rec.order, last_order)

        return commit

    def _check_grads(self, i: int, row: np.void, rec: ParamGradsRecord) -> _Commit:
        where = f"event {i} (param_grads of step {rec.step})"
        if int(row["step"]) != rec.step:
            self.errs.append(f"{where}: row says step {int(row['step'])}")
        if rec.step in self.grad_steps:
            self.errs.append(f"{where}: a second param_grads event for step {rec.step}")
        self._id_refs(where, rec.grads, "grads")
        return lambda: self.grad_steps.add(rec.step)

    def _check_end(self, i: int, body: dict) -> None:
        if self.salvage:
            return
        rows = self.r._event_rows
        if i != len(rows) - 1:
            self.errs.append(f"event {i} (end): the end event is not the last event")
        kinds = rows["kind"]
        want = {"events": len(rows), "calls": int(np.count_nonzero(kinds == EventKind.CALL)),
                "steps": int(np.count_nonzero(kinds == EventKind.STEP))}
        for key, value in want.items():
            got = body.get(key)
            if got != value or isinstance(got, bool):
                self.errs.append(f"event {i} (end): {key} is {got!r}, the trace has {value}")

    def _check_parents(self) -> None:
        for cid, c in self.calls.items():
            if c.parent is None:
                continue
            parent = self.calls.get(c.parent)
            where = f"event {c.event} (call {cid})"
            if parent is None:
                if self.r.complete:
                    self.p.add(f"{where}: parent call {c.parent} was not recorded")
            elif parent.step != c.step:
                self.p.add(f"{where}: parent call {c.parent} ran in step {parent.step}, "
                           f"this call in step {c.step}")
            elif c.depth != parent.depth + 1:
                self.p.add(f"{where}: depth {c.depth}, but its parent's depth is {parent.depth}")

    # -- references ------------------------------------------------------------------------

    def _ref(self, where: str, name: str, tid: int) -> None:
        if not 0 <= tid < self.n_tensors:
            self.errs.append(f"{where}: {name} refers to tensor {tid}, but /{TENSORS} has "
                             f"{self.n_tensors} rows")
        elif tid in self.bad_tensors:
            self.errs.append(f"{where}: {name} is tensor {tid}, which is damaged: "
                             f"{self.bad_tensors[tid]}")

    def _refs(self, where: str, node: Any, prefix: str) -> None:
        for name, tid in iter_tensor_leaves(node, prefix):
            self._ref(where, name, tid)

    def _id_refs(self, where: str, ids: dict[str, int], what: str) -> None:
        for name, tid in ids.items():
            self._ref(where, f"{what}[{name!r}]", tid)


def _tagged(node: Any, tag: str) -> bool:
    return isinstance(node, dict) and node.get("$") == tag


# -- tensor rows ---------------------------------------------------------------------------


def iter_bad_tensor_rows(reader: TraceReader) -> Iterator[tuple[int, str]]:
    """``(tensor id, problem)`` for each row of ``/tensors`` that breaks a rule; one per row."""
    ds = reader._tensors
    heap_len = reader.bytes_stored
    batch_len = int(reader._batch.shape[0])
    for start in range(0, reader.n_tensors, _BLOCK):
        try:
            rows = np.asarray(ds[start:start + _BLOCK])
        except (OSError, ValueError) as exc:
            raise TraceFormatError(f"/{TENSORS} rows from {start} are unreadable ({exc})",
                                   path=reader.path) from None
        yield from _bad_rows(rows, start, heap_len, batch_len)


def _row_sizes(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row: whether the dtype is known, its itemsize, whether the shape is too big, numel."""
    names = rows["dtype"]
    known = np.zeros(len(rows), bool)
    itemsize = np.zeros(len(rows), np.uint64)
    for raw in np.unique(names):
        info = DTYPES.get(raw.decode("ascii", "replace"))
        if info is not None:
            sel = names == raw
            known[sel] = True
            itemsize[sel] = info.itemsize
    ndim = np.minimum(rows["ndim"].astype(np.int64), MAX_NDIM)
    used = np.arange(MAX_NDIM)[None, :] < ndim[:, None]
    dims = np.where(used, rows["shape"], np.uint64(1))
    absurd = (np.cumprod(dims.astype(np.float64), axis=1) > MAX_ELEMENTS).any(axis=1)
    numel = np.where(absurd, np.uint64(0), np.prod(np.where(absurd[:, None], np.uint64(1), dims),
                                                   axis=1, dtype=np.uint64))
    return known, itemsize, absurd, numel


def _bad_rows(rows: np.ndarray, start: int, heap_len: int, batch_len: int
              ) -> Iterator[tuple[int, str]]:
    known, itemsize, absurd, numel = _row_sizes(rows)
    flags = rows["flags"]
    payload = (flags & FLAG_PAYLOAD) != 0
    enc_bits = flags & FLAG_ENCODING_BITS
    encoded = enc_bits != 0
    clash = (encoded & payload) | (enc_bits == FLAG_ENCODING_BITS)
    summary = (flags & FLAG_SUMMARY) != 0
    offset, nbytes = rows["offset"], rows["nbytes"]
    sized = known & ~absurd & (rows["ndim"] <= MAX_NDIM)
    wrong_size = payload & sized & (nbytes != numel * itemsize)
    stored = payload | encoded
    past_end = stored & ((offset > heap_len) | (nbytes > np.uint64(heap_len) - np.minimum(offset, heap_len)))
    stray = ~stored & (nbytes != 0)
    counts = {k: rows[k].astype(np.float64) for k in ("count", "nan", "posinf", "neginf", "zeros")}
    special = counts["nan"] + counts["posinf"] + counts["neginf"]
    hist = rows["hist"].astype(np.float64).sum(axis=1)
    summed = summary & sized
    bad_count = summed & (counts["count"] != numel.astype(np.float64))
    bad_special = summed & ((special > counts["count"]) | (counts["zeros"] > counts["count"]))
    bad_hist = summed & ~bad_count & ~bad_special & (hist != counts["count"] - special)
    first = np.where(rows["ndim"] > 0, rows["shape"][:, 0], np.uint64(0))
    want_batch = np.minimum(first, np.uint64(MAX_BATCH_STATS))
    bc, bo = rows["batch_count"].astype(np.uint64), rows["batch_offset"]
    bad_batch = summed & (bc != 0) & (bc != want_batch)
    batch_past = summary & (bc != 0) & ((bo > batch_len) | (bc > np.uint64(batch_len) - np.minimum(bo, batch_len)))
    bad = (~known | (rows["ndim"] > MAX_NDIM) | absurd | clash | wrong_size | past_end | stray | bad_count
           | bad_special | bad_hist | bad_batch | batch_past)
    for j in np.flatnonzero(bad):
        r = rows[j]
        ndim = int(r["ndim"])
        shape = tuple(int(x) for x in r["shape"][:min(ndim, MAX_NDIM)])
        name = bytes(r["dtype"]).decode("ascii", "replace")
        if not known[j]:
            msg = f"unknown dtype {bytes(r['dtype'])!r}"
        elif ndim > MAX_NDIM:
            msg = f"ndim {ndim} exceeds {MAX_NDIM}"
        elif absurd[j]:
            msg = f"shape {shape} exceeds 2**40 elements"
        elif clash[j]:
            msg = f"contradictory payload flags {int(r['flags']):#04x}"
        elif wrong_size[j]:
            msg = (f"{int(r['nbytes'])} bytes stored for shape {shape} of {name} "
                   f"(needs {int(numel[j] * itemsize[j])})")
        elif past_end[j]:
            msg = (f"payload /{HEAP}[{int(r['offset'])}:{int(r['offset']) + int(r['nbytes'])}] runs "
                   f"past the end of /{HEAP} ({heap_len} bytes)")
        elif stray[j]:
            msg = f"no payload flag, but nbytes is {int(r['nbytes'])}"
        elif bad_count[j]:
            msg = f"summary count {int(r['count'])} for {int(numel[j])} elements"
        elif bad_special[j]:
            msg = "summary counts of nan/inf/zeros exceed its element count"
        elif bad_hist[j]:
            msg = f"histogram holds {int(hist[j])} values for {int(counts['count'][j] - special[j])} finite elements"
        elif bad_batch[j]:
            msg = f"{int(bc[j])} batch rows; expected 0 or {int(want_batch[j])}"
        else:
            msg = (f"batch rows /{BATCH_STATS}[{int(bo[j])}:{int(bo[j]) + int(bc[j])}] run past the "
                   f"end of /{BATCH_STATS} ({batch_len} rows)")
        yield start + int(j), msg


def iter_bad_encodings(reader: TraceReader, *, skip: set[int]) -> Iterator[tuple[int, str]]:
    """``(tensor id, problem)`` for each encoded payload (format 1.1) that does not decode:
    a malformed header or length, or a masked-scale base that is not an earlier stored
    tensor of the same dtype and shape. Tensors in ``skip`` were reported already."""
    for start in range(0, reader.n_tensors, _BLOCK):
        flags = np.asarray(reader._tensors.fields("flags")[start:start + _BLOCK])
        for j in np.flatnonzero((flags & FLAG_ENCODING_BITS) != 0):
            tid = start + int(j)
            if tid in skip:
                continue
            try:
                reader.read(tid, decode=False)
            except TraceError as exc:
                yield tid, exc.message


def iter_bad_payloads(reader: TraceReader) -> Iterator[tuple[int, str]]:
    """``(tensor id, problem)`` for each payload whose CRC-32 does not match its bytes.

    Rows that break a layout rule are skipped (``iter_bad_tensor_rows`` reports them); the
    heap is read in windows of ``_WINDOW`` bytes in offset order, so small tensors cost one
    read per window, not one each.
    """
    heap = reader._heap
    heap_len = reader.bytes_stored
    batch_len = int(reader._batch.shape[0])
    picked: list[np.ndarray] = []
    for start in range(0, reader.n_tensors, _BLOCK):
        rows = np.asarray(reader._tensors[start:start + _BLOCK])
        ok = np.ones(len(rows), bool)
        for j, _ in _bad_rows(rows, start, heap_len, batch_len):
            ok[j - start] = False
        ok &= (rows["flags"] & (FLAG_PAYLOAD | FLAG_ENCODING_BITS)) != 0
        ids = np.flatnonzero(ok) + start
        picked.append(np.stack([rows["offset"][ok], rows["nbytes"][ok], rows["crc32"][ok].astype(np.uint64),
                                ids.astype(np.uint64)], axis=1))
    table = np.concatenate(picked) if picked else np.zeros((0, 4), np.uint64)
    table = table[np.argsort(table[:, 0], kind="stable")]
    win_start, window = 0, np.zeros(0, np.uint8)
    for off, n, crc, tid in table.tolist():
        try:
            if n > _WINDOW:
                value = 0
                for s in range(off, off + n, _WINDOW):
                    value = zlib.crc32(np.asarray(heap[s:min(s + _WINDOW, off + n)]), value)
            else:
                if off < win_start or off + n > win_start + len(window):
                    win_start = off
                    window = np.asarray(heap[off:min(heap_len, off + _WINDOW)])
                value = zlib.crc32(window[off - win_start:off - win_start + n])
        except (OSError, ValueError) as exc:
            yield tid, f"payload /{HEAP}[{off}:{off + n}] is unreadable ({exc})"
            continue
        if value != crc:
            yield tid, (f"payload checksum mismatch in /{HEAP}[{off}:{off + n}] "
                        f"(stored CRC-32 {crc:08x}, computed {value:08x})")
