"""CUDA paths: recording through pinned side-stream copies, device summaries, GPU replay.

Skipped without a CUDA device; run on a lent GPU with ``pytest -m cuda``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _summary_cases import summary_cases  # noqa: E402

import recorder  # noqa: E402
import tracefmt  # noqa: E402

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

ROOT = Path(__file__).resolve().parent.parent
RECIPE = str(ROOT / "examples" / "translation.py")


@pytest.fixture(scope="module")
def cuda_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cuda") / "ref_cuda.h5"
    recorder.record_recipe(RECIPE, path, steps=2, device="cuda", seed=0)
    return path


class TestRecordOnCuda:
    def test_trace_is_complete_and_tensors_match_summaries(self, cuda_trace: Path) -> None:
        """A CUDA recording is complete, and stored values agree with their recorded summaries."""
        with tracefmt.open_trace(cuda_trace) as r:
            assert r.complete and r.n_calls > 100
            for call in list(r.calls())[:40]:
                for tid in call.tensors().values():
                    info = r.tensor(tid)
                    if info.has_payload and info.summary is not None and info.numel:
                        v = r.read(tid).astype(np.float64)
                        fin = v[np.isfinite(v)]
                        if fin.size:
                            assert fin.max() == pytest.approx(info.summary.max, rel=1e-6, abs=1e-12)

    def test_fused_dropout_is_stored_as_masks(self, tmp_path: Path) -> None:
        """CUDA's fused dropout kernel: output and input gradient are masked-scale payloads
        that decode to the device's values bit for bit."""
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 256), torch.nn.Dropout(0.1),
                                    torch.nn.Linear(256, 4)).cuda().train()
        seen: list[torch.Tensor] = []
        model[1].register_forward_hook(lambda m, a, o: seen.append(o.detach().cpu()))
        model[1].register_full_backward_hook(lambda m, gi, go: seen.append(gi[0].detach().cpu()))
        x = torch.randn(64, 8, device="cuda")
        with recorder.record(model, tmp_path / "t.h5") as rec:
            rec.backward(model(x).square().sum())
            rec.step()
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            call = next(c for c in r.calls() if c.module == "1")
            out, grad_in = call.tensors()["outputs"], call.grad_tensors()["args.0"]
            assert r.tensor(out).encoding == r.tensor(grad_in).encoding == "masked-scale"
            for tid, want in ((out, seen[0]), (grad_in, seen[1])):
                assert r.read(tid).tobytes() == want.numpy().tobytes()

    def test_environment_names_the_gpu(self, cuda_trace: Path) -> None:
        """The run event names the CUDA device and the CUDA RNG state is recorded per call."""
        with tracefmt.open_trace(cuda_trace) as r:
            assert "cuda" in str(r.run.environment.get("cuda") or "") or r.run.environment["cuda"]
            call = r.call(1)
            assert call.rng.get("cuda"), "CUDA RNG state missing"

    def test_stats_mode_on_cuda_matches_full(self, tmp_path: Path, cuda_trace: Path) -> None:
        """Device-side summaries (one transfer per step) equal the numpy summaries of full mode."""
        stats_path = tmp_path / "stats.h5"
        opts = recorder.RecordOptions(mode="stats")
        recorder.record_recipe(RECIPE, stats_path, steps=1, device="cuda", seed=0, options=opts)
        with tracefmt.open_trace(stats_path) as s, tracefmt.open_trace(cuda_trace) as f:
            assert s.bytes_stored == 0
            for cs, cf in zip(list(s.calls(step=0))[:50], list(f.calls(step=0))[:50], strict=True):
                for name, tid in cs.tensors().items():
                    a, b = s.tensor(tid).summary, f.tensor(cf.tensors()[name]).summary
                    assert a is not None and b is not None
                    assert a.nan == b.nan and a.count == b.count
                    assert a.max == pytest.approx(b.max, rel=1e-5, abs=1e-9)


    def test_stats_mode_weights_and_grads_match_full(self, tmp_path: Path, cuda_trace: Path) -> None:
        """Parameters and their gradients, summarised a shape at a time, match full mode's."""
        stats_path = tmp_path / "stats.h5"
        opts = recorder.RecordOptions(mode="stats")
        recorder.record_recipe(RECIPE, stats_path, steps=1, device="cuda", seed=0, options=opts)
        with tracefmt.open_trace(stats_path) as s, tracefmt.open_trace(cuda_trace) as f:
            for got, want in ((s.step_record(0).params, f.step_record(0).params),
                              (s.param_grads(0).grads, f.param_grads(0).grads)):
                assert got.keys() == want.keys() and len(got) > 10
                for name in got:
                    a, b = s.tensor(got[name]).summary, f.tensor(want[name]).summary
                    assert a is not None and b is not None, name
                    assert (a.count, a.nan) == (b.count, b.nan), name
                    # two runs: atomics in an embedding's backward may round differently
                    assert a.min == pytest.approx(b.min, rel=1e-5, abs=1e-9), name
                    assert a.max == pytest.approx(b.max, rel=1e-5, abs=1e-9), name
                    assert a.mean == pytest.approx(b.mean, rel=1e-4, abs=1e-7), name

    def test_stats_mode_with_cpu_tensors_behind_device_summaries_finishes(
            self, tmp_path: Path) -> None:
        """CPU tensors larger than the memory budget in a CUDA stats recording do not hang."""
        class Mixed(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.gpu = torch.nn.Linear(64, 64).cuda()
                self.host = torch.nn.Identity()  # not "cpu": that would shadow Module.cpu

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                y = self.gpu(x)
                self.host(torch.ones(1 << 20))  # 4 MB on the host, per call
                return y

        model = Mixed()
        path = tmp_path / "mixed.h5"
        with recorder.record(model, path, mode="stats", memory_budget=1 << 20) as rec:
            for _ in range(3):
                model(torch.randn(8, 64, device="cuda")).sum().backward()
            rec.step()
        with tracefmt.open_trace(path) as r:
            assert r.complete and r.n_calls == 9


    def test_device_summaries_use_the_triton_kernels(self) -> None:
        """On a GPU the Triton summary kernels build (no torch fallback) and match the reference."""
        import warnings

        from _summary_checks import assert_summary_close

        import recorder._device_summary as kernels
        from recorder._summary import device_summary

        t = torch.randn(64, 300, device="cuda")
        t[3, 7] = float("nan")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            vec, unpack = device_summary(t)
        assert unpack.func is kernels.unpack_raw
        want = tracefmt.compute_summary(t.cpu().numpy())
        assert_summary_close(unpack(vec.cpu().numpy()), want, "cuda")

    @pytest.mark.parametrize("name", list(summary_cases()))
    def test_compiled_kernels_match_the_reference(self, name: str) -> None:
        """Each hard case, summarised by the compiled kernels on the GPU, matches float64 numpy."""
        from _summary_checks import assert_summary_close

        from recorder._device_summary import raw_summary, unpack_raw

        t = summary_cases()[name]
        got = unpack_raw(raw_summary(t.cuda()).cpu().numpy(), tuple(t.shape))
        assert_summary_close(got, tracefmt.compute_summary(t.float().numpy()), name)


    def test_compiled_stacked_kernels_match_the_reference(self) -> None:
        """Same-shaped tensors summarised in one launch each get their own summary."""
        from _summary_checks import assert_summary_close

        from recorder._device_summary import raw_summary_many, unpack_raw

        cases = summary_cases()
        tensors = [cases["randn"], cases["randn"] * 3 + 1, cases["nonfinite"],
                   cases["nonfinite"].flip(0), cases["rows-past-4096"], cases["bfloat16"]]
        vecs = raw_summary_many([t.cuda() for t in tensors], max_stack_bytes=1 << 12)
        for i, (t, vec) in enumerate(zip(tensors, vecs, strict=True)):
            got = unpack_raw(vec.cpu().numpy(), tuple(t.shape))
            assert_summary_close(got, tracefmt.compute_summary(t.float().numpy()), str(i))


class TestReplayOnCuda:
    def test_correct_candidates_pass_on_gpu(self, cuda_trace: Path) -> None:
        """The correct example candidates pass when replayed on the GPU."""
        from replayer import ReplayOptions, replay_trace

        rep = replay_trace(
            str(cuda_trace),
            str(ROOT / "examples/candidates/correct.py"),
            options=ReplayOptions(device="cuda"),
        )
        assert rep.ok, rep.counts()

    def test_broken_softmax_caught_on_gpu(self, cuda_trace: Path) -> None:
        """The batch-0-only softmax backward is caught on the GPU with batch elements 1..7 named."""
        from replayer import ReplayOptions, replay_trace

        rep = replay_trace(
            str(cuda_trace),
            str(ROOT / "examples/candidates/buggy/softmax_batch0_grad.py"),
            options=ReplayOptions(device="cuda"),
        )
        first = rep.first_divergence("backward")
        assert first is not None and first.module.endswith("softmax")
        batch = first.worst().batch_size
        assert batch and batch > 1
        assert first.bad_batch_indices == list(range(1, batch))

    def test_triton_candidates_pass_on_gpu(self, cuda_trace: Path) -> None:
        """The Triton LayerNorm and softmax kernels, compiled for the GPU, pass the replay."""
        pytest.importorskip("triton")
        if os.environ.get("TRITON_INTERPRET"):
            pytest.skip("TRITON_INTERPRET is set: this test is for compiled kernels")
        from replayer import ReplayOptions, replay_trace

        rep = replay_trace(
            str(cuda_trace),
            str(ROOT / "examples/candidates/triton_kernels.py"),
            options=ReplayOptions(device="cuda"),
        )
        assert rep.ok, [r.to_dict() for r in rep.results if r.status != "pass"][:2]
