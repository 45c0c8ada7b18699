"""Round trips through TraceWriter and open_trace, summaries, and tree descriptions."""

from __future__ import annotations

import dataclasses
import math
import os
from collections import namedtuple
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tracefmt
from tracefmt import EventKind, ModuleInfo, RunInfo, TensorRef, TraceWriter

SPECIAL_BITS = {  # -0, NaN with payload, smallest subnormal, +inf, -inf, largest finite
    "float64": ("<u8", [1 << 63, 0x7FF8000000000001, 1, 0x7FF0000000000000, 0xFFF0000000000000,
                        0x7FEFFFFFFFFFFFFF]),
    "float32": ("<u4", [1 << 31, 0x7FC00001, 1, 0x7F800000, 0xFF800000, 0x7F7FFFFF]),
    "float16": ("<u2", [0x8000, 0x7E01, 1, 0x7C00, 0xFC00, 0x7BFF]),
    "bfloat16": ("<u2", [0x8000, 0x7FC1, 1, 0x7F80, 0xFF80, 0x7F7F]),
}


def bit_patterns(name: str, seed: int = 0) -> np.ndarray:
    """Stored values of ``name``: random bits plus the special patterns, as a (4, n) array."""
    info = tracefmt.dtype_info(name)
    storage = np.dtype(info.storage)
    rng = np.random.default_rng(seed)
    if name == "bool":
        return rng.integers(0, 2, size=(4, 6)).astype(bool)
    raw = rng.integers(0, 256, size=24 * storage.itemsize, dtype=np.uint8).view(storage)
    if name in SPECIAL_BITS:
        fmt, bits = SPECIAL_BITS[name]
        raw = raw.copy()
        raw.view(fmt)[:len(bits)] = bits
    elif name in ("complex64", "complex128", "complex32"):
        half = {"complex128": "<u8", "complex64": "<u4", "complex32": "<u2"}[name]
        base = {"complex128": "float64", "complex64": "float32", "complex32": "float16"}[name]
        raw = raw.copy()
        raw.view(half)[:6] = SPECIAL_BITS[base][1]
    return raw.reshape(4, -1)


