"""Renderers of the tui package: environment knobs, folding, heatmap and histogram."""

from __future__ import annotations

import io
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from rich.cells import cell_len
from rich.color import Color
from rich.console import Console
from rich.segment import Segment
from rich.style import Style

from tui._colors import (
    EMPTY,
    MASKED,
    NAN,
    NEGINF,
    PLAIN_RAMP,
    POSINF,
    ColorScale,
    code_color,
    crop_line,
    finite_range,
    glyph,
    level_count,
    pack_parts,
    pair_style,
    series_color,
)
from tui._env import RenderSettings, color_depth, color_override, no_color
from tui._fold import band_aligned_factor, block_factors, block_valid, downsample_by
from tui._heatmap import (
    Heatmap,
    downsample,
    error_map,
    fold_array,
    fold_to_2d,
    heatmap_lines,
    tolerance_mask,
)
from tui._histogram import Histogram, HistogramData, histogram_counts, shared_bins, sparkline

ESC = "\x1b"
TRUE = RenderSettings(depth="truecolor")
PLAIN = RenderSettings(depth="none")
FAST = settings(max_examples=60, deadline=None)


def render(renderable: object, color_system: str | None, width: int = 80) -> str:
    """Print through a real Rich console and return what reached the terminal."""
    buf = io.StringIO()
    console = Console(
        file=buf,
        width=width,
        height=40,
        color_system=color_system,  # type: ignore[arg-type]
        force_terminal=color_system is not None,
        legacy_windows=False,
    )
    console.print(renderable)
    return buf.getvalue()


def cells(line: list[Segment]) -> list[tuple[str, Style | None]]:
    """One (character, style) pair per terminal cell of a line."""
    return [(ch, seg.style) for seg in line for ch in seg.text]


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def batch_tensor(*, signed: bool) -> np.ndarray:
    """(4, 8, 16) with batch element 0 random and elements 1..3 all zero."""
    rng = np.random.default_rng(7)
    t = np.zeros((4, 8, 16))
    t[0] = rng.standard_normal((8, 16)) if signed else rng.random((8, 16)) + 0.01
    return t


class TestNoColor:
    def test_non_empty_value_disables_colour(self) -> None:
        """Any non-empty NO_COLOR value means no colour, an empty one does not."""
        assert no_color({"NO_COLOR": "1"}) and no_color({"NO_COLOR": "yes"})
        assert not no_color({"NO_COLOR": ""}) and not no_color({})


class TestColorDepth:
    def test_detection_order(self) -> None:
        """COLORTERM truecolor/24bit beats TERM *256color*, which beats the 16-colour default."""
        assert color_depth({"COLORTERM": "truecolor", "TERM": "xterm"}) == "truecolor"
        assert color_depth({"COLORTERM": "24bit"}) == "truecolor"
        assert color_depth({"TERM": "screen-256color"}) == "256"
        assert color_depth({"TERM": "xterm"}) == "16"
        assert color_depth({}) == "16"


class TestColorOverride:
    def test_values(self) -> None:
        """TENSORTRACE_COLOR accepts the four depths and ignores junk."""
        for value in ("none", "16", "256", "truecolor"):
            assert color_override({"TENSORTRACE_COLOR": value}) == value
        assert color_override({"TENSORTRACE_COLOR": "24bit"}) == "truecolor"
        assert color_override({"TENSORTRACE_COLOR": "rainbow"}) is None


