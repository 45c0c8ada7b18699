"""The recorder records what the model really did: every call, bitwise, with its gradients.

Most checks compare a trace with a second, independent source of truth: hooks of our own
in a separate run, a re-run of each recorded leaf call, or gradients computed by hand.
"""

from __future__ import annotations

import cProfile
import gc
import inspect
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from _summary_checks import assert_summary_close
from conftest import EXAMPLE, EXAMPLE_SEED, EXAMPLE_STEPS
from torch import nn
from torch.utils.checkpoint import checkpoint

import recorder
import tracefmt
from recorder import RecordOptions

REPO = EXAMPLE.parents[1]


# -- helpers -------------------------------------------------------------------------------


def bits(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor's values, so equality is bitwise (NaN payloads, -0.0)."""
    flat = t.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bits."""
    return a.dtype == b.dtype and a.shape == b.shape and bits(a) == bits(b)


def flat(tree: Any) -> list[Any]:
    """Leaves of nested tuples/lists/dicts in order (tensors and Nones)."""
    if isinstance(tree, (tuple, list)):
        return [x for item in tree for x in flat(item)]
    if isinstance(tree, dict):
        return [x for item in tree.values() for x in flat(item)]
    return [tree]


def record_model(
    path: Path,
    model: nn.Module,
    loss_fn: Callable[[nn.Module, int], torch.Tensor],
    *,
    steps: int = 1,
    **options: Any,
) -> None:
    """Record ``steps`` steps of ``loss_fn(model, step)`` with backward, in the user-loop style."""
    with recorder.record(model, path, **options) as rec:
        for step in range(steps):
            rec.backward(loss_fn(model, step))
            rec.step()


def path_counts(reader: tracefmt.TraceReader) -> Counter[str]:
    """Recorded calls per module path."""
    return Counter(reader.modules[reader.call_module_index(c)].path for c in reader.call_ids)


def tensor(reader: tracefmt.TraceReader, tid: int) -> torch.Tensor:
    """A recorded tensor as torch."""
    return recorder.tensor_from_trace(reader, tid)


def only_call(
    reader: tracefmt.TraceReader, module: str, index: int = 0, step: int = 0
) -> tracefmt.CallRecord:
    """The ``index``-th call of ``module`` in ``step``."""
    calls = [c for c in reader.calls(step=step, module=module) if c.index == index]
    assert len(calls) == 1, f"{module}#{index} in step {step}: {len(calls)} calls"
    return calls[0]


def write_recipe(path: Path, body: str) -> Path:
    """Write a recipe file for a test; ``body`` may be indented."""
    path.write_text(inspect.cleandoc(body) + "\n")
    return path


@pytest.fixture(scope="module")
def translation() -> ModuleType:
    """The example recipe module (build_model, run_step, make_batch, PAD)."""
    return recorder.load_recipe(str(EXAMPLE)).module


# -- 1. call count -------------------------------------------------------------------------


class TestCallCount:
    """Every module call is recorded once, and nothing else is."""

    def test_calls_per_module_equal_an_independent_count(
        self, translation_reader: tracefmt.TraceReader, translation: ModuleType
    ) -> None:
        """Our own pre-hooks on every module, in a separate run, count the same calls per path."""
        torch.manual_seed(EXAMPLE_SEED)
        model = translation.build_model()
        counts: Counter[str] = Counter()
        for path, module in model.named_modules():
            module.register_forward_pre_hook(lambda m, a, p=path: counts.update([p]))
        for step in range(EXAMPLE_STEPS):
            model.zero_grad(set_to_none=True)
            translation.run_step(model, step).backward()
        assert sum(counts.values()) > 100
        assert path_counts(translation_reader) == counts

    def test_parents_are_enclosing_modules(self, translation_reader: tracefmt.TraceReader) -> None:
        """A call's parent is a call of an enclosing module, one level less deep."""
        for c in translation_reader.calls():
            if c.parent is None:
                assert c.depth == 0
                continue
            parent = translation_reader.call(c.parent, backward=False)
            assert parent.depth == c.depth - 1
            assert parent.module == "" or c.module.startswith(parent.module + ".")


# -- 2. bitwise re-run of every leaf call ---------------------------------------------------


@dataclass
class LeafReplay:
    """What re-running one recorded leaf call showed."""

    label: str
    type: str
    training: bool
    outputs_equal: bool
    grads_checked: int
    grads_equal: bool
    dropout_without_rng_equal: bool | None


def _replay_leaf(
    reader: tracefmt.TraceReader, module: nn.Module, call: tracefmt.CallRecord
) -> LeafReplay:
    """Re-run one recorded leaf call from the trace alone and compare it bit for bit."""
    module.train(call.training)
    rng = tensor(reader, call.rng["cpu"]).to(torch.uint8)
    args = recorder.rebuild_torch(call.args, reader)
    kwargs = recorder.rebuild_torch(call.kwargs, reader)
    bwd = call.backward
    grad_args = recorder.rebuild_torch(bwd.grad_args, reader) if bwd else ()
    grad_kwargs = recorder.rebuild_torch(bwd.grad_kwargs, reader) if bwd else {}
    pairs = [(a, g) for a, g in zip(args, grad_args) if g is not None]
    pairs += [(kwargs[k], g) for k, g in grad_kwargs.items() if g is not None]
    for a, _ in pairs:
        a.requires_grad_(True)
    torch.set_rng_state(rng)
    out = module(*args, **kwargs)
    expected = recorder.rebuild_torch(call.outputs, reader)
    outs, exp = flat(out), flat(expected)
    outputs_equal = len(outs) == len(exp) and all(map(same_bits, outs, exp))
    grads_equal = True
    if pairs:
        go = flat(recorder.rebuild_torch(bwd.grad_outputs, reader))
        used = [(o, g) for o, g in zip(outs, go) if g is not None]
        torch.autograd.backward([o for o, _ in used], [g for _, g in used])
        grads_equal = all(a.grad is not None and same_bits(a.grad, g) for a, g in pairs)
    unseeded = None
    if isinstance(module, nn.Dropout) and call.training:
        torch.manual_seed(12345)
        with torch.no_grad():
            unseeded = same_bits(module(*[a.detach() for a in args]), exp[0])
    return LeafReplay(
        call.label,
        type(module).__name__,
        call.training,
        outputs_equal,
        len(pairs),
        grads_equal,
        unseeded,
    )


@pytest.fixture(scope="module")
def leaf_replays(
    translation_reader: tracefmt.TraceReader, translation: ModuleType
) -> list[LeafReplay]:
    """Every recorded leaf call of the example, re-run on weights loaded from its STEP event."""
    reader = translation_reader
    model = translation.build_model()
    modules = dict(model.named_modules())
    results = []
    for step in reader.steps:
        weights = reader.step_record(step)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(tensor(reader, weights.params[name]))
            for name, b in model.named_buffers():
                b.copy_(tensor(reader, weights.buffers[name]))
        for call in reader.calls(step=step):
            module = modules[call.module]
            if next(module.children(), None) is None:
                results.append(_replay_leaf(reader, module, call))
    return results


class TestBitwiseLeafReplay:
    """Each leaf call, rebuilt from the trace alone, reproduces its outputs and grads bitwise."""

    def test_covers_every_leaf_kind(self, leaf_replays: list[LeafReplay]) -> None:
        """The replay reached all the leaf module types the example uses, in both steps."""
        kinds = {r.type for r in leaf_replays}
        assert {
            "Linear",
            "LayerNorm",
            "Softmax",
            "Dropout",
            "Embedding",
            "ReLU",
            "LogSoftmax",
            "NLLLoss",
        } <= kinds
        assert len(leaf_replays) > 100

    def test_outputs_match_bitwise(self, leaf_replays: list[LeafReplay]) -> None:
        """Re-running each leaf call gives the recorded outputs bit for bit."""
        assert [r.label for r in leaf_replays if not r.outputs_equal] == []

    def test_input_grads_match_bitwise(self, leaf_replays: list[LeafReplay]) -> None:
        """Backward of each re-run with the recorded grad_outputs gives the recorded input grads."""
        assert [r.label for r in leaf_replays if not r.grads_equal] == []
        assert sum(r.grads_checked for r in leaf_replays) > 80

    def test_dropout_matches_only_thanks_to_the_rng_state(
        self, leaf_replays: list[LeafReplay]
    ) -> None:
        """Training-mode dropout calls matched, and would not have without the recorded RNG."""
        dropouts = [r for r in leaf_replays if r.type == "Dropout" and r.training]
        assert len(dropouts) >= 10
        assert all(r.outputs_equal for r in dropouts)
        assert not any(r.dropout_without_rng_equal for r in dropouts)


# -- 3. snapshots and gradients -------------------------------------------------------------


class Doubler(nn.Module):
    """Modifies its input in place and returns it (like an in-place activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(3.0)


class InPlaceNet(nn.Module):
    def __init__(self, inplace: nn.Module) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.inplace = inplace
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        y.mul_(2.0)
        return self.out(self.inplace(y)).pow(2).sum()


class TestInPlaceModification:
    """Values are snapshotted when seen; in-place ops later do not change what was recorded."""

    def test_output_modified_afterwards_keeps_its_values(self, tmp_path: Path) -> None:
        """``y = lin(x); y.mul_(2)`` records lin's output before the doubling."""
        torch.manual_seed(0)
        model, x = InPlaceNet(nn.Identity()), torch.randn(3, 4)
        record_model(tmp_path / "t.h5", model, lambda m, s: m(x))
        expected = nn.functional.linear(x, model.lin.weight, model.lin.bias)
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            c = only_call(r, "lin")
            assert same_bits(tensor(r, c.tensors()["outputs"]), expected)
            assert same_bits(tensor(r, only_call(r, "inplace").tensors()["args.0"]), expected * 2)

    @pytest.mark.parametrize("inplace", [Doubler(), nn.ReLU(inplace=True)], ids=["mul_", "relu"])
    def test_input_modified_by_the_module_keeps_its_values(
        self, tmp_path: Path, inplace: nn.Module
    ) -> None:
        """A module that modifies its input records the input as it was given, and a note."""
        torch.manual_seed(0)
        model, x = InPlaceNet(inplace), torch.randn(3, 4)
        record_model(tmp_path / "t.h5", model, lambda m, s: m(x))
        given = nn.functional.linear(x, model.lin.weight, model.lin.bias) * 2
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            c = only_call(r, "inplace")
            assert same_bits(tensor(r, c.tensors()["args.0"]), given)
            assert same_bits(tensor(r, c.tensors()["outputs"]), inplace(given.clone()))
            assert any("in place" in n for n in c.notes)

    @pytest.mark.parametrize("inplace", [Doubler(), nn.ReLU(inplace=True)], ids=["mul_", "relu"])
    def test_input_modified_by_the_module_gets_its_gradient(
        self, tmp_path: Path, inplace: nn.Module
    ) -> None:
        """Regression: an in-place module kept no backward record; its input grad is now there."""
        torch.manual_seed(0)
        model, x = InPlaceNet(inplace), torch.randn(3, 4)
        record_model(tmp_path / "t.h5", model, lambda m, s: m(x))
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            c = only_call(r, "inplace")
            assert c.backward is not None
            given = tensor(r, c.tensors()["args.0"]).requires_grad_(True)
            by_hand = torch.autograd.grad(
                inplace(given * 1.0), given, tensor(r, c.grad_tensors()["outputs"])
            )[0]
            assert same_bits(tensor(r, c.grad_tensors()["args.0"]), by_hand)
            # The gradient the module passed on is the one that reached lin's output.
            lin = only_call(r, "lin").grad_tensors()["outputs"]
            assert same_bits(tensor(r, lin), by_hand * 2)

    def test_recording_leaves_training_unchanged(self, tmp_path: Path) -> None:
        """With in-place modules, the parameter grads are those of an unrecorded run, bitwise."""
        x = torch.randn(3, 4)
        torch.manual_seed(0)
        plain = InPlaceNet(nn.ReLU(inplace=True))
        plain(x).backward()
        torch.manual_seed(0)
        model = InPlaceNet(nn.ReLU(inplace=True))
        record_model(tmp_path / "t.h5", model, lambda m, s: m(x))
        for (name, p), q in zip(model.named_parameters(), plain.parameters()):
            assert same_bits(p.grad, q.grad), name


class TestKwargsTensors:
    """Tensors passed only as keyword arguments are recorded."""

    def test_key_padding_mask_kwarg_is_recorded(
        self, translation_reader: tracefmt.TraceReader, translation: ModuleType
    ) -> None:
        """The encoder attention's ``key_padding_mask=`` holds this step's source padding."""
        for step in translation_reader.steps:
            c = only_call(translation_reader, "encoder.layers.0.self_attn", step=step)
            mask = tensor(translation_reader, c.tensors()["kwargs.key_padding_mask"])
            src, _ = translation.make_batch(step)
            assert mask.dtype == torch.bool
            assert torch.equal(mask, src == translation.PAD)
            assert mask.any() and not mask.all()


class TestInputsWithoutGrad:
    """Inputs that cannot have a gradient are recorded, and get none."""

    def test_embedding_ids_are_recorded_without_grad(
        self, translation_reader: tracefmt.TraceReader, translation: ModuleType
    ) -> None:
        """The int64 token ids reach the trace exactly; their grad slot is None."""
        r = translation_reader
        c = only_call(r, "src_embed.embedding", step=1)
        ids = tensor(r, c.tensors()["args.0"])
        assert torch.equal(ids, translation.make_batch(1)[0])
        assert r.tensor(c.tensors()["args.0"]).dtype == "int64"
        assert c.backward is not None and "outputs" in c.grad_tensors()
        assert "args.0" not in c.grad_tensors()
        assert recorder.rebuild_torch(c.backward.grad_args, r) == (None,)


class TupleDict(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
        y = self.lin(x)
        return (y * 2, y + 1), {"p": y * 3, "q": y - 1}


class TupleDictNet(nn.Module):
    def __init__(self, use_all: bool) -> None:
        super().__init__()
        self.multi = TupleDict()
        self.use_all = use_all

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (a, b), d = self.multi(x)
        loss = a.sum() + (d["p"] * 3).sum()
        return loss + (b * 2).sum() + (d["q"] * 4).sum() if self.use_all else loss


class TestMultipleOutputs:
    """A module returning several tensors gets one gradient per output tensor."""

    def test_each_output_of_a_tuple_and_dict_gets_its_grad(self, tmp_path: Path) -> None:
        """Grads follow the output tree: (1, 2) for the tuple, 3 and 4 for the dict entries."""
        record_model(
            tmp_path / "t.h5", TupleDictNet(use_all=True), lambda m, s: m(torch.ones(2, 4))
        )
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            c = only_call(r, "multi")
            (ga, gb), gd = recorder.rebuild_torch(c.backward.grad_outputs, r)
            for g, value in ((ga, 1.0), (gb, 2.0), (gd["p"], 3.0), (gd["q"], 4.0)):
                assert same_bits(g, torch.full((2, 4), value))

    def test_output_unused_by_the_loss_has_no_grad(self, tmp_path: Path) -> None:
        """Outputs the loss does not use get a None gradient node, the others theirs."""
        record_model(
            tmp_path / "t.h5", TupleDictNet(use_all=False), lambda m, s: m(torch.ones(2, 4))
        )
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            c = only_call(r, "multi")
            node = c.backward.grad_outputs
            assert node["items"][0]["items"][1] is None
            assert dict(node["items"][1]["items"])["q"] is None
            assert set(c.grad_tensors()) == {"outputs.0.0", "outputs.1.p"}


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.tanh(self.lin(x))).sum()


class TestModuleReuse:
    """A module called twice in a step gets two distinct, indexed records."""

    def test_second_call_gets_index_1_and_its_own_record(self, tmp_path: Path) -> None:
        """Calls #0 and #1 differ in ids, inputs, outputs and gradients; indices restart per step."""
        torch.manual_seed(0)
        x = torch.randn(3, 4)
        record_model(tmp_path / "t.h5", Twice(), lambda m, s: m(x), steps=2)
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            for step in (0, 1):
                first, second = only_call(r, "lin", 0, step), only_call(r, "lin", 1, step)
                assert first.call < second.call
                assert first.tensors()["args.0"] != second.tensors()["args.0"]
                assert same_bits(
                    tensor(r, second.tensors()["args.0"]),
                    torch.tanh(tensor(r, first.tensors()["outputs"])),
                )
                g0, g1 = first.grad_tensors(), second.grad_tensors()
                assert g0["outputs"] != g1["outputs"]
                assert same_bits(tensor(r, g1["outputs"]), torch.ones(3, 4))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Linear(4, 4)
        self.a = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pre(x)
        return (self.a(h) + 3 * h).pow(2).sum()


class TestInputGradContribution:
    """A recorded input gradient is this call's contribution only, not the tensor's total."""

    def test_residual_input_grad_is_the_path_through_the_module(self, tmp_path: Path) -> None:
        """``a(h) + 3h``: a's grad_args.0 is the gradient through a alone, computed by hand."""
        torch.manual_seed(0)
        model, x = Residual(), torch.randn(3, 4)
        record_model(tmp_path / "t.h5", model, lambda m, s: m(x))
        h = model.pre(x).detach().requires_grad_(True)
        a_out = model.a(h)
        (through_a,) = torch.autograd.grad((a_out + 3 * h.detach()).pow(2).sum(), h)
        (total,) = torch.autograd.grad((model.a(h) + 3 * h).pow(2).sum(), h)
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            recorded = tensor(r, only_call(r, "a").grad_tensors()["args.0"])
            pre_out = tensor(r, only_call(r, "pre").grad_tensors()["outputs"])
        torch.testing.assert_close(recorded, through_a, rtol=1e-6, atol=0)
        assert not torch.allclose(recorded, total)
        torch.testing.assert_close(pre_out, total, rtol=1e-6, atol=0)


class TestLossModuleGrad:
    """The module whose output is the loss records the gradient backward started from."""

    def test_criterion_grad_output_is_one(self, translation_reader: tracefmt.TraceReader) -> None:
        """Regression: the loss tensor's grad was None (the backward root is not 'executed')."""
        for step in translation_reader.steps:
            c = only_call(translation_reader, "criterion", step=step)
            g = tensor(translation_reader, c.grad_tensors()["outputs"])
            assert same_bits(g, torch.tensor(1.0))

    def test_root_module_returning_the_loss_gets_a_backward_record(self, tmp_path: Path) -> None:
        """A model whose forward returns the loss, with an input that needs no grad, is recorded."""
        torch.manual_seed(0)
        record_model(tmp_path / "t.h5", Residual(), lambda m, s: m(torch.randn(3, 4)))
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            root = only_call(r, "")
            assert root.backward is not None
            assert same_bits(tensor(r, root.grad_tensors()["outputs"]), torch.tensor(1.0))


# -- 4. activation checkpointing ------------------------------------------------------------


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.drop = nn.Dropout(0.5)
        self.b = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.drop(torch.relu(self.a(x))))


