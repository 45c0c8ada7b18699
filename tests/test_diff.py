"""``tensortrace diff A B``: two traces compared call by call, with numpy only."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from torch import nn

import recorder
import tracefmt
from replayer._diff import diff_traces, load_map, rename_path
from tracefmt.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "translation.py"


def tensortrace(*argv: object) -> int:
    """The ``tensortrace`` command, in-process: its exit status."""
    return main([str(a) for a in argv])


class _Wrapper(nn.Module):
    """The recipe's model one level down (``model.``), as another framework might name it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.criterion = model.criterion

    def forward(self, *args: Any) -> Any:
        return self.model(*args)


def record_one_step(path: Path, change: Callable[[nn.Module], nn.Module] | None = None) -> Path:
    """Step 0 of the example recipe, recorded through the Python API, the model changed first."""
    recipe = recorder.load_recipe(str(EXAMPLE))
    model = recipe.build_model()
    if change is not None:
        model = change(model)
    with recorder.record(model, path) as rec:
        rec.backward(recipe.run_step(model, 0))
        rec.step()
    return path


def _wider_eps(model: nn.Module) -> nn.Module:
    model.encoder.layers[0].self_attn_norm.eps = 0.1
    return model


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Step 0 again (same model), with one LayerNorm's eps changed, and wrapped as ``model.``."""
    out = tmp_path_factory.mktemp("diff")
    return {"rerun": record_one_step(out / "rerun.h5"),
            "eps": record_one_step(out / "eps.h5", _wider_eps),
            "wrapped": record_one_step(out / "wrapped.h5", _Wrapper)}


class TestDiffTraces:
    def test_rerun_matches(self, translation_trace: Path, traces: dict[str, Path]) -> None:
        """A second recording of step 0 matches call for call; step 1 is reported as only in A."""
        rep = diff_traces(translation_trace, traces["rerun"])
        step0 = [r for r in rep.results if r.step == 0]
        step1 = [r for r in rep.results if r.step == 1]
        assert rep.ok and step0 and all(r.status == "pass" for r in step0)
        assert step1 and all(r.status == "skipped" and "only in A" in r.notes[0] for r in step1)
        loss = rep.steps[0].tensors[0]
        assert (loss.name, loss.passed) == ("loss", True)

    def test_first_divergence_is_innermost_layer(self, translation_trace: Path,
                                                 traces: dict[str, Path]) -> None:
        """A changed LayerNorm eps: the first forward divergence is that LayerNorm, not the root."""
        rep = diff_traces(translation_trace, traces["eps"], step=0)
        first = rep.first_divergence("forward")
        assert not rep.ok
        assert (first.module, first.phase) == ("encoder.layers.0.self_attn_norm", "forward")
        assert not rep.steps[0].passed and rep.steps[0].tensors[0].name == "loss"

    def test_parameter_gradients_join_backward_results(self, translation_trace: Path,
                                                       traces: dict[str, Path]) -> None:
        """Parameter gradients are compared in their module's backward result."""
        rep = diff_traces(translation_trace, traces["rerun"], step=0)
        proj = [r for r in rep.results if r.module == "generator.proj" and r.phase == "backward"]
        assert {t.name for t in proj[0].tensors} == {"args.0", "param.weight", "param.bias"}

    def test_step_option(self, translation_trace: Path, traces: dict[str, Path]) -> None:
        """``step`` keeps one step: nothing of step 1 is reported."""
        rep = diff_traces(translation_trace, traces["rerun"], step=0)
        assert {r.step for r in rep.results} == {0} and [s.step for s in rep.steps] == [0]


class _KeyAttention(nn.Module):
    """Attention over keys: the key bias gradient is zero up to rounding (softmax shift)."""

    def __init__(self, key_scale: float = 1.0) -> None:
        super().__init__()
        self.q_proj, self.k_proj = nn.Linear(16, 16), nn.Linear(16, 16)
        self.key_scale = key_scale

    def forward(self, x: Any) -> Any:
        keys = self.k_proj(x) * self.key_scale
        return (self.q_proj(x) @ keys.transpose(-1, -2) / 4).softmax(dim=-1) @ x


class TestDiffParamGrads:
    def test_noise_in_a_cancelling_bias_gradient_passes(self, tmp_path: Path) -> None:
        """Keys 2 ULP off change a zero-by-symmetry bias gradient by noise: judged as noise."""
        import torch

        paths = []
        for name, scale in (("a", 1.0), ("b", 1 + 2**-22)):
            torch.manual_seed(0)
            model = _KeyAttention(scale)
            x, w = torch.randn(16, 256, 16), torch.randn(16, 256, 16)
            paths.append(tmp_path / f"{name}.h5")
            with recorder.record(model, paths[-1]) as rec:
                rec.backward((model(x) * w).sum())
                rec.step()
        rep = diff_traces(*paths)
        bias = [t for r in rep.results for t in r.tensors if t.name == "param.bias"]
        assert len(bias) == 2 and all(t.passed for t in bias), rep.results