class TestRenderSettings:
    def test_terminal_detection(self) -> None:
        """A terminal gets the detected depth; pipes and NO_COLOR get plain glyphs."""
        env = {"COLORTERM": "truecolor"}
        assert RenderSettings.from_env(env, is_terminal=True).depth == "truecolor"
        assert RenderSettings.from_env(env, is_terminal=False).plain
        assert RenderSettings.from_env({**env, "NO_COLOR": "1"}, is_terminal=True).plain

    def test_override_wins(self) -> None:
        """TENSORTRACE_COLOR beats NO_COLOR, piping and TERM detection."""
        env = {"NO_COLOR": "1", "TENSORTRACE_COLOR": "256"}
        assert RenderSettings.from_env(env, is_terminal=False).depth == "256"
        env = {"COLORTERM": "truecolor", "TENSORTRACE_COLOR": "none"}
        assert RenderSettings.from_env(env, is_terminal=True).plain

    def test_rich_mapping_and_limit(self) -> None:
        """Depths map to Rich colour systems and are capped by what a console supports."""
        assert RenderSettings(depth="16").color_system == "standard"
        assert PLAIN.color_system is None
        assert TRUE.limited_to("256").depth == "256"
        assert TRUE.limited_to(None).plain
        assert RenderSettings(depth="16").limited_to("truecolor").depth == "16"


class TestFoldTo2d:
    @pytest.mark.parametrize(
        ("shape", "expected"),
        [
            ((), (1, 1, 1)),
            ((7,), (1, 7, 1)),
            ((4, 16), (4, 16, 1)),
            ((4, 8, 16), (32, 16, 8)),
            ((2, 3, 5, 7), (30, 7, 15)),
            ((2, 3, 4, 5, 6), (120, 6, 60)),
        ],
    )
    def test_ranks_0_to_5(self, shape: tuple[int, ...], expected: tuple[int, int, int]) -> None:
        """Batch is the outer axis, the last dim the columns, the middle dims the band height."""
        assert fold_to_2d(shape) == expected

    def test_batch_dim_moves_outermost(self) -> None:
        """A non-leading batch_dim still gives one band per batch element."""
        assert fold_to_2d((8, 4, 16), batch_dim=1) == (32, 16, 8)
        assert fold_to_2d((8, 4, 16), batch_dim=None) == (32, 16, 32)
        with pytest.raises(ValueError):
            fold_to_2d((2, 3), batch_dim=2)

    @FAST
    @given(st.lists(st.integers(1, 6), min_size=2, max_size=5), st.data())
    def test_invariants(self, shape: list[int], data: st.DataObject) -> None:
        """rows*cols is the element count and rows is batch size times band height."""
        batch_dim = data.draw(st.integers(-len(shape), len(shape) - 1))
        rows, cols, band = fold_to_2d(shape, batch_dim=batch_dim)
        assert rows * cols == math.prod(shape)
        assert rows == shape[batch_dim] * band


class TestFoldArray:
    def test_bands_are_batch_elements(self) -> None:
        """Band b of the folded array is exactly batch element b, and it is a view."""
        t = np.arange(4 * 8 * 16, dtype=np.float64).reshape(4, 8, 16)
        folded = fold_array(t)
        assert folded.shape == (32, 16)
        assert np.shares_memory(folded, t)
        for b in range(4):
            assert np.array_equal(folded[b * 8 : (b + 1) * 8], t[b])

    def test_other_batch_dim_and_scalars(self) -> None:
        """batch_dim=1 folds each t[:, b] into band b; 0-d and 1-D become one row."""
        t = np.arange(2 * 3 * 4).reshape(2, 3, 4)
        folded = fold_array(t, batch_dim=1)
        assert np.array_equal(folded[2:4], t[:, 1])
        assert fold_array(np.float64(3.0)).shape == (1, 1)
        assert fold_array(np.arange(5)).shape == (1, 5)


class TestBlockFactors:
    def test_ceil_division(self) -> None:
        """Factors are the smallest that fit, and never below 1."""
        assert block_factors(100, 10, out_rows=30, out_cols=80) == (4, 1)


class TestBandAlignedFactor:
    @FAST
    @given(st.integers(1, 300), st.integers(1, 64))
    def test_blocks_do_not_straddle_bands(self, factor: int, band: int) -> None:
        """The aligned factor is >= the asked one, at most double, and tiles bands exactly."""
        f = band_aligned_factor(factor, band)
        assert factor <= f <= 2 * factor
        aligned = band % f == 0 or f % band == 0
        assert aligned or (f == factor and band > factor)


