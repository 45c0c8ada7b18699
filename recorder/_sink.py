"""Two background threads draining a bounded queue into a TraceWriter.

The recording thread hands over host copies (or pending device copies) and events. A
summary thread waits for device copies and computes the summaries that were not computed on
the device, and the payload checksums; the writer thread only writes. Both mostly run in
torch, zlib and HDF5 code that releases the GIL, so on a machine with a spare core they
overlap each other and the training step. Everything passes both threads in the order it was
put, so an event never reaches the file before the tensors it refers to. Tensor ids are
assigned on the recording thread in the same order the writer will add them, so trees can
refer to them at once. When queued bytes exceed the memory budget, ``put`` blocks until the
writer catches up.

Items are handed over in batches (up to ``_BATCH_ITEMS`` items or ``_BATCH_BYTES`` of tensor
bytes, and at every flush): one queue put per item woke a background thread per item, and
those wake-ups and GIL hand-offs cost the recording thread about 4 of the ~50 ms a step that
stats mode added to the ``skeleton`` bench model.

A failure on the writer thread is raised on the recording thread at its next ``put``, so a
full disk stops the recording within one call instead of at ``close``. Flushed call ids are
reported (``on_flush``) only after ``TraceWriter.flush()`` returned: a reported call is on
disk and survives the process being killed.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import tracefmt
from tracefmt import EventKind

from ._derive import Derivation, encode_payload

__all__ = ["WriterThread", "TensorItem"]


@dataclass
class TensorItem:
    """A tensor on its way to disk; ``ready`` is waited for before ``data()`` is read."""

    tid: int
    dtype: str
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    requires_grad: bool
    nbytes: int
    data: Callable[[], np.ndarray | None]
    summary: Callable[[], tracefmt.TensorSummary | None] | None = None
    ready: Callable[[], None] | None = None
    done: Callable[[], None] | None = None  # called once the writer no longer reads ``data``
    computed: tracefmt.TensorSummary | None = None  # set by the summary thread
    array: np.ndarray | None = None  # ``data()``, set by the summary thread
    failed: BaseException | None = None  # raised by the summary thread, reported by the writer
    derivation: Derivation | None = None  # the tensor it may be encoded against
    encoded: np.ndarray | None = None  # the encoded payload to store, set by the summary thread


_STOP = object()
_BATCH_ITEMS = 64
_BATCH_BYTES = 4 << 20


class WriterThread:
    """Owns the TraceWriter; every write happens on its thread."""

    def __init__(self, writer: tracefmt.TraceWriter, *, budget_bytes: int,
                 on_flush: Callable[[tuple[int, ...]], None] | None = None) -> None:
        self._writer = writer
        self._on_flush = on_flush
        self._unflushed_calls: list[int] = []
        self._held: list[Callable[[], None]] = []  # ``done`` of tensors staged in the writer
        self._budget = max(int(budget_bytes), 1 << 20)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._summarised: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._queued_bytes = 0
        self._outbox: list[Any] = []  # items not yet handed over, in order
        self._outbox_bytes = 0
        self._outbox_lock = threading.Lock()  # backward hooks may run on autograd's threads
        self.error: BaseException | None = None
        self.raised = False
        self.flushed_calls = 0
        self.encoded = 0  # tensors stored as encoded payloads
        self._next_tid = 0
        self._summary_thread = threading.Thread(target=self._summarise, name="tensortrace-summary",
                                                daemon=True)
        self._thread = threading.Thread(target=self._run, name="tensortrace-writer", daemon=True)
        self._summary_thread.start()
        self._thread.start()

    # -- recording-thread side -------------------------------------------------------------

    def next_tensor_id(self) -> int:
        tid = self._next_tid
        self._next_tid += 1
        return tid

    def put_tensor(self, item: TensorItem) -> None:
        self._raise_if_failed()
        if self._queued_bytes > 0 and self._queued_bytes + item.nbytes > self._budget:
            self._send()  # what waits in the outbox must reach the writer to be released
            with self._cond:
                while self._queued_bytes > 0 and self._queued_bytes + item.nbytes > self._budget:
                    if self.error is not None:
                        break
                    self._cond.wait(0.5)
        with self._cond:
            self._queued_bytes += item.nbytes
        self._hand_over(item, item.nbytes)

    def put_event(self, kind: EventKind, body: dict, *, step: int = -1, call: int = -1,
                  module: int = -1) -> None:
        self._raise_if_failed()
        self._hand_over(("event", kind, body, step, call, module), 0)

    def _hand_over(self, item: Any, nbytes: int) -> None:
        with self._outbox_lock:
            self._outbox.append(item)
            self._outbox_bytes += nbytes
            if len(self._outbox) < _BATCH_ITEMS and self._outbox_bytes < _BATCH_BYTES:
                return
            batch, self._outbox, self._outbox_bytes = self._outbox, [], 0
            self._queue.put(batch)

    def _send(self, *extra: Any) -> None:
        """Hand over the outbox, then ``extra`` items, in one batch."""
        with self._outbox_lock:
            batch, self._outbox, self._outbox_bytes = self._outbox, [], 0
            batch.extend(extra)
            if batch:
                self._queue.put(batch)

    def flush(self, *, wait: bool = True) -> None:
        """Write everything queued so far and flush the file; optionally wait for it."""
        done = threading.Event()
        self._send(("flush", done))
        if wait:
            while not done.wait(0.5):
                if not self._thread.is_alive():
                    break
            self._raise_if_failed()

    def close(self, *, complete: bool) -> None:
        self._send(("close", complete), _STOP)
        self._summary_thread.join()
        self._thread.join()
        self._raise_if_failed()

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    @property
    def bytes_written(self) -> int:
        return self._writer.bytes_written

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            self.raised = True
            err = self.error
            if isinstance(err, tracefmt.TraceError):
                raise err
            first = str(err).split("\n")[0] or type(err).__name__
            raise tracefmt.TraceWriteError(f"writer thread failed: {first}", path=self._writer.path)

    # -- writer-thread side ----------------------------------------------------------------

    def _summarise(self) -> None:
        """First stage: wait for device copies, compute summaries; pass everything on in order."""
        while True:
            batch = self._queue.get()
            for item in batch:
                if not isinstance(item, TensorItem):
                    continue
                if self.error is None:
                    try:
                        self._prepare(item)
                    except BaseException as exc:  # noqa: BLE001 - reported by the writer stage
                        item.failed = exc
                if item.derivation is not None:
                    item.derivation.base.release()  # not encoded against it after all
                    item.derivation = None
            self._summarised.put(batch)
            if batch[-1] is _STOP:
                return

    @staticmethod
    def _prepare(item: TensorItem) -> None:
        """Wait for the copy, summarise, choose how to store. The checksum is left to the
        writer's ``add_tensor``: this thread is the pipeline's busiest, the writer the least."""
        if item.ready is not None:
            item.ready()
            item.ready = None
        if item.summary is not None:
            item.computed = item.summary()
            item.summary = None  # drops its snapshot: a copy-on-write one costs the model a copy while held
        item.array = item.data()
        if item.array is None:
            return
        stored = tracefmt.encode_values(item.array, item.dtype)
        derivation, item.derivation = item.derivation, None
        item.encoded = encode_payload(stored, item.dtype, item.computed, derivation)

    def _run(self) -> None:
        while True:
            for item in self._summarised.get():
                if item is _STOP:
                    return
                self._handle(item)

    def _handle(self, item: Any) -> None:
        """Write one item; after a failure only release it (and wake a waiting flush)."""
        w = self._writer
        if self.error is not None:
            self._release(item)
            if isinstance(item, tuple) and item[0] == "flush":
                item[1].set()
            return
        try:
            if isinstance(item, TensorItem):
                self._write_tensor(item)
            elif item[0] == "event":
                _, kind, body, step, call, module = item
                w.add_event(kind, body, step=step, call=call, module=module)
                if kind == EventKind.CALL:
                    self._unflushed_calls.append(call)
            elif item[0] == "flush":
                w.flush()
                self._give_back()
                self._report_flushed()
                item[1].set()
            elif item[0] == "close":
                w.close(complete=item[1])
                self._give_back()
                self._report_flushed()
        except BaseException as exc:  # noqa: BLE001 - reported on the recording thread
            self.error = exc
            with contextlib.suppress(Exception):  # the first error is the one to report
                w.abandon()
            if isinstance(item, tuple) and item[0] == "flush":
                item[1].set()
            with self._cond:
                self._cond.notify_all()

    def _report_flushed(self) -> None:
        """Count and announce the calls the flush that just returned made durable."""
        ids = tuple(self._unflushed_calls)
        self._unflushed_calls.clear()
        self.flushed_calls += len(ids)
        if self._on_flush is not None and ids:
            self._on_flush(ids)

    def _write_tensor(self, item: TensorItem) -> None:
        try:
            if item.failed is not None:
                raise item.failed
            data = item.array
            summary = item.computed
            if summary is None and data is not None:
                summary = tracefmt.compute_summary(tracefmt.decode_values(data, item.dtype))
            tid = self._writer.add_tensor(
                data, dtype=item.dtype, shape=item.shape, strides=item.strides,
                summary=summary, requires_grad=item.requires_grad,
                encoded=item.encoded,
            )
            if item.encoded is not None:
                self.encoded += 1
            if tid != item.tid:
                raise RuntimeError(f"tensor id drift: expected {item.tid}, writer gave {tid}")
            if item.done is not None:
                # the writer keeps staged arrays by reference until it writes them
                if data is None or item.encoded is not None:
                    item.done()
                else:
                    self._held.append(item.done)
            if self._held and self._writer.staged_heap_bytes == 0:
                self._give_back()
        finally:
            self._release(item)

    def _give_back(self) -> None:
        held, self._held = self._held, []
        for done in held:
            done()

    def _release(self, item: Any) -> None:
        if isinstance(item, TensorItem):
            with self._cond:
                self._queued_bytes -= item.nbytes
                self._cond.notify_all()
