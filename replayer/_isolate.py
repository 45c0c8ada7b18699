"""``--isolate``: candidates run in a child process, so a crash or a hang is one bad call.

A candidate kernel that segfaults, aborts or never returns would otherwise take the whole
replay (and its report) with it. The child (``python -m replayer._isolate``: a fresh
interpreter, so the caller's ``__main__`` need not be import-safe as multiprocessing's spawn
requires) reads its job from stdin, opens the trace and the candidates itself, replays the
call ids it is given and sends each call's ``CallResult`` dicts back over a pipe; before each phase it says which (call, phase) it starts, so the
parent knows what to blame. When the child dies or a call overruns the per-call timeout,
the parent records an error for that call and phase, then starts a new child for the
remaining calls. Without crashes the results are those of the in-process replay.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import tracefmt

from ._report import CallResult

if TYPE_CHECKING:
    from ._replay import ReplayOptions

__all__ = ["replay_isolated", "IsolatedRun"]

_SETUP_SECONDS = 120.0  # importing torch and the candidates file, on top of the call timeout


def _child_main(conn: Connection, threads: int, trace: str, candidates: str,
                options: ReplayOptions, call_ids: list[int] | None,
                lost: list[tuple[str, int]]) -> None:
    """The child: replay ``call_ids`` (None: every selected call), reporting as it goes.

    It uses the parent's torch thread count: CPU reductions split differently otherwise.
    """
    try:
        import torch

        from recorder._state import restore_flags

        from ._candidates import load_candidates
        from ._outputs import _numpy
        from ._replay import _Replayer

        torch.set_num_threads(threads)
        reader = tracefmt.open_trace(trace)
        rep = _Replayer(reader, load_candidates(candidates), options)
        calls = rep.prepare(call_ids)
        _warm_up(rep.device)
        restore_flags(rep.flags)  # first use may import a lot: setup, not a call
    except tracefmt.TraceError as exc:
        conn.send(("usage", str(exc)))
        return
    except Exception:
        conn.send(("setup", traceback.format_exc()))
        return
    rep.lost_param_grads = set(lost)

    def on_phase(call: int, phase: str, fwd: CallResult | None) -> None:
        conn.send(("phase", call, phase, fwd.to_dict() if fwd else None))

    rep.on_phase = on_phase
    conn.send(("calls", [c.call for c in calls]))
    for call in calls:
        fwd, bwd = rep.run_call(call)
        outputs = {}
        for phase in ("forward", "backward"):
            named = rep.outputs.pop((call.call, phase), None)
            if named is not None:
                outputs[phase] = {n: _numpy(t) for n, t in named.items()}
        conn.send(("done", call.call, fwd.to_dict(), bwd.to_dict() if bwd else None, outputs))
    conn.send(("end",))
    reader.close()


def _warm_up(device: Any) -> None:
    """One-time costs belong to setup, not to the first call's timeout: autograd's device
    threads, a CUDA context, and the imports (sympy, seconds) of a first backward given
    explicit output gradients, as replay's is."""
    import torch

    x = torch.ones(2, device=device, requires_grad=True)
    y = x * 2
    torch.autograd.backward([y], [torch.ones_like(y)])
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _wait(proc: subprocess.Popen) -> None:
    """Reap a child that closed its pipe; one that lingers (closing fds) is killed."""
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _death(exitcode: int | None) -> str:
    if exitcode is None:
        return "the candidate process stopped responding"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"the candidate process crashed ({name})"
    return f"the candidate process exited with status {exitcode}"


@dataclass
class IsolatedRun:
    """What the isolated replay produced: results by call, and candidate tensors."""

    forward: dict[int, CallResult] = field(default_factory=dict)
    backward: dict[int, CallResult] = field(default_factory=dict)
    outputs: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)
    selected: list[int] = field(default_factory=list)


