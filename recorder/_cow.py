"""Copy-on-write snapshots of CPU tensors, and reading them without the copy.

A snapshot only has to outlive a later in-place op on the live tensor until the summary
thread (in full capture, the writer) has read it. ``torch._lazy_clone`` gives that without copying: the clone
shares the storage, and whichever side writes first (in practice the model, with an in-place
op) gets its own copy at that moment. A model that does not write into a recorded tensor
while its snapshot is held never pays for a copy; one that does pays what an eager snapshot
would have cost. Reads must not ask for a mutable pointer, which would make the
clone copy itself: torch reductions read through const pointers, and ``host_array`` gives
numpy the same.

Where torch has no ``_lazy_clone`` or no ``Tensor.const_data_ptr`` (older releases),
``lazy_snapshot`` returns None and the caller copies eagerly.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import torch

__all__ = ["lazy_snapshot", "host_array", "is_copy_on_write"]

_lazy_clone: Any = getattr(torch, "_lazy_clone", None)
_is_cow: Any = getattr(torch._C, "_is_cow_tensor", None)
if not hasattr(torch.Tensor, "const_data_ptr"):  # such a torch cannot be read without copying
    _lazy_clone = None

_NUMPY = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16,
          torch.int64: np.int64, torch.int32: np.int32, torch.int16: np.int16,
          torch.int8: np.int8, torch.uint8: np.uint8, torch.bool: np.bool_,
          torch.complex64: np.complex64, torch.complex128: np.complex128}


def lazy_snapshot(t: torch.Tensor) -> torch.Tensor | None:
    """A copy-on-write clone of CPU tensor ``t`` (no data copied now), or None where this
    torch cannot make one or should not.

    Copy-on-write works on whole storages: a clone of a slice would make a write anywhere
    in the rest of its storage (a preallocated cache filled a row at a time) copy all of it.
    A tensor that does not span its storage is left to an eager copy of just its elements.
    """
    if _lazy_clone is None:
        return None
    if t.storage_offset() or t.numel() * t.element_size() != t.untyped_storage().nbytes():
        return None
    return _lazy_clone(t.detach() if t.requires_grad else t)  # the recorder's are detached


def is_copy_on_write(t: torch.Tensor) -> bool:
    """Whether ``t``'s storage is shared copy-on-write (False where torch cannot tell)."""
    return bool(_is_cow(t)) if _is_cow is not None else False


def host_array(t: torch.Tensor) -> np.ndarray:
    """A read-only numpy view of contiguous CPU tensor ``t`` that never materialises a
    copy-on-write storage (``Tensor.numpy`` asks for a mutable pointer, which does).

    The view keeps ``t`` alive, as ``Tensor.numpy`` does.
    """
    dtype = _NUMPY.get(t.dtype)
    if dtype is None or _lazy_clone is None or not t.is_contiguous() or t.numel() == 0:
        return t.numpy()
    nbytes = t.numel() * t.element_size()
    raw = (ctypes.c_char * nbytes).from_address(t.const_data_ptr())
    raw.owner = t  # the array's base is ``raw``: this keeps the memory alive as long as the array
    a = np.frombuffer(raw, dtype=dtype).reshape(tuple(t.shape))
    a.flags.writeable = False
    return a
