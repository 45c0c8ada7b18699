"""``tensortrace diff A B``: compare two traces call by call, with numpy only.

For a framework that wrote the trace format itself, a second run, another device or a
spliced run: calls are aligned by (module path, step, index of the call within the step),
B's module paths first renamed by ``--map`` prefixes; outputs (forward) and input gradients
(backward) are compared with the replayer's comparison and land in the same report, so the
terminal, JSON and JUnit outputs read as a replay's. Parameter gradients join the backward
result of their module's last call in the step (as in replay); the loss, and parameter
gradients no compared call owns, make up each step's result. Calls only one trace has are
reported as skipped, with a note saying which. Forward results come in the order the calls
returned (a layer before the block around it), so the first forward divergence is the
innermost, earliest one rather than the model's root call.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import tracefmt

from ._compare import TensorComparison, compare_tensors
from ._report import CallResult, ReplayReport, StepResult
from ._tolerance import ToleranceTable, broadcast_term_sum, parse_tolerance_overrides

__all__ = ["diff_traces", "load_map", "rename_path"]


def load_map(path: str | Path) -> dict[str, str]:
    """A map file: a JSON object ``{"old.prefix": "new.prefix"}`` or ``old=new`` lines.

    Blank lines and ``#`` comments are ignored in the line form.
    """
    p = Path(path)
    if not p.is_file():
        raise tracefmt.UsageError("no such map file", path=p)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise tracefmt.UsageError(f"cannot read map file ({exc})", path=p) from None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise tracefmt.UsageError(f"map file is not valid JSON ({exc.msg}, line {exc.lineno})",
                                      path=p) from None
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise tracefmt.UsageError("map file must map strings to strings", path=p)
        return dict(data)
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        old, sep, new = line.partition("=")
        if not sep:
            raise tracefmt.UsageError(f"line {n}: expected old=new", path=p)
        out[old.strip()] = new.strip()
    return out


def rename_path(path: str, renames: Mapping[str, str]) -> str:
    """Apply the longest matching prefix rename; prefixes match whole dotted components."""
    best = None
    for old in renames:
        hit = old == "" or path == old or path.startswith(old + ".")
        if hit and (best is None or len(old) > len(best)):
            best = old
    if best is None:
        return path
    new, rest = renames[best], path[len(best):]
    if best == "":
        return f"{new}.{path}" if new and path else (new or path)
    return (new + rest) if new else rest.lstrip(".")


@dataclass
class _Side:
    """One trace with its calls indexed by alignment key."""

    reader: tracefmt.TraceReader
    renames: Mapping[str, str]
    by_key: dict[tuple[str, int, int], int] = field(default_factory=dict)

    def index(self, steps: set[int] | None) -> list[tracefmt.CallRecord]:
        """The calls of ``steps``; ``by_key`` aligns them. When a renamed path lands on a key
        an unrenamed one also has (a wrapper's root and its renamed ``model``), the renamed
        call wins: the map says that is the module meant."""
        calls = []
        for c in self.reader.call_ids:
            rec = self.reader.call(c)
            if steps is None or rec.step in steps:
                calls.append(rec)
        for renamed in (False, True):
            for rec in calls:
                path = rename_path(rec.module, self.renames)
                if (path != rec.module) == renamed:
                    self.by_key[(path, rec.step, rec.index)] = rec.call
        return calls

    def array(self, tid: int) -> tuple[np.ndarray | None, str]:
        info = self.reader.tensor(tid)
        return (self.reader.read(tid) if info.has_payload else None), info.dtype


class _Differ:
    def __init__(self, a: tracefmt.TraceReader, b: tracefmt.TraceReader, *,
                 renames: Mapping[str, str], table: ToleranceTable, keep_outputs: bool) -> None:
        self.a, self.b = _Side(a, {}), _Side(b, renames)
        self.renames = renames
        self.table = table
        self.keep = keep_outputs
        self.outputs: dict[tuple[int, str], dict[str, np.ndarray]] = {}
        # by (calls, parameter shape): a norm's weight and bias share one read of its grads
        self._term_sums: dict[tuple[tuple[int, ...], tuple[int, ...]], float | None] = {}

    def compare(self, name: str, a_id: int, b_id: int | None, *, module: str,
                input_scale: float | None = None, batched: bool = True
                ) -> TensorComparison | str:
        """A comparison, or a note when either side kept only statistics."""
        ref, dtype = self.a.array(a_id)
        if ref is None:
            return f"{name}: only statistics recorded in A, not compared"
        if b_id is None:
            cand: np.ndarray = np.full(ref.shape, np.nan) if ref.dtype.kind in "fc" \
                else np.zeros(ref.shape, ref.dtype)
            cand_dtype = dtype
        else:
            got, cand_dtype = self.b.array(b_id)
            if got is None:
                return f"{name}: only statistics recorded in B, not compared"
            cand = got
        return compare_tensors(
            ref, cand, dtype=dtype, candidate_dtype=cand_dtype, name=name,
            tolerance=self.table.tolerance_for(dtype, module), input_scale=input_scale,
            batch_dim=0 if ref.ndim and batched else None)

    def _tensors(self, pairs: Iterable[tuple[str, int, int | None]], module: str,
                 scale: float | None, store: dict[str, np.ndarray] | None
                 ) -> tuple[list[TensorComparison], list[str]]:
        tensors, notes = [], []
        for name, a_id, b_id in pairs:
            got = self.compare(name, a_id, b_id, module=module, input_scale=scale)
            if isinstance(got, str):
                notes.append(got)
                continue
            tensors.append(got)
            if store is not None and b_id is not None:
                arr, _ = self.b.array(b_id)
                if arr is not None:
                    store[name] = arr
        return tensors, notes

    def _scale(self, call: tracefmt.CallRecord) -> float | None:
        """Largest finite |grad_output| of a call in A: what its input gradients are built from."""
        vals = []
        if call.backward is None:
            return None
        for _, tid in tracefmt.iter_tensor_leaves(call.backward.grad_outputs, "outputs"):
            info = self.a.reader.tensor(tid)
            if info.summary is not None:
                vals += [abs(info.summary.min), abs(info.summary.max)]
            elif info.has_payload:
                arr = self.a.reader.read(tid).astype(np.float64, copy=False)
                finite = np.abs(arr[np.isfinite(arr)])
                vals.append(float(finite.max()) if finite.size else 0.0)
        vals = [v for v in vals if np.isfinite(v)]
        return max(vals) if vals else None

    def _term_sum(self, grad_id: int, call_ids: Iterable[int]) -> float | None:
        """``broadcast_term_sum`` of a parameter gradient over the grad outputs of its
        module's calls in A; only those ending in the parameter's shape are read."""
        reader = self.a.reader
        shape = tuple(reader.tensor(grad_id).shape)
        key = (tuple(call_ids), shape)
        if key not in self._term_sums:
            self._term_sums[key] = self._read_term_sum(shape, key[0])
        return self._term_sums[key]

    def _read_term_sum(self, shape: tuple[int, ...], call_ids: tuple[int, ...]) -> float | None:
        reader = self.a.reader
        tids = [tid for c in call_ids if (bwd := reader.call(c).backward) is not None
                for _, tid in tracefmt.iter_tensor_leaves(bwd.grad_outputs, "outputs")]
        arrays = (reader.read(tid) for tid in tids
                  if (info := reader.tensor(tid)).has_payload and len(info.shape) > len(shape)
                  and tuple(info.shape[-len(shape):]) == shape and info.dtype.startswith(("float", "bfloat")))
        return broadcast_term_sum(shape, arrays) if shape else None

    def forward(self, a: tracefmt.CallRecord, b: tracefmt.CallRecord) -> CallResult:
        b_out = dict(tracefmt.iter_tensor_leaves(b.outputs, "outputs"))
        a_out = list(tracefmt.iter_tensor_leaves(a.outputs, "outputs"))
        store = {} if self.keep else None
        tensors, notes = self._tensors(((n, t, b_out.get(n)) for n, t in a_out), a.module,
                                       None, store)
        extra = sorted(set(b_out) - {n for n, _ in a_out})
        if extra:
            notes.append(f"only in B, not compared: {', '.join(extra)}")
        if store:
            self.outputs[(a.call, "forward")] = store
        return CallResult(phase="forward", status=_status(tensors), tensors=tensors, notes=notes,
                          candidate=b.label, **_base(a))

    def backward(self, a: tracefmt.CallRecord, b: tracefmt.CallRecord) -> CallResult:
        assert a.backward is not None
        if b.backward is None:
            return CallResult(phase="backward", status="skipped", candidate=b.label,
                              notes=["no backward recorded for this call in B"], **_base(a))
        a_grads = [*tracefmt.iter_tensor_leaves(a.backward.grad_args, "args"),
                   *tracefmt.iter_tensor_leaves(a.backward.grad_kwargs, "kwargs")]
        b_grads = dict(tracefmt.iter_tensor_leaves(b.backward.grad_args, "args"))
        b_grads.update(tracefmt.iter_tensor_leaves(b.backward.grad_kwargs, "kwargs"))
        store = {} if self.keep else None
        tensors, notes = self._tensors(((n, t, b_grads.get(n)) for n, t in a_grads), a.module,
                                       self._scale(a), store)
        if store:
            self.outputs[(a.call, "backward")] = store
        return CallResult(phase="backward", status=_status(tensors), tensors=tensors, notes=notes,
                          candidate=b.label, **_base(a))

    def param_grads(self, step: int, owners: dict[str, CallResult],
                    scales: dict[str, float | None],
                    calls: Mapping[str, list[int]] | None = None) -> StepResult:
        """Loss and parameter gradients of one step; each gradient goes to its module's
        backward result in ``owners`` when there is one, else to the step result. A gradient
        that sums its module's grad outputs (``calls``: the module's calls of the step in A)
        is judged against the sum of its terms (``broadcast_term_sum``), others against
        ``scales``."""
        ga, gb = self.a.reader.param_grads(step), self.b.reader.param_grads(step)
        result = StepResult(step, ga.loss if ga else None, gb.loss if gb else None)
        if ga is None or gb is None:
            result.notes.append(f"no parameter gradients recorded in {'A' if ga is None else 'B'}")
        if result.loss_reference is not None and result.loss_candidate is not None:
            result.tensors.append(compare_tensors(
                np.float64(result.loss_reference), np.float64(result.loss_candidate),
                dtype="float32", name="loss", batch_dim=None,
                tolerance=self.table.tolerance_for("float32", "")))
        elif ga is not None and gb is not None:
            result.notes.append("loss not recorded in " + ("A" if ga.loss is None else "B"))
        if ga is None or gb is None:
            return result
        b_names = {rename_path(n, self.renames): tid for n, tid in gb.grads.items()}
        for m in self.a.reader.modules:
            for local in m.params:
                full = m.full_name(local)
                if local in m.shared or full not in ga.grads:
                    continue
                owner = owners.get(m.path)
                scale = scales.get(m.path)
                term_sum = self._term_sum(ga.grads[full], (calls or {}).get(m.path, ()))
                got = self.compare(f"param.{local}" if owner else f"param.{full}", ga.grads[full],
                                   b_names.get(full), module=m.path,
                                   input_scale=max(scale or 0.0, term_sum or 0.0) or scale,
                                   batched=False)
                if isinstance(got, str):
                    result.notes.append(got)
                elif owner is not None:
                    owner.tensors.append(got)
                    owner.status = _status(owner.tensors)
                else:
                    result.tensors.append(got)
        missing = sorted(set(b_names) - set(ga.grads))
        if missing:
            result.notes.append(f"parameter gradients only in B: {', '.join(missing[:8])}"
                                + (" ..." if len(missing) > 8 else ""))
        return result


def _completion_order(calls: list[tracefmt.CallRecord]) -> list[tracefmt.CallRecord]:
    """Calls in the order they returned: every call after the calls made inside it."""
    ids = {c.call for c in calls}
    children: dict[int | None, list[tracefmt.CallRecord]] = {}
    for c in calls:
        children.setdefault(c.parent if c.parent in ids else None, []).append(c)
    out: list[tracefmt.CallRecord] = []
    stack: list[tuple[tracefmt.CallRecord, bool]] = [
        (c, False) for c in reversed(children.get(None, []))]
    while stack:
        c, expanded = stack.pop()
        if expanded:
            out.append(c)
            continue
        stack.append((c, True))
        stack.extend((k, False) for k in reversed(children.get(c.call, [])))
    return out


def _status(tensors: list[TensorComparison]) -> str:
    return "pass" if all(t.passed for t in tensors) else "fail"


def _base(c: tracefmt.CallRecord) -> dict[str, Any]:
    return dict(call=c.call, module=c.module, type=c.type, step=c.step, index=c.index)


def _skipped(c: tracefmt.CallRecord, phase: str, note: str) -> CallResult:
    return CallResult(phase=phase, status="skipped", notes=[note], **_base(c))


def diff_traces(
    a: str | tracefmt.TraceReader,
    b: str | tracefmt.TraceReader,
    *,
    renames: Mapping[str, str] | None = None,
    tolerances: ToleranceTable | None = None,
    step: int | None = None,
    keep_outputs: bool = False,
) -> ReplayReport:
    """Compare trace B (the candidate) with trace A (the reference); see the module doc."""
    ra = tracefmt.open_trace(a) if isinstance(a, (str, Path)) else a
    try:
        rb = tracefmt.open_trace(b) if isinstance(b, (str, Path)) else b
        try:
            return _diff(ra, rb, renames=dict(renames or {}),
                         table=tolerances or parse_tolerance_overrides(None), step=step,
                         keep_outputs=keep_outputs)
        finally:
            if rb is not b:
                rb.close()
    finally:
        if ra is not a:
            ra.close()


def _diff(ra: tracefmt.TraceReader, rb: tracefmt.TraceReader, *, renames: dict[str, str],
          table: ToleranceTable, step: int | None, keep_outputs: bool) -> ReplayReport:
    if step is not None and step not in ra.steps:
        raise tracefmt.UsageError(f"no step {step} in this trace", path=ra.path)
    differ = _Differ(ra, rb, renames=renames, table=table, keep_outputs=keep_outputs)
    steps = None if step is None else {step}
    calls_a = differ.a.index(steps)
    calls_b = differ.b.index(steps)
    b_by_id = {c.call: c for c in calls_b}
    matched_b: set[int] = set()
    forward: list[CallResult] = []
    backward: dict[int, CallResult] = {}
    last_call: dict[tuple[str, int], int] = {}
    module_calls: dict[tuple[str, int], list[int]] = {}
    for ca in _completion_order(calls_a):
        key = (ca.module, ca.step, ca.index)
        b_id = differ.b.by_key.get(key)
        last_call[(ca.module, ca.step)] = ca.call
        module_calls.setdefault((ca.module, ca.step), []).append(ca.call)
        if b_id is None:
            forward.append(_skipped(ca, "forward", "only in A (no aligned call in B)"))
            if ca.backward is not None:
                backward[ca.call] = _skipped(ca, "backward", "only in A (no aligned call in B)")
            continue
        matched_b.add(b_id)
        cb = b_by_id[b_id]
        forward.append(differ.forward(ca, cb))
        if ca.backward is not None:
            backward[ca.call] = differ.backward(ca, cb)
    only_b = [c for c in _completion_order(calls_b) if c.call not in matched_b]
    step_results = []
    for s in sorted({c.step for c in calls_a} | ({step} if step is not None else set())):
        owners, scales = {}, {}
        for (module, st), call in last_call.items():
            if st != s:
                continue
            scales[module] = differ._scale(ra.call(call))
            r = backward.get(call)
            if r is not None and r.status != "skipped":
                owners[module] = r
        calls = {m: ids for (m, st), ids in module_calls.items() if st == s}
        step_results.append(differ.param_grads(s, owners, scales, calls))
    b_note = "only in B (no aligned call in A" + (" after --map renames)" if renames else ")")
    results = [*forward, *(_skipped(c, "forward", b_note) for c in only_b)]
    results += [backward[c] for c in ra.backward_order() if c in backward]
    results += [_skipped(c, "backward", b_note) for c in only_b if c.backward is not None]
    report = ReplayReport(str(ra.path), str(rb.path), "", results, tolerances=table.to_dict(),
                          mode="diff", steps=step_results)
    report.outputs = differ.outputs  # type: ignore[attr-defined]
    return report
