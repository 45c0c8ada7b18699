"""The translation recipe and the example candidate sets behave as their docstrings claim.

Candidates are built the way the replayer builds them (reference constructor arguments,
strict ``load_state_dict``, or a factory given a spec) and fed inputs captured from a real
forward pass of the recipe with forward hooks.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor, nn

if not torch.cuda.is_available():
    # Chosen at collection, before any test builds an optimizer (which imports triton).
    os.environ.setdefault("TRITON_INTERPRET", "1")

FLOAT32_RTOL = 1.3e-6
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CANDIDATES_DIR = EXAMPLES / "candidates"
BUGGY_DIR = CANDIDATES_DIR / "buggy"
CANDIDATE_FILES = sorted(CANDIDATES_DIR.glob("*.py")) + sorted(BUGGY_DIR.glob("*.py"))


def load_file(path: Path, name: str) -> ModuleType:
    """Import ``path`` as module ``name`` (as the replayer does), reusing an earlier import."""
    existing = sys.modules.get(name)
    if existing is not None and Path(getattr(existing, "__file__", "")) == path:
        return existing
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_candidates(path: Path) -> ModuleType:
    """A candidates file under a private module name derived from its path."""
    stem = "_".join(path.relative_to(CANDIDATES_DIR).with_suffix("").parts)
    return load_file(path, f"_tt_example_candidates_{stem}")


translation = load_file(EXAMPLES / "translation.py", "translation")


@dataclass
class Call:
    """One recorded module call: the live reference module and detached copies of its inputs."""

    path: str
    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    @property
    def device(self) -> torch.device:
        return next(a.device for a in self.args if isinstance(a, Tensor))

    def to(self, device: torch.device | str) -> Call:
        """The same call with the module and every tensor input moved to ``device``."""

        def move(value: Any) -> Any:
            return value.to(device) if isinstance(value, Tensor) else value

        return Call(
            self.path,
            copy.deepcopy(self.module).to(device),
            tuple(move(a) for a in self.args),
            {k: move(v) for k, v in self.kwargs.items()},
        )


@dataclass
class Replay:
    """What a forward + backward replay produced."""

    output: Tensor
    input_grads: list[Tensor | None]
    param_grads: dict[str, Tensor | None]
    input_scale: float


def _detach(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, Tensor) else value


def capture_calls(model: nn.Module, step: int = 0) -> dict[str, Call]:
    """First call of every submodule during an eval-mode ``run_step`` (dropout is identity)."""
    calls: dict[str, Call] = {}
    handles = []
    for path, module in model.named_modules():
        if not path:
            continue

        def hook(mod: nn.Module, args: tuple, kwargs: dict, _out: Any, path: str = path) -> None:
            if path not in calls:
                detached = {k: _detach(v) for k, v in kwargs.items()}
                calls[path] = Call(path, mod, tuple(_detach(a) for a in args), detached)

        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    model.eval()
    with torch.no_grad():
        translation.run_step(model, step)
    for handle in handles:
        handle.remove()
    return calls


def qualified_names(module: nn.Module) -> set[str]:
    """The class keys a replayer accepts: full qualified name and the torch.nn public alias."""
    cls = type(module)
    names = {f"{cls.__module__}.{cls.__qualname__}"}
    if cls.__module__.startswith("torch.nn.modules."):
        names.add(f"torch.nn.{cls.__qualname__}")
    return names


def key_matches(key: str, call: Call) -> bool:
    """A candidate key selects a call by class name or by a glob over the module path."""
    return key in qualified_names(call.module) or fnmatchcase(call.path, key)


def ctor_args(module: nn.Module) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The constructor arguments a recorder would have captured for ``module``."""
    if isinstance(module, nn.LayerNorm):
        kwargs = {"eps": module.eps, "elementwise_affine": module.elementwise_affine}
        return (module.normalized_shape,), {**kwargs, "bias": module.bias is not None}
    if isinstance(module, nn.Softmax):
        return (), {"dim": module.dim}
    if isinstance(module, nn.Linear):
        return (module.in_features, module.out_features), {"bias": module.bias is not None}
    if isinstance(module, nn.Dropout):
        return (), {"p": module.p, "inplace": module.inplace}
    names = list(inspect.signature(type(module).__init__).parameters)[1:]
    return tuple(getattr(module, name) for name in names), {}


