"""Dtype names and their byte encodings in a trace.

Tensors are stored as little-endian bytes in C order. Dtypes numpy knows natively are
stored as themselves; the rest (bfloat16, float8 kinds, complex32) as a same-width unsigned
integer view, with the dtype *name* saying how to read the bits. Readers get either the raw
view or values decoded to the narrowest numpy float that holds them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from ._errors import TraceFormatError

__all__ = ["DtypeInfo", "DTYPES", "dtype_info", "storage_dtype", "decode_values", "encode_values"]


@dataclass(frozen=True)
class DtypeInfo:
    """How one dtype name is laid out in the heap."""

    name: str
    itemsize: int
    storage: str  # numpy dtype string of the stored view
    kind: str  # "float", "complex", "int", "uint", "bool"
    native: bool  # numpy reads the storage as the real values


_NATIVE = {
    "float64": ("<f8", "float"),
    "float32": ("<f4", "float"),
    "float16": ("<f2", "float"),
    "complex128": ("<c16", "complex"),
    "complex64": ("<c8", "complex"),
    "int64": ("<i8", "int"),
    "int32": ("<i4", "int"),
    "int16": ("<i2", "int"),
    "int8": ("|i1", "int"),
    "uint64": ("<u8", "uint"),
    "uint32": ("<u4", "uint"),
    "uint16": ("<u2", "uint"),
    "uint8": ("|u1", "uint"),
    "bool": ("|b1", "bool"),
}
_VIEWED = {
    "bfloat16": ("<u2", "float"),
    "float8_e4m3fn": ("|u1", "float"),
    "float8_e4m3fnuz": ("|u1", "float"),
    "float8_e5m2": ("|u1", "float"),
    "float8_e5m2fnuz": ("|u1", "float"),
    "float8_e8m0fnu": ("|u1", "float"),
    "complex32": ("<u4", "complex"),
}

DTYPES: dict[str, DtypeInfo] = {
    **{n: DtypeInfo(n, np.dtype(s).itemsize, s, k, True) for n, (s, k) in _NATIVE.items()},
    **{n: DtypeInfo(n, np.dtype(s).itemsize, s, k, False) for n, (s, k) in _VIEWED.items()},
}


def dtype_info(name: str) -> DtypeInfo:
    """Look up a dtype name; unknown names are a format error."""
    try:
        return DTYPES[name]
    except KeyError:
        raise TraceFormatError(f"unknown dtype {name!r}") from None


def storage_dtype(name: str) -> np.dtype:
    """The numpy dtype of the bytes stored for ``name``."""
    return np.dtype(dtype_info(name).storage)


def _minifloat_table(exp_bits: int, man_bits: int, bias: int, *, variant: str) -> np.ndarray:
    """All 256 values of an 8-bit float, as float32 (exactly representable)."""
    codes = np.arange(256, dtype=np.uint32)
    if variant == "e8m0":
        out = np.ldexp(1.0, np.minimum(codes, 254).astype(np.int64) - 127).astype(np.float32)
        out[255] = np.nan  # 0xFF is NaN; 2**128 would overflow float32 anyway
        return out
    sign = np.where(codes >> 7, -1.0, 1.0)
    exp = (codes >> man_bits) & ((1 << exp_bits) - 1)
    man = codes & ((1 << man_bits) - 1)
    frac = man / float(1 << man_bits)
    normal = sign * np.ldexp(1.0 + frac, exp.astype(np.int64) - bias)
    subnormal = sign * np.ldexp(frac, 1 - bias)
    out = np.where(exp == 0, subnormal, normal)
    max_exp = (1 << exp_bits) - 1
    if variant == "ieee":  # e5m2: top exponent is Inf/NaN
        top = exp == max_exp
        out = np.where(top & (man == 0), sign * np.inf, out)
        out = np.where(top & (man != 0), np.nan, out)
    elif variant == "fn":  # e4m3fn: only S.1111.111 is NaN, no Inf
        out = np.where((exp == max_exp) & (man == (1 << man_bits) - 1), np.nan, out)
    elif variant == "fnuz":  # 0x80 is the only NaN, no -0, no Inf
        out[0x80] = np.nan
    return out.astype(np.float32)


@cache
def _float8_table(name: str) -> np.ndarray:
    params = {
        "float8_e4m3fn": (4, 3, 7, "fn"),
        "float8_e4m3fnuz": (4, 3, 8, "fnuz"),
        "float8_e5m2": (5, 2, 15, "ieee"),
        "float8_e5m2fnuz": (5, 2, 16, "fnuz"),
        "float8_e8m0fnu": (8, 0, 127, "e8m0"),
    }[name]
    return _minifloat_table(params[0], params[1], params[2], variant=params[3])


def decode_values(raw: np.ndarray, name: str) -> np.ndarray:
    """Values of a stored array: native dtypes as-is, viewed ones widened exactly to float32/complex64."""
    info = dtype_info(name)
    if info.native:
        return raw
    if name == "bfloat16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if name == "complex32":
        halves = raw.view(np.float16).astype(np.float32)
        return halves.view(np.complex64) if halves.flags.c_contiguous else halves.copy().view(np.complex64)
    return _float8_table(name)[raw]


def encode_values(values: np.ndarray, name: str) -> np.ndarray:
    """The stored view of values given in the named dtype (or, for viewed dtypes, in its bit pattern).

    Callers that hold real bfloat16/float8 data pass the same-width unsigned bits; numpy has
    no such dtypes, so this only checks width and converts native dtypes to little-endian.
    """
    info = dtype_info(name)
    target = np.dtype(info.storage)
    if values.dtype.itemsize != target.itemsize:
        raise TraceFormatError(
            f"array of {values.dtype} cannot hold {name} (needs {target.itemsize}-byte items)"
        )
    if info.native:  # ascontiguousarray makes 0-d arrays 1-d; the reshape keeps the shape
        return np.ascontiguousarray(values, dtype=target).reshape(values.shape)
    return np.ascontiguousarray(values).view(target).reshape(values.shape)
