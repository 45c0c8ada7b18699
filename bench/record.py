"""Recording overhead: the bench model's training step with and without each recorder.

    python bench/record.py [--device cpu|cuda] [--size small|medium|gpu] [--steps N] [--out DIR]

Every variant runs in a fresh child process (1 warm-up step, then the median of N timed
steps); the parent prints them side by side. "e2e/step" adds the time to finish the
output (close, drain the writer, fsync) spread over the timed steps, so a recorder that
only defers its writes gets no credit for it: that is the figure the ratios use.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
from common import fmt_bytes, fmt_s, fmt_x

HERE = Path(__file__).resolve()

CORE = ["plain", "hooks", "full", "stats", "raw", "naive"]
TOOLS = ["msprobe-tensor", "msprobe-stats", "torchlens", "hf-debugger-tensors", "hf-debugger-repr"]
LABELS = {
    "plain": "(a) plain step",
    "hooks": "(a') bare module hooks, no recording",
    "full": "(b) tensortrace full capture",
    "stats": "(c) tensortrace stats mode",
    "raw": "(d) plain + raw write of (b)'s bytes",
    "msprobe-tensor": "(e) msprobe L0 tensor dump",
    "msprobe-stats": "(e) msprobe L0 statistics",
    "torchlens": "(e) torchlens, all layers + grads",
    "hf-debugger-tensors": "(e) transformers debugger, tensors",
    "hf-debugger-repr": "(e) transformers debugger, repr",
}
INSTALL = {"msprobe": "mindstudio-probe", "torchlens": "torchlens", "transformers": "transformers"}


# --------------------------------------------------------------------------------------------
# child side


class Child:
    """One variant in one process: the model, the batch, timing and device bookkeeping."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import model as bench_model
        import torch

        if spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))
        self.torch = torch
        self.m = bench_model
        self.spec = spec
        self.device = torch.device(spec["device"])
        self.cfg = bench_model.SIZES[spec["size"]]
        self.model = bench_model.build(self.cfg, self.device)
        self.batch = bench_model.make_batch(self.cfg, self.device)
        self.out = Path(spec["out"])
        self.warmup, self.steps = int(spec["warmup"]), int(spec["steps"])
        self.load0 = os.getloadavg()[0]
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def loop(self, step: Callable[[int], Any], before: Callable[[int], None] | None = None
             ) -> list[float]:
        return common.timed_loop(step, warmup=self.warmup, steps=self.steps, sync=self.sync,
                                 before=before)

    def train(self, _: int = 0) -> float:
        return self.m.train_step(self.model, self.batch)

    def result(self, times: list[float], *, finish: float = 0.0, finish_cpu: float = 0.0,
               nbytes: int | None = None,
               steps_written: int | None = None, **extra: Any) -> dict[str, Any]:
        n = len(times)
        cpu = getattr(times, "cpu", [])
        out = {
            "step_s": common.median(times), "steps_s": list(times), "finish_s": finish,
            "e2e_s": (sum(times) + finish) / n if n else float("nan"),
            "cpu_s": (sum(cpu) + finish_cpu) / n if n and cpu else None,
            "peak_rss": common.peak_rss_bytes(),
            "bytes_per_step": None if nbytes is None else nbytes / (steps_written or n),
            **extra,
        }
        out["load"] = [self.load0, os.getloadavg()[0]]
        if self.device.type == "cuda":
            out["gpu_peak"] = self.torch.cuda.max_memory_allocated(self.device)
        return out


def _plain(c: Child) -> dict[str, Any]:
    return c.result(c.loop(c.train))


def _hooks(c: Child) -> dict[str, Any]:
    """The floor of any recorder that hooks every module: a pre-hook, a hook and a gradient
    hook per call, none doing anything."""
    def grad_hook(g: Any) -> None:
        return None

    def fwd_hook(mod: Any, args: tuple, out: Any) -> None:
        for t in _flat(out, []):
            if t.requires_grad:
                t.register_hook(grad_hook)

    for mod in c.model.modules():
        mod.register_forward_pre_hook(lambda mod, args: None)
        mod.register_forward_hook(fwd_hook)
    return c.result(c.loop(c.train), note="floor of any per-module hook recorder")


