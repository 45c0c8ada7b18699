"""Isolated replay of the example trace: correct, buggy and reference candidates, the report
files and the command line.

The command line runs through ``tracefmt.cli.main`` in-process, so its error handling (one
line, exit 2) is the real one.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import numpy as np
import pytest
import torch
from torch import nn

import recorder
import tracefmt
from replayer import ReplayOptions, ReplayReport, replay_trace
from tracefmt.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CANDIDATES = EXAMPLES / "candidates"
BUGGY = CANDIDATES / "buggy"
CORRECT = CANDIDATES / "correct.py"


def tensortrace(*argv: object) -> int:
    """The ``tensortrace`` command, in-process: its exit status."""
    return main([str(a) for a in argv])


def batch_size() -> int:
    return recorder.load_recipe(str(EXAMPLES / "translation.py")).module.BATCH_SIZE


def first(report: dict[str, Any], phase: str) -> dict[str, Any] | None:
    return report["first_divergence"][phase]


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def correct_run(translation_trace: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> dict[str, Any]:
    """One CLI replay of the whole trace with the correct candidates, writing every output."""
    out = tmp_path_factory.mktemp("correct")
    paths = {k: out / f"report.{k}" for k in ("json", "xml", "h5")}
    code = tensortrace("replay", translation_trace, CORRECT, "--json", paths["json"],
                       "--junit", paths["xml"], "--results", paths["h5"], "-q")
    return {"code": code, **paths, "report": json.loads(paths["json"].read_text())}


@pytest.fixture(scope="module")
def batch0_run(translation_trace: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> dict[str, Any]:
    """One CLI replay of step 0 with the softmax whose backward only fills batch element 0."""
    out = tmp_path_factory.mktemp("batch0")
    paths = {k: out / f"report.{k}" for k in ("json", "xml", "h5")}
    code = tensortrace("replay", translation_trace, BUGGY / "softmax_batch0_grad.py",
                       "--step", 0, "--json", paths["json"], "--junit", paths["xml"],
                       "--results", paths["h5"], "-q")
    return {"code": code, **paths, "report": json.loads(paths["json"].read_text())}


class TestCorrectCandidates:
    def test_every_call_passes_and_exit_0(self, correct_run: dict[str, Any]) -> None:
        """The correct candidate set replays every matched call of both steps without a failure."""
        s = correct_run["report"]["summary"]
        assert correct_run["code"] == 0
        assert s["calls"] > 0 and s["passed"] == s["calls"]
        assert {c["step"] for c in correct_run["report"]["calls"]} == {0, 1}
        assert first(correct_run["report"], "forward") is None
        assert first(correct_run["report"], "backward") is None

    def test_parameter_gradients_are_compared(self, correct_run: dict[str, Any]) -> None:
        """Backward results carry parameter-gradient comparisons (summed over a module's calls)."""
        names = {t["name"] for c in correct_run["report"]["calls"] if c["phase"] == "backward"
                 for t in c["tensors"]}
        assert {"param.weight", "param.bias", "param.q_proj.weight"} <= names


BUGGY_EXPECTED = {
    "attention_mask_inverted.py": ("forward", "encoder.layers.0.self_attn"),
    "layernorm_unbiased_var.py": ("forward", "encoder.layers.0.self_attn_norm"),
    "linear_transposed_weight.py": ("forward", "encoder.layers.0.self_attn.q_proj"),
    "softmax_no_max_subtraction.py": ("forward", "encoder.layers.0.self_attn.softmax"),
    "softmax_wrong_dim.py": ("forward", "encoder.layers.0.self_attn.softmax"),
    "softmax_batch0_grad.py": ("backward", "decoder.layers.1.cross_attn.softmax"),
}


class TestBuggyCandidates:
    @pytest.mark.parametrize("name", sorted(BUGGY_EXPECTED))
    def test_first_divergence(self, name: str, translation_trace: Path, tmp_path: Path) -> None:
        """Each buggy set exits 1 and names the layer and phase its docstring says."""
        phase, module = BUGGY_EXPECTED[name]
        out = tmp_path / "r.json"
        code = tensortrace("replay", translation_trace, BUGGY / name, "--step", 0,
                           "--json", out, "-q")
        report = json.loads(out.read_text())
        assert code == 1
        got = first(report, phase)
        assert got is not None and (got["module"], got["phase"]) == (module, phase)
        assert got["status"] == "fail"
        if phase == "forward":
            assert got["call"] == min(c["call"] for c in report["calls"] if c["status"] == "fail")

    def test_batch0_grad_bad_batch_elements(self, batch0_run: dict[str, Any]) -> None:
        """The batch-0-only softmax backward: forward passes, backward fails for elements 1..B-1."""
        report = batch0_run["report"]
        assert batch0_run["code"] == 1
        assert first(report, "forward") is None
        assert all(c["status"] == "pass" for c in report["calls"] if c["phase"] == "forward")
        bwd = first(report, "backward")
        assert bwd["bad_batch_indices"] == list(range(1, batch_size()))
        assert bwd["tensors"][0]["bad_batch_indices"] == list(range(1, batch_size()))

    def test_batch0_grad_first_in_forward_call_order(self, batch0_run: dict[str, Any]) -> None:
        """By forward call order the first failing backward is the first attention softmax."""
        failing = [c for c in batch0_run["report"]["calls"]
                   if c["phase"] == "backward" and c["status"] == "fail"]
        assert min(failing, key=lambda c: c["call"])["module"] == "encoder.layers.0.self_attn.softmax"

    def test_dropout_in_eval_caught_in_eval_trace(self, translation_eval_trace: Path,
                                                  translation_trace: Path) -> None:
        """Always-on dropout fails at the first Dropout's forward in eval mode only."""
        cands = str(BUGGY / "dropout_in_eval.py")
        ev = replay_trace(str(translation_eval_trace), cands)
        assert (ev.first_divergence("forward").module, ev.ok) == ("pos_enc.drop", False)
        tr = replay_trace(str(translation_trace), cands, options=ReplayOptions(step=0))
        assert tr.ok


NO_MAX_SOFTMAX = """
    import torch
    from torch import nn


    class NoMaxSoftmax(nn.Module):
        def __init__(self, dim=None):
            super().__init__()
            self.dim = dim

        def forward(self, x):
            e = torch.exp(x)
            return e / e.sum(self.dim, keepdim=True)


    CANDIDATES = {"torch.nn.Softmax": NoMaxSoftmax}
"""


@pytest.fixture(scope="module")
def large_logits_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Linear into a Softmax whose logits reach the hundreds (exp overflows float32)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Softmax(dim=-1))
    with torch.no_grad():
        model[0].weight.mul_(200.0)
    path = tmp_path_factory.mktemp("logits") / "logits.h5"
    with recorder.record(model, path) as rec:
        x = torch.randn(4, 16)
        rec.backward((model(x) * torch.arange(16.0)).sum())
        rec.step()
    return path


