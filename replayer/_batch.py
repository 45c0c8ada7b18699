"""Per-batch-element breakdown of an error map: which samples diverge, said in words."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "BatchElementStats",
    "batch_arrays",
    "batch_axis",
    "batch_breakdown",
    "batch_note",
    "encode_float",
    "format_ranges",
]


def encode_float(value: float | None) -> float | str | None:
    if value is None:
        return None
    number = float(value)
    if math.isnan(number):
        return "nan"
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    return number


def format_ranges(indices: Sequence[int], limit: int = 8) -> str:
    runs: list[str] = []
    start = prev = indices[0]
    for i in [*indices[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        runs.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    if len(runs) > limit:
        return f"{', '.join(runs[:limit])} and {len(runs) - limit} more ranges"
    return ", ".join(runs)


@dataclass(frozen=True)
class BatchElementStats:
    """Error summary of one element along the batch axis, to spot per-sample bugs."""

    index: int
    max_abs_err: float
    mismatch_count: int
    numel: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; a NaN/Inf error is a string (module docstring)."""
        return {
            "index": self.index,
            "max_abs_err": encode_float(self.max_abs_err),
            "mismatch_count": self.mismatch_count,
            "numel": self.numel,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchElementStats:
        """Inverse of ``to_dict``."""
        return cls(
            index=int(data["index"]),
            max_abs_err=float(data["max_abs_err"]),
            mismatch_count=int(data["mismatch_count"]),
            numel=int(data["numel"]),
        )


def batch_axis(ndim: int, batch_dim: int | None) -> int | None:
    if batch_dim is None or ndim == 0:
        return None
    if not -ndim <= batch_dim < ndim:
        raise ValueError(f"batch_dim {batch_dim} is out of range for a {ndim}-d tensor")
    return batch_dim % ndim


def batch_arrays(
    abs_err: np.ndarray, mismatch: np.ndarray | None, axis: int
) -> tuple[np.ndarray, np.ndarray]:
    size = abs_err.shape[axis]
    others = tuple(i for i in range(abs_err.ndim) if i != axis)
    if abs_err.size == 0:
        return np.zeros(size), np.zeros(size, dtype=np.int64)
    maxes = np.max(abs_err, axis=others) if others else abs_err.astype(np.float64)
    if mismatch is None:
        counts = np.zeros(size, dtype=np.int64)
    elif others:
        counts = np.count_nonzero(mismatch, axis=others)
    else:
        counts = mismatch.astype(np.int64)
    return np.asarray(maxes, dtype=np.float64), np.asarray(counts, dtype=np.int64)


def batch_breakdown(
    abs_err: np.ndarray, mismatch: np.ndarray | None = None, *, batch_dim: int | None = 0
) -> list[BatchElementStats]:
    """Per batch element: max absolute error and mismatch count.

    ``abs_err`` and ``mismatch`` are elementwise arrays of one shape (``mismatch`` None counts
    nothing). Without a batch axis (``batch_dim`` None, or a 0-d tensor) the list is empty.
    """
    errors = np.asarray(abs_err)
    axis = batch_axis(errors.ndim, batch_dim)
    if axis is None:
        return []
    flags = None if mismatch is None else np.asarray(mismatch, dtype=bool)
    if flags is not None and flags.shape != errors.shape:
        raise ValueError(f"mismatch shape {flags.shape} differs from abs_err shape {errors.shape}")
    maxes, counts = batch_arrays(errors, flags, axis)
    per_element = errors.size // errors.shape[axis] if errors.shape[axis] else 0
    return [
        BatchElementStats(i, float(maxes[i]), int(counts[i]), per_element)
        for i in range(errors.shape[axis])
    ]


def batch_note(bad_indices: Sequence[int], batch_size: int) -> str:
    """One sentence on which batch elements diverge; empty when none do (or no batch axis)."""
    bad = sorted(int(i) for i in bad_indices)
    if batch_size <= 0 or not bad:
        return ""
    if len(bad) >= batch_size:
        if batch_size == 1:
            return "the only batch element diverges"
        return f"all {batch_size} batch elements diverge"
    mask = np.ones(batch_size, dtype=bool)
    mask[bad] = False
    good = [int(i) for i in np.flatnonzero(mask)]
    if len(good) <= 3 and len(good) < len(bad):
        noun = "element" if len(good) == 1 else "elements"
        verb = "matches" if len(good) == 1 else "match"
        return f"only batch {noun} {format_ranges(good)} {verb}; elements {format_ranges(bad)} diverge"
    if len(bad) == 1:
        return f"batch element {bad[0]} diverges"
    return f"batch elements {format_ranges(bad)} diverge"
