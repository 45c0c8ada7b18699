"""``tensortrace validate``, ``info`` and ``repair``: what they find, print and write."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from _tracefmt_helpers import (
    CONFORMANCE,
    cli,
    copy_conformance,
    generator,
    rewrite,
    set_event_blob,
    set_event_field,
    set_tensor_field,
)

import tracefmt
from tracefmt import EventKind
from tracefmt._repair import default_repair_path
from tracefmt._writer import set_text_attr

# backward.h5 events: 0 RUN, 1 STEP, 2 CALL 1 (embed), 3 CALL 2 (head), 4 CALL 0 (root),
# 5 BACKWARD 0, 6 BACKWARD 2, 7 BACKWARD 1, 8 PARAM_GRADS, 9 END


def _body(path: Path, event: int, **changes: object) -> None:
    with tracefmt.open_trace(path) as r:
        body = dict(r.event_body(event))
    body.update(changes)
    set_event_blob(path, event, tracefmt.pack_blob(body))


def _both(event: int, **changes: object) -> Callable[[Path], None]:
    """Change body keys and the matching row columns together."""
    def apply(p: Path) -> None:
        _body(p, event, **changes)
        for key in ("call", "step"):
            if key in changes:
                set_event_field(p, event, key, changes[key])
    return apply


RULES: list[tuple[str, Callable[[Path], None], str]] = [
    ("row-body", lambda p: set_event_field(p, 3, "call", 5), "row says call 5 of step 0, body says call 2"),
    ("module", lambda p: _body(p, 3, module="embed"), "body names module 'embed'"),
    ("duplicate-call", _both(3, call=1), "a second call event for call 1"),
    ("parent-order", lambda p: _body(p, 2, parent=2), "parent call 2 has an id not below"),
    ("depth", lambda p: _body(p, 2, depth=3), "depth 3, but its parent's depth is 0"),
    ("depth-no-parent", lambda p: _body(p, 3, parent=None), "depth 1 without a parent call"),
    ("parent-missing", _both(4, call=3), "parent call 0 was not recorded"),
    ("index", lambda p: (_body(p, 3, module="embed", type=generator().EMBEDDING, index=0),
                         set_event_field(p, 3, "module", 1)), "index 0 of embed is negative or repeats"),
    ("args", lambda p: _body(p, 2, args={"$": "list", "items": []}), "args is not a tuple node"),
    ("rng", lambda p: _body(p, 2, rng={"cpu": 99}), "rng.cpu.0 refers to tensor 99"),
    ("autocast", lambda p: _body(p, 2, autocast={"cpu": {"enabled": "yes"}}), "autocast.cpu is not"),
    ("backward-first", _both(5, call=7), "call 7 has no call event before it"),
    ("backward-twice", _both(6, call=0), "a second backward event for call 0"),
    ("backward-order", lambda p: _body(p, 6, order=0), "order 0 does not follow 0"),
    ("second-run", lambda p: set_event_field(p, 1, "kind", 1), "a second run event"),
    ("end-counts", lambda p: _body(p, 9, events=99), "events is 99, the trace has 10"),
    ("end-not-last", lambda p: set_event_field(p, 8, "kind", 6), "the end event is not the last"),
    ("step-back", _both(1, step=5), "step 0 after step 5"),
    ("note", lambda p: set_event_field(p, 8, "kind", 7), "message is missing"),
    ("mode", lambda p: _body(p, 0, options={"mode": "fast"}), "options.mode is 'fast'"),
    ("created", lambda p: _attr(p, "created", "yesterday"), "not an ISO 8601 time"),
    ("compression", lambda p: _attr(p, "compression", "zstd"), "compression is 'zstd'"),
    ("summary-count", lambda p: set_tensor_field(p, 3, "count", 5), "summary count 5 for 6 elements"),
    ("histogram", lambda p: set_tensor_field(p, 3, "hist", [1] * 32), "histogram holds 32 values"),
    ("batch-past-end", lambda p: set_tensor_field(p, 3, "batch_offset", 1000), "run past the end of /batch_stats"),
    ("stray-nbytes", lambda p: set_tensor_field(p, 3, "flags", 2), "no payload flag, but nbytes is 24"),
]


def _attr(path: Path, name: str, text: str) -> None:
    with h5py.File(path, "r+") as f:
        set_text_attr(f, name, text)


class TestValidateTrace:
    """``validate_trace`` and ``tensortrace validate``."""

    def test_valid_summary_line(self) -> None:
        """A valid file gives one line with version and counts, exit 0."""
        path = CONFORMANCE / "minimal.h5"
        assert cli(["validate", str(path)]) == (
            0, f"{path}: valid (format 1.0, 1 steps, 1 calls, 4 tensors, 52 bytes)\n", "")

    def test_incomplete_line(self) -> None:
        """A trace without END names the last step and call and suggests repair, exit 1."""
        path = CONFORMANCE / "killed.h5"
        assert cli(["validate", str(path)]) == (
            1, f"{path}: incomplete: recording stopped after step 0, call 0 (3 events flushed); "
               f"run 'tensortrace repair {path}'\n", "")

    def test_json(self) -> None:
        """--json prints one object with the status, counts and problems."""
        rc, out, _ = cli(["validate", "--json", str(CONFORMANCE / "backward.h5")])
        report = json.loads(out)
        assert rc == 0 and report["status"] == "valid" and report["format_version"] == "1.0"
        assert (report["steps"], report["calls"], report["tensors"], report["problems"]) == (1, 3, 9, [])

    @pytest.mark.parametrize(("rule", "mutate", "problem"), RULES, ids=[r[0] for r in RULES])
    def test_finds_each_broken_rule(self, tmp_path: Path, rule: str,
                                    mutate: Callable[[Path], None], problem: str) -> None:
        """Each rule of the spec broken in an otherwise valid trace is reported by name."""
        path = copy_conformance("backward.h5", tmp_path)
        assert tracefmt.validate_trace(path).status == "valid"
        mutate(path)
        report = tracefmt.validate_trace(path)
        assert report.status == "invalid"
        assert any(problem in p for p in report.problems), report.problems

    def test_problem_list_is_capped(self, tmp_path: Path) -> None:
        """60 broken rows print 50 lines and a count of the rest, exit 1."""
        def change(attrs: dict, data: dict) -> None:
            rows = np.repeat(data["tensors"][2:3], 62)
            rows["nbytes"] = 8
            data["tensors"] = np.concatenate([data["tensors"][:2], rows])

        path = rewrite(copy_conformance("minimal.h5", tmp_path), change)
        rc, out, _ = cli(["validate", str(path)])
        lines = out.splitlines()
        assert rc == 1 and len(lines) == 51
        assert lines[0] == f"{path}: tensor 2: 8 bytes stored for shape (1, 3) of float32 (needs 12)"
        assert lines[-1] == f"{path}: ... and 12 more problems"

    def test_deep_names_tensor_and_byte_range(self) -> None:
        """A flipped payload bit passes plain validate; --deep names the tensor and heap range."""
        path = CONFORMANCE / "flipped_bit.h5"
        assert cli(["validate", str(path)])[0] == 0
        rc, out, _ = cli(["validate", "--deep", str(path)])
        assert rc == 1 and out.startswith(f"{path}: tensor 2: payload checksum mismatch in /heap[32:44]")

    def test_real_recording_is_valid(self, tmp_path: Path) -> None:
        """A trace written by TraceWriter with many tensors passes --deep (windowed CRC reads)."""
        path = tmp_path / "big.h5"
        rng = np.random.default_rng(0)
        with tracefmt.TraceWriter(path, flush_bytes=1 << 16) as w:
            w.write_run(tracefmt.RunInfo((tracefmt.ModuleInfo(0, "", "t.M"),), {}, {"mode": "full"}))
            for c in range(40):
                ids = [w.add_tensor(rng.standard_normal(int(n)).astype(np.float32))
                       for n in rng.integers(0, 5000, size=3)]
                body = tracefmt.CallRecord(c, 0, "", "t.M", c, None, 0, True, True,
                                           {"$": "tuple", "items": [{"$": "tensor", "id": ids[0]}]},
                                           {"$": "dict", "items": []},
                                           {"$": "tensor", "id": ids[1]}).to_dict()
                w.add_event(EventKind.CALL, body, step=0, call=c, module=0)
        report = tracefmt.validate_trace(path, deep=True)
        assert report.status == "valid" and report.calls == 40 and report.tensors == 120


class TestTraceOverview:
    """``tensortrace info``."""

    def test_json_fields(self) -> None:
        """--json has the version, counts, top modules, dtypes, mode and producer."""
        rc, out, _ = cli(["info", "--json", str(CONFORMANCE / "backward.h5")])
        info = json.loads(out)
        assert rc == 0
        assert {k: info[k] for k in ("format_version", "steps", "calls", "modules", "complete",
                                     "tensors", "bytes", "dtypes", "mode", "producer")} == {
            "format_version": "1.0", "steps": 1, "calls": 3, "modules": 3, "complete": True,
            "tensors": 9, "bytes": 304, "dtypes": {"float32": 8, "int64": 1}, "mode": "full",
            "producer": "tensortrace conformance generator"}
        assert [m["path"] for m in info["top_modules"]] == ["", "embed", "head"]

    def test_text(self) -> None:
        """The text form lists one fact per line, most-called modules first."""
        path = CONFORMANCE / "killed.h5"
        rc, out, _ = cli(["info", str(path)])
        lines = out.splitlines()
        assert rc == 0 and lines[0] == str(path)
        assert "  complete    no (no END event: run 'tensortrace repair')" in lines
        assert "  modules     1 (most called: <root> 1)" in lines
        assert "  tensors     4 (52 bytes of payload)" in lines and "  dtypes      float32 4" in lines

    def test_encoded_payloads_are_counted(self) -> None:
        """Format 1.1 encodings are counted by kind with their stored bytes; none elsewhere."""
        rc, out, _ = cli(["info", str(CONFORMANCE / "encoded.h5")])
        assert rc == 0 and "  encoded     1 masked-scale, 1 zero-rows (67 bytes)" in out.splitlines()
        assert "encoded" not in cli(["info", str(CONFORMANCE / "minimal.h5")])[1]
        info = json.loads(cli(["info", "--json", str(CONFORMANCE / "minimal.h5")])[1])
        assert (info["encoded"], info["encoded_bytes"]) == ({}, 0)

    def test_stats_mode(self) -> None:
        """A stats-mode trace says so and stores no payload bytes."""
        info = json.loads(cli(["info", "--json", str(CONFORMANCE / "stats_mode.h5")])[1])
        assert (info["mode"], info["bytes"], info["tensors"]) == ("stats", 0, 2)


class TestRepairTrace:
    """``repair_trace`` and ``tensortrace repair``."""

    def test_killed_recording_becomes_complete(self, tmp_path: Path) -> None:
        """Every flushed event is kept, END is added, and the copy validates --deep."""
        src = copy_conformance("killed.h5", tmp_path)
        rc, out, _ = cli(["repair", str(src)])
        dst = tmp_path / "killed.repaired.h5"
        assert rc == 0 and out == (
            f"{src}: incomplete trace repaired into {dst}: kept 3 of 3 events (1 calls, 1 steps, "
            "4 of 4 tensors) and added an END event\n")
        assert tracefmt.validate_trace(dst, deep=True).status == "valid"
        with h5py.File(dst, "r") as f, h5py.File(src, "r", swmr=True, libver="latest") as g:
            assert f.attrs["created"] == g.attrs["created"] and "repaired" in f.attrs
        assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.h5", "killed.repaired.h5"]

    def test_drops_events_with_damaged_tensors(self, tmp_path: Path) -> None:
        """A bad payload CRC drops exactly the events that use it; the rest is copied."""
        src = copy_conformance("backward.h5", tmp_path)
        with h5py.File(src, "r+") as f:
            off = int(f["tensors"][6]["offset"])
            f["heap"][off] ^= 1
        report = tracefmt.repair_trace(src)
        assert report.events_kept == 7 and len(report.dropped) == 2
        assert all("tensor 6, which is damaged: payload checksum mismatch" in d for d in report.dropped)
        assert [d.split(":")[0] for d in report.dropped] == ["event 6", "event 7"]
        out = Path(report.output)
        assert tracefmt.validate_trace(out, deep=True).status == "valid"
        with tracefmt.open_trace(out) as r:
            assert r.backward_order() == [0] and r.n_calls == 3 and r.n_tensors == 8

    def test_lost_parent_is_unlinked_and_ids_remapped(self, tmp_path: Path) -> None:
        """Losing the root call keeps its children without a parent (noted) and remaps every
        tensor id so names still give the recorded values."""
        src = copy_conformance("backward.h5", tmp_path)
        set_event_field(src, 4, "blob_crc32", 0)
        set_tensor_field(src, 0, "crc32", 1)  # the embedding weight: drops STEP and grads too
        report = tracefmt.repair_trace(src, output=tmp_path / "out.h5")
        assert [d.split(":")[0] for d in report.dropped] == ["event 1", "event 4", "event 5"]
        with tracefmt.open_trace(src) as a, tracefmt.open_trace(tmp_path / "out.h5") as b:
            for call in (1, 2):
                old, new = a.call(call), b.call(call)
                assert (new.parent, new.depth) == (None, 0)
                assert new.notes[-1] == "parent call 0 was lost; unlinked by tensortrace repair"
                for name, tid in old.tensors().items():
                    assert np.array_equal(b.read(new.tensors()[name]), a.read(tid))
        assert tracefmt.validate_trace(tmp_path / "out.h5", deep=True).status == "valid"

    def test_encoded_payloads_are_stored_decoded(self, tmp_path: Path) -> None:
        """Encoded tensors (format 1.1) are copied as their values: a renumbered base can
        never be pointed at wrongly, and every name still reads the same bits."""
        src = copy_conformance("encoded.h5", tmp_path)
        report = tracefmt.repair_trace(src, output=tmp_path / "out.h5")
        assert not report.dropped
        with tracefmt.open_trace(src) as a, tracefmt.open_trace(tmp_path / "out.h5") as b:
            old, new = a.call(0), b.call(0)
            for name, tid in old.tensors().items():
                assert b.tensor(new.tensors()[name]).encoding is None
                assert b.read(new.tensors()[name]).tobytes() == a.read(tid).tobytes()

    def test_refuses_to_replace_its_input(self, tmp_path: Path) -> None:
        """-o naming the input itself is a usage error and leaves the input alone."""
        src = copy_conformance("killed.h5", tmp_path)
        before = src.read_bytes()
        rc, _, err = cli(["repair", str(src), "-o", str(src)])
        assert rc == 2 and "would replace the original" in err and src.read_bytes() == before

    def test_failed_write_leaves_nothing(self, tmp_path: Path) -> None:
        """An output folder that does not exist is one error line and no files."""
        src = copy_conformance("killed.h5", tmp_path)
        rc, _, err = cli(["repair", str(src), "-o", str(tmp_path / "no" / "out.h5")])
        assert rc == 2 and len(err.splitlines()) == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.h5"]

    def test_refuses_newer_minor_version(self, tmp_path: Path) -> None:
        """A file of a later minor version may hold references repair cannot remap."""
        src = copy_conformance("minimal.h5", tmp_path)
        with h5py.File(src, "r+") as f:
            f.attrs["format_minor"] = np.int64(3)
        with pytest.raises(tracefmt.UsageError, match="1.3"):
            tracefmt.repair_trace(src)

    @pytest.mark.parametrize(("name", "want"), [("run.h5", "run.repaired.h5"),
                                                ("run.trace", "run.trace.repaired.h5")])
    def test_default_output_name(self, name: str, want: str) -> None:
        """FILE.h5 repairs into FILE.repaired.h5 beside it."""
        assert default_repair_path(Path("d") / name) == Path("d") / want
