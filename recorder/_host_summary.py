"""The summary of a CPU tensor, read in cache-sized chunks.

On the CPU a summary is bound by memory traffic, not arithmetic: it needs about ten passes
(min, max, sum, squares, zero count, bin index, cast, count), and a tensor larger than the
L2 cache pays main memory for each. Here the tensor is read in chunks of ``CHUNK`` elements
that stay in L2, twice: once for the per-row moments and counts, once for the histogram,
whose bins need the global range first. Each pass uses whichever of numpy and torch runs it
fastest on one thread, and the result is built in numpy, so a small tensor costs tens of
microseconds of bookkeeping rather than hundreds. Tensors under ``_SMALL`` elements take
plain float64 numpy; those holding NaN or infinities take ``masked_summary``.

The histogram bins in the tensor's compute precision (float32 for float32 and narrower),
which the spec allows at bin edges. Every read goes through ``host_array``: the tensor may be
a copy-on-write snapshot, which ``Tensor.numpy`` would make copy itself.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch

import tracefmt
from tracefmt import BATCH_STAT_COLUMNS, HIST_BINS, MAX_BATCH_STATS

from ._cow import host_array

__all__ = ["finite_summary", "masked_summary", "finite_summary_vector", "bincount_u8", "CHUNK"]

CHUNK = 1 << 18  # elements: 1 MB of float32 plus its scratch fits a 2 MB L2 with room to spare
_SMALL = 1 << 12  # elements: below this, one float64 numpy pass per statistic
_ROW_LOOP = 64  # rows up to which counting each row's bytes beats numpy's axis reduction

_local = threading.local()


def _rows(x: torch.Tensor, f: torch.Tensor) -> np.ndarray:
    """``f`` as (batch rows, the rest): one row for a 0-d tensor or an empty first dimension.
    Read through ``host_array``: ``f`` may be a copy-on-write snapshot."""
    rows_n = x.shape[0] if x.dim() > 0 and x.shape[0] > 0 else 1
    return host_array(f).reshape(rows_n, f.numel() // rows_n)


def finite_summary(x: torch.Tensor, f: torch.Tensor) -> tracefmt.TensorSummary | None:
    """The summary of ``x``, or None if ``x`` holds a NaN or an infinity (the caller's masked
    path handles those).

    ``f`` is ``x`` flattened, contiguous and in its compute dtype (float32 or float64).
    """
    n = f.numel()
    a = _rows(x, f)
    rows_n, width = a.shape
    moments = _small_moments(a) if n <= _SMALL else _row_moments(a, f.view(rows_n, width))
    if moments is None:
        return None
    rmin, rmax, rsum, rsq, rnz = moments
    lo, hi = float(rmin.min()), float(rmax.max())
    mean = float(rsum.sum()) / n
    var = max(float(rsq.sum()) / n - mean * mean, 0.0)
    if var <= 1e-6 * mean * mean:  # cancellation: E[x^2] and mean^2 agree to ~6 digits
        var = float(np.var(a, dtype=np.float64))
    hist = tuple(_histogram(a.reshape(-1), lo, hi).tolist())
    b = min(rows_n, MAX_BATCH_STATS) if x.dim() > 0 else 0
    batch = np.empty((b, len(BATCH_STAT_COLUMNS)))
    if b:
        np.sqrt(rsq[:b], out=batch[:, 0])
        np.maximum(-rmin[:b], rmax[:b], out=batch[:, 1])
        batch[:, 2] = 0
        np.subtract(width, rnz[:b], out=batch[:, 3])
    return tracefmt.TensorSummary(count=n, min=lo, max=hi, mean=mean, std=math.sqrt(var), nan=0,
                                  posinf=0, neginf=0, zeros=n - int(rnz.sum()), hist=hist,
                                  batch=batch)


def masked_summary(x: torch.Tensor, f: torch.Tensor) -> tracefmt.TensorSummary:
    """The summary of a CPU tensor that holds NaN or infinities, in numpy: a causal mask's
    -inf makes every attention score tensor one. Whole-tensor passes with temporaries, as
    the torch path has, but a few numpy calls instead of two dozen torch ones."""
    n = f.numel()
    a = _rows(x, f)
    rows_n, width = a.shape
    finite = np.isfinite(a)
    n_finite = np.count_nonzero(finite)
    nan = np.count_nonzero(np.isnan(a))
    posinf = np.count_nonzero(a == np.inf)
    is_zero = a == 0
    values = a[finite]
    if values.size:
        lo, hi = float(values.min()), float(values.max())
        v64 = values.astype(np.float64)
        mean, std = float(v64.mean()), float(v64.std())
        hist = tuple(_histogram(values, lo, hi).tolist())
    else:
        lo = hi = mean = std = math.nan
        hist = (0,) * HIST_BINS
    b = min(rows_n, MAX_BATCH_STATS) if x.dim() > 0 else 0
    batch = np.empty((b, len(BATCH_STAT_COLUMNS)))
    if b:
        clean = np.where(finite[:b], a[:b], 0).astype(np.float64)
        batch[:, 0] = np.sqrt(np.einsum("ij,ij->i", clean, clean))
        batch[:, 1] = np.abs(clean).max(axis=1) if width else 0.0
        batch[:, 2] = width - np.count_nonzero(finite[:b], axis=1)
        batch[:, 3] = np.count_nonzero(is_zero[:b], axis=1)
    return tracefmt.TensorSummary(count=n, min=lo, max=hi, mean=mean, std=std, nan=nan,
                                  posinf=posinf, neginf=n - n_finite - nan - posinf,
                                  zeros=np.count_nonzero(is_zero), hist=hist, batch=batch)


def finite_summary_vector(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor | None:
    """``finite_summary`` packed as ``summary_vector``'s float64 vector."""
    s = finite_summary(x, f)
    if s is None:
        return None
    head = (s.count, s.min, s.max, s.mean, s.std, 0, 0, 0, s.zeros)
    return torch.from_numpy(np.concatenate([np.array(head + s.hist, dtype=np.float64),
                                            s.batch.reshape(-1)]))


