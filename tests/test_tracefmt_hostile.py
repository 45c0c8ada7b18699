"""Hostile and broken traces: every security rule of spec/trace-format.md section 10.

Each rule is a test the spec's table names; the reader must raise the right TraceError
subclass, and the CLI must print one line naming the file and exit 2, never a traceback.
"""

from __future__ import annotations

import ast
import contextlib
import faulthandler
import os
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import h5py
import msgpack
import numpy as np
import pytest
from _tracefmt_helpers import (
    CONFORMANCE,
    ROOT,
    cli,
    copy_conformance,
    full_read,
    generator,
    rewrite,
    set_event_blob,
    set_event_field,
    set_tensor_field,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tracefmt
from tracefmt import (
    EventKind,
    IntegrityError,
    NotATraceError,
    TraceError,
    TraceFormatError,
    UnsafeTraceError,
    UnsupportedVersionError,
)

CALL_EVENT = 2  # minimal.h5: RUN, STEP, CALL, END
X_TENSOR = 2  # minimal.h5: weight, bias, x (1, 3) float32, y


@pytest.fixture
def minimal(tmp_path: Path) -> Path:
    return copy_conformance("minimal.h5", tmp_path)


def _with(path: Path, edit: object) -> Path:
    with h5py.File(path, "r+") as f:
        edit(f)  # type: ignore[operator]
    return path


class TestNoPickle:
    """Nothing in tracefmt can run code from a file."""

    def test_package_never_unpickles(self) -> None:
        """No module imports a code-loading deserialiser or asks numpy to allow pickles."""
        banned = {"pickle", "cPickle", "dill", "marshal", "shelve", "joblib", "cloudpickle"}
        for source in (ROOT / "tracefmt").glob("*.py"):
            tree = ast.parse(source.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    assert not {a.name.split(".")[0] for a in node.names} & banned, source
                elif isinstance(node, ast.ImportFrom):
                    assert (node.module or "").split(".")[0] not in banned, source
                elif isinstance(node, ast.keyword):
                    assert node.arg != "allow_pickle", source


class TestOpenTrace:
    """``open_trace`` refuses files that are not safe, conforming traces."""

    def test_refuses_external_link(self, minimal: Path) -> None:
        """An external link anywhere in the file is refused, not followed."""
        _with(minimal, lambda f: f.__setitem__("extra", h5py.ExternalLink("/etc/passwd", "/")))
        with pytest.raises(UnsafeTraceError, match="ExternalLink"):
            tracefmt.open_trace(minimal)

    def test_refuses_soft_link(self, minimal: Path) -> None:
        """A soft link is refused, even one pointing inside the file."""
        _with(minimal, lambda f: f.create_group("g").__setitem__("x", h5py.SoftLink("/heap")))
        with pytest.raises(UnsafeTraceError, match="SoftLink"):
            tracefmt.open_trace(minimal)

    def test_refuses_virtual_dataset(self, minimal: Path) -> None:
        """A virtual dataset (data mapped from other files) is refused."""
        def edit(f: h5py.File) -> None:
            layout = h5py.VirtualLayout(shape=(4,), dtype="u1")
            layout[:] = h5py.VirtualSource("/etc/hostname", "d", shape=(4,))
            f.create_virtual_dataset("v", layout)
        _with(minimal, edit)
        with pytest.raises(UnsafeTraceError, match="virtual"):
            tracefmt.open_trace(minimal)

    def test_refuses_external_storage(self, minimal: Path) -> None:
        """A dataset whose bytes live in an external raw file is refused."""
        _with(minimal, lambda f: f.create_dataset("e", (4,), "u1", external=[("raw.bin", 0, 4)]))
        with pytest.raises(UnsafeTraceError, match="external"):
            tracefmt.open_trace(minimal)

    def test_hard_link_cycle_is_harmless(self, minimal: Path) -> None:
        """Groups linking back to themselves and to the root are visited once."""
        def edit(f: h5py.File) -> None:
            g = f.create_group("g")
            g["self"], g["root"] = g, f["/"]
        _with(minimal, edit)
        start = time.perf_counter()
        with tracefmt.open_trace(minimal) as r:
            assert r.n_calls == 1
        assert time.perf_counter() - start < 5

    def test_text_file_is_not_a_trace(self) -> None:
        """A text file is NotATraceError naming the file."""
        with pytest.raises(NotATraceError, match="not_hdf5.h5: not an HDF5 file"):
            tracefmt.open_trace(CONFORMANCE / "not_hdf5.h5")

    def test_hdf5_without_format_attr_is_not_a_trace(self, minimal: Path) -> None:
        """HDF5 with the right datasets but no format attribute is NotATraceError."""
        _with(minimal, lambda f: f.attrs.__delitem__("format"))
        with pytest.raises(NotATraceError, match="format attribute"):
            tracefmt.open_trace(minimal)

    def test_refuses_future_major_version(self, minimal: Path) -> None:
        """Major version 2 is refused with both versions named and advice to upgrade."""
        _with(minimal, lambda f: f.attrs.__setitem__("format_major", np.int64(2)))
        with pytest.raises(UnsupportedVersionError, match=r"2\.0 .*1\.x.*upgrade"):
            tracefmt.open_trace(minimal)

    def test_reads_future_minor_version(self, minimal: Path) -> None:
        """A 1.7 file with unknown attributes, datasets, body keys and event kinds reads and
        validates: minor additions are ignorable."""
        gen = generator()

        def change(attrs: dict, data: dict) -> None:
            attrs["format_minor"] = np.int64(7)
            attrs["future_attribute"] = np.int64(1)
            data["future_dataset"] = np.zeros(3, np.uint8)
            blobs = gen.event_blobs(data)
            call = msgpack.unpackb(blobs[CALL_EVENT], raw=False)
            call["future_key"] = {"anything": [1, 2]}
            blobs[CALL_EVENT] = msgpack.packb(call)
            events = list(data["events"])
            blobs.insert(3, msgpack.packb({"future": True}))
            events.insert(3, np.array((42, 0, -1, -1, 0, 0, 0), data["events"].dtype))
            data["events"] = np.array(events, data["events"].dtype)
            gen.set_blobs(data, blobs)

        rewrite(minimal, change)
        with tracefmt.open_trace(minimal) as r:
            assert r.format_version == (1, 7) and r.call(0).tensors() == {"args.0": 2, "outputs": 3}
        report = tracefmt.validate_trace(minimal)
        assert [p for p in report.problems if "kind" in p] == []
        assert [p for p in report.problems if "end" not in p] == []

    @pytest.mark.parametrize("name", ["heap", "blobs", "tensors", "batch_stats", "events"])
    def test_refuses_missing_dataset(self, minimal: Path, name: str) -> None:
        """Each of the five datasets is required."""
        _with(minimal, lambda f: f.__delitem__(name))
        with pytest.raises(TraceFormatError, match=f"/{name} is missing"):
            tracefmt.open_trace(minimal)

    def test_refuses_mistyped_column(self, minimal: Path) -> None:
        """A /tensors whose dtype column is an integer is refused before any row is read."""
        def change(attrs: dict, data: dict) -> None:
            old = data["tensors"]
            descr = [(n, "<u8" if n == "dtype" else old.dtype.fields[n][0]) for n in old.dtype.names]
            new = np.zeros(len(old), descr)
            for n in old.dtype.names:
                if n != "dtype":
                    new[n] = old[n]
            new["dtype"] = 1 << 40
            data["tensors"] = new

        rewrite(minimal, change)
        with pytest.raises(TraceFormatError, match=r"fields \['dtype'\]"):
            tracefmt.open_trace(minimal)

    @pytest.mark.parametrize("name", ["minimal.h5", "killed.h5"])
    def test_truncated_file_fails_fast(self, tmp_path: Path, name: str) -> None:
        """A cut-off file (also one a killed writer left) is an error within seconds."""
        data = (CONFORMANCE / name).read_bytes()
        for cut in (100, len(data) // 2, len(data) - 100):
            path = tmp_path / f"cut{cut}.h5"
            path.write_bytes(data[:cut])
            start = time.perf_counter()
            with pytest.raises(TraceFormatError, match="truncated"):
                tracefmt.open_trace(path)
            assert time.perf_counter() - start < 5

    def test_damaged_killed_file_fails_fast(self, tmp_path: Path) -> None:
        """A killed recording with a damaged object header fails at once: SWMR reads retry
        a bad checksum a bounded number of times, not HDF5's hour of doubling sleeps."""
        data = bytearray((CONFORMANCE / "killed.h5").read_bytes())
        data[data.index(b"OHDR") + 8] ^= 0x40
        path = tmp_path / "damaged.h5"
        path.write_bytes(bytes(data))
        start = time.perf_counter()
        with pytest.raises(TraceFormatError, match="checksum"):
            tracefmt.open_trace(path)
        assert time.perf_counter() - start < 5

    def test_killed_recording_opens_in_swmr_mode(self) -> None:
        """A file left open by a killed writer is read in SWMR mode and is incomplete."""
        with tracefmt.open_trace(CONFORMANCE / "killed.h5") as r:
            assert r.swmr and not r.complete and r.n_calls == 1


class TestTraceReaderEvents:
    """``TraceReader.event_body`` checks size, bounds and CRC before decoding."""

    def test_refuses_blob_over_64_mib(self, minimal: Path) -> None:
        """A body declared larger than 64 MiB is refused without being read."""
        set_event_field(minimal, CALL_EVENT, "blob_nbytes", (64 << 20) + 1)
        with tracefmt.open_trace(minimal) as r, pytest.raises(UnsafeTraceError, match="over the limit"):
            r.event_body(CALL_EVENT)

    def test_refuses_blob_checksum_mismatch(self, minimal: Path) -> None:
        """A body whose CRC-32 does not match is IntegrityError naming the byte range."""
        set_event_field(minimal, CALL_EVENT, "blob_crc32", 12345)
        with tracefmt.open_trace(minimal) as r, pytest.raises(IntegrityError, match=r"/blobs\[\d+:\d+\]"):
            r.event_body(CALL_EVENT)

    def test_refuses_blob_past_end(self, minimal: Path) -> None:
        """A body pointing past the end of /blobs is a format error, not a short read."""
        set_event_field(minimal, CALL_EVENT, "blob_offset", 1 << 30)
        with tracefmt.open_trace(minimal) as r, pytest.raises(TraceFormatError, match="past the end"):
            r.event_body(CALL_EVENT)


def _nest(depth: int) -> dict:
    node: object = {"$": "tensor", "id": 0}
    for _ in range(depth):
        node = {"$": "tuple", "items": [node]}
    return node  # type: ignore[return-value]


class TestUnpackBlob:
    """``unpack_blob`` and the tree check enforce the msgpack limits."""

    def test_refuses_tree_deeper_than_32(self) -> None:
        """A leaf 32 levels below the root is fine; 33 is UnsafeTraceError."""
        tracefmt.check_tree(tracefmt.unpack_blob(tracefmt.pack_blob(_nest(32))))
        with pytest.raises(UnsafeTraceError, match="deeper than 32"):
            tracefmt.check_tree(tracefmt.unpack_blob(tracefmt.pack_blob(_nest(33))))

    def test_refuses_container_over_2_20_entries(self) -> None:
        """Arrays and maps of 2**20 entries decode; one more is refused."""
        assert len(tracefmt.unpack_blob(msgpack.packb([0] * (1 << 20)))) == 1 << 20
        with pytest.raises(TraceFormatError, match="max_array_len"):
            tracefmt.unpack_blob(msgpack.packb([0] * ((1 << 20) + 1)))
        with pytest.raises(TraceFormatError, match="max_map_len"):
            tracefmt.unpack_blob(msgpack.packb({i: 0 for i in range((1 << 20) + 1)}))

    def test_refuses_blob_over_64_mib(self) -> None:
        """A blob longer than 64 MiB is refused before msgpack sees it."""
        with pytest.raises(UnsafeTraceError, match="over the"):
            tracefmt.unpack_blob(bytes((64 << 20) + 1))

    @pytest.mark.parametrize("blob", [b"\xc7\x00\x05", b"\xd4\x05\x00",
                                      msgpack.packb(msgpack.Timestamp(1, 0)),
                                      msgpack.packb({"a": msgpack.ExtType(1, b"")})])
    def test_refuses_ext_types(self, blob: bytes) -> None:
        """Ext types are refused, zero-length and timestamp ones included."""
        with pytest.raises(TraceFormatError, match="not valid msgpack"):
            tracefmt.unpack_blob(blob)

    @pytest.mark.parametrize("blob", [b"\xc1", b"\x92\x01", b"\x81\x91\x01\x02", b"\x01\x02"])
    def test_refuses_malformed_msgpack(self, blob: bytes) -> None:
        """Reserved bytes, truncation, unhashable keys and trailing bytes are format errors."""
        with pytest.raises(TraceFormatError, match="not valid msgpack"):
            tracefmt.unpack_blob(blob)


class TestTraceReaderTensors:
    """``TraceReader.tensor`` and ``read`` check every row before touching the heap."""

    def test_refuses_ndim_over_8(self, minimal: Path) -> None:
        """ndim 9 is a format error."""
        set_tensor_field(minimal, X_TENSOR, "ndim", 9)
        with tracefmt.open_trace(minimal) as r, pytest.raises(TraceFormatError, match="ndim 9"):
            r.tensor(X_TENSOR)

    @pytest.mark.parametrize("shape", [(1 << 25, 1 << 25), (1 << 41, 0), (1 << 63, 1)])
    def test_refuses_more_than_2_40_elements(self, minimal: Path, shape: tuple[int, ...]) -> None:
        """Any prefix product of the shape over 2**40 is unsafe, even when a later dim is 0."""
        set_tensor_field(minimal, X_TENSOR, "shape", list(shape) + [0] * (8 - len(shape)))
        with tracefmt.open_trace(minimal) as r, pytest.raises(UnsafeTraceError, match="absurd"):
            r.read(X_TENSOR)

    def test_refuses_nbytes_shape_mismatch(self, minimal: Path) -> None:
        """nbytes must be numel times the itemsize."""
        set_tensor_field(minimal, X_TENSOR, "nbytes", 8)
        with tracefmt.open_trace(minimal) as r, pytest.raises(TraceFormatError, match="8 bytes stored"):
            r.read(X_TENSOR)

    @pytest.mark.parametrize("tid", [-1, 4, 1 << 40])
    def test_refuses_tensor_id_out_of_range(self, minimal: Path, tid: int) -> None:
        """Ids outside /tensors are format errors, for rows and for tree leaves."""
        with tracefmt.open_trace(minimal) as r, pytest.raises(TraceFormatError, match="out of range"):
            r.read(tid)
        with tracefmt.open_trace(CONFORMANCE / "minimal.h5") as r:
            body = {**r.event_body(CALL_EVENT), "outputs": {"$": "tensor", "id": 4}}
        set_event_blob(minimal, CALL_EVENT, tracefmt.pack_blob(body))
        with pytest.raises(TraceFormatError, match="out of range"):
            full_read(minimal)

    def test_refuses_payload_past_heap_end(self, minimal: Path) -> None:
        """A payload that would run past /heap is a format error, not a short array."""
        set_tensor_field(minimal, X_TENSOR, "offset", 1 << 20)
        with tracefmt.open_trace(minimal) as r, pytest.raises(TraceFormatError, match="past the end"):
            r.read(X_TENSOR)

    def test_refuses_unknown_dtype(self, minimal: Path) -> None:
        """A dtype name outside the spec's table is a format error."""
        set_tensor_field(minimal, X_TENSOR, "dtype", b"float33")
        with tracefmt.open_trace(minimal) as r, pytest.raises(TraceFormatError, match="unknown dtype"):
            r.tensor(X_TENSOR)

    def test_verify_detects_flipped_bit(self) -> None:
        """One flipped payload bit passes a plain read and fails a verified one."""
        with tracefmt.open_trace(CONFORMANCE / "flipped_bit.h5") as r:
            r.read(X_TENSOR)
            with pytest.raises(IntegrityError, match=r"tensor 2: checksum mismatch in /heap\[32:44\]"):
                r.read(X_TENSOR, verify=True)


ENC_BASE, ENC_MASKED, ENC_ROWS = 0, 1, 2  # encoded.h5: x, dropout(x), a zero-rows table


def _patch_payload(path: Path, tid: int, at: int, raw: bytes) -> Path:
    """Overwrite bytes of a tensor's stored payload and its CRC-32 to match, as a buggy
    writer would: only the payload's meaning is wrong."""
    with h5py.File(path, "r+") as f:
        row = f["tensors"][tid]
        start = int(row["offset"]) + at
        f["heap"][start:start + len(raw)] = np.frombuffer(raw, np.uint8)
        row["crc32"] = zlib.crc32(f["heap"][int(row["offset"]):int(row["offset"]) + int(row["nbytes"])])
        f["tensors"][tid] = row
    return path


def _two_bases(path: Path, first: np.ndarray) -> Path:
    """A trace whose tensor 2 is dropout(tensor 1) and tensor 0 is ``first`` (zero-rows
    encoded when it allows), so tests can point tensor 2's base at tensor 0."""
    x = np.arange(1.0, 145.0, dtype=np.float32).reshape(16, 9)
    y = x * np.float32(2.0)
    with tracefmt.TraceWriter(path) as w:
        w.write_run(tracefmt.RunInfo((), {}, {"mode": "full"}))
        w.add_tensor(first, encoded=tracefmt.encode_zero_rows(first))
        w.add_tensor(x)
        w.add_tensor(y, encoded=tracefmt.encode_masked_scale(y, x, base_id=1, scales=(2.0,)))
    return path


class TestEncodedPayloads:
    """Format 1.1 payloads (spec 4.1) are checked against their row before they are decoded."""

    @pytest.fixture
    def encoded(self, tmp_path: Path) -> Path:
        return copy_conformance("encoded.h5", tmp_path)

    def test_reads_both_encodings(self, encoded: Path) -> None:
        """The conformance file decodes to the generator's arrays, verified or not."""
        gen = generator()
        with tracefmt.open_trace(encoded) as r:
            assert r.tensor(ENC_MASKED).encoding == "masked-scale"
            assert r.read(ENC_MASKED, verify=True).tobytes() == gen.ENCODED_Y.tobytes()
            assert r.read(ENC_ROWS, verify=True).tobytes() == gen.ENCODED_TABLE.tobytes()

    def test_refuses_contradictory_flags(self, encoded: Path) -> None:
        """A row cannot hold a plain payload and an encoded one."""
        set_tensor_field(encoded, ENC_MASKED, "flags", 1 | 8)
        with tracefmt.open_trace(encoded) as r, pytest.raises(TraceFormatError, match="contradictory"):
            r.tensor(ENC_MASKED)

    def test_refuses_unknown_encoding(self, encoded: Path) -> None:
        """An encoding number outside the spec is a format error."""
        _patch_payload(encoded, ENC_MASKED, 0, np.uint32(7).tobytes())
        with tracefmt.open_trace(encoded) as r, pytest.raises(TraceFormatError, match="unknown payload encoding 7"):
            r.read(ENC_MASKED)

    def test_refuses_encoding_other_than_its_flag(self, encoded: Path) -> None:
        """The header's encoding must be the one the row's flag names."""
        set_tensor_field(encoded, ENC_ROWS, "flags", 8 | 2)
        with tracefmt.open_trace(encoded) as r, pytest.raises(TraceFormatError):
            r.read(ENC_ROWS)

    @pytest.mark.parametrize("tid", [ENC_MASKED, ENC_ROWS])
    def test_refuses_wrong_length(self, encoded: Path, tid: int) -> None:
        """A payload one byte short of what its header and shape need is refused."""
        with h5py.File(encoded, "r") as f:
            nbytes = int(f["tensors"][tid]["nbytes"])
        set_tensor_field(encoded, tid, "nbytes", nbytes - 1)
        with tracefmt.open_trace(encoded) as r, pytest.raises(TraceFormatError, match="expected"):
            r.read(tid)

    def test_refuses_later_base(self, encoded: Path) -> None:
        """A masked-scale base must be an earlier tensor: no cycles, no forward references."""
        _patch_payload(encoded, ENC_MASKED, 8, np.uint64(ENC_ROWS).tobytes())
        with tracefmt.open_trace(encoded) as r, pytest.raises(TraceFormatError, match="not an earlier tensor"):
            r.read(ENC_MASKED)

    def test_refuses_encoded_base(self, tmp_path: Path) -> None:
        """A base stored encoded itself is refused (decoding never recurses)."""
        first = np.zeros((16, 9), np.float32)
        first[3] = 1.0
        path = _patch_payload(_two_bases(tmp_path / "t.h5", first), 2, 8, np.uint64(0).tobytes())
        with tracefmt.open_trace(path) as r, pytest.raises(TraceFormatError, match="has no plain payload"):
            r.read(2)

    def test_refuses_base_of_another_shape(self, tmp_path: Path) -> None:
        """A base of another shape than the tensor is refused."""
        path = _patch_payload(_two_bases(tmp_path / "t.h5", np.ones((3, 3), np.float32)),
                              2, 8, np.uint64(0).tobytes())
        with tracefmt.open_trace(path) as r, pytest.raises(TraceFormatError, match="same dtype and shape"):
            r.read(2)

    def test_deep_validation_reports_a_bad_encoding(self, encoded: Path) -> None:
        """``validate --deep`` decodes every encoded payload and names the bad one."""
        _patch_payload(encoded, ENC_MASKED, 8, np.uint64(ENC_ROWS).tobytes())
        report = tracefmt.validate_trace(encoded, deep=True)
        assert any(p.startswith(f"tensor {ENC_MASKED}:") and "earlier" in p for p in report.problems)


def _unopenable(tmp: Path) -> Iterator[Path]:
    """One file per way a trace can fail to open."""
    for name in ("not_hdf5.h5", "no_format_attr.h5", "future_major.h5", "missing_events.h5",
                 "truncated.h5", "external_link.h5", "soft_link.h5", "virtual_dataset.h5",
                 "external_storage.h5"):
        yield CONFORMANCE / name
    yield tmp / "does-not-exist.h5"
    yield tmp
    bad_run = copy_conformance("minimal.h5", tmp)
    yield set_event_blob(bad_run, 0, b"\xc1")


class TestMain:
    """``tensortrace validate|info|repair`` on bad files: one line, exit 2, no traceback."""

    @pytest.mark.parametrize("command", ["validate", "info", "repair"])
    def test_bad_file_prints_one_line(self, tmp_path: Path, command: str) -> None:
        """Each unopenable file gives exactly one stderr line naming it, nothing on stdout."""
        for path in _unopenable(tmp_path):
            rc, out, err = cli([command, str(path), *(["-o", str(tmp_path / "o.h5")] if command == "repair" else [])])
            assert (rc, out) == (2, ""), (path, out, err)
            lines = err.splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"tensortrace: error: {path}: "), err
            assert "Traceback" not in err

    def test_subprocess_prints_one_line(self) -> None:
        """Run as a program, a bad file still gives one line and status 2."""
        done = subprocess.run(
            [sys.executable, "-m", "tracefmt.cli", "validate", str(CONFORMANCE / "future_major.h5")],
            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=120)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.splitlines() == [
            f"tensortrace: error: {CONFORMANCE / 'future_major.h5'}: format version 2.0 is not "
            "supported (this reader reads 1.x); upgrade tensortrace"]

    def _hostile_names(self, path: Path) -> Path:
        with tracefmt.open_trace(path) as r:
            body = r.event_body(0)
        body["modules"][0]["path"] = "../../escape\x1b[31m\nsecond line"
        set_event_blob(path, 0, tracefmt.pack_blob(body))
        _with(path, lambda f: tracefmt._writer.set_text_attr(f, "producer", "/tmp/evil\x07.h5"))
        return path

    def test_names_from_file_never_become_paths(self, tmp_path: Path) -> None:
        """validate, info and repair create nothing but the named output, whatever the
        module paths and producer in the file say."""
        work = tmp_path / "work"
        work.mkdir()
        path = self._hostile_names(copy_conformance("minimal.h5", work))
        before = set(tmp_path.rglob("*"))
        cwd = os.getcwd()
        os.chdir(work)
        try:
            for argv in (["validate", "--deep", path.name], ["info", path.name],
                         ["info", "--json", path.name], ["repair", path.name]):
                assert cli(argv)[0] in (0, 1)
        finally:
            os.chdir(cwd)
        assert set(tmp_path.rglob("*")) - before == {work / "minimal.repaired.h5"}

    def test_control_characters_are_escaped(self, tmp_path: Path) -> None:
        """Escape and newline characters from the file reach the terminal escaped."""
        path = self._hostile_names(copy_conformance("minimal.h5", tmp_path))
        rc, out, _ = cli(["info", str(path)])
        assert rc == 0 and "\x1b" not in out and "\x07" not in out
        assert "escape\\x1b[31m\\nsecond line" in out and len(out.splitlines()) == 10


_MINIMAL = (CONFORMANCE / "minimal.h5").read_bytes()
_KILLED = (CONFORMANCE / "killed.h5").read_bytes()


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        out[pos % len(out)] ^= value
    return bytes(out)


def _exercise(path: Path) -> None:
    """Everything the tools do with a file: read it all, validate deeply, summarise, repair."""
    for step in (lambda: full_read(path, verify=True),
                 lambda: tracefmt.validate_trace(path, deep=True),
                 lambda: cli(["info", "--json", str(path)]),
                 lambda: tracefmt.repair_trace(path, output=path.with_suffix(".out.h5"))):
        with contextlib.suppress(TraceError):
            step()


@pytest.fixture
def watchdog() -> Iterator[None]:
    """A hang in the HDF5 library cannot be interrupted: dump stacks and exit instead."""
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


_EDITS = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(1, 255)), min_size=1, max_size=4)


