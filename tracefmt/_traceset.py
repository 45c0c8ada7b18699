"""Trace sets (spec/traceset-format.md): one trace per rank of a distributed run, plus an index.

``tensortrace record`` under torchrun writes ``OUT.rank{R}.h5`` on every rank and, on rank 0,
a small index at ``OUT.h5`` naming them. Every reader command takes either a trace or an index;
``open_trace_or_rank`` is the one place that tells them apart. Rank file names come from the
file, so they are resolved relative to the index's directory and never allowed to leave it.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import h5py
import numpy as np

from ._errors import (
    TraceError,
    TraceFormatError,
    TraceWriteError,
    UnsafeTraceError,
    UsageError,
)
from ._reader import (
    TraceReader,
    attr_int,
    attr_text,
    check_identity,
    check_safe,
    open_hdf5,
    open_trace,
)
from ._records import TensorInfo
from ._tree import pack_blob, unpack_blob
from ._writer import set_text_attr

__all__ = [
    "TRACESET_FORMAT",
    "TRACESET_MAJOR",
    "TRACESET_MINOR",
    "LAYOUT_KINDS",
    "TraceSet",
    "RankMismatch",
    "is_traceset",
    "open_traceset",
    "resolve_rank_path",
    "open_trace_or_rank",
    "rank_file_name",
    "write_traceset_index",
    "cross_rank_alerts",
    "reduced_grads_note",
]

TRACESET_FORMAT = "tensortrace-traceset"
TRACESET_MAJOR = 1
TRACESET_MINOR = 0
LAYOUT_KINDS = ("ddp", "fsdp", "none")
REPLICATED_KINDS = ("ddp", "fsdp")

MAX_WORLD_SIZE = 1 << 16
MAX_NAME_BYTES = 4096
MAX_LAYOUT_BYTES = 1 << 20
RANKS = "ranks"
LAYOUT = "layout"


@dataclass(frozen=True)
class TraceSet:
    """An opened index: its attributes, the rank files it names and the parallel layout."""

    path: Path
    format_version: tuple[int, int]
    world_size: int
    backend: str
    created: str
    producer: str
    rank_names: tuple[str, ...]
    layout: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(self.layout.get("kind", "none"))

    def rank_path(self, rank: int) -> Path:
        """Rank ``rank``'s trace file, relative to the index's directory."""
        if not isinstance(rank, int) or not 0 <= rank < self.world_size:
            raise UsageError(f"no rank {rank} in this trace set (ranks 0..{self.world_size - 1})",
                             path=self.path)
        return self.path.parent / self.rank_names[rank]

    def open_rank(self, rank: int) -> TraceReader:
        return open_trace(self.rank_path(rank))


def is_traceset(path: str | Path) -> bool:
    """Whether ``path`` is an HDF5 file declaring the trace-set format (never raises)."""
    p = Path(path)
    try:
        if not p.is_file() or not h5py.is_hdf5(p):
            return False
        with h5py.File(p, "r") as f:
            return attr_text(f, "format") == TRACESET_FORMAT
    except (OSError, ValueError, KeyError, RuntimeError):  # h5py: KeyError for a bad header
        return False


def check_rank_name(name: str, *, path: str | Path | None = None) -> str:
    """A rank file name from an index, refused unless it is relative and stays below the index.

    Absolute paths (POSIX or Windows, drive letters, UNC) and ``..`` components are refused
    with UnsafeTraceError: an index from elsewhere must not make a reader open arbitrary files.
    """
    if not name or "\0" in name or len(name.encode("utf-8", "replace")) > MAX_NAME_BYTES:
        raise UnsafeTraceError(f"rank file name {name[:80]!r} is empty, too long or has NUL",
                               path=path)
    win = PureWindowsPath(name)
    if PurePosixPath(name).is_absolute() or win.is_absolute() or win.drive or win.root:
        raise UnsafeTraceError(f"rank file name {name[:80]!r} is absolute; "
                               "only paths relative to the index are allowed", path=path)
    if ".." in name.replace("\\", "/").split("/"):
        raise UnsafeTraceError(f"rank file name {name[:80]!r} has a '..' component; "
                               "rank files must lie below the index's directory", path=path)
    return name


def open_traceset(path: str | Path) -> TraceSet:
    """Read and check a trace-set index; raises a TraceError naming the file when it is not one."""
    p = Path(path)
    f, _ = open_hdf5(p)
    try:
        return _read_index(f, p)
    except TraceError as exc:
        if exc.path is None:
            exc.path = str(p)
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise TraceFormatError(f"unreadable trace-set index ({exc})", path=p) from None
    finally:
        f.close()


def _read_index(f: h5py.File, p: Path) -> TraceSet:
    major, minor = check_identity(f, name=TRACESET_FORMAT, major=TRACESET_MAJOR,
                                  what="trace-set format")
    check_safe(f, p)
    world = attr_int(f, "world_size")
    if world is None or not 1 <= world <= MAX_WORLD_SIZE:
        raise TraceFormatError(f"world_size must be an integer in 1..{MAX_WORLD_SIZE}")
    ranks = f.get(RANKS)
    if not isinstance(ranks, h5py.Dataset) or ranks.ndim != 1 or ranks.dtype.kind not in "SOU":
        raise TraceFormatError(f"/{RANKS} must be a 1-D dataset of strings")
    if ranks.shape[0] != world:
        raise TraceFormatError(f"/{RANKS} names {ranks.shape[0]} files for world_size {world}")
    names = []
    for raw in ranks[...]:
        name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        names.append(check_rank_name(name.rstrip("\0"), path=p))
    if len(set(names)) != len(names):
        raise TraceFormatError(f"/{RANKS} names the same file for two ranks")
    layout = _read_layout(f)
    return TraceSet(p, (major, minor), world, attr_text(f, "backend") or "",
                    attr_text(f, "created") or "", attr_text(f, "producer") or "",
                    tuple(names), layout)


def _read_layout(f: h5py.File) -> dict[str, Any]:
    ds = f.get(LAYOUT)
    if ds is None:
        return {"kind": "none"}
    if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or ds.dtype != np.dtype("u1"):
        raise TraceFormatError(f"/{LAYOUT} must be a 1-D uint8 dataset")
    if ds.shape[0] > MAX_LAYOUT_BYTES:
        raise UnsafeTraceError(f"/{LAYOUT} is {ds.shape[0]} bytes, over {MAX_LAYOUT_BYTES}")
    layout = unpack_blob(np.asarray(ds[...]).tobytes(), what=f"/{LAYOUT}")
    if not isinstance(layout, dict) or not isinstance(layout.get("kind"), str):
        raise TraceFormatError(f"/{LAYOUT} must be a msgpack map with a string 'kind'")
    return layout


def resolve_rank_path(path: str | Path, *, rank: int = 0) -> Path:
    """The trace file to read: ``path`` itself for a trace, rank ``rank``'s file for a set."""
    if is_traceset(path):
        return open_traceset(path).rank_path(rank)
    if rank != 0:
        raise UsageError(f"--rank {rank} asked for, but this is a single trace, not a trace set",
                         path=path)
    return Path(path)


