"""Tensor summaries computed with torch on the tensor's own device.

Same definitions as ``tracefmt.compute_summary`` (spec "Summaries"), except that on the
CPU fast path the histogram bins are evaluated in the tensor's compute precision (float32
for float32 and narrower), which the spec allows at bin edges. Each summary is one
float64 vector kept on the device; ``unpack`` turns a host copy back into a TensorSummary,
so stats mode needs one device-to-host transfer per step, not one per tensor.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch

import tracefmt
from tracefmt import HIST_BINS

from ._host_summary import finite_summary, finite_summary_vector, masked_summary

__all__ = ["summary_vector", "host_summary", "device_summary", "unpack_summary", "HEADER"]

HEADER = 9  # count, min, max, mean, std, nan, posinf, neginf, zeros
_MAX_BATCH = tracefmt.MAX_BATCH_STATS
_BATCH_COLS = len(tracefmt.BATCH_STAT_COLUMNS)


def _prepared(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` detached (complex: its magnitude), and flattened in its compute dtype."""
    x = t.detach()
    if x.is_complex():
        x = x.abs()
    # float64 and integers need float64 to be summarised exactly (int64 ids above 2**24 do not
    # fit float32); narrower floats and bool are exact in float32.
    exact32 = (x.is_floating_point() and x.dtype != torch.float64) or x.dtype == torch.bool
    compute = torch.float32 if exact32 else torch.float64
    f = (x if x.dtype == compute else x.to(compute)).reshape(-1)
    if not f.is_floating_point() or f.numel() == 0:
        f = f.to(torch.float32)
    return x, f


def host_summary(t: torch.Tensor) -> tracefmt.TensorSummary:
    """The summary of CPU tensor ``t``; a finite one without the vector round trip."""
    x, f = _prepared(t)
    if not f.numel():
        return unpack_summary(_masked_vector(x, f).numpy())
    return finite_summary(x, f) or masked_summary(x, f)


def summary_vector(t: torch.Tensor) -> torch.Tensor:
    """The summary of ``t`` as a float64 vector: header, histogram, then batch rows."""
    x, f = _prepared(t)
    if f.device.type == "cpu" and f.numel():
        fast = finite_summary_vector(x, f)
        if fast is not None:
            return fast
    return _masked_vector(x, f)