class TestMissingMaxSubtraction:
    def test_float32_no_max_passes_on_small_logits(self, translation_trace: Path,
                                                   tmp_path: Path) -> None:
        """Without max-subtraction float32 softmax is right on the example's small logits."""
        cands = write(tmp_path / "nomax.py", NO_MAX_SOFTMAX)
        rep = replay_trace(str(translation_trace), str(cands), options=ReplayOptions(step=0))
        assert rep.ok and rep.counts()["calls"] > 0

    def test_float32_no_max_fails_on_large_logits(self, large_logits_trace: Path,
                                                  tmp_path: Path) -> None:
        """On logits in the hundreds it overflows: NaN at the softmax's forward."""
        cands = write(tmp_path / "nomax.py", NO_MAX_SOFTMAX)
        rep = replay_trace(str(large_logits_trace), str(cands))
        bad = rep.first_divergence("forward")
        assert bad is not None and bad.module == "1"
        assert bad.tensors[0].nan_cand > 0 and bad.tensors[0].nan_ref == 0


class KeyAttention(nn.Module):
    """Softmax attention over the keys: the key projection's bias has an exactly zero gradient
    (the softmax ignores a shift shared by all keys), so what is recorded is rounding noise."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.k_proj = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.q_proj(x) @ self.k_proj(x).transpose(-1, -2) / 4
        return scores.softmax(dim=-1) @ x


@pytest.fixture(scope="module")
def key_bias_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = KeyAttention()
    path = tmp_path_factory.mktemp("keys") / "keys.h5"
    x, w = torch.randn(16, 256, 16), torch.randn(16, 256, 16)
    with recorder.record(model, path) as rec:
        rec.backward((model(x) * w).sum())
        rec.step()
    return path


NEAR_LINEAR = """
    import torch
    from torch import nn


    class Near(nn.Linear):
        def forward(self, x):
            return super().forward(x) * (1 + 2**-22)  # two ULP off: float noise, not a bug


    class BiasFromBatch0(nn.Linear):
        def forward(self, x):
            b = torch.cat([self.bias.expand(1, 1, -1),
                           self.bias.detach().expand(x.shape[0] - 1, 1, -1)])
            return x @ self.weight.t() + b


    CANDIDATES = {"k_proj": Near, "q_proj": %s}