class TestOpenTraceFuzz:
    """Random byte flips in small valid traces raise only TraceErrors, and end."""

    @settings(derandomize=True, max_examples=200, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(edits=_EDITS)
    def test_mutated_file_raises_only_trace_errors(self, tmp_path: Path, watchdog: None,
                                                   edits: list[tuple[int, int]]) -> None:
        """Any 1-4 changed bytes of minimal.h5: open, read, validate, info and repair either
        work or raise a TraceError."""
        path = tmp_path / "fuzz.h5"
        path.write_bytes(_mutate(_MINIMAL, edits))
        _exercise(path)

    @settings(derandomize=True, max_examples=50, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(edits=_EDITS)
    def test_mutated_killed_file_raises_only_trace_errors(self, tmp_path: Path, watchdog: None,
                                                          edits: list[tuple[int, int]]) -> None:
        """The same for a file left open by a killed writer (read in SWMR mode)."""
        path = tmp_path / "fuzz.h5"
        path.write_bytes(_mutate(_KILLED, edits))
        _exercise(path)


class TestUnpackBlobFuzz:
    """Random edits of real event bodies raise only TraceErrors in every decoding step."""

    @settings(derandomize=True, max_examples=400, deadline=None, database=None)
    @given(which=st.integers(0, 3), edits=st.lists(
        st.tuples(st.integers(0, 1 << 16), st.integers(0, 255), st.sampled_from("sid")),
        min_size=1, max_size=6))
    def test_mutated_blob_raises_only_trace_errors(self, which: int,
                                                   edits: list[tuple[int, int, str]]) -> None:
        """Set, insert or delete bytes of a RUN/CALL/BACKWARD/STEP body: decoding, records,
        tree checks, rebuilds and leaf names never raise anything but a TraceError."""
        blob = bytearray(_BLOBS[which])
        for pos, value, op in edits:
            pos %= len(blob) + 1
            if op == "s" and pos < len(blob):
                blob[pos] = value
            elif op == "i":
                blob[pos:pos] = bytes([value])
            else:
                del blob[pos:pos + 1 + value % 4]
        try:
            body = tracefmt.unpack_blob(bytes(blob))
            for record in (tracefmt.RunInfo, tracefmt.CallRecord, tracefmt.BackwardRecord,
                           tracefmt.StepRecord, tracefmt.ParamGradsRecord):
                try:
                    rec = record.from_dict(body)
                except TraceError:
                    continue
                if isinstance(rec, (tracefmt.CallRecord, tracefmt.BackwardRecord)):
                    rec.tensors()
                    for node in (rec.grad_outputs, rec.grad_args) if isinstance(
                            rec, tracefmt.BackwardRecord) else (rec.args, rec.kwargs, rec.outputs):
                        tracefmt.check_tree(node, n_tensors=5)
                        tracefmt.rebuild(node, tracefmt.default_leaf)
                        tracefmt.has_opaque(node)
        except TraceError:
            pass


def _blobs() -> list[bytes]:
    out = []
    with tracefmt.open_trace(CONFORMANCE / "backward.h5") as r:
        kinds = [r.event_kind(i) for i in range(r.event_count())]
        for kind in (EventKind.RUN, EventKind.CALL, EventKind.BACKWARD, EventKind.STEP):
            out.append(tracefmt.pack_blob(r.event_body(kinds.index(kind))))
    with tracefmt.open_trace(CONFORMANCE / "nested_trees.h5") as r:
        out[1] = tracefmt.pack_blob(r.event_body(1))
    return out


_BLOBS = _blobs()
