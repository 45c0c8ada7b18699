"""Reading payload bytes of an uncompressed ``/heap`` straight from the file.

HDF5 reads a byte range of a chunked dataset one chunk at a time through its chunk cache
(3.1-3.7 GB/s from a warm page cache here, against 5.4 GB/s this way), and those reads were
a third of replay's time. The chunks of an
uncompressed heap are plain byte runs in the file, written in order and never moved, so a
range can be read with ``os.preadv`` into the caller's buffer (a pinned host buffer, say):
one system call per run of adjacent chunks, the GIL released, no intermediate copy. HDF5 still
says where each chunk lies; anything it does not answer plainly (a filtered or unallocated
chunk, a chunk of the wrong size, a short read) makes ``read_into`` return False and the
caller reads through h5py, so a hostile file gets nothing this path would not have given it.
"""

from __future__ import annotations

import os

import h5py
import numpy as np

__all__ = ["DirectHeap"]


class DirectHeap:
    """Byte ranges of one uncompressed, chunked 1-D uint8 dataset, read with ``preadv``."""

    def __init__(self, ds: h5py.Dataset, fd: int) -> None:
        self._ds = ds
        self._fd = fd
        self._chunk = int(ds.chunks[0])
        self._where: dict[int, int | None] = {}  # chunk index -> file offset (None: not plain)

    @classmethod
    def open(cls, ds: h5py.Dataset) -> DirectHeap | None:
        """A direct reader for ``ds``, or None when its layout or file driver has no plain runs."""
        if ds.chunks is None or len(ds.chunks) != 1 or ds.dtype != np.uint8:
            return None
        if not hasattr(os, "preadv") or not hasattr(ds.id, "get_chunk_info_by_coord"):
            return None
        try:
            if ds.id.get_create_plist().get_nfilters() or ds.file.driver != "sec2":
                return None
            fd = int(ds.file.id.get_vfd_handle())
        except (OSError, ValueError, TypeError, RuntimeError):
            return None
        return cls(ds, fd)

    def _offset(self, k: int) -> int | None:
        if k not in self._where:
            where = None
            try:
                info = self._ds.id.get_chunk_info_by_coord((k * self._chunk,))
                if (info.byte_offset is not None and info.filter_mask == 0
                        and info.size == self._chunk):
                    where = int(info.byte_offset)
            except (OSError, ValueError, TypeError, RuntimeError):
                pass
            self._where[k] = where
        return self._where[k]

    def read_into(self, start: int, out: np.ndarray) -> bool:
        """Fill ``out`` (C-contiguous, any dtype) with the bytes from ``start``; False when some
        chunk is not a plain run (then ``out`` holds nothing meaningful)."""
        buf = memoryview(out.reshape(-1).view(np.uint8))
        n = len(buf)
        pos = 0
        while pos < n:
            k, within = divmod(start + pos, self._chunk)
            base = self._offset(k)
            if base is None:
                return False
            file_at, length = base + within, min(self._chunk - within, n - pos)
            # extend over following chunks that lie right after this one in the file
            while pos + length < n:
                nxt = self._offset(k + 1)
                if nxt is None or nxt != file_at + length:
                    break
                k += 1
                length += min(self._chunk, n - pos - length)
            got = os.preadv(self._fd, [buf[pos:pos + length]], file_at)
            if got != length:
                return False
            pos += length
        return True