def open_trace_or_rank(path: str | Path, *, rank: int = 0) -> TraceReader:
    """A reader for a single trace, or for rank ``rank`` of a trace set (default rank 0)."""
    return open_trace(resolve_rank_path(path, rank=rank))


def rank_file_name(index: str | Path, rank: int) -> str:
    """``OUT.h5`` -> ``OUT.rank{R}.h5``: the name rank ``rank`` writes beside the index."""
    p = Path(index)
    return f"{p.stem}.rank{rank}{p.suffix or '.h5'}"


def write_traceset_index(path: str | Path, *, rank_files: list[str], backend: str,
                         layout: dict[str, Any], producer: str | None = None) -> Path:
    """Write an index atomically (temporary file, then rename), so a reader never sees half."""
    p = Path(path)
    if not 1 <= len(rank_files) <= MAX_WORLD_SIZE:
        raise UsageError(f"a trace set has 1..{MAX_WORLD_SIZE} rank files, not {len(rank_files)}")
    for name in rank_files:
        check_rank_name(name, path=p)
    if layout.get("kind") not in LAYOUT_KINDS:
        raise UsageError(f"layout kind must be one of {LAYOUT_KINDS}, not {layout.get('kind')!r}")
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    try:
        with h5py.File(tmp, "w", track_order=True) as f:
            set_text_attr(f, "format", TRACESET_FORMAT)
            f.attrs["format_major"] = np.int64(TRACESET_MAJOR)
            f.attrs["format_minor"] = np.int64(TRACESET_MINOR)
            f.attrs["world_size"] = np.int64(len(rank_files))
            set_text_attr(f, "backend", backend)
            set_text_attr(f, "created",
                          _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
            set_text_attr(f, "producer", producer or _producer())
            encoded = [n.encode("utf-8") for n in rank_files]
            width = max(1, max(len(n) for n in encoded))
            f.create_dataset(RANKS, data=np.array(encoded, h5py.string_dtype("utf-8", width)))
            f.create_dataset(LAYOUT, data=np.frombuffer(pack_blob(layout), np.uint8))
        os.replace(tmp, p)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise TraceWriteError(f"cannot write the trace-set index ({exc})", path=p) from None
    return p


def _producer() -> str:
    try:
        from importlib.metadata import version

        return f"tensortrace {version('tensortrace')}"
    except Exception:
        return "tensortrace"


def reduced_grads_note(reader: TraceReader) -> str | None:
    """Why a rank trace's PARAM_GRADS cannot be matched by replaying that rank alone, or None.

    Under DDP or FSDP the recorded gradients are averaged over all ranks by the all-reduce,
    while a replay of one rank's calls produces that rank's local gradients only.
    """
    info = reader.run.environment.get("distributed")
    if not isinstance(info, dict) or info.get("layout") not in REPLICATED_KINDS:
        return None
    world = info.get("world_size")
    if not isinstance(world, int) or world < 2:
        return None
    return (f"parameter gradients not compared: the recorded ones are averaged over {world} "
            f"ranks by {info['layout']}'s all-reduce, this replay has one rank's calls")


# -- cross-rank checks ---------------------------------------------------------------------


@dataclass(frozen=True)
class RankMismatch:
    """A replicated tensor that is not bitwise identical on every rank (``check`` alert).

    Has the attributes ``tensortrace check`` prints for its own alerts (label, call, phase,
    module, tensor, message), so both kinds go through one printer.
    """

    rank: int
    step: int
    phase: str  # "params" (values at the step's start) | "param_grads" (after all-reduce)
    tensor: str
    message: str
    ranks: tuple[int, ...] = ()
    kind: str = "rank_mismatch"
    call: None = None
    label: str = "rank mismatch"

    @property
    def module(self) -> str:
        return self.tensor.rpartition(".")[0]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "call": None, "module": self.module, "phase": self.phase,
                "tensor": self.tensor, "batch_indices": [], "message": self.message,
                "rank": self.rank, "ranks": list(self.ranks), "step": self.step}