"""


class TestParamGradTolerance:
    def test_noise_in_a_cancelling_bias_gradient_passes(self, key_bias_trace: Path,
                                                       tmp_path: Path) -> None:
        """A key bias gradient (zero up to rounding) 2 ULP off is judged by its terms' size."""
        cands = write(tmp_path / "near.py", NEAR_LINEAR % "Near")
        rep = replay_trace(str(key_bias_trace), str(cands))
        with tracefmt.open_trace(key_bias_trace) as r:
            bias = r.read(r.param_grads(0).grads["k_proj.bias"])
        assert 0 < np.abs(bias).max() < 1e-4  # noise: the grad output's entries are ~1
        assert rep.ok, [(x.label, x.phase, [t.name for t in x.tensors if not t.passed])
                        for x in rep.results if x.status != "pass"]

    def test_a_bias_gradient_from_batch_element_0_only_fails(self, key_bias_trace: Path,
                                                            tmp_path: Path) -> None:
        """The broadcast-sum scale still catches a bias gradient missing 15 of 16 elements."""
        cands = write(tmp_path / "batch0.py", NEAR_LINEAR % "BiasFromBatch0")
        rep = replay_trace(str(key_bias_trace), str(cands))
        bad = rep.first_divergence("backward")
        assert bad is not None and bad.module == "q_proj"
        assert [t.name for t in bad.tensors if not t.passed] == ["param.bias"]


class TestReferenceClassesAsCandidates:
    def test_own_classes_pass(self, translation_trace: Path, tmp_path: Path) -> None:
        """Mapping every class in the trace to itself replays every call of step 0 exactly."""
        with tracefmt.open_trace(translation_trace) as reader:
            types = sorted({m.type for m in reader.modules})
            n_calls = sum(1 for c in reader.call_ids if reader.call_step(c) == 0)
        lines = [f"import sys\nsys.path.insert(0, {str(EXAMPLES)!r})\nimport torch\n"
                 "import translation\nCANDIDATES = {}"]
        for t in types:
            mod, _, cls = t.rpartition(".")
            short = "torch.nn" if mod.startswith("torch.nn.") else mod
            lines.append(f"CANDIDATES[{short + '.' + cls!r}] = {short}.{cls}")
        cands = write(tmp_path / "own.py", "\n".join(lines) + "\n")
        rep = replay_trace(str(translation_trace), str(cands), options=ReplayOptions(step=0))
        fwd = [r for r in rep.results if r.phase == "forward"]
        assert len(fwd) == n_calls
        assert rep.ok, [(r.label, r.phase, r.error) for r in rep.results if r.status != "pass"]


RAISING = """
    from torch import nn


    class Raising(nn.Softmax):
        def forward(self, x):
            raise RuntimeError("kernel launch failed: bad grid")


    CANDIDATES = {"encoder.layers.0.self_attn.softmax": Raising, "torch.nn.Softmax": nn.Softmax}
"""


