"""Value histograms drawn with eighth blocks, alone or reference-vs-candidate.

Counts are over finite values only; NaN, +Inf and -Inf are counted separately and shown
in the footer, because a histogram cannot place them and they are usually the story.
Two histograms are only comparable on the same bins, hence :func:`shared_bins`. Any
non-empty bin is drawn at least one eighth high so rare values never vanish.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

from ._colors import (
    NAN,
    NEGINF,
    PLAIN_RAMP,
    POSINF,
    Line,
    code_color,
    crop_line,
    pack_parts,
    series_color,
)
from ._env import ColorDepth, RenderSettings

__all__ = [
    "Histogram",
    "HistogramData",
    "histogram_counts",
    "shared_bins",
    "sparkline",
]

_EIGHTHS = " ▁▂▃▄▅▆▇█"
_PLAIN_PAIR = {"ref": "r", "cand": "c", "both": "#"}
_DIM = Style(dim=True)
_TITLE = Style(bold=True)


@dataclass(frozen=True, eq=False)
class HistogramData:
    """Bin counts of finite values plus the counts a histogram cannot place.

    ``total`` counts every value looked at, so ``total - counts.sum() - nan - posinf -
    neginf`` is the number of finite values outside the bins (see :attr:`outside`).
    """

    counts: np.ndarray
    edges: np.ndarray
    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    total: int = 0

    def __post_init__(self) -> None:
        counts = np.asarray(self.counts, dtype=np.int64)
        edges = np.asarray(self.edges, dtype=np.float64)
        if counts.ndim != 1 or edges.shape != (counts.size + 1,):
            raise ValueError("need 1-D counts and len(counts) + 1 edges")
        counts.setflags(write=False)
        edges.setflags(write=False)
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "edges", edges)

    @property
    def lo(self) -> float:
        """Left edge of the first bin."""
        return float(self.edges[0])

    @property
    def hi(self) -> float:
        """Right edge of the last bin."""
        return float(self.edges[-1])

    @property
    def finite(self) -> int:
        """Number of finite values inside the bins."""
        return int(self.counts.sum())

    @property
    def outside(self) -> int:
        """Finite values that fell outside ``[lo, hi]`` (only with an explicit range)."""
        return max(0, self.total - self.finite - self.nan - self.posinf - self.neginf)

    @classmethod
    def from_values(
        cls,
        values: np.ndarray,
        *,
        bins: int = 64,
        value_range: tuple[float, float] | None = None,
        mask: np.ndarray | None = None,
    ) -> HistogramData:
        """Histogram of an array (any shape); ``mask`` True marks the values to count."""
        return histogram_counts(values, bins=bins, value_range=value_range, mask=mask)

    @classmethod
    def from_recorded(
        cls,
        counts: np.ndarray,
        lo: float,
        hi: float,
        nan: int = 0,
        posinf: int = 0,
        neginf: int = 0,
    ) -> HistogramData:
        """A histogram already recorded in a trace as evenly spaced bins over ``[lo, hi]``."""
        c = np.asarray(counts, dtype=np.int64)
        edges = np.linspace(float(lo), float(hi), c.size + 1)
        total = int(c.sum()) + int(nan) + int(posinf) + int(neginf)
        return cls(c, edges, int(nan), int(posinf), int(neginf), total)


def _safe_range(lo: float, hi: float, bins: int) -> tuple[float, float]:
    """A range numpy can split into ``bins`` finite bins: degenerate or sub-ulp ranges widen.

    A single value widens by 0.5 each side like numpy; near the float limits the range
    widens enough to hold ``bins`` distinct edges and is clamped to finite values.
    """
    top = float(np.finfo(np.float64).max)
    lo, hi = max(lo, -top), min(hi, top)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    need = 4.0 * bins * math.ulp(max(abs(lo), abs(hi)))
    if hi - lo < need:
        mid = lo / 2 + hi / 2
        lo, hi = mid - need / 2, mid + need / 2
    return max(lo, -top), min(hi, top)


def histogram_counts(
    values: np.ndarray,
    *,
    bins: int = 64,
    value_range: tuple[float, float] | None = None,
    mask: np.ndarray | None = None,
) -> HistogramData:
    """Bin the finite values (over their own min..max unless ``value_range``) and count the rest."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if mask is not None:
        v = v[np.asarray(mask, dtype=bool).ravel()]
    finite_mask = np.isfinite(v)
    finite = v if finite_mask.all() else v[finite_mask]
    if value_range is None:
        value_range = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    lo, hi = _safe_range(float(value_range[0]), float(value_range[1]), bins)
    scale = 1.0 if max(abs(lo), abs(hi)) < 2.0**1000 else 2.0**-64
    counts, edges = np.histogram(finite * scale, bins=bins, range=(lo * scale, hi * scale))
    edges = edges / scale
    return HistogramData(
        counts=counts,
        edges=edges,
        nan=int(np.isnan(v).sum()),
        posinf=int((v == np.inf).sum()),
        neginf=int((v == -np.inf).sum()),
        total=int(v.size),
    )


