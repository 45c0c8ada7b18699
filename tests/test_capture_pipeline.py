"""The capture pipeline: reused snapshot buffers, the summary and writer threads, flushing.

Snapshots must hold the values at capture time whatever happens to the tensor later; the
two background threads must keep the order things were put in (an event never reaches the
file before a tensor it names); a failure on either thread must stop the recording.
"""

from __future__ import annotations

import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from _list_sink import ListSink
from torch import nn

import recorder
import tracefmt
from recorder._pool import HostBufferPool
from recorder._sink import TensorItem, WriterThread
from tracefmt import EventKind


class TestHostBufferPoolSnapshot:
    @pytest.mark.parametrize("value", [
        torch.arange(12.0).reshape(3, 4).t(),  # not contiguous
        torch.tensor(2.5),
        torch.zeros(2, 0),
        torch.tensor([True, False, True]),
        torch.randn(4, 3).bfloat16(),
        torch.arange(6, dtype=torch.int64),
        torch.randn(3, dtype=torch.complex64),
    ], ids=["transposed", "0-d", "empty", "bool", "bfloat16", "int64", "complex"])
    def test_copy_is_contiguous_and_equal(self, value: torch.Tensor) -> None:
        """The snapshot has the tensor's dtype, shape and values, in C order."""
        snap, buf = HostBufferPool(max_cached_bytes=1 << 20).snapshot(value)
        assert snap.dtype == value.dtype and snap.shape == value.shape
        assert snap.is_contiguous() and torch.equal(snap, value)
        assert buf.dtype == torch.uint8 and buf.numel() == value.numel() * value.element_size()

    def test_later_in_place_change_does_not_reach_the_snapshot(self) -> None:
        """The snapshot is a copy: modifying the tensor afterwards leaves it alone."""
        x = torch.ones(5)
        snap, _ = HostBufferPool(max_cached_bytes=1 << 20).snapshot(x)
        x.mul_(3)
        assert torch.equal(snap, torch.ones(5))


class TestHostBufferPoolTake:
    def test_given_back_buffer_is_reused_for_the_same_size(self) -> None:
        """A buffer given back is handed out again for the same size, not another one."""
        pool = HostBufferPool(max_cached_bytes=1 << 20)
        buf = pool.take(4096)
        pool.give(buf)
        assert pool.take(4096).data_ptr() == buf.data_ptr()
        assert pool.take(4096).data_ptr() != buf.data_ptr()

    def test_other_size_gets_a_new_buffer(self) -> None:
        """Buffers are kept by exact size: another size allocates."""
        pool = HostBufferPool(max_cached_bytes=1 << 20)
        buf = pool.take(4096)
        pool.give(buf)
        other = pool.take(8192)
        assert other.numel() == 8192 and other.data_ptr() != buf.data_ptr()


class TestHostBufferPoolGive:
    def test_cache_is_capped(self) -> None:
        """Buffers beyond the cap are freed, not kept."""
        pool = HostBufferPool(max_cached_bytes=10_000)
        bufs = [pool.take(4096) for _ in range(3)]
        for b in bufs:
            pool.give(b)
        assert pool.cached_bytes == 8192


def _writer(path: Path) -> tracefmt.TraceWriter:
    writer = tracefmt.TraceWriter(path)
    writer.write_run(tracefmt.RunInfo((tracefmt.ModuleInfo(0, "", "t.M"),), {}, {"mode": "full"}))
    return writer


def _item(tid: int, values: np.ndarray, *, summary=None, done=None) -> TensorItem:
    return TensorItem(tid=tid, dtype="float32", shape=values.shape, strides=(1,),
                      requires_grad=False, nbytes=values.nbytes, data=lambda: values,
                      summary=summary, done=done)