class TestCandidateErrors:
    def test_raise_is_an_error_result_and_replay_goes_on(self, translation_trace: Path,
                                                         tmp_path: Path) -> None:
        """A raising candidate gives an error with its traceback; later calls still run; exit 1."""
        cands = write(tmp_path / "raising.py", RAISING)
        out = tmp_path / "r.json"
        code = tensortrace("replay", translation_trace, cands, "--step", 0, "--only", "*softmax",
                           "--json", out, "-q")
        report = json.loads(out.read_text())
        assert code == 1
        err = first(report, "forward")
        assert (err["module"], err["status"]) == ("encoder.layers.0.self_attn.softmax", "error")
        assert "RuntimeError: kernel launch failed" in err["error"]
        assert 'raise RuntimeError("kernel launch failed' in err["traceback"]
        others = [c for c in report["calls"] if c["module"] != err["module"]]
        assert others and all(c["status"] == "pass" for c in others)
        assert report["summary"]["errors"] == 1


FACTORY = """
    import torch


    def matmul_linear(spec):
        weight, bias = spec.weights["weight"], spec.weights["bias"]
        return lambda x: torch.matmul(x, weight.t()) + bias


    CANDIDATES = {"*.ffn.fc1": matmul_linear}
"""

FUSED_QKV = """
    import math

    import torch
    from torch import nn
    from torch.nn import functional as F

    from replayer import load_mapped_weights


    def _cat(*names):
        return lambda w: torch.cat([w[n] for n in names])


    class FusedQKVAttention(nn.Module):
        def __init__(self, d_model, n_heads, dropout):
            super().__init__()
            self.d_model, self.n_heads, self.p = d_model, n_heads, dropout
            self.qkv = nn.Linear(d_model, 3 * d_model)
            self.out = nn.Linear(d_model, d_model)

        def load_state_dict(self, state_dict, strict=True, assign=False):
            names = [f"{x}_proj.{k}" for x in "qkv" for k in ("weight", "bias")]
            load_mapped_weights(self, state_dict, {
                "qkv.weight": _cat(*names[0::2]), "qkv.bias": _cat(*names[1::2]),
                "out.weight": "out_proj.weight", "out.bias": "out_proj.bias"}, strict=strict)

        def forward(self, query, key, value, *, key_padding_mask=None, causal=False):
            d, h = self.d_model, self.n_heads
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(query, w[:d], b[:d])
            k = F.linear(key, w[d:2 * d], b[d:2 * d])
            v = F.linear(value, w[2 * d:], b[2 * d:])
            q, k, v = (t.unflatten(-1, (h, d // h)).transpose(1, 2) for t in (q, k, v))
            scores = q @ k.transpose(-2, -1) / math.sqrt(d // h)
            if key_padding_mask is not None:
                scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
            if causal:
                scores = scores.masked_fill(
                    torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
            weights = F.dropout(torch.softmax(scores, -1), self.p, self.training)
            return self.out((weights @ v).transpose(1, 2).flatten(2))


    CANDIDATES = {"translation.MultiHeadAttention": FusedQKVAttention}
"""


class TestFactoryCandidate:
    def test_factory_passes_with_parameter_gradients(self, translation_trace: Path,
                                                     tmp_path: Path) -> None:
        """A factory candidate's closure weights get gradients compared with the recorded ones."""
        cands = write(tmp_path / "factory.py", FACTORY)
        rep = replay_trace(str(translation_trace), str(cands), options=ReplayOptions(step=0))
        bwd = [r for r in rep.results if r.phase == "backward"]
        assert rep.ok and bwd
        assert all({"param.weight", "param.bias"} <= {t.name for t in r.tensors} for r in bwd)


class TestLoadMappedWeights:
    def test_fused_qkv_candidate_passes(self, translation_trace: Path, tmp_path: Path) -> None:
        """A fused-qkv attention loads q/k/v weights through load_mapped_weights and matches."""
        cands = write(tmp_path / "fused.py", FUSED_QKV)
        rep = replay_trace(str(translation_trace), str(cands), options=ReplayOptions(step=0))
        assert rep.counts()["calls"] == 12
        assert rep.ok, [(r.label, r.phase, r.error) for r in rep.results if r.status != "pass"]
        names = {t.name for r in rep.results for t in r.tensors}
        assert "param.out.weight" not in names and "param.qkv.weight" not in names
        assert {"args.0", "args.1", "args.2"} <= names


