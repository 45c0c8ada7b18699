"""Replay throughput of ``replayer.replay_trace`` and its overhead per call.

    python bench/replay.py [--device cpu|cuda] [--size small|medium|gpu] [--out DIR]

Fresh child processes: one records a one-step trace of the bench model; one replays it
with a candidates file mapping every leaf class to itself (the reference classes, so every
call should pass, bit for bit); one replays it with every class scaled 2 ULP off (passes,
but through the full float64 comparison, as a real kernel's results do); one runs the same leaf modules directly on the same recorded
inputs and output gradients (forward + backward, inputs loaded beforehand). The difference
per call is what the replay engine adds beyond the candidate's own compute.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import common
from common import fmt_bytes, fmt_s

HERE = Path(__file__).resolve()


def _setup(spec: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    import model as bench_model
    import torch

    device = torch.device(spec["device"])
    cfg = bench_model.SIZES[spec["size"]]
    return torch, bench_model, cfg, device


def _child_record(spec: dict[str, Any]) -> dict[str, Any]:
    import recorder

    torch, bm, cfg, device = _setup(spec)
    model = bm.build(cfg, device)
    batch = bm.make_batch(cfg, device)
    path = Path(spec["trace"])
    t0 = time.perf_counter()
    with recorder.record(model, path) as rec:
        rec.note_loss(bm.train_step(model, batch))
        rec.step()
    cands = Path(spec["candidates"])
    lines = ["\"\"\"Every leaf class of the bench model mapped to itself.\"\"\"", "",
             "import importlib", "", "CANDIDATES = {}"]
    for cls in bm.leaf_classes(model):
        name = f"{cls.__module__}.{cls.__qualname__}"
        lines.append(f"CANDIDATES[{name!r}] = getattr(importlib.import_module({cls.__module__!r}),"
                     f" {cls.__qualname__!r})")
    cands.write_text("\n".join(lines) + "\n")
    near = ["\"\"\"Every leaf class wrapped to scale its float output by 1 + 2**-22: about two ULP off,",
            "so each comparison passes but takes the full float64 path, as a real kernel's does.\"\"\"",
            "", "import importlib", "", "import torch", "", "CANDIDATES = {}", "", "",
            "def _near(cls):",
            "    class Near(cls):",
            "        def forward(self, *args, **kwargs):",
            "            out = super().forward(*args, **kwargs)",
            "            return out * (1 + 2**-22) if torch.is_tensor(out) and out.is_floating_point() "
            "else out",
            "    return Near", ""]
    for cls in bm.leaf_classes(model):
        name = f"{cls.__module__}.{cls.__qualname__}"
        near.append(f"CANDIDATES[{name!r}] = _near(getattr(importlib.import_module({cls.__module__!r}),"
                    f" {cls.__qualname__!r}))")
    Path(spec["candidates_near"]).write_text("\n".join(near) + "\n")
    return {"record_s": time.perf_counter() - t0, "trace_bytes": common.tree_bytes(path),
            "peak_rss": common.peak_rss_bytes()}


def _counting_reader(path: str) -> tuple[Any, dict[str, int]]:
    """A reader whose ``read`` and ``read_into`` count their bytes (the replay's tensor traffic)."""
    import tracefmt

    reader = tracefmt.open_trace(path)
    counter = {"bytes": 0, "reads": 0}
    inner = reader.read

    def read(tid: int, **kw: Any) -> Any:
        arr = inner(tid, **kw)
        counter["bytes"] += int(arr.nbytes)
        counter["reads"] += 1
        return arr

    inner_into = reader.read_into

    def read_into(tid: int, out: Any) -> Any:
        arr = inner_into(tid, out)
        counter["bytes"] += int(arr.nbytes)
        counter["reads"] += 1
        return arr

    reader.read = read  # type: ignore[method-assign]
    reader.read_into = read_into  # type: ignore[method-assign]
    return reader, counter


def _child_replay(spec: dict[str, Any]) -> dict[str, Any]:
    import replayer

    torch, _, _, device = _setup(spec)
    reader, counter = _counting_reader(spec["trace"])
    options = replayer.ReplayOptions(device=str(device))
    t0 = time.perf_counter()
    cands = spec["candidates_near"] if spec["role"] == "replay-near" else spec["candidates"]
    report = replayer.replay_trace(reader, replayer.load_candidates(cands), options=options)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    reader.close()
    statuses = Counter(f"{r.phase}:{r.status}" for r in report.results)
    fwd = sum(1 for r in report.results if r.phase == "forward" and r.status != "skipped")
    out = {"replay_s": wall, "calls": fwd, "bytes_read": counter["bytes"],
           "reads": counter["reads"], "statuses": dict(statuses),
           "peak_rss": common.peak_rss_bytes()}
    if device.type == "cuda":
        out["gpu_peak"] = torch.cuda.max_memory_allocated(device)
    return out


def _child_direct(spec: dict[str, Any]) -> dict[str, Any]:
    """The same leaf calls run on the live modules, inputs and output gradients preloaded."""
    import replayer
    from recorder import rebuild_torch, tensor_from_trace

    torch, bm, cfg, device = _setup(spec)
    model = bm.build(cfg, device)
    reader, _ = _counting_reader(spec["trace"])
    cands = replayer.load_candidates(spec["candidates"])
    jobs = []
    for call in reader.calls():
        if not call.replayable or cands.match(call.module, call.type) is None:
            continue
        args = rebuild_torch(call.args, reader, device=device)
        kwargs = rebuild_torch(call.kwargs, reader, device=device)
        grads = []
        if call.backward is not None:
            grads = [tensor_from_trace(reader, gid, device=device)
                     for _, gid in _leaves(call.backward.grad_outputs)]
        want = call.backward is not None and any(True for _ in _leaves(call.backward.grad_args))
        for t in _tensors(args):
            if want and (t.is_floating_point() or t.is_complex()):
                t.requires_grad_(True)
        jobs.append((model.get_submodule(call.module), args, kwargs, grads))
    reader.close()

    def run_all() -> None:
        for mod, args, kwargs, grads in jobs:
            for t in _tensors(args):
                t.grad = None
            out = mod(*args, **kwargs)
            outs = [t for t in _tensors(out) if t.requires_grad]
            if outs and grads:
                torch.autograd.backward(outs[:len(grads)], grads[:len(outs)])
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run_all()  # warm-up: first-call costs belong to neither side
    t0 = time.perf_counter()
    run_all()
    wall = time.perf_counter() - t0
    return {"direct_s": wall, "calls": len(jobs), "peak_rss": common.peak_rss_bytes()}


def _leaves(node: Any) -> list[tuple[str, int]]:
    """(name, tensor id) of every tensor leaf of a recorded tree."""
    import tracefmt

    return list(tracefmt.iter_tensor_leaves(node, "x"))


def _tensors(obj: Any) -> list[Any]:
    import torch

    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for x in obj for t in _tensors(x)]
    if isinstance(obj, dict):
        return [t for x in obj.values() for t in _tensors(x)]
    return []


