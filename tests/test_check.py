"""``tensortrace check``: alerts from summaries only, on small traces written by hand (no torch).

The traces come from ``tests/_synthetic_trace.py``, shared with the TUI and ``show`` tests.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from _synthetic_trace import FakeCall, batch0_only, write_trace

from tracefmt import (
    open_trace,
)
from tui import Alert, check_trace
from tui import cli as tui_cli

RNG = np.random.default_rng(0)


def randn(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def healthy_calls() -> list[FakeCall]:
    """root(proj -> softmax -> head), batch 4, every gradient filled."""
    x, s = randn(4, 6, 8), randn(4, 2, 6, 6)
    p = np.exp(s) / np.exp(s).sum(-1, keepdims=True)
    y = randn(4, 6, 8)
    return [
        FakeCall(
            "",
            "demo.Model",
            {"args.0": x},
            y,
            {"outputs": randn(4, 6, 8), "args.0": randn(4, 6, 8)},
        ),
        FakeCall(
            "proj",
            "torch.nn.modules.linear.Linear",
            {"args.0": x},
            s,
            {"outputs": randn(4, 2, 6, 6), "args.0": randn(4, 6, 8)},
            parent=0,
        ),
        FakeCall(
            "softmax",
            "torch.nn.modules.activation.Softmax",
            {"args.0": s},
            p,
            {"outputs": randn(4, 2, 6, 6), "args.0": randn(4, 2, 6, 6)},
            parent=0,
        ),
        FakeCall(
            "head",
            "torch.nn.modules.linear.Linear",
            {"args.0": p},
            y,
            {"outputs": randn(4, 6, 8), "args.0": randn(4, 2, 6, 6)},
            parent=0,
        ),
    ]


def checked(path: Path) -> list[Alert]:
    with open_trace(path) as reader:
        return check_trace(reader)


class TestCheckTrace:
    def test_healthy_trace_has_no_alerts(self, tmp_path: Path) -> None:
        """A trace with filled gradients and moderate magnitudes raises nothing."""
        assert checked(write_trace(tmp_path / "t.h5", healthy_calls())) == []

    def test_planted_batch0_gradient_names_layer_and_indices(self, tmp_path: Path) -> None:
        """Only batch element 0 has a softmax input gradient: layer and elements 1-3 named."""
        calls = healthy_calls()
        calls[2].grads["args.0"] = batch0_only(calls[2].grads["args.0"])
        calls[0].grads["args.0"] = batch0_only(calls[0].grads["args.0"])
        calls[1].grads["outputs"] = batch0_only(calls[1].grads["outputs"])
        calls[1].grads["args.0"] = batch0_only(calls[1].grads["args.0"])
        alerts = checked(write_trace(tmp_path / "t.h5", calls))
        assert [(a.kind, a.module, a.tensor, a.batch_indices) for a in alerts] == [
            ("batch_zero_grad", "softmax", "args.0", (1, 2, 3))
        ]
        assert alerts[0].call == 2 and alerts[0].phase == "backward"
        assert "1-3" in alerts[0].message and "but not for 0" in alerts[0].message

    def test_zero_rows_explained_by_zero_input_are_not_reported(self, tmp_path: Path) -> None:
        """Batch elements whose data (or another input) is all zero are padding, not a bug."""
        calls = healthy_calls()
        s = calls[2].inputs["args.0"]
        s[1:] = 0.0
        calls[2].grads["args.0"] = batch0_only(calls[2].grads["args.0"])
        assert checked(write_trace(tmp_path / "t.h5", calls)) == []

    def test_first_nan_is_the_origin_not_its_parents(self, tmp_path: Path) -> None:
        """NaN made by a leaf shows in the root's output too; only the leaf is the first NaN."""
        calls = healthy_calls()
        bad = calls[3].output.copy()
        bad[1, 2, 3] = np.nan
        calls[3].output = bad
        calls[0].output = bad
        alerts = checked(write_trace(tmp_path / "t.h5", calls))
        assert (alerts[0].kind, alerts[0].call, alerts[0].phase) == ("nonfinite", 3, "forward")
        assert "1 NaN" in alerts[0].message
        assert [a for a in alerts if a.kind == "nonfinite"] == alerts[:1]

    def test_first_inf_in_backward(self, tmp_path: Path) -> None:
        """An input gradient with Inf from a finite output gradient is the backward origin."""
        calls = healthy_calls()
        g = calls[2].grads["args.0"].copy()
        g[0, 0, 0, 0] = np.inf
        calls[2].grads["args.0"] = g
        calls[1].grads["outputs"] = g
        alerts = checked(write_trace(tmp_path / "t.h5", calls))
        assert [(a.kind, a.call, a.phase) for a in alerts] == [("nonfinite", 2, "backward")]

    def test_magnitude_jump(self, tmp_path: Path) -> None:
        """An output 5000x its input is flagged; its parent, which also jumps, is not."""
        calls = healthy_calls()
        calls[3].output = calls[3].output * 5e3
        calls[3].inputs["args.0"] = np.abs(calls[3].inputs["args.0"])
        calls[0].output = calls[3].output
        alerts = checked(write_trace(tmp_path / "t.h5", calls))
        assert [(a.kind, a.module, a.phase) for a in alerts] == [("magnitude", "head", "forward")]
        assert "grows" in alerts[0].message

    def test_saturated_softmax(self, tmp_path: Path) -> None:
        """One-hot softmax rows (max 1.0, nearly all zeros) are flagged; smooth ones are not."""
        calls = healthy_calls()
        hot = np.zeros((4, 2, 6, 6), np.float32)
        hot[..., 0] = 1.0
        calls[2].output = hot
        alerts = checked(write_trace(tmp_path / "t.h5", calls))
        assert [(a.kind, a.module, a.tensor) for a in alerts] == [
            ("saturated_softmax", "softmax", "outputs")
        ]

    def test_zero_param_grad(self, tmp_path: Path) -> None:
        """A parameter whose whole gradient is zero is reported with its module."""
        params = {"head": ("weight", "bias")}
        grads = {"head.weight": randn(8, 8), "head.bias": np.zeros(8, np.float32)}
        alerts = checked(
            write_trace(tmp_path / "t.h5", healthy_calls(), params=params, param_grads=grads)
        )
        assert [(a.kind, a.module, a.tensor, a.call) for a in alerts] == [
            ("zero_param_grad", "head", "head.bias", None)
        ]

    def test_stats_mode_trace_gives_the_same_alerts(self, tmp_path: Path) -> None:
        """Without any stored values the summaries alone find the planted gradient."""
        calls = healthy_calls()
        calls[2].grads["args.0"] = batch0_only(calls[2].grads["args.0"])
        full = checked(write_trace(tmp_path / "full.h5", calls))
        stats = checked(write_trace(tmp_path / "stats.h5", calls, stats_only=True))
        assert [a.to_dict() for a in stats] == [a.to_dict() for a in full] != []

    def test_first_nan_first_then_execution_order(self, tmp_path: Path) -> None:
        """The NaN alert leads even when it happens late; the rest follow forward then backward."""
        calls = healthy_calls()
        calls[1].output = calls[1].output * 5e3
        calls[2].grads["args.0"] = batch0_only(calls[2].grads["args.0"])
        bad = calls[3].output.copy()
        bad[0, 0, 0] = np.nan
        calls[3].output = bad
        kinds = [(a.kind, a.phase) for a in checked(write_trace(tmp_path / "t.h5", calls))]
        assert kinds == [
            ("nonfinite", "forward"),
            ("magnitude", "forward"),
            ("batch_zero_grad", "backward"),
        ]


