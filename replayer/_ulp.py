"""ULP distance between two arrays of one floating dtype, bfloat16 and float8 included.

Values map to integer keys that are monotonic across zero (the sign-magnitude bit pattern
flipped for negatives), so the distance is the number of representable values between them.
"""

from __future__ import annotations

import numpy as np

from ._tolerance import component_dtype, dtype_kind, normalize_dtype

__all__ = ["ulp_distance", "finite_ulp", "finite_ulp_max", "ULP_UNDEFINED"]

ULP_UNDEFINED = np.iinfo(np.uint64).max
_SIGN_FLIP = np.uint64(1 << 63)
_IEEE = {
    "float64": (np.float64, np.int64, 0x7FFF_FFFF_FFFF_FFFF),
    "float32": (np.float32, np.int32, 0x7FFF_FFFF),
    "float16": (np.float16, np.int16, 0x7FFF),
}
# mantissa bits, smallest normal exponent, largest finite value
_MINIFLOAT = {
    "float8_e4m3fn": (3, -6, 448.0),
    "float8_e4m3fnuz": (3, -7, 240.0),
    "float8_e5m2": (2, -14, 57344.0),
    "float8_e5m2fnuz": (2, -15, 57344.0),
    "float8_e8m0fnu": (0, -127, 2.0**127),
}


def _ulp_keys(values: np.ndarray, component: str) -> np.ndarray:
    """Monotone uint64 key per value, one step per representable number of ``component``.

    Negative numbers mirror positive ones (-0.0 and +0.0 share key 0), so the distance is
    symmetric across zero. Values must not be NaN. Sub-float32 formats (bfloat16, float8) are
    read from float32 values; values not on their grid are truncated toward zero.
    """
    if component in _IEEE:
        ftype, itype, mask = _IEEE[component]
        keys = np.asarray(values, dtype=ftype).view(itype).astype(np.int64)
    elif component == "bfloat16":
        x32 = np.asarray(values, dtype=np.float32)
        keys = (x32.view(np.int32) >> 16).astype(np.int64)
        mask = 0x7FFF
    else:
        return _minifloat_keys(np.asarray(values, dtype=np.float32), *_MINIFLOAT[component])
    negative = keys < 0
    np.bitwise_and(keys, mask, out=keys, where=negative)
    np.negative(keys, out=keys, where=negative)
    return _to_monotone_u64(keys)


def _minifloat_keys(x32: np.ndarray, man_bits: int, emin: int, max_finite: float) -> np.ndarray:
    magnitude = np.abs(x32)
    base = (126 + emin) << man_bits

    def normal(a: np.ndarray) -> np.ndarray:
        return (a.view(np.int32).astype(np.int64) >> (23 - man_bits)) - base

    smallest_normal = np.float32(2.0**emin)
    below = np.minimum(magnitude, smallest_normal).astype(np.float64)
    subnormal = (below * 2.0 ** (man_bits - emin)).astype(np.int64)
    keys = np.where(magnitude >= smallest_normal, normal(magnitude), subnormal)
    infinite = np.isinf(magnitude)
    if infinite.any():  # Inf sits one step above the largest finite value
        keys[infinite] = int(normal(np.array([max_finite], dtype=np.float32))[0]) + 1
    keys = np.where(np.signbit(x32), -keys, keys)
    return _to_monotone_u64(keys)


def _to_monotone_u64(keys: np.ndarray) -> np.ndarray:
    unsigned = np.ascontiguousarray(keys, dtype=np.int64).view(np.uint64)
    unsigned ^= _SIGN_FLIP
    return unsigned


def _int_keys(values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == np.uint64:
        return arr.astype(np.uint64)
    return _to_monotone_u64(arr.astype(np.int64))


def _key_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    high = np.maximum(a, b)
    np.minimum(a, b, out=a)
    high -= a
    return high


def _real_ulp(a: np.ndarray, b: np.ndarray, kind: str, component: str) -> np.ndarray:
    if kind in ("int", "bool"):
        return _key_distance(_int_keys(a), _int_keys(b))
    return _key_distance(_ulp_keys(a, component), _ulp_keys(b, component))


def finite_ulp(a: np.ndarray, b: np.ndarray, dtype: str) -> np.ndarray:
    """ULP distance for arrays known to hold no NaN (complex: the worse of the two parts)."""
    kind = dtype_kind(dtype)
    component = component_dtype(dtype)
    if kind == "complex":
        return np.maximum(
            _real_ulp(a.real, b.real, "float", component),
            _real_ulp(a.imag, b.imag, "float", component),
        )
    return _real_ulp(a, b, kind, component)


def finite_ulp_max(a: np.ndarray, b: np.ndarray, dtype: str) -> int:
    """``max(finite_ulp(a, b, dtype))`` (0 when empty), cheaply for 32-bit and narrower floats.

    Their keys fit in int32, so the largest distance comes from one int64 difference instead
    of uint64 keys per side: a third of the memory traffic on replay's most common dtype.
    """
    component = component_dtype(dtype)
    if dtype_kind(dtype) != "float" or component not in _NARROW:
        dist = finite_ulp(a, b, dtype)
        return int(np.max(dist)) if dist.size else 0
    ka, kb = _narrow_keys(a, component), _narrow_keys(b, component)
    if ka.size == 0:
        return 0
    diff = np.subtract(ka, kb, dtype=np.int64)
    return int(max(int(diff.max()), -int(diff.min())))


# value dtype, its same-width integer, bits shifted away (bfloat16 is a float32's top half),
# magnitude mask
_NARROW = {"float32": (np.float32, np.int32, 0, 0x7FFF_FFFF),
           "float16": (np.float16, np.int16, 0, 0x7FFF),
           "bfloat16": (np.float32, np.int32, 16, 0x7FFF)}


def _narrow_keys(values: np.ndarray, component: str) -> np.ndarray:
    """The monotone keys of ``_ulp_keys`` as signed integers of the format's own width.

    Negative values (sign bit set) become -magnitude: flipping the magnitude bits gives
    -1 - magnitude, and subtracting the sign (-1) adds the one back. Four integer passes,
    several times faster than ``np.where``.
    """
    ftype, itype, shift, mask = _NARROW[component]
    bits = np.asarray(values, dtype=ftype).view(itype)
    if shift:
        bits = bits >> shift
    sign = bits >> (8 * bits.itemsize - 1)  # -1 where negative, else 0
    keys = sign & mask
    keys ^= bits
    keys -= sign
    return keys


def ulp_distance(a: np.ndarray, b: np.ndarray, *, dtype: str) -> np.ndarray:
    """Elementwise count of representable ``dtype`` numbers between a and b, as uint64.

    float64/32/16 use their own bit patterns, bfloat16 the top 16 bits of float32, float8 its
    grid; integers the plain difference; complex the larger of the two components. NaN on both
    sides is 0 apart, NaN against anything else is undefined: ``2**64 - 1``.
    """
    canonical = normalize_dtype(dtype)
    x, y = np.broadcast_arrays(np.asarray(a), np.asarray(b))
    if dtype_kind(canonical) in ("int", "bool"):
        return finite_ulp(x, y, canonical)
    nan_x, nan_y = np.isnan(x), np.isnan(y)
    if not (nan_x.any() or nan_y.any()):
        return finite_ulp(x, y, canonical)
    dist = finite_ulp(np.where(nan_x, 0, x), np.where(nan_y, 0, y), canonical)
    dist[nan_x & nan_y] = 0
    dist[nan_x ^ nan_y] = ULP_UNDEFINED
    return dist
