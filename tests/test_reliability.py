"""A recording survives what happens to real runs: kills, full disks, readers, Ctrl-C.

The recorder promises that a call it reported as flushed is on disk, bit-exact, whatever
happens to the process afterwards. Recording children are forked from one warm "zygote"
process (importing torch takes seconds; a fork takes milliseconds), so many kills fit in a
fast run. Each child logs, from its own hooks registered before the recorder's, a digest of
every call's inputs and outputs *before* the recorder queues the call, and every flush the
recorder acknowledges; the parent compares the trace against that log.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.util
import io
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import recorder
import tracefmt
import tracefmt.cli
from recorder.cli import INTERRUPTED

HAVE_COMMANDS = importlib.util.find_spec("tracefmt._commands") is not None
NO_COMMANDS = "tracefmt._commands (validate/repair) is not there yet"
CALLS_PER_STEP = 8  # the child's model: the root Sequential and its 7 submodules

# -- the recording child -------------------------------------------------------------------

ZYGOTE = r'''
"""Imports torch once, then forks one recording child per request (JSON lines on stdin)."""
import hashlib, json, os, sys, time, traceback

import torch
from torch import nn

import recorder

torch.set_num_threads(1)


def build_model():
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(),
                         nn.Sequential(nn.Linear(64, 64), nn.Tanh()), nn.LayerNorm(64),
                         nn.Linear(64, 8))


def flat(obj):
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for x in obj for t in flat(x)]
    if isinstance(obj, dict):
        return [t for x in obj.values() for t in flat(x)]
    return []


def digest(tensors):
    h = hashlib.blake2b(digest_size=12)
    for t in tensors:
        a = t.detach().contiguous().numpy()
        h.update(repr(tuple(a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def run(path, log, seed, steps, flush_every, sleep):
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def emit(line):  # one write() per line: a kill never leaves half a line behind a whole one
        os.write(fd, (line + "\n").encode())

    torch.manual_seed(seed)
    model = build_model()
    ids, box = [], []

    def pre(module, args, kwargs):  # runs before the recorder's pre-hook: its next call id
        ids.append(box[0].calls)

    def post(module, args, kwargs, out):  # runs before the recorder queues the call
        emit(f"C {ids.pop()} {digest(flat(args) + flat(kwargs))} {digest(flat(out))}")

    for m in model.modules():
        m.register_forward_pre_hook(pre, with_kwargs=True)
        m.register_forward_hook(post, with_kwargs=True)
    on_flush = lambda calls: emit("F " + ",".join(map(str, calls)))
    with recorder.record(model, path, flush_every=flush_every, on_flush=on_flush) as rec:
        box.append(rec)
        for step in range(steps):
            g = torch.Generator().manual_seed(seed * 100003 + step)
            rec.backward(model(torch.randn(16, 32, generator=g)).square().mean())
            with torch.no_grad():  # plain SGD: torch.optim would import torch._dynamo (seconds)
                for p in model.parameters():
                    p -= 0.05 * p.grad
                    p.grad = None
            rec.step()
            if sleep:
                time.sleep(sleep)
    emit("END")


def warm_up(scratch):
    """Pay the lazy first-use costs once, before forking."""
    run(scratch + ".h5", scratch + ".log", 0, 2, 4, 0)
    for _ in range(500):  # the writer thread was joined; wait for the kernel to drop it
        if len(os.listdir("/proc/self/task")) == 1:
            return
        time.sleep(0.01)
    raise RuntimeError("the zygote must be single-threaded to fork")


def serve():
    warm_up(sys.argv[1])
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "spawn":
            pid = os.fork()
            if pid == 0:
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 0)
                os.dup2(null, 1)
                err = os.open(req["log"] + ".err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(err, 2)
                code = 0
                try:
                    run(req["path"], req["log"], req["seed"], req["steps"], req["flush_every"],
                        req["sleep"])
                except BaseException:
                    traceback.print_exc()
                    code = 1
                sys.stderr.flush()
                os._exit(code)
            print(json.dumps({"pid": pid}), flush=True)
        elif req["op"] == "wait":
            _, status = os.waitpid(req["pid"], 0)
            print(json.dumps({"status": status}), flush=True)


serve()
'''


class Zygote:
    """A warm process that forks recording children on request."""

    def __init__(self, script: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, str(script), str(script.with_name("warm"))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _ask(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise RuntimeError(f"the zygote died (status {self.proc.wait(5)})")
        return json.loads(reply)

    def spawn(self, path: Path, log: Path, *, seed: int, steps: int = 10**6,
              flush_every: int = 4, sleep: float = 0.0) -> int:
        """Start a child recording ``steps`` steps into ``path``; returns its pid."""
        return self._ask({"op": "spawn", "path": str(path), "log": str(log), "seed": seed,
                          "steps": steps, "flush_every": flush_every, "sleep": sleep})["pid"]

    def wait(self, pid: int) -> int:
        """The child's raw wait status."""
        return self._ask({"op": "wait", "pid": pid})["status"]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    """One warm zygote for the module's kill and live-reading tests."""
    script = tmp_path_factory.mktemp("zygote") / "zygote.py"
    script.write_text(ZYGOTE)
    z = Zygote(script)
    yield z
    z.close()


