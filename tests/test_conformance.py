"""The conformance files of spec/conformance/, read two ways.

``TestRawRead`` follows spec/trace-format.md with h5py, msgpack and numpy only (no tracefmt
reader) and checks the known contents; ``TestManifest`` checks that tracefmt's reader and
``tensortrace validate`` do what manifest.json says, also for freshly generated files.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import h5py
import msgpack
import numpy as np
import pytest
from _tracefmt_helpers import CONFORMANCE, ROOT, SPEC, cli, generator, outcome

import tracefmt

MANIFEST = json.loads((CONFORMANCE / "manifest.json").read_text())
VALID = [e["file"] for e in MANIFEST if e["expect"] == "valid" and "expect_deep" not in e]


# -- an independent reader, written from the spec ------------------------------------------


class RawTrace:
    """A trace read with h5py + msgpack as spec sections 1-6 and 9 describe."""

    def __init__(self, path: Path) -> None:
        self.f = h5py.File(path, "r")
        self.events = self.f["events"][:]
        self.rows = self.f["tensors"][:]
        self.heap = self.f["heap"][:].tobytes()
        self.blobs = self.f["blobs"][:].tobytes()

    def attr(self, name: str) -> Any:
        value = self.f.attrs[name]
        return value.decode() if isinstance(value, bytes) else value

    def body(self, i: int) -> dict:
        e = self.events[i]
        data = self.blobs[int(e["blob_offset"]):int(e["blob_offset"]) + int(e["blob_nbytes"])]
        assert zlib.crc32(data) == int(e["blob_crc32"])
        value = msgpack.unpackb(data, raw=False, strict_map_key=False)
        assert isinstance(value, dict)
        return value

    def of_kind(self, kind: int) -> list[tuple[np.void, dict]]:
        return [(self.events[i], self.body(i)) for i in np.flatnonzero(self.events["kind"] == kind)]

    def payload(self, tid: int, *, flag: int = 1) -> bytes:
        """The stored bytes of a tensor with ``flag`` set (1 plain, 8 or 16 encoded)."""
        r = self.rows[tid]
        assert int(r["flags"]) & (1 | 8 | 16) == flag
        data = self.heap[int(r["offset"]):int(r["offset"]) + int(r["nbytes"])]
        assert zlib.crc32(data) == int(r["crc32"])
        return data

    def shape(self, tid: int) -> tuple[int, ...]:
        r = self.rows[tid]
        return tuple(int(s) for s in r["shape"][:int(r["ndim"])])

    def array(self, tid: int, storage: str) -> np.ndarray:
        return np.frombuffer(self.payload(tid), dtype=storage).reshape(self.shape(tid))

    def close(self) -> None:
        self.f.close()


def leaves(node: Any, prefix: str) -> dict[str, int]:
    """Tensor leaf names as spec section 5 defines them."""
    out: dict[str, int] = {}
    if not isinstance(node, dict):
        return out
    tag = node["$"]
    if tag == "tensor":
        out[prefix] = node["id"]
    elif tag in ("tuple", "list"):
        for i, x in enumerate(node["items"]):
            out.update(leaves(x, f"{prefix}.{i}"))
    elif tag in ("dict", "object"):
        for k, v in node["items" if tag == "dict" else "fields"]:
            out.update(leaves(v, f"{prefix}.{k}"))
    return out


def spec_float8(name: str, code: int) -> float:
    """One float8 code decoded by the table in spec section 4."""
    if name == "float8_e8m0fnu":
        return math.nan if code == 0xFF else 2.0 ** (code - 127)
    e_bits, m_bits, bias = {"float8_e4m3fn": (4, 3, 7), "float8_e4m3fnuz": (4, 3, 8),
                            "float8_e5m2": (5, 2, 15), "float8_e5m2fnuz": (5, 2, 16)}[name]
    sign = -1.0 if code & 0x80 else 1.0
    e = (code >> m_bits) & ((1 << e_bits) - 1)
    m = code & ((1 << m_bits) - 1)
    if name.endswith("fnuz") and code == 0x80:
        return math.nan
    if name == "float8_e4m3fn" and code & 0x7F == 0x7F:
        return math.nan
    if name == "float8_e5m2" and e == 31:
        return sign * math.inf if m == 0 else math.nan
    if e == 0:
        return sign * 2.0 ** (1 - bias) * m / (1 << m_bits)
    return sign * 2.0 ** (e - bias) * (1 + m / (1 << m_bits))


def same_float(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))


@pytest.fixture
def raw_trace() -> Any:
    opened: list[RawTrace] = []

    def open_(name: str) -> RawTrace:
        opened.append(RawTrace(CONFORMANCE / name))
        return opened[-1]

    yield open_
    for t in opened:
        t.close()


class TestRawRead:
    """The valid conformance files, read without tracefmt."""

    @pytest.mark.parametrize("name", VALID)
    def test_identification_and_event_order(self, name: str, raw_trace: Any) -> None:
        """Root attributes identify format 1.0 (1.1 with encodings); RUN first, END last."""
        t = raw_trace(name)
        assert t.attr("format") == "tensortrace-trace"
        minor = 1 if name == "encoded.h5" else 0
        assert (t.attr("format_major"), t.attr("format_minor")) == (1, minor)
        assert t.attr("producer") and t.attr("compression") == "none"
        assert t.attr("created").endswith("+00:00")
        kinds = t.events["kind"].tolist()
        assert kinds[0] == 1 and kinds[-1] == 6 and kinds.count(1) == 1 and kinds.count(6) == 1
        end = t.body(len(kinds) - 1)
        assert end == {"events": len(kinds), "calls": kinds.count(3), "steps": kinds.count(2)}

    def test_encoded_payloads_decode_by_the_spec(self, raw_trace: Any) -> None:
        """encoded.h5: section 4.1's masked-scale and zero-rows payloads, decoded with numpy
        alone, give the generator's arrays bit for bit."""
        gen = generator()
        t = raw_trace("encoded.h5")
        [(_, call)] = t.of_kind(3)
        names = leaves(call["args"], "args") | leaves(call["outputs"], "outputs") \
            | leaves(call["kwargs"], "kwargs")
        base = t.array(names["args.0"], "<f4")
        enc = np.frombuffer(t.payload(names["outputs"], flag=8), np.uint8)
        assert enc[:8].view("<u4").tolist() == [1, 0]
        assert int(enc[8:16].view("<u8")[0]) == names["args.0"]
        scale = float(enc[16:24].view("<f8")[0])
        bits = np.unpackbits(enc[24:], count=base.size, bitorder="little").reshape(base.shape)
        product = base.astype(np.float64) * np.where(bits == 1, scale, 0.0)  # exact in float64
        got = product.astype(np.float32)  # one rounding; -x * 0 stays -0.0
        assert got.view("<u4").tolist() == gen.ENCODED_Y.view("<u4").tolist()
        table = np.frombuffer(t.payload(names["kwargs.table"], flag=16), np.uint8)
        assert table[:8].view("<u4").tolist() == [2, 0]
        rows = t.shape(names["kwargs.table"])[0]
        present = np.unpackbits(table[8:], count=rows, bitorder="little").astype(bool)
        start = 8 + ((rows + 7) // 8 + 7) // 8 * 8  # header, bitmap padded to 8 bytes
        decoded = np.zeros(t.shape(names["kwargs.table"]), "<f4")
        decoded[present] = np.frombuffer(table[start:], "<f4").reshape(-1, 3)
        assert decoded.view("<u4").tolist() == gen.ENCODED_TABLE.view("<u4").tolist()

    def test_minimal_call_contents(self, raw_trace: Any) -> None:
        """minimal.h5: the call's input, output and weights are the generator's arrays."""
        gen = generator()
        t = raw_trace("minimal.h5")
        run = t.body(0)
        assert run["modules"] == [{"path": "", "type": gen.LINEAR, "params": ["weight", "bias"],
                                   "buffers": [], "shared": {},
                                   "ctor": {"args": {"$": "tuple", "items": [3, 2]},
                                            "kwargs": {"$": "dict", "items": [["bias", True]]}}}]
        [(row, call)] = t.of_kind(3)
        assert (int(row["call"]), int(row["step"]), int(row["module"])) == (0, 0, 0)
        names = leaves(call["args"], "args") | leaves(call["outputs"], "outputs")
        assert np.array_equal(t.array(names["args.0"], "<f4"), gen.MINIMAL_X)
        assert np.array_equal(t.array(names["outputs"], "<f4"), gen.MINIMAL_Y)
        [(_, step)] = t.of_kind(2)
        assert np.array_equal(t.array(step["params"]["weight"], "<f4"), gen.MINIMAL_W)

    def test_every_dtype_bits(self, raw_trace: Any) -> None:
        """every_dtype.h5: each payload is exactly the generator's bits, in C order."""
        gen = generator()
        t = raw_trace("every_dtype.h5")
        [(_, call)] = t.of_kind(3)
        ids = leaves(call["kwargs"], "kwargs")
        assert set(ids) == {f"kwargs.{n}" for n in tracefmt.DTYPES}
        for name in tracefmt.DTYPES:
            tid = ids[f"kwargs.{name}"]
            assert t.rows[tid]["dtype"].decode() == name
            assert t.payload(tid) == gen.every_dtype_payload(name)
            assert t.shape(tid) == gen.every_dtype_shape(name)

    def test_narrow_floats_decode_by_the_spec_tables(self, raw_trace: Any) -> None:
        """bfloat16 and every float8 code decode per spec section 4, as tracefmt decodes them."""
        t = raw_trace("every_dtype.h5")
        [(_, call)] = t.of_kind(3)
        ids = leaves(call["kwargs"], "kwargs")
        for name in [n for n in tracefmt.DTYPES if n.startswith("float8")]:
            codes = t.array(ids[f"kwargs.{name}"], "u1").reshape(-1)
            assert codes.tolist() == list(range(256))
            ours = tracefmt.decode_values(codes, name)
            for code in range(256):
                assert same_float(float(ours[code]), spec_float8(name, code)), (name, code)
        bf = t.array(ids["kwargs.bfloat16"], "<u2")
        values = (bf.astype(np.uint32) << 16).view(np.float32)
        assert [str(v) for v in values[:6]] == ["0.0", "-0.0", "1.0", "-1.5", "inf", "-inf"]
        assert values[6].view(np.uint32) == 0x7FC10000 and values[7] == np.float32(2.0**-133)

    def test_float8_landmarks(self) -> None:
        """The spec's max-finite, NaN and subnormal landmarks of each float8 format."""
        assert spec_float8("float8_e4m3fn", 0x7E) == 448 and math.isnan(spec_float8("float8_e4m3fn", 0xFF))
        assert spec_float8("float8_e4m3fn", 0x01) == 2.0**-9
        assert spec_float8("float8_e4m3fnuz", 0x7F) == 240 and spec_float8("float8_e4m3fnuz", 0) == 0
        assert spec_float8("float8_e5m2", 0x7B) == 57344 and spec_float8("float8_e5m2", 0x7C) == math.inf
        assert spec_float8("float8_e5m2fnuz", 0x7F) == 57344
        assert spec_float8("float8_e8m0fnu", 0x7F) == 1.0 and spec_float8("float8_e8m0fnu", 0) == 2.0**-127

    def test_nested_tree_names_and_strides(self, raw_trace: Any) -> None:
        """nested_trees.h5: every node kind decodes; a shared array is one tensor; the
        transposed input is stored in C order with its recorded strides."""
        t = raw_trace("nested_trees.h5")
        [(_, call)] = t.of_kind(3)
        names = leaves(call["args"], "args") | leaves(call["kwargs"], "kwargs") | leaves(
            call["outputs"], "outputs")
        assert set(names) == {"args.0", "args.1.0", "args.2.key", "args.3.left",
                              "args.4.table.inner.0", "outputs.logits"}
        assert names["args.1.0"] == names["args.3.left"]
        items = call["args"]["items"]
        assert items[1]["items"][1:] == [None, True, -3, 2.5, (1 << 64) - 1, "text", b"\x00\xff"]
        assert items[2]["items"][1:] == [[7, "int key"], [None, None]]
        assert items[3]["$"] == "object" and items[3]["fields"][1] == ["right", {"$": "complex", "re": 1.0, "im": 2.0}]
        kw = dict(call["kwargs"]["items"])
        assert kw["dtype"] == {"$": "dtype", "name": "float16"}
        assert kw["device"] == {"$": "device", "name": "cuda:0"}
        assert kw["thing"]["$"] == "opaque" and call["replayable"] is False
        a = names["args.0"]
        assert t.shape(a) == (3, 2) and t.rows[a]["strides"][:2].tolist() == [1, 3]
        assert t.array(a, "<f4").tolist() == np.arange(6, dtype=np.float32).reshape(2, 3).T.tolist()

    def test_stats_mode_has_summaries_and_no_payload(self, raw_trace: Any) -> None:
        """stats_mode.h5: flags say summary without payload; the summary follows spec section 7."""
        t = raw_trace("stats_mode.h5")
        assert t.body(0)["options"]["mode"] == "stats" and len(t.heap) == 0
        r = t.rows[0]
        assert int(r["flags"]) & 3 == 2 and int(r["nbytes"]) == 0 and int(r["crc32"]) == 0
        assert (int(r["count"]), int(r["nan"]), int(r["posinf"]), int(r["neginf"]), int(r["zeros"])) == (6, 1, 1, 0, 1)
        assert (float(r["min"]), float(r["max"]), float(r["mean"])) == (-2.0, 4.0, 0.75)
        assert int(r["hist"].sum()) == 4 and int(r["hist"][0]) == 1 and int(r["hist"][31]) == 1
        batch = t.f["batch_stats"][int(r["batch_offset"]):int(r["batch_offset"]) + int(r["batch_count"])]
        assert batch.tolist() == [[1.0, 1.0, 1.0, 1.0], [math.sqrt(20.0), 4.0, 1.0, 0.0]]

    def test_backward_param_grads_and_tied_weight(self, raw_trace: Any) -> None:
        """backward.h5: children's CALL events precede the root's, each BACKWARD follows its
        call, param grads name canonical weights, and head.weight is tied to embed.weight."""
        t = raw_trace("backward.h5")
        modules = t.body(0)["modules"]
        assert modules[2]["shared"] == {"weight": "embed.weight"}
        calls = t.of_kind(3)
        assert [c["call"] for _, c in calls] == [1, 2, 0]
        assert [(c["parent"], c["depth"]) for _, c in calls] == [(0, 1), (0, 1), (None, 0)]
        backward = t.of_kind(4)
        assert [(b["call"], b["order"]) for _, b in backward] == [(0, 0), (2, 1), (1, 2)]
        order = t.events["kind"].tolist()
        assert order.index(4) > max(i for i, k in enumerate(order) if k == 3)
        [(_, grads)] = t.of_kind(5)
        assert set(grads["grads"]) == {"embed.weight", "head.bias"} and grads["loss"] == 1.25

    def test_dedup_one_tensor_many_references(self, raw_trace: Any) -> None:
        """dedup.h5: a's output is b's input, one RNG state and one weight serve every call
        and step, and the heap holds each payload once."""
        t = raw_trace("dedup.h5")
        calls = [c for _, c in t.of_kind(3)]
        assert calls[0]["outputs"] == calls[1]["args"]["items"][0]
        assert len({c["rng"]["cpu"] for c in calls}) == 1
        steps = [s for _, s in t.of_kind(2)]
        assert steps[0]["params"] == steps[1]["params"] and len(set(steps[0]["params"].values())) == 1
        assert len(t.heap) == int(t.rows["nbytes"].sum())


class TestManifest:
    """manifest.json against tracefmt's reader and ``tensortrace validate``."""

    def test_lists_every_file(self) -> None:
        """Every .h5 file in the folder has exactly one manifest entry, and none is missing."""
        listed = [e["file"] for e in MANIFEST]
        assert sorted(listed) == sorted(p.name for p in CONFORMANCE.glob("*.h5"))
        assert len(set(listed)) == len(listed)

    def test_files_are_small(self) -> None:
        """Each committed file stays a few KB (the generator compacts the writer's chunks)."""
        assert max(p.stat().st_size for p in CONFORMANCE.glob("*.h5")) < 40_000

    @pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
    def test_reader_meets_expectation(self, entry: dict) -> None:
        """A full read and ``validate`` give what the manifest expects, with and without --deep."""
        path = CONFORMANCE / entry["file"]
        want = entry["error"] if entry["expect"] == "error" else entry["expect"]
        assert outcome(path) == want
        rc, out, err = cli(["validate", str(path)])
        assert rc == entry["validate_exit"], out + err
        if "expect_deep" in entry:
            assert outcome(path, deep=True) == entry["error"]
            assert cli(["validate", "--deep", str(path)])[0] == entry["validate_deep_exit"]

    def test_regenerated_files_behave_the_same(self, tmp_path: Path) -> None:
        """Re-running generate.py gives the same manifest and files that validate the same."""
        entries = generator().build(tmp_path)
        assert entries == MANIFEST
        for e in entries:
            for deep in (False, True):
                assert outcome(tmp_path / e["file"], deep=deep) == outcome(
                    CONFORMANCE / e["file"], deep=deep), (e["file"], deep)


class TestSpecExamples:
    """The code in spec/trace-format.md runs and does what the text says."""

    @staticmethod
    def _block(heading: str) -> str:
        text = SPEC.read_text()
        section = text[text.index(heading):]
        return section[section.index("```python\n") + 10:section.index("\n```", section.index("```python"))]

    def test_writer_example_makes_a_valid_trace(self, tmp_path: Path) -> None:
        """Section 11's h5py + msgpack writer produces a trace ``validate`` calls valid."""
        code = self._block("## 11. Writing a trace")
        subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
        report = tracefmt.validate_trace(tmp_path / "mylib.h5", deep=True)
        assert report.status == "valid", report.problems
        with tracefmt.open_trace(tmp_path / "mylib.h5") as r:
            assert r.read(r.call(0).tensors()["outputs"]).tolist() == [[0.5] * 4] * 2

    def test_reader_example_lists_calls(self) -> None:
        """Section 12's h5py reader lists minimal.h5's call and its input values."""
        code = self._block("## 12. Reading with h5py")
        done = subprocess.run([sys.executable, "-c", code, str(CONFORMANCE / "minimal.h5")],
                              check=True, capture_output=True, text=True)
        assert done.stdout.splitlines() == [
            f"0 <root> {generator().LINEAR}", "  args.0 = [[1.0, -2.0, 0.5]]"]

    def test_cited_tests_exist(self) -> None:
        """Every test the security table cites exists in tests/test_tracefmt_hostile.py."""
        cited = set(re.findall(r"`(Test\w+)::(test_\w+)`", SPEC.read_text()))
        source = (ROOT / "tests" / "test_tracefmt_hostile.py").read_text()
        assert cited
        for cls, test in cited:
            block = source[source.index(f"class {cls}"):]
            nxt = block.find("\nclass ", 1)
            assert f"def {test}(" in (block if nxt < 0 else block[:nxt]), f"{cls}::{test}"
