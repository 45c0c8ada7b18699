"""Reusable host buffers for CPU snapshots.

A snapshot must be taken while the recording thread waits (a later in-place op must not
change what is recorded), so its cost is paid by the training step. ``clone`` into fresh
memory pays a page fault per 4 KB page, more than the copy itself; a training step produces
the same tensor sizes every step, so buffers handed back by the writer thread are reused by
exact size and the copy runs at memory speed.
"""

from __future__ import annotations

import threading

import torch

__all__ = ["HostBufferPool"]


class HostBufferPool:
    """Byte buffers keyed by size; ``take`` on the recording thread, ``give`` on the writer's.

    At most ``max_cached_bytes`` are kept for reuse (buffers in use are bounded by the
    recorder's memory budget, not here); a buffer given back beyond that is freed.
    """

    def __init__(self, *, max_cached_bytes: int) -> None:
        self._max = max(int(max_cached_bytes), 0)
        self._free: dict[int, list[torch.Tensor]] = {}
        self._cached = 0
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> torch.Tensor:
        """A uint8 CPU tensor of ``nbytes`` (contents undefined)."""
        with self._lock:
            bucket = self._free.get(nbytes)
            if bucket:
                self._cached -= nbytes
                return bucket.pop()
        return torch.empty(nbytes, dtype=torch.uint8)

    def give(self, buf: torch.Tensor) -> None:
        """Return a buffer from ``take`` once nothing refers to its contents any more."""
        nbytes = buf.numel()
        with self._lock:
            if self._cached + nbytes <= self._max:
                self._free.setdefault(nbytes, []).append(buf)
                self._cached += nbytes

    def snapshot(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A contiguous copy of CPU tensor ``t`` and the buffer to ``give`` back after use."""
        nbytes = t.numel() * t.element_size()
        buf = self.take(nbytes)
        snap = buf.view(t.dtype).view(t.shape)
        snap.copy_(t)
        return snap, buf

    @property
    def cached_bytes(self) -> int:
        return self._cached
