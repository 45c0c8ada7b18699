"""The torch summary the recorder runs on CPU tensors agrees with the float64 reference."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from _summary_cases import summary_cases
from _summary_checks import assert_summary_close

import tracefmt

CASES = summary_cases()


class TestSummaryVector:
    @pytest.mark.parametrize("name", list(CASES))
    def test_matches_the_reference_summary(self, name: str) -> None:
        """Counts, min and max exact; mean, std, histogram and batch rows within the spec."""
        from recorder._summary import summary_vector, unpack_summary

        t = CASES[name]
        got = unpack_summary(summary_vector(t).numpy())
        assert_summary_close(got, tracefmt.compute_summary(t.float().numpy()), name)

    def test_norms_past_float32_squares_stay_finite(self) -> None:
        """Rows of |x| ~ 1e25 have finite L2 norms and std: their squares overflow float32."""
        from recorder._summary import summary_vector, unpack_summary

        got = unpack_summary(summary_vector(CASES["squares-past-float32"]).numpy())
        assert torch.isfinite(torch.from_numpy(got.batch[:, 0])).all()
        assert 1e24 < got.std < 1e26


class TestHostSummary:
    @pytest.mark.parametrize("name", list(CASES))
    def test_matches_the_reference_summary(self, name: str) -> None:
        """The CPU summary the recorder stores, finite or not, agrees with the reference."""
        from recorder._summary import host_summary

        t = CASES[name]
        assert_summary_close(host_summary(t), tracefmt.compute_summary(t.float().numpy()), name)

    @pytest.mark.parametrize("name", list(CASES))
    def test_equals_the_vector_form(self, name: str) -> None:
        """``host_summary`` and the unpacked ``summary_vector`` are the same summary."""
        from recorder._summary import host_summary, summary_vector, unpack_summary

        t = CASES[name]
        got, packed = host_summary(t), unpack_summary(summary_vector(t).numpy())
        np.testing.assert_array_equal(got.batch, packed.batch)
        assert got == dataclasses.replace(packed, batch=got.batch), name


class TestBincountU8:
    @pytest.mark.parametrize("size", [0, 1, 7, (1 << 14) - 1, 1 << 14, (1 << 14) + 1, 100_001])
    def test_counts_match_torch_bincount(self, size: int) -> None:
        """Counting pairs as int16 gives bincount's counts for odd and even lengths alike."""
        from recorder._host_summary import bincount_u8

        g = torch.Generator().manual_seed(size)
        u8 = torch.randint(0, 33, (size,), generator=g, dtype=torch.uint8)
        assert torch.equal(torch.from_numpy(bincount_u8(u8.numpy(), 33)), torch.bincount(u8, minlength=33))

    def test_every_value_pair_lands_in_its_bins(self) -> None:
        """Each (first, second) pair of values below n counts once for each of its two values."""
        from recorder._host_summary import bincount_u8

        a, b = torch.meshgrid(torch.arange(33), torch.arange(33), indexing="ij")
        pairs = torch.stack([a.reshape(-1), b.reshape(-1)], dim=1).to(torch.uint8).reshape(-1)
        u8 = pairs.repeat(10)  # 21780 values: past the pair threshold
        assert torch.equal(torch.from_numpy(bincount_u8(u8.numpy(), 33)), torch.bincount(u8, minlength=33))