def build(candidate: object, call: Call) -> tuple[Callable[..., Tensor], dict[str, Tensor]]:
    """Build a candidate per the replayer rules; returns it and the tensors holding its grads."""
    args, kwargs = ctor_args(call.module)
    if isinstance(candidate, type) and issubclass(candidate, nn.Module):
        built = candidate(*args, **kwargs)
        built.load_state_dict(call.module.state_dict(), strict=True)
        built.to(call.device).train(call.module.training)
        return built, dict(built.named_parameters())
    param_names = {name for name, _ in call.module.named_parameters()}
    weights = {
        name: t.detach().clone().requires_grad_(name in param_names)
        for name, t in call.module.state_dict().items()
    }
    spec = SimpleNamespace(
        path=call.path,
        type=sorted(qualified_names(call.module))[0],
        args=args,
        kwargs=kwargs,
        weights=weights,
        device=call.device,
    )
    assert callable(candidate)
    return candidate(spec), {n: w for n, w in weights.items() if w.requires_grad}


def reference(call: Call) -> tuple[nn.Module, dict[str, Tensor]]:
    """A private copy of the reference module, so grads never accumulate across tests."""
    module = copy.deepcopy(call.module)
    return module, dict(module.named_parameters())


def max_abs(tensors: Iterable[Any]) -> float:
    """Largest finite magnitude over the floating tensors in ``tensors`` (0 if none)."""
    found = [
        t.detach()[t.isfinite()].abs().max().item()
        for t in tensors
        if isinstance(t, Tensor) and t.is_floating_point() and t.isfinite().any()
    ]
    return max(found, default=0.0)


def replay(
    fn: Callable[..., Tensor], call: Call, params: dict[str, Tensor], backward: bool = True
) -> Replay:
    """Run ``fn`` on fresh leaf copies of the recorded inputs, then backward a fixed grad."""
    leaves = [
        a.clone().requires_grad_(True) if isinstance(a, Tensor) and a.is_floating_point() else a
        for a in call.args
    ]
    output = fn(*leaves, **call.kwargs)
    grad = torch.zeros(0)
    if backward:
        gen = torch.Generator().manual_seed(0)
        grad = torch.randn(output.shape, generator=gen, dtype=output.dtype)
        output.backward(grad.to(output.device))
    grads = [leaf.grad if isinstance(leaf, Tensor) else None for leaf in leaves]
    scale = max_abs([*leaves, *params.values(), grad])
    return Replay(output.detach(), grads, {n: p.grad for n, p in params.items()}, scale)


def replay_pair(candidate: object, call: Call, backward: bool = True) -> tuple[Replay, Replay]:
    """The reference and the candidate replayed on the same recorded call."""
    ref_fn, ref_params = reference(call)
    cand_fn, cand_params = build(candidate, call)
    return replay(ref_fn, call, ref_params, backward), replay(cand_fn, call, cand_params, backward)


def assert_float32_close(got: Tensor | None, ref: Tensor | None, scale: float, what: str) -> None:
    """Normwise float32 agreement: error within rtol of the largest magnitude involved.

    ``scale`` covers the inputs too, so a result that is zero in exact arithmetic (the key
    bias gradient of attention) is judged against the size of what produced its noise.
    """
    assert got is not None and ref is not None, f"{what}: missing"
    atol = FLOAT32_RTOL * max(scale, max_abs([ref]))
    torch.testing.assert_close(
        got, ref, rtol=FLOAT32_RTOL, atol=atol, msg=lambda default: f"{what}: {default}"
    )


def assert_replays_close(ref: Replay, got: Replay) -> None:
    """Output, every input grad and every parameter grad agree within float32 tolerance."""
    scale = max(ref.input_scale, got.input_scale)
    assert_float32_close(got.output, ref.output, scale, "output")
    for index, (ref_grad, got_grad) in enumerate(zip(ref.input_grads, got.input_grads)):
        if ref_grad is not None or got_grad is not None:
            assert_float32_close(got_grad, ref_grad, scale, f"grad of input {index}")
    assert got.param_grads.keys() == ref.param_grads.keys()
    for name, ref_grad in ref.param_grads.items():
        assert_float32_close(got.param_grads[name], ref_grad, scale, f"grad of {name}")


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """One intra-op thread: these tensors are tiny, and spinning threads on a busy host cost 10x."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def calls() -> dict[str, Call]:
    """Every submodule's first call in one eval-mode step of the freshly built model."""
    return capture_calls(translation.build_model())