class TestJsonReport:
    CALL_KEYS = {"call", "module", "type", "phase", "status", "tensors"}
    TENSOR_KEYS = {"name", "max_abs_err", "max_rel_err", "mismatch_fraction", "cosine",
                   "ulp_max", "nan_ref", "nan_cand", "bad_batch_indices"}

    def test_schema(self, batch0_run: dict[str, Any]) -> None:
        """The JSON report has the documented top-level keys, summary and call/tensor fields."""
        report = batch0_run["report"]
        assert set(report) == {"trace", "candidates", "device", "mode", "tolerances", "summary",
                               "first_divergence", "calls", "steps"}
        assert set(report["summary"]) == {"calls", "passed", "failed", "errors", "skipped"}
        assert set(report["first_divergence"]) == {"forward", "backward"}
        assert report["summary"]["calls"] == len(report["calls"])
        assert sum(report["summary"][k] for k in ("passed", "failed", "errors", "skipped")) \
            == len(report["calls"])
        for call in [*report["calls"], first(report, "backward")]:
            assert set(call) >= self.CALL_KEYS
            for t in call["tensors"]:
                assert set(t) >= self.TENSOR_KEYS

    def test_first_divergence_is_a_call_entry(self, batch0_run: dict[str, Any]) -> None:
        """first_divergence.backward equals the matching entry of calls."""
        report = batch0_run["report"]
        bwd = first(report, "backward")
        same = [c for c in report["calls"] if (c["call"], c["phase"]) == (bwd["call"], "backward")]
        assert same == [bwd]


class TestJunit:
    def test_one_testcase_per_call_result(self, batch0_run: dict[str, Any]) -> None:
        """The JUnit XML parses, has a test case per call result and a failure per failed one."""
        root = ET.parse(batch0_run["xml"]).getroot()
        cases = root.findall(".//testcase")
        report = batch0_run["report"]
        assert len(cases) == len(report["calls"])
        assert len(root.findall(".//testcase/failure")) == report["summary"]["failed"] > 0
        failure = root.find(".//testcase/failure")
        assert "Mismatched elements" in failure.get("message")


class TestResultsFile:
    def test_opens_and_holds_candidate_tensors(self, batch0_run: dict[str, Any],
                                               translation_trace: Path) -> None:
        """The results file opens with tracefmt and holds the candidate's outputs and gradients."""
        report = batch0_run["report"]
        bwd = first(report, "backward")
        with tracefmt.open_results(batch0_run["h5"]) as res, \
                tracefmt.open_trace(translation_trace) as reader:
            assert res.report["summary"] == report["summary"]
            call = reader.call(bwd["call"])
            out = res.candidate(bwd["call"], "forward", "outputs")
            grad = res.candidate(bwd["call"], "backward", "args.0")
            ref_grad = reader.read(dict(tracefmt.iter_tensor_leaves(
                call.backward.grad_args, "args"))["args.0"])
        assert out is not None and out.shape == ref_grad.shape
        assert grad is not None and (grad[0] != 0).any() and not grad[1:].any()