finite_2d = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40),
    elements=st.floats(-1e6, 1e6, allow_nan=False),
)


class TestDownsample:
    @FAST
    @given(finite_2d, st.integers(1, 12), st.integers(1, 12), st.data())
    def test_nan_and_inf_survive(
        self, a: np.ndarray, out_rows: int, out_cols: int, data: st.DataObject
    ) -> None:
        """Every block containing a NaN is NaN; Inf blocks without NaN are Inf; shape fits."""
        a = a.copy()
        n = a.size
        for value in (np.nan, np.inf, -np.inf):
            idx = data.draw(st.lists(st.integers(0, n - 1), max_size=3))
            a.flat[idx] = value
        small, rf, cf = downsample(a, out_rows=out_rows, out_cols=out_cols)
        assert small.shape[0] <= out_rows and small.shape[1] <= out_cols
        for i in range(small.shape[0]):
            for j in range(small.shape[1]):
                block = a[i * rf : (i + 1) * rf, j * cf : (j + 1) * cf]
                if np.isnan(block).any():
                    assert np.isnan(small[i, j])
                elif (block == np.inf).any():
                    assert small[i, j] == np.inf
                elif (block == -np.inf).any():
                    assert small[i, j] == -np.inf
                else:
                    assert np.isfinite(small[i, j])

    @FAST
    @given(finite_2d, st.integers(1, 12), st.integers(1, 12))
    def test_maxabs_preserves_peak(self, a: np.ndarray, out_rows: int, out_cols: int) -> None:
        """max|x| (with its sign) survives maxabs reduction; mean stays within the data range."""
        small, _, _ = downsample(a, out_rows=out_rows, out_cols=out_cols)
        assert np.max(np.abs(small)) == np.max(np.abs(a))
        peak = small.flat[np.argmax(np.abs(small))]
        assert peak in a
        mean, _, _ = downsample(a, out_rows=out_rows, out_cols=out_cols, reduction="mean")
        assert mean.min() >= a.min() - 1e-6 and mean.max() <= a.max() + 1e-6

    def test_masked_elements_ignored(self) -> None:
        """Masked elements (even NaN ones) do not leak into their block's value."""
        a = np.array([[1.0, np.nan, 5.0, 7.0]])
        mask = np.array([[True, False, False, False]])
        small = downsample_by(a, row_factor=1, col_factor=2, mask=mask)
        assert small.tolist() == [[1.0, 0.0]]
        assert block_valid(mask, row_factor=1, col_factor=2).tolist() == [[True, False]]

    def test_nan_beats_inf_and_posinf_beats_neginf(self) -> None:
        """Precedence inside one block: NaN, then +Inf, then -Inf."""
        a = np.array([[np.inf, np.nan, -np.inf, np.inf, -np.inf, 1.0]])
        small = downsample_by(a, row_factor=1, col_factor=2)
        assert np.isnan(small[0, 0]) and small[0, 1] == np.inf and small[0, 2] == -np.inf


class TestBlockValid:
    def test_block_masked_only_if_all_masked(self) -> None:
        """A block counts as masked only when every element in it is masked."""
        mask = np.array([[False, False, True], [False, False, False]])
        assert block_valid(mask, row_factor=2, col_factor=2).tolist() == [[False, True]]


class TestFiniteRange:
    def test_ignores_nonfinite_and_masked(self) -> None:
        """The range comes from finite, valid values only; None when there are none."""
        a = np.array([np.nan, -np.inf, 2.0, 9.0, 3.0])
        assert finite_range(a) == (2.0, 9.0)
        assert finite_range(a, np.array([1, 1, 1, 0, 1], bool)) == (2.0, 3.0)
        assert finite_range(np.array([np.nan])) is None