_Moments = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _small_moments(a: np.ndarray) -> _Moments | None:
    """``_row_moments`` of a tensor that fits in L1, in float64 numpy: a few calls of a
    microsecond each instead of the chunked path's dozens."""
    a64 = a.astype(np.float64)
    rmin, rmax = a64.min(axis=1), a64.max(axis=1)
    if not (math.isfinite(rmin.min()) and math.isfinite(rmax.max())):
        return None
    return rmin, rmax, a64.sum(axis=1), np.einsum("ij,ij->i", a64, a64), np.count_nonzero(a, axis=1)


def _row_moments(a: np.ndarray, t: torch.Tensor) -> _Moments | None:
    """Per-row min, max, sum, sum of squares (float64) and non-zero count, or None if a
    value is not finite. ``a`` and ``t`` are the same (rows, width) memory."""
    rows_n, width = a.shape
    if width <= CHUNK:
        step = max(1, CHUNK // max(width, 1))
        parts = [_chunk_moments(a[r:r + step], t[r:r + step]) for r in range(0, rows_n, step)]
    else:  # rows longer than a chunk: each row in pieces, combined per row
        parts = []
        for r in range(rows_n):
            pieces = [_chunk_moments(a[r:r + 1, c:c + CHUNK], t[r:r + 1, c:c + CHUNK])
                      for c in range(0, width, CHUNK)]
            if any(p is None for p in pieces):
                return None
            parts.append(_combine(pieces))
    if any(p is None for p in parts):
        return None
    if len(parts) == 1:
        return parts[0]
    return tuple(np.concatenate(col) for col in zip(*parts, strict=True))  # type: ignore[return-value]


def _combine(pieces: list[_Moments | None]) -> _Moments:
    """One row's moments from those of its pieces."""
    cols = [np.concatenate(col) for col in zip(*pieces, strict=True)]  # type: ignore[misc]
    return (cols[0].min(keepdims=True), cols[1].max(keepdims=True), cols[2].sum(keepdims=True),
            cols[3].sum(keepdims=True), cols[4].sum(keepdims=True))


def _chunk_moments(a: np.ndarray, t: torch.Tensor) -> _Moments | None:
    """Moments of the rows of one chunk; it is read from memory once and then from cache."""
    rmin, rmax = np.minimum.reduce(a, axis=1), np.maximum.reduce(a, axis=1)
    if not (math.isfinite(rmin.min()) and math.isfinite(rmax.max())):
        return None
    rsum = t.sum(dim=1).numpy().astype(np.float64)
    l2 = torch.linalg.vector_norm(t, dim=1).numpy()
    if not np.isfinite(l2).all():  # squares beyond float32's range (|x| > ~1e19)
        l2 = torch.linalg.vector_norm(t.to(torch.float64), dim=1).numpy()
    rsq = np.square(l2, dtype=np.float64)
    return rmin, rmax, rsum, rsq, _nonzero_per_row(a)


def _nonzero_per_row(a: np.ndarray) -> np.ndarray:
    """Non-zero count of each row: ``!= 0`` into a reused bool buffer, then byte counts, which
    numpy runs three times faster than torch's bool sum."""
    rows_n, width = a.shape
    mask = _buffer("mask", a.size, np.bool_).reshape(rows_n, width)
    np.not_equal(a, 0, out=mask)
    total = np.count_nonzero(mask)
    if total == a.size:
        return np.full(rows_n, width, dtype=np.int64)
    if rows_n == 1:
        return np.array([total], dtype=np.int64)
    if rows_n <= _ROW_LOOP:
        return np.array([np.count_nonzero(row) for row in mask], dtype=np.int64)
    return np.count_nonzero(mask, axis=1).astype(np.int64)


def _histogram(flat: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Bin counts of finite values over [lo, hi], a chunk at a time.

    The bin index is (x - lo) * bins / (hi - lo) truncated, in the values' precision, as
    bytes (index ``bins`` is x == hi, folded into the last bin). A span or scale outside
    float32's range is binned in float64. A constant tensor (hi == lo) fills bin 0.
    """
    if hi <= lo:
        counts = np.zeros(HIST_BINS, dtype=np.int64)
        counts[0] = flat.size
        return counts
    if flat.size <= _SMALL:  # the reference's own float64 arithmetic, as cheap here
        idx = ((flat.astype(np.float64) - lo) * (HIST_BINS / (hi - lo))).astype(np.intp)
        return np.bincount(np.minimum(idx, HIST_BINS - 1), minlength=HIST_BINS)
    wide = flat.dtype == np.float64 or not 1e-36 < hi - lo < 1e38
    dtype = np.float64 if wide else np.float32
    lo_s, scale = dtype(lo), dtype(HIST_BINS / (hi - lo))
    counts = np.zeros(HIST_BINS + 1, dtype=np.int64)
    for start in range(0, flat.size, CHUNK):
        chunk = flat[start:start + CHUNK]
        scaled = _buffer("scaled", chunk.size, dtype)
        np.subtract(chunk, lo_s, out=scaled)
        np.multiply(scaled, scale, out=scaled)
        idx = _buffer("index", chunk.size, np.uint8)
        np.copyto(idx, scaled, casting="unsafe")  # in [0, bins] up to rounding
        counts += bincount_u8(idx, HIST_BINS + 1)
    out = counts[:HIST_BINS].copy()
    out[-1] += counts[HIST_BINS]
    return out


_PAIRS_FROM = 1 << 14  # elements; below this the pair table costs more than it saves


def bincount_u8(u8: np.ndarray, n: int) -> np.ndarray:
    """``np.bincount(u8, minlength=n)`` for a contiguous uint8 vector of values below n.

    ``torch.bincount`` is the fastest counter here (numpy's widens to int64 first), and its
    loop costs the same per element whatever its width, so neighbouring pairs are counted
    as one int16 value (a + 256 b < 256 n): half the elements, 1.4x faster on a step's real
    activations with 32 bins. The pair table's row and column sums are the counts of b and
    of a, whichever byte order the machine has.
    """
    size = u8.size
    t = torch.from_numpy(u8)
    if size < _PAIRS_FROM or n > 128:
        return torch.bincount(t, minlength=n).numpy()
    even = size & ~1
    pairs = torch.bincount(t[:even].view(torch.int16), minlength=256 * n).numpy()
    table = pairs[:256 * n].reshape(n, 256)[:, :n]
    counts = table.sum(axis=0) + table.sum(axis=1)
    if even < size:
        counts[u8[-1]] += 1
    return counts


def _buffer(name: str, size: int, dtype: type) -> np.ndarray:
    """A reused per-thread buffer of ``size`` elements: a fresh multi-megabyte array comes
    from mmap and pays a page fault per 4 KB, as much as the pass that fills it."""
    key = (name, np.dtype(dtype).str)
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    buf = bufs.get(key)
    if buf is None or buf.size < size:
        buf = bufs[key] = np.empty(max(size, CHUNK), dtype=dtype)
    return buf[:size]