def _masked_vector(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``summary_vector`` with torch ops on any device, NaN and infinities allowed."""
    n = f.numel()
    finite = torch.isfinite(f)
    nan = torch.isnan(f).sum()
    posinf = (f == float("inf")).sum()
    neginf = (f == float("-inf")).sum()
    zeros = (f == 0).sum()
    n_fin = finite.sum()
    fz = torch.where(finite, f, 0.0)
    if n:
        lo = torch.where(finite, f, float("inf")).min()
        hi = torch.where(finite, f, float("-inf")).max()
    else:
        lo = hi = torch.tensor(float("nan"), device=f.device)
    denom = n_fin.clamp(min=1).to(torch.float64)
    mean = fz.to(torch.float64).sum() / denom
    centred = torch.where(finite, f.to(torch.float64) - mean, 0.0)
    std = torch.sqrt((centred * centred).sum() / denom)
    span = hi.to(torch.float64) - lo.to(torch.float64)  # in float64, as numpy does
    scale = torch.where(span > 0, HIST_BINS / span, torch.zeros_like(span))
    idx = ((f.to(torch.float64) - lo) * scale).clamp(0, HIST_BINS - 1).to(torch.int64)
    idx = torch.where(finite, idx, HIST_BINS)
    hist = torch.bincount(idx, minlength=HIST_BINS + 1)[:HIST_BINS]
    empty = n_fin == 0
    nanv = torch.tensor(float("nan"), dtype=torch.float64, device=f.device)
    header = torch.stack([
        torch.tensor(float(n), dtype=torch.float64, device=f.device),
        torch.where(empty, nanv, lo.to(torch.float64)),
        torch.where(empty, nanv, hi.to(torch.float64)),
        torch.where(empty, nanv, mean),
        torch.where(empty, nanv, std),
        nan.to(torch.float64), posinf.to(torch.float64), neginf.to(torch.float64),
        zeros.to(torch.float64),
    ])
    parts = [header, hist.to(torch.float64)]
    if x.dim() > 0 and x.shape[0] > 0 and n == 0:  # (B, 0, ...): B rows of zeros, as numpy
        parts.append(torch.zeros(min(x.shape[0], _MAX_BATCH) * _BATCH_COLS, dtype=torch.float64,
                                 device=f.device))
    elif x.dim() > 0 and x.shape[0] > 0:
        b = min(x.shape[0], _MAX_BATCH)
        rows_f = f.reshape(x.shape[0], -1)[:b]
        rows = fz.reshape(x.shape[0], -1)[:b].to(torch.float64)
        batch = torch.stack([
            torch.linalg.vector_norm(rows, dim=1),
            rows.abs().amax(dim=1),
            (~finite.reshape(x.shape[0], -1)[:b]).sum(dim=1).to(torch.float64),
            (rows_f == 0).sum(dim=1).to(torch.float64),
        ], dim=1)
        parts.append(batch.reshape(-1))
    return torch.cat(parts)


_triton_state: dict[str, Any] = {}


def device_summary(t: torch.Tensor) -> tuple[torch.Tensor, Callable[[np.ndarray], tracefmt.TensorSummary]]:
    """The summary of ``t`` kept on its device, and the function that unpacks a host copy.

    CUDA float32/float16/bfloat16 tensors use the Triton kernels of ``_device_summary``
    (three launches, no host sync); anything else, or a machine where those kernels do not
    build, uses ``summary_vector``. The first failure is warned about once.
    """
    kernels = _kernels() if t.is_cuda and t.numel() else None
    if kernels is not None and t.dtype in kernels.SUPPORTED:
        try:
            return kernels.raw_summary(t), partial(kernels.unpack_raw, shape=tuple(t.shape))
        except Exception as exc:  # noqa: BLE001 - any build or launch failure: the torch path
            _kernels_failed(exc)
    return summary_vector(t), unpack_summary


def device_summaries(tensors: list[torch.Tensor]
                     ) -> list[tuple[torch.Tensor, Callable[[np.ndarray], tracefmt.TensorSummary]]]:
    """``device_summary`` of each tensor; CUDA tensors of one dtype and shape share launches
    (``_device_summary.raw_summary_many``)."""
    out: list[Any] = [None] * len(tensors)
    batched = [i for i, t in enumerate(tensors) if t.is_cuda and t.numel()]
    kernels = _kernels() if batched else None
    if kernels is not None:
        batched = [i for i in batched if tensors[i].dtype in kernels.SUPPORTED]
        try:
            vecs = kernels.raw_summary_many([tensors[i] for i in batched])
        except Exception as exc:  # noqa: BLE001 - as in device_summary: the torch path
            _kernels_failed(exc)
        else:
            for i, vec in zip(batched, vecs, strict=True):
                out[i] = (vec, partial(kernels.unpack_raw, shape=tuple(tensors[i].shape)))
    return [o if o is not None else device_summary(t) for o, t in zip(out, tensors, strict=True)]


def _kernels() -> Any:
    """The Triton kernels module, or None where they failed to build or launch before."""
    if _triton_state.get("failed"):
        return None
    try:
        from . import _device_summary as kernels
    except Exception as exc:  # noqa: BLE001 - no triton, or it fails to import
        _kernels_failed(exc)
        return None
    _triton_state["kernels"] = kernels
    return kernels


def _kernels_failed(exc: BaseException) -> None:
    _triton_state["failed"] = exc
    warnings.warn(f"tensortrace: Triton device summaries unavailable ({exc}); "
                  "summarising with torch, one host sync per tensor", stacklevel=3)


_Unpack = Callable[[np.ndarray], tracefmt.TensorSummary]
_UnpackMany = Callable[[list[np.ndarray], list[_Unpack]], list[tracefmt.TensorSummary]]


def unpack_many(unpack: _Unpack) -> _UnpackMany | None:
    """For an unpack function from ``device_summary``, one that unpacks many vectors of its
    kind in one go (given theirs); None where there is none (the torch path)."""
    kernels = _triton_state.get("kernels")
    if kernels is not None and isinstance(unpack, partial) and unpack.func is kernels.unpack_raw:
        return _unpack_raw_many
    return None


def _unpack_raw_many(raws: list[np.ndarray], unpacks: list[_Unpack]) -> list[tracefmt.TensorSummary]:
    kernels = _triton_state["kernels"]
    return kernels.unpack_raw_many(raws, [u.keywords["shape"] for u in unpacks])


def unpack_summary(vec: np.ndarray) -> tracefmt.TensorSummary:
    """A host copy of ``summary_vector`` back into a TensorSummary."""
    h = vec[:HEADER]
    hist = tuple(vec[HEADER:HEADER + HIST_BINS].astype(np.int64).tolist())
    batch = vec[HEADER + HIST_BINS:].reshape(-1, _BATCH_COLS)
    return tracefmt.TensorSummary(
        count=int(h[0]), min=float(h[1]), max=float(h[2]), mean=float(h[3]), std=float(h[4]),
        nan=int(h[5]), posinf=int(h[6]), neginf=int(h[7]), zeros=int(h[8]), hist=hist, batch=batch,
    )