def matching_calls(calls: dict[str, Call], key: str) -> Iterator[Call]:
    selected = [call for call in calls.values() if key_matches(key, call)]
    assert selected, f"candidate key {key!r} matches no module of the recipe"
    return iter(selected)


def max_abs_diff(a: Tensor, b: Tensor) -> float:
    return (a - b).abs().nan_to_num(math.inf).max().item()


class TestRecipe:
    """The recipe's public functions and model."""

    def test_build_model_is_deterministic(self) -> None:
        """Two builds produce identical weights, whatever the global RNG state was."""
        first = translation.build_model().state_dict()
        torch.rand(10)
        second = translation.build_model().state_dict()
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first)

    def test_step_returns_finite_scalar_loss_with_grads(self) -> None:
        """run_step gives a finite scalar and backward reaches every parameter."""
        model = translation.build_model()
        loss = translation.run_step(model, 0)
        assert loss.dim() == 0 and torch.isfinite(loss)
        assert all(p.grad is None for p in model.parameters())
        loss.backward()
        for name, param in model.named_parameters():
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
            assert param.grad.abs().sum() > 0, name

    def test_training_lowers_loss(self) -> None:
        """80 Adam steps take the loss clearly below where it started."""
        losses = translation.train(translation.build_model(), 80)
        assert len(losses) == 80 and all(math.isfinite(x) for x in losses)
        assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10

    def test_batches_are_deterministic_per_step(self) -> None:
        """A step's batch is a function of the step alone, and steps differ."""
        src_a, tgt_a = translation.make_batch(5)
        torch.rand(10)
        src_b, tgt_b = translation.make_batch(5)
        assert torch.equal(src_a, src_b) and torch.equal(tgt_a, tgt_b)
        assert not torch.equal(src_a, translation.make_batch(6)[0])

    def test_batches_are_padded_translations(self) -> None:
        """Lengths vary, PAD fills the tail, and targets are BOS + mapped reversal + EOS."""
        pad, bos, eos = translation.PAD, translation.BOS, translation.EOS
        src, tgt = translation.make_batch(3)
        assert src.dtype == tgt.dtype == torch.long
        assert src.shape == (translation.BATCH_SIZE, translation.MAX_SRC_LEN)
        assert tgt.shape == (translation.BATCH_SIZE, translation.MAX_LEN) and tgt.shape[1] <= 10
        lengths = (src != pad).sum(1)
        assert (src == pad).any() and len(set(lengths.tolist())) > 1
        for row, length in enumerate(lengths.tolist()):
            assert (src[row, length:] == pad).all() and (src[row, :length] != pad).all()
            expected = translation.translate_tokens(src[row, :length].flip(0))
            assert tgt[row, 0] == bos and tgt[row, length + 1] == eos
            assert torch.equal(tgt[row, 1 : length + 1], expected)
            assert (tgt[row, length + 2 :] == pad).all()

    def test_padding_and_causal_masks_are_applied(self) -> None:
        """Trailing source padding and future target tokens do not change the output."""
        model = translation.build_model().eval()
        src, tgt = translation.make_batch(0)
        tgt_in = tgt[:, :-1]
        short = 1
        length = int((src[short] != translation.PAD).sum())
        assert length < src.shape[1]
        changed_future = tgt_in.clone()
        changed_future[:, -1] = 5
        with torch.no_grad():
            base = model(src, tgt_in)
            trimmed = model(src[short : short + 1, :length], tgt_in[short : short + 1])
            causal = model(src, changed_future)
        torch.testing.assert_close(trimmed[0], base[short])
        torch.testing.assert_close(causal[:, :-1], base[:, :-1])
        assert not torch.allclose(causal[:, -1], base[:, -1])

    def test_recipe_modules_keep_plain_constructor_args(self) -> None:
        """Every recipe module's constructor args are plain values on same-named attributes."""
        model = translation.build_model()
        recipe_modules = [m for m in model.modules() if type(m).__module__ == "translation"]
        assert {type(m).__name__ for m in recipe_modules} >= {
            "TokenEmbedding",
            "PositionalEncoding",
            "MultiHeadAttention",
            "FeedForward",
            "EncoderLayer",
            "DecoderLayer",
            "Encoder",
            "Decoder",
            "Generator",
            "TranslationModel",
        }
        for module in recipe_modules:
            args, _ = ctor_args(module)
            assert all(isinstance(a, (int, float, bool)) for a in args), type(module)
            rebuilt = type(module)(*args)
            assert rebuilt.state_dict().keys() == module.state_dict().keys()

    def test_attention_gets_masks_as_keyword_arguments(self, calls: dict[str, Call]) -> None:
        """Attention calls carry key_padding_mask and causal as kwargs, not positionals."""
        self_attn = calls["decoder.layers.0.self_attn"]
        assert len(self_attn.args) == 3
        assert self_attn.kwargs["causal"] is True
        assert self_attn.kwargs["key_padding_mask"].dtype == torch.bool
        cross = calls["decoder.layers.0.cross_attn"]
        assert "causal" not in cross.kwargs and cross.kwargs["key_padding_mask"].any()

    def test_loss_is_a_recorded_module_call(self, calls: dict[str, Call]) -> None:
        """The NLL loss runs as the model's ``criterion`` submodule, so hooks see it."""
        assert isinstance(calls["criterion"].module, nn.NLLLoss)
        assert calls["criterion"].module.ignore_index == translation.PAD


