"""The torch summary the recorder runs on CPU tensors agrees with the float64 reference."""

from __future__ import annotations

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