class Checkpointed(nn.Module):
    def __init__(self, use_checkpoint: bool) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.block = Block()
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint:
            return self.head(checkpoint(self.block, x, use_reentrant=False)).sum()
        return self.head(self.block(x)).sum()


@pytest.fixture(scope="module")
def checkpoint_traces(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[tracefmt.TraceReader, tracefmt.TraceReader]]:
    """The same 2 steps recorded plainly and with the block checkpointed."""
    readers = []
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    for flag in (False, True):
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp("ckpt") / f"{flag}.h5"
        record_model(path, Checkpointed(flag), lambda m, s: m(x), steps=2)
        readers.append(tracefmt.open_trace(path))
    yield readers[0], readers[1]
    for r in readers:
        r.close()


class TestActivationCheckpointing:
    """Recomputation during backward is counted, not recorded as new calls."""

    def test_recomputes_are_not_new_calls(self, checkpoint_traces: tuple) -> None:
        """The checkpointed run records the same calls per module as the plain one."""
        plain, ckpt = checkpoint_traces
        assert path_counts(ckpt) == path_counts(plain)
        assert ckpt.n_calls == 12

    def test_backward_records_count_recomputes_per_step(self, checkpoint_traces: tuple) -> None:
        """Recomputed modules say 1 recompute in every step (regression: it summed over steps)."""
        _, ckpt = checkpoint_traces
        for c in ckpt.calls():
            want = 1 if c.module.startswith("block") else 0
            assert c.backward is not None and c.backward.recomputes == want, c.label

    def test_gradients_equal_the_plain_run(self, checkpoint_traces: tuple) -> None:
        """Every recorded gradient of the checkpointed run equals the plain run's, bitwise."""
        plain, ckpt = checkpoint_traces
        for cp, cc in zip(plain.calls(), ckpt.calls()):
            assert cp.grad_tensors().keys() == cc.grad_tensors().keys()
            for name, tid in cp.grad_tensors().items():
                assert same_bits(tensor(plain, tid), tensor(ckpt, cc.grad_tensors()[name])), (
                    cc.label,
                    name,
                )


