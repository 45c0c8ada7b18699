"""Distributed recording and sharded replay: torchrun with 2 CPU processes over gloo, loopback only.

Each torchrun launch costs seconds (three interpreters import torch), so the recordings are
module fixtures shared by the tests, and everything that needs no second process (the index
reader, cross-rank checks on edited copies, the call split) runs in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import tracefmt
from tracefmt import EventKind, TraceWriter
from tracefmt._traceset import rank_file_name, write_traceset_index
from tracefmt.cli import main as tensortrace

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CORRECT = EXAMPLES / "candidates" / "correct.py"
BATCH0 = EXAMPLES / "candidates" / "buggy" / "softmax_batch0_grad.py"
LAUNCH_TIMEOUT = 240

MODEL = """
import torch
import torch.distributed as dist
from torch import nn


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def run_step(model, step):
    # every rank draws its own batch: gradients agree only after the all-reduce
    g = torch.Generator().manual_seed(100 + 10 * step + dist.get_rank())
    x, y = torch.randn(4, 8, generator=g), torch.randn(4, 4, generator=g)
    return nn.functional.mse_loss(model(x), y)
"""

DDP_RECIPE = MODEL + """
from torch.nn.parallel import DistributedDataParallel as DDP


def build_model():
    assert dist.is_initialized(), "the recorder brings the group up before build_model()"
    return DDP(make_model())


def make_optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


_run_step = run_step


def run_step(model, step):
    assert isinstance(model, DDP), f"run_step got {type(model).__name__}, not the DDP wrapper"
    return _run_step(model, step)
"""

FSDP_RECIPE = MODEL + """
from torch.distributed.fsdp import fully_shard


def build_model():
    model = make_model()
    for layer in (model[0], model[2]):
        fully_shard(layer)
    return fully_shard(model)
"""

PLAIN_RECIPE = MODEL + """
from torch.nn.parallel import DistributedDataParallel as DDP


def build_model():
    return make_model()


_run_step = run_step


def run_step(model, step):
    assert isinstance(model, DDP), f"run_step got {type(model).__name__}, not a DDP wrapper"
    return _run_step(model, step)
"""

LINEAR_CANDIDATES = "import torch\nCANDIDATES = {'torch.nn.Linear': torch.nn.Linear}\n"


# -- launching -----------------------------------------------------------------------------


def _console_script() -> str:
    """The installed ``tensortrace`` script (next to this interpreter; pyenv shims are shell)."""
    beside = Path(sys.executable).parent / "tensortrace"
    found = str(beside) if beside.is_file() else shutil.which("tensortrace")
    if found is None:
        pytest.skip("the tensortrace console script is not installed")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(*argv: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc-per-node 2 $(which tensortrace) ARGV`` on loopback, bounded in time."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node",
           "2", "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           _console_script(), *map(str, argv)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT)


def _recorded(tmp: Path, recipe: str, *extra: object) -> Path:
    (tmp / "recipe.py").write_text(textwrap.dedent(recipe))
    done = torchrun("record", "recipe.py", "-o", "set.h5", "-q", *extra, cwd=tmp)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp / "set.h5"


@pytest.fixture(scope="module")
def ddp_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two steps of a 3-layer model wrapped in DDP by its recipe, recorded on 2 ranks."""
    return _recorded(tmp_path_factory.mktemp("ddp"), DDP_RECIPE, "--steps", 2)


