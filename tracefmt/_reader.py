"""Lazy trace reader: opening reads the event index only, never tensor data.

Every way a file can be wrong surfaces as a TraceError naming the file. Files still being
written, or left by a killed recording, are opened in SWMR read mode; ``complete`` says
whether the END event is there.
"""

from __future__ import annotations

import ctypes
import functools
import os
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ._direct import DirectHeap
from ._dtypes import decode_values, dtype_info
from ._encoding import ENCODING_FLAGS, ZeroRows, parse_encoded
from ._errors import (
    IntegrityError,
    NotATraceError,
    TraceError,
    TraceFormatError,
    TraceNotFoundError,
    UnsafeTraceError,
    UnsupportedVersionError,
    UsageError,
)
from ._layout import (
    BATCH_STAT_COLUMNS,
    BATCH_STATS,
    BLOBS,
    EVENT_ROW,
    EVENTS,
    FLAG_ENCODING_BITS,
    FLAG_PAYLOAD,
    FLAG_REQUIRES_GRAD,
    FLAG_SUMMARY,
    FORMAT_MAJOR,
    FORMAT_NAME,
    HEAP,
    MAX_BATCH_STATS,
    MAX_ELEMENTS,
    MAX_NDIM,
    REQUIRED_DATASETS,
    TENSOR_ROW,
    TENSORS,
    EventKind,
)
from ._records import BackwardRecord, CallRecord, ParamGradsRecord, RunInfo, StepRecord, TensorInfo
from ._summary import TensorSummary
from ._tree import MAX_BLOB_BYTES, unpack_blob

__all__ = ["TraceReader", "open_trace", "open_hdf5"]

_ROW_BLOCK = 1024
_INFO_CACHE = 4096  # TensorInfo objects kept per reader
_ENCODING_FLAGS: dict[int, str | None] = {0: None, **ENCODING_FLAGS}  # anything else: ""
_WINDOW_ROWS = 1 << 18


def open_hdf5(path: str | Path) -> tuple[h5py.File, bool]:
    """Open an HDF5 file for reading, falling back to SWMR mode for live or killed recordings.

    Returns the file and whether SWMR mode was needed.
    """
    p = Path(path)
    if not p.exists():
        raise TraceNotFoundError("no such file", path=p)
    if p.is_dir():
        raise NotATraceError("is a directory, not a trace file", path=p)
    try:
        if not h5py.is_hdf5(p):
            raise NotATraceError("not an HDF5 file (no HDF5 signature)", path=p)
    except OSError as exc:
        raise TraceError(f"cannot read ({exc.strerror or exc})", path=p) from None
    try:
        return h5py.File(p, "r"), False
    except OSError as exc:
        first = str(exc)
    if "open for write" in first or "consistency flags" in first:
        try:
            return _open_swmr(p), True
        except OSError as exc:
            first = str(exc)
    reason = first.split("(")[-1].rstrip(")") if "(" in first else first
    raise TraceFormatError(f"HDF5 file is truncated or corrupt ({reason.strip()})", path=p)


_SWMR_READ_ATTEMPTS = 24


def _open_swmr(p: Path) -> h5py.File:
    """Open in SWMR read mode, only for files whose writer is live or was killed.

    HDF5 retries a metadata read that fails its checksum up to 100 times with doubling
    sleeps (for a reader racing a live writer), which makes a corrupt file hang a reader
    for an hour; ``_SWMR_READ_ATTEMPTS`` bounds that to well under a second.
    """
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_fclose_degree(h5py.h5f.CLOSE_STRONG)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    set_attempts = _hdf5_function("H5Pset_metadata_read_attempts")
    if set_attempts is not None:
        set_attempts(ctypes.c_int64(fapl.id), ctypes.c_uint(_SWMR_READ_ATTEMPTS))
    fid = h5py.h5f.open(os.fsencode(p), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ, fapl=fapl)
    return h5py.File(fid)


