"""Salvage a killed or partly corrupt recording into a complete, valid trace.

Copies, through the public reader and writer, every event of the committed prefix whose
body decodes and checks and whose tensors are intact (rows consistent, CRC-32s matching),
then writes the END event. Tensor ids change in the copy, so every reference is remapped;
the output appears only by an atomic rename, so a failed repair leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py

from ._errors import TraceError, TraceWriteError, UsageError
from ._layout import FORMAT_MINOR, EventKind
from ._reader import TraceReader, open_trace
from ._validate import _Validator
from ._writer import COMPRESSIONS, TraceWriter, set_text_attr

__all__ = ["RepairReport", "repair_trace", "default_repair_path"]


@dataclass(frozen=True)
class RepairReport:
    """What ``repair_trace`` kept and dropped."""

    source: str
    output: str
    was_complete: bool
    events_total: int
    events_kept: int
    calls: int
    steps: int
    tensors_total: int
    tensors_kept: int
    dropped: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def default_repair_path(path: str | Path) -> Path:
    """``run.h5`` -> ``run.repaired.h5``; other names get ``.repaired.h5`` appended."""
    p = Path(path)
    return p.with_suffix(".repaired.h5") if p.suffix == ".h5" else p.with_name(p.name + ".repaired.h5")


def repair_trace(path: str | Path, *, output: str | Path | None = None) -> RepairReport:
    """Write the salvageable part of a trace, with an END event, to ``output``.

    Raises a TraceError when the file cannot be opened as a trace at all (its run event
    is needed to make sense of the rest) or the output cannot be written.
    """
    src = Path(path)
    out = Path(output) if output is not None else default_repair_path(src)
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise UsageError("the repaired copy would replace the original; choose another -o",
                         path=src)
    with open_trace(src) as reader:
        if reader.format_version[1] > FORMAT_MINOR:
            raise UsageError(
                "written by format {}.{}; repair it with a tensortrace that knows that minor "
                "version".format(*reader.format_version), path=src)
        check = _Validator(reader, deep=True, salvage=True)
        check.run()
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            report = _copy(reader, check, tmp, out)
            _restore_attrs(tmp, reader)
            os.replace(tmp, out)
        except TraceError:
            raise
        except OSError as exc:
            raise TraceWriteError(f"cannot write the repaired copy ({exc})", path=out) from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
    return report


def _copy(reader: TraceReader, check: _Validator, tmp: Path, out: Path) -> RepairReport:
    compression = reader.compression if reader.compression in COMPRESSIONS else "none"
    writer = TraceWriter(tmp, producer=reader.producer or None, compression=compression)
    ids: dict[int, int] = {}
    dropped = [f"event {i}: {reason}" for i, reason in sorted(check.dropped.items())]

    def new_id(old: int) -> int:
        if old not in ids:
            ids[old] = _copy_tensor(reader, writer, old)
        return ids[old]

    try:
        run = copy.deepcopy(reader.event_body(0))
        lost = _lost_leaf(check.bad_tensors, reader.n_tensors)

        def ctor_leaf(node: dict) -> dict:
            return lost(node) or _retag(node, new_id)

        for m in run.get("modules", []):
            ctor = m.get("ctor")
            if isinstance(ctor, dict):
                for key in ("args", "kwargs"):
                    if key in ctor:
                        ctor[key] = _remap_tree(ctor[key], ctor_leaf)
        writer.add_event(EventKind.RUN, run)
        links = _call_links(check)
        for i in check.kept:
            row = reader._event_rows[i]
            kind = EventKind(int(row["kind"]))
            body = _remap_body(kind, copy.deepcopy(reader.event_body(i)), new_id)
            if kind == EventKind.CALL:
                _relink(body, links[body["call"]])
            writer.add_event(kind, body, step=int(row["step"]), call=int(row["call"]),
                             module=int(row["module"]))
        writer.close()
    except BaseException:
        writer.abandon()
        raise
    return RepairReport(
        source=str(reader.path), output=str(out), was_complete=reader.complete,
        events_total=reader.event_count(), events_kept=1 + len(check.kept),
        calls=writer.counts[EventKind.CALL], steps=writer.counts[EventKind.STEP],
        tensors_total=reader.n_tensors, tensors_kept=len(ids), dropped=tuple(dropped),
    )


def _call_links(check: _Validator) -> dict[int, tuple[int | None, int, bool]]:
    """Parent, depth and whether the link was cut, for every kept call.

    A call whose parent call was dropped keeps no parent (depth 0), and depths below it
    follow, so the copy states only what it holds. Parents have lower ids than their
    children, so one pass in id order sees every parent first.
    """
    links: dict[int, tuple[int | None, int, bool]] = {}
    for cid in sorted(check.calls):
        c = check.calls[cid]
        parent = check.calls.get(c.parent) if c.parent is not None else None
        if parent is not None and c.parent in links and parent.step == c.step:
            links[cid] = (c.parent, links[c.parent][1] + 1, False)
        else:
            links[cid] = (None, 0, c.parent is not None)
    return links


def _relink(body: dict, link: tuple[int | None, int, bool]) -> None:
    parent, depth, cut = link
    if cut:
        notes = list(body.get("notes") or [])
        notes.append(f"parent call {body.get('parent')} was lost; unlinked by tensortrace repair")
        body["notes"] = notes
    body["parent"], body["depth"] = parent, depth


def _copy_tensor(reader: TraceReader, writer: TraceWriter, old: int) -> int:
    """Copy one tensor; an encoded payload is stored decoded (its base may be renumbered)."""
    info = reader.tensor(old)
    data = reader.read(old, decode=False) if info.has_payload else None
    return writer.add_tensor(data, dtype=info.dtype, shape=info.shape, strides=info.strides,
                             summary=info.summary, requires_grad=info.requires_grad)


def _lost_leaf(bad: dict[int, str], n_tensors: int) -> Callable[[dict], dict | None]:
    """Module constructor arguments are kept even when one of their tensors is damaged."""

    def leaf(node: dict) -> dict | None:
        tid = node["id"]
        if 0 <= tid < n_tensors and tid not in bad:
            return None
        return {"$": "opaque", "type": "tensor", "repr": f"tensor {tid} lost in repair"}

    return leaf


def _retag(node: dict, new_id: Callable[[int], int]) -> dict:
    return {**node, "id": new_id(node["id"])}


def _remap_tree(node: Any, leaf: Callable[[dict], dict]) -> Any:
    """A copy of a tree node with every tensor leaf replaced by ``leaf(leaf_node)``."""
    if not isinstance(node, dict):
        return node
    tag = node.get("$")
    if tag == "tensor":
        return leaf(node)
    if tag in ("tuple", "list"):
        return {**node, "items": [_remap_tree(x, leaf) for x in node["items"]]}
    if tag in ("dict", "object"):
        key = "items" if tag == "dict" else "fields"
        return {**node, key: [[k, _remap_tree(v, leaf)] for k, v in node[key]]}
    return node


def _remap_body(kind: EventKind, body: dict, new_id: Callable[[int], int]) -> dict:
    """The body with every tensor id, in trees and in name -> id maps, replaced."""

    def leaf(node: dict) -> dict:
        return _retag(node, new_id)

    trees = {EventKind.CALL: ("args", "kwargs", "outputs"),
             EventKind.BACKWARD: ("grad_outputs", "grad_args", "grad_kwargs")}.get(kind, ())
    maps = {EventKind.CALL: ("buffers_before", "buffers_after"),
            EventKind.STEP: ("params", "buffers"),
            EventKind.PARAM_GRADS: ("grads",)}.get(kind, ())
    for key in trees:
        if key in body:
            body[key] = _remap_tree(body[key], leaf)
    for key in maps:
        if isinstance(body.get(key), dict):
            body[key] = {name: new_id(tid) for name, tid in body[key].items()}
    if kind == EventKind.CALL and isinstance(body.get("rng"), dict):
        body["rng"] = {dev: [new_id(t) for t in ids] if isinstance(ids, list) else new_id(ids)
                       for dev, ids in body["rng"].items()}
    return body


def _restore_attrs(tmp: Path, reader: TraceReader) -> None:
    """Keep when the recording was made; say when it was repaired."""
    with h5py.File(tmp, "r+") as f:
        if reader.created:
            set_text_attr(f, "created", reader.created)
        set_text_attr(f, "repaired", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