def shared_bins(
    a: np.ndarray, b: np.ndarray, *, bins: int = 64
) -> tuple[HistogramData, HistogramData]:
    """Histograms of two arrays over the union of their finite ranges, so bars line up."""
    ranges = []
    for arr in (a, b):
        v = np.asarray(arr, dtype=np.float64)
        f = v[np.isfinite(v)]
        if f.size:
            ranges.append((float(f.min()), float(f.max())))
    span = (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else (0.0, 1.0)
    span = _safe_range(*span, bins)
    return (
        histogram_counts(a, bins=bins, value_range=span),
        histogram_counts(b, bins=bins, value_range=span),
    )


def _merge(counts: np.ndarray, edges: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum groups of ``factor`` adjacent bins (the last group may be short)."""
    if factor <= 1:
        return counts, edges
    n = counts.size
    padded = np.zeros(-(-n // factor) * factor, dtype=np.int64)
    padded[:n] = counts
    merged = padded.reshape(-1, factor).sum(axis=1)
    new_edges = np.append(edges[:-1:factor], edges[-1])
    return merged, new_edges


def _heights(counts: np.ndarray, peak: int, steps: int, *, log: bool) -> np.ndarray:
    """Bar heights in ``steps`` units; a non-empty bin is never drawn as zero."""
    if peak <= 0:
        return np.zeros(counts.size, dtype=np.int64)
    c = counts.astype(np.float64)
    scaled = np.log1p(c) / math.log1p(peak) if log else c / peak
    h = np.rint(scaled * steps).astype(np.int64)
    return np.where(counts > 0, np.maximum(h, 1), 0)


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _fill(height: int, row: int, plain: bool) -> int:
    """How much of cell ``row`` (0 = baseline) a bar covers: 0..8 eighths, or 0..1 in plain."""
    unit = 1 if plain else 8
    return min(max(height - row * unit, 0), unit)


@lru_cache(maxsize=64)
def _series_style(name: str, depth: ColorDepth, background: str | None = None) -> Style:
    """Cached style of one series (optionally over another's colour as background)."""
    bg = None if background is None else series_color(background, depth)
    return Style(color=series_color(name, depth), bgcolor=bg)


def _glyph(fill: int, plain: bool) -> str:
    if plain:
        return "#" if fill else " "
    return _EIGHTHS[fill]


class Histogram:
    """Rich renderable: vertical eighth-block bars, optionally reference vs candidate.

    ``mode="overlay"`` draws both series in the same columns — the part under both bars
    in the ``both`` colour, the excess in the taller series' colour — so identical
    histograms look single-coloured. ``mode="side_by_side"`` gives each bin two columns.
    Plain mode uses ``#`` bars (``r``/``c`` for the excess of reference/candidate).
    """

    def __init__(
        self,
        data: HistogramData,
        other: HistogramData | None = None,
        *,
        height: int = 8,
        width: int | None = None,
        log: bool = False,
        mode: Literal["overlay", "side_by_side"] = "overlay",
        labels: tuple[str, str] = ("ref", "cand"),
        settings: RenderSettings | None = None,
        title: str | None = None,
    ) -> None:
        if mode not in ("overlay", "side_by_side"):
            raise ValueError(f"unknown histogram mode {mode!r}")
        if other is not None and not np.array_equal(data.edges, other.edges):
            raise ValueError("histograms have different bins; build them with shared_bins()")
        self.data = data
        self.other = other
        self.height = max(1, height)
        self.width = width
        self.log = log
        self.mode = mode
        self.labels = labels
        self.settings = settings
        self.title = title

    def _columns(self, width: int) -> tuple[list[np.ndarray], np.ndarray, int]:
        """Per-series counts merged to fit ``width``, their edges, and columns per bin."""
        series = [self.data.counts] + ([self.other.counts] if self.other is not None else [])
        per_bin = 2 if self.other is not None and self.mode == "side_by_side" else 1
        n = self.data.counts.size
        factor = max(1, -(-n * per_bin // max(1, width)))
        merged = [_merge(c, self.data.edges, factor)[0] for c in series]
        edges = _merge(self.data.counts, self.data.edges, factor)[1]
        stretch = max(1, width // max(1, merged[0].size * per_bin))
        return merged, edges, stretch

    def lines(self, width: int, *, settings: RenderSettings | None = None) -> list[Line]:
        """All lines (title, bars, axis, footer), each exactly ``width`` cells."""
        settings = settings or self.settings or RenderSettings()
        merged, edges, stretch = self._columns(width)
        peak = max(int(c.max()) if c.size else 0 for c in merged)
        steps = self.height if settings.plain else self.height * 8
        heights = [_heights(c, peak, steps, log=self.log) for c in merged]
        out: list[Line] = []
        if self.title:
            out.append(crop_line([Segment(self.title, _TITLE)], width))
        if self.other is not None and self.mode == "side_by_side":
            blocks = np.stack([np.repeat(h[:, None], stretch, axis=1) for h in heights], axis=1)
            owners = np.broadcast_to(np.array([0, 1])[None, :, None], blocks.shape)
            columns = blocks.reshape(-1)
            bars = self._side_by_side(columns, owners.reshape(-1), settings)
        elif self.other is not None:
            columns = np.repeat(heights[0], stretch)
            bars = self._overlay(columns, np.repeat(heights[1], stretch), settings)
        else:
            columns = np.repeat(heights[0], stretch)
            bars = self._single(columns, settings)
        out.extend(crop_line(line, width) for line in bars)
        out.append(crop_line(self._axis(edges, columns.size), width))
        out.extend(self._footer(settings, peak, width))
        return out

    def _rows(self) -> range:
        """Bar rows from the top line (highest) down to the baseline."""
        return range(self.height - 1, -1, -1)

    def _single(self, heights: np.ndarray, settings: RenderSettings) -> list[Line]:
        plain = settings.plain
        style = _series_style("ref", settings.depth)
        return [
            [Segment("".join(_glyph(_fill(int(h), row, plain), plain) for h in heights), style)]
            for row in self._rows()
        ]

    def _side_by_side(
        self, heights: np.ndarray, owners: np.ndarray, settings: RenderSettings
    ) -> list[Line]:
        plain = settings.plain
        names = ("ref", "cand")
        lines: list[Line] = []
        for row in self._rows():
            line: Line = []
            for h, owner in zip(heights.tolist(), owners.tolist()):
                fill = _fill(h, row, plain)
                name = names[owner]
                if not fill:
                    line.append(Segment(" "))
                elif plain:
                    line.append(Segment(_PLAIN_PAIR[name]))
                else:
                    line.append(Segment(_EIGHTHS[fill], _series_style(name, settings.depth)))
            lines.append(list(Segment.simplify(line)))
        return lines

    def _overlay(self, a: np.ndarray, b: np.ndarray, settings: RenderSettings) -> list[Line]:
        plain = settings.plain
        depth = settings.depth
        full = 1 if plain else 8
        lines: list[Line] = []
        for row in self._rows():
            line: Line = []
            for ha, hb in zip(a.tolist(), b.tolist()):
                fa, fb = _fill(ha, row, plain), _fill(hb, row, plain)
                low, high = min(fa, fb), max(fa, fb)
                taller = "both" if fa == fb else ("ref" if fa > fb else "cand")
                if plain:
                    text = " " if high == 0 else _PLAIN_PAIR["both" if low else taller]
                    line.append(Segment(text))
                    continue
                if high == 0:
                    line.append(Segment(" "))
                elif low == 0:
                    line.append(Segment(_EIGHTHS[high], _series_style(taller, depth)))
                elif high == full:
                    line.append(Segment(_EIGHTHS[low], _series_style("both", depth, taller)))
                else:
                    name = "both" if 2 * low >= high else taller
                    line.append(Segment(_EIGHTHS[high], _series_style(name, depth)))
            lines.append(list(Segment.simplify(line)))
        return lines

    def _axis(self, edges: np.ndarray, bar_width: int) -> Line:
        """``lo``, ``0`` (when inside) and ``hi`` under the bars, without overlaps."""
        lo, hi = float(edges[0]), float(edges[-1])
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return [Segment("no finite values", _DIM)]
        axis = [" "] * max(bar_width, 1)
        left, right = _fmt(lo), _fmt(hi)
        axis[: len(left)] = left
        start = max(len(left) + 1, len(axis) - len(right))
        if start + len(right) <= len(axis):
            axis[start:] = right
        if lo < 0.0 < hi:
            bins = edges.size - 1
            index = int(np.searchsorted(edges, 0.0, side="right")) - 1
            col = round(index * len(axis) / bins)
            if len(left) + 1 <= col < start - 1:
                axis[col] = "0"
        return [Segment("".join(axis), _DIM)]

    def _specials(self, data: HistogramData, settings: RenderSettings) -> Line:
        parts: Line = [Segment(f"n={data.total}")]
        for code, name, count in (
            (NAN, "NaN", data.nan),
            (POSINF, "+Inf", data.posinf),
            (NEGINF, "-Inf", data.neginf),
        ):
            color = code_color(code, "sequential", settings.depth) if count else None
            parts.append(Segment(f" {name}={count}", Style(color=color, bold=bool(count))))
        if data.outside:
            parts.append(Segment(f" outside={data.outside}"))
        return parts

    def _footer(self, settings: RenderSettings, peak: int, width: int) -> list[Line]:
        scale = f"max bin {peak}" + (" (log)" if self.log else "")
        parts: list[Line] = [[Segment(scale, _DIM)]]
        if self.other is None:
            parts.append(self._specials(self.data, settings))
        else:
            for name, label, data in (
                ("ref", self.labels[0], self.data),
                ("cand", self.labels[1], self.other),
            ):
                parts.append([*self._key(name, label, settings), *self._specials(data, settings)])
            if self.mode == "overlay":
                parts.append(self._key("both", "both", settings))
        separator = Segment(" | " if settings.plain else " │ ", None if settings.plain else _DIM)
        return pack_parts(parts, width, separator)

    def _key(self, name: str, label: str, settings: RenderSettings) -> Line:
        if settings.plain:
            mark = _PLAIN_PAIR[name] if self.other is not None else "#"
            return [Segment(f"{mark}={label} ")]
        return [Segment("█", _series_style(name, settings.depth)), Segment(f"{label} ")]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        settings = (self.settings or RenderSettings()).limited_to(console.color_system)
        width = min(self.width or options.max_width, options.max_width)
        for line in self.lines(width, settings=settings):
            yield from line
            yield Segment.line()

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        size = min(self.width or options.max_width, options.max_width)
        return Measurement(min(16, size), size)


def sparkline(
    data: HistogramData,
    *,
    width: int | None = None,
    log: bool = False,
    settings: RenderSettings | None = None,
) -> Text:
    """One-line histogram: eighth blocks, or the :data:`PLAIN_RAMP` glyphs in plain mode."""
    settings = settings or RenderSettings()
    counts = data.counts
    if width is not None and counts.size > width:
        counts, _ = _merge(counts, data.edges, -(-counts.size // max(1, width)))
    peak = int(counts.max()) if counts.size else 0
    if settings.plain:
        levels = _heights(counts, peak, len(PLAIN_RAMP) - 1, log=log)
        return Text("".join(PLAIN_RAMP[int(h)] for h in levels))
    levels = _heights(counts, peak, 8, log=log)
    style = _series_style("ref", settings.depth)
    return Text("".join(_EIGHTHS[int(h)] for h in levels), style=style)
