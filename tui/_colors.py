"""Colour ramps, value quantisation and cached Rich styles for the renderers.

Values are first quantised to small integer *codes* (a ramp level, or a negative code for
NaN, +Inf, -Inf, masked and "no pixel"), and styles are looked up per code pair from an
LRU cache: building a ``Style`` per cell is what makes naive terminal heatmaps slow.

Ramps (documented choice):

* **sequential** — a 20-level viridis ramp (dark purple → yellow), used when the value
  range does not straddle zero; the minimum is the darkest colour.
* **diverging** — 21 levels with a dark grey centre for exact zero, blues for negatives
  and oranges for positives, brightening with magnitude; used when ``lo < 0 <= hi``.
  Any non-zero value gets at least the first tinted level, so "exactly zero" (e.g. an
  unfilled batch element) is always distinguishable from "small".

Special colours are outside both ramps: NaN bright magenta, +Inf white, -Inf bright
cyan, masked/padded black. With 16 colours the ramps shrink to 6 and 5 named colours.
In plain mode (no colour) codes index the glyph ramp :data:`PLAIN_RAMP` instead, by
position in range for sequential data and by magnitude for diverging data.

The small line helpers at the end (:func:`crop_line`, :func:`pack_parts`) are shared by
both renderers so that every line they emit is exactly as wide as asked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from rich.cells import cell_len
from rich.color import Color, ColorSystem
from rich.segment import Segment
from rich.style import Style

from ._env import ColorDepth

__all__ = [
    "EMPTY",
    "MASKED",
    "NAN",
    "NEGINF",
    "PLAIN_RAMP",
    "PLAIN_SPECIALS",
    "POSINF",
    "ColorScale",
    "Line",
    "RampKind",
    "code_color",
    "crop_line",
    "finite_range",
    "glyph",
    "level_count",
    "pack_parts",
    "pair_style",
    "series_color",
    "swatch_style",
]

RampKind = Literal["sequential", "diverging"]
Line = list[Segment]
"""One terminal line as Rich segments (what a Textual ``Strip`` is built from)."""

NAN = -1
POSINF = -2
NEGINF = -3
MASKED = -4
EMPTY = -5

PLAIN_RAMP = " .:;=*o%#@"
"""Glyphs by increasing value (sequential) or magnitude (diverging); no ``+``/``-`` here."""

PLAIN_SPECIALS: dict[int, str] = {NAN: "?", POSINF: "+", NEGINF: "-", MASKED: "·", EMPTY: " "}

_RGB = tuple[int, int, int]

_VIRIDIS: tuple[_RGB, ...] = (
    (68, 1, 84),
    (72, 36, 117),
    (65, 68, 135),
    (53, 95, 141),
    (42, 120, 142),
    (33, 145, 140),
    (34, 168, 132),
    (68, 191, 112),
    (122, 209, 81),
    (189, 223, 38),
    (253, 231, 37),
)
_CENTRE: _RGB = (64, 64, 64)
_NEGATIVE: tuple[_RGB, ...] = (
    _CENTRE,
    (45, 70, 120),
    (40, 95, 175),
    (70, 135, 230),
    (150, 180, 255),
)
_POSITIVE: tuple[_RGB, ...] = (
    _CENTRE,
    (120, 60, 45),
    (185, 80, 40),
    (235, 130, 50),
    (255, 200, 120),
)

_SPECIAL_RGB: dict[int, _RGB] = {
    NAN: (255, 0, 255),
    POSINF: (255, 255, 255),
    NEGINF: (0, 255, 255),
    MASKED: (0, 0, 0),
}
_SPECIAL_16: dict[int, str] = {
    NAN: "bright_magenta",
    POSINF: "bright_white",
    NEGINF: "bright_cyan",
    MASKED: "black",
}
_SEQUENTIAL_16 = ("blue", "bright_blue", "green", "bright_green", "yellow", "bright_yellow")
_DIVERGING_16 = ("bright_blue", "blue", "bright_black", "red", "bright_red")
_SEQUENTIAL_LEVELS = 20
_HALF_DIVERGING = 10

_SERIES_RGB: dict[str, _RGB] = {
    "ref": (90, 160, 255),
    "cand": (255, 150, 50),
    "both": (175, 175, 175),
}
_SERIES_16 = {"ref": "bright_blue", "cand": "yellow", "both": "white"}


def _lerp(anchors: tuple[_RGB, ...], t: float) -> _RGB:
    """Linear interpolation along evenly spaced anchor colours, t in [0, 1]."""
    pos = min(max(t, 0.0), 1.0) * (len(anchors) - 1)
    i = min(int(pos), len(anchors) - 2)
    f = pos - i
    a, b = anchors[i], anchors[i + 1]
    r, g, bl = (round(a[k] + (b[k] - a[k]) * f) for k in range(3))
    return (r, g, bl)


def _rgb_ramp(kind: RampKind) -> tuple[_RGB, ...]:
    if kind == "sequential":
        n = _SEQUENTIAL_LEVELS
        return tuple(_lerp(_VIRIDIS, i / (n - 1)) for i in range(n))
    k = _HALF_DIVERGING
    negative = [_lerp(_NEGATIVE, i / k) for i in range(k, 0, -1)]
    positive = [_lerp(_POSITIVE, i / k) for i in range(1, k + 1)]
    return (*negative, _CENTRE, *positive)


_RAMPS: dict[RampKind, tuple[_RGB, ...]] = {
    "sequential": _rgb_ramp("sequential"),
    "diverging": _rgb_ramp("diverging"),
}


def level_count(kind: RampKind, depth: ColorDepth) -> int:
    """How many distinct levels a ramp has at a colour depth (glyphs when ``"none"``)."""
    if depth == "none":
        return len(PLAIN_RAMP)
    if depth == "16":
        return len(_SEQUENTIAL_16 if kind == "sequential" else _DIVERGING_16)
    return len(_RAMPS[kind])


def finite_range(values: np.ndarray, valid: np.ndarray | None = None) -> tuple[float, float] | None:
    """Min and max over finite (and valid) values; None when there are none."""
    v = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(v)
    if valid is not None:
        keep &= np.asarray(valid, dtype=bool)
    if not keep.any():
        return None
    if keep.all():
        return float(v.min()), float(v.max())
    chosen = v[keep]
    return float(chosen.min()), float(chosen.max())


@dataclass(frozen=True)
class ColorScale:
    """Maps values to ramp codes over a fixed ``[lo, hi]`` (the tensor's own range by default)."""

    kind: RampKind
    lo: float
    hi: float

    @classmethod
    def for_range(
        cls, lo: float, hi: float, *, ramp: RampKind | Literal["auto"] = "auto"
    ) -> ColorScale:
        """Pick the ramp: diverging when the range straddles zero (``lo < 0 <= hi``)."""
        if ramp == "auto":
            ramp = "diverging" if lo < 0.0 <= hi else "sequential"
        if ramp == "diverging" and max(-lo, hi) <= 0.0:
            ramp = "sequential"
        return cls(kind=ramp, lo=float(lo), hi=float(hi))

    def levels(self, depth: ColorDepth) -> int:
        """Number of ramp levels at this depth."""
        return level_count(self.kind, depth)

    def quantize(
        self, values: np.ndarray, *, depth: ColorDepth, valid: np.ndarray | None = None
    ) -> np.ndarray:
        """Integer codes (int16) for each value: ramp levels ``>= 0`` or the negative specials."""
        v = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(v)
        x = np.where(finite, v, 0.0)
        n = self.levels(depth)
        with np.errstate(all="ignore"):
            if self.kind == "sequential":
                half_span = self.hi / 2 - self.lo / 2
                if half_span > 0 and math.isfinite(half_span):
                    t = (x / 2 - self.lo / 2) / half_span
                    idx = np.clip(np.floor(t * n), 0, n - 1)
                else:
                    idx = np.zeros_like(x)
            else:
                scale = max(-self.lo, self.hi)
                mag = np.abs(x) / scale
                if depth == "none":
                    idx = np.clip(np.ceil(mag * (n - 1)), 1, n - 1)
                    idx = np.where(x == 0.0, 0, idx)
                else:
                    k = n // 2
                    idx = k + np.sign(x) * np.clip(np.ceil(mag * k), 1, k)
        codes = idx.astype(np.int16)
        codes[np.isnan(v)] = NAN
        codes[v == np.inf] = POSINF
        codes[v == -np.inf] = NEGINF
        if valid is not None:
            codes[~np.asarray(valid, dtype=bool)] = MASKED
        return codes


@lru_cache(maxsize=512)
def code_color(code: int, kind: RampKind, depth: ColorDepth) -> Color | None:
    """The colour of one code at a depth; None for "no pixel" and for plain mode."""
    if depth == "none" or code == EMPTY:
        return None
    if depth == "16":
        if code < 0:
            return Color.parse(_SPECIAL_16[code])
        names = _SEQUENTIAL_16 if kind == "sequential" else _DIVERGING_16
        return Color.parse(names[code])
    rgb = _SPECIAL_RGB[code] if code < 0 else _RAMPS[kind][code]
    color = Color.from_rgb(*rgb)
    return color.downgrade(ColorSystem.EIGHT_BIT) if depth == "256" else color


@lru_cache(maxsize=8192)
def pair_style(top: int, bottom: int, kind: RampKind, depth: ColorDepth) -> Style:
    """Style of a ``▀`` cell: foreground is the top pixel, background the bottom one."""
    return Style(color=code_color(top, kind, depth), bgcolor=code_color(bottom, kind, depth))


@lru_cache(maxsize=512)
def swatch_style(code: int, kind: RampKind, depth: ColorDepth) -> Style:
    """Style for a legend swatch: the code's colour as the foreground of a block glyph."""
    return Style(color=code_color(code, kind, depth))


def glyph(code: int) -> str:
    """The plain-mode character for a code (ramp glyph or special marker)."""
    return PLAIN_RAMP[code] if code >= 0 else PLAIN_SPECIALS[code]


@lru_cache(maxsize=64)
def series_color(name: str, depth: ColorDepth) -> Color | None:
    """Histogram series colours: ``ref``, ``cand`` and ``both`` (their overlap)."""
    if depth == "none":
        return None
    if depth == "16":
        return Color.parse(_SERIES_16[name])
    color = Color.from_rgb(*_SERIES_RGB[name])
    return color.downgrade(ColorSystem.EIGHT_BIT) if depth == "256" else color


def crop_line(line: Line, width: int) -> Line:
    """Cut or pad a line to exactly ``width`` cells, as Textual strips expect."""
    cropped = list(Segment.adjust_line_length(line, width))
    return [seg for seg in cropped if seg.text]


def pack_parts(parts: list[Line], width: int, separator: Segment) -> list[Line]:
    """Greedily put legend parts on as few lines as fit ``width``."""
    lines: list[Line] = []
    current: Line = []
    used = 0
    for part in parts:
        size = sum(cell_len(seg.text) for seg in part)
        extra = size + (cell_len(separator.text) if current else 0)
        if current and used + extra > width:
            lines.append(current)
            current, used, extra = [], 0, size
        if current:
            current.append(separator)
        current.extend(part)
        used += extra
    if current:
        lines.append(current)
    return [crop_line(line, width) for line in lines]