# -- 5. dtypes --------------------------------------------------------------------------------


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f16 = nn.Linear(4, 4).half()
        self.bf16 = nn.Linear(4, 4).bfloat16()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.f16(x.half()).float() + self.bf16(x.bfloat16()).float()).sum()


def _live_values(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """Clones of every leaf module's input and output, taken by our own hooks."""
    seen: dict[str, dict[str, torch.Tensor]] = {}

    def keep(path: str, args: tuple, out: torch.Tensor) -> None:
        seen[path] = {"args.0": args[0].detach().clone(), "outputs": out.detach().clone()}

    for path, m in model.named_modules():
        if path:
            m.register_forward_hook(lambda mod, a, out, p=path: keep(p, a, out))
    return seen


class TestDtypes:
    """Dtype names and values survive bitwise."""

    def test_float64_model(self, tmp_path: Path) -> None:
        """A float64 model records float64 tensors whose values equal the live ones."""
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()
        live = _live_values(model)
        record_model(tmp_path / "t.h5", model, lambda m, s: m(torch.randn(3, 4).double()).sum())
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            for path, values in live.items():
                c = only_call(r, path)
                for name, t in values.items():
                    assert r.tensor(c.tensors()[name]).dtype == "float64"
                    assert same_bits(tensor(r, c.tensors()[name]), t)
                assert r.tensor(c.grad_tensors()["outputs"]).dtype == "float64"

    def test_bfloat16_and_float16(self, tmp_path: Path) -> None:
        """Half and bfloat16 tensors keep their names; their stored bits equal the live ones."""
        torch.manual_seed(0)
        model = Mixed()
        live = _live_values(model)
        record_model(tmp_path / "t.h5", model, lambda m, s: m(torch.randn(3, 4)))
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            for path, name in (("f16", "float16"), ("bf16", "bfloat16")):
                c = only_call(r, path)
                for key, t in live[path].items():
                    tid = c.tensors()[key]
                    assert r.tensor(tid).dtype == name
                    raw = r.read(tid, decode=False)
                    assert raw.tobytes() == bits(t)
                    assert same_bits(tensor(r, tid), t)
                assert r.tensor(c.grad_tensors()["outputs"]).dtype == name
            weights = r.step_record(0).params
            assert r.read(weights["bf16.weight"], decode=False).tobytes() == bits(model.bf16.weight)


# -- 6. values that cannot be recorded -------------------------------------------------------


class Opaque:
    """A custom object with no msgpack form."""


class TakesAnything(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, *, fn: Callable, obj: Opaque) -> torch.Tensor:
        return fn(self.lin(x)).sum()


class TestNotRecordable:
    """A call with an unrecordable argument is recorded, marked not replayable, and the run goes on."""

    def test_lambda_and_custom_object_kwargs(self, tmp_path: Path) -> None:
        """The call is replayable=False with a note; its tensors and the rest are still recorded."""
        torch.manual_seed(0)
        x = torch.randn(2, 4)
        record_model(
            tmp_path / "t.h5",
            TakesAnything(),
            lambda m, s: m(x, fn=lambda t: t * 2, obj=Opaque()),
            steps=2,
        )
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            assert r.complete and r.steps == [0, 1]
            root = only_call(r, "", step=1)
            assert root.replayable is False
            assert any("opaque" in n for n in root.notes)
            kinds = {k: v.get("$") for k, v in root.kwargs["items"]}
            assert kinds == {"fn": "opaque", "obj": "opaque"}
            assert same_bits(tensor(r, root.tensors()["args.0"]), x)
            assert only_call(r, "lin", step=1).replayable is True


# -- 7. constructor arguments ----------------------------------------------------------------


class Custom(nn.Module):
    """Keeps none of its arguments under their own names, so only capture can know them."""

    def __init__(self, width: int, *, factor: float = 2.0, tag: str = "x") -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.k = factor


def _ctor_of(reader: tracefmt.TraceReader, path: str) -> tuple[tuple, dict]:
    node = reader.module_info(path).ctor
    assert node is not None, path
    return recorder.rebuild_torch(node["args"], reader), recorder.rebuild_torch(
        node["kwargs"], reader
    )


class TestCaptureConstructorArgs:
    """``capture_constructor_args()`` remembers how each module was built."""

    def test_linear_args_reach_the_trace(self, tmp_path: Path) -> None:
        """nn.Linear(8, 4, bias=False) built inside the block reads back as in=8, out=4, bias=False."""
        with recorder.capture_constructor_args():
            model = nn.Sequential(nn.Linear(8, 4, bias=False), Custom(3, factor=0.5))
        record_model(tmp_path / "t.h5", model, lambda m, s: m[0](torch.randn(2, 8)).sum())
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            args, kwargs = _ctor_of(r, "0")
            bound = inspect.signature(nn.Linear).bind(*args, **kwargs).arguments
            assert (bound["in_features"], bound["out_features"], bound["bias"]) == (8, 4, False)
            args, kwargs = _ctor_of(r, "1")
            assert args == (3,) and kwargs == {"factor": 0.5, "tag": "x"}

    def test_recipe_classes_are_captured(self, tmp_path: Path) -> None:
        """A recipe's own class with custom arguments gets them via record_recipe."""
        recipe = write_recipe(
            tmp_path / "custom_recipe.py",
            """
            import torch
            from torch import nn

            class Scaled(nn.Module):
                def __init__(self, width, *, factor=2.0):
                    super().__init__()
                    self.lin = nn.Linear(width, width)
                    self.k = factor

                def forward(self, x):
                    return self.lin(x) * self.k

            def build_model():
                return Scaled(5, factor=0.25)

            def run_step(model, step):
                return model(torch.ones(2, 5)).sum()
        """,
        )
        recorder.record_recipe(str(recipe), tmp_path / "t.h5")
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            assert _ctor_of(r, "") == ((5,), {"factor": 0.25})
            args, kwargs = _ctor_of(r, "lin")
            assert inspect.signature(nn.Linear).bind(*args, **kwargs).arguments["in_features"] == 5

    def test_example_layers_rebuild_from_the_trace(
        self, translation_reader: tracefmt.TraceReader, translation: ModuleType
    ) -> None:
        """The example's EncoderLayer rebuilds from its recorded arguments with the same shapes."""
        args, kwargs = _ctor_of(translation_reader, "encoder.layers.0")
        rebuilt = translation.EncoderLayer(*args, **kwargs)
        original = translation.build_model().encoder.layers[0]
        assert repr(rebuilt) == repr(original)
        assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in original.parameters()]

    def test_restores_a_running_profiler(self) -> None:
        """Regression: leaving the block under cProfile raised TypeError (Profile not callable)."""
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            with recorder.capture_constructor_args():
                nn.Linear(2, 2)
            assert sys.getprofile() is profiler
        finally:
            profiler.disable()