class TestColorScale:
    def test_tiny_values_use_full_ramp(self) -> None:
        """A 1e-9-scale tensor spans every level because the scale is its own range."""
        values = np.linspace(1e-9, 2e-9, 200)
        lo, hi = finite_range(values)  # type: ignore[misc]
        scale = ColorScale.for_range(lo, hi)
        codes = scale.quantize(values, depth="truecolor")
        assert set(codes.tolist()) == set(range(scale.levels("truecolor")))

    def test_diverging_centre_is_exact_zero(self) -> None:
        """Signed data uses the diverging ramp whose centre level holds exact zeros only."""
        scale = ColorScale.for_range(-2.0, 3.0)
        assert scale.kind == "diverging"
        codes = scale.quantize(np.array([0.0, 1e-12, -1e-12, 3.0, -3.0]), depth="truecolor")
        centre = scale.levels("truecolor") // 2
        assert codes.tolist() == [centre, centre + 1, centre - 1, 2 * centre, 0]

    def test_specials(self) -> None:
        """NaN, +Inf, -Inf and masked get their own negative codes; masked wins."""
        scale = ColorScale.for_range(0.0, 1.0)
        codes = scale.quantize(
            np.array([np.nan, np.inf, -np.inf, np.nan]),
            depth="256",
            valid=np.array([True, True, True, False]),
        )
        assert codes.tolist() == [NAN, POSINF, NEGINF, MASKED]


class TestCodeColor:
    @pytest.mark.parametrize("depth", ["16", "256", "truecolor"])
    def test_specials_not_in_ramps(self, depth: str) -> None:
        """NaN/+Inf/-Inf/masked colours never coincide with a data colour, at every depth."""
        specials = {code_color(c, "sequential", depth) for c in (NAN, POSINF, NEGINF, MASKED)}  # type: ignore[arg-type]
        assert len(specials) == 4
        for kind in ("sequential", "diverging"):
            ramp = {code_color(i, kind, depth) for i in range(level_count(kind, depth))}  # type: ignore[arg-type]
            assert not ramp & specials
        assert code_color(EMPTY, "sequential", "truecolor") is None


class TestPairStyle:
    def test_cached_per_pair(self) -> None:
        """The same (top, bottom) pair returns the very same Style object: no per-cell styles."""
        assert pair_style(3, 5, "sequential", "256") is pair_style(3, 5, "sequential", "256")
        style = pair_style(NAN, MASKED, "sequential", "truecolor")
        assert style.color == Color.from_rgb(255, 0, 255)
        assert style.bgcolor == Color.from_rgb(0, 0, 0)


class TestGlyph:
    def test_ramp_and_specials_distinct(self) -> None:
        """Plain glyphs for NaN/+Inf/-Inf/masked are not ramp glyphs."""
        specials = [glyph(c) for c in (NAN, POSINF, NEGINF, MASKED)]
        assert len(set(specials)) == 4 and not set(specials) & set(PLAIN_RAMP)
        assert glyph(0) == " " and glyph(len(PLAIN_RAMP) - 1) == "@"


class TestLineHelpers:
    def test_crop_and_pack(self) -> None:
        """Lines come out exactly as wide as asked; parts wrap instead of overflowing."""
        assert cell_len("".join(s.text for s in crop_line([Segment("abc")], 10))) == 10
        parts = [[Segment("x" * 30)] for _ in range(4)]
        lines = pack_parts(parts, 70, Segment(" | "))
        assert len(lines) == 2
        assert all(sum(cell_len(s.text) for s in line) == 70 for line in lines)


