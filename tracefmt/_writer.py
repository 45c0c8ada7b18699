"""Streaming trace writer: appends tensors and events as they happen.

Everything lands in five preallocated, extendable datasets, so the file can be switched to
HDF5 SWMR mode right after creation: from then on a flushed prefix of the recording stays
readable even if the process is killed. Tensors and blobs are staged in memory and written
in few large slices at ``flush()``; events are written last, so an event on disk never
refers to data that is not.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import os
import re
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ._dtypes import decode_values, dtype_info, encode_values
from ._encoding import parse_encoded
from ._errors import TraceFormatError, TraceWriteError, UsageError
from ._layout import (
    BATCH_STAT_COLUMNS,
    BATCH_STATS,
    BLOBS,
    EVENT_ROW,
    EVENTS,
    FLAG_PAYLOAD,
    FLAG_REQUIRES_GRAD,
    FLAG_SUMMARY,
    FORMAT_MAJOR,
    FORMAT_MINOR,
    FORMAT_NAME,
    HEAP,
    HIST_BINS,
    MAX_BATCH_STATS,
    MAX_NDIM,
    TENSOR_ROW,
    TENSORS,
    EventKind,
)
from ._records import RunInfo
from ._reserve import reserve_space
from ._summary import TensorSummary, compute_summary
from ._tree import pack_blob

__all__ = ["TraceWriter", "COMPRESSIONS", "set_text_attr"]

COMPRESSIONS = ("none", "gzip", "lzf")
_JOIN_BELOW = 1 << 20
_HEAP_CHUNK = 1 << 20
_CHUNK_CACHE_BYTES = 768 << 10  # below _HEAP_CHUNK, above the tables' chunks (518 KB at most)


def _producer() -> str:
    try:
        from importlib.metadata import version

        return f"tensortrace {version('tensortrace')}"
    except Exception:
        return "tensortrace"


class TraceWriter:
    """Append-only writer of one trace file (format 1.1).

    Not thread-safe: use it from one thread (the recorder's writer thread).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        producer: str | None = None,
        compression: str = "none",
        flush_bytes: int = 64 << 20,
        swmr: bool = True,
    ) -> None:
        if compression not in COMPRESSIONS:
            raise UsageError(f"unknown compression {compression!r}; choose from {COMPRESSIONS}")
        self.path = Path(path)
        self._flush_bytes = flush_bytes
        try:
            # a chunk cache smaller than a heap chunk: HDF5 then writes whole heap chunks
            # straight from our arrays instead of copying them through the cache, while the
            # tables' smaller chunks still collect their appended rows there
            # (a compressed heap keeps HDF5's default: a chunk written in parts would be
            # decompressed and compressed again for each part)
            cache = {"rdcc_nbytes": _CHUNK_CACHE_BYTES} if compression == "none" else {}
            self._file = h5py.File(self.path, "w", libver="latest", track_order=True, **cache)
        except OSError as exc:
            raise TraceWriteError(f"cannot create trace ({_reason(exc)})", path=self.path) from None
        f = self._file
        set_text_attr(f, "format", FORMAT_NAME)
        f.attrs["format_major"] = np.int64(FORMAT_MAJOR)
        f.attrs["format_minor"] = np.int64(FORMAT_MINOR)
        set_text_attr(f, "producer", producer or _producer())
        set_text_attr(f, "created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        set_text_attr(f, "compression", compression)
        filt: dict[str, Any] = {}
        if compression == "gzip":
            filt = {"compression": "gzip", "compression_opts": 4}
        elif compression == "lzf":
            filt = {"compression": "lzf"}
        # every heap byte is written before anything refers to it: no fill value pass
        self._heap = f.create_dataset(HEAP, (0,), maxshape=(None,), dtype="u1", chunks=(_HEAP_CHUNK,),
                                      fill_time="never", **filt)
        self._blobs = f.create_dataset(BLOBS, (0,), maxshape=(None,), dtype="u1", chunks=(1 << 16,))
        self._tensors = f.create_dataset(TENSORS, (0,), maxshape=(None,), dtype=TENSOR_ROW, chunks=(1024,))
        ncol = len(BATCH_STAT_COLUMNS)
        self._batch = f.create_dataset(BATCH_STATS, (0, ncol), maxshape=(None, ncol), dtype="<f8", chunks=(4096, ncol))
        self._events = f.create_dataset(EVENTS, (0,), maxshape=(None,), dtype=EVENT_ROW, chunks=(1024,))
        if swmr:
            f.swmr_mode = True
        self._heap_len = self._blob_len = self._n_tensors = self._batch_len = self._n_events = 0
        self._staged_heap: list[np.ndarray] = []
        self._staged_heap_bytes = 0
        self._staged_blobs: list[bytes] = []
        self._staged_blob_bytes = 0  # running totals: summing the lists per add is quadratic
        self._staged_tensors: list[tuple] = []
        self._staged_batch: list[np.ndarray] = []
        self._staged_batch_rows = 0
        self._can_reserve = True
        self._shed_from = self._shed_mark = 0  # file offsets: see _shed_page_cache
        self._staged_events: list[tuple] = []
        self._closed = False
        self.bytes_written = 0
        self.counts: dict[EventKind, int] = {k: 0 for k in EventKind}

    # -- tensors ---------------------------------------------------------------------------

    def add_tensor(
        self,
        data: np.ndarray | None,
        *,
        dtype: str | None = None,
        shape: tuple[int, ...] | None = None,
        strides: tuple[int, ...] | None = None,
        summary: TensorSummary | None | str = "auto",
        requires_grad: bool = False,
        crc32: int | None = None,
        encoded: np.ndarray | None = None,
    ) -> int:
        """Stage one tensor and return its id.

        ``data`` holds the values in C order (for bfloat16/float8, their same-width unsigned
        bits); ``None`` records metadata and summary only (stats mode). ``summary="auto"``
        computes it with numpy. The array is kept by reference until the next flush.
        ``crc32`` is the stored bytes' CRC-32 when the caller computed it already (on another
        thread, so the writing thread only writes). ``encoded`` stores the values as an
        encoded payload instead (uint8 bytes from ``tracefmt.encode_masked_scale`` or
        ``encode_zero_rows``; spec §4.1); ``data`` is then only used for the summary.
        """
        if data is not None:
            name = dtype or _numpy_name(data.dtype)
            stored = encode_values(np.asarray(data), name)
            shape = tuple(stored.shape) if shape is None else tuple(shape)
        else:
            if dtype is None or shape is None:
                raise UsageError("a tensor without data needs dtype and shape")
            name, stored = dtype, None
        info = dtype_info(name)
        if len(shape) > MAX_NDIM:
            raise UsageError(f"tensors of rank {len(shape)} exceed the format's limit of {MAX_NDIM}")
        if summary == "auto":
            if stored is None:
                raise UsageError("summary='auto' needs data")
            summary = compute_summary(decode_values(stored, name))
        flags = (FLAG_SUMMARY if summary is not None else 0) | (FLAG_REQUIRES_GRAD if requires_grad else 0)
        offset = nbytes = crc = 0
        if encoded is not None:
            raw = np.ascontiguousarray(encoded, dtype=np.uint8).reshape(-1)
            try:
                enc = parse_encoded(raw, dtype=name, shape=tuple(shape), itemsize=info.itemsize,
                                    tid=self.n_tensors)
            except TraceFormatError as exc:
                raise UsageError(f"bad encoded payload: {exc.message}") from None
            flags |= enc.flag
            nbytes = raw.size
            offset = self._heap_len + self._staged_heap_bytes
            crc = zlib.crc32(raw) if crc32 is None else int(crc32)
            self._staged_heap.append(raw)
            self._staged_heap_bytes += nbytes
        elif stored is not None:
            raw = stored.reshape(-1).view(np.uint8)
            nbytes = raw.size
            if nbytes != int(np.prod(shape, dtype=np.int64)) * info.itemsize:
                raise UsageError(f"data of {nbytes} bytes does not match shape {shape} of {name}")
            flags |= FLAG_PAYLOAD
            offset = self._heap_len + self._staged_heap_bytes
            crc = zlib.crc32(raw) if crc32 is None else int(crc32)
            self._staged_heap.append(raw)
            self._staged_heap_bytes += nbytes
        batch_offset = batch_count = 0
        if summary is not None and len(summary.batch):
            rows = np.asarray(summary.batch[:MAX_BATCH_STATS], dtype=np.float64)
            batch_offset = self._batch_len + self._staged_batch_rows
            batch_count = len(rows)
            self._staged_batch.append(rows)
            self._staged_batch_rows += len(rows)
        pad = MAX_NDIM - len(shape)
        st = tuple(strides) if strides is not None else _c_strides(shape)
        s = summary
        self._staged_tensors.append((
            offset, nbytes, name.encode(), len(shape), flags,
            tuple(shape) + (0,) * pad, tuple(st) + (0,) * pad, crc,
            *(
                (s.min, s.max, s.mean, s.std, s.count, s.nan, s.posinf, s.neginf, s.zeros, s.hist)
                if s is not None
                else (np.nan, np.nan, np.nan, np.nan, 0, 0, 0, 0, 0, (0,) * HIST_BINS)
            ),
            batch_offset, batch_count,
        ))
        tid = self._n_tensors + len(self._staged_tensors) - 1
        if self._staged_heap_bytes >= self._flush_bytes:
            self._write_staged(events=False)
        return tid

    # -- events ----------------------------------------------------------------------------

    def add_event(self, kind: EventKind, body: Mapping[str, Any], *, step: int = -1,
                  call: int = -1, module: int = -1) -> int:
        """Stage one event with its msgpack body; returns the event's row index."""
        if self._closed:
            raise UsageError("the trace writer is closed", path=self.path)
        blob = pack_blob(dict(body))
        offset = self._blob_len + self._staged_blob_bytes
        self._staged_blobs.append(blob)
        self._staged_blob_bytes += len(blob)
        self._staged_events.append((int(kind), step, call, module, offset, len(blob), zlib.crc32(blob)))
        self.counts[EventKind(kind)] += 1
        return self._n_events + len(self._staged_events) - 1

    def write_run(self, run: RunInfo) -> None:
        if self._n_events or self._staged_events:
            raise UsageError("the run event must be the first event")
        self.add_event(EventKind.RUN, run.to_dict())

    # -- lifecycle -------------------------------------------------------------------------

    def flush(self) -> None:
        """Write everything staged and make it durable for readers (SWMR flush)."""
        self._write_staged(events=True)
        try:
            # data before what refers to it: a failed or killed flush never commits an event
            # (or tensor row) whose data is not on disk, and readers see the same order
            for ds in (self._heap, self._batch, self._tensors, self._blobs, self._events):
                ds.flush()
            self._file.flush()
        except Exception as exc:  # h5py raises RuntimeError for a failed H5Fflush
            raise self._failed(exc, "flush failed") from None
        self._release()

    def close(self, *, complete: bool = True) -> None:
        """Flush; with ``complete`` also write the END event that marks a whole recording."""
        if self._closed:
            return
        try:
            if complete:
                self.add_event(EventKind.END, {
                    "events": self._n_events + len(self._staged_events) + 1,
                    "calls": self.counts[EventKind.CALL],
                    "steps": self.counts[EventKind.STEP],
                })
            self.flush()
        finally:
            self._closed = True
            with contextlib.suppress(Exception):
                self._file.close()

    def abandon(self) -> None:
        """Close without the END marker, keeping what was flushed (used after errors)."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self._file.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            with contextlib.suppress(Exception):
                self.flush()
            self.abandon()

    @property
    def staged_heap_bytes(self) -> int:
        """Payload bytes added but not yet written; their arrays are still referenced."""
        return self._staged_heap_bytes

    @property
    def n_tensors(self) -> int:
        return self._n_tensors + len(self._staged_tensors)

    # -- internals -------------------------------------------------------------------------

    def _write_staged(self, *, events: bool) -> None:
        self._reserve(events=events)
        try:
            if self._write_heap():
                self._shed_page_cache()
            if self._staged_tensors:
                rows = np.array(self._staged_tensors, dtype=TENSOR_ROW)
                self._append(self._tensors, rows, self._n_tensors)
                self._n_tensors += len(rows)
                self._staged_tensors.clear()
            if self._staged_batch:
                rows = np.concatenate(self._staged_batch)
                self._append(self._batch, rows, self._batch_len)
                self._batch_len += len(rows)
                self._staged_batch.clear()
                self._staged_batch_rows = 0
            if events and self._staged_events:
                blob = b"".join(self._staged_blobs)
                self._append(self._blobs, np.frombuffer(blob, np.uint8), self._blob_len)
                self._blob_len += len(blob)
                self._staged_blobs.clear()
                self._staged_blob_bytes = 0
                rows = np.array(self._staged_events, dtype=EVENT_ROW)
                self._append(self._events, rows, self._n_events)
                self._n_events += len(rows)
                self._staged_events.clear()
        except Exception as exc:
            raise self._failed(exc, "write failed") from None

    def _reserve(self, *, events: bool) -> None:
        """Claim the disk space the staged data needs before HDF5 writes any of it.

        HDF5 records new space in its metadata (the end of file in the superblock, chunk
        addresses) before the data lands there; when the data then cannot be written, the
        file claims to be longer than it is and no reader will open it. Reserving first
        makes a full disk (or a file size limit) fail here, with the file as the last flush
        left it. The slack covers one fresh chunk of every dataset plus metadata.
        """
        if not self._can_reserve:
            return  # a file system that cannot reserve: fall back to failing mid-write
        need = self._staged_heap_bytes + len(self._staged_tensors) * TENSOR_ROW.itemsize
        need += self._staged_batch_rows * len(BATCH_STAT_COLUMNS) * 8
        if events:
            need += self._staged_blob_bytes
            need += len(self._staged_events) * EVENT_ROW.itemsize
        slack = sum(int(np.prod(ds.chunks)) * ds.dtype.itemsize
                    for ds in (self._heap, self._blobs, self._tensors, self._batch, self._events))
        try:
            self._can_reserve = reserve_space(self._file.id.get_vfd_handle(),
                                              self._file.id.get_filesize(),
                                              need + slack + (256 << 10))
        except OSError as exc:
            raise self._failed(exc, "write failed") from None

    def _release(self) -> None:
        """Give back the part of the reservation HDF5 did not use (the file ends at its EOA)."""
        with contextlib.suppress(OSError):
            fd = self._file.id.get_vfd_handle()
            end = self._file.id.get_filesize()
            if os.fstat(fd).st_size > end:
                os.ftruncate(fd, end)

    def _failed(self, exc: Exception, what: str) -> TraceWriteError:
        """Stop writing to the file for good and describe why.

        After a failed write HDF5 still holds metadata (extents, chunk addresses, the end of
        file) for data that never reached the disk; writing it at close makes the file
        unreadable, and a close that fails corrupts h5py's ids (a crash at exit). Pointing the
        descriptor at /dev/null lets the close succeed while the file keeps what was flushed.
        """
        with contextlib.suppress(Exception):
            fd = self._file.id.get_vfd_handle()
            null = os.open(os.devnull, os.O_RDWR)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)
        return TraceWriteError(f"{what} ({_reason(exc)}); data flushed before is kept",
                               path=self.path)

    def _shed_page_cache(self) -> None:
        """Start writing back what the last heap write added, and drop from the page cache
        what the write before it added (written back by now).

        A recording writes gigabytes that nothing reads soon. Left in the page cache they
        evict the user's data, and the kernel's reclaim and dirty-page throttling were
        charged to every thread: on the 2-core bench machine the training thread's system
        time went from 0.6-0.8 s to 0.17 s a step. Pages still dirty or in flight are skipped
        by the kernel and dropped at a later call.
        """
        if not hasattr(os, "posix_fadvise"):
            return
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            fd = self._file.id.get_vfd_handle()
            end = self._file.id.get_filesize()
            os.posix_fadvise(fd, self._shed_from, max(end - self._shed_from, 0),
                             os.POSIX_FADV_DONTNEED)
            self._shed_from, self._shed_mark = self._shed_mark, end

    def _write_heap(self) -> bool:
        """Write the staged payloads; False when there were none."""
        if not self._staged_heap:
            return False
        start = self._heap_len
        self._heap.resize((start + self._staged_heap_bytes,))
        pos = start
        group: list[np.ndarray] = []
        group_bytes = 0
        for raw in self._staged_heap:
            if raw.size >= _JOIN_BELOW:
                if group:
                    self._heap[pos:pos + group_bytes] = np.concatenate(group)
                    pos += group_bytes
                    group, group_bytes = [], 0
                self._heap[pos:pos + raw.size] = raw
                pos += raw.size
            else:
                group.append(raw)
                group_bytes += raw.size
        if group:
            self._heap[pos:pos + group_bytes] = np.concatenate(group)
            pos += group_bytes
        self.bytes_written += pos - start
        self._heap_len = pos
        self._staged_heap.clear()
        self._staged_heap_bytes = 0
        return True

    @staticmethod
    def _append(ds: h5py.Dataset, rows: np.ndarray, start: int) -> None:
        ds.resize((start + len(rows),) + ds.shape[1:])
        ds[start:start + len(rows)] = rows


def set_text_attr(obj: h5py.HLObject, name: str, text: str) -> None:
    """A fixed-length UTF-8 string attribute.

    h5py writes a Python str as a variable-length string, which lives in the HDF5 global
    heap; the library parses a damaged global heap without bounds (one flipped bit can hang
    every reader), so the format's own strings stay in the object header.
    """
    data = text.encode("utf-8")
    obj.attrs.create(name, np.array(data), dtype=h5py.string_dtype("utf-8", max(1, len(data))))


def _numpy_name(dt: np.dtype) -> str:
    name = {"?": "bool"}.get(dt.char, dt.name)
    dtype_info(name)
    return name


def _c_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(strides))


_REASONS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large: the file size limit was reached",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.EIO: "I/O error",
}


def _reason(exc: BaseException) -> str:
    """A short cause: HDF5 puts the errno inside its message (``errno = 28``), not on the error."""
    text = str(exc)
    code = getattr(exc, "errno", None)
    if code is None:
        found = re.search(r"errno = (\d+)", text)
        code = int(found.group(1)) if found else None
    if code in _REASONS:
        return _REASONS[code]
    if code:
        return os.strerror(code)
    return text.split("\n")[0].split(" (")[0] or type(exc).__name__
