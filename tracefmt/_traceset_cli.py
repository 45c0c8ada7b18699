"""``validate`` and ``info`` on a trace-set index: every rank file, and the set as a whole.

The single-trace handlers in ``_commands`` hand over here when their argument is an index,
so a set reads like one trace with per-rank detail. Exit statuses are theirs: 0 all valid,
1 any rank has problems or is incomplete, 2 the index itself is unreadable.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

from . import _commands
from ._errors import TraceError
from ._reader import open_trace
from ._traceset import TraceSet, open_traceset
from ._validate import ValidationReport, validate_trace

__all__ = ["SetValidation", "validate_traceset", "traceset_overview", "cmd_validate_set",
           "cmd_info_set"]


@dataclass(frozen=True)
class SetValidation:
    """Per-rank validation reports, rank files that could not be opened, and set-level problems."""

    traceset: TraceSet
    ranks: tuple[ValidationReport | None, ...]
    unreadable: dict[int, str]
    problems: tuple[str, ...]

    @property
    def status(self) -> str:
        """``valid``, ``incomplete`` (only END events missing) or ``invalid``."""
        if self.problems or self.unreadable or any(r and r.status == "invalid" for r in self.ranks):
            return "invalid"
        return "valid" if all(r and r.status == "valid" for r in self.ranks) else "incomplete"

    def to_dict(self) -> dict[str, Any]:
        ts = self.traceset
        ranks = []
        for rank, rep in enumerate(self.ranks):
            entry = {"rank": rank, "file": str(ts.rank_path(rank))}
            if rep is None:
                entry |= {"status": "unreadable", "error": self.unreadable[rank]}
            else:
                entry |= rep.to_dict()
            ranks.append(entry)
        return {
            "file": str(ts.path), "format": "tensortrace-traceset", "status": self.status,
            "format_version": "{}.{}".format(*ts.format_version), "world_size": ts.world_size,
            "backend": ts.backend, "layout": ts.kind,
            "calls": sum(r.calls for r in self.ranks if r is not None),
            "problems": list(self.problems), "ranks": ranks,
        }


def validate_traceset(path: str, *, deep: bool = False) -> SetValidation:
    """Validate every rank file, and that each says it is the rank the index names it as."""
    ts = open_traceset(path)
    reports: list[ValidationReport | None] = []
    unreadable: dict[int, str] = {}
    problems: list[str] = []
    modules = None
    for rank in range(ts.world_size):
        try:
            reports.append(validate_trace(ts.rank_path(rank), deep=deep))
        except TraceError as exc:
            reports.append(None)
            unreadable[rank] = str(exc)
            continue
        try:
            with open_trace(ts.rank_path(rank)) as reader:
                info = reader.run.environment.get("distributed")
                paths = [m.path for m in reader.modules]
        except TraceError:
            continue
        if isinstance(info, dict) and (info.get("rank"), info.get("world_size")) != (
                rank, ts.world_size):
            problems.append(f"rank {rank}: its file was recorded as rank {info.get('rank')} of "
                            f"{info.get('world_size')}, not rank {rank} of {ts.world_size}")
        if ts.kind in ("ddp", "fsdp"):
            if modules is None:
                modules = paths
            elif paths != modules:
                problems.append(f"rank {rank}: its model's modules differ from rank 0's "
                                f"({len(paths)} vs {len(modules)} modules)")
    return SetValidation(ts, tuple(reports), unreadable, tuple(problems))


def cmd_validate_set(args: argparse.Namespace) -> int:
    result = validate_traceset(args.file, deep=args.deep)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0 if result.status == "valid" else 1
    ts = result.traceset
    name = _commands._printable(args.file)
    print(f"{name}: trace set of {ts.world_size} ranks ({_commands._printable(ts.backend)}, "
          f"{_commands._printable(ts.kind)}): {result.status}")
    for line in result.problems:
        print(f"{name}: {_commands._printable(line, limit=400)}")
    for rank, rep in enumerate(result.ranks):
        shown = str(ts.rank_path(rank))
        if rep is None:
            print(f"  rank {rank}: {_commands._printable(result.unreadable[rank], limit=400)}")
            continue
        for line in _commands.validation_lines(rep, shown_path=shown):
            print(f"  rank {rank}: {line}")
    return 0 if result.status == "valid" else 1


def traceset_overview(path: str) -> dict[str, Any]:
    """What ``tensortrace info --json`` prints for a set: per-rank overviews and their sums."""
    ts = open_traceset(path)
    ranks = []
    for rank in range(ts.world_size):
        with open_trace(ts.rank_path(rank)) as reader:
            ranks.append({"rank": rank} | _commands.trace_overview(reader))
    return {
        "file": str(ts.path), "format": "tensortrace-traceset",
        "format_version": "{}.{}".format(*ts.format_version), "world_size": ts.world_size,
        "backend": ts.backend, "created": ts.created, "producer": ts.producer,
        "layout": ts.layout, "complete": all(r["complete"] for r in ranks),
        "steps": max(r["steps"] for r in ranks), "calls": sum(r["calls"] for r in ranks),
        "events": sum(r["events"] for r in ranks), "tensors": sum(r["tensors"] for r in ranks),
        "bytes": sum(r["bytes"] for r in ranks), "ranks": ranks,
    }


def cmd_info_set(args: argparse.Namespace) -> int:
    overview = traceset_overview(args.file)
    if args.json:
        print(json.dumps(overview, default=str))
        return 0
    o, pr = overview, _commands._printable
    print(pr(args.file))
    print(f"  {'format':<12}trace set {o['format_version']}, written by {pr(o['producer']) or '?'} "
          f"on {pr(o['created']) or '?'}")
    kind = pr(str(o["layout"].get("kind")))
    print(f"  {'ranks':<12}{o['world_size']} ({pr(o['backend'])}, {kind})")
    print(f"  {'complete':<12}{'yes' if o['complete'] else 'no'}")
    print(f"  {'calls':<12}{o['calls']} over all ranks")
    for r in o["ranks"]:
        state = "" if r["complete"] else ", incomplete"
        print(f"  rank {r['rank']:<7}{pr(r['file'])}: {r['steps']} steps, {r['calls']} calls, "
              f"{r['tensors']} tensors, {r['bytes']} bytes{state}")
    return 0