def child_main(spec: dict[str, Any]) -> None:
    runner = {"record": _child_record, "replay": _child_replay, "replay-near": _child_replay,
              "direct": _child_direct}
    common.report(runner[spec["role"]](spec))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import model as bench_model

    size = args.size or ("gpu" if args.device.startswith("cuda") else "small")
    out = Path(args.out or Path(tempfile.gettempdir()) / "tensortrace-bench" / "replay")
    out.mkdir(parents=True, exist_ok=True)
    spec = {"size": size, "device": args.device, "trace": str(out / "replay-ref.h5"),
            "candidates": str(out / "bench_candidates.py"),
            "candidates_near": str(out / "bench_candidates_near.py")}
    print(f"replay benchmark: size={size} device={args.device}, out={out}")
    print(f"model: {bench_model.describe(bench_model.SIZES[size])}", flush=True)
    res: dict[str, dict[str, Any]] = {}
    for role in ("record", "replay", "replay-near", "direct"):
        print(f"  running {role} ...", end="", flush=True)
        t0 = time.perf_counter()
        res[role] = common.run_child(HERE, spec | {"role": role}, timeout=args.timeout,
                                     python=args.python)
        print(f" {time.perf_counter() - t0:.0f} s", flush=True)
        if "error" in res[role]:
            print(f"    {role} failed: {res[role]['error']}")
            break
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    print()
    print(render(res, gpu=args.device.startswith("cuda")))
    return {"size": size, "device": args.device, "results": res}


def render(res: dict[str, dict[str, Any]], *, gpu: bool) -> str:
    rec, rep, direct = res.get("record", {}), res.get("replay", {}), res.get("direct", {})
    if "replay_s" not in rep:
        return f"replay not measured: {rep.get('error') or rec.get('error')}"
    calls = rep["calls"]
    wall = rep["replay_s"]
    rows = [["trace", f"{fmt_bytes(rec.get('trace_bytes'))}, one step, recorded in "
             f"{fmt_s(rec.get('record_s'))} s"],
            ["calls replayed (fwd + bwd each)", str(calls)],
            ["verdicts", ", ".join(f"{k} {v}" for k, v in sorted(rep["statuses"].items()))],
            ["replay wall time", f"{fmt_s(wall)} s"],
            ["throughput", f"{calls / wall:.1f} calls/s, "
             f"{rep['bytes_read'] / wall / 1e9:.3f} GB/s of tensors read "
             f"({fmt_bytes(rep['bytes_read'])} in {rep['reads']} reads)"],
            ["peak RSS (replay)", fmt_bytes(rep.get("peak_rss"))]]
    if gpu:
        rows.append(["GPU peak (replay)", fmt_bytes(rep.get("gpu_peak"))])
    near = res.get("replay-near", {})
    if "replay_s" in near:
        rows += [["near-miss candidates (2 ULP off)",
                  f"{fmt_s(near['replay_s'])} s, {calls / near['replay_s']:.1f} calls/s; verdicts "
                  + ", ".join(f"{k} {v}" for k, v in sorted(near["statuses"].items()))]]
    if "direct_s" in direct:
        d = direct["direct_s"]
        rows += [["same modules run directly", f"{fmt_s(d)} s for {direct['calls']} calls "
                  f"({d / max(direct['calls'], 1) * 1e3:.2f} ms/call)"]]
        for label, r in (("bit-identical", rep), ("near-miss", near)):
            if d and "replay_s" in r:
                rows.append([f"replay overhead per call, {label}",
                             f"{(r['replay_s'] - d) / max(calls, 1) * 1e3:.1f} ms/call "
                             f"({r['replay_s'] / d:.1f}x the modules' own compute)"])
    else:
        rows.append(["same modules run directly", str(direct.get("error", "-"))])
    return common.table(["replay", "figure"], rows,
                        title="Replay: every leaf class -> itself (and -> itself, 2 ULP off)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", choices=["tiny", "small", "medium", "gpu"], default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--keep", action="store_true", help="keep the trace and candidates file")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--python", default=None)
    p.add_argument("--json", default=None)
    return common.child_or_run(p.parse_args(argv), child_main, run)


if __name__ == "__main__":
    sys.exit(main())