class TestWriterThreadOrder:
    def test_event_waits_for_a_slow_summary(self, tmp_path: Path) -> None:
        """An event put after a tensor reaches the writer after that tensor, however slow."""
        writer = _writer(tmp_path / "t.h5")
        order: list[str] = []
        add_tensor, add_event = writer.add_tensor, writer.add_event

        def logged_tensor(*args: object, **kwargs: object) -> int:
            order.append("tensor")
            return add_tensor(*args, **kwargs)

        def logged_event(*args: object, **kwargs: object) -> int:
            order.append("event")
            return add_event(*args, **kwargs)

        writer.add_tensor, writer.add_event = logged_tensor, logged_event
        order.clear()
        sink = WriterThread(writer, budget_bytes=1 << 20)
        values = np.arange(4, dtype=np.float32)

        def slow_summary() -> tracefmt.TensorSummary:
            time.sleep(0.3)
            return tracefmt.compute_summary(values)

        sink.put_tensor(_item(sink.next_tensor_id(), values, summary=slow_summary))
        sink.put_event(EventKind.NOTE, {"message": "after the tensor"})
        sink.close(complete=True)
        assert order[:2] == ["tensor", "event"]

    def test_checksum_from_the_summary_thread_is_stored(self, tmp_path: Path) -> None:
        """The CRC-32 computed on the summary thread is the payload's, and verifies."""
        sink = WriterThread(_writer(tmp_path / "t.h5"), budget_bytes=1 << 20)
        values = np.linspace(-1, 1, 1000, dtype=np.float32)
        released: list[bool] = []
        sink.put_tensor(_item(sink.next_tensor_id(), values,
                              summary=lambda: tracefmt.compute_summary(values),
                              done=lambda: released.append(True)))
        sink.close(complete=True)
        assert released == [True]
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            assert r.tensor(0).crc32 == zlib.crc32(values.tobytes())
            r.verify_tensor(0)


class TestWriterThreadPutTensor:
    def test_a_full_budget_hands_over_what_waits_to_be_sent(self, tmp_path: Path) -> None:
        """A put over the memory budget sends the items batched before it, so it can return."""
        sink = WriterThread(_writer(tmp_path / "t.h5"), budget_bytes=1 << 20)
        values = np.zeros(150_000, dtype=np.float32)  # 600 KB: two are over the budget
        puts = threading.Thread(daemon=True, target=lambda: [
            sink.put_tensor(_item(sink.next_tensor_id(), values)) for _ in range(3)])
        puts.start()
        puts.join(timeout=20)
        assert not puts.is_alive(), "put_tensor waited for items it had not handed over"
        sink.close(complete=True)
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            assert r.n_tensors == 3


class TestWriterThreadFailure:
    def test_summary_failure_stops_the_recording(self, tmp_path: Path) -> None:
        """An exception on the summary thread is raised on the recording thread, named."""
        sink = WriterThread(_writer(tmp_path / "t.h5"), budget_bytes=1 << 20)
        values = np.zeros(3, dtype=np.float32)

        def broken() -> tracefmt.TensorSummary:
            raise RuntimeError("summary kernel exploded")

        sink.put_tensor(_item(sink.next_tensor_id(), values, summary=broken))
        with pytest.raises(tracefmt.TraceWriteError, match="summary kernel exploded"):
            sink.close(complete=True)


class TestRecorderFlush:
    def test_flushed_calls_are_visible_to_a_reader(self, tmp_path: Path) -> None:
        """After flush() a separate reader of the live file sees every call so far."""
        model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        path = tmp_path / "live.h5"
        with recorder.record(model, path) as rec:
            model(torch.randn(2, 4)).sum().backward()
            rec.step()
            model(torch.randn(2, 4))
            rec.flush()
            with tracefmt.open_trace(path) as live:
                assert live.n_calls == rec.calls == 6
                assert not live.complete


class TestTensorCaptureStatsBehindDevice:
    def test_cpu_tensor_behind_pending_device_summaries_is_summarised_at_once(self) -> None:
        """In stats mode a CPU tensor queued behind device summaries holds no host copy."""
        from recorder._capture import TensorCapture, _PendingSummary

        sink = ListSink()
        items = sink.items
        capture = TensorCapture(sink, mode="stats")  # type: ignore[arg-type]
        capture.capture(torch.ones(256))
        assert items[-1].nbytes == 1024  # nothing pending: copied, summarised on the thread
        # as a CUDA tensor leaves it
        capture._pending_stats.append(_PendingSummary(torch.zeros(1), lambda raw: None))
        capture.capture(torch.ones(512))
        assert items[-1].nbytes == 0
        capture.flush_stats()
        assert items[-1].summary is not None and items[-1].summary().count == 512