class _Supervisor:
    """Runs children until every selected call has a result; blames crashes on one call."""

    def __init__(self, trace: str, candidates: str, options: ReplayOptions,
                 on_progress: Callable[[int, int, CallResult], None] | None) -> None:
        self.trace, self.candidates, self.options = trace, candidates, options
        self.timeout = float(options.timeout)
        self.on_progress = on_progress
        self.reader = tracefmt.open_trace(trace)
        self.run = IsolatedRun()
        self.lost: set[tuple[str, int]] = set()

    def close(self) -> None:
        self.reader.close()

    def _base(self, call: int) -> dict[str, Any]:
        rec = self.reader.call(call, backward=False)
        return dict(call=call, module=rec.module, type=rec.type, step=rec.step, index=rec.index)

    def _record(self, fwd: CallResult, bwd: CallResult | None) -> None:
        self.run.forward[fwd.call] = fwd
        if bwd is not None:
            self.run.backward[fwd.call] = bwd
        if self.on_progress:
            self.on_progress(len(self.run.forward), len(self.run.selected), fwd)

    def _blame(self, call: int, phase: str, fwd: CallResult | None, error: str) -> None:
        """Error results for the call that was running when its process died or hung."""
        base = self._base(call)
        has_bwd = self.reader.has_backward(call)
        if phase == "forward" or fwd is None:
            fwd = CallResult(phase="forward", status="error", error=error, **base)
            bwd = CallResult(phase="backward", status="skipped", notes=["forward did not finish"],
                             **base) if has_bwd else None
        else:
            bwd = CallResult(phase="backward", status="error", error=error, **base)
        self._record(fwd, bwd)

    def replay(self) -> IsolatedRun:
        pending: list[int] | None = None
        while pending is None or pending:
            pending = self._one_child(pending)
        return self.run

    def _one_child(self, call_ids: list[int] | None) -> list[int]:
        """Run one child over ``call_ids``; return the calls still to replay after it ends."""
        read_fd, write_fd = os.pipe()
        import torch

        job = pickle.dumps((write_fd, torch.get_num_threads(), self.trace, self.candidates, self.options, call_ids,
                            sorted(self.lost)))
        proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                pass_fds=(write_fd,))
        os.close(write_fd)
        parent = Connection(read_fd, writable=False)
        assert proc.stdin is not None
        try:
            proc.stdin.write(job)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        todo: list[int] | None = None
        current: tuple[int, str, CallResult | None] | None = None
        deadline = time.monotonic() + _SETUP_SECONDS + self.timeout
        try:
            while True:
                msg = self._receive(parent, proc, deadline)
                if msg is None or msg[0] == "timeout":
                    failure = (f"timed out after {self.timeout:g} s (the candidate process was "
                               "killed)") if msg else _death(proc.returncode)
                    return self._after_failure(todo, call_ids, current, failure)
                kind = msg[0]
                if kind == "usage":
                    raise tracefmt.UsageError(msg[1])
                if kind == "setup":
                    raise tracefmt.UsageError(
                        f"the candidate process could not load the candidates: "
                        f"{msg[1].strip().splitlines()[-1]}")
                if kind == "calls":
                    todo = list(msg[1])
                    if call_ids is None:
                        self.run.selected = list(todo)
                elif kind == "phase":
                    fwd = CallResult.from_dict(msg[3]) if msg[3] else None
                    current = (msg[1], msg[2], fwd)
                    if msg[2] == "forward":
                        deadline = time.monotonic() + self.timeout
                elif kind == "done":
                    _, call, fwd_d, bwd_d, outputs = msg
                    self._record(CallResult.from_dict(fwd_d),
                                 CallResult.from_dict(bwd_d) if bwd_d else None)
                    for phase, named in outputs.items():
                        self.run.outputs[(call, phase)] = named
                    current = None
                elif kind == "end":
                    return []
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            parent.close()

    def _receive(self, conn: Connection, proc: subprocess.Popen, deadline: float
                 ) -> tuple | None:
        """The next message; ``("timeout",)`` past the deadline; None when the child died."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return ("timeout",)
            if conn.poll(min(left, 0.5)):
                try:
                    return conn.recv()
                except (EOFError, OSError):
                    _wait(proc)
                    return None
            if proc.poll() is not None and not conn.poll(0):
                return None

    def _after_failure(self, todo: list[int] | None, call_ids: list[int] | None,
                       current: tuple[int, str, CallResult | None] | None,
                       failure: str) -> list[int]:
        if todo is None:
            if call_ids is None:
                raise tracefmt.UsageError(f"{failure} while loading the trace and candidates")
            for call in call_ids:  # a restarted child that cannot start: give up on the rest
                self._blame(call, "forward", None, f"not replayed: {failure} while starting")
            return []
        if current is None:
            rest = [c for c in todo if c not in self.run.forward]
            if not rest:
                return []
            current = (rest[0], "forward", None)
        call, phase, fwd = current
        self._blame(call, phase, fwd, f"{failure} during this call's {phase}; "
                    "the replay went on in a new process")
        ran = [c for c in todo if c in self.run.forward]
        self.lost.update(self._key(c) for c in ran)
        return [c for c in todo if c not in self.run.forward]

    def _key(self, call: int) -> tuple[str, int]:
        rec = self.reader.call(call, backward=False)
        return rec.module, rec.step


def replay_isolated(trace: str, candidates: str, *, options: ReplayOptions,
                    on_progress: Callable[[int, int, CallResult], None] | None = None
                    ) -> tuple[list[CallResult], IsolatedRun]:
    """Replay in child processes; results in report order (forward, then backward order)."""
    sup = _Supervisor(trace, candidates, options, on_progress)
    try:
        run = sup.replay()
        order = _in_order(run.selected, run.forward)
        bwd = [run.backward[c] for c in sup.reader.backward_order() if c in run.backward]
        return [*order, *bwd], run
    finally:
        sup.close()


def _in_order(selected: Iterable[int], results: dict[int, CallResult]) -> list[CallResult]:
    return [results[c] for c in selected if c in results]


def _child_entry() -> None:
    """``python -m replayer._isolate``: read the pickled job from stdin, run it."""
    fd, *job = pickle.loads(sys.stdin.buffer.read())
    with Connection(fd, readable=False) as conn:
        _child_main(conn, *job)


if __name__ == "__main__":
    _child_entry()