class TestHeatmap:
    def test_batch_bands_filled_vs_empty(self) -> None:
        """Band 0 (random) shows varied colours; bands 1..3 (zeros) are uniformly the min colour."""
        hm = Heatmap.from_tensor(batch_tensor(signed=False), legend=False)
        lines = hm.lines(80, settings=RenderSettings(depth="256"))
        assert len(lines) == 16  # 32 rows, two per line
        margin = 3
        min_style = pair_style(0, 0, "sequential", "256")
        band0 = {st for line in lines[:4] for _, st in cells(line)[margin : margin + 16]}
        assert len(band0) > 8
        for line in lines[4:]:
            assert {st for _, st in cells(line)[margin : margin + 16]} == {min_style}
        labels = [strip_ansi("".join(s.text for s in line))[:3].strip() for line in lines]
        assert [labels[i] for i in (0, 4, 8, 12)] == ["b0", "b1", "b2", "b3"]

    def test_downsampled_bands_do_not_bleed(self) -> None:
        """With row blocks larger than one line, empty bands still render only the min colour."""
        t = np.zeros((4, 30, 200))
        t[0] = np.random.default_rng(4).random((30, 200)) + 0.5
        lines = Heatmap.from_tensor(t, legend=False).lines(80, 12, settings=TRUE)
        labels = [(i, "".join(s.text for s in line)[:3].strip()) for i, line in enumerate(lines)]
        starts = {label: i for i, label in labels if label}
        assert list(starts) == ["b0", "b1", "b2", "b3"]
        min_style = pair_style(0, 0, "sequential", "truecolor")
        for line in lines[starts["b1"] :]:
            assert {st for _, st in cells(line)[3:]} <= {min_style, None}
        assert min_style not in {st for line in lines[: starts["b1"]] for _, st in cells(line)}

    def test_batch_bands_in_ansi_output(self) -> None:
        """Through a 256-colour console the empty bands use one SGR code, band 0 many."""
        out = render(Heatmap.from_tensor(batch_tensor(signed=True)), "256").splitlines()
        lines_b = [line for line in out if strip_ansi(line).startswith(("b0", "b1", "b2", "b3"))]
        assert len(lines_b) == 4
        sgr = [set(re.findall(r"\x1b\[([0-9;]*)m", line)) - {"0", "2"} for line in lines_b]
        assert len(sgr[0]) > 5
        assert all(len(codes) == 1 for codes in sgr[1:])
        centre = pair_style(10, 10, "diverging", "256")
        assert f"38;5;{centre.color.number}" in next(iter(sgr[1]))  # type: ignore[union-attr]

    def test_nan_style_only_on_nan_pixels(self) -> None:
        """A cell's fg/bg is the NaN colour exactly when its top/bottom element is NaN."""
        rng = np.random.default_rng(1)
        a = rng.standard_normal((10, 24))
        a[rng.random(a.shape) < 0.1] = np.nan
        a[0, 0], a[3, 5] = np.inf, -np.inf
        nan_color = code_color(NAN, "diverging", "truecolor")
        lines = Heatmap(a, legend=False).lines(80, settings=TRUE)
        for i, line in enumerate(lines):
            for j, (_, style) in enumerate(cells(line)[:24]):
                assert style is not None
                assert (style.color == nan_color) == bool(np.isnan(a[2 * i, j]))
                assert (style.bgcolor == nan_color) == bool(np.isnan(a[2 * i + 1, j]))
        ansi = render(Heatmap(a, legend=False), "truecolor")
        runs = re.findall(r"\x1b\[([0-9;]*)m([^\x1b]*)", ansi)
        nan_fg = sum(len(text) for sgr, text in runs if sgr.startswith("38;2;255;0;255;"))
        assert nan_fg == int(np.isnan(a[0::2]).sum())

    def test_masked_cells_are_black(self) -> None:
        """Masked positions are drawn black and no unmasked position is."""
        a = np.linspace(-1, 1, 8 * 12).reshape(8, 12)
        mask = np.ones_like(a, dtype=bool)
        mask[:, 8:] = False
        black = Color.from_rgb(0, 0, 0)
        lines = Heatmap(a, mask=mask, legend=False).lines(40, settings=TRUE)
        for line in lines:
            row = cells(line)[:12]
            assert all(s.color == black and s.bgcolor == black for _, s in row[8:])  # type: ignore[union-attr]
            assert all(s.color != black and s.bgcolor != black for _, s in row[:8])  # type: ignore[union-attr]

    def test_tiny_tensor_uses_full_ramp(self) -> None:
        """1e-9-scale values still reach every colour of the ramp."""
        a = np.linspace(0, 1e-9, 40 * 20).reshape(40, 20)
        lines = Heatmap(a, legend=False).lines(80, settings=TRUE)
        colors = {s.color for line in lines for _, s in cells(line)[:20]}  # type: ignore[union-attr]
        ramp = {code_color(i, "sequential", "truecolor") for i in range(20)}
        assert ramp <= colors

    def test_downsampled_keeps_nan_and_fits(self) -> None:
        """A big tensor fits in 80x24, and a lone NaN still shows after downsampling."""
        a = np.random.default_rng(2).standard_normal((3, 500, 700))
        a[2, 123, 456] = np.nan
        for system in ("truecolor", "256", "standard", None):
            out = render(Heatmap.from_tensor(a, height=24), system)
            lines = out.splitlines()
            assert len(lines) <= 24
            assert all(cell_len(strip_ansi(line)) <= 80 for line in lines)
            if system is None:
                assert "?" in out
            elif system == "truecolor":
                assert "38;2;255;0;255" in out or "48;2;255;0;255" in out

    def test_plain_mode_glyphs(self) -> None:
        """Plain consoles get glyphs: no ESC, one char per element, NaN/Inf/masked markers."""
        a = np.array([[0.0, 1.0, np.nan, np.inf, -np.inf, 0.5]])
        mask = np.array([[True, True, True, True, True, False]])
        out = render(Heatmap(a, mask=mask), None)
        assert ESC not in out
        assert out.splitlines()[0] == " @?+-·".ljust(80)
        assert "?=NaN" in out and "rows 0:1 cols 0:6 of 1x6" in out

    def test_plain_batch_bands(self) -> None:
        """In plain mode the zero bands are blank and band 0 is not."""
        out = render(Heatmap.from_tensor(batch_tensor(signed=True)), None).splitlines()
        assert out[0].startswith("b0 ") and out[8].startswith("b1 ")
        assert out[0][3:19].strip() and not any(line[3:19].strip() for line in out[8:32])

    def test_sixteen_colours_only_use_basic_sgr(self) -> None:
        """A 16-colour console never receives 256-colour or truecolor escapes."""
        out = render(Heatmap.from_tensor(batch_tensor(signed=True)), "standard")
        assert "38;5;" not in out and "38;2;" not in out and "48;5;" not in out

    def test_legend_and_window(self) -> None:
        """The legend names the shown region, the scale and the range; colours stay global."""
        a = np.arange(64 * 64, dtype=np.float64).reshape(64, 64)
        hm = Heatmap(a, window=(8, 16, 0, 32), title="w")
        text = strip_ansi(render(hm, "256"))
        assert text.startswith("w")
        assert "rows 8:16 cols 0:32 of 64x64" in text and "½ cell = 1 elem" in text
        assert "4.1e+03" in text
        text = strip_ansi(render(Heatmap(a, height=10), None))
        assert re.search(r"1 cell = \d+x1 elems, max\|x\|", text)

    def test_measure(self) -> None:
        """Rich can measure it, and a fixed width is honoured."""
        console = Console(width=80)
        hm = Heatmap(np.zeros((4, 4)), width=30)
        assert console.measure(hm).maximum == 30
        assert console.measure(Heatmap(np.zeros((4, 200)))).maximum == 80