_SUMMARY_EXACT = ("count", "nan", "posinf", "neginf", "zeros", "min", "max", "hist")


def _same_tensor(a: TraceReader, ia: TensorInfo, b: TraceReader, ib: TensorInfo) -> bool:
    """Bitwise equality of two recorded tensors; stats-mode tensors by their exact summary
    fields (order statistics and counts, which do not depend on a device's reduction order)."""
    if ia.dtype != ib.dtype or ia.shape != ib.shape:
        return False
    if ia.has_payload and ib.has_payload:
        raw = ia.encoding is None and ib.encoding is None  # else the stored bytes may differ
        if raw and (ia.nbytes != ib.nbytes or ia.crc32 != ib.crc32):
            return False
        return bool(np.array_equal(a.read(ia.id, decode=False).view(np.uint8),
                                   b.read(ib.id, decode=False).view(np.uint8)))
    sa, sb = ia.summary, ib.summary
    if sa is None or sb is None:
        return True
    for name in _SUMMARY_EXACT:
        x, y = getattr(sa, name), getattr(sb, name)
        if x != y and not (isinstance(x, float) and math.isnan(x) and math.isnan(y)):
            return False
    return True


def _describe_difference(a: TraceReader, ia: TensorInfo, b: TraceReader, ib: TensorInfo) -> str:
    if ia.dtype != ib.dtype or ia.shape != ib.shape:
        return f"{ib.dtype}{list(ib.shape)} instead of {ia.dtype}{list(ia.shape)}"
    if not (ia.has_payload and ib.has_payload):
        return "summaries differ"
    x = a.read(ia.id).astype(np.float64, copy=False)
    y = b.read(ib.id).astype(np.float64, copy=False)
    with np.errstate(invalid="ignore"):
        diff = np.abs(x - y)
    bad = int(np.count_nonzero(~((x == y) | (np.isnan(x) & np.isnan(y)))))
    finite = diff[np.isfinite(diff)]
    worst = f"{float(finite.max()):.3g}" if finite.size else "nan"
    return f"{bad} of {x.size} elements differ (max |diff| {worst})"


