"""Encoded payloads (spec §4.1, format 1.1): values stored smaller than numel × itemsize.

Two encodings, each exact to the bit, each decodable with numpy from the spec alone:

* **masked scale**: ``v[i] = base[i] * (mask[i] ? scale : 0)`` in the tensor's dtype, where
  ``base`` is an earlier raw tensor of the same dtype and shape. That is what dropout
  computes, forward (base = input) and backward (base = the output's gradient), so a dropout
  output or input gradient costs one bit per element instead of four bytes.
* **zero rows**: rows (along dimension 0) whose bytes are all zero are left out, a bitmap
  says which rows are stored. An embedding table's gradient is zero in every row whose
  token was not in the batch.

An encoded payload starts with an 8-byte header: ``encoding`` (u32 little-endian) and a
reserved u32 (0). Parsing is strict: any length or field that disagrees with the tensor's
row is a TraceFormatError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ._errors import TraceFormatError
from ._layout import FLAG_MASKED_SCALE, FLAG_ZERO_ROWS

__all__ = [
    "ENCODING_FLAGS",
    "MASKED_SCALE",
    "MASKED_SCALE_DTYPES",
    "ZERO_ROWS",
    "MaskedScale",
    "ZeroRows",
    "parse_encoded",
    "encode_masked_scale",
    "encode_zero_rows",
]

MASKED_SCALE = 1
ZERO_ROWS = 2
MASKED_SCALE_DTYPES = ("float16", "float32", "float64")

_HEADER = 8
_MASKED_HEADER = 24  # header, base id u64, scale f64


def _pad8(n: int) -> int:
    return (n + 7) // 8 * 8


def _header(encoding: int, size: int) -> np.ndarray:
    """``size`` zero bytes starting with the 8-byte header of ``encoding``."""
    head = np.zeros(size, np.uint8)
    head[:4] = np.frombuffer(np.uint32(encoding).tobytes(), np.uint8)
    return head


@dataclass(frozen=True)
class MaskedScale:
    """``v = base * (mask ? scale : 0)``; ``mask`` holds numel bits, LSB first."""

    base: int
    scale: float
    mask: np.ndarray  # uint8, ceil(numel / 8) bytes
    name: ClassVar[str] = "masked-scale"
    flag: ClassVar[int] = FLAG_MASKED_SCALE

    def decode(self, base: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """The values, from the base tensor's values (same shape, ``dtype``)."""
        keep = np.unpackbits(self.mask, count=base.size, bitorder="little").astype(bool)
        factor = np.where(keep, dtype.type(self.scale), dtype.type(0))
        with np.errstate(invalid="ignore", over="ignore", under="ignore"):
            return np.multiply(base.reshape(-1), factor, dtype=dtype).reshape(base.shape)


@dataclass(frozen=True)
class ZeroRows:
    """Rows of dimension 0 flagged in ``present`` (LSB first) are stored, the rest are zero."""

    present: np.ndarray  # bool, one per row
    rows: np.ndarray  # uint8, the stored rows' bytes
    name: ClassVar[str] = "zero-rows"
    flag: ClassVar[int] = FLAG_ZERO_ROWS

    def decode(self, shape: tuple[int, ...], storage: np.dtype) -> np.ndarray:
        out = np.zeros(shape, dtype=storage)
        out[self.present] = self.rows.view(storage).reshape((-1, *shape[1:]))
        return out


ENCODING_FLAGS = {cls.flag: cls.name for cls in (MaskedScale, ZeroRows)}  # row flag -> name