class TestHeatmapLines:
    def test_uniform_width_strips(self) -> None:
        """Every line is exactly ``width`` cells, so it can become a Textual Strip."""
        a = np.random.default_rng(3).standard_normal((100, 300))
        for s in (TRUE, PLAIN):
            lines = heatmap_lines(a, width=60, height=None, settings=s, legend=False)
            assert len(lines) == (100 if s.plain else 50)
            assert {sum(cell_len(seg.text) for seg in line) for line in lines} == {60}

    @FAST
    @given(
        hnp.arrays(
            np.float64,
            hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=30),
            elements=st.floats(allow_nan=True, allow_infinity=True),
        ),
        st.integers(12, 100),
        st.integers(3, 30),
        st.sampled_from([TRUE, RenderSettings(depth="256"), RenderSettings(depth="16"), PLAIN]),
    )
    def test_any_tensor_fits(
        self, t: np.ndarray, width: int, height: int, s: RenderSettings
    ) -> None:
        """Any tensor, extreme values included, renders to at most height lines of width cells."""
        lines = Heatmap.from_tensor(t).lines(width, height, settings=s)
        assert 1 <= len(lines) <= height
        assert {sum(cell_len(seg.text) for seg in line) for line in lines} == {width}
        if s.plain:
            assert all(seg.style is None or not seg.style.color for ln in lines for seg in ln)