@pytest.fixture(scope="module")
def fsdp_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One step of the same model sharded with FSDP2 (fully_shard), recorded on 2 ranks."""
    return _recorded(tmp_path_factory.mktemp("fsdp"), FSDP_RECIPE)


def run_json(*argv: object, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    """Run ``tensortrace ARGV`` in this process; its exit status and parsed stdout."""
    code = tensortrace([str(a) for a in argv])
    return code, json.loads(capsys.readouterr().out)


def without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


# -- editing copies of a set ---------------------------------------------------------------


def copy_trace(src: Path, dest: Path, *, perturb_grad: str | None = None) -> Path:
    """Rewrite a trace with TraceWriter; ``perturb_grad`` changes that parameter's step-0
    gradient (a new tensor, so nothing else sharing the old one changes)."""
    with tracefmt.open_trace(src) as r, TraceWriter(dest) as w:
        for tid in range(r.n_tensors):
            info = r.tensor(tid)
            data = r.read(tid, decode=False) if info.has_payload else None
            w.add_tensor(data, dtype=info.dtype, shape=info.shape, strides=info.strides,
                         summary=info.summary, requires_grad=info.requires_grad)
        rows = r._event_rows
        for i in range(r.event_count()):
            kind = r.event_kind(i)
            if kind == EventKind.END:
                continue
            body = r.event_body(i)
            if kind == EventKind.PARAM_GRADS and perturb_grad and body["step"] == 0:
                grad = r.read(body["grads"][perturb_grad]).copy()
                grad.flat[0] += 1e-3
                body = dict(body, grads=dict(body["grads"], **{perturb_grad: w.add_tensor(grad)}))
            w.add_event(kind, body, step=int(rows["step"][i]), call=int(rows["call"][i]),
                        module=int(rows["module"][i]))
    return dest


def edited_set(src: Path, dest: Path, sources: list[tuple[int, str | None]]) -> Path:
    """A new set in ``dest`` whose rank r is a copy of ``src``'s rank ``sources[r][0]``,
    with the gradient ``sources[r][1]`` perturbed (None: unchanged)."""
    ts = tracefmt.open_traceset(src)
    index = dest / "set.h5"
    names = [rank_file_name(index, r) for r in range(len(sources))]
    for name, (rank, grad) in zip(names, sources):
        copy_trace(ts.rank_path(rank), dest / name, perturb_grad=grad)
    write_traceset_index(index, rank_files=names, backend=ts.backend, layout=ts.layout)
    return index


def crafted_index(path: Path, names: list[str]) -> Path:
    """An index written by hand, the way a hostile file could be."""
    with h5py.File(path, "w") as f:
        f.attrs["format"] = np.bytes_("tensortrace-traceset")
        f.attrs["format_major"], f.attrs["format_minor"] = np.int64(1), np.int64(0)
        f.attrs["world_size"] = np.int64(len(names))
        f["ranks"] = np.array([n.encode() for n in names])
    return path


# -- recording -----------------------------------------------------------------------------


class TestTraceSetFiles:
    def test_index_and_rank_files_exist(self, ddp_set: Path) -> None:
        """Rank 0 writes the index at -o, every rank its own OUT.rank{R}.h5 beside it."""
        assert sorted(p.name for p in ddp_set.parent.glob("set*.h5")) == [
            "set.h5", "set.rank0.h5", "set.rank1.h5"]

    def test_index_attributes(self, ddp_set: Path) -> None:
        """The index declares format, version, world size, backend, relative names, layout."""
        with h5py.File(ddp_set) as f:
            assert f.attrs["format"] == b"tensortrace-traceset"
            assert (f.attrs["format_major"], f.attrs["format_minor"]) == (1, 0)
        ts = tracefmt.open_traceset(ddp_set)
        assert (ts.world_size, ts.backend, ts.kind) == (2, "gloo", "ddp")
        assert ts.rank_names == ("set.rank0.h5", "set.rank1.h5")
        assert ts.layout["wrapped_by"] == "recipe" and ts.created

    def test_rank_files_say_which_rank_recorded_them(self, ddp_set: Path) -> None:
        """Each rank file's run environment names its rank, world size, backend and layout."""
        ts = tracefmt.open_traceset(ddp_set)
        for rank in range(2):
            with ts.open_rank(rank) as r:
                assert r.run.environment["distributed"] == {
                    "rank": rank, "world_size": 2, "backend": "gloo", "layout": "ddp"}


class TestModulePaths:
    def test_no_module_prefix(self, ddp_set: Path) -> None:
        """Hooks sit on the module inside DDP: paths and parameter names are the user's."""
        with tracefmt.open_trace_or_rank(ddp_set, rank=1) as r:
            assert [m.path for m in r.modules] == ["", "0", "1", "2"]
            assert sorted(r.param_grads(0).grads) == ["0.bias", "0.weight", "2.bias", "2.weight"]
            assert all(c.module in ("", "0", "1", "2") for c in r.calls())