def _tensortrace(c: Child, mode: str) -> dict[str, Any]:
    import recorder

    path = c.out / f"trace-{mode}.h5"
    with recorder.record(c.model, path, mode=mode) as rec:
        def step(_: int) -> None:
            rec.note_loss(c.train())
            rec.step()

        def drain_warmup(i: int) -> None:  # the warm-up's writes must not spill into timed steps
            if i == c.warmup:
                rec.flush()
                common.fsync_path(path)

        times = c.loop(step, before=drain_warmup)
        t0, c0 = time.perf_counter(), time.process_time()
        rec.close()
        common.fsync_path(path)
        finish, finish_cpu = time.perf_counter() - t0, time.process_time() - c0
        stats = rec.stats
    return c.result(times, finish=finish, finish_cpu=finish_cpu, nbytes=common.tree_bytes(path),
                    steps_written=c.warmup + c.steps, heap_bytes=stats["bytes_written"],
                    calls_per_step=stats["calls"] / (c.warmup + c.steps),
                    tensors=stats["tensors"], deduplicated=stats["deduplicated"],
                    bytes_referenced=stats["bytes_referenced"])


def _raw(c: Child) -> dict[str, Any]:
    import numpy as np

    nbytes = int(c.spec["raw_bytes"])
    buf = np.full(nbytes, 7, dtype=np.uint8)
    path = c.out / "raw.bin"
    writes: list[float] = []

    def before(_: int) -> None:
        path.unlink(missing_ok=True)

    def step(_: int) -> None:
        c.train()
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            buf.tofile(f)
            f.flush()
            os.fsync(f.fileno())
        writes.append(time.perf_counter() - t0)

    times = c.loop(step, before)
    path.unlink(missing_ok=True)
    w = common.median(writes[c.warmup:])
    return c.result(times, nbytes=nbytes, steps_written=1, write_s=w,
                    write_gbps=nbytes / w / 1e9 if w else None)


def _flat(obj: Any, out: list[Any]) -> list[Any]:
    import torch

    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (tuple, list)):
        for x in obj:
            _flat(x, out)
    elif isinstance(obj, dict):
        for x in obj.values():
            _flat(x, out)
    return out


def _naive(c: Child) -> dict[str, Any]:
    """Sum of nbytes of every module call's tensor inputs, outputs, grad outputs, grad inputs."""
    total = {"fwd": 0, "bwd": 0, "calls": 0}

    def add_grad(g: Any) -> None:
        if g is not None:
            total["bwd"] += g.numel() * g.element_size()

    def hook(mod: Any, args: tuple, kwargs: dict, output: Any) -> None:
        total["calls"] += 1
        ins, outs = _flat((args, kwargs), []), _flat(output, [])
        for t in (*ins, *outs):
            total["fwd"] += t.numel() * t.element_size()
            if t.requires_grad:
                t.register_hook(add_grad)

    c.train()
    handles = [mod.register_forward_hook(hook, with_kwargs=True) for mod in c.model.modules()]
    c.train()
    c.sync()
    for h in handles:
        h.remove()
    return {"naive_bytes": total["fwd"] + total["bwd"], "naive_fwd": total["fwd"],
            "naive_bwd": total["bwd"], "module_calls": total["calls"],
            "peak_rss": common.peak_rss_bytes()}


def _msprobe(c: Child, task: str) -> dict[str, Any]:
    from msprobe.pytorch import PrecisionDebugger

    dump = c.out / f"msprobe-{task}"
    cfg = {"task": task, "dump_path": str(dump), "rank": [], "step": [], "level": "L0",
           "async_dump": False, task: {"scope": [], "list": [], "data_mode": ["all"]}}
    cfg_path = c.out / f"msprobe-{task}.json"
    cfg_path.write_text(json.dumps(cfg))
    dbg = PrecisionDebugger(config_path=str(cfg_path))

    def step(_: int) -> None:
        dbg.start(model=c.model)
        c.train()
        dbg.stop()
        dbg.step()

    def drain_warmup(i: int) -> None:  # as for tensortrace: the warm-up's bytes are not timed
        if i == c.warmup and dump.exists():
            common.fsync_path(dump)

    times = c.loop(step, before=drain_warmup)
    t0, c0 = time.perf_counter(), time.process_time()
    common.fsync_path(dump)
    finish, finish_cpu = time.perf_counter() - t0, time.process_time() - c0
    return c.result(times, finish=finish, finish_cpu=finish_cpu, nbytes=common.tree_bytes(dump),
                    steps_written=c.warmup + c.steps, files=common.tree_files(dump),
                    note=f"{common.tree_files(dump) / (c.warmup + c.steps):.0f} files/step"
                    + (" (.pt per tensor)" if task == "tensor" else "") + ", fsync'd after")


