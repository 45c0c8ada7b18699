"""The thin torch adapter over tracefmt: dtype names, tensors to stored arrays and back."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

import tracefmt

from ._cow import host_array

__all__ = ["dtype_name", "torch_dtype", "to_numpy", "tensor_from_trace", "rebuild_torch"]

_PIN_FROM = 1 << 16  # bytes: smaller tensors are copied from pageable memory

_SAME_WIDTH_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


_NAMES: dict[torch.dtype, str] = {}


def dtype_name(dtype: torch.dtype) -> str:
    """The trace's name for a torch dtype (``torch.float32`` -> ``float32``); cached, as the
    recorder asks for every tensor it sees."""
    name = _NAMES.get(dtype)
    if name is None:
        name = _NAMES[dtype] = str(dtype).removeprefix("torch.")
    return name


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a trace dtype name."""
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise tracefmt.UsageError(f"this torch has no dtype {name!r}")
    return dt


def supported(t: torch.Tensor) -> bool:
    """Whether a tensor's dtype and layout have a form in the trace format."""
    return (
        t.layout == torch.strided
        and dtype_name(t.dtype) in tracefmt.DTYPES
        and t.dim() <= tracefmt.MAX_NDIM
    )


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """Values of a CPU tensor as the trace's stored numpy view (C order, shares memory if it
    can, then read-only; a copy-on-write snapshot is read without copying it)."""
    t = t.detach()
    if t.dtype == torch.bool:
        return host_array(t.contiguous())
    info = tracefmt.dtype_info(dtype_name(t.dtype))
    c = t.contiguous()
    if info.native:
        return host_array(c)
    raw = host_array(c.view(_SAME_WIDTH_INT[info.itemsize]))
    return raw.view(np.dtype(info.storage))


def tensor_from_trace(
    reader: tracefmt.TraceReader,
    tid: int,
    *,
    device: torch.device | str = "cpu",
    keep_strides: bool = True,
) -> torch.Tensor:
    """A recorded tensor as torch, with its recorded dtype, shape and (optionally) strides.

    The stored bytes are read straight into the tensor's host memory: pinned memory when it
    goes to a CUDA device, so the copy there is one asynchronous transfer.
    """
    info = reader.tensor(tid)
    dt = torch_dtype(info.dtype)
    dev = torch.device(device)
    pin = dev.type == "cuda" and info.value_nbytes >= _PIN_FROM
    host = torch.empty(info.value_nbytes, dtype=torch.uint8, pin_memory=pin)
    reader.read_into(tid, host.numpy())
    t = host.view(dt).reshape(info.shape)
    if keep_strides and info.shape and tuple(t.stride()) != info.strides and _valid_strides(info):
        out = torch.empty_strided(info.shape, info.strides, dtype=dt, device=dev)
        out.copy_(t, non_blocking=pin)
        return out
    return t.to(dev, non_blocking=pin)


def _valid_strides(info: tracefmt.TensorInfo) -> bool:
    """Only dense, non-overlapping layouts (permutations of C order) can be recreated exactly."""
    dims = sorted(
        ((s, n) for s, n in zip(info.strides, info.shape, strict=False) if n > 1), key=lambda x: x[0]
    )
    expected = 1
    for s, n in dims:
        if s != expected:
            return False
        expected *= n
    return True


def rebuild_torch(node: Any, reader: tracefmt.TraceReader, *, device: torch.device | str = "cpu") -> Any:
    """Rebuild a recorded argument tree with torch tensors, dtypes and devices."""

    def leaf(n: dict) -> Any:
        tag = n["$"]
        if tag == "tensor":
            return tensor_from_trace(reader, n["id"], device=device)
        if tag == "dtype":
            return torch_dtype(n["name"])
        if tag == "device":
            return torch.device(device) if str(n["name"]).startswith("cuda") else torch.device(n["name"])
        return tracefmt.default_leaf(n)

    return _objects_back(tracefmt.rebuild(node, leaf))


def _objects_back(value: Any) -> Any:
    """Object nodes (dataclass-like outputs) come back as plain dicts of their fields."""
    if isinstance(value, tracefmt.ObjectNode):
        return {k: _objects_back(v) for k, v in value.fields}
    if isinstance(value, tuple):
        return tuple(_objects_back(v) for v in value)
    if isinstance(value, list):
        return [_objects_back(v) for v in value]
    if isinstance(value, dict):
        return {k: _objects_back(v) for k, v in value.items()}
    return value
