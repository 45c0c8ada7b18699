"""The chunked CPU summary agrees with the float64 reference however a tensor is chunked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _summary_cases import summary_cases
from _summary_checks import assert_summary_close

import tracefmt

CASES = summary_cases()
FINITE = [name for name, t in CASES.items() if bool(torch.isfinite(t.float()).all()) and t.numel()]


def _summary(t: torch.Tensor) -> tracefmt.TensorSummary | None:
    from recorder._host_summary import finite_summary_vector
    from recorder._summary import unpack_summary

    x = t.detach()
    f = (x if x.dtype in (torch.float32, torch.float64) else x.float()).reshape(-1)
    vec = finite_summary_vector(x, f)
    return None if vec is None else unpack_summary(vec.numpy())


class TestFiniteSummaryVector:
    @pytest.mark.parametrize("chunk", [None, 7, 256, 1 << 18], ids=["small", "7", "256", "2^18"])
    @pytest.mark.parametrize("name", FINITE)
    def test_matches_the_reference_at_every_chunk_size(
        self, name: str, chunk: int | None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The small-tensor path, rows split across chunks, chunks of many rows, and one chunk
        give the same summary."""
        import recorder._host_summary as host

        if chunk is not None:  # the chunked path, even for the small cases
            monkeypatch.setattr(host, "_SMALL", 0)
            monkeypatch.setattr(host, "CHUNK", chunk)
        got = _summary(CASES[name])
        assert got is not None
        assert_summary_close(got, tracefmt.compute_summary(CASES[name].float().numpy()), name)

    @pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
    def test_declines_a_tensor_with_a_non_finite_value(
        self, value: float, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A NaN or infinity in any chunk, even the last, leaves the tensor to the masked path."""
        import recorder._host_summary as host

        monkeypatch.setattr(host, "CHUNK", 64)
        monkeypatch.setattr(host, "_SMALL", 0)
        t = torch.randn(3, 500)
        t[2, 499] = value
        assert _summary(t) is None

    @pytest.mark.parametrize("rows", [1, 5, 64, 65, 300])
    @pytest.mark.parametrize("width", [40, 5000])
    def test_counts_each_rows_zeros(self, rows: int, width: int) -> None:
        """Zero counts per row are exact on each counting path (one row, a few, many; small
        tensors and chunked ones)."""
        g = torch.Generator().manual_seed(rows)
        t = torch.relu(torch.randn(rows, width, generator=g))
        got = _summary(t)
        assert got is not None
        np.testing.assert_array_equal(got.batch[:, 3], (t == 0).sum(dim=1).numpy())
        assert got.zeros == int((t == 0).sum())

    def test_a_tensor_without_zeros_has_none_in_any_row(self) -> None:
        """The all-non-zero shortcut reports zero zeros for every row."""
        t = torch.rand(100, 300) + 1.0
        got = _summary(t)
        assert got is not None
        assert got.zeros == 0 and not got.batch[:, 3].any()


class TestHistogram:
    def test_small_tensors_bin_as_the_reference(self) -> None:
        """Below the small-tensor size the bins are the reference's, element for element."""
        import recorder._host_summary as host

        flat = (torch.randn(4000, generator=torch.Generator().manual_seed(2)) * 3).numpy()
        lo, hi = float(flat.min()), float(flat.max())
        want = tracefmt.compute_summary(flat).hist
        assert tuple(int(c) for c in host._histogram(flat, lo, hi)) == want

    def test_chunks_sum_to_the_single_pass_counts(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Counting in chunks (an odd-sized last one included) gives one pass's counts."""
        import recorder._host_summary as host

        flat = torch.randn(100_003, generator=torch.Generator().manual_seed(1)).numpy()
        lo, hi = float(flat.min()), float(flat.max())
        whole = host._histogram(flat, lo, hi)
        monkeypatch.setattr(host, "CHUNK", 4099)
        np.testing.assert_array_equal(host._histogram(flat, lo, hi), whole)
        assert whole.sum() == flat.size and whole[-1] >= 1  # the maximum lands in the last bin