@dataclass
class ChildLog:
    """What a child wrote before it stopped: call digests, acknowledged flushes."""

    digests: dict[int, tuple[str, str]]
    flushed: list[int]
    flushes: int
    finished: bool


def read_log(log: Path) -> ChildLog:
    """Parse the whole lines of a child's log (a kill can cut only the last one)."""
    digests: dict[int, tuple[str, str]] = {}
    flushed: list[int] = []
    flushes = 0
    finished = False
    text = log.read_text() if log.exists() else ""
    for line in text.split("\n")[:-1]:
        kind, _, rest = line.partition(" ")
        if kind == "C":
            call, ins, outs = rest.split()
            digests[int(call)] = (ins, outs)
        elif kind == "F":
            flushed.extend(int(c) for c in rest.split(","))
            flushes += 1
        elif kind == "END":
            finished = True
    return ChildLog(digests, flushed, flushes, finished)


def trace_digests(reader: tracefmt.TraceReader, call: int) -> tuple[str, str]:
    """The child's digest format, computed from the values stored in the trace."""
    named = reader.call(call, backward=False).tensors()

    def digest(tids: list[int]) -> str:
        h = hashlib.blake2b(digest_size=12)
        for tid in tids:
            a = reader.read(tid, verify=True)
            h.update(repr(tuple(a.shape)).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    ins = [tid for name, tid in named.items() if not name.startswith("outputs")]
    outs = [tid for name, tid in named.items() if name.startswith("outputs")]
    return digest(ins), digest(outs)


def check_calls(reader: tracefmt.TraceReader, calls: list[int], log: ChildLog) -> list[str]:
    """Problems with ``calls`` in the trace: missing, or values differing from the child's."""
    present = set(reader.call_ids)
    problems = []
    for c in calls:
        if c not in present:
            problems.append(f"call {c} reported flushed but not in the trace")
        elif c not in log.digests:
            problems.append(f"call {c} has no digest in the child's log")
        elif trace_digests(reader, c) != log.digests[c]:
            problems.append(f"call {c}: values differ from what the child computed")
    return problems


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``tensortrace ARGV`` in this process: status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = tracefmt.cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.002)


# -- 1. kill -------------------------------------------------------------------------------


@dataclass
class KillStats:
    trials: int = 0
    verified: int = 0
    lost: int = 0
    repaired: int = 0