def _torchlens(c: Child) -> dict[str, Any]:
    import torch.nn.functional as F
    import torchlens as tl
    from torchlens.stats._aggregate import _metric_value_from_log

    held = {"bytes": 0}
    src, tgt_in, tgt_out = c.batch

    def step(_: int) -> None:
        c.model.zero_grad(set_to_none=True)
        log = tl.trace(c.model, input_args=[src, tgt_in],
                       capture=tl.options.CaptureOptions(layers_to_save="all", save_grads="all"))
        out = _metric_value_from_log(log, "output")
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), tgt_out.reshape(-1))
        log.log_backward(loss)
        held["bytes"] = int(log.saved_activation_memory) + int(log.saved_gradient_memory)
        log.cleanup()

    times = c.loop(step)
    return c.result(times, nbytes=held["bytes"], steps_written=1,
                    note="op-level, held in memory (not written)")


def _hf_debugger(c: Child, use_repr: bool) -> dict[str, Any]:
    from transformers.model_debugging_utils import model_addition_debugger_context

    def forward(_: int) -> None:
        with c.torch.no_grad():
            c.m.loss_of(c.model, c.batch)

    plain_fwd = common.median(c.loop(forward))
    root = c.out / f"hf-debugger-{'repr' if use_repr else 'tensors'}"

    def step(i: int) -> None:
        with model_addition_debugger_context(c.model, debug_path=str(root / f"step{i}"),
                                             do_prune_layers=False, use_repr=use_repr):
            c.m.loss_of(c.model, c.batch)

    times = c.loop(step)
    t0, c0 = time.perf_counter(), time.process_time()
    common.fsync_path(root)
    finish, finish_cpu = time.perf_counter() - t0, time.process_time() - c0
    return c.result(times, finish=finish, finish_cpu=finish_cpu, nbytes=common.tree_bytes(root),
                    steps_written=c.warmup + c.steps, plain_ref_s=plain_fwd,
                    note="forward only (no_grad); ratio vs plain forward")


def child_main(spec: dict[str, Any]) -> None:
    variant = spec["variant"]
    tool = {"msprobe-tensor": "msprobe", "msprobe-stats": "msprobe", "torchlens": "torchlens",
            "hf-debugger-tensors": "transformers", "hf-debugger-repr": "transformers"}.get(variant)
    if tool is not None:
        try:
            __import__(tool)
        except Exception as exc:  # noqa: BLE001 - any import failure means "skip this tool"
            common.report({"skipped": f"{tool} not importable ({type(exc).__name__}); "
                                      f"pip install {INSTALL[tool]}"})
            return
    c = Child(spec)
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "plain": lambda: _plain(c),
        "hooks": lambda: _hooks(c),
        "full": lambda: _tensortrace(c, "full"),
        "stats": lambda: _tensortrace(c, "stats"),
        "raw": lambda: _raw(c),
        "naive": lambda: _naive(c),
        "msprobe-tensor": lambda: _msprobe(c, "tensor"),
        "msprobe-stats": lambda: _msprobe(c, "statistics"),
        "torchlens": lambda: _torchlens(c),
        "hf-debugger-tensors": lambda: _hf_debugger(c, False),
        "hf-debugger-repr": lambda: _hf_debugger(c, True),
    }
    common.report(runners[variant]())


# --------------------------------------------------------------------------------------------
# parent side