class TestDeriveConstructorArgs:
    """``derive_constructor_args`` rebuilds torch.nn built-ins made outside the capture block."""

    @pytest.mark.parametrize(
        "module",
        [
            nn.LayerNorm(6, eps=1e-3, elementwise_affine=False),
            nn.LayerNorm([2, 3], bias=False),
            nn.Linear(3, 2, bias=False),
            nn.Linear(3, 2),
            nn.Softmax(dim=1),
            nn.Dropout(0.3, inplace=True),
            nn.Embedding(10, 3, padding_idx=0, max_norm=1.0),
        ],
        ids=lambda m: repr(m),
    )
    def test_rebuilds_an_equivalent_module(self, module: nn.Module) -> None:
        """``type(m)(*args, **kwargs)`` gives the same configuration and parameter shapes."""
        derived = recorder.derive_constructor_args(module)
        assert derived is not None
        rebuilt = type(module)(*derived[0], **derived[1])
        assert repr(rebuilt) == repr(module)
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
            k: v.shape for k, v in module.state_dict().items()
        }
        for attr in ("padding_idx", "max_norm", "inplace", "eps", "dim", "p"):
            assert getattr(rebuilt, attr, None) == getattr(module, attr, None)

    def test_unknown_var_args_give_none(self) -> None:
        """Regression: LSTM's ``__init__(*args, **kwargs)`` gave ((), {}), which cannot rebuild it."""
        assert recorder.derive_constructor_args(nn.LSTM(3, 4)) is None
        assert recorder.derive_constructor_args(nn.Identity()) == ((), {})


