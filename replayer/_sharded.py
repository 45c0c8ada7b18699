"""Sharded replay under torchrun: the selected calls split over ranks, one report on rank 0.

``torchrun --nproc-per-node N $(which tensortrace) replay TRACE CANDIDATES`` runs this on
every rank. Calls are grouped by (module, step), because a module's parameter gradients are
compared once all its calls of the step have run, and the groups are dealt out greedily to
the rank with the fewest calls so far: deterministic, and every rank can compute the same
split on its own. Each rank replays its share on its own device (``cuda:LOCAL_RANK`` for
``--device cuda``), the ``CallResult`` dicts are gathered on rank 0, which puts them in the
single-process order (forward calls in forward order, backward calls in the order backward
ran) — so the report is the one ``replay`` writes in one process, timings aside. Only
pickled results travel, so the group is always gloo, whatever the device.
"""

from __future__ import annotations

import dataclasses
import sys
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

import tracefmt
from recorder._distributed import launched_world

from ._candidates import CandidateSet, load_candidates
from ._outputs import _numpy
from ._replay import ReplayOptions, _Replayer, replay_trace
from ._report import CallResult, ReplayReport

__all__ = ["is_sharded", "check_sharded_options", "shard_calls", "replay_sharded",
           "replay_maybe_sharded"]

Progress = Callable[[int, int, CallResult], None]


def is_sharded() -> bool:
    """Whether this process is one of several started by torchrun."""
    return launched_world() is not None


def check_sharded_options(*, isolate: bool, splice: bool) -> None:
    """Refuse what a sharded replay does not do, before any rank starts work."""
    if not is_sharded():
        return
    for flag, given in (("--isolate", isolate), ("--splice", splice)):
        if given:
            raise tracefmt.UsageError(f"{flag} does not run under torchrun; replay with one "
                                      "process, or shard without it")


def shard_calls(calls: list[tracefmt.CallRecord], world_size: int) -> list[list[int]]:
    """Call ids per rank: whole (module, step) groups, each to the least loaded rank so far."""
    groups: dict[tuple[str, int], list[int]] = {}
    for call in calls:
        groups.setdefault((call.module, call.step), []).append(call.call)
    shards: list[list[int]] = [[] for _ in range(world_size)]
    for ids in groups.values():
        target = min(range(world_size), key=lambda r: (len(shards[r]), r))
        shards[target].extend(ids)
    return [sorted(s) for s in shards]


def _rank_device(device: str, local_rank: int) -> str:
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        return f"cuda:{local_rank}"
    return str(dev)


def _replay_share(trace: str, candidates: CandidateSet | str, options: ReplayOptions,
                  rank: int, world: int, on_progress: Progress | None) -> dict[str, Any]:
    """This rank's results as plain dicts (and candidate tensors as numpy), ready to gather."""
    if isinstance(candidates, str):
        candidates = load_candidates(candidates)
    with tracefmt.open_trace(trace) as reader:
        rep = _Replayer(reader, candidates, options)
        share = shard_calls(rep.selected_calls(), world)[rank]
        calls = rep.prepare(share)
        forward: dict[int, dict[str, Any]] = {}
        backward: dict[int, dict[str, Any]] = {}
        for i, call in enumerate(calls):
            fwd, bwd = rep.run_call(call)
            forward[call.call] = fwd.to_dict()
            if bwd is not None:
                backward[call.call] = bwd.to_dict()
            if on_progress:
                on_progress(i + 1, len(calls), fwd)
        outputs = {key: {n: _numpy(t) for n, t in named.items()}
                   for key, named in rep.outputs.items()}
        return {"forward": forward, "backward": backward, "outputs": outputs,
                "selected": [c.call for c in rep._all_selected],
                "backward_order": reader.backward_order(), "path": str(reader.path),
                "source": candidates.source, "tolerances": rep.comparer.table.to_dict()}


def replay_sharded(trace: str, candidates: CandidateSet | str, *, options: ReplayOptions,
                   on_progress: Progress | None = None) -> ReplayReport | int:
    """This rank's share; rank 0 returns the merged report, other ranks the exit status.

    A failure on any rank (a bad trace, candidates that do not import) reaches every rank
    through the gather: rank 0 raises it as a UsageError, the others return status 2, so no
    rank waits forever for one that gave up.
    """
    world = launched_world()
    if world is None:
        raise tracefmt.UsageError("replay_sharded needs torchrun's WORLD_SIZE > 1")
    rank, local_rank, size = world
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="gloo")
    try:
        mine = dataclasses.replace(options, device=_rank_device(options.device, local_rank))
        try:
            if torch.device(mine.device).type == "cuda":
                if not torch.cuda.is_available():
                    raise tracefmt.UsageError("--device cuda asked for, but this torch sees no "
                                              "CUDA device")
                torch.cuda.set_device(torch.device(mine.device))
            payload: dict[str, Any] = _replay_share(trace, candidates, mine, rank, size,
                                                    on_progress if rank == 0 else None)
        except tracefmt.TraceError as exc:
            payload = {"error": str(exc), "rank": rank}
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            payload = {"error": f"{type(exc).__name__}: {exc}", "rank": rank}
        gathered: list[Any] | None = [None] * size if rank == 0 else None
        dist.gather_object(payload, gathered, dst=0)
        status: list[Any] = [None]
        report: ReplayReport | None = None
        if rank == 0:
            assert gathered is not None
            errors = _errors(gathered)
            if not errors:
                report = _merge(gathered, options)
            status[0] = 2 if errors else (0 if report is not None and report.ok else 1)
            dist.broadcast_object_list(status, src=0)
            if errors:
                raise tracefmt.UsageError("sharded replay failed: " + "; ".join(errors))
            assert report is not None
            return report
        dist.broadcast_object_list(status, src=0)
        return int(status[0])
    finally:
        if owns:
            dist.destroy_process_group()


def _errors(payloads: list[dict[str, Any]]) -> list[str]:
    """Each distinct failure once, with the ranks it happened on."""
    by_message: dict[str, list[int]] = {}
    for p in payloads:
        if "error" in p:
            by_message.setdefault(p["error"], []).append(p["rank"])
    return [f"{msg} (rank{'s' if len(r) > 1 else ''} {', '.join(map(str, r))})"
            for msg, r in by_message.items()]


def _merge(payloads: list[dict[str, Any]], options: ReplayOptions) -> ReplayReport:
    """One report from every rank's results, in the order a single process writes them."""
    forward: dict[int, CallResult] = {}
    backward: dict[int, CallResult] = {}
    outputs: dict[tuple[int, str], dict[str, Any]] = {}
    for p in payloads:
        forward.update({c: CallResult.from_dict(d) for c, d in p["forward"].items()})
        backward.update({c: CallResult.from_dict(d) for c, d in p["backward"].items()})
        outputs.update(p["outputs"])
    head = payloads[0]
    results = [forward[c] for c in head["selected"] if c in forward]
    results += [backward[c] for c in head["backward_order"] if c in backward]
    report = ReplayReport(head["path"], head["source"], str(torch.device(options.device)),
                          results, tolerances=head["tolerances"])
    report.outputs = outputs  # type: ignore[attr-defined]
    return report


def replay_maybe_sharded(trace: str, candidates: CandidateSet | str, *, options: ReplayOptions,
                         on_progress: Progress | None = None) -> ReplayReport | int:
    """``replay_trace`` in one process; under torchrun ``replay_sharded`` (an int on ranks > 0)."""
    if is_sharded():
        return replay_sharded(trace, candidates, options=options, on_progress=on_progress)
    return replay_trace(trace, candidates, options=options, on_progress=on_progress)