class TestErrorMap:
    def test_abs_and_rel(self) -> None:
        """abs/rel errors, NaN propagation, equal infinities as zero, zero reference as Inf."""
        ref = np.array([1.0, 2.0, np.nan, np.inf, 0.0, 0.0])
        cand = np.array([1.5, 1.0, 1.0, np.inf, 0.0, 1.0])
        ab = error_map(ref, cand)
        assert ab[:2].tolist() == [0.5, 1.0] and np.isnan(ab[2]) and ab[3] == 0.0
        rel = error_map(ref, cand, kind="rel")
        assert rel[:2].tolist() == [0.5, 0.5] and rel[4] == 0.0 and rel[5] == np.inf
        with pytest.raises(ValueError):
            error_map(ref, cand[:3])


class TestToleranceMask:
    def test_out_of_tolerance(self) -> None:
        """True marks failures: beyond atol + rtol*|ref|, or NaN on either side."""
        ref = np.array([1.0, 1.0, np.nan, 1.0, np.inf])
        cand = np.array([1.0005, 1.1, np.nan, np.nan, np.inf])
        assert tolerance_mask(ref, cand, rtol=1e-3, atol=0.0).tolist() == [
            False,
            True,
            True,
            True,
            False,
        ]


class TestHistogramCounts:
    @FAST
    @given(
        hnp.arrays(np.float64, st.integers(0, 200), elements=st.floats(allow_infinity=True)),
        st.integers(1, 40),
    )
    def test_counts_sum_to_finite(self, values: np.ndarray, bins: int) -> None:
        """Bins hold every finite value; NaN/+Inf/-Inf are counted apart; total is everything."""
        h = histogram_counts(values, bins=bins)
        finite = values[np.isfinite(values)]
        assert h.finite == finite.size and h.counts.size == bins
        assert h.nan == np.isnan(values).sum()
        assert h.posinf == (values == np.inf).sum() and h.neginf == (values == -np.inf).sum()
        assert h.total == values.size and h.outside == 0

    def test_explicit_range_counts_outside(self) -> None:
        """Values outside an explicit range are reported, not silently lost."""
        h = histogram_counts(np.array([-5.0, 0.1, 0.2, 7.0]), bins=4, value_range=(0.0, 1.0))
        assert h.finite == 2 and h.outside == 2


class TestHistogramData:
    def test_from_recorded(self) -> None:
        """Recorded counts get evenly spaced edges and a total including specials."""
        h = HistogramData.from_recorded(np.array([1, 2, 3]), -1.0, 2.0, nan=4, posinf=1)
        assert h.edges.tolist() == [-1.0, 0.0, 1.0, 2.0] and h.total == 11
        with pytest.raises(ValueError):
            h.counts[0] = 5

    def test_from_values_with_mask(self) -> None:
        """Masked-out values are not counted at all."""
        h = HistogramData.from_values(np.array([1.0, np.nan, 3.0]), mask=np.array([1, 0, 1], bool))
        assert h.nan == 0 and h.total == 2