# -- 8. RNG state, flags, grad scale ---------------------------------------------------------


class TestRngState:
    """Each call carries the CPU RNG state it started with."""

    def test_rng_is_the_state_just_before_each_call(self, tmp_path: Path) -> None:
        """Our own pre-hook's ``torch.get_rng_state()`` equals each call's recorded state."""
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 8), nn.Dropout(0.5))
        states: dict[str, list[torch.Tensor]] = {}
        for path, m in model.named_modules():
            m.register_forward_pre_hook(
                lambda mod, a, p=path: states.setdefault(p, []).append(torch.get_rng_state()),
                prepend=True,
            )
        record_model(tmp_path / "t.h5", model, lambda m, s: m(torch.randn(3, 4)).sum(), steps=2)
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            recorded: dict[str, list[torch.Tensor]] = {}
            for c in r.calls():
                state = tensor(r, c.rng["cpu"])
                assert state.dtype == torch.uint8
                recorded.setdefault(c.module, []).append(state)
        assert recorded.keys() == states.keys()
        for path, seen in states.items():
            assert len(seen) == len(recorded[path]) == 2
            assert all(torch.equal(a, b) for a, b in zip(seen, recorded[path])), path
        assert not torch.equal(states["1"][0], states["3"][0])

    def test_unchanged_state_is_stored_once(self, tmp_path: Path) -> None:
        """Calls with no random op between them share one stored state; after a dropout it is new."""
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 4))
        x = torch.randn(3, 4)
        record_model(tmp_path / "t.h5", model, lambda m, s: m(x).sum(), steps=2)
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            ids = {(c.step, c.module): c.rng["cpu"] for c in r.calls()}
        for step in (0, 1):
            assert ids[(step, "")] == ids[(step, "0")] == ids[(step, "1")] == ids[(step, "2")]
            assert ids[(step, "3")] != ids[(step, "2")]
        assert ids[(1, "0")] == ids[(0, "3")]  # nothing random ran between the two steps

    def test_another_state_gives_another_dropout(self, tmp_path: Path) -> None:
        """Dropout replayed from the recorded state matches; from the next call's state it does not."""
        torch.manual_seed(0)
        model = nn.Sequential(nn.Dropout(0.5), nn.Dropout(0.5))
        x = torch.ones(64)
        record_model(tmp_path / "t.h5", model, lambda m, s: m(x.requires_grad_()).sum())
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            first, second = only_call(r, "0"), only_call(r, "1")
            out = tensor(r, first.tensors()["outputs"])
            for call, equal in ((first, True), (second, False)):
                torch.set_rng_state(tensor(r, call.rng["cpu"]))
                assert torch.equal(model[0](x.detach()), out) is equal


class TestEnvironment:
    """The run event carries what a faithful replay needs to know about the machine."""

    def test_torch_version_and_precision_flags(
        self, translation_reader: tracefmt.TraceReader
    ) -> None:
        """Torch version and determinism/TF32 flags are those of the recording process."""
        env = translation_reader.run.environment
        assert env["torch"] == torch.__version__
        flags = env["flags"]
        assert flags["deterministic_algorithms"] == torch.are_deterministic_algorithms_enabled()
        assert flags["float32_matmul_precision"] == torch.get_float32_matmul_precision()
        assert {"cudnn_deterministic", "allow_tf32_matmul", "allow_tf32_cudnn"} <= flags.keys()

    def test_recipe_and_seed_in_options(self, translation_reader: tracefmt.TraceReader) -> None:
        """The options name the recipe and the seed it ran with."""
        options = translation_reader.run.options
        assert options["recipe"] == "translation"
        assert options["seed"] == EXAMPLE_SEED
        assert options["mode"] == "full"


SGD_RECIPE = """
    import torch
    from torch import nn

    def build_model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def make_optimizer(model):
        return torch.optim.SGD(model.parameters(), lr=0.1)

    def run_step(model, step):
        x = torch.randn(16, 4, generator=torch.Generator().manual_seed(step))
        return (model(x) ** 2).mean()
"""


class TestRecordParamGrads:
    """``record_param_grads()`` writes the gradients as they are now, once per step."""

    def test_later_changes_are_not_recorded(self, tmp_path: Path) -> None:
        """Grads zeroed after the call keep their earlier values in the trace; step() adds none."""
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        with recorder.record(model, tmp_path / "t.h5") as rec:
            rec.backward(model(torch.ones(2, 3)).sum())
            rec.record_param_grads()
            expected = model.weight.grad.clone()
            model.weight.grad.zero_()
            rec.step()
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            assert same_bits(tensor(r, r.param_grads(0).grads["weight"]), expected)
            kinds = [r.event_kind(i) for i in range(r.event_count())]
            assert kinds.count(tracefmt.EventKind.PARAM_GRADS) == 1


