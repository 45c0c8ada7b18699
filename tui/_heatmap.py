"""The "enhanced image" heatmap: a folded tensor drawn with half blocks or plain glyphs.

Every element is coloured by its place in the tensor's own finite range (so 1e-9-scale
tensors still use the whole ramp), NaN/Inf/masked cells get colours outside the ramp,
and batch bands are labelled ``b0``, ``b1``, ... in the left margin so a batch where
only element 0 was filled is obvious at a glance. The same line builder feeds the Rich
renderable (for ``tensortrace show``) and the Textual app (via :func:`heatmap_lines`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.style import Style

from ._colors import (
    EMPTY,
    MASKED,
    NAN,
    NEGINF,
    PLAIN_RAMP,
    PLAIN_SPECIALS,
    POSINF,
    ColorScale,
    Line,
    RampKind,
    crop_line,
    finite_range,
    glyph,
    pack_parts,
    pair_style,
    swatch_style,
)
from ._env import RenderSettings
from ._fold import (
    Reduction,
    band_aligned_factor,
    block_factors,
    block_valid,
    downsample,
    downsample_by,
    fold_array,
    fold_to_2d,
)

__all__ = [
    "Heatmap",
    "Line",
    "Window",
    "downsample",
    "error_map",
    "fold_array",
    "fold_to_2d",
    "heatmap_lines",
    "tolerance_mask",
]

Window = tuple[int, int, int, int]
"""``(row_start, row_stop, col_start, col_stop)`` of the folded array to show."""

_LABEL_STYLE = Style(dim=True)
_TITLE_STYLE = Style(bold=True)
_KEYS = ((NAN, "NaN"), (POSINF, "+Inf"), (NEGINF, "-Inf"), (MASKED, "masked"))


def _fmt(value: float) -> str:
    return f"{value:.3g}"


class Heatmap:
    """Rich renderable of a 2-D (already folded) array; see :meth:`from_tensor` for any rank.

    ``width``/``height`` are the whole renderable's size in cells (title and legend
    included); unset, they follow the console. ``window`` selects a region of the folded
    array, while colours stay relative to the whole array's range (stable when scrolling).
    ``band_offset`` is the batch index of the first band, when ``data`` is a batch slice
    of a tensor too large to read whole, so band labels keep their true indices.
    """

    def __init__(
        self,
        data: np.ndarray,
        *,
        mask: np.ndarray | None = None,
        width: int | None = None,
        height: int | None = None,
        reduction: Reduction = "maxabs",
        settings: RenderSettings | None = None,
        title: str | None = None,
        value_range: tuple[float, float] | None = None,
        band_height: int = 1,
        ramp: RampKind | Literal["auto"] = "auto",
        window: Window | None = None,
        legend: bool = True,
        band_offset: int = 0,
    ) -> None:
        arr = np.asarray(data)
        if arr.ndim != 2:
            raise ValueError(
                f"Heatmap needs a 2-D array (use Heatmap.from_tensor), got {arr.shape}"
            )
        self.data = arr
        self.mask = None if mask is None else np.asarray(mask, dtype=bool).reshape(arr.shape)
        self.width = width
        self.height = height
        self.reduction: Reduction = reduction
        self.settings = settings
        self.title = title
        self.band_height = max(1, int(band_height))
        self.band_offset = max(0, int(band_offset))
        self.window: Window = window or (0, arr.shape[0], 0, arr.shape[1])
        self.legend = legend
        self.fixed_range = value_range is not None
        found = value_range or finite_range(arr, self.mask)
        self.value_range = None if found is None else (float(found[0]), float(found[1]))
        lo, hi = self.value_range or (0.0, 0.0)
        self.scale = ColorScale.for_range(lo, hi, ramp=ramp)

    @classmethod
    def from_tensor(
        cls,
        tensor: np.ndarray,
        *,
        batch_dim: int | None = 0,
        mask: np.ndarray | None = None,
        **options: object,
    ) -> Heatmap:
        """Fold a tensor of any rank (batch outermost) and label its batch bands."""
        arr = np.asarray(tensor)
        _, _, band = fold_to_2d(arr.shape, batch_dim=batch_dim)
        folded_mask = None if mask is None else fold_array(np.asarray(mask), batch_dim=batch_dim)
        return cls(
            fold_array(arr, batch_dim=batch_dim),
            mask=folded_mask,
            band_height=band,
            **options,  # type: ignore[arg-type]
        )

    def _margin(self, width: int) -> int:
        rows = self.data.shape[0]
        bands = -(-rows // self.band_height)
        if bands <= 1 or self.band_height == 1:
            return 0
        margin = len(f"b{self.band_offset + bands - 1}") + 1
        return margin if margin * 3 <= width else 0

    def _legend(self, settings: RenderSettings, rf: int, cf: int, width: int) -> list[Line]:
        r0, r1, c0, c1 = self.window
        rows, cols = self.data.shape
        plain = settings.plain
        parts: list[Line] = [[Segment(f"rows {r0}:{r1} cols {c0}:{c1} of {rows}x{cols}")]]
        unit = "1 cell" if plain else "½ cell"
        how = "max|x|" if self.reduction == "maxabs" else "mean"
        scale = "1 elem" if rf == cf == 1 else f"{rf}x{cf} elems, {how}"
        parts.append([Segment(f"{unit} = {scale}")])
        parts.extend(self._range_parts(settings))
        if plain:
            keys = " ".join(f"{PLAIN_SPECIALS[code]}={name}" for code, name in _KEYS)
            parts.append([Segment(keys)])
        else:
            keys_line: Line = []
            for code, name in _KEYS:
                style = swatch_style(code, self.scale.kind, settings.depth)
                keys_line += [Segment("█", style), Segment(f"{name} ")]
            parts.append(keys_line[:-1] + [Segment(keys_line[-1].text.rstrip())])
        separator = Segment(" | " if plain else " │ ", None if plain else _LABEL_STYLE)
        return pack_parts(parts, width, separator)

    def _range_parts(self, settings: RenderSettings) -> list[Line]:
        """The data range, and the colour (or glyph) key with the values at its ends."""
        if self.value_range is None:
            return [[Segment("no finite values")]]
        lo, hi = self.value_range
        fixed = " (fixed)" if self.fixed_range else ""
        kind = self.scale.kind
        data_range = [Segment(f"range {_fmt(lo)}..{_fmt(hi)}{fixed}")]
        if kind == "diverging":
            bound = max(-lo, hi)
            if settings.plain:
                return [data_range, [Segment(f"|x| 0 '{PLAIN_RAMP}' {_fmt(bound)}")]]
            lo, hi = -bound, bound
        elif settings.plain:
            return [[Segment(f"{_fmt(lo)} '{PLAIN_RAMP}' {_fmt(hi)}{fixed}")]]
        n = self.scale.levels(settings.depth)
        picks = sorted({round(i * (n - 1) / 8) for i in range(9)})
        strip = [Segment("█", swatch_style(code, kind, settings.depth)) for code in picks]
        key = [Segment(f"{_fmt(lo)} "), *strip, Segment(f" {_fmt(hi)}")]
        return [data_range, key] if kind == "diverging" else [[*key, Segment(fixed)]]

    def lines(
        self, width: int, height: int | None = None, *, settings: RenderSettings | None = None
    ) -> list[Line]:
        """All lines (title, map, legend), each exactly ``width`` cells.

        ``height=None`` means no vertical limit: rows are not reduced (for scroll views).
        When space is short the map keeps at least one line, then title, then legend.
        """
        settings = settings or self.settings or RenderSettings()
        out: list[Line] = []
        if self.title:
            out.append(crop_line([Segment(self.title, _TITLE_STYLE)], width))
        r0, r1, c0, c1 = self.window
        view = self.data[r0:r1, c0:c1]
        if view.size == 0:
            out.append(
                crop_line([Segment(f"(empty: {self.data.shape[0]}x{self.data.shape[1]})")], width)
            )
            return out
        margin = self._margin(width)
        _, cf = block_factors(1, view.shape[1], out_rows=1, out_cols=max(1, width - margin))
        legend = self._legend(settings, 1, cf, width) if self.legend else []
        rf = 1
        if height is not None:
            per_line = 1 if settings.plain else 2
            for _ in range(2):
                map_lines = max(1, height - len(out) - len(legend))
                rf, _ = block_factors(view.shape[0], 1, out_rows=map_lines * per_line, out_cols=1)
                if r0 % self.band_height == 0:
                    rf = band_aligned_factor(rf, self.band_height)
                if self.legend:
                    legend = self._legend(settings, rf, cf, width)
        sub_mask = None if self.mask is None else self.mask[r0:r1, c0:c1]
        small = downsample_by(
            view, row_factor=rf, col_factor=cf, reduction=self.reduction, mask=sub_mask
        )
        valid = None if sub_mask is None else block_valid(sub_mask, row_factor=rf, col_factor=cf)
        codes = self.scale.quantize(small, depth=settings.depth, valid=valid)
        body = list(self._map_lines(codes, settings, rf, margin, width))
        if height is not None:
            spare = max(0, height - len(body))
            out = out[:spare]
            legend = legend[: max(0, spare - len(out))]
        return [*out, *body, *legend]

    def _map_lines(
        self, codes: np.ndarray, settings: RenderSettings, rf: int, margin: int, width: int
    ) -> Iterable[Line]:
        per_line = 1 if settings.plain else 2
        r0, r1 = self.window[0], self.window[1]
        for top in range(0, codes.shape[0], per_line):
            first = r0 + top * rf
            last = min(r1, r0 + (top + per_line) * rf)
            line: Line = []
            if margin:
                band = first // self.band_height
                if top and band * self.band_height < first:
                    band += 1
                shown = top == 0 or band * self.band_height < last
                label = f"b{band + self.band_offset}" if shown else ""
                line.append(Segment(label.rjust(margin - 1) + " ", _LABEL_STYLE))
            if settings.plain:
                line.append(Segment("".join(glyph(int(c)) for c in codes[top])))
            else:
                upper = codes[top]
                lower = codes[top + 1] if top + 1 < codes.shape[0] else np.full_like(upper, EMPTY)
                line.extend(self._half_block_runs(upper, lower, settings))
            yield crop_line(line, width)

    def _half_block_runs(
        self, upper: np.ndarray, lower: np.ndarray, settings: RenderSettings
    ) -> Line:
        """Run-length segments of ``▀`` with one cached style per (top, bottom) code pair."""
        segments: Line = []
        pairs = list(zip(upper.tolist(), lower.tolist()))
        start = 0
        for i in range(1, len(pairs) + 1):
            if i == len(pairs) or pairs[i] != pairs[start]:
                top, bottom = pairs[start]
                style = pair_style(top, bottom, self.scale.kind, settings.depth)
                segments.append(Segment("▀" * (i - start), style))
                start = i
        return segments

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        settings = (self.settings or RenderSettings()).limited_to(console.color_system)
        width = min(self.width or options.max_width, options.max_width)
        height = self.height or options.height or options.max_height
        for line in self.lines(width, height, settings=settings):
            yield from line
            yield Segment.line()

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        if self.width:
            return Measurement(
                min(self.width, options.max_width), min(self.width, options.max_width)
            )
        natural = max(self._margin(options.max_width) + self.data.shape[1], 60)
        return Measurement(min(16, options.max_width), min(natural, options.max_width))


def heatmap_lines(
    data: np.ndarray, *, width: int, height: int | None = None, **options: object
) -> list[Line]:
    """Per-line segment lists of a :class:`Heatmap` for a Textual line API (e.g. ``Strip``).

    Options are :class:`Heatmap`'s; pass ``legend=False`` to get only the map rows.
    """
    return Heatmap(data, **options).lines(width, height)  # type: ignore[arg-type]


def error_map(
    reference: np.ndarray, candidate: np.ndarray, *, kind: Literal["abs", "rel"] = "abs"
) -> np.ndarray:
    """``|cand - ref|`` (or divided by ``|ref|``) as float64, for error heatmaps.

    NaN on either side gives NaN; equal infinities give 0; for ``rel`` a zero reference
    gives 0 where the candidate is also 0 and +Inf otherwise.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs candidate {cand.shape}")
    with np.errstate(all="ignore"):
        err = np.abs(cand - ref)
        err = np.where(np.isinf(ref) & (ref == cand), 0.0, err)
        if kind == "rel":
            err = np.where(err == 0.0, 0.0, err / np.abs(ref))
        elif kind != "abs":
            raise ValueError(f"unknown error kind {kind!r}")
    return np.where(np.isnan(ref) | np.isnan(cand), np.nan, err)


def tolerance_mask(
    reference: np.ndarray, candidate: np.ndarray, *, rtol: float, atol: float
) -> np.ndarray:
    """True where the candidate is OUT of tolerance: ``|c - r| > atol + rtol * |r|`` or NaN.

    NaN on either side is always out of tolerance; equal infinities are within it.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs candidate {cand.shape}")
    return ~np.isclose(cand, ref, rtol=rtol, atol=atol, equal_nan=False)
