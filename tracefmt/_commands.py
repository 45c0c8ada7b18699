"""The format's subcommands: ``validate``, ``info`` and ``repair``.

Handlers return exit statuses (0 fine, 1 the trace has problems) and raise TraceError for
files that cannot be read as traces at all, which the dispatcher prints as one line and
turns into status 2. Every string that comes from a file is escaped before it is printed.
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections import Counter
from typing import Any

import numpy as np

from ._encoding import ENCODING_FLAGS
from ._errors import TraceFormatError
from ._layout import FLAG_PAYLOAD, EventKind
from ._reader import TraceReader, open_trace
from ._repair import repair_trace
from ._traceset import is_traceset
from ._validate import ValidationReport, validate_trace

__all__ = ["register", "trace_overview", "SHOW_PROBLEMS"]

SHOW_PROBLEMS = 50
_TOP_MODULES = 5
_BLOCK = 1 << 16


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``validate``, ``info`` and ``repair`` to the ``tensortrace`` parser."""
    p = sub.add_parser("validate", help="check a trace file against the format spec",
                       description="Check a trace against spec/trace-format.md. Exit status: "
                                   "0 valid, 1 problems or incomplete, 2 not a readable trace.")
    p.add_argument("file", help="the trace (.h5)")
    p.add_argument("--deep", action="store_true",
                   help="also verify the CRC-32 of every tensor payload (reads all data)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("info", help="summarise a trace: steps, calls, modules, tensors, dtypes",
                       description="Summarise a trace without reading tensor data.")
    p.add_argument("file", help="the trace (.h5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("repair", help="salvage a killed or damaged recording into a valid trace",
                       description="Copy every intact event of a trace into a new, complete "
                                   "trace (default FILE.repaired.h5), dropping damaged ones.")
    p.add_argument("file", help="the trace (.h5)")
    p.add_argument("-o", "--output", metavar="OUT", help="where to write the repaired trace")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_repair)


# -- validate ------------------------------------------------------------------------------


def _cmd_validate(args: argparse.Namespace) -> int:
    if is_traceset(args.file):  # a trace-set index: every rank file (_traceset_cli)
        from ._traceset_cli import cmd_validate_set

        return cmd_validate_set(args)
    report = validate_trace(args.file, deep=args.deep)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        for line in validation_lines(report, shown_path=args.file):
            print(line)
    return 0 if report.status == "valid" else 1


def validation_lines(report: ValidationReport, *, shown_path: str) -> list[str]:
    """The text ``tensortrace validate`` prints for a report."""
    name = _printable(shown_path)
    if report.status == "valid":
        return [f"{name}: valid (format {report.format_version[0]}.{report.format_version[1]}, "
                f"{report.steps} steps, {report.calls} calls, {report.tensors} tensors, "
                f"{report.bytes} bytes)"]
    lines = [f"{name}: {_printable(p, limit=400)}" for p in report.problems[:SHOW_PROBLEMS]]
    more = report.problems_total - min(len(report.problems), SHOW_PROBLEMS)
    if more:
        lines.append(f"{name}: ... and {more} more problems")
    if not report.complete:
        lines.append(f"{name}: incomplete: {_stopped(report)}; "
                     f"run 'tensortrace repair {shlex.quote(shown_path)}'")
    return lines


def _stopped(report: ValidationReport) -> str:
    step = "before the first step" if report.last_step is None else f"after step {report.last_step}"
    call = "no calls" if report.last_call is None else f"call {report.last_call}"
    return f"recording stopped {step}, {call} ({report.events} events flushed)"


# -- info ----------------------------------------------------------------------------------


def _cmd_info(args: argparse.Namespace) -> int:
    if is_traceset(args.file):  # a trace-set index: every rank file (_traceset_cli)
        from ._traceset_cli import cmd_info_set

        return cmd_info_set(args)
    with open_trace(args.file) as reader:
        overview = trace_overview(reader)
    if args.json:
        print(json.dumps(overview))
        return 0
    o = overview
    top = ", ".join(f"{_printable(m['path'] or '<root>')} {m['calls']}" for m in o["top_modules"])
    dtypes = ", ".join(f"{_printable(k)} {v}" for k, v in o["dtypes"].items()) or "-"
    stopped = "" if o["complete"] else " (no END event: run 'tensortrace repair')"
    print(_printable(args.file))
    rows = [
        ("format", f"{o['format_version']}, written by {_printable(o['producer']) or '?'} "
                   f"on {_printable(o['created']) or '?'}"),
        ("complete", ("yes" if o["complete"] else "no") + stopped),
        ("mode", o["mode"]),
        ("compression", _printable(o["compression"])),
        ("steps", str(o["steps"])),
        ("calls", str(o["calls"])),
        ("modules", f"{o['modules']}" + (f" (most called: {top})" if top else "")),
        ("tensors", f"{o['tensors']} ({o['bytes']} bytes of payload)"),
        ("dtypes", dtypes),
    ]
    if o["encoded"]:  # format 1.1 payloads (spec 4.1)
        kinds = ", ".join(f"{v} {k}" for k, v in o["encoded"].items())
        rows.append(("encoded", f"{kinds} ({o['encoded_bytes']} bytes)"))
    for label, value in rows:
        print(f"  {label:<12}{value}")
    return 0


