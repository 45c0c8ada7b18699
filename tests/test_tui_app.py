"""The Textual app, driven by Textual's Pilot at 80x24, on a synthetic trace (no torch).

``demo_trace`` writes a small deterministic trace and results file: an attention softmax
whose candidate backward only fills batch element 0, a head whose candidate forward is
off, a projection whose candidate raised, and a leaf that produces NaN.
"""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _synthetic_trace import FakeCall, batch0_only, write_trace
from textual.pilot import Pilot

from tracefmt import TraceReader, write_results
from tui._app import TraceApp
from tui._env import RenderSettings
from tui._keys import KEYS
from tui._loader import THREAD_NAME
from tui._screens import AlertsScreen, HelpScreen, SearchScreen
from tui._view import Sources, ViewRequest, render_view

Snap = Callable[..., bool]
TRUECOLOR = RenderSettings("truecolor")
SIZE = (80, 24)


def _det(seed: int, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def demo_trace(tmp: Path) -> tuple[Path, Path]:
    """The synthetic trace and its results file (same bytes every run)."""
    tokens = np.arange(24, dtype=np.int64).reshape(4, 6) % 7
    pad = np.zeros((4, 6), dtype=bool)
    pad[2:, 4:] = True
    x, q = _det(1, 4, 6, 8), _det(2, 4, 6, 8)
    scores = _det(3, 4, 2, 6, 6)
    scores = np.where(pad[:, None, None, :], -np.inf, scores).astype(np.float32)
    e = np.exp(scores - scores.max(-1, keepdims=True))
    probs = (e / e.sum(-1, keepdims=True)).astype(np.float32)
    y = _det(4, 4, 6, 8)
    logits = _det(5, 4, 6, 8, scale=3.0)
    with np.errstate(invalid="ignore"):
        logged = np.log(logits).astype(np.float32)
    g = {k: _det(10 + k, 4, 6, 8, scale=1e-3) for k in range(8)}
    gs = _det(20, 4, 2, 6, 6, scale=1e-3)
    calls = [
        FakeCall("", "demo.Model", {"args.0": tokens}, logged, {"outputs": g[0]}),
        FakeCall(
            "embed",
            "torch.nn.modules.sparse.Embedding",
            {"args.0": tokens},
            x,
            {"outputs": g[1]},
            parent=0,
        ),
        FakeCall(
            "attn",
            "demo.Attention",
            {"args.0": x, "kwargs.key_padding_mask": pad},
            y,
            {"outputs": g[2], "args.0": g[3]},
            parent=0,
        ),
        FakeCall(
            "attn.proj",
            "torch.nn.modules.linear.Linear",
            {"args.0": x},
            q,
            {"outputs": g[4], "args.0": g[5]},
            parent=2,
        ),
        FakeCall(
            "attn.softmax",
            "torch.nn.modules.activation.Softmax",
            {"args.0": scores},
            probs,
            {"outputs": _det(21, 4, 2, 6, 6, scale=1e-3), "args.0": gs},
            parent=2,
        ),
        FakeCall(
            "head",
            "torch.nn.modules.linear.Linear",
            {"args.0": y},
            logits,
            {"outputs": g[6], "args.0": g[7]},
            parent=0,
        ),
        FakeCall(
            "act",
            "demo.Log",
            {"args.0": logits},
            logged,
            {"outputs": g[0], "args.0": g[6]},
            parent=0,
        ),
    ]
    trace = write_trace(
        tmp / "demo.h5",
        calls,
        params={"head": ("weight", "bias")},
        param_grads={"head.weight": _det(30, 8, 8), "head.bias": np.zeros(8, np.float32)},
    )
    bad_logits = logits.copy()
    bad_logits[1, :, 2] += 0.5
    entry = {"type": "", "step": 0, "index": 0, "error": None, "notes": []}
    report = {
        "trace": str(trace),
        "summary": {"calls": 5, "passed": 1, "failed": 2, "errors": 1, "skipped": 0},
        "first_divergence": {"forward": {"call": 3}, "backward": {"call": 4}},
        "calls": [
            {
                **entry,
                "call": 3,
                "module": "attn.proj",
                "phase": "forward",
                "status": "error",
                "error": "RuntimeError: candidate blew up",
                "tensors": [],
            },
            {
                **entry,
                "call": 4,
                "module": "attn.softmax",
                "phase": "forward",
                "status": "pass",
                "tensors": [{"name": "outputs", "passed": True, "max_abs_err": 0.0}],
            },
            {
                **entry,
                "call": 4,
                "module": "attn.softmax",
                "phase": "backward",
                "status": "fail",
                "tensors": [
                    {
                        "name": "args.0",
                        "passed": False,
                        "max_abs_err": 2.5e-3,
                        "rtol_used": 1.3e-6,
                        "atol_used": 1e-8,
                        "bad_batch_indices": [1, 2, 3],
                        "batch_note": "only batch element 0 matches; elements 1-3 diverge",
                    }
                ],
            },
            {
                **entry,
                "call": 5,
                "module": "head",
                "phase": "forward",
                "status": "fail",
                "tensors": [
                    {
                        "name": "outputs",
                        "passed": False,
                        "max_abs_err": 0.5,
                        "rtol_used": 1e-5,
                        "atol_used": 1e-6,
                    }
                ],
            },
            {
                **entry,
                "call": 5,
                "module": "head",
                "phase": "backward",
                "status": "pass",
                "tensors": [{"name": "args.0", "passed": True, "max_abs_err": 0.0}],
            },
        ],
    }
    results = tmp / "demo-results.h5"
    write_results(
        results,
        report,
        [
            (4, "forward", "outputs", probs),
            (4, "backward", "args.0", batch0_only(gs)),
            (5, "forward", "outputs", bad_logits),
            (5, "backward", "args.0", g[7]),
        ],
    )
    return trace, results


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return demo_trace(tmp_path_factory.mktemp("demo"))


def sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async Pilot test in its own event loop (no async pytest plugin needed)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


async def settle(pilot: Pilot, timeout: float = 10.0) -> None:
    """Wait until every reader-thread job has been delivered and painted."""
    app = pilot.app
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        await pilot.pause()
        if not app.busy:
            await pilot.pause()
            if not app.busy:
                return
        await asyncio.sleep(0.005)
    raise TimeoutError(f"app still busy ({app.inflight} jobs)")


async def press(pilot: Pilot, *keys: str) -> None:
    await pilot.press(*keys)
    await settle(pilot)


def heat_text(app: TraceApp) -> str:
    return app.query_one("#heat").text


class TestOpen:
    @sync
    async def test_opens_on_first_call(self, demo: tuple[Path, Path]) -> None:
        """The app indexes the trace in the background and shows the first call's output."""
        app = TraceApp(demo[0], settings=TRUECOLOR)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert app.index is not None and len(app.index.rows) == 7
            assert (app.call, app.tensor, app.grad) == (0, "outputs", False)
            assert "outputs · reference" in heat_text(app)

    @sync
    async def test_unreadable_trace_exits_with_error(self, tmp_path: Path) -> None:
        """A file that is not a trace ends the app with status 2 and keeps the error."""
        bad = tmp_path / "bad.h5"
        bad.write_bytes(b"not hdf5")
        app = TraceApp(bad, settings=TRUECOLOR)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause(0.3)
        assert app.return_code == 2 and "not an HDF5 file" in str(app.open_error)


class TestDivergenceKeys:
    @sync
    async def test_b_jumps_to_first_backward_divergence(self, demo: tuple[Path, Path]) -> None:
        """b selects the failing softmax backward, its gradient, the candidate, backward order."""
        app = TraceApp(*demo, settings=TRUECOLOR)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await press(pilot, "b")
            assert (app.call, app.grad, app.tensor, app.order) == (4, True, "args.0", "backward")
            assert "∇ args.0 · candidate" in heat_text(app)

    @sync
    async def test_f_jumps_to_first_forward_divergence(self, demo: tuple[Path, Path]) -> None:
        """f selects the first forward divergence (the candidate that raised) in data mode."""
        app = TraceApp(*demo, settings=TRUECOLOR)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await press(pilot, "b", "f")
            assert (app.call, app.grad, app.order) == (3, False, "forward")

    @sync
    async def test_n_and_shift_n_step_through_divergences(self, demo: tuple[Path, Path]) -> None:
        """n walks forward divergences then backward ones, wrapping; N walks back."""
        app = TraceApp(*demo, settings=TRUECOLOR)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            seen = []
            for _ in range(4):
                await press(pilot, "n")
                seen.append((app.call, app.phase))
            assert seen == [(3, "forward"), (5, "forward"), (4, "backward"), (3, "forward")]
            await press(pilot, "N")
            assert (app.call, app.phase) == (4, "backward")

    @sync
    async def test_without_results_divergence_keys_only_warn(self, demo: tuple[Path, Path]) -> None:
        """With no results file, f/b/n leave the selection where it was."""
        app = TraceApp(demo[0], settings=TRUECOLOR)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await press(pilot, "b", "f", "n")
            assert app.call == 0


class TestToggles:
    @sync
    async def test_g_toggles_data_and_gradient(self, demo: tuple[Path, Path]) -> None:
        """g switches the heatmap between a tensor and its gradient."""
        app = TraceApp(demo[0], settings=TRUECOLOR)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await press(pilot, "g")
            assert app.grad and heat_text(app).startswith("∇ outputs")
            await press(pilot, "g")
            assert not app.grad and heat_text(app).startswith("outputs")

    @sync
    async def test_t_cycles_tensors(self, demo: tuple[Path, Path]) -> None:
        """t moves to the next tensor of the call, wrapping around."""
        app = TraceApp(demo[0], settings=TRUECOLOR)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await press(pilot, "t")
            assert app.tensor == "args.0"
            await press(pilot, "t")
            assert app.tensor == "outputs"

    @sync
    async def test_e_cycles_error_views(self, demo: tuple[Path, Path]) -> None:
        """e shows |cand-ref|, then relative error, then the out-of-tolerance mask, then off."""
        app = TraceApp(*demo, settings=TRUECOLOR)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await press(pilot, "b")
            titles = []
            for _ in range(4):
                await press(pilot, "e")
                titles.append(heat_text(app).splitlines()[0].rstrip())
            assert titles == [
                "∇ args.0 · |cand - ref|",
                "∇ args.0 · |cand - ref| / |ref|",
                "∇ args.0 · out of tolerance",
                "∇ args.0 · candidate",
            ]

    @sync
    async def test_o_and_call_list_keys(self, demo: tuple[Path, Path]) -> None:
        """o flips the call list to backward order; j/down select the next call in that order."""
        app = TraceApp(demo[0], settings=TRUECOLOR)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await press(pilot, "j", "down")
            assert app.call == 2
            await press(pilot, "o", "home", "j")
            assert app.order == "backward" and app.call == 5

    @sync
    async def test_mask_chooser(self, demo: tuple[Path, Path]) -> None:
        """m offers the key padding mask; choosing it draws the padded positions as masked."""
        app = TraceApp(demo[0], settings=RenderSettings("none"))
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await press(pilot, "j", "j")
            assert app.call == 2
            await press(pilot, "m", "down", "enter")
            assert app.mask == "kwargs.key_padding_mask"
            assert "·" in heat_text(app).split("rows ")[0]


class TestHeatmapKeys:
    @sync
    async def test_zoom_pan_and_batch_change_the_region(self, demo: tuple[Path, Path]) -> None:
        """+ zooms, l and shift+down pan, ] picks batch element 0, 0 resets; the legend follows."""
        app = TraceApp(demo[0], settings=TRUECOLOR)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert "rows 0:24 cols 0:8 of 24x8" in heat_text(app)
            await press(pilot, "plus")
            assert app.viewport.window() == (6, 18, 2, 6)
            assert "rows 6:18 cols 2:6" in heat_text(app)
            await press(pilot, "tab", "l", "shift+down")
            assert app.viewport.window() == (9, 21, 3, 7)
            await press(pilot, "right_square_bracket")
            assert app.viewport.batch == 0 and app.viewport.window() == (0, 6, 0, 8)
            await press(pilot, "right_square_bracket", "minus", "0")
            assert app.viewport.window() == (0, 24, 0, 8) and app.viewport.batch is None

    @sync
    async def test_r_toggles_reduction(self, demo: tuple[Path, Path]) -> None:
        """r switches the downsampling from max|x| to mean."""
        app = TraceApp(demo[0], settings=TRUECOLOR)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await press(pilot, "r")
            assert app.reduction == "mean" and "· mean" in heat_text(app).splitlines()[0]


class TestDialogs:
    @sync
    async def test_search_jumps_to_layer(self, demo: tuple[Path, Path]) -> None:
        """/ softmax enter selects the softmax's first call."""
        app = TraceApp(demo[0], settings=TRUECOLOR)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await press(pilot, "slash")
            assert isinstance(app.screen, SearchScreen)
            await press(pilot, *"softmax", "enter")
            assert app.call == 4

    @sync
    async def test_search_by_class(self, demo: tuple[Path, Path]) -> None:
        """Searching a class name finds its layers (Linear: attn.proj first, then head)."""
        app = TraceApp(demo[0], settings=TRUECOLOR)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await press(pilot, "slash", *"linear")
            assert app.screen.matches == ["head", "attn.proj"]

    @sync
    async def test_help_lists_every_key(self, demo: tuple[Path, Path]) -> None:
        """? opens a help screen naming every key in the key table; escape closes it."""
        app = TraceApp(demo[0], settings=TRUECOLOR)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await press(pilot, "question_mark")
            assert isinstance(app.screen, HelpScreen)
            table = app.screen.table
            shown = list(table.columns[0].cells)
            assert shown == [k.shown for k in KEYS]
            await press(pilot, "escape")
            assert not isinstance(app.screen, HelpScreen)

    def test_every_binding_is_in_the_help(self) -> None:
        """No key is bound on the app or its widgets without a row in the help table."""
        from tui._widgets import CallList, HeatmapPane, LayerTree

        documented = {(k.keys, k.action) for k in KEYS}
        for owner in (TraceApp, CallList, HeatmapPane, LayerTree):
            for b in owner.BINDINGS:
                assert (b.key, b.action) in documented, (owner.__name__, b.key)

    @sync
    async def test_alerts_panel_jumps(self, demo: tuple[Path, Path]) -> None:
        """a lists check's alerts (first NaN first); enter jumps to the NaN-producing call."""
        app = TraceApp(demo[0], settings=TRUECOLOR)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await press(pilot, "a")
            assert isinstance(app.screen, AlertsScreen)
            assert app.screen.alerts[0].kind == "nonfinite"
            await press(pilot, "enter")
            assert (app.call, app.tensor) == (6, "outputs")


class TestReaderThread:
    @sync
    async def test_all_reads_happen_on_the_reader_thread(
        self, demo: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Every TraceReader read and call lookup runs on the one reader thread."""
        threads: set[str] = set()
        for name in ("read", "call", "tensor"):
            original = getattr(TraceReader, name)

            def spy(self: TraceReader, *a: Any, _original: Any = original, **k: Any) -> Any:
                threads.add(threading.current_thread().name)
                return _original(self, *a, **k)

            monkeypatch.setattr(TraceReader, name, spy)
        app = TraceApp(*demo, settings=TRUECOLOR)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await press(pilot, "b", "g", "plus", "e", "j", "a", "escape")
        assert threads == {THREAD_NAME}

    @sync
    async def test_large_tensor_reads_only_visible_batch_rows(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With a tiny view budget, selecting batch element 3 reads rows 3:4, never the tensor."""
        import tui._view as view

        monkeypatch.setattr(view, "MAX_VIEW_BYTES", 2 * 6 * 8 * 8)
        trace, _ = demo_trace(tmp_path)
        rows: list[object] = []
        original = TraceReader.read

        def spy(self: TraceReader, tid: int, **k: Any) -> Any:
            rows.append(k.get("rows"))
            return original(self, tid, **k)

        monkeypatch.setattr(TraceReader, "read", spy)
        app = TraceApp(trace, settings=TRUECOLOR)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await press(pilot, *["right_square_bracket"] * 4)
            assert app.viewport.batch == 3
            assert "b3" in heat_text(app)
        assert None not in rows and slice(3, 4) in rows


def _text_lines(lines: list) -> list[str]:
    return ["".join(seg.text for seg in line).rstrip() for line in lines]


class TestRenderView:
    def test_stats_mode_shows_recorded_histogram_without_reading(self, tmp_path: Path) -> None:
        """A stats-mode tensor gets a note instead of a heatmap and its recorded histogram."""
        calls = [FakeCall("", "demo.M", {"args.0": _det(1, 4, 5)}, _det(2, 4, 5))]
        path = write_trace(tmp_path / "stats.h5", calls, stats_only=True)
        with TraceReader(path) as reader:
            view = render_view(Sources(reader), ViewRequest(0, "outputs", heat_size=(60, 8)))
        assert _text_lines(view.heat) == ["stats mode: no stored values (summary only)"]
        assert _text_lines(view.hist)[0] == "histogram · recorded"

    def test_empty_and_one_dimensional_tensors(self, tmp_path: Path) -> None:
        """A (0, 4) tensor draws as empty and a 1-D tensor as one row; neither raises."""
        empty = np.zeros((0, 4), np.float32)
        calls = [FakeCall("", "demo.M", {"args.0": empty}, np.arange(5, dtype=np.float32))]
        path = write_trace(tmp_path / "edge.h5", calls)
        with TraceReader(path) as reader:
            sources = Sources(reader)
            heat = render_view(sources, ViewRequest(0, "args.0", heat_size=(40, 8))).heat
            row = render_view(sources, ViewRequest(0, "outputs", heat_size=(40, 8))).heat
        assert _text_lines(heat)[1] == "(empty: 0x4)"
        assert "rows 0:1 cols 0:5 of 1x5" in "\n".join(_text_lines(row))


class TestNoTorch:
    def test_tui_cli_never_imports_torch(self, demo: tuple[Path, Path]) -> None:
        """Importing tui, 'tui --help' and 'show' run in a fresh interpreter without torch."""
        code = (
            "import argparse, contextlib, io, sys\n"
            "import tui\n"
            "from tui import cli\n"
            "p = argparse.ArgumentParser(); cli.register(p.add_subparsers())\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    p.parse_args(['tui', '--help'])\n"
            f"a = p.parse_args(['show', {str(demo[0])!r}, 'attn.softmax',"
            f" '--results', {str(demo[1])!r}])\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    a.func(a)\n"
            "import tui._app\n"
            "assert 'torch' not in sys.modules, [m for m in sys.modules if 'torch' in m][:5]\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr

    def test_tensortrace_tui_help_never_imports_torch(self) -> None:
        """The real console command 'tensortrace tui --help' does not import torch."""
        code = (
            "import sys\n"
            "from tracefmt.cli import main\n"
            "try:\n"
            "    main(['tui', '--help'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "sys.stdout.flush()\n"
            "print('TORCH' if 'torch' in sys.modules else 'CLEAN')\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert done.stdout.strip().endswith("CLEAN"), done.stdout[-300:] + done.stderr[-500:]


async def _goto_backward_divergence(pilot: Pilot) -> None:
    await settle(pilot)
    await press(pilot, "b")


async def _settled(pilot: Pilot) -> None:
    await settle(pilot)


class TestSnapshots:
    def test_first_screen(self, snap_compare: Snap, demo: tuple[Path, Path]) -> None:
        """80x24 truecolour: title, call header, debug table, call list, heatmap."""
        assert snap_compare(
            TraceApp(*demo, settings=TRUECOLOR), terminal_size=SIZE, run_before=_settled
        )

    def test_backward_divergence(self, snap_compare: Snap, demo: tuple[Path, Path]) -> None:
        """After b: the failing softmax, its candidate gradient with only band b0 filled."""
        assert snap_compare(
            TraceApp(*demo, settings=TRUECOLOR),
            terminal_size=SIZE,
            run_before=_goto_backward_divergence,
        )

    def test_backward_divergence_plain(self, snap_compare: Snap, demo: tuple[Path, Path]) -> None:
        """The same screen without colour (NO_COLOR): glyph ramp, badges still distinct."""
        assert snap_compare(
            TraceApp(*demo, settings=RenderSettings("none")),
            terminal_size=SIZE,
            run_before=_goto_backward_divergence,
        )

    def test_256_colours(self, snap_compare: Snap, demo: tuple[Path, Path]) -> None:
        """The first screen with the 256-colour ramp."""
        assert snap_compare(
            TraceApp(*demo, settings=RenderSettings("256")), terminal_size=SIZE, run_before=_settled
        )
