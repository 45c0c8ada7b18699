"""Fold any-rank tensors to 2-D and shrink them to screen size without hiding anomalies.

Folding keeps the batch dimension as the outer axis, so each batch element becomes one
horizontal band of ``band_height`` rows: a half-filled batch shows as filled bands over
empty ones. Downsampling reduces blocks so that a single NaN or Inf anywhere in a block
still shows, and so that the largest magnitude (``maxabs``) is never averaged away.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

__all__ = [
    "Reduction",
    "band_aligned_factor",
    "block_factors",
    "block_valid",
    "downsample",
    "downsample_by",
    "fold_array",
    "fold_to_2d",
]

Reduction = Literal["maxabs", "mean"]


def _batch_first(rank: int, batch_dim: int | None) -> list[int]:
    if batch_dim is None:
        return list(range(rank))
    if not -rank <= batch_dim < rank:
        raise ValueError(f"batch_dim {batch_dim} out of range for a rank-{rank} tensor")
    b = batch_dim % rank
    return [b, *(i for i in range(rank) if i != b)]


def fold_to_2d(shape: Sequence[int], *, batch_dim: int | None = 0) -> tuple[int, int, int]:
    """``(rows, cols, band_height)`` of the folded view: rows = B * prod(middle), cols = last.

    0-d folds to 1x1 and 1-D to a single row. ``batch_dim=None`` means no batch: one band.
    """
    dims = tuple(int(d) for d in shape)
    if len(dims) == 0:
        return 1, 1, 1
    if len(dims) == 1:
        return 1, dims[0], 1
    ordered = [dims[i] for i in _batch_first(len(dims), batch_dim)]
    rows = math.prod(ordered[:-1])
    band = rows if batch_dim is None else math.prod(ordered[1:-1])
    return rows, ordered[-1], band


def fold_array(arr: np.ndarray, *, batch_dim: int | None = 0) -> np.ndarray:
    """The 2-D folded array (a view when ``batch_dim`` is 0 and the data is contiguous)."""
    a = np.asarray(arr)
    rows, cols, _ = fold_to_2d(a.shape, batch_dim=batch_dim)
    if a.ndim >= 2 and batch_dim is not None:
        a = np.moveaxis(a, batch_dim, 0)
    return a.reshape(rows, cols)


def block_factors(rows: int, cols: int, *, out_rows: int, out_cols: int) -> tuple[int, int]:
    """Smallest integer block sizes that make ``rows x cols`` fit in ``out_rows x out_cols``."""
    if out_rows < 1 or out_cols < 1:
        raise ValueError("out_rows and out_cols must be at least 1")
    return max(1, -(-rows // out_rows)), max(1, -(-cols // out_cols))


def band_aligned_factor(factor: int, band_height: int) -> int:
    """A row factor whose blocks never straddle two batch bands, at most double ``factor``.

    Without this, a block half in band 0 and half in band 1 would smear band 0's values
    into band 1 and hide exactly the "only element 0 is filled" pattern users look for.
    """
    if band_height <= 1 or factor <= 1:
        return factor
    if factor >= band_height:
        return -(-factor // band_height) * band_height
    for candidate in range(factor, min(band_height, 2 * factor) + 1):
        if band_height % candidate == 0:
            return candidate
    return factor


_CHUNK_ELEMENTS = 1 << 20


def _padded(a: np.ndarray, rows: int, cols: int, fill: float | bool) -> np.ndarray:
    """``a`` grown to ``rows x cols`` with ``fill`` (no copy when already that size)."""
    if a.shape == (rows, cols):
        return a
    return np.pad(a, ((0, rows - a.shape[0]), (0, cols - a.shape[1])), constant_values=fill)


def block_valid(mask: np.ndarray, *, row_factor: int, col_factor: int) -> np.ndarray:
    """Per block: True unless every element in it is masked (``mask`` True = valid)."""
    m = np.asarray(mask, dtype=bool)
    nr, nc = -(-m.shape[0] // row_factor), -(-m.shape[1] // col_factor)
    m = _padded(m, nr * row_factor, nc * col_factor, False)
    return m.reshape(nr, row_factor, nc, col_factor).any(axis=(1, 3))


def _reduce(
    x: np.ndarray, ok: np.ndarray | None, rf: int, cf: int, reduction: Reduction
) -> np.ndarray:
    """Reduce whole blocks of one chunk; ``ok`` (None = all valid) marks usable elements."""
    nr, nc = x.shape[0] // rf, x.shape[1] // cf
    b = x.reshape(nr, rf, nc, cf)
    okb = None if ok is None else ok.reshape(nr, rf, nc, cf)
    finite = np.isfinite(b)
    if okb is not None:
        finite &= okb
    if reduction == "maxabs":
        hi = np.where(finite, b, -np.inf).max(axis=(1, 3))
        lo = np.where(finite, b, np.inf).min(axis=(1, 3))
        out = np.where(hi >= -lo, hi, lo).astype(np.float64)
        out[~np.isfinite(out)] = 0.0
    else:
        count = finite.sum(axis=(1, 3))
        partial = np.where(finite, b, 0.0).astype(np.float64) / (rf * cf)
        out = partial.sum(axis=(1, 3)) * ((rf * cf) / np.maximum(count, 1))
    if okb is None and finite.all():
        return out
    ok_all = np.ones_like(finite) if okb is None else okb
    out[((b == -np.inf) & ok_all).any(axis=(1, 3))] = -np.inf
    out[((b == np.inf) & ok_all).any(axis=(1, 3))] = np.inf
    out[(np.isnan(b) & ok_all).any(axis=(1, 3))] = np.nan
    return out


def downsample_by(
    a2d: np.ndarray,
    *,
    row_factor: int,
    col_factor: int,
    reduction: Reduction = "maxabs",
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Reduce ``row_factor x col_factor`` blocks; NaN beats +Inf beats -Inf beats finite.

    ``maxabs`` keeps the signed value of largest magnitude (ties: positive), ``mean`` averages the finite
    values. Masked elements (``mask`` False) are ignored; a fully masked or all-padding
    block reduces to 0.0 — pair it with :func:`block_valid` to know which ones those are.
    Works in row chunks so a large tensor costs a few passes, not a few full copies.
    """
    a = np.asarray(a2d)
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {a.shape}")
    if reduction not in ("maxabs", "mean"):
        raise ValueError(f"unknown reduction {reduction!r}")
    valid = None if mask is None else np.asarray(mask, dtype=bool)
    if row_factor == 1 and col_factor == 1:
        out = a.astype(np.float64)
        return out if valid is None else np.where(valid, out, 0.0)
    rows, cols = a.shape
    rf, cf = row_factor, col_factor
    nr, nc = -(-rows // rf), -(-cols // cf)
    step = max(1, _CHUNK_ELEMENTS // max(1, rf * cols)) * rf
    out = np.empty((nr, nc), dtype=np.float64)
    for start in range(0, rows, step):
        x = a[start : start + step]
        ok = None if valid is None else valid[start : start + step]
        height = -(-x.shape[0] // rf) * rf
        if x.shape != (height, nc * cf) and ok is None and reduction == "mean":
            ok = np.ones(x.shape, dtype=bool)
        x = _padded(x, height, nc * cf, 0.0)
        ok = None if ok is None else _padded(ok, height, nc * cf, False)
        out[start // rf : (start + height) // rf] = _reduce(x, ok, rf, cf, reduction)
    return out


def downsample(
    a2d: np.ndarray,
    *,
    out_rows: int,
    out_cols: int,
    reduction: Reduction = "maxabs",
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, int, int]:
    """Block-reduce ``a2d`` to at most ``out_rows x out_cols``; returns ``(small, rf, cf)``."""
    a = np.asarray(a2d)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {a.shape}")
    rf, cf = block_factors(a.shape[0], a.shape[1], out_rows=out_rows, out_cols=out_cols)
    small = downsample_by(a, row_factor=rf, col_factor=cf, reduction=reduction, mask=mask)
    return small, rf, cf
