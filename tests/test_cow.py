"""Copy-on-write snapshots: no copy unless the model writes first, and reads never copy.

Stats mode on the CPU snapshots tensors with ``torch._lazy_clone``; a later in-place op must
still not reach what is summarised, even when the summary thread reads after the op.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import recorder
import tracefmt
from recorder._cow import host_array, is_copy_on_write, lazy_snapshot

pytestmark = pytest.mark.skipif(lazy_snapshot(torch.ones(1)) is None,
                                reason="this torch has no torch._lazy_clone")


class TestLazySnapshot:
    def test_nothing_is_copied_until_a_write(self) -> None:
        """The snapshot shares the tensor's memory while neither side writes."""
        x = torch.randn(64, 64)
        snap = lazy_snapshot(x)
        assert snap is not None and is_copy_on_write(snap) and is_copy_on_write(x)
        assert snap.const_data_ptr() == x.const_data_ptr()

    @pytest.mark.parametrize("part", [slice(0, 10), slice(90, 100)], ids=["head", "tail"])
    def test_a_slice_of_a_larger_storage_is_declined(self, part: slice) -> None:
        """A slice gets no lazy clone: writing elsewhere in its buffer would copy all of it."""
        buf = torch.zeros(100, 64)
        assert lazy_snapshot(buf[part]) is None
        assert not is_copy_on_write(buf)

    def test_a_transposed_whole_tensor_is_taken(self) -> None:
        """A view over its whole storage in another order shares it copy-on-write."""
        x = torch.randn(8, 5)
        snap = lazy_snapshot(x.t())
        assert snap is not None and torch.equal(snap, x.t()) and is_copy_on_write(x)

    def test_a_later_write_does_not_reach_the_snapshot(self) -> None:
        """``x.mul_`` after the snapshot gives ``x`` its own copy; the snapshot keeps the old values."""
        x = torch.ones(5)
        snap = lazy_snapshot(x)
        x.mul_(3)
        assert torch.equal(snap, torch.ones(5)) and torch.equal(x, torch.full((5,), 3.0))


class TestHostArray:
    def test_reads_the_values_without_copying(self) -> None:
        """The numpy view has the snapshot's values, is read-only, and leaves it shared."""
        x = torch.randn(3, 4, 5)
        snap = lazy_snapshot(x)
        a = host_array(snap)
        np.testing.assert_array_equal(a, x.numpy())
        assert not a.flags.writeable and is_copy_on_write(snap)

    def test_tensor_numpy_would_have_copied(self) -> None:
        """What ``host_array`` avoids: ``Tensor.numpy`` gives the snapshot a copy of its own."""
        snap = lazy_snapshot(torch.randn(8))
        snap.numpy()
        assert not is_copy_on_write(snap)

    def test_falls_back_for_a_strided_view(self) -> None:
        """A non-contiguous tensor is read through ``Tensor.numpy`` with its strides."""
        x = torch.arange(12.0).reshape(3, 4).t()
        np.testing.assert_array_equal(host_array(x), x.numpy())


class TestSummaryOfASnapshot:
    @pytest.mark.parametrize("shape", [(16, 64, 32), (3, 300_000), (9000, 3), ()])
    def test_summarising_does_not_copy(self, shape: tuple[int, ...]) -> None:
        """The CPU summary of a finite snapshot reads it in place, whatever its chunking."""
        from recorder._summary import host_summary, summary_vector

        snap = lazy_snapshot(torch.randn(shape))
        summary_vector(snap)
        host_summary(snap)
        assert is_copy_on_write(snap)


class TestRecordInPlaceWhileHeld:
    @pytest.mark.parametrize("lazy", [True, False], ids=["copy-on-write", "eager-copy"])
    @pytest.mark.parametrize("mode", ["stats", "full"])
    def test_output_doubled_before_the_snapshot_is_read(
        self, mode: str, lazy: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``y = lin(x); y.mul_(2)`` records lin's output before the doubling, even when the
        summary thread only reads the snapshot after ``mul_`` ran; with copy-on-write, and
        with the pooled copies a torch without ``_lazy_clone`` gets."""
        import recorder._capture as capture
        import recorder._cow as cow

        if not lazy:
            monkeypatch.setattr(cow, "_lazy_clone", None)

        real = capture.host_summary

        def late(t: torch.Tensor) -> tracefmt.TensorSummary:
            time.sleep(0.05)
            return real(t)

        monkeypatch.setattr(capture, "host_summary", late)
        torch.manual_seed(0)
        lin = nn.Linear(4, 6)
        model = nn.Sequential(lin)
        x = torch.randn(3, 4)
        with recorder.record(model, tmp_path / "t.h5", mode=mode) as rec:
            y = model(x)
            y.mul_(2.0)
            rec.step()
        want = nn.functional.linear(x, lin.weight, lin.bias).detach()
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            call = next(c for c in r.calls(step=0) if c.module == "0")
            tid = call.tensors()["outputs"]
            got = r.tensor(tid).summary
            if mode == "full":
                assert torch.equal(recorder.tensor_from_trace(r, tid), want)
        ref = tracefmt.compute_summary(want.numpy())
        assert (got.min, got.max) == (ref.min, ref.max)
