"""The Triton device summaries agree with the float64 reference summary.

On a CPU machine the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set
before anything imports triton); on a GPU ``tests/test_cuda.py`` records with them compiled.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from _list_sink import ListSink  # noqa: E402
from _summary_cases import summary_cases  # noqa: E402
from _summary_checks import assert_summary_close  # noqa: E402
from conftest import EXAMPLE, EXAMPLE_SEED, EXAMPLE_STEPS  # noqa: E402

import tracefmt  # noqa: E402

pytest.importorskip("triton")

_G = torch.Generator().manual_seed(0)
CASES = summary_cases()


def _reference(t: torch.Tensor) -> tracefmt.TensorSummary:
    return tracefmt.compute_summary(t.float().numpy())


class TestRawSummary:
    @pytest.mark.parametrize("name", list(CASES))
    def test_matches_the_reference_summary(self, name: str) -> None:
        """Counts, min and max exact; mean, std, histogram and batch rows within the spec."""
        from recorder._device_summary import raw_summary, unpack_raw

        t = CASES[name]
        got = unpack_raw(raw_summary(t).numpy(), tuple(t.shape))
        assert_summary_close(got, _reference(t), name)

    def test_non_contiguous_input(self) -> None:
        """A transposed tensor is summarised by its values, rows along its own first dim."""
        from recorder._device_summary import raw_summary, unpack_raw

        t = torch.randn(40, 6, generator=_G).t()
        got = unpack_raw(raw_summary(t).numpy(), tuple(t.shape))
        assert_summary_close(got, _reference(t.contiguous()), "transposed")


class TestRawSummaryMany:
    def test_same_shaped_tensors_each_get_their_own_summary(self) -> None:
        """Stacked in one launch, every tensor's summary matches its own reference."""
        from recorder._device_summary import raw_summary_many, unpack_raw

        tensors = [CASES["randn"], CASES["randn"] * -2 + 5, CASES["randn"].transpose(0, 1),
                   CASES["nonfinite"], CASES["nonfinite"].flip(1), CASES["0-d"], CASES["0-d"] + 1,
                   CASES["bfloat16"], CASES["bfloat16"] * 2]
        for i, (t, vec) in enumerate(zip(tensors, raw_summary_many(tensors), strict=True)):
            got = unpack_raw(vec.numpy(), tuple(t.shape))
            assert_summary_close(got, _reference(t.contiguous()), f"tensor {i}")

    def test_stacks_split_at_the_byte_limit_give_the_same_summaries(self) -> None:
        """A group larger than max_stack_bytes is summarised in parts, with the same result."""
        from recorder._device_summary import raw_summary_many

        tensors = [torch.randn(3, 5, generator=_G) for _ in range(5)]
        whole = raw_summary_many(tensors)
        parts = raw_summary_many(tensors, max_stack_bytes=2 * 3 * 5 * 4)
        for a, b in zip(whole, parts, strict=True):
            assert torch.equal(a, b)