def kill_trials(zygote: Zygote, tmp: Path, trials: int, seed: int) -> KillStats:
    """SIGKILL ``trials`` recordings at seeded moments; check every acknowledged call."""
    rng = random.Random(seed)
    stats = KillStats()
    for trial in range(trials):
        path, log = tmp / f"kill{trial}.h5", tmp / f"kill{trial}.log"
        pid = zygote.spawn(path, log, seed=seed + trial, flush_every=rng.choice((1, 3, 8)))
        try:
            wait_for(lambda log=log: read_log(log).flushes >= 1, 30, "the first flush")
            if rng.random() < 0.5:  # right after the k-th acknowledged flush
                k = rng.randint(1, 12)
                wait_for(lambda log=log, k=k: read_log(log).flushes >= k, 30, f"flush {k}")
            else:  # anywhere: mid-forward, mid-backward, mid-flush
                time.sleep(rng.uniform(0.0, 0.25))
        finally:
            os.kill(pid, signal.SIGKILL)
            status = zygote.wait(pid)
        err = Path(f"{log}.err").read_text()
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, \
            f"trial {trial}: the child ended on its own (status {status}): {err}"
        child = read_log(log)
        assert child.flushed and not child.finished
        with tracefmt.open_trace(path) as reader:
            assert reader.swmr and not reader.complete
            problems = check_calls(reader, child.flushed, child)
        assert not problems, f"trial {trial}: {problems[:5]}"
        stats.trials += 1
        stats.verified += len(child.flushed)
        stats.lost += len(problems)
        if HAVE_COMMANDS:
            check_validate_and_repair(path, child, tmp / f"kill{trial}.repaired.h5")
            stats.repaired += 1
    return stats


def check_validate_and_repair(path: Path, child: ChildLog, out: Path) -> None:
    """``validate`` says incomplete and where it stopped; ``repair`` keeps every flushed call."""
    rc, text, err = run_cli(["validate", str(path)])
    lines = text.strip().split("\n")
    assert rc == 1 and not err, (rc, text, err)
    stopped = re.search(r"incomplete: recording stopped (after step \d+|before the first step), "
                        r"call (\d+) \(\d+ events flushed\)", lines[-1])
    assert stopped and len(lines) == 1, text
    assert int(stopped.group(2)) >= max(child.flushed)
    rc, text, err = run_cli(["repair", str(path), "-o", str(out)])
    assert rc == 0 and not err, (rc, text, err)
    with tracefmt.open_trace(out) as fixed:
        assert fixed.complete
        assert not check_calls(fixed, child.flushed, child)
    assert tracefmt.validate_trace(out, deep=True).status == "valid"


class TestKill:
    """A recording SIGKILLed at any moment keeps every call it acknowledged, bit-exact."""

    def test_kill_at_random_moments(self, zygote: Zygote, tmp_path: Path) -> None:
        """24 seeded kills: no acknowledged call lost or changed; validate/repair agree."""
        stats = kill_trials(zygote, tmp_path, trials=24, seed=20240)
        print(f"kill: {stats}")
        assert stats.trials == 24 and stats.lost == 0 and stats.verified > 24

    @pytest.mark.slow
    def test_kill_many_times(self, zygote: Zygote, tmp_path: Path) -> None:
        """200 more seeded kills, for the rare moments (inside HDF5's own flush)."""
        stats = kill_trials(zygote, tmp_path, trials=200, seed=777)
        print(f"kill (slow): {stats}")
        assert stats.trials == 200 and stats.lost == 0


# -- 2. disk full, permission denied -------------------------------------------------------

BIG_RECIPE = '''
import torch
from torch import nn


def build_model():
    return nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.Tanh(),
                         nn.Linear(256, 16))


def run_step(model, step):
    g = torch.Generator().manual_seed(step)
    return model(torch.randn(64, 256, generator=g)).square().mean()
'''

SMALL_RECIPE = '''
import torch
from torch import nn


def build_model():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def run_step(model, step):
    g = torch.Generator().manual_seed(step)
    return model(torch.randn(8, 16, generator=g)).square().mean()
'''

DISK_BYTES = 8 << 20