class TestCandidateFiles:
    """Every candidates file follows the file contract."""

    @pytest.mark.parametrize("path", CANDIDATE_FILES, ids=lambda p: p.stem)
    def test_file_declares_candidates_that_match_the_model(
        self, path: Path, calls: dict[str, Call]
    ) -> None:
        """A docstring, a CANDIDATES dict of module classes or factories, keys that match."""
        module = load_candidates(path)
        assert module.__doc__ and module.__doc__.strip()
        assert isinstance(module.CANDIDATES, dict)
        if not module.CANDIDATES:
            assert isinstance(module.UNAVAILABLE, str)
        for key, value in module.CANDIDATES.items():
            assert isinstance(key, str) and callable(value)
            next(matching_calls(calls, key))


class TestCorrectCandidates:
    """examples/candidates/correct.py matches the reference to float32 rounding."""

    module = load_candidates(CANDIDATES_DIR / "correct.py")

    @pytest.mark.parametrize("key", sorted(module.CANDIDATES))
    def test_candidate_matches_reference_forward_and_backward(
        self, key: str, calls: dict[str, Call]
    ) -> None:
        """On every matching recorded call: same output, input grads and parameter grads."""
        for call in matching_calls(calls, key):
            assert_replays_close(*replay_pair(self.module.CANDIDATES[key], call))

    def test_attention_draws_the_reference_dropout_mask(self, calls: dict[str, Call]) -> None:
        """In training mode with the same RNG state the attention candidate drops the same."""
        call = calls["decoder.layers.0.cross_attn"]
        ref, _ = reference(call)
        cand, _ = build(self.module.CANDIDATES["translation.MultiHeadAttention"], call)
        ref.train()
        cand.train()
        torch.manual_seed(3)
        expected = ref(*call.args, **call.kwargs)
        torch.manual_seed(3)
        torch.testing.assert_close(cand(*call.args, **call.kwargs), expected)


@pytest.fixture(scope="module")
def triton_candidates() -> ModuleType:
    """The Triton candidates file, skipping the test where its kernels cannot run."""
    module = load_candidates(CANDIDATES_DIR / "triton_kernels.py")
    if getattr(module, "UNAVAILABLE", None):
        pytest.skip(module.UNAVAILABLE)
    return module


