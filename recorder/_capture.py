"""Turning live tensors into tensor ids: snapshot, deduplicate, hand to the writer.

A snapshot is taken at once (a later in-place op must not change what was recorded): CPU
tensors are snapshotted copy-on-write (``_cow``; copied into reused host buffers where torch
cannot) and summarised on the summary thread, in both modes, so the training thread pays for
a copy only when the model writes into a tensor whose snapshot is still held; CUDA tensors
are cloned and summarised on the compute stream (fast, device memory) and, in full mode,
copied to pinned host memory on a side stream, so the compute stream never waits for the
host. The same tensor seen twice in a
step (a module's output is the next module's input) is stored once: the key is storage
pointer, offset, shape, strides, dtype and version counter, validated by a weak reference to
the first tensor so recycled memory is never mistaken for the same data.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch

import tracefmt

from ._cow import lazy_snapshot
from ._derive import Derivation, SharedSnapshot
from ._pool import HostBufferPool
from ._sink import TensorItem, WriterThread
from ._summary import (
    device_summaries,
    device_summary,
    host_summary,
    summary_vector,
    unpack_many,
    unpack_summary,
)
from ._torchio import dtype_name, to_numpy

__all__ = ["TensorCapture"]


def _current(key: tuple, t: torch.Tensor | None) -> bool:
    """Whether a persistent key still names ``t`` as it is: alive, and not modified since
    (versions only grow, so a weight's key from before an optimizer step never matches
    again; kept, they piled up by the model's parameter count every step)."""
    return t is not None and t._version == key[-2]


# const where torch has it: a mutable pointer would make a copy-on-write snapshot's source copy
# itself (a torch without it takes no such snapshots)
_data_ptr = getattr(torch.Tensor, "const_data_ptr", torch.Tensor.data_ptr)


def _summarised_on_device(t: torch.Tensor) -> bool:
    return t.is_cuda


class _SummaryBatch:
    """The Triton summaries of one stats flush, unpacked together on first use."""

    def __init__(self, many: Callable[..., list[tracefmt.TensorSummary]],
                 pending: list[_PendingSummary]) -> None:
        self._many = many
        self._pending = pending
        self._summaries: list[tracefmt.TensorSummary] | None = None
        self._lock = threading.Lock()

    @classmethod
    def share(cls, many: Callable[..., list[tracefmt.TensorSummary]],
              pending: list[_PendingSummary]) -> None:
        batch = cls(many, pending)
        for i, p in enumerate(pending):
            p.batch, p.index = batch, i

    def get(self, i: int) -> tracefmt.TensorSummary:
        with self._lock:
            if self._summaries is None:
                self._summaries = self._many([p.raw for p in self._pending],
                                             [p.unpack for p in self._pending])
                self._pending = []
            return self._summaries[i]


class _PendingSummary:
    """A stats-mode summary on its way from the device: vector, then host copy, then summary."""

    def __init__(self, vec: torch.Tensor, unpack: Callable[[np.ndarray], tracefmt.TensorSummary]) -> None:
        self.vec: torch.Tensor | None = vec
        self.unpack = unpack
        self.raw: np.ndarray | None = None
        self.batch: _SummaryBatch | None = None
        self.index = 0

    def summary(self) -> tracefmt.TensorSummary:
        if self.batch is not None:
            return self.batch.get(self.index)
        return self.unpack(self.raw)


class TensorCapture:
    """Captures tensors for one recording; ``mode`` is "full" or "stats"."""

    def __init__(self, sink: WriterThread, *, mode: str = "full", pool_bytes: int = 1 << 30) -> None:
        self.sink = sink
        self.mode = mode
        self._pool = HostBufferPool(max_cached_bytes=pool_bytes)
        self._seen: dict[tuple, tuple[weakref.ref, int]] = {}
        self._side_streams: dict[torch.device, Any] = {}
        self._pending_stats: list[_PendingSummary] = []
        self._stats_ready = threading.Event()
        self._alive: list[torch.Tensor] = []
        self._shared: dict[int, SharedSnapshot] = {}  # this step's full-mode snapshots by id
        self.captured = 0
        self.deduplicated = 0
        self.bytes_referenced = 0

    def new_step(self) -> None:
        """Forget per-step identities (weights keep theirs through ``capture(persistent=True)``).

        Within a step every captured tensor is kept alive, so its memory cannot be recycled
        for another tensor that would then be mistaken for it; gradients especially die young.
        """
        self._seen = {k: v for k, v in self._seen.items() if k[-1] and _current(k, v[0]())}
        self._alive.clear()
        self._shared.clear()

    def capture(self, t: torch.Tensor, *, persistent: bool = False,
                dropout_of: tuple[int, float] | None = None) -> int:
        """Record ``t`` (or find it already recorded) and return its tensor id.

        ``dropout_of=(base id, p)`` says ``t`` may be the recorded tensor ``base id`` through
        a dropout of probability ``p``: it is then stored as a mask against it when that
        reproduces it exactly (``_derive``).
        """
        tid, fresh, nbytes = self._identify(t, persistent)
        if fresh is None:
            return tid
        t = fresh
        if t.is_cuda:
            if self.mode == "stats":
                self._queue_stats(t, tid)
            else:
                self._queue_cuda(t, tid, nbytes, dropout_of)
        elif t.device.type == "cpu" and not (self.mode == "stats" and self._pending_stats):
            self._queue_cpu(t, tid, nbytes, dropout_of)
        elif self.mode == "stats":
            self._queue_stats(t, tid)
        else:
            self._queue_other(t, tid, nbytes)
        return tid

    def capture_many(self, tensors: list[torch.Tensor], *, persistent: bool = False) -> list[int]:
        """``capture`` of each tensor; in stats mode CUDA tensors of one shape are summarised
        together (a model's parameters and gradients: a few shapes, dozens of each)."""
        if self.mode != "stats" or not any(_summarised_on_device(t) for t in tensors):
            return [self.capture(t, persistent=persistent) for t in tensors]
        tids, new = [], []
        for t in tensors:
            if not _summarised_on_device(t):  # ids in put order: the batch so far goes first
                self._queue_new_stats(new)
                new = []
                tids.append(self.capture(t, persistent=persistent))
                continue
            tid, fresh, _ = self._identify(t, persistent)
            tids.append(tid)
            if fresh is not None:
                new.append((fresh, tid))
        self._queue_new_stats(new)
        return tids

    def _queue_new_stats(self, new: list[tuple[torch.Tensor, int]]) -> None:
        for (t, tid), (vec, unpack) in zip(new, device_summaries([t for t, _ in new]), strict=True):
            self._queue_stats(t, tid, (vec, unpack))

    def _identify(self, t: torch.Tensor, persistent: bool) -> tuple[int, torch.Tensor | None, int]:
        """The tensor id of ``t``: (id, None, 0) if already recorded, else a new id with the
        detached tensor and its byte count, to be queued in id order."""
        original = t
        t = t.detach() if t.requires_grad else t
        numel = t.numel()
        nbytes = numel * t.element_size()
        self.bytes_referenced += nbytes
        key = (  # torch.Size and stride() are tuples already
            _data_ptr(t) if numel else id(t),
            t.storage_offset(), t.shape, t.stride(), t.dtype, t.device, t._version, persistent,
        )
        hit = self._seen.get(key)
        if hit is not None and hit[0]() is not None:
            self.deduplicated += 1
            return hit[1], None, 0
        tid = self.sink.next_tensor_id()
        self._seen[key] = (weakref.ref(original), tid)
        if not persistent:
            self._alive.append(original)
        self.captured += 1
        return tid, t, nbytes

    def _queue_cpu(self, t: torch.Tensor, tid: int, nbytes: int,
                   dropout_of: tuple[int, float] | None = None) -> None:
        """Snapshot now: copy-on-write where torch can (the model pays for a copy only if it
        writes into ``t`` while the snapshot is held), else a copy into a pooled buffer. The
        summary thread summarises it, the writer stores it."""
        snap = lazy_snapshot(t)
        free = None
        if snap is None:
            snap, buf = self._pool.snapshot(t)
            free = partial(self._pool.give, buf)
        summary = partial(host_summary, snap)
        if self.mode != "full":
            self.sink.put_tensor(self._item(t, tid, nbytes, data=lambda: None, summary=summary,
                                            done=free))
            return
        shared = SharedSnapshot(snap, free=free)
        item = self._item(t, tid, nbytes, data=partial(to_numpy, snap), summary=summary,
                          done=shared.release)
        self._share(tid, shared, item, dropout_of)
        self.sink.put_tensor(item)

    def _share(self, tid: int, shared: SharedSnapshot, item: TensorItem,
               dropout_of: tuple[int, float] | None) -> None:
        """Offer this step's snapshot to later tensors; take the base's if this one may be
        derived from it."""
        self._shared[tid] = shared
        if dropout_of is None:
            return
        base_id, p = dropout_of
        base = self._shared.get(base_id)
        base_snap = base.acquire() if base is not None else None
        if base is not None and base_snap is not None:
            item.derivation = Derivation(base, base_id, base_snap, p)

    def _queue_other(self, t: torch.Tensor, tid: int, nbytes: int) -> None:
        """Another device (MPS, XPU): summarise on it, copy to the host now."""
        snap = t.clone(memory_format=torch.contiguous_format)
        vec = summary_vector(snap).cpu()
        host = snap.cpu()
        self.sink.put_tensor(self._item(t, tid, nbytes, data=lambda h=host: to_numpy(h),
                                        summary=lambda v=vec: unpack_summary(v.numpy())))

    def _item(self, t: torch.Tensor, tid: int, nbytes: int, **kw: Any) -> TensorItem:
        return TensorItem(tid=tid, dtype=dtype_name(t.dtype), shape=tuple(t.shape),
                          strides=t.stride(), requires_grad=t.requires_grad,
                          nbytes=nbytes, **kw)

    def _queue_cuda(self, t: torch.Tensor, tid: int, nbytes: int,
                    dropout_of: tuple[int, float] | None = None) -> None:
        """Snapshot on the compute stream, summarise on the device, copy to pinned host
        memory on a side stream: the host thread then only checksums and writes."""
        snap = t.clone(memory_format=torch.contiguous_format)
        vec, unpack = device_summary(snap)
        stream = self._side_streams.get(t.device)
        if stream is None:
            stream = self._side_streams[t.device] = torch.cuda.Stream(t.device)
        stream.wait_stream(torch.cuda.current_stream(t.device))
        with torch.cuda.stream(stream):
            host = torch.empty(snap.shape, dtype=snap.dtype, pin_memory=True)
            host.copy_(snap, non_blocking=True)
            host_vec = torch.empty(vec.shape, dtype=vec.dtype, pin_memory=True)
            host_vec.copy_(vec, non_blocking=True)
            snap.record_stream(stream)
            vec.record_stream(stream)
            done = torch.cuda.Event()
            done.record(stream)
        del snap, vec
        shared = SharedSnapshot(host)  # the summary thread reads a base after its ``ready``
        item = self._item(t, tid, nbytes, data=lambda h=host: to_numpy(h),
                          summary=lambda v=host_vec: unpack(v.numpy()), ready=done.synchronize,
                          done=shared.release)
        self._share(tid, shared, item, dropout_of)
        self.sink.put_tensor(item)

    def _queue_stats(self, t: torch.Tensor, tid: int,
                     summarised: tuple[torch.Tensor, Callable[[np.ndarray], tracefmt.TensorSummary]]
                     | None = None) -> None:
        """Stats mode on a device: the summary is computed there now, fetched at ``flush_stats``.

        CPU tensors come here too while device summaries wait for the step's end: queued
        behind those, a host copy would count against the memory budget until the step ends,
        and a full budget would then wait for a step end that cannot come.
        """
        vec, unpack = summarised if summarised is not None else device_summary(t)
        pending = _PendingSummary(vec, unpack)
        self._pending_stats.append(pending)
        self.sink.put_tensor(self._item(t, tid, 0, data=lambda: None, summary=pending.summary,
                                        ready=self._stats_ready.wait))

    def flush_stats(self) -> None:
        """One device-to-host transfer for all summaries computed since the last call."""
        if not self._pending_stats:
            return
        # device vectors in one transfer per device; host ones (CPU tensors summarised while
        # device summaries were pending) as they are: moving them over would sync per vector
        by_device: dict[torch.device, list[_PendingSummary]] = {}
        for p in self._pending_stats:
            if p.vec.device.type == "cpu":
                p.raw = p.vec.numpy()
            else:
                by_device.setdefault(p.vec.device, []).append(p)
        for pending in by_device.values():
            host = torch.cat([p.vec.reshape(-1) for p in pending]).cpu().numpy()
            pos = 0
            for p in pending:
                n = int(p.vec.numel())
                p.raw = host[pos:pos + n]
                pos += n
        groups: dict[Any, list[_PendingSummary]] = {}
        for p in self._pending_stats:
            many = unpack_many(p.unpack)
            if many is not None:
                groups.setdefault(many, []).append(p)
        for many, group in groups.items():
            _SummaryBatch.share(many, group)
        for p in self._pending_stats:
            p.vec = None
        self._pending_stats.clear()
        self._stats_ready.set()
        self._stats_ready = threading.Event()

    @property
    def has_pending_stats(self) -> bool:
        return bool(self._pending_stats)