def same_values(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def assert_same_summary(got: tracefmt.TensorSummary | None, want: tracefmt.TensorSummary) -> None:
    assert got is not None
    for key in ("count", "min", "max", "mean", "std", "nan", "posinf", "neginf", "zeros"):
        assert same_values(getattr(got, key), getattr(want, key)), key
    assert got.hist == want.hist
    np.testing.assert_array_equal(got.batch, want.batch)


def write_one(path: Path, data: np.ndarray | None, **kw: Any) -> int:
    with TraceWriter(path) as w:
        w.write_run(RunInfo((ModuleInfo(0, "", "t.M"),), {}, {}))
        return w.add_tensor(data, **kw)


class TestTraceWriterAddTensor:
    """``add_tensor`` then ``TraceReader.read``/``tensor`` give back exactly what was written."""

    @pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
    @pytest.mark.parametrize("name", sorted(tracefmt.DTYPES))
    def test_every_dtype_round_trips_bitwise(self, tmp_path: Path, name: str) -> None:
        """Stored bits come back unchanged (NaN payloads, -0.0, subnormals, inf), decoded
        values equal decode_values, and the stored summary equals compute_summary."""
        raw = bit_patterns(name)
        tid = write_one(tmp_path / "t.h5", raw, dtype=name)
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            back = r.read(tid, decode=False, verify=True)
            assert back.dtype == raw.dtype and back.shape == raw.shape
            assert back.tobytes() == raw.tobytes()
            decoded = r.read(tid)
            want = tracefmt.decode_values(raw, name)
            assert decoded.tobytes() == np.ascontiguousarray(want).tobytes()
            info = r.tensor(tid)
            assert (info.dtype, info.shape, info.strides, info.nbytes) == (name, (4, raw.shape[1]), (raw.shape[1], 1), raw.nbytes)
            assert_same_summary(info.summary, tracefmt.compute_summary(want))

    @pytest.mark.parametrize("shape", [(0, 3), (3, 0), (0,)])
    def test_empty_tensor(self, tmp_path: Path, shape: tuple[int, ...]) -> None:
        """A tensor with no elements keeps its shape, has a 0-byte payload and a summary of nothing."""
        tid = write_one(tmp_path / "t.h5", np.zeros(shape, np.float32))
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            info = r.tensor(tid)
            assert info.has_payload and info.nbytes == 0 and info.shape == shape
            assert r.read(tid, verify=True).shape == shape
            assert info.summary is not None and info.summary.count == 0 and math.isnan(info.summary.min)

    def test_zero_dim_tensor(self, tmp_path: Path) -> None:
        """A 0-d tensor keeps ndim 0 and its one value."""
        tid = write_one(tmp_path / "t.h5", np.array(-0.0, np.float64))
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            v = r.read(tid)
            assert v.shape == () and math.copysign(1, float(v)) == -1
            assert r.tensor(tid).strides == () and len(r.tensor(tid).summary.batch) == 0

    def test_non_contiguous_input(self, tmp_path: Path) -> None:
        """A transposed array is stored in C order with the strides the caller recorded."""
        a = np.arange(6, dtype=np.int32).reshape(2, 3).T
        tid = write_one(tmp_path / "t.h5", a, strides=(1, 3))
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            assert np.array_equal(r.read(tid), a) and r.read(tid).flags.c_contiguous
            assert r.tensor(tid).strides == (1, 3) and r.tensor(tid).shape == (3, 2)

    def test_default_strides_are_c_order(self, tmp_path: Path) -> None:
        """Without strides the writer records C-order element strides (size-0 dims count as 1)."""
        tid = write_one(tmp_path / "t.h5", np.zeros((2, 0, 3), np.float32))
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            assert r.tensor(tid).strides == (3, 3, 1)

    def test_row_slices(self, tmp_path: Path) -> None:
        """``rows=`` reads a contiguous slice of dimension 0 and nothing else."""
        a = np.arange(20, dtype=np.float32).reshape(5, 4)
        tid = write_one(tmp_path / "t.h5", a)
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            assert np.array_equal(r.read(tid, rows=slice(1, 3)), a[1:3])
            assert np.array_equal(r.read(tid, rows=slice(-2, None)), a[-2:])
            assert r.read(tid, rows=slice(7, 9)).shape == (0, 4)
            with pytest.raises(tracefmt.UsageError, match="contiguous"):
                r.read(tid, rows=slice(0, 4, 2))

    def test_stats_mode_tensor(self, tmp_path: Path) -> None:
        """Without data the row has no payload, keeps dtype, shape, strides and summary,
        and reading values is a usage error."""
        summary = tracefmt.compute_summary(np.array([[1.0, np.nan]], np.float32))
        tid = write_one(tmp_path / "t.h5", None, dtype="bfloat16", shape=(1, 2), strides=(1, 1),
                        summary=summary)
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            info = r.tensor(tid)
            assert (info.has_payload, info.nbytes, info.offset, info.crc32) == (False, 0, 0, 0)
            assert (info.dtype, info.shape, info.strides) == ("bfloat16", (1, 2), (1, 1))
            assert_same_summary(info.summary, summary)
            with pytest.raises(tracefmt.UsageError, match="stats mode"):
                r.read(tid)

    def test_requires_grad_flag_and_batch_cap(self, tmp_path: Path) -> None:
        """requires_grad survives, and at most 4096 per-batch-element rows are stored."""
        tid = write_one(tmp_path / "t.h5", np.ones((5000, 2), np.float16), requires_grad=True)
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            info = r.tensor(tid)
            assert info.requires_grad and info.summary.batch.shape == (4096, 4)
            assert info.summary.batch[:, 0].tolist() == [math.sqrt(2)] * 4096

    def test_data_of_wrong_width_is_refused(self, tmp_path: Path) -> None:
        """float8 data must come as one-byte bits; wider arrays are a format error."""
        with pytest.raises(tracefmt.TraceFormatError, match="1-byte"):
            write_one(tmp_path / "t.h5", np.zeros(3, np.float32), dtype="float8_e4m3fn")


def write_many(path: Path, arrays: list[np.ndarray], **kw: Any) -> list[int]:
    """A trace holding ``arrays`` (spanning many 1 MiB heap chunks), flushed in between."""
    with TraceWriter(path, flush_bytes=3 << 20, **kw) as w:
        w.write_run(RunInfo((ModuleInfo(0, "", "t.M"),), {}, {}))
        return [w.add_tensor(a) for a in arrays]


def many_arrays() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    sizes = [3, 700_000, 1, 262_144, 5, 1_500_000, 0, 40_000]
    return [rng.standard_normal(n).astype(np.float32) for n in sizes] + [
        rng.integers(0, 9, size=(3, 70_000)).astype(np.int64), np.array(True)]


class TestTraceReaderReadInto:
    """``read_into`` fills a caller's buffer with exactly the stored bytes, by either path."""

    def test_matches_read_for_tensors_across_chunks(self, tmp_path: Path) -> None:
        """Every tensor, small or spanning chunks at odd offsets, reads back byte for byte."""
        arrays = many_arrays()
        tids = write_many(tmp_path / "t.h5", arrays)
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            assert r._direct is not None, "an uncompressed heap is read straight from the file"
            for tid, a in zip(tids, arrays, strict=True):
                out = np.empty(a.nbytes, np.uint8)
                got = r.read_into(tid, out)
                assert got.shape == a.shape and np.array_equal(got, a)
                assert np.shares_memory(got, out) or not a.size
                np.testing.assert_array_equal(r.read(tid), a)

    def test_chunks_that_are_not_plain_fall_back_to_hdf5(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A chunk HDF5 does not place plainly (every third here) is read through h5py."""
        from tracefmt._direct import DirectHeap

        arrays = many_arrays()
        tids = write_many(tmp_path / "t.h5", arrays)
        real = DirectHeap._offset
        monkeypatch.setattr(DirectHeap, "_offset",
                            lambda self, k: None if k % 3 == 2 else real(self, k))
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            for tid, a in zip(tids, arrays, strict=True):
                np.testing.assert_array_equal(r.read(tid), a)

    def test_compressed_heaps_read_through_hdf5(self, tmp_path: Path) -> None:
        """A gzip heap has no plain byte runs: no direct reader, same values."""
        arrays = many_arrays()
        tids = write_many(tmp_path / "t.h5", arrays, compression="gzip")
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            assert r._direct is None
            for tid, a in zip(tids, arrays, strict=True):
                np.testing.assert_array_equal(r.read_into(tid, np.empty_like(a)), a)

    def test_refuses_a_buffer_of_the_wrong_size(self, tmp_path: Path) -> None:
        """A buffer one byte short is a usage error, not a partial read."""
        tid = write_one(tmp_path / "t.h5", np.arange(10, dtype=np.float32))
        with tracefmt.open_trace(tmp_path / "t.h5") as r, pytest.raises(tracefmt.UsageError):
            r.read_into(tid, np.empty(39, np.uint8))


class TestTraceReaderTensor:
    """``TraceReader.tensor`` keeps recently built rows, bounded, and never mixes them up."""

    def test_repeated_lookups_reuse_one_info(self, tmp_path: Path) -> None:
        """A second lookup of the same id (int or numpy int) returns the same object."""
        tid = write_one(tmp_path / "t.h5", np.arange(6, dtype=np.float32))
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            assert r.tensor(tid) is r.tensor(np.int64(tid))

    def test_evicted_entries_are_rebuilt_right(self, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
        """With room for two, cycling through five tensors keeps each id's own shape."""
        import tracefmt._reader as reader_module

        monkeypatch.setattr(reader_module, "_INFO_CACHE", 2)
        arrays = [np.zeros((i + 1, 2), np.float32) for i in range(5)]
        tids = write_many(tmp_path / "t.h5", arrays)
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            for _ in range(2):
                for tid, a in zip(tids, arrays, strict=True):
                    info = r.tensor(tid)
                    assert (info.id, info.shape) == (tid, a.shape)
            assert len(r._info_cache) == 2


def _dropout(base: np.ndarray, keep: np.ndarray, scale: float) -> np.ndarray:
    """``base * (keep ? scale : 0)`` in base's dtype, as torch's dropout computes it."""
    with np.errstate(all="ignore"):
        return base * np.where(keep, base.dtype.type(scale), base.dtype.type(0))


class TestEncodeMaskedScale:
    """``encode_masked_scale`` stores a dropout-shaped tensor as bits, or declines."""

    @pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
    def test_round_trips_bit_for_bit(self, tmp_path: Path, dtype: str) -> None:
        """Random bits, -0.0, subnormals and kept infinities: the reader rebuilds every bit."""
        rng = np.random.default_rng(1)
        base = np.concatenate([bit_patterns(dtype, seed).reshape(-1) for seed in range(3)])
        base = base[:64].reshape(8, 8)
        base[np.isnan(base)] = 1.5  # a NaN value is declined (next test)
        keep = (rng.random(base.shape) > 0.3) | np.isinf(base)  # inf * 0 would be NaN
        scale = float(base.dtype.type(1 / 0.7))
        values = _dropout(base, keep, scale)
        enc = tracefmt.encode_masked_scale(values, base, base_id=0, scales=(2.0, scale))
        assert enc is not None and enc.nbytes == 24 + 8
        with TraceWriter(tmp_path / "t.h5") as w:
            w.write_run(RunInfo((), {}, {}))
            w.add_tensor(base, summary=None)  # random bits: the summary is not the point
            tid = w.add_tensor(values, encoded=enc, summary=None)
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            assert r.tensor(tid).encoding == "masked-scale"
            assert r.read(tid, verify=True).tobytes() == values.tobytes()
            assert r.read(tid, rows=slice(2, 5)).tobytes() == values[2:5].tobytes()
            out = np.empty(values.nbytes, np.uint8)
            assert r.read_into(tid, out).tobytes() == values.tobytes()

    def test_declines_values_no_scale_reproduces(self) -> None:
        """One element off by one ulp, or the wrong scale: None, store the values instead."""
        base = np.linspace(-3, 3, 40, dtype=np.float32)
        keep = np.arange(40) % 3 != 0
        values = _dropout(base, keep, 1.25)
        assert tracefmt.encode_masked_scale(values, base, base_id=0, scales=(1.5,)) is None
        values[7] = np.nextafter(values[7], np.float32(np.inf))
        assert tracefmt.encode_masked_scale(values, base, base_id=0, scales=(1.25,)) is None

    def test_declines_values_holding_nan(self) -> None:
        """A NaN value (a NaN base, or an infinite one dropped) is stored plainly: which NaN
        a product gives is not the same on every machine."""
        base = np.array([1.0, np.inf, 2.0, np.nan], np.float32)
        assert tracefmt.encode_masked_scale(_dropout(base, np.array([1, 0, 1, 1], bool), 2.0),
                                            base, base_id=0, scales=(2.0,)) is None
        assert tracefmt.encode_masked_scale(_dropout(base[:3], np.array([1, 1, 0], bool), 2.0),
                                            base[:3], base_id=0, scales=(2.0,)) is not None

    def test_declines_other_dtypes_and_shapes(self) -> None:
        """bfloat16 bits (stored as uint16), ints and mismatched shapes are not encoded."""
        ints = np.arange(16, dtype=np.int32)
        assert tracefmt.encode_masked_scale(ints, ints, base_id=0, scales=(1.0,)) is None
        f = np.ones(16, np.float32)
        assert tracefmt.encode_masked_scale(f, f.reshape(4, 4), base_id=0, scales=(1.0,)) is None

    def test_writer_refuses_a_payload_for_another_shape(self, tmp_path: Path) -> None:
        """The writer parses what it is given: a mask for 16 elements cannot describe 17."""
        f = np.ones(16, np.float32)
        enc = tracefmt.encode_masked_scale(f, f, base_id=0, scales=(1.0,))
        with TraceWriter(tmp_path / "t.h5") as w, pytest.raises(tracefmt.UsageError, match="bad encoded"):
            w.add_tensor(f)
            w.add_tensor(np.ones(17, np.float32), encoded=enc)


class TestEncodeZeroRows:
    """``encode_zero_rows`` leaves out all-zero rows, or declines."""

    def test_round_trips_and_keeps_negative_zero_rows(self, tmp_path: Path) -> None:
        """Zero rows come back as +0.0; a row of -0.0 is not zero bytes and is stored."""
        table = np.zeros((20, 3), np.float32)
        table[4] = [1.0, np.nan, -2.0]
        table[11] = -0.0
        enc = tracefmt.encode_zero_rows(table)
        assert enc is not None and enc.nbytes == 8 + 8 + 2 * 12
        with TraceWriter(tmp_path / "t.h5") as w:
            w.write_run(RunInfo((), {}, {}))
            tid = w.add_tensor(table, encoded=enc)
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            assert r.tensor(tid).encoding == "zero-rows"
            assert r.tensor(tid).value_nbytes == table.nbytes
            assert r.read(tid, verify=True).tobytes() == table.tobytes()

    def test_declines_when_little_is_saved(self) -> None:
        """Fewer than a quarter of the rows zero, or fewer than 8 rows: None."""
        table = np.ones((16, 4), np.float32)
        table[:3] = 0
        assert tracefmt.encode_zero_rows(table) is None
        assert tracefmt.encode_zero_rows(np.zeros((7, 4), np.float32)) is None
        assert tracefmt.encode_zero_rows(np.zeros((16, 4), np.float32)) is not None


class TestTraceWriterPageCache:
    """A recording does not keep its gigabytes in the page cache."""

    @pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise here")
    def test_every_heap_chunk_is_advised_away(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Each heap write advises DONTNEED from where the write before last ended; together
        the ranges cover every heap chunk in the file."""
        from tracefmt._direct import DirectHeap

        calls: list[tuple[int, int, int]] = []
        real = os.posix_fadvise

        def spy(fd: int, offset: int, length: int, advice: int) -> None:
            calls.append((offset, offset + length, advice))
            real(fd, offset, length, advice)

        monkeypatch.setattr(os, "posix_fadvise", spy)
        arrays = many_arrays()
        write_many(tmp_path / "t.h5", arrays)
        assert len(calls) >= 3 and {a for _, _, a in calls} == {os.POSIX_FADV_DONTNEED}
        assert calls[0][0] == 0
        assert all(calls[k][0] == calls[k - 2][1] for k in range(2, len(calls)))
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            heap = DirectHeap.open(r._heap)
            assert heap is not None
            n_chunks = -(-r.bytes_stored // (1 << 20))
            for k in range(n_chunks):
                at = heap._offset(k)
                assert at is not None
                assert any(lo <= at and at + (1 << 20) <= hi for lo, hi, _ in calls), k


class TestTraceReaderNonfiniteFlags:
    def test_flags_match_each_tensors_summary(self, tmp_path: Path) -> None:
        """True exactly where the summary counts NaN or Inf; False without a summary."""
        values = [np.array([1.0, 2.0]), np.array([np.nan, 1.0]), np.array([np.inf]),
                  np.array([-np.inf, 0.0]), np.array([np.nan])]
        path = tmp_path / "t.h5"
        with TraceWriter(path) as w:
            w.write_run(RunInfo((ModuleInfo(0, "", "t.M"),), {}, {}))
            for v in values:
                w.add_tensor(v.astype(np.float32))
            w.add_tensor(np.array([np.nan], dtype=np.float32), summary=None)
        with tracefmt.open_trace(path) as r:
            flags = r.nonfinite_flags()
            assert flags.tolist() == [False, True, True, True, True, False]
            for tid in range(r.n_tensors):
                s = r.tensor(tid).summary
                assert flags[tid] == bool(s is not None and s.nan + s.posinf + s.neginf)

    def test_empty_trace(self, tmp_path: Path) -> None:
        """A trace without tensors gives an empty array."""
        path = tmp_path / "t.h5"
        with TraceWriter(path) as w:
            w.write_run(RunInfo((ModuleInfo(0, "", "t.M"),), {}, {}))
        with tracefmt.open_trace(path) as r:
            assert r.nonfinite_flags().shape == (0,)


class TestComputeSummary:
    """``compute_summary`` implements spec section 7."""

    def test_moments_are_over_finite_elements(self) -> None:
        """min/max/mean/std ignore NaN and infinities, which are counted instead."""
        s = tracefmt.compute_summary(np.array([1, np.nan, np.inf, -np.inf, 3, 0], np.float32))
        assert (s.count, s.nan, s.posinf, s.neginf, s.zeros) == (6, 1, 1, 1, 1)
        assert (s.min, s.max, s.mean) == (0.0, 3.0, 4 / 3)
        assert s.std == pytest.approx(np.std([1, 3, 0])) and sum(s.hist) == 3

    def test_histogram_bins(self) -> None:
        """32 equal bins over [min, max], the last one closed."""
        s = tracefmt.compute_summary(np.array([0.0, 1.0, 0.5, 31 / 32]))
        assert s.hist[0] == 1 and s.hist[16] == 1 and s.hist[31] == 2 and sum(s.hist) == 4

    def test_constant_tensor_fills_bin_0(self) -> None:
        """max == min puts every finite element in bin 0."""
        s = tracefmt.compute_summary(np.full((3, 3), 7, np.int64))
        assert s.hist[0] == 9 and sum(s.hist) == 9 and s.std == 0

    def test_nothing_finite(self) -> None:
        """All-NaN input has NaN moments and an empty histogram."""
        s = tracefmt.compute_summary(np.array([np.nan, np.inf]))
        assert math.isnan(s.min) and math.isnan(s.std) and sum(s.hist) == 0

    def test_complex_by_magnitude_and_bool_as_int(self) -> None:
        """Complex values are summarised by |z|, booleans as 0/1."""
        assert tracefmt.compute_summary(np.array([3 + 4j, 0j])).max == 5.0
        s = tracefmt.compute_summary(np.array([True, False, True]))
        assert (s.mean, s.zeros) == (2 / 3, 1)

    def test_batch_rows(self) -> None:
        """One row per index of dim 0: l2 and max_abs of finite values, non-finite and zero counts."""
        s = tracefmt.compute_summary(np.array([[3.0, -4.0, np.nan], [0.0, 0.0, np.inf]]))
        assert s.batch.tolist() == [[5.0, 4.0, 1.0, 0.0], [0.0, 0.0, 1.0, 2.0]]
        assert len(tracefmt.compute_summary(np.ones(())).batch) == 0


class TestDecodeValues:
    """``decode_values`` widens the narrow floats exactly."""

    @pytest.mark.parametrize(("name", "code", "value"), [
        ("float8_e4m3fn", 0x7E, 448.0), ("float8_e4m3fn", 0x80, -0.0), ("float8_e4m3fn", 0x7F, math.nan),
        ("float8_e4m3fnuz", 0x7F, 240.0), ("float8_e4m3fnuz", 0x80, math.nan),
        ("float8_e5m2", 0x7C, math.inf), ("float8_e5m2", 0x7D, math.nan), ("float8_e5m2", 0x01, 2.0**-16),
        ("float8_e5m2fnuz", 0x7F, 57344.0), ("float8_e8m0fnu", 0x7F, 1.0), ("float8_e8m0fnu", 0xFF, math.nan),
    ])
    def test_float8_landmarks(self, name: str, code: int, value: float) -> None:
        """Landmark codes decode to the values of the spec's float8 table."""
        got = float(tracefmt.decode_values(np.array([code], np.uint8), name)[0])
        assert same_values(got, value) and math.copysign(1, got) == math.copysign(1, value)

    def test_bfloat16_and_complex32(self) -> None:
        """bfloat16 is the upper half of a float32; complex32 is a (real, imag) float16 pair."""
        assert tracefmt.decode_values(np.array([0x3FC0], np.uint16), "bfloat16")[0] == 1.5
        pair = np.array([0x3C00 | (0xC000 << 16)], np.uint32)
        assert tracefmt.decode_values(pair, "complex32")[0] == 1 - 2j


# -- tree descriptions ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Fake:
    """Stands in for a framework tensor."""

    id: int


Point = namedtuple("Point", ["x", "y"])


@dataclasses.dataclass
class Box:
    inner: Any
    label: str


def _leaf(obj: Any) -> Any:
    return {"$": "tensor", "id": obj.id} if isinstance(obj, Fake) else NotImplemented


_scalars = (st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1)
            | st.floats(allow_nan=False) | st.text(max_size=5) | st.binary(max_size=5)
            | st.complex_numbers(allow_nan=False) | st.builds(Fake, st.integers(0, 10**6)))
_keys = st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=4)
_values = st.recursive(_scalars, lambda c: (
    st.lists(c, max_size=4) | st.lists(c, max_size=4).map(tuple)
    | st.dictionaries(_keys, c, max_size=4) | st.builds(Point, c, c) | st.builds(Box, c, st.text(max_size=3))
), max_leaves=16)


def expected_rebuild(obj: Any) -> Any:
    """What ``rebuild(describe(obj))`` must give back."""
    if isinstance(obj, Fake):
        return TensorRef(obj.id)
    if isinstance(obj, Point):
        return tracefmt.ObjectNode(f"{__name__}.Point", (("x", expected_rebuild(obj.x)), ("y", expected_rebuild(obj.y))))
    if isinstance(obj, Box):
        return tracefmt.ObjectNode(f"{__name__}.Box", (("inner", expected_rebuild(obj.inner)), ("label", obj.label)))
    if isinstance(obj, tuple):
        return tuple(expected_rebuild(x) for x in obj)
    if isinstance(obj, list):
        return [expected_rebuild(x) for x in obj]
    if isinstance(obj, dict):
        return {k: expected_rebuild(v) for k, v in obj.items()}
    return obj


def expected_names(obj: Any, prefix: str) -> list[tuple[str, int]]:
    """Dotted leaf names as spec section 5 defines them."""
    if isinstance(obj, Fake):
        return [(prefix, obj.id)]
    if isinstance(obj, Point):
        pairs: list[tuple[Any, Any]] = [("x", obj.x), ("y", obj.y)]
    elif isinstance(obj, Box):
        pairs = [("inner", obj.inner)]
    elif isinstance(obj, (tuple, list)):
        pairs = list(enumerate(obj))
    elif isinstance(obj, dict):
        pairs = list(obj.items())
    else:
        return []
    return [n for k, v in pairs for n in expected_names(v, f"{prefix}.{k}")]


class TestDescribe:
    """``describe`` → ``pack_blob`` → ``unpack_blob`` → ``check_tree`` → ``rebuild`` is lossless."""

    @settings(max_examples=100, deadline=None, database=None)
    @given(value=_values)
    def test_round_trip_gives_back_the_structure(self, value: Any) -> None:
        """Any nesting of containers, scalars and tensors comes back, tensors as TensorRef."""
        node = tracefmt.describe(value, _leaf)
        decoded = tracefmt.unpack_blob(tracefmt.pack_blob(node))
        tracefmt.check_tree(decoded)
        assert tracefmt.rebuild(decoded, tracefmt.default_leaf) == expected_rebuild(value)
        assert not tracefmt.has_opaque(decoded)

    def test_unrecordable_values_become_opaque(self) -> None:
        """Objects without a msgpack form, huge ints and too-deep nesting become opaque nodes."""
        nested: Any = Fake(1)
        for _ in range(40):
            nested = [nested]
        for value in (object(), 1 << 70, nested):
            node = tracefmt.describe(value, _leaf)
            tracefmt.check_tree(node)
            assert tracefmt.has_opaque(node)


    def test_depth_limit_matches_check_tree(self) -> None:
        """A tensor 32 levels down stays a tensor; a container there becomes opaque, so what
        describe writes always passes check_tree."""
        deep: Any = Fake(1)
        for _ in range(32):
            deep = [deep]
        node = tracefmt.describe(deep, _leaf)
        tracefmt.check_tree(node)
        assert list(tracefmt.iter_tensor_leaves(node)) == [(".".join(["0"] * 32), 1)]
        node = tracefmt.describe([deep], _leaf)
        tracefmt.check_tree(node)
        assert tracefmt.has_opaque(node) and list(tracefmt.iter_tensor_leaves(node)) == []


class TestIterTensorLeaves:
    """``iter_tensor_leaves`` names leaves by dotted key paths."""

    @settings(max_examples=100, deadline=None, database=None)
    @given(value=_values)
    def test_names_are_dotted_key_paths(self, value: Any) -> None:
        """Names are prefix + the tuple/list indexes, dict keys and field names on the way."""
        node = tracefmt.unpack_blob(tracefmt.pack_blob(tracefmt.describe((value,), _leaf)))
        assert list(tracefmt.iter_tensor_leaves(node, "args")) == expected_names((value,), "args")

    def test_call_tensor_names(self) -> None:
        """A call's tensors are named args.N, kwargs.NAME and outputs / outputs.N."""
        rec = tracefmt.CallRecord(
            call=0, step=0, module="", type="t.M", index=0, parent=None, depth=0, training=True,
            grad_enabled=True, args=tracefmt.describe((Fake(1), [Fake(2)]), _leaf),
            kwargs=tracefmt.describe({"mask": Fake(3)}, _leaf),
            outputs=tracefmt.describe((Fake(4), Fake(5)), _leaf))
        assert rec.tensors() == {"args.0": 1, "args.1.0": 2, "kwargs.mask": 3, "outputs.0": 4,
                                 "outputs.1": 5}


class TestTraceWriterClose:
    """``close`` marks completion; events survive a reopen."""

    def test_end_event_counts(self, tmp_path: Path) -> None:
        """END counts every event including itself, the calls and the steps."""
        with TraceWriter(tmp_path / "t.h5") as w:
            w.write_run(RunInfo((ModuleInfo(0, "", "t.M"),), {}, {}))
            w.add_event(EventKind.STEP, {"step": 0, "params": {}, "buffers": {}}, step=0)
            w.add_event(EventKind.NOTE, {"message": "hello"})
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            assert r.complete and r.notes() == ["hello"]
            assert r.event_body(r.event_count() - 1) == {"events": 4, "calls": 0, "steps": 1}

    def test_abandon_leaves_incomplete_trace(self, tmp_path: Path) -> None:
        """Closing without END keeps every flushed event and reads as incomplete."""
        w = TraceWriter(tmp_path / "t.h5")
        w.write_run(RunInfo((ModuleInfo(0, "", "t.M"),), {}, {}))
        w.flush()
        w.abandon()
        with tracefmt.open_trace(tmp_path / "t.h5") as r:
            assert not r.complete and r.event_count() == 1