class TestReplicatedAcrossRanks:
    def test_grads_and_params_identical_inputs_not(self, ddp_set: Path) -> None:
        """Different batches per rank, yet gradients and weights match bitwise (DDP all-reduce)."""
        ts = tracefmt.open_traceset(ddp_set)
        with ts.open_rank(0) as a, ts.open_rank(1) as b:
            assert a.steps == b.steps == [0, 1]
            for step in a.steps:
                ga, gb = a.param_grads(step).grads, b.param_grads(step).grads
                for name in ga:
                    assert a.read(ga[name]).tobytes() == b.read(gb[name]).tobytes(), name
                pa, pb = a.step_record(step).params, b.step_record(step).params
                for name in pa:
                    assert a.read(pa[name]).tobytes() == b.read(pb[name]).tobytes(), name
            x0 = a.read(dict(tracefmt.iter_tensor_leaves(a.call(0).args, "args"))["args.0"])
            x1 = b.read(dict(tracefmt.iter_tensor_leaves(b.call(0).args, "args"))["args.0"])
            assert not np.array_equal(x0, x1)
            w0 = a.step_record(0).params["0.weight"]
            w1 = a.step_record(1).params["0.weight"]
            assert not np.array_equal(a.read(w0), a.read(w1))  # the optimizer stepped


