"""The pytest plugin: one test item per replayed call result, and nothing when not asked."""

from __future__ import annotations

from pathlib import Path

import pytest

import recorder
import tracefmt

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "translation.py"
BUGGY = EXAMPLE.parent / "candidates" / "buggy"
OWN_SOFTMAX = "import torch\n\nCANDIDATES = {'torch.nn.Softmax': torch.nn.Softmax}\n"


def softmax_calls(trace: Path, prefix: str = "") -> int:
    with tracefmt.open_trace(trace) as reader:
        return sum(1 for c in reader.calls()
                   if c.type.endswith(".Softmax") and c.module.startswith(prefix))


def replay_args(trace: Path, cands: Path | str) -> list[str]:
    return ["--tensortrace-trace", str(trace), "--tensortrace-candidates", str(cands)]


def run(pytester: pytest.Pytester, *args: object) -> pytest.RunResult:
    """An in-process inner pytest run without the other installed plugins (the snapshot one
    keeps process-global session state, and loading them all costs seconds per run)."""
    off = [x for name in ("textual-snapshot", "hypothesispytest", "syrupy", "benchmark",
                          "cacheprovider") for x in ("-p", f"no:{name}")]
    return pytester.runpytest_inprocess(*map(str, args), *off)


class TestReplayItems:
    def test_buggy_backward_items_fail_with_comparison_message(
            self, pytester: pytest.Pytester, translation_trace: Path) -> None:
        """Forward items pass, backward items fail with the comparison message and bad batches."""
        n = softmax_calls(translation_trace)
        batch = recorder.load_recipe(str(EXAMPLE)).module.BATCH_SIZE
        result = run(pytester, *replay_args(translation_trace, BUGGY / "softmax_batch0_grad.py"),
                     "-v")
        result.assert_outcomes(passed=n, failed=n)
        result.stdout.fnmatch_lines([
            "*test_replay?call * encoder.layers.0.self_attn.softmax#0 forward? PASSED*",
            "*test_replay?call * encoder.layers.0.self_attn.softmax#0 backward? FAILED*",
        ])
        text = result.stdout.str()
        assert "args.0: Mismatched elements" in text
        assert f"bad batch elements: 1..{batch - 1}" in text

    def test_passing_candidates(self, pytester: pytest.Pytester, translation_trace: Path) -> None:
        """The reference's own Softmax as candidate: every item passes, exit status 0."""
        cands = pytester.makepyfile(cands=OWN_SOFTMAX)
        n = softmax_calls(translation_trace)
        result = run(pytester, *replay_args(translation_trace, cands))
        result.assert_outcomes(passed=2 * n)
        assert result.ret == pytest.ExitCode.OK

    def test_keyword_selection_applies(self, pytester: pytest.Pytester,
                                       translation_trace: Path) -> None:
        """-k picks replay items by name like any other test."""
        cands = pytester.makepyfile(cands=OWN_SOFTMAX)
        n = softmax_calls(translation_trace)
        n_dec = softmax_calls(translation_trace, "decoder.")
        result = run(pytester, *replay_args(translation_trace, cands), "-k",
                     "backward and decoder")
        result.assert_outcomes(passed=n_dec, deselected=2 * n - n_dec)
        result.stdout.fnmatch_lines([f"collected {2 * n} items / {2 * n - n_dec} deselected*"])


class TestPluginOff:
    def test_no_options_no_items_no_torch(self, pytester: pytest.Pytester) -> None:
        """Without the options the plugin adds nothing and torch is never imported."""
        pytester.makepyfile(test_plain="""
            import sys

            def test_plain():
                assert "torch" not in sys.modules
        """)
        result = pytester.runpytest_subprocess("-p", "tensortrace", "-q")
        result.assert_outcomes(passed=1)


class TestPluginUsage:
    def test_one_option_alone(self, pytester: pytest.Pytester, translation_trace: Path) -> None:
        """--tensortrace-trace without --tensortrace-candidates is a usage error."""
        result = run(pytester, "--tensortrace-trace", translation_trace)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*--tensortrace-trace and --tensortrace-candidates go together*"])

    def test_missing_trace(self, pytester: pytest.Pytester) -> None:
        """A trace that does not exist is a usage error naming it, not a crash."""
        cands = pytester.makepyfile(cands=OWN_SOFTMAX)
        result = run(pytester, *replay_args(pytester.path / "nope.h5", cands))
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*tensortrace: *nope.h5: no such file*"])