class TestSharedBins:
    def test_same_edges_cover_both(self) -> None:
        """Both histograms share edges spanning the union of their finite ranges."""
        ha, hb = shared_bins(np.array([0.0, 1.0, np.nan]), np.array([-3.0, 2.0]), bins=10)
        assert np.array_equal(ha.edges, hb.edges)
        assert ha.lo == -3.0 and ha.hi == 2.0 and ha.nan == 1
        assert ha.finite == 2 and hb.finite == 2


class TestHistogram:
    def data(self) -> tuple[HistogramData, HistogramData]:
        rng = np.random.default_rng(5)
        a = rng.standard_normal(5000)
        a[:3] = np.nan
        return shared_bins(a, rng.standard_normal(5000) + 0.5, bins=64)

    def test_plain_is_readable_ascii(self) -> None:
        """Plain mode: '#' bars, axis labels lo/0/hi, NaN count, no escapes, fits 80."""
        ha, _ = self.data()
        out = render(Histogram(ha, height=6), None)
        lines = out.splitlines()
        assert ESC not in out and "#" in out and "NaN=3" in out
        assert all(len(line) <= 80 for line in lines)
        axis = lines[6].split()
        assert axis[0] == f"{ha.lo:.3g}" and "0" in axis and axis[-1] == f"{ha.hi:.3g}"

    def test_bar_heights_follow_counts(self) -> None:
        """The tallest column is the fullest bin; empty bins are blank; tiny ones still show."""
        h = HistogramData.from_recorded(np.array([0, 1, 1000, 0]), 0.0, 4.0)
        lines = Histogram(h, height=4, width=4).lines(4, settings=TRUE)
        columns = ["".join(s.text for s in line) for line in lines[:4]]
        assert [col[2] for col in columns] == ["█"] * 4
        assert [col[0] for col in columns] == [" "] * 4
        assert columns[3][1] == "▁"
        log = Histogram(h, height=4, width=4, log=True).lines(4, settings=TRUE)
        assert "".join(s.text for s in log[3])[1] > "▁"

    def test_overlay_two_colours_with_legend(self) -> None:
        """Overlay uses the ref, cand and both colours and names them in the legend."""
        ha, hb = self.data()
        out = render(Histogram(ha, hb, labels=("ref", "cand")), "truecolor")
        for name in ("ref", "cand", "both"):
            color = series_color(name, "truecolor")
            assert f"{color.triplet.red};{color.triplet.green};{color.triplet.blue}" in out  # type: ignore[union-attr]
        text = strip_ansi(out)
        assert "ref" in text and "cand" in text and "both" in text
        assert all(cell_len(line) <= 80 for line in text.splitlines())

    def test_identical_overlay_is_single_colour(self) -> None:
        """Two identical histograms draw only in the 'both' colour."""
        ha, _ = self.data()
        lines = Histogram(ha, ha, height=5).lines(80, settings=TRUE)
        colors = {s.style.color for line in lines[:5] for s in line if s.text.strip() and s.style}
        assert colors == {series_color("both", "truecolor")}

    def test_side_by_side_and_bad_bins(self) -> None:
        """Side-by-side gives two columns per bin; different bins are refused."""
        ha, hb = self.data()
        out = render(Histogram(ha, hb, mode="side_by_side", height=4), None)
        assert "r" in out.splitlines()[3] and "c" in out.splitlines()[3]
        other = HistogramData.from_values(np.arange(10.0), bins=64)
        with pytest.raises(ValueError):
            Histogram(ha, other)


class TestSparkline:
    def test_one_line(self) -> None:
        """Sparkline fits its width, leaves empty bins blank and never hides non-empty ones."""
        h = HistogramData.from_recorded(np.array([0, 1, 50, 100, 0, 3]), 0.0, 1.0)
        text = sparkline(h, settings=TRUE)
        assert text.plain == " ▁▄█ ▁"
        assert sparkline(h, width=3, settings=TRUE).cell_len <= 3
        plain = sparkline(h, settings=PLAIN).plain
        assert plain[0] == " " and plain[4] == " " and plain[3] == "@" and plain[1] != " "
        assert ESC not in render(sparkline(h, settings=PLAIN), None)