class TestRecorderWrapsPlainModel:
    def test_plain_model_is_wrapped_in_ddp(self, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
        """A plain model under torchrun is wrapped in DDP by the recorder; the ranks agree."""
        index = _recorded(tmp_path, PLAIN_RECIPE)
        ts = tracefmt.open_traceset(index)
        assert ts.layout == {"kind": "ddp", "wrapped_by": "recorder"}
        with ts.open_rank(0) as r:
            assert [m.path for m in r.modules] == ["", "0", "1", "2"]
        code, out = run_json("check", index, "--json", capsys=capsys)
        assert (code, out) == (0, {"alerts": []})


# -- reader commands on a set --------------------------------------------------------------


class TestValidateSet:
    def test_valid_set(self, ddp_set: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """validate on an index validates every rank file and exits 0 when all are valid."""
        code, out = run_json("validate", ddp_set, "--json", capsys=capsys)
        assert code == 0 and out["status"] == "valid" and out["world_size"] == 2
        assert [(r["rank"], r["status"]) for r in out["ranks"]] == [(0, "valid"), (1, "valid")]

    def test_missing_rank_file(self, ddp_set: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
        """A rank file that is gone makes the set invalid (exit 1), naming that rank."""
        shutil.copy(ddp_set, tmp_path / "set.h5")
        shutil.copy(ddp_set.parent / "set.rank0.h5", tmp_path)
        assert tensortrace(["validate", str(tmp_path / "set.h5")]) == 1
        out = capsys.readouterr().out
        assert "invalid" in out and "rank 1:" in out and "no such file" in out


class TestInfoSet:
    def test_json_world_size_and_sum(self, ddp_set: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
        """info --json on an index: world_size, per-rank entries, and calls summed over ranks."""
        code, out = run_json("info", ddp_set, "--json", capsys=capsys)
        assert code == 0 and out["world_size"] == 2 and out["layout"]["kind"] == "ddp"
        assert [r["rank"] for r in out["ranks"]] == [0, 1]
        assert out["calls"] == sum(r["calls"] for r in out["ranks"]) == 16


class TestCheckSet:
    def test_correct_ddp_run_has_no_rank_mismatch(self, ddp_set: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
        """check on a correct DDP set: rank 0's trace is healthy and the ranks agree."""
        code, out = run_json("check", ddp_set, "--json", capsys=capsys)
        assert out == {"alerts": []} and code == 0

    def test_planted_gradient_names_rank_1(self, ddp_set: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
        """One gradient changed in rank 1's copy: a rank_mismatch alert names rank 1."""
        index = edited_set(ddp_set, tmp_path, [(0, None), (1, "2.weight")])
        assert tensortrace(["validate", str(index)]) == 0
        capsys.readouterr()
        code, out = run_json("check", index, "--json", capsys=capsys)
        assert code == 1
        [alert] = out["alerts"]
        assert alert["kind"] == "rank_mismatch" and alert["rank"] == 1
        assert (alert["phase"], alert["tensor"], alert["module"], alert["step"]) == (
            "param_grads", "2.weight", "2", 0)
        assert "1 of 64 elements differ" in alert["message"]

    def test_odd_rank_0_is_named(self, ddp_set: Path, tmp_path: Path) -> None:
        """When ranks 1 and 2 agree with each other but not with rank 0, rank 0 is named."""
        index = edited_set(ddp_set, tmp_path, [(0, "0.bias"), (1, None), (1, None)])
        [alert] = tracefmt.cross_rank_alerts(index)
        assert (alert.rank, alert.ranks, alert.tensor) == (0, (1, 2), "0.bias")

    def test_text_output(self, ddp_set: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
        """The human output prints the mismatch like any other alert."""
        index = edited_set(ddp_set, tmp_path, [(0, None), (1, "0.weight")])
        assert tensortrace(["check", str(index)]) == 1
        assert "rank mismatch: param_grads 0 0.weight:" in capsys.readouterr().out


class TestRankOption:
    def test_show_default_rank_0_and_rank_1(self, ddp_set: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
        """show on an index reads rank 0; --rank 1 reads rank 1's own (different) inputs."""
        outs = []
        for trace, extra in ((ddp_set, []), (ddp_set, ["--rank", "1"]),
                             (ddp_set.parent / "set.rank0.h5", []),
                             (ddp_set.parent / "set.rank1.h5", [])):
            assert tensortrace(["show", str(trace), "0", "--tensor", "args.0", "--hist",
                                "--width", "100", *extra]) == 0
            outs.append(capsys.readouterr().out)
        assert outs[0] == outs[2] and outs[1] == outs[3] and outs[0] != outs[1]

    def test_bad_ranks(self, ddp_set: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A rank outside the set, or --rank 1 on a single trace, is a usage error (exit 2)."""
        assert tensortrace(["check", str(ddp_set), "--rank", "2"]) == 2
        single = ddp_set.parent / "set.rank0.h5"
        assert tensortrace(["show", str(single), "0", "--rank", "1"]) == 2
        err = capsys.readouterr().err
        assert "no rank 2" in err and "not a trace set" in err

    def test_tui_loader_opens_rank_0(self, ddp_set: Path) -> None:
        """The TUI's reader thread, given an index, opens rank 0's trace."""
        import queue

        from tui._loader import Delivery, TraceLoader

        got: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
        loader = TraceLoader(ddp_set, None, got.put)
        loader.start()
        try:
            first = got.get(timeout=30)
        finally:
            loader.stop()
        assert first.error is None and first.value == ("set.rank0.h5", 8)


class TestIndexSecurity:
    @pytest.mark.parametrize("name", ["/etc/passwd", "../outside.h5", "sub/../../x.h5",
                                      "C:\\x.h5", "\\\\server\\share\\x.h5", "a\\..\\..\\x.h5"])
    def test_escaping_names_refused(self, name: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
        """Absolute rank names and '..' components are refused: never opened, exit 2."""
        index = crafted_index(tmp_path / "evil.h5", ["ok.rank0.h5", name])
        with pytest.raises(tracefmt.UnsafeTraceError):
            tracefmt.open_traceset(index)
        assert tensortrace(["info", str(index)]) == 2
        assert capsys.readouterr().err.count("\n") == 1

    def test_writer_refuses_them_too(self, tmp_path: Path) -> None:
        """write_traceset_index will not write a name a reader must refuse."""
        with pytest.raises(tracefmt.UnsafeTraceError):
            write_traceset_index(tmp_path / "s.h5", rank_files=["../x.h5"], backend="gloo",
                                 layout={"kind": "ddp"})

    def test_relative_subdirectory_allowed(self, ddp_set: Path, tmp_path: Path) -> None:
        """Names below the index's directory resolve relative to it, not to the cwd."""
        (tmp_path / "ranks").mkdir()
        for r in range(2):
            shutil.copy(ddp_set.parent / f"set.rank{r}.h5", tmp_path / "ranks")
        crafted_index(tmp_path / "s.h5", ["ranks/set.rank0.h5", "ranks/set.rank1.h5"])
        with tracefmt.open_trace_or_rank(tmp_path / "s.h5", rank=1) as r:
            assert r.path == tmp_path / "ranks" / "set.rank1.h5"


# -- FSDP2 ---------------------------------------------------------------------------------


class TestFSDP:
    def test_full_tensors_and_placements(self, fsdp_set: Path) -> None:
        """DTensor params and grads are stored gathered, equal on both ranks, placements noted."""
        ts = tracefmt.open_traceset(fsdp_set)
        assert ts.kind == "fsdp" and ts.layout["placements"]["0.weight"].startswith("(S(0))")
        with ts.open_rank(0) as a, ts.open_rank(1) as b:
            ga, gb = a.param_grads(0).grads, b.param_grads(0).grads
            assert a.tensor(ga["0.weight"]).shape == (16, 8)
            assert a.tensor(a.step_record(0).params["2.weight"]).shape == (4, 16)
            for name in ga:
                assert a.read(ga[name]).tobytes() == b.read(gb[name]).tobytes()
        assert tracefmt.cross_rank_alerts(fsdp_set) == []

    def test_same_values_as_ddp(self, fsdp_set: Path, ddp_set: Path) -> None:
        """Same model, seed and batches: FSDP's weights equal DDP's, gradients to rounding."""
        with tracefmt.open_trace_or_rank(fsdp_set) as f, tracefmt.open_trace_or_rank(ddp_set) as d:
            fp, dp = f.step_record(0).params, d.step_record(0).params
            for name in dp:
                np.testing.assert_array_equal(f.read(fp[name]), d.read(dp[name]))
            fg, dg = f.param_grads(0).grads, d.param_grads(0).grads
            for name in dg:
                np.testing.assert_allclose(f.read(fg[name]), d.read(dg[name]), rtol=1e-5,
                                           atol=1e-7)


# -- sharded replay ------------------------------------------------------------------------


class TestShardCalls:
    def test_groups_kept_together_and_balanced(self, translation_reader: Any) -> None:
        """Each call on one rank, a module+step's calls together, the same split every time."""
        from replayer._sharded import shard_calls

        calls = list(translation_reader.calls())
        shards = shard_calls(calls, 3)
        assert sorted(c for s in shards for c in s) == sorted(c.call for c in calls)
        owner = {c: r for r, s in enumerate(shards) for c in s}
        for c in calls:
            same = [d.call for d in calls if (d.module, d.step) == (c.module, c.step)]
            assert {owner[x] for x in same} == {owner[c.call]}
        assert max(map(len, shards)) - min(map(len, shards)) <= max(
            sum(1 for d in calls if (d.module, d.step) == (c.module, c.step)) for c in calls)
        assert shard_calls(calls, 3) == shards

    def test_isolate_refused_under_torchrun(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """--isolate and --splice are refused, once, before a sharded replay starts."""
        from replayer._sharded import check_sharded_options

        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "1")
        with pytest.raises(tracefmt.UsageError, match="--isolate"):
            check_sharded_options(isolate=True, splice=False)
        check_sharded_options(isolate=False, splice=False)


def _single_and_sharded(trace: Path, candidates: Path, tmp: Path,
                        *extra: object) -> tuple[int, dict, subprocess.CompletedProcess[str]]:
    single, sharded = tmp / "single.json", tmp / "sharded.json"
    code = tensortrace(["replay", str(trace), str(candidates), "-q", "--json", str(single),
                        *map(str, extra)])
    done = torchrun("replay", trace, candidates, "--json", sharded, *extra, cwd=tmp)
    assert sharded.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    a, b = json.loads(single.read_text()), json.loads(sharded.read_text())
    assert without_timings(a) == without_timings(b)
    return code, b, done


class TestShardedReplay:
    def test_passing_candidates(self, translation_trace: Path, tmp_path: Path) -> None:
        """correct.py over 2 processes: the same report as one process, exit 0, printed once."""
        code, report, done = _single_and_sharded(translation_trace, CORRECT, tmp_path)
        assert code == 0 and done.returncode == 0
        assert report["summary"]["failed"] == 0 and report["summary"]["calls"] > 100
        assert done.stdout.count("first forward divergence") == 1

    def test_failing_candidates(self, translation_trace: Path, tmp_path: Path) -> None:
        """The batch-0 softmax bug over 2 processes: the same failures in the same order."""
        code, report, done = _single_and_sharded(translation_trace, BATCH0, tmp_path)
        assert code == 1 and done.returncode != 0
        assert report["first_divergence"]["backward"]["module"].endswith("softmax")
        assert report["summary"]["failed"] > 0

    def test_ddp_rank_trace(self, ddp_set: Path, tmp_path: Path) -> None:
        """A set's rank 0 replays sharded; DDP-averaged param grads are noted, not compared."""
        cands = tmp_path / "linear.py"
        cands.write_text(LINEAR_CANDIDATES)
        code, report, _ = _single_and_sharded(ddp_set, cands, tmp_path)
        assert code == 0 and report["trace"].endswith("set.rank0.h5")
        assert report["summary"] == {"calls": 8, "passed": 8, "failed": 0, "errors": 0,
                                     "skipped": 0}
        last = [c for c in report["calls"] if c["phase"] == "backward"]
        assert all("averaged over 2 ranks by ddp" in " ".join(c["notes"]) for c in last)
        assert not any(t["name"].startswith("param.") for c in last for t in c["tensors"])
