"""Which recorded tensors are stored encoded (trace format 1.1, spec §4.1), and how.

Deduplication stores each distinct tensor once; what it cannot remove is data that is new
but predictable. Two cases are common and exact:

* a dropout's output is its input times a scaled keep-mask, and its input gradient is its
  output gradient times the same mask: stored as one bit per element against the tensor
  they come from (``masked-scale``), which a transformer has many of;
* an embedding's weight gradient is zero in every row whose token was not in the batch:
  stored without those rows (``zero-rows``).

Both are checked bit for bit before they are used (a kernel computing dropout another way
just gets its values stored as they are), so a trace never holds anything but the values.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

import tracefmt

from ._cow import host_array

__all__ = ["SharedSnapshot", "Derivation", "dropout_p", "encode_payload"]

_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def dropout_p(module: nn.Module) -> float | None:
    """The drop probability of a dropout module that multiplies by a scaled mask now, or None."""
    if not isinstance(module, _DROPOUTS) or not module.training:
        return None
    p = float(module.p)
    return p if 0.0 < p < 1.0 else None


class SharedSnapshot:
    """A tensor's host snapshot, kept until its own write and every encoding against it end.

    ``acquire`` fails once the snapshot was released (its buffer may hold another tensor by
    then); the encoding is then skipped and the values stored as they are.
    """

    def __init__(self, snap: torch.Tensor, free: Callable[[], None] | None = None) -> None:
        self._snap: torch.Tensor | None = snap
        self._free = free
        self._refs = 1
        self._lock = threading.Lock()

    def acquire(self) -> torch.Tensor | None:
        with self._lock:
            if self._refs == 0:
                return None
            self._refs += 1
            return self._snap

    def release(self) -> None:
        with self._lock:
            self._refs -= 1
            if self._refs:
                return
            self._snap = None
        if self._free is not None:
            self._free()


class Derivation:
    """A tensor to try encoding as ``base * (mask ? 1 / (1 - p) : 0)`` (dropout)."""

    def __init__(self, base: SharedSnapshot, base_id: int, base_snap: torch.Tensor, p: float) -> None:
        self.base, self.base_id, self.base_snap, self.p = base, base_id, base_snap, p

    def scales(self, dtype: np.dtype) -> tuple[float, ...]:
        """1 / (1 - p) rounded to ``dtype`` once, and as the dtype's own division rounds it:
        kernels compute the factor either way."""
        one, keep = dtype.type(1.0), 1.0 - self.p
        return tuple(dict.fromkeys((float(dtype.type(1.0 / keep)), float(one / dtype.type(keep)))))


def encode_payload(values: np.ndarray, dtype: str, summary: tracefmt.TensorSummary | None,
                   derivation: Derivation | None) -> np.ndarray | None:
    """The encoded payload to store for ``values`` (storage view), or None to store them as is."""
    if derivation is not None:
        try:
            if dtype in tracefmt.MASKED_SCALE_DTYPES:
                base = host_array(derivation.base_snap)  # no copy of a copy-on-write one
                enc = tracefmt.encode_masked_scale(values, base, base_id=derivation.base_id,
                                                   scales=derivation.scales(values.dtype))
                if enc is not None:
                    return enc
        finally:
            derivation.base.release()
    if _has_zero_row(values, summary):
        return tracefmt.encode_zero_rows(values)
    return None


def _has_zero_row(values: np.ndarray, summary: tracefmt.TensorSummary | None) -> bool:
    """Whether the summary's per-row zero counts show a row of zeros (cheap: no data read)."""
    if summary is None or values.ndim == 0 or values.shape[0] < 8 or not values.size:
        return False
    if summary.zeros * 4 < summary.count or not len(summary.batch):
        return False
    row_len = values.size // values.shape[0]
    return bool((summary.batch[:, 3] == row_len).any())