def trace_overview(reader: TraceReader) -> dict[str, Any]:
    """What ``tensortrace info --json`` prints; reads the event and tensor tables only."""
    rows = reader._event_rows
    kinds = rows["kind"]
    calls = rows[kinds == EventKind.CALL]
    steps = {int(s) for s in rows["step"][np.isin(kinds, (EventKind.STEP, EventKind.CALL))]}
    n_mod = len(reader.modules)
    mods = calls["module"][(calls["module"] >= 0) & (calls["module"] < n_mod)]
    per_module = np.bincount(mods.astype(np.int64), minlength=n_mod) if n_mod else np.zeros(0)
    order = np.argsort(-per_module, kind="stable")[:_TOP_MODULES]
    top = [{"path": reader.modules[i].path, "type": reader.modules[i].type,
            "calls": int(per_module[i])} for i in order if per_module[i]]
    dtypes: Counter[str] = Counter()
    encoded: Counter[str] = Counter()
    encoded_bytes = 0
    with_payload = 0
    for start in range(0, reader.n_tensors, _BLOCK):
        try:
            block = reader._tensors.fields(["dtype", "flags", "nbytes"])[start:start + _BLOCK]
        except (OSError, ValueError) as exc:
            raise TraceFormatError(f"/tensors rows from {start} are unreadable ({exc})",
                                   path=reader.path) from None
        names, counts = np.unique(block["dtype"], return_counts=True)
        for n, c in zip(names, counts):
            dtypes[n.decode("ascii", "replace")] += int(c)
        with_payload += int(np.count_nonzero(block["flags"] & FLAG_PAYLOAD))
        for flag, name in ENCODING_FLAGS.items():
            sel = (block["flags"] & flag) != 0
            encoded[name] += int(np.count_nonzero(sel))
            encoded_bytes += int(block["nbytes"][sel].sum())
    mode = reader.run.options.get("mode")
    if mode not in ("full", "stats"):
        mode = "full" if with_payload else ("stats" if reader.n_tensors else "unknown")
    return {
        "file": str(reader.path),
        "format_version": "{}.{}".format(*reader.format_version),
        "producer": reader.producer, "created": reader.created, "complete": reader.complete,
        "events": reader.event_count(), "steps": len(steps), "calls": len(calls),
        "modules": n_mod, "top_modules": top, "tensors": reader.n_tensors,
        "bytes": reader.bytes_stored, "dtypes": dict(sorted(dtypes.items())), "mode": mode,
        "compression": reader.compression,
        "encoded": {k: v for k, v in sorted(encoded.items()) if v}, "encoded_bytes": encoded_bytes,
    }


# -- repair --------------------------------------------------------------------------------


def _cmd_repair(args: argparse.Namespace) -> int:
    report = repair_trace(args.file, output=args.output)
    if args.json:
        print(json.dumps(report.to_dict()))
        return 0
    src, out = _printable(args.file), _printable(report.output)
    state = "complete" if report.was_complete else "incomplete"
    print(f"{src}: {state} trace repaired into {out}: kept {report.events_kept} of "
          f"{report.events_total} events ({report.calls} calls, {report.steps} steps, "
          f"{report.tensors_kept} of {report.tensors_total} tensors) and added an END event")
    if report.dropped:
        print(f"{src}: dropped {len(report.dropped)} events:")
        for line in report.dropped[:SHOW_PROBLEMS]:
            print(f"  {_printable(line, limit=400)}")
        if len(report.dropped) > SHOW_PROBLEMS:
            print(f"  ... and {len(report.dropped) - SHOW_PROBLEMS} more")
    return 0


def _printable(text: str, *, limit: int = 200) -> str:
    """Text from a file, safe for a terminal: control characters escaped, length bounded."""
    out = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))
    return out if len(out) <= limit else out[:limit - 3] + "..."
