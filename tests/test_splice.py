"""``replay --splice``: the reference model run with candidates swapped in, then diffed."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import tracefmt
from replayer._splice import FactoryAdapter, render_growth, splice_run
from tracefmt.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RECIPE = EXAMPLES / "translation.py"
CANDIDATES = EXAMPLES / "candidates"


def tensortrace(*argv: object) -> int:
    """The ``tensortrace`` command, in-process: its exit status."""
    return main([str(a) for a in argv])


def splice_cli(trace: Path, cands: Path, out: Path, *extra: object) -> dict[str, Any]:
    code = tensortrace("replay", trace, cands, "--splice", "--recipe", RECIPE, "--step", 0,
                       "--json", out / "r.json", *extra)
    return {"code": code, "report": json.loads((out / "r.json").read_text())}


@pytest.fixture(scope="module")
def correct_splice(translation_trace: Path, tmp_path_factory: pytest.TempPathFactory
                   ) -> dict[str, Any]:
    """Step 0 spliced with the correct candidates, the spliced trace kept."""
    out = tmp_path_factory.mktemp("splice-correct")
    kept = out / "spliced.h5"
    return {**splice_cli(translation_trace, CANDIDATES / "correct.py", out, "--splice-trace",
                         kept, "-q"), "kept": kept}


class TestSpliceCorrect:
    def test_passes_with_matching_loss(self, correct_splice: dict[str, Any]) -> None:
        """Correct candidates spliced into the whole model: every layer and the loss match."""
        report = correct_splice["report"]
        assert correct_splice["code"] == 0 and report["mode"] == "splice"
        step = report["steps"][0]
        assert step["status"] == "pass" and step["tensors"][0]["name"] == "loss"
        assert abs(step["loss_reference"] - step["loss_candidate"]) < 1e-5

    def test_kept_trace_has_the_candidates(self, correct_splice: dict[str, Any]) -> None:
        """--splice-trace keeps the spliced recording; swapped layers carry the candidate types."""
        with tracefmt.open_trace(correct_splice["kept"]) as reader:
            types = {m.path: m.type for m in reader.modules}
            assert reader.param_grads(0) is not None and reader.param_grads(0).loss is not None
        assert types["encoder.layers.0.self_attn"].endswith("Float64Attention")
        assert types["encoder.norm"].endswith("ManualLayerNorm")
        assert types["generator.proj"] == f"{FactoryAdapter.__module__}.FactoryAdapter"
        assert "encoder.layers.0.self_attn.softmax" not in types

    def test_factory_adapter_keeps_parameter_names(self, correct_splice: dict[str, Any]) -> None:
        """A factory candidate's weights keep their names, so its parameter gradients compare."""
        proj = [c for c in correct_splice["report"]["calls"]
                if c["module"] == "generator.proj" and c["phase"] == "backward"][0]
        assert {t["name"] for t in proj["tensors"]} >= {"param.weight", "param.bias"}
        assert proj["status"] == "pass"

    def test_replaced_subtrees_are_reported_only_in_reference(
            self, correct_splice: dict[str, Any]) -> None:
        """Submodules of a replaced module are not run, and are listed as only in the reference."""
        skipped = {c["module"] for c in correct_splice["report"]["calls"]
                   if c["status"] == "skipped"}
        assert "encoder.layers.0.self_attn.softmax" in skipped
        assert all(".self_attn." in m or ".cross_attn." in m for m in skipped)


class TestSpliceBuggy:
    def test_layernorm_bug_grows_and_fails(self, translation_trace: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
        """The unbiased-variance LayerNorm: first divergence at the first LayerNorm, loss off,
        exit 1, and an error-growth table in the output."""
        got = splice_cli(translation_trace, CANDIDATES / "buggy" / "layernorm_unbiased_var.py",
                         tmp_path)
        report = got["report"]
        assert got["code"] == 1
        assert report["first_divergence"]["forward"]["module"] == "encoder.layers.0.self_attn_norm"
        assert report["steps"][0]["status"] == "fail"
        out = capsys.readouterr().out
        assert "error growth" in out and "encoder.layers.0.self_attn_norm#0 *" in out

    def test_batch0_grad_passes_forward_and_loss(self, translation_trace: Path) -> None:
        """The batch-0 softmax backward: forward and loss match, gradients diverge from the last
        cross-attention softmax on, for batch elements 1..B-1."""
        cands = str(CANDIDATES / "buggy" / "softmax_batch0_grad.py")
        rep, rows = splice_run(str(translation_trace), cands, str(RECIPE), step=0)
        bwd = rep.first_divergence("backward")
        assert rep.first_divergence("forward") is None and rep.steps[0].tensors[0].passed
        assert bwd.module == "decoder.layers.1.cross_attn.softmax"
        batch = rep.results[0].tensors[0].shape[0]
        assert bwd.bad_batch_indices == list(range(1, batch))
        assert rows and all(r.status == "pass" for r in rows)

    def test_only_limits_swapped_modules(self, translation_trace: Path) -> None:
        """--only splices just the matching modules: the bug elsewhere stays out."""
        cands = str(CANDIDATES / "buggy" / "layernorm_unbiased_var.py")
        rep, rows = splice_run(str(translation_trace), cands, str(RECIPE), step=0,
                               only=("decoder.norm",))
        assert {r.label for r in rows if r.swapped} == {"decoder.norm#0"}
        assert rep.first_divergence("forward").module == "decoder.norm"


FACTORY = """
    import torch


    def matmul_linear(spec):
        w, b = spec.weights["weight"], spec.weights["bias"]
        return lambda x: torch.matmul(x, w.t()) + b


    CANDIDATES = {"generator.proj": matmul_linear}
"""


class TestGrowthTable:
    def test_rows_in_forward_order_with_depth_filter(self, translation_trace: Path,
                                                     tmp_path: Path) -> None:
        """Growth rows follow completion order; the table shows shallow layers and swapped ones."""
        cands = tmp_path / "factory.py"
        cands.write_text(textwrap.dedent(FACTORY))
        rep, rows = splice_run(str(translation_trace), str(cands), str(RECIPE), step=0)
        labels = [r.label for r in rows]
        assert labels.index("encoder.layers.0#0") < labels.index("encoder#0")
        assert labels[-2:] == ["<root>#0", "criterion#0"]
        console = Console(width=200, record=True)
        console.print(render_growth(rows, max_depth=1))
        text = console.export_text()
        assert "generator.proj#0 *" in text and "encoder.layers.0#0" not in text
        assert rep.ok


class TestSpliceUsage:
    @pytest.mark.parametrize("flag", ["--isolate", "--noise-floor"])
    def test_conflicting_flags(self, flag: str, translation_trace: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
        """Options that make no sense with --splice are usage errors (exit 2, one line)."""
        assert tensortrace("replay", translation_trace, CANDIDATES / "correct.py", "--splice",
                           "--recipe", RECIPE, flag) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and flag in err

    def test_recipe_must_match_trace(self, translation_trace: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
        """A recipe whose model is not the recorded one is refused with one line."""
        recipe = tmp_path / "other.py"
        recipe.write_text("import torch\n\ndef build_model():\n    return torch.nn.Linear(2, 2)\n"
                          "\ndef run_step(model, step):\n    return model(torch.ones(1, 2)).sum()\n")
        assert tensortrace("replay", translation_trace, CANDIDATES / "correct.py", "--splice",
                           "--recipe", recipe) == 2
        assert "does not match" in capsys.readouterr().err