class TestTensorCaptureCaptureMany:
    def test_ids_and_summaries_as_one_capture_each(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Batched device summaries keep put order, deduplicate, and match the reference."""
        import recorder._capture as capture_module
        import recorder._device_summary as kernels
        import recorder._summary as summary_module

        launches: list[int] = []

        def device_summaries(ts: list[torch.Tensor]) -> list[tuple[torch.Tensor, object]]:
            launches.append(len(ts))
            return [(vec, partial(kernels.unpack_raw, shape=tuple(t.shape)))
                    for t, vec in zip(ts, kernels.raw_summary_many(ts), strict=True)]

        monkeypatch.setattr(capture_module, "_summarised_on_device", lambda t: True)
        monkeypatch.setattr(capture_module, "device_summaries", device_summaries)
        monkeypatch.setitem(summary_module._triton_state, "kernels", kernels)
        sink = ListSink()
        capture = capture_module.TensorCapture(sink, mode="stats")  # type: ignore[arg-type]
        w = [torch.randn(4, 6, generator=_G) for _ in range(3)]
        ids = capture.capture_many([w[0], w[1], w[0], w[2]], persistent=True)
        assert ids == [0, 1, 0, 2] and launches == [3]
        capture.flush_stats()
        assert [item.tid for item in sink.items] == [0, 1, 2]
        for item, t in zip(sink.items, [w[0], w[1], w[2]], strict=True):
            assert_summary_close(item.summary(), _reference(t), f"tensor {item.tid}")


class TestUnpackRawMany:
    def test_each_summary_is_its_own_tensors(self) -> None:
        """Unpacked together, vectors of different row counts each match their reference."""
        from recorder._device_summary import raw_summary, unpack_raw_many

        names = [n for n in CASES if CASES[n].numel()]
        got = unpack_raw_many([raw_summary(CASES[n]).numpy() for n in names],
                              [tuple(CASES[n].shape) for n in names])
        assert len(got) == len(names)
        for name, summary in zip(names, got, strict=True):
            assert_summary_close(summary, _reference(CASES[name]), name)


class TestDeviceSummary:
    def test_cpu_tensors_take_the_torch_path(self) -> None:
        """Without CUDA the torch formulation is used and unpacked by its own function."""
        from recorder._summary import device_summary, unpack_summary

        vec, unpack = device_summary(torch.ones(3, 4))
        assert unpack is unpack_summary and vec.dtype == torch.float64
        assert unpack(vec.numpy()).count == 12

    def test_unpacked_batch_rows_have_the_spec_columns(self) -> None:
        """Batch rows are (l2, max_abs, nonfinite, zeros) for the first 4096 rows only."""
        from recorder._device_summary import raw_summary, unpack_raw

        t = CASES["rows-past-4096"]
        got = unpack_raw(raw_summary(t).numpy(), tuple(t.shape))
        assert got.batch.shape == (4096, 4)
        np.testing.assert_allclose(got.batch[:, 0], torch.linalg.vector_norm(t[:4096], dim=1),
                                   rtol=1e-6)


class TestStatsPlumbing:
    def test_raw_vectors_survive_the_one_transfer_per_step(self,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
        """Device summaries queued in stats mode unpack to the reference after flush_stats."""
        from functools import partial

        import recorder._capture as capture_module
        import recorder._device_summary as kernels
        import recorder._summary as summary_module
        from recorder._device_summary import raw_summary, unpack_raw
        monkeypatch.setattr(capture_module, "device_summary", lambda t: (
            raw_summary(t), partial(unpack_raw, shape=tuple(t.shape))))
        monkeypatch.setitem(summary_module._triton_state, "kernels", kernels)
        unpacked: list[int] = []
        many = kernels.unpack_raw_many
        monkeypatch.setattr(kernels, "unpack_raw_many",
                            lambda raws, shapes: unpacked.append(len(raws)) or many(raws, shapes))
        sink = ListSink()
        capture = capture_module.TensorCapture(sink, mode="stats")  # type: ignore[arg-type]
        tensors = [CASES["randn"], CASES["nonfinite"], CASES["bfloat16"]]
        for i, t in enumerate(tensors):
            capture._queue_stats(t, i)  # what a CUDA tensor takes in stats mode
        capture.flush_stats()
        for item, t in zip(sink.items, tensors, strict=True):
            assert_summary_close(item.summary(), _reference(t), str(t.dtype))
        assert unpacked == [3]  # the flush's summaries unpacked in one go


class TestStatsRecordingThroughTheKernels:
    def test_example_recording_matches_the_full_values(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            translation_reader: tracefmt.TraceReader) -> None:
        """The example recorded in stats mode as a CUDA model would be: every summary right."""
        from functools import partial

        import recorder
        import recorder._capture as capture_module
        from recorder._device_summary import SUPPORTED, raw_summary, unpack_raw
        from recorder._summary import summary_vector, unpack_summary

        through_kernels: list[int] = []

        def kernels_or_torch(t: torch.Tensor) -> tuple[torch.Tensor, object]:
            if t.dtype in SUPPORTED and t.numel():
                through_kernels.append(t.numel())
                return raw_summary(t), partial(unpack_raw, shape=tuple(t.shape))
            return summary_vector(t), unpack_summary

        monkeypatch.setattr(capture_module, "device_summary", kernels_or_torch)
        import recorder._device_summary as kernels
        import recorder._summary as summary_module
        monkeypatch.setitem(summary_module._triton_state, "kernels", kernels)
        monkeypatch.setattr(capture_module.TensorCapture, "_queue_cpu",
                            lambda self, t, tid, nbytes, dropout_of=None: self._queue_stats(t, tid))
        path = tmp_path / "stats.h5"
        recorder.record_recipe(str(EXAMPLE), path, steps=EXAMPLE_STEPS, seed=EXAMPLE_SEED,
                               options=recorder.RecordOptions(mode="stats"))
        checked = 0
        with tracefmt.open_trace(path) as stats:
            for call in translation_reader.call_ids:
                full, got = translation_reader.call(call), stats.call(call)
                pairs = [*zip(full.tensors().values(), got.tensors().values(), strict=True),
                         *zip(full.grad_tensors().values(), got.grad_tensors().values(),
                              strict=True)]
                for want_id, got_id in pairs:
                    want = tracefmt.compute_summary(translation_reader.read(want_id))
                    assert_summary_close(stats.tensor(got_id).summary, want, full.label)
                    checked += 1
        assert checked > 800 and len(through_kernels) > 500