class TestSelectionOptions:
    def test_only_and_step(self, translation_trace: Path, tmp_path: Path) -> None:
        """--only keeps matching module paths, --step keeps one step."""
        out = tmp_path / "r.json"
        code = tensortrace("replay", translation_trace, CORRECT, "--only", "*.self_attn_norm",
                           "--only", "encoder.norm", "--step", 1, "--json", out, "-q")
        calls = json.loads(out.read_text())["calls"]
        assert code == 0
        assert {c["step"] for c in calls} == {1}
        assert {c["module"] for c in calls} == {
            "encoder.norm", *(f"{s}.layers.{i}.self_attn_norm"
                              for s in ("encoder", "decoder") for i in (0, 1))}

    def test_rtol_passes_float16_rounding_and_is_reported(self, translation_trace: Path,
                                                          tmp_path: Path) -> None:
        """--rtol loosens every tensor: float16 rounding passes at 1e-2; the report says so."""
        out = tmp_path / "r.json"
        args = ("replay", translation_trace, BUGGY / "softmax_no_max_subtraction.py",
                "--step", 0, "--only", "encoder.*", "--json", out, "-q")
        assert tensortrace(*args) == 1
        assert tensortrace(*args, "--rtol", "1e-2", "--atol", "1e-3") == 0
        report = json.loads(out.read_text())
        assert report["tolerances"]["global"] == {"rtol": 1e-2, "atol": 1e-3}
        assert report["calls"][0]["tensors"][0]["rtol_used"] == 1e-2

    def test_module_tolerance_override(self, translation_trace: Path, tmp_path: Path) -> None:
        """--tol GLOB:rtol=... loosens only matching modules: the first divergence moves on."""
        out = tmp_path / "r.json"
        code = tensortrace("replay", translation_trace, BUGGY / "softmax_no_max_subtraction.py",
                           "--step", 0, "--tol", "encoder.*:rtol=1e-2,atol=1e-3", "--json", out,
                           "-q")
        report = json.loads(out.read_text())
        assert code == 1
        assert first(report, "forward")["module"] == "decoder.layers.0.self_attn.softmax"
        assert report["tolerances"]["modules"] == [
            {"pattern": "encoder.*", "rtol": 1e-2, "atol": 1e-3}]

    def test_terminal_report_states_tolerances(self, translation_trace: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
        """The terminal summary names the overrides in force."""
        tensortrace("replay", translation_trace, CORRECT, "--step", 0, "--only", "encoder.norm",
                    "--rtol", "1e-4")
        assert "tolerances: rtol=0.0001" in capsys.readouterr().out


class TestNoiseFloor:
    def test_float64_attention_passes_and_bug_fails(self, translation_trace: Path) -> None:
        """Judged against a float64 recomputation, float64 internals pass; an inverted mask fails."""
        opts = ReplayOptions(step=0, only=("encoder.*",), noise_floor=True)
        good = replay_trace(str(translation_trace), str(CORRECT), options=opts)
        attn = [r for r in good.results if r.module.endswith("self_attn")]
        assert good.ok and attn and all(t.mode == "noise" for r in attn for t in r.tensors)
        bad = replay_trace(str(translation_trace), str(BUGGY / "attention_mask_inverted.py"),
                           options=opts)
        assert bad.first_divergence("forward").module == "encoder.layers.0.self_attn"


class TestUsageErrors:
    @pytest.mark.parametrize("case", ["missing trace", "missing candidates", "no CANDIDATES",
                                      "cuda", "splice without recipe", "bad tolerance"])
    def test_exit_2_one_line(self, case: str, translation_trace: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
        """Usage and input errors exit 2 with one line on stderr and no traceback."""
        if case == "cuda" and torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        empty = write(tmp_path / "empty.py", "X = 1\n")
        argv = {
            "missing trace": [tmp_path / "nope.h5", CORRECT],
            "missing candidates": [translation_trace, tmp_path / "nope.py"],
            "no CANDIDATES": [translation_trace, empty],
            "cuda": [translation_trace, CORRECT, "--device", "cuda"],
            "splice without recipe": [translation_trace, CORRECT, "--splice"],
            "bad tolerance": [translation_trace, CORRECT, "--tol", "rtol=abc"],
        }[case]
        assert tensortrace("replay", *argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err and err.startswith("tensortrace: error:")


class TestCallResultRoundTrip:
    def test_from_dict_inverts_to_dict(self, batch0_run: dict[str, Any]) -> None:
        """CallResult.from_dict(to_dict()) rebuilds the same result (how --isolate ships them)."""
        from replayer import CallResult

        for d in batch0_run["report"]["calls"]:
            assert CallResult.from_dict(d).to_dict() == d

    def test_report_ok_needs_passing_steps(self) -> None:
        """A report whose step results fail (diff, splice) is not ok even with no failed call."""
        from replayer._compare import compare_tensors
        from replayer._report import StepResult

        loss = compare_tensors(np.float64(1.0), np.float64(2.0), dtype="float32", name="loss",
                               batch_dim=None)
        rep = ReplayReport("a", "b", "", [], steps=[StepResult(0, 1.0, 2.0, [loss])])
        assert not rep.ok and rep.to_dict()["steps"][0]["status"] == "fail"