class TestGradScale:
    """``--grad-scale X`` multiplies the recorded gradients by X, and nothing else."""

    @pytest.fixture(scope="class")
    def scaled_pair(self, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
        """One SGD recipe recorded for 2 steps with grad scale 1 and with 1000."""
        root = tmp_path_factory.mktemp("gradscale")
        recipe = write_recipe(root / "sgd_recipe.py", SGD_RECIPE)
        readers = []
        for scale in (1.0, 1000.0):
            path = root / f"{scale}.h5"
            recorder.record_recipe(
                str(recipe), path, steps=2, options=RecordOptions(grad_scale=scale)
            )
            readers.append(tracefmt.open_trace(path))
        yield tuple(readers)
        for r in readers:
            r.close()

    def test_param_grads_are_multiplied(self, scaled_pair: tuple) -> None:
        """Parameter grads of the scaled run are 1000 times the unscaled ones."""
        plain, scaled = scaled_pair
        for step in (0, 1):
            grads = plain.param_grads(step).grads
            assert grads.keys() == scaled.param_grads(step).grads.keys() and grads
            for name, tid in grads.items():
                torch.testing.assert_close(
                    tensor(scaled, scaled.param_grads(step).grads[name]),
                    tensor(plain, tid) * 1000,
                    rtol=1e-5,
                    atol=1e-9,
                )

    def test_call_grads_are_multiplied(self, scaled_pair: tuple) -> None:
        """A call's recorded input gradient is scaled too."""
        plain, scaled = scaled_pair
        a = tensor(plain, only_call(plain, "2").grad_tensors()["args.0"])
        b = tensor(scaled, only_call(scaled, "2").grad_tensors()["args.0"])
        torch.testing.assert_close(b, a * 1000, rtol=1e-5, atol=1e-9)

    def test_scale_is_in_the_options(self, scaled_pair: tuple) -> None:
        """The run event says which grad scale was used."""
        assert [r.run.options["grad_scale"] for r in scaled_pair] == [1.0, 1000.0]

    def test_training_is_unchanged(self, scaled_pair: tuple) -> None:
        """Regression: SGD stepped with scaled grads; step 1 weights and loss now match."""
        plain, scaled = scaled_pair
        for name, tid in plain.step_record(1).params.items():
            torch.testing.assert_close(
                tensor(scaled, scaled.step_record(1).params[name]),
                tensor(plain, tid),
                rtol=1e-6,
                atol=1e-7,
            )
        assert scaled.param_grads(1).loss == pytest.approx(plain.param_grads(1).loss, rel=1e-6)


# -- 9. stats mode and sampling --------------------------------------------------------------


@pytest.fixture(scope="module")
def stats_reader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tracefmt.TraceReader]:
    """The example recorded again, same seed and steps, in stats mode."""
    path = tmp_path_factory.mktemp("stats") / "stats.h5"
    recorder.record_recipe(
        str(EXAMPLE),
        path,
        steps=EXAMPLE_STEPS,
        seed=EXAMPLE_SEED,
        options=RecordOptions(mode="stats"),
    )
    with tracefmt.open_trace(path) as reader:
        yield reader


class TestStatsMode:
    """Stats mode stores summaries only, and they are the summaries of the full values."""

    def test_no_payload(self, stats_reader: tracefmt.TraceReader) -> None:
        """No tensor has stored values; every one has a summary."""
        assert stats_reader.bytes_stored == 0
        assert stats_reader.n_tensors > 100
        for tid in range(stats_reader.n_tensors):
            info = stats_reader.tensor(tid)
            assert not info.has_payload and info.summary is not None

    def test_summaries_equal_those_of_the_full_recording(
        self, stats_reader: tracefmt.TraceReader, translation_reader: tracefmt.TraceReader
    ) -> None:
        """Each call tensor's summary equals compute_summary of the full run's same tensor."""
        assert stats_reader.n_calls == translation_reader.n_calls
        checked = 0
        for call in translation_reader.call_ids:
            full, stats = translation_reader.call(call), stats_reader.call(call)
            names = {**full.tensors(), **{f"grad.{k}": v for k, v in full.grad_tensors().items()}}
            other = {**stats.tensors(), **{f"grad.{k}": v for k, v in stats.grad_tensors().items()}}
            assert names.keys() == other.keys(), full.label
            for name, tid in names.items():
                want = tracefmt.compute_summary(translation_reader.read(tid))
                assert_summary_close(
                    stats_reader.tensor(other[name]).summary, want, f"{full.label} {name}"
                )
                checked += 1
        assert checked > 800

    @pytest.mark.parametrize(
        "value",
        [
            torch.tensor([123456789, 123456790, 5, -7], dtype=torch.int64),
            torch.zeros(4, 0),
            torch.tensor([[1.0, float("nan")], [float("inf"), -float("inf")]]),
            torch.tensor([True, False, True]),
            torch.randn(3, 5, generator=torch.Generator().manual_seed(0)).bfloat16(),
            torch.tensor([-6.405920505523682, 2.4532904624938965, 277.0888366699219]),
            torch.relu(torch.randn(6, 1000, generator=torch.Generator().manual_seed(1))),
            torch.tensor([[0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.5, 1.0]]),
            1e6 + torch.rand(4, 300, generator=torch.Generator().manual_seed(2)) / 8,
            torch.full((3, 7), -2.5),
            torch.randn(5, 40, generator=torch.Generator().manual_seed(3)).half(),
            torch.randn(5, 40, generator=torch.Generator().manual_seed(4)).double(),
            torch.tensor([-3e38, 0.0, 1.0, 3e38]),
            torch.tensor([0.0, 1e-45, 1e-45, 3e-45]),
        ],
        ids=["int64-large", "empty-rows", "nonfinite", "bool", "bfloat16", "hist-edge",
             "relu-zeros", "many-at-max", "large-offset", "constant", "float16", "float64",
             "span-overflows", "subnormal-span"],
    )
    def test_awkward_values(self, tmp_path: Path, value: torch.Tensor) -> None:
        """Large ints, (B, 0), bin edges, zeros, maxima, offsets and constants summarise right."""
        model = nn.Identity()
        with recorder.record(model, tmp_path / "t.h5", mode="stats"):
            model(value)
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            got = r.tensor(only_call(r, "").tensors()["args.0"]).summary
        values = value.float() if value.dtype == torch.bfloat16 else value
        want = tracefmt.compute_summary(values.numpy())
        assert_summary_close(got, want, "value")
        assert np.array_equal([got.min, got.max], [want.min, want.max], equal_nan=True)


class TestSampling:
    """Options that record less: every N-th step, per-module caps, globs, a byte budget."""

    def test_every_second_step(self, tmp_path: Path) -> None:
        """``every=2`` over 4 steps records steps 0 and 2 only, calls and grads alike."""
        recorder.record_recipe(
            str(EXAMPLE), tmp_path / "t.h5", steps=4, seed=0, options=RecordOptions(every=2)
        )
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            assert r.complete and r.steps == [0, 2]
            assert {r.call_step(c) for c in r.call_ids} == {0, 2}
            assert [s for s in range(4) if r.param_grads(s) is not None] == [0, 2]
            assert r.n_calls == 206

    def test_max_calls_per_module(
        self, translation_reader: tracefmt.TraceReader, tmp_path: Path
    ) -> None:
        """``max_calls_per_module=1`` keeps exactly the first call of every module."""
        recorder.record_recipe(
            str(EXAMPLE),
            tmp_path / "t.h5",
            steps=2,
            seed=0,
            options=RecordOptions(max_calls_per_module=1),
        )
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            counts = path_counts(r)
            assert counts.keys() == path_counts(translation_reader).keys()
            assert set(counts.values()) == {1}
            assert {r.call_step(c) for c in r.call_ids} == {0}
            assert same_bits(
                tensor(r, only_call(r, "pos_enc").tensors()["args.0"]),
                tensor(
                    translation_reader, only_call(translation_reader, "pos_enc").tensors()["args.0"]
                ),
            )

    def test_include_and_exclude_globs(
        self, translation_reader: tracefmt.TraceReader, tmp_path: Path
    ) -> None:
        """Only paths matching an include glob are recorded; exclude globs remove paths."""
        full = path_counts(translation_reader)
        opts = RecordOptions(include=("encoder.*",), exclude=("*drop*", "*.ffn.*"))
        recorder.record_recipe(str(EXAMPLE), tmp_path / "t.h5", steps=2, seed=0, options=opts)
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            want = {
                p: n
                for p, n in full.items()
                if p.startswith("encoder.") and "drop" not in p and ".ffn." not in p
            }
            assert path_counts(r) == want and len(want) > 10

    def test_byte_budget_stops_with_a_note(
        self, translation_reader: tracefmt.TraceReader, tmp_path: Path
    ) -> None:
        """Past the budget no more calls are recorded; a note says why; the trace is complete."""
        recorder.record_recipe(
            str(EXAMPLE),
            tmp_path / "t.h5",
            steps=2,
            seed=0,
            options=RecordOptions(byte_budget=200_000),
        )
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            assert r.complete
            assert 0 < r.n_calls < translation_reader.n_calls / 2
            assert r.call_ids == list(range(r.n_calls))
            assert any("budget" in n for n in r.notes())
            assert r.steps == [0]