class TestTritonCandidates:
    """examples/candidates/triton_kernels.py: Triton kernels forward and backward."""

    @pytest.mark.parametrize("key", ["torch.nn.LayerNorm", "torch.nn.Softmax"])
    def test_kernel_matches_reference_forward_and_backward(
        self, key: str, triton_candidates: ModuleType, calls: dict[str, Call]
    ) -> None:
        """On every matching recorded call (CUDA, else interpreted on CPU): same output, grads."""
        for call in matching_calls(calls, key):
            call = call.to(TRITON_DEVICE)
            assert_replays_close(*replay_pair(triton_candidates.CANDIDATES[key], call))

    def test_kernels_handle_other_shapes_and_dims(self, triton_candidates: ModuleType) -> None:
        """Softmax over a middle dim and LayerNorm over two dims without bias still match."""
        x = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(0)).to(TRITON_DEVICE)
        for ref, cand_cls, ctor in [
            (nn.Softmax(dim=1), triton_candidates.TritonSoftmax, {"dim": 1}),
            (nn.LayerNorm((5, 7), bias=False), triton_candidates.TritonLayerNorm, {"bias": False}),
        ]:
            args = ((5, 7),) if isinstance(ref, nn.LayerNorm) else ()
            cand = cand_cls(*args, **ctor)
            cand.load_state_dict(ref.state_dict(), strict=True)
            ref, cand = ref.to(TRITON_DEVICE), cand.to(TRITON_DEVICE)
            call = Call("extra", ref, (x,), {})
            assert_replays_close(replay(ref, call, {}), replay(cand, call, {}))

    def test_missing_triton_leaves_an_empty_set(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without triton the file imports, CANDIDATES is empty and UNAVAILABLE says why."""
        monkeypatch.setitem(sys.modules, "triton", None)
        monkeypatch.setitem(sys.modules, "triton.language", None)
        name = "_tt_example_candidates_triton_missing"
        monkeypatch.delitem(sys.modules, name, raising=False)
        module = load_file(CANDIDATES_DIR / "triton_kernels.py", name)
        monkeypatch.delitem(sys.modules, name)
        assert module.CANDIDATES == {}
        assert "triton" in module.UNAVAILABLE

    @pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter is only used on CPU")
    def test_missed_interpreter_mode_is_reported(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """If triton was imported in compiled mode on a CPU-only host, UNAVAILABLE says so."""
        tl = pytest.importorskip("triton.language")
        monkeypatch.setattr(tl, "sum", object())
        name = "_tt_example_candidates_triton_compiled"
        monkeypatch.delitem(sys.modules, name, raising=False)
        module = load_file(CANDIDATES_DIR / "triton_kernels.py", name)
        monkeypatch.delitem(sys.modules, name)
        assert module.CANDIDATES == {}
        assert "TRITON_INTERPRET=1" in module.UNAVAILABLE


def buggy(name: str) -> object:
    """The single candidate of a buggy file, checked to be keyed as its docstring says."""
    module = load_candidates(BUGGY_DIR / f"{name}.py")
    (value,) = module.CANDIDATES.values()
    return value


class TestSoftmaxBatch0Grad:
    """buggy/softmax_batch0_grad.py: right forward, backward only for batch element 0."""

    def test_forward_matches_and_only_batch0_grad_is_right(self, calls: dict[str, Call]) -> None:
        """Every attention softmax: equal output, equal grad[0], zero and wrong grad[1:]."""
        for call in matching_calls(calls, "torch.nn.Softmax"):
            ref, got = replay_pair(buggy("softmax_batch0_grad"), call)
            assert torch.equal(got.output, ref.output)
            (ref_grad,), (got_grad,) = ref.input_grads, got.input_grads
            torch.testing.assert_close(got_grad[0], ref_grad[0])
            assert (got_grad[1:] == 0).all()
            assert all(ref_grad[i].abs().max() > 1e-3 for i in range(1, ref_grad.shape[0]))

    def test_spliced_into_training_the_loss_stalls(self) -> None:
        """With every nn.Softmax swapped for it, 100 steps end well above the reference."""
        softmax_cls = buggy("softmax_batch0_grad")
        model = translation.build_model()
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Softmax):
                    setattr(parent, name, softmax_cls(dim=child.dim))
        broken = translation.train(model, 100)
        reference = translation.train(translation.build_model(), 100)
        assert sum(broken[-10:]) / 10 > sum(reference[-10:]) / 10 + 0.25


class TestSoftmaxWrongDim:
    """buggy/softmax_wrong_dim.py: normalises attention over queries instead of keys."""

    def test_first_attention_softmax_forward_diverges(self, calls: dict[str, Call]) -> None:
        """encoder.layers.0.self_attn.softmax: rows do not sum to 1, padded columns are NaN."""
        call = calls["encoder.layers.0.self_attn.softmax"]
        ref, got = replay_pair(buggy("softmax_wrong_dim"), call, backward=False)
        assert got.output.isnan().any()
        finite = got.output.nan_to_num(0.0)
        assert not torch.allclose(finite.sum(-1), torch.ones_like(finite.sum(-1)))
        assert max_abs_diff(got.output, ref.output) > 0.1


class TestSoftmaxNoMaxSubtraction:
    """buggy/softmax_no_max_subtraction.py: float16 exp without the max shift."""

    def test_small_logits_diverge_by_rounding_only(self, calls: dict[str, Call]) -> None:
        """On the fresh model's first attention softmax: finite, but off by ~1e-4 or more."""
        call = calls["encoder.layers.0.self_attn.softmax"]
        ref, got = replay_pair(buggy("softmax_no_max_subtraction"), call)
        assert torch.isfinite(got.output).all()
        assert 5e-5 < max_abs_diff(got.output, ref.output) < 5e-3

    def test_large_logits_overflow(self, calls: dict[str, Call]) -> None:
        """Logits above float16's exp limit (about 11.1) give non-finite weights."""
        call = calls["encoder.layers.0.self_attn.softmax"]
        shifted = Call(call.path, call.module, (call.args[0] + 12.0,), {})
        ref, got = replay_pair(buggy("softmax_no_max_subtraction"), shifted, backward=False)
        assert torch.isfinite(ref.output).all() and not torch.isfinite(got.output).all()


class TestLayerNormUnbiasedVar:
    """buggy/layernorm_unbiased_var.py: Bessel-corrected variance."""

    def test_first_layernorm_forward_shrinks_by_sqrt_31_32(self, calls: dict[str, Call]) -> None:
        """encoder.layers.0.self_attn_norm: the normalised values are sqrt(31/32) too small."""
        call = calls["encoder.layers.0.self_attn_norm"]
        ref, got = replay_pair(buggy("layernorm_unbiased_var"), call)
        bias = call.module.bias.detach()
        ratio = (got.output - bias) / (ref.output - bias)
        torch.testing.assert_close(
            ratio, torch.full_like(ratio, math.sqrt(31 / 32)), rtol=0, atol=1e-3
        )
        assert max_abs_diff(got.output, ref.output) > 1e-3


class TestLinearTransposedWeight:
    """buggy/linear_transposed_weight.py: x @ W instead of x @ W.T on square q projections."""

    def test_glob_selects_only_self_attention_query_projections(
        self, calls: dict[str, Call]
    ) -> None:
        """The key matches the four self-attention q_proj layers and nothing else."""
        (key,) = load_candidates(BUGGY_DIR / "linear_transposed_weight.py").CANDIDATES
        paths = [call.path for call in matching_calls(calls, key)]
        assert paths == [
            "encoder.layers.0.self_attn.q_proj",
            "encoder.layers.1.self_attn.q_proj",
            "decoder.layers.0.self_attn.q_proj",
            "decoder.layers.1.self_attn.q_proj",
        ]

    def test_forward_uses_the_untransposed_weight(self, calls: dict[str, Call]) -> None:
        """encoder.layers.0.self_attn.q_proj forward is x @ W + b, not the reference."""
        call = calls["encoder.layers.0.self_attn.q_proj"]
        ref, got = replay_pair(buggy("linear_transposed_weight"), call)
        weight, bias = call.module.weight.detach(), call.module.bias.detach()
        torch.testing.assert_close(got.output, call.args[0] @ weight + bias)
        assert max_abs_diff(got.output, ref.output) > 0.1


class TestAttentionMaskInverted:
    """buggy/attention_mask_inverted.py: attends only to padding."""

    def test_first_attention_forward_diverges(self, calls: dict[str, Call]) -> None:
        """encoder.layers.0.self_attn: unpadded rows turn NaN, padded rows change."""
        call = calls["encoder.layers.0.self_attn"]
        ref, got = replay_pair(buggy("attention_mask_inverted"), call, backward=False)
        padded = call.kwargs["key_padding_mask"].any(dim=1)
        assert not padded[0] and got.output[0].isnan().all()
        assert torch.isfinite(got.output[padded]).all()
        assert max_abs_diff(got.output[padded], ref.output[padded]) > 0.1


class TestDropoutInEval:
    """buggy/dropout_in_eval.py: drops even when not training."""

    def test_eval_replay_of_first_dropout_diverges(self, calls: dict[str, Call]) -> None:
        """pos_enc.drop in eval mode: the reference is the identity, the candidate drops."""
        call = calls["pos_enc.drop"]
        assert not call.module.training
        ref, got = replay_pair(buggy("dropout_in_eval"), call)
        torch.testing.assert_close(ref.output, call.args[0])
        zeroed = got.output == 0
        assert zeroed.any()
        torch.testing.assert_close(got.output[~zeroed], call.args[0][~zeroed] / 0.9)

    def test_training_replay_with_same_rng_matches(self, calls: dict[str, Call]) -> None:
        """In training mode with the same seed it is indistinguishable from nn.Dropout."""
        call = calls["pos_enc.drop"]
        cand, _ = build(buggy("dropout_in_eval"), call)
        torch.manual_seed(11)
        expected = nn.Dropout(call.module.p)(call.args[0])
        torch.manual_seed(11)
        assert torch.equal(cand(call.args[0]), expected)
