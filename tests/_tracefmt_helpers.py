"""Shared helpers of the tracefmt tests: conformance files, raw rewrites, CLI runs."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import shutil
import sys
import zlib
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import h5py
import numpy as np

import tracefmt
from tracefmt import EventKind

ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE = ROOT / "spec" / "conformance"
SPEC = ROOT / "spec" / "trace-format.md"

RECORDS = {
    EventKind.STEP: tracefmt.StepRecord,
    EventKind.CALL: tracefmt.CallRecord,
    EventKind.BACKWARD: tracefmt.BackwardRecord,
    EventKind.PARAM_GRADS: tracefmt.ParamGradsRecord,
}


@cache
def generator() -> ModuleType:
    """``spec/conformance/generate.py`` as a module."""
    spec = importlib.util.spec_from_file_location("conformance_generate", CONFORMANCE / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def copy_conformance(name: str, dest: Path) -> Path:
    """A writable copy of one committed conformance file."""
    out = dest / name
    shutil.copyfile(CONFORMANCE / name, out)
    return out


def rewrite(path: Path, change: Callable[[dict[str, Any], dict[str, np.ndarray]], None]) -> Path:
    """Load a trace's attributes and datasets raw, let ``change`` edit them, write it back."""
    gen = generator()
    attrs, data = gen.load_raw(path)
    change(attrs, data)
    path.unlink()
    gen.save_raw(path, attrs, data)
    return path


def set_event_blob(path: Path, event: int, blob: bytes) -> Path:
    """Replace one event's body bytes (with a matching CRC-32)."""
    gen = generator()

    def change(attrs: dict[str, Any], data: dict[str, np.ndarray]) -> None:
        blobs = gen.event_blobs(data)
        blobs[event] = blob
        gen.set_blobs(data, blobs)

    return rewrite(path, change)


def set_tensor_field(path: Path, tid: int, field: str, value: Any) -> Path:
    with h5py.File(path, "r+") as f:
        row = f["tensors"][tid]
        row[field] = value
        f["tensors"][tid] = row
    return path


def set_event_field(path: Path, event: int, field: str, value: Any) -> Path:
    with h5py.File(path, "r+") as f:
        row = f["events"][event]
        row[field] = value
        f["events"][event] = row
    return path


def crc(data: bytes) -> int:
    return zlib.crc32(data)


def full_read(path: Path, *, verify: bool = False) -> None:
    """Everything a reader can do with a trace: every event decoded and checked, every
    tensor row and every referenced tensor read (CRC-checked with ``verify``)."""
    with tracefmt.open_trace(path) as r:
        referenced: set[int] = set()
        for i in range(r.event_count()):
            try:
                kind = r.event_kind(i)
            except ValueError:
                continue
            body = r.event_body(i)
            record = RECORDS.get(kind)
            if record is not None:
                rec = record.from_dict(body)
                if isinstance(rec, (tracefmt.CallRecord, tracefmt.BackwardRecord)):
                    referenced.update(rec.tensors().values())
        for tid in sorted(referenced | set(range(r.n_tensors))):
            info = r.tensor(tid)
            if info.has_payload:
                r.read(tid, verify=verify)


def cli(argv: list[str]) -> tuple[int, str, str]:
    """Run ``tensortrace ARGV`` in this process: exit status, stdout, stderr."""
    from tracefmt.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = int(exc.code or 0)
    return rc, out.getvalue(), err.getvalue()


def outcome(path: Path, *, deep: bool = False) -> str:
    """``valid``, ``incomplete`` or the name of the TraceError a full read raises."""
    try:
        full_read(path, verify=deep)
        report = tracefmt.validate_trace(path, deep=deep)
    except tracefmt.TraceError as exc:
        return type(exc).__name__
    return report.status