# -- 10. deduplication -----------------------------------------------------------------------


class TestDedup:
    """A tensor seen by several calls is stored once."""

    def test_output_feeding_the_next_module_has_one_id(
        self, translation_reader: tracefmt.TraceReader
    ) -> None:
        """LayerNorm output = attention's query/key/value = q_proj's input; fc1 output = act input."""
        r = translation_reader
        norm = only_call(r, "encoder.layers.0.self_attn_norm").tensors()["outputs"]
        attn = only_call(r, "encoder.layers.0.self_attn").tensors()
        q = only_call(r, "encoder.layers.0.self_attn.q_proj").tensors()["args.0"]
        assert norm == attn["args.0"] == attn["args.1"] == attn["args.2"] == q
        fc1 = only_call(r, "encoder.layers.0.ffn.fc1").tensors()["outputs"]
        assert fc1 == only_call(r, "encoder.layers.0.ffn.act").tensors()["args.0"]

    def test_heap_is_smaller_than_naive_io(self, translation_reader: tracefmt.TraceReader) -> None:
        """Stored bytes are well below the sum of every call's input, output and grad bytes."""
        r = translation_reader
        naive = sum(
            r.tensor(tid).nbytes
            for c in r.calls()
            for tid in [*c.tensors().values(), *c.grad_tensors().values()]
        )
        assert r.bytes_stored < 0.75 * naive


class TestRecorderStep:
    """A step's bookkeeping is let go at the next step, not kept for the whole recording."""

    @staticmethod
    def _live(kind: str) -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if type(o).__name__ == kind)

    def test_past_steps_leave_no_collectors_behind(self, tmp_path: Path) -> None:
        """Live gradient collectors stay at one step's worth however many steps are recorded."""
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        alive = []
        with recorder.record(model, tmp_path / "t.h5") as rec:
            for _ in range(6):
                rec.backward(model(torch.randn(3, 4)).square().sum())
                rec.step()
                alive.append(self._live("_GradCollector"))
        assert max(alive) <= 4  # the calls of at most one step (root and three children)
        assert self._live("_Frame") == 0

    def test_identities_of_updated_weights_are_forgotten(self, tmp_path: Path) -> None:
        """Dedup keys of weights the optimizer changed do not pile up step after step."""
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sizes = []
        with recorder.record(model, tmp_path / "t.h5") as rec:
            for _ in range(6):
                rec.backward(model(torch.randn(3, 4)).square().sum())
                rec.step()
                opt.step()
                opt.zero_grad()
                sizes.append(len(rec._capture._seen))
        assert sizes[-1] == sizes[1]

    def test_unchanged_weights_keep_their_id_across_steps(self, tmp_path: Path) -> None:
        """Weights no optimizer touched are stored once, however many steps name them."""
        model = nn.Linear(4, 2)
        record_model(tmp_path / "t.h5", model, lambda m, s: m(torch.randn(3, 4)).sum(), steps=3)
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            assert r.step_record(0).params == r.step_record(1).params == r.step_record(2).params

    def test_a_backward_after_step_is_still_recorded(self, tmp_path: Path) -> None:
        """A call whose backward comes after ``step()`` keeps its hooks until it reports."""
        model = nn.Linear(4, 2)
        with recorder.record(model, tmp_path / "t.h5") as rec:
            loss = model(torch.randn(3, 4)).sum()
            rec.step()
            loss.backward()
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            assert [c for c in r.calls() if c.backward is not None]


class TestRecordHeapFreeze:
    """Objects older than the recording are kept out of the cyclic collector's passes."""

    def test_the_heap_is_frozen_while_recording_only(self, tmp_path: Path) -> None:
        """gc.freeze() holds from record() to close(), then everything is unfrozen."""
        assert gc.get_freeze_count() == 0
        with recorder.record(nn.Linear(2, 2), tmp_path / "t.h5"):
            assert gc.get_freeze_count() > 0
        assert gc.get_freeze_count() == 0

    def test_a_start_that_fails_leaves_nothing_frozen(self, tmp_path: Path) -> None:
        """A progress callback raising in the constructor cannot leave the heap frozen."""
        def refuse(rec: recorder.Recorder) -> None:
            raise RuntimeError("no")

        with pytest.raises(RuntimeError):
            recorder.Recorder(nn.Linear(2, 2), tmp_path / "t.h5", on_progress=refuse)
        assert gc.get_freeze_count() == 0

    def test_a_process_that_froze_its_heap_is_left_alone(self, tmp_path: Path) -> None:
        """Objects the program froze itself stay frozen after the recording."""
        gc.freeze()
        try:
            frozen = gc.get_freeze_count()
            with recorder.record(nn.Linear(2, 2), tmp_path / "t.h5"):
                pass
            assert gc.get_freeze_count() == frozen
        finally:
            gc.unfreeze()