class TestAlert:
    def test_to_dict_has_the_json_fields(self) -> None:
        """The JSON form carries exactly the documented keys, batch indices as a list."""
        a = Alert("batch_zero_grad", 2, "softmax", "backward", "args.0", "msg", (1, 2))
        assert a.to_dict() == {
            "kind": "batch_zero_grad",
            "call": 2,
            "module": "softmax",
            "phase": "backward",
            "tensor": "args.0",
            "batch_indices": [1, 2],
            "message": "msg",
        }


def run_check(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    tui_cli.register(parser.add_subparsers())
    args = parser.parse_args(["check", *argv])
    return args.func(args)


class TestCheckCommand:
    def test_json_and_exit_status_one(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--json prints the alerts object and the command exits 1 when there are alerts."""
        calls = healthy_calls()
        calls[2].grads["args.0"] = batch0_only(calls[2].grads["args.0"])
        path = write_trace(tmp_path / "t.h5", calls)
        assert run_check(str(path), "--json") == 1
        alerts = json.loads(capsys.readouterr().out)["alerts"]
        assert alerts == [
            {
                "kind": "batch_zero_grad",
                "call": 2,
                "module": "softmax",
                "phase": "backward",
                "tensor": "args.0",
                "batch_indices": [1, 2, 3],
                "message": alerts[0]["message"],
            }
        ]

    def test_healthy_exit_zero(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """No alerts: exit 0 and one line saying so."""
        path = write_trace(tmp_path / "t.h5", healthy_calls())
        assert run_check(str(path)) == 0
        assert capsys.readouterr().out.strip().endswith("no alerts")

    def test_text_output_names_layer(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The human output has one line per alert with call, phase, module and tensor."""
        calls = healthy_calls()
        calls[2].grads["args.0"] = batch0_only(calls[2].grads["args.0"])
        run_check(str(write_trace(tmp_path / "t.h5", calls)))
        out = capsys.readouterr().out
        assert "1 alert" in out
        assert "batch zero grad: call 2 backward softmax args.0:" in out