def record_cmd(recipe: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tracefmt.cli", "record", str(recipe), "-o", str(out), *extra]


@contextlib.contextmanager
def small_tmpfs(where: Path) -> Iterator[Path]:
    """A DISK_BYTES tmpfs mounted at ``where`` (skips when mounting is not allowed here)."""
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs",
                              str(where)], capture_output=True, text=True) \
        if shutil.which("mount") else None
    if mounted is None or mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root); the RLIMIT_FSIZE test covers it")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _limit_file_size() -> None:
    """In the child: writes past DISK_BYTES fail with EFBIG instead of killing it (SIGXFSZ)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (DISK_BYTES, DISK_BYTES))


class TestDiskFull:
    """Running out of space stops the recording with one line, status 2, the flushed part kept."""

    @pytest.mark.parametrize("how", ["tmpfs", "rlimit"])
    def test_disk_full(self, how: str, tmp_path: Path) -> None:
        """ENOSPC (a full tmpfs) and EFBIG (RLIMIT_FSIZE): message, status, readable prefix."""
        recipe = tmp_path / "big_recipe.py"
        recipe.write_text(BIG_RECIPE)
        with contextlib.ExitStack() as stack:
            if how == "tmpfs":
                out = stack.enter_context(small_tmpfs(tmp_path / "disk")) / "t.h5"
                pre, cause = None, "disk full"
            else:
                out, pre, cause = tmp_path / "t.h5", _limit_file_size, "file too large"
            start = time.monotonic()
            proc = subprocess.run(record_cmd(recipe, out, "--steps", "1000", "-q"),
                                  preexec_fn=pre, capture_output=True, text=True, timeout=120)
            elapsed = time.monotonic() - start
            lines = proc.stderr.strip().split("\n")
            assert proc.returncode == 2, proc.stderr
            assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
            assert lines[0].startswith(f"tensortrace: error: {out}: ") and cause in lines[0]
            told = re.search(r"(\d+) of (\d+) calls on disk", lines[0])
            assert told, lines[0]
            assert elapsed < 60
            with tracefmt.open_trace(out) as reader:
                assert not reader.complete and reader.n_calls == int(told.group(1)) > 0
                for c in reader.call_ids:
                    for tid in reader.call(c).tensors().values():
                        reader.read(tid, verify=True)
            if HAVE_COMMANDS:
                assert tracefmt.validate_trace(out, deep=True).status == "incomplete"


class TestReserveSpace:
    """The writer claims disk space before HDF5 records it, and never writes zeros to do so."""

    def test_grows_the_file(self, tmp_path: Path) -> None:
        """Where the file system reserves, the file grows to offset + length and reads as zeros."""
        from tracefmt._reserve import reserve_space

        path = tmp_path / "f.bin"
        path.write_bytes(b"abc")
        fd = os.open(path, os.O_RDWR)
        try:
            done = reserve_space(fd, 3, 1 << 20)
        finally:
            os.close(fd)
        if not done:
            pytest.skip("this file system cannot reserve space")
        assert path.stat().st_size == 3 + (1 << 20)
        assert path.read_bytes()[:4] == b"abc\0"

    @pytest.mark.parametrize(("err", "outcome"), [(errno.EOPNOTSUPP, False), (errno.EINVAL, False), (errno.ENOSPC, OSError)])
    def test_unsupported_is_false_and_a_full_disk_raises(
            self, monkeypatch: pytest.MonkeyPatch, err: int, outcome: object) -> None:
        """EOPNOTSUPP and EINVAL mean "cannot reserve" (no emulation); ENOSPC is an error."""
        import ctypes

        import tracefmt._reserve as reserve

        def fake(fd: int, mode: int, offset: int, length: int) -> int:
            ctypes.set_errno(err)
            return -1

        monkeypatch.setattr(reserve, "_FALLOCATE", fake)
        if outcome is OSError:
            with pytest.raises(OSError) as info:
                reserve.reserve_space(0, 0, 10)
            assert info.value.errno == err
        else:
            assert reserve.reserve_space(0, 0, 10) is outcome


class TestPermissionDenied:
    """An output that cannot be created is one line and status 2, before any work is done."""

    def test_read_only_directory(self, tmp_path: Path) -> None:
        """An immutable (chattr +i) or read-only directory: 'permission denied', exit 2."""
        recipe = tmp_path / "perm_recipe.py"
        recipe.write_text(SMALL_RECIPE)
        locked = tmp_path / "locked"
        locked.mkdir()
        with self._deny_writes(locked):
            rc, out, err = run_cli(["record", str(recipe), "-o", str(locked / "t.h5"), "-q"])
        assert rc == 2 and not out
        assert err == f"tensortrace: error: {locked / 't.h5'}: cannot create trace (permission denied)\n"

    def test_path_under_a_file(self, tmp_path: Path) -> None:
        """An output 'inside' a regular file: one line naming the path, exit 2."""
        recipe = tmp_path / "perm_recipe2.py"
        recipe.write_text(SMALL_RECIPE)
        (tmp_path / "file").write_text("")
        rc, out, err = run_cli(["record", str(recipe), "-o", str(tmp_path / "file" / "t.h5")])
        assert rc == 2 and not out
        assert err.startswith(f"tensortrace: error: {tmp_path / 'file' / 't.h5'}: cannot create")
        assert err.count("\n") == 1

    @staticmethod
    @contextlib.contextmanager
    def _deny_writes(d: Path) -> Iterator[None]:
        if os.geteuid() != 0:
            d.chmod(0o500)
            try:
                yield
            finally:
                d.chmod(0o700)
            return
        if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(d)],
                                                        capture_output=True).returncode:
            pytest.skip("running as root without chattr +i: nothing can deny a write")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(d)], check=True)


# -- 3. reading a live recording -----------------------------------------------------------


class TestLiveReading:
    """A reader open on a recording in progress sees it grow, with correct values."""

    def test_refresh_follows_the_recording(self, zygote: Zygote, tmp_path: Path) -> None:
        """open_trace on a live file, refresh() until END: counts grow, every call checks out."""
        path, log = tmp_path / "live.h5", tmp_path / "live.log"
        steps = 40
        pid = zygote.spawn(path, log, seed=11, steps=steps, flush_every=3, sleep=0.01)
        seen_counts: list[int] = []
        checked: set[int] = set()
        complete = False
        try:
            wait_for(lambda: read_log(log).flushes >= 1, 30, "the first flush")
            with tracefmt.open_trace(path) as reader:
                assert reader.swmr
                deadline = time.monotonic() + 60
                while True:
                    reader.refresh()
                    complete = reader.complete
                    seen_counts.append(reader.n_calls)
                    new = [c for c in reader.call_ids if c not in checked]
                    problems = check_calls(reader, new, read_log(log))
                    assert not problems, problems[:5]
                    checked.update(new)
                    if complete:
                        break
                    assert time.monotonic() < deadline, "the recording never completed"
        finally:
            if not complete:
                os.kill(pid, signal.SIGKILL)
            status = zygote.wait(pid)
        assert status == 0, Path(f"{log}.err").read_text()
        assert seen_counts == sorted(seen_counts)
        assert len(set(seen_counts)) >= 5, seen_counts
        assert checked == set(range(steps * CALLS_PER_STEP))


# -- 4. errors on the writer thread, Ctrl-C ------------------------------------------------


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


class TestWriterErrorsSurface:
    """A failure on the writer thread is raised on the recording thread at once, not at close."""

    def test_raised_within_one_call(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A flush failing mid-forward: the next call raises it once, cleanly; the rest stays."""
        real_flush = tracefmt.TraceWriter.flush
        failed = threading.Event()
        flushes = 0
        fail_at = 2 * 3 + 1  # 3 flushes a step (after 2 calls, after 4, at step()): step 2's 1st

        def flaky_flush(self: tracefmt.TraceWriter) -> None:
            nonlocal flushes
            flushes += 1
            if flushes == fail_at:
                failed.set()
                raise tracefmt.TraceWriteError("flush failed (disk full)", path=self.path)
            real_flush(self)

        monkeypatch.setattr(tracefmt.TraceWriter, "flush", flaky_flush)
        thread_errors: list[Any] = []
        monkeypatch.setattr(threading, "excepthook", thread_errors.append)
        model = small_model()
        box: list[Any] = []
        calls_at_failure = -1

        def wait_for_the_failure(module: nn.Module, args: Any) -> None:
            """Before the recorder's hooks on model[2] (registered first): let the writer fail."""
            nonlocal calls_at_failure
            if box[0].step_index == 2:
                assert failed.wait(5)
                time.sleep(0.05)
                calls_at_failure = box[0].calls

        model[2].register_forward_pre_hook(wait_for_the_failure)
        reported: list[int] = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(tracefmt.TraceWriteError, match="disk full") as info, \
                    recorder.record(model, tmp_path / "t.h5", flush_every=2,
                                    on_flush=reported.extend) as rec:
                box.append(rec)
                for _ in range(50):
                    rec.backward(model(torch.randn(2, 8)).sum())
                    rec.step()
        assert info.value.path == str(tmp_path / "t.h5")
        assert rec.step_index == 2 and calls_at_failure >= 0 and rec.calls == calls_at_failure + 1
        assert not thread_errors
        assert not [w for w in caught if "always_call" in str(w.message)]
        with tracefmt.open_trace(tmp_path / "t.h5") as reader:
            assert not reader.complete
            assert sorted(reported) == reader.call_ids and len(reported) == 2 * 4

    def test_on_flush_reports_each_call_once_after_the_flush(self, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
        """on_flush gets every call id exactly once, after the flush that wrote it returned."""
        real_flush = tracefmt.TraceWriter.flush
        order: list[tuple[str, Any]] = []

        def traced_flush(self: tracefmt.TraceWriter) -> None:
            real_flush(self)
            order.append(("flushed", self.counts[tracefmt.EventKind.CALL]))

        monkeypatch.setattr(tracefmt.TraceWriter, "flush", traced_flush)
        model = small_model()
        with recorder.record(model, tmp_path / "t.h5", flush_every=2,
                             on_flush=lambda ids: order.append(("reported", ids))) as rec:
            for _ in range(5):
                rec.backward(model(torch.randn(2, 8)).sum())
                rec.step()
        reported = [c for kind, ids in order if kind == "reported" for c in ids]
        assert sorted(reported) == list(range(5 * 4)) == sorted(set(reported))
        written = 0
        for kind, value in order:
            if kind == "flushed":
                written = value
            else:
                assert len(value) <= written
                written -= len(value)
        assert rec.flushed_calls == 5 * 4

    def test_interrupted_backward_writes_no_partial_grads(self, tmp_path: Path) -> None:
        """An exception inside backward: the step's half-accumulated .grad is not recorded."""
        model = small_model()

        def boom(grad: torch.Tensor) -> torch.Tensor:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt), recorder.record(model, tmp_path / "t.h5") as rec:
            rec.backward(model(torch.randn(2, 8)).sum())
            rec.step()
            out = model(torch.randn(2, 8))
            model[0].weight.register_hook(boom)
            rec.backward(out.sum())
        with tracefmt.open_trace(tmp_path / "t.h5") as reader:
            assert not reader.complete and reader.steps == [0, 1]
            assert reader.param_grads(0) is not None and reader.param_grads(1) is None