class TestEncodedPayloads:
    """Dropout masks and zero rows are stored encoded, and read back bit for bit."""

    @staticmethod
    def _dropout_model() -> tuple[nn.Module, dict[str, list[torch.Tensor]]]:
        """Linear -> Dropout -> Linear, with what the dropout really produced kept aside."""
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 64), nn.Dropout(0.3), nn.Linear(64, 4)).train()
        seen: dict[str, list[torch.Tensor]] = {"out": [], "grad_in": []}

        def keep(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
            seen["out"].append(out.detach().clone())

        def keep_grad(mod: nn.Module, grad_in: tuple, grad_out: tuple) -> None:
            seen["grad_in"].append(grad_in[0].detach().clone())

        model[1].register_forward_hook(keep)
        model[1].register_full_backward_hook(keep_grad)
        return model, seen

    def test_dropout_output_and_input_grad_are_masks(self, tmp_path: Path) -> None:
        """Both are masked-scale payloads against the input and the output gradient, and
        decode to exactly what the dropout produced."""
        model, seen = self._dropout_model()
        x = torch.randn(16, 8, requires_grad=True)
        record_model(tmp_path / "t.h5", model, lambda m, s: m(x).square().sum(), steps=2)
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            for step in (0, 1):
                call = only_call(r, "1", step=step)
                out, base = call.tensors()["outputs"], call.tensors()["args.0"]
                grads = call.grad_tensors()
                assert r.tensor(out).encoding == "masked-scale"
                assert r.tensor(grads["args.0"]).encoding == "masked-scale"
                assert r.tensor(out).nbytes < r.tensor(base).nbytes / 16
                assert same_bits(tensor(r, out), seen["out"][step])
                assert same_bits(tensor(r, grads["args.0"]), seen["grad_in"][step])
            assert tracefmt.validate_trace(tmp_path / "t.h5", deep=True).status == "valid"

    def test_eval_mode_dropout_is_the_input(self, tmp_path: Path) -> None:
        """In eval mode a dropout returns its input: one tensor id, nothing encoded."""
        model, _ = self._dropout_model()
        model.eval()
        with torch.no_grad(), recorder.record(model, tmp_path / "t.h5") as rec:
            model(torch.randn(4, 8))
            rec.step()
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            call = only_call(r, "1").tensors()
            assert call["outputs"] == call["args.0"] and r.tensor(call["outputs"]).encoding is None

    def test_a_dropout_computed_another_way_is_stored_as_is(self, tmp_path: Path) -> None:
        """A Dropout subclass that scales by 1.3 instead of 1/(1-p): no mask reproduces it,
        so its values are stored plainly and exactly."""

        class OddDropout(nn.Dropout):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x * (torch.rand_like(x) > self.p) * 1.3

        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 64), OddDropout(0.3), nn.Linear(64, 4)).train()
        seen: list[torch.Tensor] = []
        model[1].register_forward_hook(lambda m, a, o: seen.append(o.detach().clone()))
        x = torch.randn(16, 8)
        record_model(tmp_path / "t.h5", model, lambda m, s: m(x).sum())
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            out = only_call(r, "1").tensors()["outputs"]
            assert r.tensor(out).encoding is None
            assert same_bits(tensor(r, out), seen[0])

    def test_embedding_grad_keeps_only_used_rows(self, tmp_path: Path) -> None:
        """An embedding's weight gradient is zero outside the batch's tokens: zero-rows."""
        torch.manual_seed(0)
        model = nn.Sequential(nn.Embedding(200, 16), nn.Linear(16, 2))
        tokens = torch.tensor([[3, 17, 17, 150]])
        record_model(tmp_path / "t.h5", model, lambda m, s: m(tokens).sum())
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            tid = r.param_grads(0).grads["0.weight"]
            info = r.tensor(tid)
            assert info.encoding == "zero-rows" and info.nbytes < info.value_nbytes / 20
            assert same_bits(tensor(r, tid), model[0].weight.grad)


# -- 11. command line ------------------------------------------------------------------------


_FALLBACK_CLI = """
import argparse, sys
from recorder import cli
from tracefmt import TraceError
parser = argparse.ArgumentParser(prog="tensortrace")
cli.register(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args()
try:
    sys.exit(args.func(args))
except TraceError as exc:
    print(f"tensortrace: error: {exc}", file=sys.stderr)
    sys.exit(2)
"""


@pytest.fixture(scope="module")
def cli() -> list[str]:
    """The ``tensortrace`` command; while the dispatcher is not ready, recorder.cli alone."""
    probe = subprocess.run(
        [sys.executable, "-m", "tracefmt.cli", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if probe.returncode == 0 and "record" in probe.stdout:
        return [sys.executable, "-m", "tracefmt.cli"]
    return [sys.executable, "-c", _FALLBACK_CLI]


def run_cli(cli: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cli, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


class TestCli:
    """``tensortrace record``: a complete trace on success, one clear line on bad input."""

    def test_records_the_example(
        self, cli: list[str], tmp_path: Path, translation_reader: tracefmt.TraceReader
    ) -> None:
        """Exit 0 and a complete trace of the same run the API records."""
        out = tmp_path / "cli.h5"
        done = run_cli(
            cli, "record", "examples/translation.py", "-o", str(out), "--steps", "2", "--seed", "0"
        )
        assert done.returncode == 0, done.stderr
        with tracefmt.open_trace(out) as r:
            assert r.complete and r.steps == [0, 1]
            assert r.n_calls == translation_reader.n_calls
            for step in (0, 1):
                assert r.param_grads(step).loss == translation_reader.param_grads(step).loss

    def test_missing_recipe(self, cli: list[str], tmp_path: Path) -> None:
        """Exit 2 and one stderr line naming the file, no traceback, no trace."""
        missing = tmp_path / "nope.py"
        done = run_cli(cli, "record", str(missing), "-o", str(tmp_path / "x.h5"))
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and str(missing) in lines[0]
        assert "Traceback" not in done.stderr
        assert not (tmp_path / "x.h5").exists()

    def test_recipe_without_build_model(self, cli: list[str], tmp_path: Path) -> None:
        """Exit 2 with a line saying build_model() is missing."""
        recipe = write_recipe(
            tmp_path / "no_build.py",
            """
            def run_step(model, step):
                return 0.0
        """,
        )
        done = run_cli(cli, "record", str(recipe), "-o", str(tmp_path / "x.h5"))
        assert done.returncode == 2
        assert "build_model" in done.stderr and "Traceback" not in done.stderr


# -- 12. a recording that fails ---------------------------------------------------------------


FAILING_RECIPE = """
    import torch
    from torch import nn

    def build_model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))

    def run_step(model, step):
        x = torch.randn(2, 4)
        if step == 1:
            model[1](model[0](x))
            raise RuntimeError("boom in step 1")
        return model(x).sum()
"""


class TestFailedRecording:
    """An error in the user's step leaves an incomplete but readable trace of everything before."""

    def test_recipe_error(self, tmp_path: Path) -> None:
        """run_step raising in step 1: no END event, step 0 whole, step 1's two calls there."""
        recipe = write_recipe(tmp_path / "failing_recipe.py", FAILING_RECIPE)
        with pytest.raises(RuntimeError, match="boom"):
            recorder.record_recipe(str(recipe), tmp_path / "t.h5", steps=3)
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            assert not r.complete
            assert [c.label for c in r.calls(step=0)] == ["<root>#0", "0#0", "1#0", "2#0"]
            assert all(r.has_backward(c) for c in r.call_ids[:4])
            assert [c.label for c in r.calls(step=1)] == ["0#0", "1#0"]
            for c in r.calls(step=1):
                assert r.tensor(c.tensors()["outputs"]).has_payload

    def test_error_inside_a_module(self, tmp_path: Path) -> None:
        """A module raising mid-forward in a user loop: its parent and siblings before it are kept."""

        class Broken(nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                raise ValueError("bad layer")

        model = nn.Sequential(nn.Linear(4, 4), Broken())
        with (
            pytest.raises(ValueError, match="bad layer"),
            recorder.record(model, tmp_path / "t.h5"),
        ):
            model(torch.randn(2, 4))
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            assert not r.complete
            assert [c.label for c in r.calls()] == ["<root>#0", "0#0", "1#0"]