def _maps(reader: TraceReader, step: int, phase: str) -> dict[str, int] | None:
    if phase == "params":
        return reader.step_record(step).params if step in reader.steps else None
    grads = reader.param_grads(step)
    return None if grads is None else grads.grads


def cross_rank_alerts(traceset: str | Path | TraceSet) -> list[RankMismatch]:
    """Compare what data parallelism keeps identical on every rank, bitwise, against rank 0.

    For DDP and FSDP layouts: parameter values at each step's start and parameter gradients
    after the all-reduce. One alert per step and phase, naming the first tensor (by name)
    that differs and the first rank that disagrees; when every other rank agrees with each
    other but not with rank 0, rank 0 is the one named. Other layouts give no alerts.
    """
    ts = traceset if isinstance(traceset, TraceSet) else open_traceset(traceset)
    if ts.kind not in REPLICATED_KINDS or ts.world_size < 2:
        return []
    readers = [ts.open_rank(r) for r in range(ts.world_size)]
    try:
        alerts = []
        for step in readers[0].steps:
            for phase in ("params", "param_grads"):
                alert = _compare_step(readers, step, phase)
                if alert is not None:
                    alerts.append(alert)
        return alerts
    finally:
        for reader in readers:
            reader.close()


def _compare_step(readers: list[TraceReader], step: int, phase: str) -> RankMismatch | None:
    ref = _maps(readers[0], step, phase)
    if ref is None:
        return None
    what = "parameter" if phase == "params" else "parameter gradient"
    firsts: dict[int, tuple[str, str]] = {}
    for rank, reader in enumerate(readers[1:], start=1):
        other = _maps(reader, step, phase)
        if other is None:
            firsts[rank] = ("", f"rank {rank} has no {phase} record for step {step}")
            continue
        for name in sorted(set(ref) | set(other)):
            if name not in ref or name not in other:
                firsts[rank] = (name, f"{what} {name} recorded on only one of ranks 0 and {rank}")
                break
            ia, ib = readers[0].tensor(ref[name]), reader.tensor(other[name])
            if not _same_tensor(readers[0], ia, reader, ib):
                how = _describe_difference(readers[0], ia, reader, ib)
                firsts[rank] = (name, f"{what} {name} at step {step}: rank {rank} differs "
                                      f"from rank 0: {how}")
                break
    if not firsts:
        return None
    differing = tuple(sorted(firsts))
    culprit = differing[0]
    if len(differing) == len(readers) - 1 >= 2 and _others_agree(readers, step, phase):
        culprit = 0
    name, message = firsts[differing[0]]
    if culprit == 0:
        message = (f"{what} {name} at step {step}: rank 0 differs from ranks "
                   f"1..{len(readers) - 1}, which agree with each other")
    return RankMismatch(culprit, step, phase, name, message, differing)


def _others_agree(readers: list[TraceReader], step: int, phase: str) -> bool:
    """Whether ranks 1..N-1 hold identical tensors (then rank 0 is the odd one out)."""
    base = _maps(readers[1], step, phase)
    if base is None:
        return False
    for reader in readers[2:]:
        other = _maps(reader, step, phase)
        if other is None or set(other) != set(base):
            return False
        for name, tid in base.items():
            if not _same_tensor(readers[1], readers[1].tensor(tid), reader,
                                reader.tensor(other[name])):
                return False
    return True