class _Lines:
    """Collects a stream's lines on a thread, so a test can wait for one without blocking."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def join(self) -> None:
        self._thread.join(10)


class TestCtrlC:
    """Ctrl-C during ``tensortrace record``: one line, status 130, an incomplete readable trace."""

    def test_sigint(self, tmp_path: Path) -> None:
        """SIGINT once calls are on disk: status 130, message matches the file, validate agrees."""
        recipe = tmp_path / "small_recipe.py"
        recipe.write_text(SMALL_RECIPE)
        out = tmp_path / "t.h5"
        proc = subprocess.Popen(record_cmd(recipe, out, "--steps", "1000000"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        err = _Lines(proc.stderr)
        try:
            on_disk = re.compile(r"\(([1-9]\d*) on disk\)")
            wait_for(lambda: any(on_disk.search(x) for x in err.lines[-3:]), 60, "calls on disk")
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err.join()
        assert proc.stdout is not None and proc.stdout.read() == ""
        assert rc == INTERRUPTED == 130, err.lines[-5:]
        assert not [x for x in err.lines if not x.startswith("recording: ")][:-1], err.lines[-5:]
        last = err.lines[-1]
        assert last.startswith(f"tensortrace: error: {out}: interrupted; ")
        told = re.search(r"(\d+) of (\d+) calls on disk", last)
        assert told and 0 < int(told.group(1)) <= int(told.group(2)), last  # calls cut short
        with tracefmt.open_trace(out) as reader:
            assert not reader.complete and reader.n_calls == int(told.group(1))
        if HAVE_COMMANDS:
            assert tracefmt.validate_trace(out, deep=True).status == "incomplete"
