"""Record-time summaries of a tensor, computed with numpy.

The torch recorder computes the same numbers on the device; this module is the reference
definition (spec section "Summaries") and what other frameworks' writers can call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._layout import BATCH_STAT_COLUMNS, HIST_BINS, MAX_BATCH_STATS

__all__ = ["TensorSummary", "compute_summary"]


@dataclass(frozen=True)
class TensorSummary:
    """Range, moments, special-value counts, a histogram and per-batch-element stats.

    ``min``/``max``/``mean``/``std`` are over finite elements (NaN when there are none);
    the histogram has ``HIST_BINS`` equal bins over ``[min, max]`` of finite elements.
    ``batch`` has one row per index of dimension 0 (at most ``MAX_BATCH_STATS``), with the
    columns ``l2``, ``max_abs``, ``nonfinite``, ``zeros``. Complex tensors are summarised by
    magnitude.
    """

    count: int
    min: float
    max: float
    mean: float
    std: float
    nan: int
    posinf: int
    neginf: int
    zeros: int
    hist: tuple[int, ...]
    batch: np.ndarray = field(default_factory=lambda: np.zeros((0, len(BATCH_STAT_COLUMNS))))

    @property
    def finite(self) -> int:
        return self.count - self.nan - self.posinf - self.neginf

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("count", "min", "max", "mean", "std", "nan", "posinf", "neginf", "zeros")}
        d["hist"] = list(self.hist)
        d["batch"] = {c: self.batch[:, i].tolist() for i, c in enumerate(BATCH_STAT_COLUMNS)}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TensorSummary:
        cols = d.get("batch") or {}
        batch = np.array([cols.get(c, []) for c in BATCH_STAT_COLUMNS], dtype=np.float64).T
        if batch.size == 0:
            batch = np.zeros((0, len(BATCH_STAT_COLUMNS)))
        return cls(
            count=int(d["count"]), min=float(d["min"]), max=float(d["max"]), mean=float(d["mean"]),
            std=float(d["std"]), nan=int(d["nan"]), posinf=int(d["posinf"]),
            neginf=int(d["neginf"]), zeros=int(d["zeros"]), hist=tuple(int(x) for x in d["hist"]),
            batch=batch,
        )


def compute_summary(values: np.ndarray) -> TensorSummary:
    """Summarise an array of values (decoded: bfloat16/float8 already widened)."""
    a = np.asarray(values)
    if a.dtype.kind == "c":
        a = np.abs(a)
    if a.dtype.kind == "b":
        a = a.astype(np.uint8)
    flat = a.reshape(-1)
    count = int(flat.size)
    if a.dtype.kind == "f":
        nan = int(np.count_nonzero(np.isnan(flat)))
        posinf = int(np.count_nonzero(flat == np.inf))
        neginf = int(np.count_nonzero(flat == -np.inf))
        finite = flat[np.isfinite(flat)] if nan + posinf + neginf else flat
    else:
        nan = posinf = neginf = 0
        finite = flat
    zeros = int(np.count_nonzero(flat == 0))
    if finite.size:
        f64 = finite.astype(np.float64)
        lo, hi = float(f64.min()), float(f64.max())
        mean = float(f64.mean())
        std = float(f64.std())
        hist = _histogram(f64, lo, hi)
    else:
        lo = hi = mean = std = float("nan")
        hist = (0,) * HIST_BINS
    return TensorSummary(count, lo, hi, mean, std, nan, posinf, neginf, zeros, hist, _batch_stats(a))


def _histogram(f64: np.ndarray, lo: float, hi: float) -> tuple[int, ...]:
    """Equal bins over [lo, hi]; the last bin is closed. A constant tensor fills bin 0."""
    if hi == lo:
        counts = np.zeros(HIST_BINS, dtype=np.int64)
        counts[0] = f64.size
        return tuple(int(x) for x in counts)
    scaled = (f64 - lo) * (HIST_BINS / (hi - lo))
    idx = np.minimum(scaled.astype(np.int64), HIST_BINS - 1)
    return tuple(int(x) for x in np.bincount(idx, minlength=HIST_BINS))


def _batch_stats(a: np.ndarray) -> np.ndarray:
    if a.ndim == 0 or a.shape[0] == 0:
        return np.zeros((0, len(BATCH_STAT_COLUMNS)))
    rows = a[:MAX_BATCH_STATS].reshape(min(a.shape[0], MAX_BATCH_STATS), -1).astype(np.float64)
    nonfinite = (~np.isfinite(rows)).sum(axis=1)
    clean = np.where(np.isfinite(rows), rows, 0.0)
    out = np.empty((rows.shape[0], len(BATCH_STAT_COLUMNS)))
    out[:, 0] = np.sqrt((clean * clean).sum(axis=1))
    out[:, 1] = np.abs(clean).max(axis=1) if rows.shape[1] else 0.0
    out[:, 2] = nonfinite
    out[:, 3] = (rows == 0).sum(axis=1)
    return out