@functools.cache
def _hdf5_function(name: str) -> Any:
    """A function of the HDF5 library h5py has loaded (Linux only; None when unsure)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libhdf5" in line and ".so" in line}
    except OSError:
        return None
    paths = {p for p in paths if not Path(p).name.startswith("libhdf5_")}
    if len(paths) > 1:  # another HDF5 is loaded too: use h5py's bundled one or none
        paths = {p for p in paths if "h5py" in p}
    if len(paths) != 1:
        return None
    try:
        return getattr(ctypes.CDLL(paths.pop()), name)
    except (OSError, AttributeError):
        return None


def check_safe(f: h5py.File, path: str | Path) -> None:
    """Refuse links, virtual datasets and external storage anywhere in the file."""
    problems: list[str] = []
    seen: set[h5py.h5g.GroupID] = set()

    def visit(group: h5py.Group, prefix: str) -> None:
        if group.id in seen:  # a hard link back up the tree: visited already
            return
        seen.add(group.id)
        for name in group:
            link = group.get(name, getlink=True)
            full = f"{prefix}/{name}"
            if isinstance(link, (h5py.ExternalLink, h5py.SoftLink)):
                problems.append(f"{full} is a {type(link).__name__}, which readers must not follow")
                continue
            obj = group.get(name)
            if isinstance(obj, h5py.Dataset):
                if obj.is_virtual:
                    problems.append(f"{full} is a virtual dataset, which readers must not follow")
                elif obj.external:
                    problems.append(f"{full} stores its data in external files")
            elif isinstance(obj, h5py.Group):
                visit(obj, full)

    visit(f, "")
    if problems:
        raise UnsafeTraceError(problems[0], path=path)


def attr_text(obj: h5py.HLObject, name: str) -> str | None:
    """A string attribute (fixed or variable length), or None when absent or not a string."""
    v = obj.attrs.get(name)
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v[()]
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v if isinstance(v, str) else None


def attr_int(obj: h5py.HLObject, name: str) -> int | None:
    """An integer attribute, or None when absent or not an integer (bools are not)."""
    v = obj.attrs.get(name)
    if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        return int(v)
    return None


def _same_column_type(found: np.dtype, want: np.dtype) -> bool:
    """Same kind, width and shape; either byte order (h5py converts on read)."""
    return (found.shape == want.shape and found.base.kind == want.base.kind
            and found.base.itemsize == want.base.itemsize)


def check_identity(f: h5py.File, *, name: str, major: int, what: str) -> tuple[int, int]:
    """The root attributes every tensortrace file carries: its format name and a major version
    this reader implements. Returns ``(major, minor)``."""
    if attr_text(f, "format") != name:
        raise NotATraceError(f"HDF5 file without the {name!r} format attribute")
    got, minor = attr_int(f, "format_major"), attr_int(f, "format_minor")
    if got is None or minor is None:
        raise TraceFormatError("format_major/format_minor attributes missing or not integers")
    if got != major:
        raise UnsupportedVersionError(
            f"{what} {got}.{minor} is not supported (this reader reads {major}.x)"
            + ("; upgrade tensortrace" if got > major else ""))
    return got, minor


class TraceReader:
    """A trace opened for reading. Use ``open_trace``; close it (or use ``with``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file, self.swmr = open_hdf5(self.path)
        try:
            self._open()
        except TraceError as exc:
            self._file.close()
            if exc.path is None:
                exc.path = str(self.path)
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            self._file.close()
            raise TraceFormatError(f"unreadable trace structure ({exc})", path=self.path) from None

    # -- opening ---------------------------------------------------------------------------

    def _open(self) -> None:
        f = self._file
        self.format_version = check_identity(f, name=FORMAT_NAME, major=FORMAT_MAJOR,
                                             what="format version")
        self.producer = attr_text(f, "producer") or ""
        self.created = attr_text(f, "created") or ""
        self.compression = attr_text(f, "compression") or "none"
        check_safe(f, self.path)
        for name in REQUIRED_DATASETS:
            if not isinstance(f.get(name), h5py.Dataset):
                raise TraceFormatError(f"required dataset /{name} is missing")
        self._events_ds = f[EVENTS]  # first: data opened after the events is at least as new
        self._heap, self._blobs = f[HEAP], f[BLOBS]
        self._tensors, self._batch = f[TENSORS], f[BATCH_STATS]
        # a live (SWMR) file's chunks may still be in flight: those go through HDF5
        self._direct = None if self.swmr else DirectHeap.open(self._heap)
        for ds, want in ((self._heap, "u1"), (self._blobs, "u1")):
            if ds.ndim != 1 or ds.dtype != np.dtype(want):
                raise TraceFormatError(f"/{ds.name.strip('/')} must be a 1-D uint8 dataset")
        if (self._batch.ndim != 2 or self._batch.shape[1] != len(BATCH_STAT_COLUMNS)
                or self._batch.dtype.kind != "f"):
            raise TraceFormatError(
                f"/{BATCH_STATS} must be a float64 dataset of shape (N, {len(BATCH_STAT_COLUMNS)})")
        for ds, row in ((self._tensors, TENSOR_ROW), (self._events_ds, EVENT_ROW)):
            names = ds.dtype.names or ()
            missing = [n for n in row.names if n not in names]
            if ds.ndim != 1 or missing:
                raise TraceFormatError(f"/{ds.name.strip('/')} lacks fields {missing or 'of its layout'}")
            mistyped = [n for n in row.names if not _same_column_type(ds.dtype[n], row[n])]
            if mistyped:
                raise TraceFormatError(
                    f"/{ds.name.strip('/')} fields {mistyped} do not have the format's types")
        self._load_index()

    def _load_index(self) -> None:
        ev = np.asarray(self._events_ds[...])
        self._event_rows = ev
        self.n_tensors = int(self._tensors.shape[0])
        self._blob_len = int(self._blobs.shape[0])
        self._blob_cache: OrderedDict[int, Any] = OrderedDict()
        self._row_cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._info_cache: OrderedDict[int, TensorInfo] = OrderedDict()
        self._window: dict[str, tuple[int, np.ndarray]] = {}
        if len(ev) == 0 or ev["kind"][0] != EventKind.RUN:
            raise TraceFormatError("the first event is not the run event" if len(ev) else "no events recorded")
        self.run = RunInfo.from_dict(self._blob(0))
        self.modules = self.run.modules
        self._module_by_path = {m.path: m for m in self.modules}
        kinds = ev["kind"]
        self.complete = bool(len(ev)) and int(kinds[-1]) == EventKind.END
        self._call_events: dict[int, int] = {}
        self._bwd_events: dict[int, int] = {}
        self._step_events: dict[int, int] = {}
        self._grad_events: dict[int, int] = {}
        self.notes_events: list[int] = []
        for i in np.flatnonzero(kinds == EventKind.CALL):
            self._call_events[int(ev["call"][i])] = int(i)
        for i in np.flatnonzero(kinds == EventKind.BACKWARD):
            self._bwd_events[int(ev["call"][i])] = int(i)
        for i in np.flatnonzero(kinds == EventKind.STEP):
            self._step_events[int(ev["step"][i])] = int(i)
        for i in np.flatnonzero(kinds == EventKind.PARAM_GRADS):
            self._grad_events[int(ev["step"][i])] = int(i)
        self.notes_events = [int(i) for i in np.flatnonzero(kinds == EventKind.NOTE)]
        self.call_ids = sorted(self._call_events)
        self.steps = sorted(self._step_events)
        bwd = [(int(ev["blob_offset"][i]), c) for c, i in self._bwd_events.items()]
        self._bwd_event_order = [c for _, c in sorted(bwd)]
        self._call_module = {c: int(ev["module"][i]) for c, i in self._call_events.items()}

    # -- events ----------------------------------------------------------------------------

    def _blob(self, event: int) -> Any:
        cached = self._blob_cache.get(event)
        if cached is not None:
            self._blob_cache.move_to_end(event)
            return cached
        row = self._event_rows[event]
        off, n = int(row["blob_offset"]), int(row["blob_nbytes"])
        if n > MAX_BLOB_BYTES:
            raise UnsafeTraceError(f"event {event} declares a {n}-byte blob, over the limit")
        if off + n > self._blob_len:
            raise TraceFormatError(f"event {event} points past the end of /{BLOBS} (file truncated?)")
        data = self._windowed(self._blobs, off, off + n, self._blob_len, f"/{BLOBS}").tobytes()
        if zlib.crc32(data) != int(row["blob_crc32"]):
            raise IntegrityError(f"event {event}: blob checksum mismatch in /{BLOBS}[{off}:{off + n}]")
        value = unpack_blob(data, what=f"event {event} blob")
        if not isinstance(value, dict):
            raise TraceFormatError(f"event {event} blob is not a map")
        self._blob_cache[event] = value
        if len(self._blob_cache) > 4096:
            self._blob_cache.popitem(last=False)
        return value

    def event_count(self) -> int:
        return len(self._event_rows)

    def event_kind(self, event: int) -> EventKind:
        return EventKind(int(self._event_rows["kind"][event]))

    def event_body(self, event: int) -> dict:
        return self._blob(event)

    # -- calls -----------------------------------------------------------------------------

    @property
    def n_calls(self) -> int:
        return len(self._call_events)

    def module_info(self, path: str) -> Any:
        try:
            return self._module_by_path[path]
        except KeyError:
            raise UsageError(f"no module {path!r} in this trace", path=self.path) from None

    def call_module_index(self, call: int) -> int:
        return self._call_module[call]

    def call(self, call: int, *, backward: bool = True) -> CallRecord:
        """The forward record of a call, with its backward record attached when recorded."""
        try:
            event = self._call_events[call]
        except KeyError:
            raise UsageError(f"no call {call} in this trace ({self.n_calls} calls)", path=self.path) from None
        try:
            rec = CallRecord.from_dict(self._blob(event))
            if backward and call in self._bwd_events:
                bwd = BackwardRecord.from_dict(self._blob(self._bwd_events[call]))
                rec = _with_backward(rec, bwd)
        except TraceFormatError as exc:
            if exc.path is None:
                exc.path = str(self.path)
            raise
        return rec

    def calls(self, *, step: int | None = None, module: str | None = None) -> Iterator[CallRecord]:
        """Calls in forward execution order, optionally of one step or one module path."""
        mod_index = self.module_info(module).index if module is not None else None
        for c in self.call_ids:
            if mod_index is not None and self._call_module[c] != mod_index:
                continue
            if step is not None and int(self._event_rows["step"][self._call_events[c]]) != step:
                continue
            yield self.call(c)

    def call_step(self, call: int) -> int:
        return int(self._event_rows["step"][self._call_events[call]])

    def backward_order(self) -> list[int]:
        """Call ids in the order their backward ran."""
        return list(self._bwd_event_order)

    def has_backward(self, call: int) -> bool:
        return call in self._bwd_events

    def resolve_call(self, spec: str) -> int:
        """A call by index (``12``), module path (its first call) or ``path#N`` (its N-th)."""
        text = spec.strip()
        if text.isdigit():
            c = int(text)
            if c not in self._call_events:
                raise UsageError(f"no call {c} in this trace ({self.n_calls} calls)", path=self.path)
            return c
        path, _, nth = text.partition("#")
        if path == "<root>":
            path = ""
        info = self.module_info(path)
        want = int(nth) if nth.isdigit() else 0
        seen = [c for c in self.call_ids if self._call_module[c] == info.index]
        if want >= len(seen):
            raise UsageError(f"module {path!r} has {len(seen)} calls, no #{want}", path=self.path)
        return seen[want]

    # -- steps -----------------------------------------------------------------------------

    def step_record(self, step: int) -> StepRecord:
        if step not in self._step_events:
            raise UsageError(f"no step {step} in this trace", path=self.path)
        return StepRecord.from_dict(self._blob(self._step_events[step]))

    def param_grads(self, step: int) -> ParamGradsRecord | None:
        if step not in self._grad_events:
            return None
        return ParamGradsRecord.from_dict(self._blob(self._grad_events[step]))

    def notes(self) -> list[str]:
        return [str(self._blob(i).get("message", "")) for i in self.notes_events]

    # -- tensors ---------------------------------------------------------------------------

    def _row(self, tid: int) -> np.ndarray:
        if not isinstance(tid, (int, np.integer)) or not 0 <= tid < self.n_tensors:
            raise TraceFormatError(f"tensor id {tid} out of range (/{TENSORS} has {self.n_tensors} rows)",
                                   path=self.path)
        block = tid // _ROW_BLOCK
        rows = self._row_cache.get(block)
        if rows is None:
            rows = self._slice(self._tensors, block * _ROW_BLOCK, (block + 1) * _ROW_BLOCK,
                               f"/{TENSORS}")
            self._row_cache[block] = rows
            if len(self._row_cache) > 256:
                self._row_cache.popitem(last=False)
        return rows[tid - block * _ROW_BLOCK]

    def tensor(self, tid: int) -> TensorInfo:
        """Metadata and summary of one tensor; reads no payload.

        Recently built ones are kept (rows never change once written): replay asks for the
        same tensor several times per call, and building one costs about 90 µs.
        """
        key = int(tid) if isinstance(tid, (int, np.integer)) and not isinstance(tid, bool) else None
        cached = self._info_cache.get(key) if key is not None else None
        if cached is not None:
            self._info_cache.move_to_end(key)
            return cached
        info = self._tensor_info(tid)
        self._info_cache[info.id] = info
        if len(self._info_cache) > _INFO_CACHE:
            self._info_cache.popitem(last=False)
        return info

    def _tensor_info(self, tid: int) -> TensorInfo:
        r = self._row(tid)
        try:
            name = bytes(r["dtype"]).rstrip(b"\0").decode("ascii")
            info = dtype_info(name)
        except (UnicodeDecodeError, TraceFormatError):
            raise TraceFormatError(f"tensor {tid} has an unknown dtype {bytes(r['dtype'])!r}",
                                   path=self.path) from None
        ndim = int(r["ndim"])
        if ndim > MAX_NDIM:
            raise TraceFormatError(f"tensor {tid} has ndim {ndim} > {MAX_NDIM}", path=self.path)
        shape = tuple(int(x) for x in r["shape"][:ndim])
        numel = 1
        for s in shape:
            numel *= s
            if numel > MAX_ELEMENTS:
                raise UnsafeTraceError(f"tensor {tid} declares an absurd shape {shape}", path=self.path)
        flags = int(r["flags"])
        raw_payload = bool(flags & FLAG_PAYLOAD)
        encoding = _ENCODING_FLAGS.get(flags & FLAG_ENCODING_BITS, "")
        if encoding == "" or (raw_payload and encoding is not None):
            raise TraceFormatError(f"tensor {tid} has contradictory payload flags {flags:#04x}",
                                   path=self.path)
        has_payload = raw_payload or encoding is not None
        nbytes, offset = int(r["nbytes"]), int(r["offset"])
        if raw_payload and nbytes != numel * info.itemsize:
            raise TraceFormatError(
                f"tensor {tid}: {nbytes} bytes stored for shape {shape} of {name}", path=self.path)
        summary = None
        if flags & FLAG_SUMMARY:
            bo, bc = int(r["batch_offset"]), min(int(r["batch_count"]), MAX_BATCH_STATS)
            batch = (self._windowed(self._batch, bo, bo + bc, int(self._batch.shape[0]),
                                    f"/{BATCH_STATS}") if bc
                     else np.zeros((0, len(BATCH_STAT_COLUMNS))))
            summary = TensorSummary(
                count=int(r["count"]), min=float(r["min"]), max=float(r["max"]),
                mean=float(r["mean"]), std=float(r["std"]), nan=int(r["nan"]),
                posinf=int(r["posinf"]), neginf=int(r["neginf"]), zeros=int(r["zeros"]),
                hist=tuple(r["hist"].tolist()), batch=batch,
            )
        return TensorInfo(tid, name, shape, tuple(int(x) for x in r["strides"][:ndim]), offset,
                          nbytes, int(r["crc32"]), has_payload, bool(flags & FLAG_REQUIRES_GRAD),
                          summary, encoding)

    def nonfinite_flags(self) -> np.ndarray:
        """For every tensor id, whether its summary counts any NaN or Inf (False without one).

        Three columns read in blocks, instead of a TensorInfo per tensor: what a browser
        needs to flag every call of a big trace before its first screen.
        """
        out = np.zeros(self.n_tensors, dtype=bool)
        step = 1 << 16
        for start in range(0, self.n_tensors, step):
            stop = min(start + step, self.n_tensors)
            try:
                cols = np.asarray(self._tensors.fields(["flags", "nan", "posinf", "neginf"])[start:stop])
            except (OSError, ValueError) as exc:
                raise TraceFormatError(f"/{TENSORS}[{start}:{stop}] is unreadable ({exc})",
                                       path=self.path) from None
            bad = (cols["nan"] != 0) | (cols["posinf"] != 0) | (cols["neginf"] != 0)
            out[start:stop] = bad & ((cols["flags"] & FLAG_SUMMARY) != 0)
        return out

    def read(self, tid: int, *, decode: bool = True, rows: slice | None = None,
             verify: bool = False) -> np.ndarray:
        """A tensor's values as a numpy array (C order, recorded shape).

        ``decode`` widens bfloat16/float8 to float32 (else the stored unsigned view);
        ``rows`` reads only a slice of the first dimension; ``verify`` checks the CRC-32.
        """
        info = self.tensor(tid)
        if not info.has_payload:
            raise UsageError(f"tensor {tid} has no stored values (recorded in stats mode)", path=self.path)
        span = self._row_span(info, rows) if rows is not None else None
        if info.encoding is not None:
            arr = self._decoded(info, verify=verify)
            if span is not None:
                arr = arr[span[0]:span[1]]
        else:
            start, stop, shape = 0, info.nbytes, info.shape
            if span is not None:
                row_bytes = (info.nbytes // shape[0]) if shape[0] else 0
                start, stop = span[0] * row_bytes, span[1] * row_bytes
                shape = (span[1] - span[0], *shape[1:])
            raw = self._stored(info, start, stop, verify=verify and span is None)
            arr = raw.view(np.dtype(dtype_info(info.dtype).storage)).reshape(shape)
        return decode_values(arr, info.dtype) if decode else arr

    def _row_span(self, info: TensorInfo, rows: slice) -> tuple[int, int]:
        """``rows`` of dimension 0 as (first, end), checked."""
        if not info.shape:
            raise UsageError("a 0-d tensor has no rows to slice", path=self.path)
        r0, r1, step = rows.indices(info.shape[0])
        if step != 1:
            raise UsageError("row slices must be contiguous", path=self.path)
        return r0, max(r0, r1)

    def _check_extent(self, info: TensorInfo, stop: int) -> None:
        if info.offset + stop > self._heap.shape[0]:
            raise TraceFormatError(f"tensor {info.id} points past the end of /{HEAP} (file truncated?)",
                                   path=self.path)

    def _stored(self, info: TensorInfo, start: int, stop: int, *, verify: bool) -> np.ndarray:
        """Bytes ``start:stop`` of a tensor's stored payload; ``verify`` checks the whole one."""
        self._check_extent(info, stop)
        raw = self._read_heap(info.offset + start, info.offset + stop)
        if verify and zlib.crc32(raw) != info.crc32:
            raise IntegrityError(
                f"tensor {info.id}: checksum mismatch in "
                f"/{HEAP}[{info.offset}:{info.offset + info.nbytes}]", path=self.path)
        return raw

    def read_into(self, tid: int, out: np.ndarray) -> np.ndarray:
        """Fill ``out`` with a tensor's stored bytes and return it viewed with the stored dtype
        and the recorded shape (undecoded, as ``read(decode=False)``).

        ``out`` is any C-contiguous array of exactly the payload's size, such as the numpy
        view of a pinned host buffer, so values can go to a device without another copy.
        """
        info = self.tensor(tid)
        if not info.has_payload:
            raise UsageError(f"tensor {tid} has no stored values (recorded in stats mode)", path=self.path)
        if not out.flags.c_contiguous or out.nbytes != info.value_nbytes:
            raise UsageError(f"read_into needs a C-contiguous buffer of {info.value_nbytes} bytes, "
                             f"not {out.nbytes}", path=self.path)
        storage = np.dtype(dtype_info(info.dtype).storage)
        if info.encoding is not None:
            flat = out.reshape(-1).view(np.uint8)
            flat[:] = self._decoded(info, verify=False).reshape(-1).view(np.uint8)
            return flat.view(storage).reshape(info.shape)
        self._check_extent(info, info.nbytes)
        flat = out.reshape(-1).view(np.uint8)
        if info.nbytes and (self._direct is None
                            or not self._direct.read_into(info.offset, flat)):
            flat[:] = self._slice(self._heap, info.offset, info.offset + info.nbytes, f"/{HEAP}")
        return flat.view(storage).reshape(info.shape)

    def _decoded(self, info: TensorInfo, *, verify: bool) -> np.ndarray:
        """The stored (undecoded) values of an encoded tensor, in its recorded shape."""
        tid = info.id
        raw = self._stored(info, 0, info.nbytes, verify=verify)
        dt = dtype_info(info.dtype)
        storage = np.dtype(dt.storage)
        try:
            enc = parse_encoded(raw, dtype=info.dtype, shape=info.shape, itemsize=dt.itemsize,
                                tid=tid)
        except TraceFormatError as exc:
            raise TraceFormatError(exc.message, path=self.path) from None
        if info.encoding != enc.name:
            raise TraceFormatError(f"tensor {tid}: flags say {info.encoding}, payload says "
                                   f"{enc.name}", path=self.path)
        if isinstance(enc, ZeroRows):
            return enc.decode(info.shape, storage)
        base = self.tensor(enc.base)
        if base.encoding is not None or not base.has_payload:
            raise TraceFormatError(f"tensor {tid}: masked-scale base {enc.base} has no plain "
                                   f"payload", path=self.path)
        if base.dtype != info.dtype or base.shape != info.shape:
            raise TraceFormatError(f"tensor {tid}: masked-scale base {enc.base} is not of the "
                                   f"same dtype and shape", path=self.path)
        return enc.decode(self.read(enc.base, decode=False, verify=verify), storage)

    def _read_heap(self, start: int, stop: int) -> np.ndarray:
        """Heap bytes ``start:stop``: straight from the file where the layout allows."""
        if stop <= start:
            return np.zeros(0, np.uint8)
        if self._direct is not None:
            raw = np.empty(stop - start, np.uint8)
            if self._direct.read_into(start, raw):
                return raw
        return self._slice(self._heap, start, stop, f"/{HEAP}")

    def _windowed(self, ds: h5py.Dataset, start: int, stop: int, length: int,
                  what: str) -> np.ndarray:
        """Rows ``start:stop`` through a read-ahead window: records are read in order, and
        one HDF5 read per small record is what made opening thousands of calls slow."""
        base, block = self._window.get(what, (0, np.zeros((0,) + ds.shape[1:], ds.dtype)))
        if not (base <= start and stop <= base + len(block)):
            end = min(length, max(stop, start + _WINDOW_ROWS))
            base, block = start, self._slice(ds, start, end, what)
            self._window[what] = (base, block)
        return block[start - base:stop - base]

    def _slice(self, ds: h5py.Dataset, start: int, stop: int, what: str) -> np.ndarray:
        """Rows ``start:stop`` of a dataset; HDF5 errors (corrupt chunks) become TraceFormatError."""
        try:
            return np.asarray(ds[start:stop])
        except (OSError, ValueError) as exc:
            raise TraceFormatError(f"{what}[{start}:{stop}] is unreadable ({exc})",
                                   path=self.path) from None

    def verify_tensor(self, tid: int) -> None:
        """Raise IntegrityError when a tensor's stored bytes do not match their CRC-32."""
        info = self.tensor(tid)
        if info.has_payload:
            self.read(tid, decode=False, verify=True)

    # -- lifecycle -------------------------------------------------------------------------

    def refresh(self) -> None:
        """Pick up events appended since opening (a live recording in SWMR mode)."""
        if not self.swmr:
            return
        # events first: every event seen then has its data in the extents read after it
        for ds in (self._events_ds, self._blobs, self._tensors, self._batch, self._heap):
            ds.refresh()
        self._load_index()

    @property
    def bytes_stored(self) -> int:
        return int(self._heap.shape[0])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _with_backward(rec: CallRecord, bwd: BackwardRecord) -> CallRecord:
    from dataclasses import replace

    return replace(rec, backward=bwd)


def open_trace(path: str | Path) -> TraceReader:
    """Open a trace for reading; raises a TraceError naming the file when it is not one."""
    return TraceReader(path)
