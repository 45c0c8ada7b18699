"""Summaries of CUDA tensors in two Triton kernels, with no host sync.

The torch formulation (``summary_vector``) launches dozens of kernels per tensor, and
``torch.bincount`` reads the maximum back to the host, a sync per tensor that drains the
compute stream. Here one kernel reduces tiles of rows into per-row accumulators (min, max,
sum, sum of squares, zero and non-finite counts; rows past the 4096th share one slot) and the
global min, max and shifted sums for the variance; a second kernel bins every finite element
against the global range it reads from device memory. With the buffer's initialisation that
is three launches per tensor. The accumulators stay on the device in one float64 vector until
the step's single transfer; ``unpack_raw`` finishes the summary on the host.

Float32, float16 and bfloat16 only (compared and binned in float32 and float64, summed per
tile in float32 and across tiles in float64, as the spec allows; squares are summed scaled by
the tile's largest magnitude, so values past float32's square root do not overflow); other
dtypes and empty tensors take the torch path.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import triton
import triton.language as tl

import tracefmt
from tracefmt import HIST_BINS

__all__ = ["SUPPORTED", "raw_summary", "raw_summary_many", "unpack_raw", "unpack_raw_many"]

SUPPORTED = (torch.float32, torch.float16, torch.bfloat16)
_MAX_BATCH = tracefmt.MAX_BATCH_STATS
_TILE = 4096  # elements per program
_HIST_SLOTS = 64  # tl.histogram wants a power of two: bins, then one slot for non-finite
_GLOBAL = 8  # min, max, shifted sum, shifted sum of squares, shift, (unused) x3
_ROW = 8  # min, max, sum, sum of squares, zeros, nan, +inf, -inf
_HEAD = _GLOBAL + _HIST_SLOTS

_templates: dict[torch.device, torch.Tensor] = {}


# sizes vary per tensor: specialising on them (divisible by 16, equal to 1) would compile a
# variant for nearly every shape in a model
@triton.jit(do_not_specialize=["n_rows", "row_len", "col_blocks", "n_slots", "tiles", "buf_stride"])
def _rows_kernel(x_ptr, buf_ptr, n_rows, row_len, col_blocks, n_slots, tiles, buf_stride,
                 ROWS: tl.constexpr, COLS: tl.constexpr, HEAD: tl.constexpr):
    # tensors of one shape stacked: program ``tiles * i + j`` reduces tile j of tensor i
    # into its own accumulators, ``buf_stride`` apart
    tensor = tl.program_id(0) // tiles
    pid = tl.program_id(0) % tiles
    x_ptr += tensor.to(tl.int64) * n_rows * row_len
    buf_ptr += tensor.to(tl.int64) * buf_stride
    rb = pid // col_blocks
    cb = pid % col_blocks
    r = rb * ROWS + tl.arange(0, ROWS)
    c = cb * COLS + tl.arange(0, COLS)
    rmask = r < n_rows
    m = rmask[:, None] & (c < row_len)[None, :]
    x = tl.load(x_ptr + r[:, None].to(tl.int64) * row_len + c[None, :], mask=m, other=0.0)
    x = x.to(tl.float32)
    nan = m & (x != x)
    pinf = m & (x == float("inf"))
    ninf = m & (x == float("-inf"))
    valid = m & ~nan & ~pinf & ~ninf
    xz = tl.where(valid, x, 0.0)
    rmin = tl.min(tl.where(valid, x, float("inf")), axis=1)
    rmax = tl.max(tl.where(valid, x, float("-inf")), axis=1)
    slot = buf_ptr + HEAD + tl.minimum(r, n_slots - 1) * 8
    tl.atomic_min(slot + 0, rmin.to(tl.float64), mask=rmask)
    tl.atomic_max(slot + 1, rmax.to(tl.float64), mask=rmask)
    tl.atomic_add(slot + 2, tl.sum(xz, axis=1).to(tl.float64), mask=rmask)
    # squares of values past ~1e19 overflow float32: square x / (the row's max |x|) and scale
    # the sum back in float64
    ra = tl.maximum(tl.abs(rmin), tl.abs(rmax))
    ra = tl.where((ra > 0) & (ra != float("inf")), ra, 1.0)
    xs = xz / ra[:, None]
    ra64 = ra.to(tl.float64)
    tl.atomic_add(slot + 3, tl.sum(xs * xs, axis=1).to(tl.float64) * ra64 * ra64, mask=rmask)
    tl.atomic_add(slot + 4, tl.sum((m & (x == 0.0)).to(tl.float32), axis=1).to(tl.float64),
                  mask=rmask)
    tl.atomic_add(slot + 5, tl.sum(nan.to(tl.float32), axis=1).to(tl.float64), mask=rmask)
    tl.atomic_add(slot + 6, tl.sum(pinf.to(tl.float32), axis=1).to(tl.float64), mask=rmask)
    tl.atomic_add(slot + 7, tl.sum(ninf.to(tl.float32), axis=1).to(tl.float64), mask=rmask)
    # the variance from sums shifted by the first element: no cancellation near the mean
    k = tl.load(x_ptr).to(tl.float32)
    k = tl.where((k == k) & (k != float("inf")) & (k != float("-inf")), k, 0.0)
    d = tl.where(valid, x - k, 0.0)
    da = tl.max(tl.max(tl.abs(d), axis=1), axis=0)
    da = tl.where(da > 0, da, 1.0)
    ds = d / da
    da64 = da.to(tl.float64)
    tl.atomic_min(buf_ptr + 0, tl.min(rmin, axis=0).to(tl.float64))
    tl.atomic_max(buf_ptr + 1, tl.max(rmax, axis=0).to(tl.float64))
    tl.atomic_add(buf_ptr + 2, tl.sum(tl.sum(d, axis=1), axis=0).to(tl.float64))
    tl.atomic_add(buf_ptr + 3, tl.sum(tl.sum(ds * ds, axis=1), axis=0).to(tl.float64) * da64 * da64)
    tl.atomic_max(buf_ptr + 4, k.to(tl.float64), mask=pid == 0)


@triton.jit(do_not_specialize=["n", "blocks", "buf_stride"])
def _hist_kernel(x_ptr, buf_ptr, n, blocks, buf_stride, BLOCK: tl.constexpr, BINS: tl.constexpr,
                 SLOTS: tl.constexpr, GLOBAL: tl.constexpr):
    tensor = tl.program_id(0) // blocks
    pid = tl.program_id(0) % blocks
    x_ptr += tensor.to(tl.int64) * n
    buf_ptr += tensor.to(tl.int64) * buf_stride
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    finite = m & (x == x) & (x != float("inf")) & (x != float("-inf"))
    lo = tl.load(buf_ptr + 0)
    hi = tl.load(buf_ptr + 1)
    span = hi - lo
    # float64: 32 / (a float32 span) is finite; a constant tensor (span 0) is all bin 0
    scale = tl.where(span > 0, BINS / tl.where(span > 0, span, 1.0), 0.0)
    pos = tl.where(finite, (x.to(tl.float64) - lo) * scale, 0.0)
    idx = tl.minimum(pos.to(tl.int32), BINS - 1)  # x == max lands in the last bin
    idx = tl.where(finite, idx, BINS)
    counts = tl.histogram(idx, SLOTS)
    tl.atomic_add(buf_ptr + GLOBAL + tl.arange(0, SLOTS), counts.to(tl.float64))


def _template(device: torch.device, n: int) -> torch.Tensor:
    """A device vector holding the accumulators' starting values for up to ``n`` entries."""
    cached = _templates.get(device)
    if cached is None or cached.numel() < n:
        size = _HEAD + (_MAX_BATCH + 1) * _ROW
        row = [math.inf, -math.inf, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        host = np.zeros(size, dtype=np.float64)
        host[:_GLOBAL] = [math.inf, -math.inf, 0.0, 0.0, -math.inf, 0.0, 0.0, 0.0]
        host[_HEAD:] = np.tile(row, _MAX_BATCH + 1)
        cached = _templates[device] = torch.from_numpy(host).to(device)
    return cached


def raw_summary(t: torch.Tensor) -> torch.Tensor:
    """The accumulators of ``t`` (a non-empty tensor of a SUPPORTED dtype) as a float64 vector.

    Launched on the current stream; nothing is read back. ``unpack_raw`` with the tensor's
    shape turns a host copy into a TensorSummary.
    """
    return _launch(t.detach().contiguous(), 1, tuple(t.shape))[0]


def raw_summary_many(tensors: list[torch.Tensor], *, max_stack_bytes: int = 256 << 20
                     ) -> list[torch.Tensor]:
    """``raw_summary`` of each tensor, with tensors of one dtype and shape summarised together.

    A model's parameters and their gradients come in a few shapes, dozens of each: stacked
    (up to ``max_stack_bytes`` at a time), each shape costs one copy and three launches
    instead of three launches per tensor, whose host time bounds stats mode on a GPU.
    """
    out: list[torch.Tensor | None] = [None] * len(tensors)
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.dtype, tuple(t.shape), t.device), []).append(i)
    for (_, shape, _), members in groups.items():
        if len(members) == 1:
            out[members[0]] = raw_summary(tensors[members[0]])
            continue
        per = max(tensors[members[0]].numel() * tensors[members[0]].element_size(), 1)
        take = max(1, max_stack_bytes // per)
        for start in range(0, len(members), take):
            chunk = members[start:start + take]
            stacked = torch.stack([tensors[i].detach() for i in chunk])
            for i, vec in zip(chunk, _launch(stacked, len(chunk), shape), strict=True):
                out[i] = vec
    return out  # type: ignore[return-value]


def _launch(x: torch.Tensor, count: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Summarise ``count`` contiguous tensors of ``shape`` laid end to end in ``x``; one
    accumulator row per tensor."""
    n_rows = shape[0] if shape else 1
    numel = math.prod(shape)
    row_len = numel // n_rows
    n_slots = min(n_rows, _MAX_BATCH) + 1  # the last slot collects rows past the 4096th
    size = _HEAD + n_slots * _ROW
    template = _template(x.device, size)[:size]
    buf = template.clone() if count == 1 else template.repeat(count)
    cols = min(triton.next_power_of_2(row_len), _TILE)
    rows = max(_TILE // cols, 1)
    col_blocks = triton.cdiv(row_len, cols)
    tiles = triton.cdiv(n_rows, rows) * col_blocks
    _rows_kernel[(tiles * count,)](x, buf, n_rows, row_len, col_blocks, n_slots, tiles, size,
                                   ROWS=rows, COLS=cols, HEAD=_HEAD)
    blocks = triton.cdiv(numel, _TILE)
    _hist_kernel[(blocks * count,)](x, buf, numel, blocks, size, BLOCK=_TILE, BINS=HIST_BINS,
                                    SLOTS=_HIST_SLOTS, GLOBAL=_GLOBAL)
    return buf.view(count, size)


def unpack_raw(raw: np.ndarray, shape: tuple[int, ...]) -> tracefmt.TensorSummary:
    """A host copy of ``raw_summary``'s vector, for a tensor of ``shape``, as a TensorSummary."""
    return unpack_raw_many([raw], [shape])[0]


def unpack_raw_many(raws: list[np.ndarray], shapes: list[tuple[int, ...]]
                    ) -> list[tracefmt.TensorSummary]:
    """``unpack_raw`` of many vectors at once: stats mode unpacks a step's in one go.

    Per vector the work is a handful of numpy calls on a few hundred values, so one call per
    tensor cost more in call overhead (and in the GIL the training thread waits for) than in
    arithmetic; here every reduction runs once over all of them.
    """
    if not raws:
        return []
    n = len(raws)
    heads = np.stack([r[:_HEAD] for r in raws])
    rows = [r[_HEAD:].reshape(-1, _ROW) for r in raws]
    n_rows = np.array([len(r) for r in rows])
    starts = np.concatenate([[0], np.cumsum(n_rows)[:-1]])
    all_rows = np.concatenate(rows)
    row_sums = np.add.reduceat(all_rows[:, 4:8], starts, axis=0)  # zeros, nan, +inf, -inf
    zeros, nan, posinf, neginf = (row_sums[:, i].astype(np.int64) for i in range(4))
    counts = np.array([math.prod(s) for s in shapes], dtype=np.int64)
    finite = counts - nan - posinf - neginf
    safe = np.maximum(finite, 1)
    shift_mean = heads[:, 2] / safe
    with np.errstate(invalid="ignore"):
        means = np.where(finite > 0, heads[:, 4] + shift_mean, np.nan)
        stds = np.where(finite > 0, np.sqrt(np.maximum(heads[:, 3] / safe - shift_mean ** 2, 0.0)),
                        np.nan)
    lows = np.where(finite > 0, heads[:, 0], np.nan)
    highs = np.where(finite > 0, heads[:, 1], np.nan)
    hists = heads[:, _GLOBAL:_GLOBAL + HIST_BINS].astype(np.int64).tolist()
    empty = all_rows[:, 0] > all_rows[:, 1]  # no finite element: min stayed +inf
    max_abs = np.where(empty, 0.0, np.maximum(np.abs(all_rows[:, 0]), np.abs(all_rows[:, 1])))
    batch_all = np.stack([np.sqrt(all_rows[:, 3]), max_abs,
                          all_rows[:, 5] + all_rows[:, 6] + all_rows[:, 7], all_rows[:, 4]], axis=1)
    out = []
    for i in range(n):
        shape = shapes[i]
        if len(shape) and shape[0]:
            start = int(starts[i])
            batch = batch_all[start:start + min(shape[0], _MAX_BATCH)]
        else:
            batch = np.zeros((0, 4))
        out.append(tracefmt.TensorSummary(
            count=int(counts[i]), min=float(lows[i]), max=float(highs[i]), mean=float(means[i]),
            std=float(stds[i]), nan=int(nan[i]), posinf=int(posinf[i]), neginf=int(neginf[i]),
            zeros=int(zeros[i]), hist=tuple(hists[i]), batch=batch,
        ))
    return out