def parse_encoded(raw: np.ndarray, *, dtype: str, shape: tuple[int, ...], itemsize: int,
                  tid: int) -> MaskedScale | ZeroRows:
    """The encoded payload ``raw`` (uint8) of tensor ``tid``, checked against its row."""
    what = f"tensor {tid}"
    if raw.size < _HEADER:
        raise TraceFormatError(f"{what}: encoded payload of {raw.size} bytes is shorter than its header")
    encoding = int(raw[:4].view("<u4")[0])  # bytes 4-7 are reserved
    numel = int(np.prod(shape, dtype=np.int64))
    if encoding == MASKED_SCALE:
        if dtype not in MASKED_SCALE_DTYPES:
            raise TraceFormatError(f"{what}: masked-scale payload for dtype {dtype}")
        want = _MASKED_HEADER + (numel + 7) // 8
        if raw.size != want:
            raise TraceFormatError(f"{what}: masked-scale payload of {raw.size} bytes, expected {want}")
        base = int(raw[8:16].view("<u8")[0])
        scale = float(raw[16:24].view("<f8")[0])
        if base >= tid:
            raise TraceFormatError(f"{what}: masked-scale base {base} is not an earlier tensor")
        return MaskedScale(base, scale, raw[_MASKED_HEADER:])
    if encoding == ZERO_ROWS:
        if not shape or shape[0] == 0:
            raise TraceFormatError(f"{what}: zero-rows payload for a tensor without rows")
        n_rows = shape[0]
        bitmap_end = _HEADER + _pad8((n_rows + 7) // 8)
        if raw.size < bitmap_end:
            raise TraceFormatError(f"{what}: zero-rows payload too short for its row bitmap")
        present = np.unpackbits(raw[_HEADER:_HEADER + (n_rows + 7) // 8], count=n_rows,
                                bitorder="little").astype(bool)
        row_bytes = numel // n_rows * itemsize
        want = bitmap_end + int(present.sum()) * row_bytes
        if raw.size != want:
            raise TraceFormatError(f"{what}: zero-rows payload of {raw.size} bytes, expected {want}")
        return ZeroRows(present, raw[bitmap_end:])
    raise TraceFormatError(f"{what}: unknown payload encoding {encoding}")


def encode_masked_scale(values: np.ndarray, base: np.ndarray, *, base_id: int,
                        scales: tuple[float, ...]) -> np.ndarray | None:
    """The masked-scale payload of ``values`` against ``base``, or None where no scale in
    ``scales`` reproduces every bit (then the values must be stored as they are).

    An element's bit is set where ``base * scale`` gives its bits, else ``base * 0`` must
    (a zero base gives the same either way). Values holding a NaN are declined: which NaN a
    product gives is not the same on every machine, so decoding could not promise the bits.
    """
    if values.shape != base.shape or values.dtype != base.dtype or values.dtype.name not in MASKED_SCALE_DTYPES:
        return None
    v, b = values.reshape(-1), base.reshape(-1)
    if np.isnan(v).any():
        return None
    bits = v.view(f"<u{v.itemsize}")
    for scale in scales:
        s = values.dtype.type(scale)
        if not np.isfinite(s) or float(s) != scale:
            continue
        with np.errstate(invalid="ignore", over="ignore", under="ignore"):
            keep = np.multiply(b, s).view(bits.dtype) == bits
            ok = np.multiply(b, values.dtype.type(0)).view(bits.dtype) == bits
        ok |= keep  # whole-array passes: gathering the dropped elements was 3x slower
        if not ok.all():
            continue
        head = _header(MASKED_SCALE, _MASKED_HEADER)
        head[8:16] = np.frombuffer(np.uint64(base_id).tobytes(), np.uint8)
        head[16:24] = np.frombuffer(np.float64(scale).tobytes(), np.uint8)
        return np.concatenate([head, np.packbits(keep, bitorder="little")])
    return None


def encode_zero_rows(stored: np.ndarray, *, min_saving: float = 0.25) -> np.ndarray | None:
    """The zero-rows payload of ``stored`` (the storage view, C order), or None unless it
    leaves out at least ``min_saving`` of the bytes."""
    if stored.ndim == 0 or stored.shape[0] < 8 or stored.size == 0:
        return None
    n_rows = stored.shape[0]
    rows = np.ascontiguousarray(stored).reshape(n_rows, -1).view(np.uint8)
    present = rows.any(axis=1)
    kept = int(present.sum())
    if kept > (1.0 - min_saving) * n_rows:
        return None
    bitmap = np.packbits(present, bitorder="little")
    head = _header(ZERO_ROWS, _HEADER + _pad8(bitmap.size))
    head[_HEADER:_HEADER + bitmap.size] = bitmap
    return np.concatenate([head, rows[present].reshape(-1)])
