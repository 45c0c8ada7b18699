"""``tensortrace show``: one call's table, histogram and heatmap on stdout (piped: plain)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from test_tui_app import demo_trace

from tracefmt import TraceError, UsageError
from tui import cli as tui_cli


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return demo_trace(tmp_path_factory.mktemp("show"))


def show(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run ``show`` with stdout captured (not a terminal) and return what it printed."""
    parser = argparse.ArgumentParser()
    tui_cli.register(parser.add_subparsers())
    args = parser.parse_args(["show", *argv])
    assert args.func(args) == 0
    return capsys.readouterr().out


class TestShowCommand:
    def test_plain_output_has_header_table_histogram_heatmap(
        self,
        demo: tuple[Path, Path],
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Piped: no escapes; header, table rows, recorded histogram and banded heatmap."""
        monkeypatch.delenv("TENSORTRACE_COLOR", raising=False)
        out = show(capsys, str(demo[0]), "attn.softmax")
        lines = out.splitlines()
        assert "\x1b" not in out
        assert lines[0] == "call 4 · attn.softmax#0 · torch.nn.modules.activation.Softmax · step 0"
        assert any(line.split()[:2] == ["args.0", "4×2×6×6"] for line in lines)
        assert any("›" in line and "outputs" in line for line in lines)
        assert "histogram · recorded" in out
        assert "outputs · reference" in out
        assert [line.split()[0] for line in lines if line[:2] in ("b0", "b1", "b2", "b3")] == [
            "b0",
            "b1",
            "b2",
            "b3",
        ]

    def test_grad_with_results_adds_comparison_and_error_heatmap(
        self, demo: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--grad --results: both phases' verdicts, shared-bin histogram and |cand - ref| map."""
        out = show(
            capsys, str(demo[0]), "4", "--grad", "--tensor", "args.0", "--results", str(demo[1])
        )
        assert "forward: pass" in out
        assert "backward: FAIL args.0 · only batch element 0 matches; elements 1-3 diverge" in out
        assert "histogram · ref vs cand (shared bins)" in out
        assert "∇ args.0 · reference" in out and "∇ args.0 · |cand - ref|" in out

    def test_hist_only_and_heatmap_only(
        self, demo: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--hist prints no heatmap; --heatmap prints no histogram."""
        hist = show(capsys, str(demo[0]), "head", "--hist")
        assert "histogram" in hist and "· reference" not in hist
        heat = show(capsys, str(demo[0]), "head", "--heatmap")
        assert "histogram" not in heat and "outputs · reference" in heat

    def test_nth_call_and_width(
        self, demo: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """PATH#N resolves the N-th call of a module; --width bounds every line."""
        out = show(capsys, str(demo[0]), "act#0", "--width", "50")
        assert out.startswith("call 6 · act#0")
        assert max(len(line) for line in out.splitlines()) <= 50
        assert "NaN=" in out

    def test_forced_colour_when_piped(
        self,
        demo: tuple[Path, Path],
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """TENSORTRACE_COLOR=256 colours a pipe with 256-colour escapes and half blocks."""
        monkeypatch.setenv("TENSORTRACE_COLOR", "256")
        out = show(capsys, str(demo[0]), "head", "--heatmap")
        assert "\x1b[38;5;" in out and "▀" in out

    def test_unknown_tensor_and_call_are_usage_errors(
        self, demo: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A tensor or call the trace lacks raises UsageError (the dispatcher's exit 2)."""
        with pytest.raises(UsageError, match="no tensor 'nope'"):
            show(capsys, str(demo[0]), "head", "--tensor", "nope")
        with pytest.raises(UsageError, match="no module"):
            show(capsys, str(demo[0]), "missing.layer")
        with pytest.raises(TraceError, match="no such file"):
            show(capsys, str(demo[0]) + ".absent", "0")
