"""The one reader thread: it owns the open trace (and results) and runs every file job.

h5py handles must not be shared between threads, and a read of a large tensor must never
freeze the UI, so the app only *submits* jobs (plain functions of :class:`Sources`) and
gets each answer back through ``deliver``, called from this thread — the app turns it
into a Textual message, which is thread-safe. Jobs of one kind supersede each other:
when the user holds a key, only the newest view request is actually read and rendered.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracefmt import open_results, open_trace_or_rank

from ._view import Sources

__all__ = ["Delivery", "TraceLoader", "THREAD_NAME"]

THREAD_NAME = "tensortrace-reader"


@dataclass(frozen=True)
class Delivery:
    """A finished job: its kind and generation, and a value or the error it raised."""

    kind: str
    generation: int
    value: Any = None
    error: BaseException | None = None
    stale: bool = False


@dataclass(frozen=True)
class _Job:
    kind: str
    generation: int
    run: Callable[[Sources], Any]


class TraceLoader:
    """Opens the files on its own thread, then runs submitted jobs one at a time."""

    def __init__(
        self, trace: str | Path, results: str | Path | None, deliver: Callable[[Delivery], None]
    ) -> None:
        self.trace_path = Path(trace)
        self.results_path = None if results is None else Path(results)
        self._deliver = deliver
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._latest: dict[str, int] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, kind: str, run: Callable[[Sources], Any]) -> int:
        """Queue a job; an older job of the same kind still waiting will be skipped."""
        with self._lock:
            generation = self._latest.get(kind, 0) + 1
            self._latest[kind] = generation
        self._jobs.put(_Job(kind, generation, run))
        return generation

    def is_latest(self, kind: str, generation: int) -> bool:
        with self._lock:
            return self._latest.get(kind, 0) == generation

    def stop(self, timeout: float = 0.5) -> None:
        """Ask the thread to close the files and end; do not wait long for a slow read."""
        self._jobs.put(None)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _open(self) -> Sources | None:
        try:
            trace = open_trace_or_rank(self.trace_path)  # a trace set: rank 0
        except Exception as exc:
            self._deliver(Delivery("open", 0, error=exc))
            return None
        try:
            results = None if self.results_path is None else open_results(self.results_path)
        except Exception as exc:
            trace.close()
            self._deliver(Delivery("open", 0, error=exc))
            return None
        self._deliver(Delivery("open", 0, value=(trace.path.name, trace.n_calls)))
        return Sources(trace, results)

    def _run(self) -> None:
        sources = self._open()
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                if sources is None or not self.is_latest(job.kind, job.generation):
                    self._deliver(Delivery(job.kind, job.generation, stale=True))
                    continue
                try:
                    value = job.run(sources)
                except Exception as exc:
                    self._deliver(Delivery(job.kind, job.generation, error=exc))
                else:
                    self._deliver(Delivery(job.kind, job.generation, value=value))
        finally:
            if sources is not None:
                sources.trace.close()
                if sources.results is not None:
                    sources.results.close()