class TestMap:
    @pytest.mark.parametrize("text", ['{"model": ""}\n', "# B wraps the model\nmodel=\n"])
    def test_map_aligns_renamed_paths(self, text: str, translation_trace: Path,
                                      traces: dict[str, Path], tmp_path: Path) -> None:
        """With a JSON or old=new map, a wrapped model's calls align; the wrapper is only in B."""
        (tmp_path / "map").write_text(text)
        out = tmp_path / "r.json"
        code = tensortrace("diff", translation_trace, traces["wrapped"], "--map", tmp_path / "map",
                           "--step", 0, "--json", out, "-q")
        report = json.loads(out.read_text())
        assert code == 0
        skipped = [c for c in report["calls"] if c["status"] == "skipped"]
        assert [(c["module"], c["phase"]) for c in skipped] == [("", "forward"), ("", "backward")]
        assert all(c["notes"][0].startswith("only in B") for c in skipped)
        assert report["summary"]["passed"] == report["summary"]["calls"] - 2

    def test_without_map_calls_are_only_in_one_trace(self, translation_trace: Path,
                                                     traces: dict[str, Path]) -> None:
        """Unrenamed, the wrapped model's calls are skipped as only in A or B; grads missing fail."""
        rep = diff_traces(translation_trace, traces["wrapped"], step=0)
        notes = {r.notes[0].split(" (")[0] for r in rep.results if r.status == "skipped"}
        assert notes == {"only in A", "only in B"}
        assert [r.module for r in rep.results if r.status == "pass"] == ["", ""]
        assert not rep.ok and any("only in B: model." in n for n in rep.steps[0].notes)

    def test_rename_path(self) -> None:
        """Prefixes match whole components, the longest wins, and '' prefixes everything."""
        renames = {"model": "", "model.enc": "encoder", "x": "y"}
        assert rename_path("model.enc.layers.0", renames) == "encoder.layers.0"
        assert rename_path("model.decoder", renames) == "decoder"
        assert rename_path("model", renames) == ""
        assert rename_path("xx.a", renames) == "xx.a"
        assert rename_path("a.b", {"": "net"}) == "net.a.b"

    def test_load_map_formats(self, tmp_path: Path) -> None:
        """Both map formats load; a malformed one is a usage error naming the file."""
        (tmp_path / "a.json").write_text('{"a.b": "c"}')
        (tmp_path / "b.txt").write_text("a.b = c  # comment\n\nd=e\n")
        (tmp_path / "bad.txt").write_text("a.b c\n")
        assert load_map(tmp_path / "a.json") == {"a.b": "c"}
        assert load_map(tmp_path / "b.txt") == {"a.b": "c", "d": "e"}
        with pytest.raises(tracefmt.UsageError, match="line 1"):
            load_map(tmp_path / "bad.txt")


class TestDiffCli:
    def test_reports_have_replay_format(self, translation_trace: Path, traces: dict[str, Path],
                                        tmp_path: Path) -> None:
        """diff writes the replay's JSON schema, JUnit (one case per call result) and results."""
        paths = [tmp_path / n for n in ("r.json", "r.xml", "r.h5")]
        code = tensortrace("diff", translation_trace, traces["eps"], "--step", 0,
                           "--json", paths[0], "--junit", paths[1], "--results", paths[2], "-q")
        report = json.loads(paths[0].read_text())
        assert code == 1
        assert set(report) == {"trace", "candidates", "device", "mode", "tolerances", "summary",
                               "first_divergence", "calls", "steps"}
        assert report["mode"] == "diff"
        assert report["first_divergence"]["forward"]["module"] == "encoder.layers.0.self_attn_norm"
        calls = ET.parse(paths[1]).getroot().findall(".//testsuite[@name]")
        n_cases = sum(len(s.findall("testcase")) for s in calls if s.get("name") != "tensortrace.steps")
        assert n_cases == len(report["calls"])
        with tracefmt.open_results(paths[2]) as res:
            first = report["first_divergence"]["forward"]
            assert res.candidate(first["call"], "forward", "outputs") is not None

    def test_tolerance_flags(self, translation_trace: Path, traces: dict[str, Path],
                             tmp_path: Path) -> None:
        """--rtol/--atol reach the comparison: a huge tolerance passes the changed eps."""
        out = tmp_path / "r.json"
        code = tensortrace("diff", translation_trace, traces["eps"], "--step", 0, "--rtol", 10,
                           "--atol", 10, "--json", out, "-q")
        assert code == 0
        assert json.loads(out.read_text())["tolerances"]["global"] == {"rtol": 10, "atol": 10}

    @pytest.mark.parametrize("case", ["missing B", "missing map", "bad step"])
    def test_usage_errors(self, case: str, translation_trace: Path, traces: dict[str, Path],
                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Usage and input errors exit 2 with one line on stderr."""
        argv = {"missing B": [tmp_path / "nope.h5"],
                "missing map": [traces["rerun"], "--map", tmp_path / "nope.map"],
                "bad step": [traces["rerun"], "--step", 7]}[case]
        assert tensortrace("diff", translation_trace, *argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err

    def test_diff_never_imports_torch(self, translation_trace: Path,
                                      traces: dict[str, Path]) -> None:
        """The diff command runs, prints and exits without importing torch."""
        code = textwrap.dedent(f"""
            import argparse, sys
            from replayer import cli
            parser = argparse.ArgumentParser()
            cli.register(parser.add_subparsers())
            args = parser.parse_args(["diff", {str(translation_trace)!r},
                                      {str(traces["eps"])!r}, "--step", "0"])
            status = args.func(args)
            assert "torch" not in sys.modules, "torch was imported"
            sys.exit(status)
        """)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 1, proc.stderr
        assert "first forward divergence" in proc.stdout
