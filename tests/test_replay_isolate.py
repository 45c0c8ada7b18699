"""``replay --isolate``: candidates in a child process, crashes and hangs as error results."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from replayer import ReplayOptions, replay_trace
from tracefmt.cli import main

CORRECT = Path(__file__).resolve().parents[1] / "examples" / "candidates" / "correct.py"

CRASHY = """
    import ctypes
    import time

    import torch
    from torch import nn


    class Hang(nn.Softmax):
        def forward(self, x):
            time.sleep(600)


    class Raise(nn.Softmax):
        def forward(self, x):
            raise ValueError("kernel launch failed")


    class _SegfaultingGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return torch.softmax(x, -1)

        @staticmethod
        def backward(ctx, grad):
            ctypes.string_at(0)


    class SegfaultInBackward(nn.Softmax):
        def forward(self, x):
            return _SegfaultingGrad.apply(x)


    CANDIDATES = {
        "encoder.layers.1.self_attn.softmax": Hang,
        "decoder.layers.0.self_attn.softmax": Raise,
        "decoder.layers.0.cross_attn.softmax": SegfaultInBackward,
        "torch.nn.Softmax": nn.Softmax,
    }
"""


def tensortrace(*argv: object) -> int:
    """The ``tensortrace`` command, in-process: its exit status."""
    return main([str(a) for a in argv])


def _without_timing(report: dict[str, Any]) -> dict[str, Any]:
    for call in [*report["calls"], *filter(None, report["first_divergence"].values())]:
        call.pop("seconds")
    return report


@pytest.fixture(scope="module")
def crashy_report(translation_trace: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> dict[str, Any]:
    """One isolated CLI replay of step 0's softmaxes: a hang, a raise, a segfault in backward."""
    out = tmp_path_factory.mktemp("crashy")
    cands = out / "crashy.py"
    cands.write_text(textwrap.dedent(CRASHY))
    code = tensortrace("replay", translation_trace, cands, "--isolate", "--timeout", 2,
                       "--step", 0, "--only", "*softmax", "--json", out / "r.json", "-q")
    report = json.loads((out / "r.json").read_text())
    return {"code": code, "report": report,
            "by": {(c["module"].removesuffix(".softmax"), c["phase"]): c for c in report["calls"]}}


class TestIsolate:
    def test_same_results_as_in_process(self, translation_trace: Path) -> None:
        """Without crashes the isolated report equals the in-process one (timings aside)."""
        opts = {"step": 0, "only": ("encoder.*",)}
        inproc = replay_trace(str(translation_trace), str(CORRECT),
                              options=ReplayOptions(**opts))
        isolated = replay_trace(str(translation_trace), str(CORRECT),
                                options=ReplayOptions(**opts, isolate=True))
        assert inproc.counts()["calls"] > 0
        assert _without_timing(isolated.to_dict()) == _without_timing(inproc.to_dict())

    def test_hang_times_out(self, crashy_report: dict[str, Any]) -> None:
        """A forward that never returns is killed after --timeout: an error; its backward skipped."""
        fwd = crashy_report["by"][("encoder.layers.1.self_attn", "forward")]
        bwd = crashy_report["by"][("encoder.layers.1.self_attn", "backward")]
        assert fwd["status"] == "error" and "timed out after 2 s" in fwd["error"]
        assert "forward" in fwd["error"] and "new process" in fwd["error"]
        assert bwd["status"] == "skipped"

    def test_exception_keeps_its_traceback(self, crashy_report: dict[str, Any]) -> None:
        """An exception in the child is an ordinary error result with the candidate's traceback."""
        fwd = crashy_report["by"][("decoder.layers.0.self_attn", "forward")]
        assert fwd["error"] == "ValueError: kernel launch failed"
        assert 'raise ValueError("kernel launch failed")' in fwd["traceback"]

    def test_segfault_in_backward_blames_backward(self, crashy_report: dict[str, Any]) -> None:
        """A segfault inside backward keeps the forward verdict, names the signal and phase."""
        fwd = crashy_report["by"][("decoder.layers.0.cross_attn", "forward")]
        bwd = crashy_report["by"][("decoder.layers.0.cross_attn", "backward")]
        assert fwd["status"] == "pass"
        assert bwd["status"] == "error" and "SIGSEGV" in bwd["error"]
        assert "backward" in bwd["error"]

    def test_run_goes_on_and_exits_1(self, crashy_report: dict[str, Any]) -> None:
        """Every selected call has results, the healthy ones pass, and the exit status is 1."""
        report = crashy_report["report"]
        healthy = [c for c in report["calls"] if c["module"].startswith("decoder.layers.1.")
                   or c["module"] == "encoder.layers.0.self_attn.softmax"]
        assert crashy_report["code"] == 1
        assert len(report["calls"]) == 12
        assert len(healthy) == 6 and all(c["status"] == "pass" for c in healthy)
        assert report["summary"]["errors"] == 3
