"""Comparing a recorded summary with the float64 reference, within what the spec allows."""

from __future__ import annotations

import numpy as np
import pytest

import tracefmt


def assert_summary_close(
    got: tracefmt.TensorSummary, want: tracefmt.TensorSummary, what: str
) -> None:
    """Counts, min and max exact; mean, std, bins and batch rows within the spec's rounding."""
    for field in ("count", "nan", "posinf", "neginf", "zeros"):
        assert getattr(got, field) == getattr(want, field), (what, field)
    for field in ("min", "max"):
        a, b = getattr(got, field), getattr(want, field)
        assert a == pytest.approx(b, rel=0, abs=0, nan_ok=True), (what, field)
    # mean and std may be accumulated in float32: their error follows the tensor's magnitude
    scale = max(abs(want.min), abs(want.max)) if want.finite else 0.0
    for field in ("mean", "std"):
        a, b = getattr(got, field), getattr(want, field)
        assert a == pytest.approx(b, rel=1e-6, abs=1e-6 * scale + 1e-30, nan_ok=True), (what, field)
    # The spec lets bins be evaluated in the compute precision: an element exactly at a bin
    # edge may land in the neighbouring bin, nothing more.
    assert sum(got.hist) == sum(want.hist), (what, "hist total")
    moved = sum(abs(a - b) for a, b in zip(got.hist, want.hist, strict=True))
    assert moved <= 2 * max(2, got.count // 1000), (what, "hist", got.hist, want.hist)
    np.testing.assert_allclose(got.batch, want.batch, rtol=1e-5, atol=1e-12, err_msg=what)
