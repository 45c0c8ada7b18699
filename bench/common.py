"""Helpers shared by the benchmarks: fresh child processes, timing, sizes, tables.

Every measured variant runs in its own child process so that allocator caches, page cache
pressure and peak RSS of one variant never leak into another; the parent only collects
the JSON each child prints and lays the figures side by side.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULT_PREFIX = "RESULT "
REPO = Path(__file__).resolve().parent.parent

# The GPU machine gets a bare copy of the tree (no pip install): import the packages from it.
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))


def run_child(script: Path, spec: dict[str, Any], *, timeout: float,
              python: str | None = None) -> dict[str, Any]:
    """Run ``script --child SPEC`` in a fresh interpreter and return the dict it reports.

    A child that fails or times out comes back as ``{"error": ...}`` so one broken variant
    never hides the others' figures.
    """
    cmd = [python or sys.executable, str(script), "--child", json.dumps(spec)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - start
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            out = json.loads(line[len(RESULT_PREFIX):])
            out.setdefault("child_wall_s", wall)
            return out
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}


def child_or_run(args: Any, child_main: Callable[[dict[str, Any]], None],
                 run: Callable[[Any], dict[str, Any]]) -> int:
    """A benchmark script's entry: one variant when spawned with ``--child SPEC``, else the
    whole run in the parent, its results also written to ``--json`` when given."""
    if args.child:
        child_main(json.loads(args.child))
        return 0
    res = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


def report(result: dict[str, Any]) -> None:
    """Child side: hand the result to the parent (the last RESULT line wins)."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def peak_rss_bytes() -> int:
    """This process's peak resident set size.

    VmHWM, not ru_maxrss: Linux folds the spawning parent's high-water mark into the child's
    ru_maxrss at exec, so a child of a parent that imported torch could never report less.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Timings(list):
    """Wall seconds of each timed step, with the process CPU seconds of each in ``cpu``.

    CPU seconds (all threads of the process) are the steadier figure on a shared machine:
    other tenants stretch wall time but not the work this process does.
    """

    def __init__(self) -> None:
        super().__init__()
        self.cpu: list[float] = []


def timed_loop(step: Callable[[int], Any], *, warmup: int, steps: int,
               sync: Callable[[], None] = lambda: None,
               before: Callable[[int], None] | None = None) -> Timings:
    """Seconds of each timed step (the first ``warmup`` run but are not kept)."""
    times = Timings()
    for i in range(warmup + steps):
        if before is not None:
            before(i)
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        step(i)
        sync()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if i >= warmup:
            times.append(dt)
            times.cpu.append(dc)
    return times


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def fsync_path(path: Path) -> None:
    """Make a file, or every file under a directory, durable (what the raw baseline pays)."""
    paths = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def tree_bytes(path: Path) -> int:
    """Bytes of a file, or of all files under a directory."""
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tree_files(path: Path) -> int:
    if not path.exists():
        return 0
    return 1 if path.is_file() else sum(1 for p in path.rglob("*") if p.is_file())


def fmt_bytes(n: float | None) -> str:
    if n is None or n != n:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def fmt_s(x: float | None) -> str:
    if x is None or x != x:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def fmt_x(x: float | None) -> str:
    if x is None or x != x:
        return "-"
    return f"{x:.2f}x"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, title: str = "") -> str:
    """A plain-text table (no dependencies, so the GPU machine without textual/rich prints it)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    out = [title] if title else []
    out.append("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    out.append(line)
    for r in rows:
        out.append("  ".join(c.rjust(w) if i else c.ljust(w)
                             for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(out)


def verdict(value: float | None, target: float) -> str:
    if value is None or value != value:
        return "n/a"
    return "MET" if value <= target else "MISSED"