def _clean(out: Path) -> None:
    for p in out.iterdir():
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the variants one after another, each in a fresh child; print and return results."""
    import model as bench_model

    device = args.device
    size = args.size or ("gpu" if device.startswith("cuda") else "small")
    cfg = bench_model.SIZES[size]
    out = Path(args.out or Path(tempfile.gettempdir()) / "tensortrace-bench" / "record")
    out.mkdir(parents=True, exist_ok=True)
    variants = list(CORE)
    if not args.no_tools:
        variants += TOOLS
    if args.only:
        keep = set(args.only.split(","))
        variants = [v for v in variants if v in keep or v in ("plain", "naive")
                    or (v == "full" and "raw" in keep)]
    threads = getattr(args, "threads", None)
    print(f"record benchmark: size={size} device={device} steps={args.steps} "
          f"(+{args.warmup} warm-up), torch threads={threads or 'default'}, out={out}")
    print(f"model: {bench_model.describe(cfg)}", flush=True)
    rounds: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for r_i in range(args.rounds):
        if args.rounds > 1:
            print(f" round {r_i + 1}/{args.rounds}", flush=True)
        for v in variants:
            if v in ("naive", *TOOLS) and r_i:
                continue  # their figures are not the ones the targets compare
            spec = {"variant": v, "size": size, "device": device, "steps": args.steps,
                    "warmup": args.warmup, "out": str(out),
                    "threads": getattr(args, "threads", None)}
            if v == "raw":
                full = rounds["full"][0] if rounds.get("full") else {}
                if not full.get("bytes_per_step"):
                    rounds[v].append({"skipped": "needs (b)'s byte count"})
                    continue
                spec["raw_bytes"] = int(full["bytes_per_step"])
            print(f"  running {v} ...", end="", flush=True)
            t0 = time.perf_counter()
            r = common.run_child(HERE, spec, timeout=args.timeout, python=args.python)
            rounds[v].append(r)
            _clean(out)
            status = r.get("error") or r.get("skipped") or (
                f"{fmt_bytes(r['naive_bytes'])}/step" if v == "naive"
                else f"{fmt_s(r.get('e2e_s'))} s/step, {fmt_s(r.get('cpu_s'))} CPU s/step")
            print(f" {time.perf_counter() - t0:.0f} s: {status}", flush=True)
    results = {v: _median_round(rs) for v, rs in rounds.items() if rs}
    print()
    print(render(results, device=device))
    return {"size": size, "device": device, "config": bench_model.describe(cfg),
            "results": results}


def _median_round(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """The round whose end-to-end time is the median (so its figures belong together)."""
    timed = sorted((r for r in rs if isinstance(r.get("e2e_s"), (int, float))),
                   key=lambda r: r["e2e_s"])
    if not timed:
        return rs[0]
    pick = dict(timed[(len(timed) - 1) // 2])
    pick["rounds_e2e_s"] = [r["e2e_s"] for r in rs if "e2e_s" in r]
    return pick


def render(results: dict[str, dict[str, Any]], *, device: str) -> str:
    plain = results.get("plain", {}).get("e2e_s")
    raw = results.get("raw", {}).get("e2e_s")
    naive = results.get("naive", {}).get("naive_bytes")
    gpu = device.startswith("cuda")
    plain_cpu = results.get("plain", {}).get("cpu_s")
    headers = ["variant", "step s", "e2e s/step", "x plain", "x (plain+raw)", "CPU s/step",
               "CPU x plain", "bytes/step", "peak RSS"] + (["GPU peak"] if gpu else []) + [
               "load", "notes"]
    rows = []
    for v, r in results.items():
        if v == "naive":
            continue
        label = LABELS.get(v, v)
        if "error" in r or "skipped" in r:
            rows.append([label] + ["-"] * 8 + (["-"] if gpu else [])
                        + ["-", str(r.get("error") or r.get("skipped"))[:90]])
            continue
        ref = r.get("plain_ref_s") or plain
        e2e = r["e2e_s"]
        note = r.get("note", "")
        if v == "raw" and r.get("write_gbps"):
            note = f"write+fsync {fmt_s(r['write_s'])} s = {r['write_gbps']:.2f} GB/s"
        if v == "full" and naive:
            note = (f"stored/naive {r['bytes_per_step'] / naive:.2f}; "
                    f"{r['calls_per_step']:.0f} calls/step; finish {fmt_s(r['finish_s'])} s")
        if v == "stats":
            note = f"finish {fmt_s(r['finish_s'])} s"
        rows.append([
            label, fmt_s(r["step_s"]), fmt_s(e2e), fmt_x(e2e / ref if ref else None),
            fmt_x(e2e / raw if raw and "plain_ref_s" not in r else None),
            fmt_s(r.get("cpu_s")),
            fmt_x(r["cpu_s"] / plain_cpu if r.get("cpu_s") and plain_cpu
                  and "plain_ref_s" not in r else None),
            fmt_bytes(r.get("bytes_per_step")), fmt_bytes(r.get("peak_rss")),
        ] + ([fmt_bytes(r.get("gpu_peak"))] if gpu else []) + [
            "-".join(f"{x:.1f}" for x in r.get("load", [])), note])
    text = [common.table(headers, rows, title="Recording: one training step (fwd + loss + bwd)"),
            "step s: median timed step; e2e: (timed steps + close/drain + fsync) / steps, what "
            "the ratios use; CPU s: process CPU time per step (all threads), steadier than wall "
            "time on a shared machine; load: 1-min load average at child start-end"]
    if naive:
        n = results["naive"]
        text.append(f"naive sum of every module call's I/O (inputs+outputs {fmt_bytes(n['naive_fwd'])}"
                    f" + grad outputs+grad inputs {fmt_bytes(n['naive_bwd'])}): "
                    f"{fmt_bytes(naive)} per step over {n['module_calls']} module calls")
    text.append("")
    text.append(targets(results, gpu=gpu))
    return "\n".join(text)


def targets(results: dict[str, dict[str, Any]], *, gpu: bool) -> str:
    def get(v: str, k: str) -> float | None:
        x = results.get(v, {}).get(k)
        return float(x) if isinstance(x, (int, float)) else None

    plain, raw = get("plain", "e2e_s"), get("raw", "e2e_s")
    full, stats = get("full", "e2e_s"), get("stats", "e2e_s")
    stored, naive = get("full", "bytes_per_step"), get("naive", "naive_bytes")
    ms_t, ms_b = get("msprobe-tensor", "e2e_s"), get("msprobe-tensor", "bytes_per_step")
    rows = []

    def add(name: str, value: float | None, target: float | None, text: str = "") -> None:
        shown = fmt_x(value) if value is not None else "-"
        if target is None:
            rows.append([name, shown, text, "MET" if value is not None and value < 1 else
                         ("n/a" if value is None else "MISSED")])
        else:
            rows.append([name, shown, f"<= {target:.2f}x", common.verdict(value, target)])

    cpu = {v: get(v, "cpu_s") for v in ("plain", "full", "stats", "raw")}
    add("full capture / (plain + raw write)", full / raw if full and raw else None, 1.25)
    add("  same, in CPU seconds", cpu["full"] / cpu["raw"] if cpu["full"] and cpu["raw"]
        else None, 1.25)
    add("stored bytes / naive module I/O", stored / naive if stored and naive else None, 0.5)
    add("stats mode / plain", stats / plain if stats and plain else None, 1.10 if gpu else 1.30)
    add("  same, in CPU seconds", cpu["stats"] / cpu["plain"] if cpu["stats"] and cpu["plain"]
        else None, 1.10 if gpu else 1.30)
    hooks = get("hooks", "e2e_s")
    rows.append(["(context) bare module hooks / plain",
                 fmt_x(hooks / plain) if hooks and plain else "-",
                 "floor of hook-based recording", "-"])
    add("full capture time / msprobe L0 tensor", full / ms_t if full and ms_t else None, None,
        "< 1x (faster)")
    add("full capture bytes / msprobe L0 tensor", stored / ms_b if stored and ms_b else None, None,
        "< 1x (smaller)")
    ms_s = get("msprobe-stats", "e2e_s")
    add("(context) stats mode / msprobe L0 statistics", stats / ms_s if stats and ms_s else None,
        None, "< 1x (faster)")
    return common.table(["target", "measured", "goal", "verdict"], rows, title="Targets")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--size", choices=["tiny", "skeleton", "small", "medium", "gpu"], default=None,
                   help="model size (default: small on cpu, gpu on cuda)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps (default 1)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat (a)-(d) this many times, interleaved, and keep each one's median "
                        "round (default 1; use 3 on a noisy machine)")
    p.add_argument("--out", default=None, help="scratch directory on the disk to measure")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads in every child (default: torch's choice); 1 "
                        "keeps OpenMP barriers from spinning on an oversubscribed machine")
    p.add_argument("--only", default=None, help="comma-separated variants (plain and naive always run)")
    p.add_argument("--no-tools", action="store_true", help="skip msprobe/torchlens/transformers")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per variant (default 1800)")
    p.add_argument("--python", default=None, help="interpreter for the children (default: this one)")
    p.add_argument("--json", default=None, help="also write the results here")
    return common.child_or_run(p.parse_args(argv), child_main, run)


if __name__ == "__main__":
    sys.exit(main())
