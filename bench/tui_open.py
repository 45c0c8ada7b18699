"""Opening a big trace: time to the browser's first screen, and memory flat with trace size.

    python bench/tui_open.py [--out DIR] [--calls 5000] [--sizes 0.5,4]

Writes synthetic traces (numpy only, through ``tracefmt.TraceWriter``) once into DIR,
reused on later runs, then measures each in a fresh child: ``open_trace``, the call list,
the first call's record and its tensors' summaries (what the first screen shows), peak
RSS; and, when ``tui`` has its Textual app, the time until ``app.run_test()`` has the
first screen ready.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
from common import fmt_bytes, fmt_s

HERE = Path(__file__).resolve()
BLOCKS = 100  # blocks per step; each block call has LEAVES leaf calls under it
LEAVES = ("norm", "q_proj", "softmax", "out_proj")
D = 256


def trace_path(out: Path, calls: int, gb: float) -> Path:
    return out / f"synthetic-{calls}calls-{gb:g}GB.h5"


def generate(path: Path, *, calls: int, gb: float) -> dict[str, Any]:
    """A trace shaped like a recording: steps of block calls, each with leaf calls inside.

    Every leaf call has an input (the previous call's output, so shared), an output, and a
    backward with output and input gradients: three new payloads per leaf call, sized so
    the file holds about ``gb`` gigabytes. Payloads are drawn from a few random arrays whose
    summaries are computed once, which keeps generation disk-bound.
    """
    import numpy as np

    import tracefmt

    per_tensor = gb * 1e9 / (calls * 3 * len(LEAVES) / (1 + len(LEAVES)))
    rows = max(1, round(per_tensor / (8 * D * 4)))
    rng = np.random.default_rng(0)
    pool = [rng.standard_normal((8, rows, D), dtype=np.float32) * s for s in (0.5, 1.0, 2.0, 4.0)]
    sums = [tracefmt.compute_summary(a) for a in pool]
    modules = [tracefmt.ModuleInfo(0, "", "synthetic.Model")]
    for b in range(BLOCKS):
        modules.append(tracefmt.ModuleInfo(len(modules), f"blocks.{b}", "synthetic.Block"))
        for leaf in LEAVES:
            params = ("weight",) if leaf != "softmax" else ()
            modules.append(tracefmt.ModuleInfo(len(modules), f"blocks.{b}.{leaf}",
                                               f"torch.nn.{leaf.title()}", None, params))
    steps = max(1, calls // (BLOCKS * (1 + len(LEAVES))))
    t0 = time.perf_counter()
    k = 0
    with tracefmt.TraceWriter(path, producer="tensortrace bench (synthetic)") as w:
        w.write_run(tracefmt.RunInfo(tuple(modules), {"device": "synthetic"}, {"mode": "full"}))

        def tensor() -> int:
            nonlocal k
            k += 1
            i = k % len(pool)
            return w.add_tensor(pool[i], summary=sums[i], requires_grad=True)

        weight = rng.standard_normal((D, D), dtype=np.float32)
        rng_state = np.zeros(5056, dtype=np.uint8)
        call = 0
        params = {f"{m.path}.weight": w.add_tensor(weight) for m in modules if m.params}
        for step in range(steps):
            w.add_event(tracefmt.EventKind.STEP, {"step": step, "params": params, "buffers": {}},
                        step=step)
            rng_id = w.add_tensor(rng_state, summary=None)
            x = tensor()
            for b in range(BLOCKS):
                block_mod = 1 + b * (1 + len(LEAVES))
                block_call, block_in = call, x
                call += 1
                backwards = []
                for j in range(len(LEAVES)):
                    out = tensor()
                    _call_event(w, call, step, modules[block_mod + 1 + j], j, block_call, x, out,
                                rng_id)
                    backwards.append((call, block_mod + 1 + j))
                    call += 1
                    x = out
                _call_event(w, block_call, step, modules[block_mod], 0, None, block_in, x, rng_id)
                for order, (c, mod) in enumerate(reversed(backwards)):
                    w.add_event(tracefmt.EventKind.BACKWARD, {
                        "call": c, "order": order,
                        "grad_outputs": {"$": "tensor", "id": tensor()},
                        "grad_args": {"$": "tuple", "items": [{"$": "tensor", "id": tensor()}]},
                        "grad_kwargs": {"$": "dict", "items": []},
                    }, step=step, call=c, module=mod)
            w.flush()
    return {"write_s": time.perf_counter() - t0, "bytes": path.stat().st_size, "calls": call}


def _call_event(w: Any, call: int, step: int, mod: Any, index: int, parent: int | None,
                x: int, out: int, rng_id: int) -> None:
    import tracefmt

    body = {
        "call": call, "step": step, "module": mod.path, "type": mod.type, "index": index,
        "parent": parent, "depth": 1 if parent is None else 2, "training": True,
        "grad_enabled": True, "inference_mode": False, "autocast": {}, "rng": {"cpu": rng_id},
        "args": {"$": "tuple", "items": [{"$": "tensor", "id": x}]},
        "kwargs": {"$": "dict", "items": []}, "outputs": {"$": "tensor", "id": out},
        "buffers_before": {}, "buffers_after": {}, "replayable": True, "notes": [],
    }
    w.add_event(tracefmt.EventKind.CALL, body, step=step, call=call, module=mod.index)


# --------------------------------------------------------------------------------------------
# children


def _child_open(spec: dict[str, Any]) -> dict[str, Any]:
    """What the first screen needs, read through the public reader API."""
    import tracefmt

    t0 = time.perf_counter()
    reader = tracefmt.open_trace(spec["trace"])
    t_open = time.perf_counter() - t0
    t1 = time.perf_counter()
    modules = reader.modules
    listing = [(c, modules[reader.call_module_index(c)].path) for c in reader.call_ids]
    t_list = time.perf_counter() - t1
    t2 = time.perf_counter()
    first = reader.call(listing[0][0])
    ids = {**first.tensors(), **first.grad_tensors()}
    infos = [reader.tensor(tid) for tid in ids.values()]
    t_first = time.perf_counter() - t2
    first_screen = time.perf_counter() - t0
    rss_first = common.peak_rss_bytes()
    t3 = time.perf_counter()
    for c, _ in listing:
        reader.call(c)
    t_all = time.perf_counter() - t3
    reader.close()
    return {"open_s": t_open, "list_s": t_list, "first_call_s": t_first,
            "first_screen_s": first_screen, "rss_first_screen": rss_first,
            "all_records_s": t_all, "peak_rss": common.peak_rss_bytes(), "calls": len(listing),
            "summaries": sum(1 for i in infos if i.summary is not None)}


def _find_app() -> tuple[Any, str]:
    """The Textual App subclass in ``tui._app``, if someone has written it yet."""
    try:
        mod = importlib.import_module("tui._app")
    except ImportError as exc:
        return None, f"no tui app yet ({exc})"
    from textual.app import App

    apps = [obj for _, obj in inspect.getmembers(mod, inspect.isclass)
            if issubclass(obj, App) and obj is not App and obj.__module__ == mod.__name__]
    if not apps:
        return None, "tui._app defines no textual App"
    return apps[0], apps[0].__qualname__


def _child_app(spec: dict[str, Any]) -> dict[str, Any]:
    """Time until the Textual app, run headless, has mounted its first screen and settled."""
    try:
        import textual  # noqa: F401
    except ImportError:
        return {"skipped": "textual not installed"}
    app_cls, what = _find_app()
    if app_cls is None:
        return {"skipped": what}
    t0 = time.perf_counter()
    try:
        app = app_cls(spec["trace"])
    except TypeError:
        app = app_cls(path=spec["trace"])

    async def go() -> tuple[float | None, float]:
        first = None
        async with app.run_test(size=(160, 48)) as pilot:
            deadline = time.perf_counter() + 120
            # asyncio.sleep, not pilot.pause: pause also waits for the app to go idle, which
            # it does only after the first call's detail and the alerts have loaded too
            while getattr(app, "index", None) is None and time.perf_counter() < deadline:
                await asyncio.sleep(0.002)
            first = time.perf_counter() - t0  # the call list is filled; painted next frame
            while getattr(app, "busy", False) and time.perf_counter() < deadline:
                await pilot.pause(0.005)
            await app.workers.wait_for_complete()
            await pilot.pause()
            return first, time.perf_counter() - t0

    first, ready = asyncio.run(go())
    return {"app": what, "first_s": first if first is not None else ready, "ready_s": ready,
            "peak_rss": common.peak_rss_bytes()}


def child_main(spec: dict[str, Any]) -> None:
    runner = {"open": _child_open, "app": _child_app}[spec["role"]]
    try:
        common.report(runner(spec))
    except Exception as exc:  # noqa: BLE001 - reported in the table, not a crash of the bench
        common.report({"error": f"{type(exc).__name__}: {exc}"})


# --------------------------------------------------------------------------------------------
# parent


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out or Path(tempfile.gettempdir()) / "tensortrace-bench" / "tui")
    out.mkdir(parents=True, exist_ok=True)
    sizes = [float(s) for s in args.sizes.split(",")]
    print(f"tui-open benchmark: {args.calls} calls, traces of {sizes} GB in {out}", flush=True)
    res: dict[str, Any] = {}
    for gb in sizes:
        path = trace_path(out, args.calls, gb)
        if not path.exists() or args.regen:
            print(f"  writing {path.name} ...", end="", flush=True)
            path.unlink(missing_ok=True)
            g = generate(path, calls=args.calls, gb=gb)
            print(f" {fmt_bytes(g['bytes'])} in {g['write_s']:.1f} s", flush=True)
        row: dict[str, Any] = {"bytes": path.stat().st_size}
        for role in ("open", "app"):
            if role == "app" and args.no_app:
                continue
            print(f"  {role} {path.name} ...", end="", flush=True)
            row[role] = common.run_child(HERE, {"role": role, "trace": str(path)},
                                         timeout=args.timeout, python=args.python)
            print(" done", flush=True)
        res[f"{gb:g}"] = row
    print()
    print(render(res))
    return res


def render(res: dict[str, Any]) -> str:
    headers = ["trace", "calls", "open s", "call list s", "first call s", "first screen s",
               "RSS at 1st screen", "all records s", "app call list s", "app settled s",
               "app peak RSS"]
    rows = []
    for row in res.values():
        o, a = row.get("open", {}), row.get("app", {})
        if "error" in o:
            rows.append([fmt_bytes(row["bytes"]), o["error"][:60]] + ["-"] * 9)
            continue
        app_s = fmt_s(a.get("ready_s")) if "ready_s" in a else "-"
        first_s = fmt_s(a.get("first_s")) if "first_s" in a else "-"
        rows.append([fmt_bytes(row["bytes"]), str(o["calls"]), fmt_s(o["open_s"]),
                     fmt_s(o["list_s"]), fmt_s(o["first_call_s"]), fmt_s(o["first_screen_s"]),
                     fmt_bytes(o["rss_first_screen"]), fmt_s(o["all_records_s"]), first_s, app_s,
                     fmt_bytes(a.get("peak_rss"))])
    lines = [common.table(headers, rows, title="Opening a trace (target: first screen in ~1 s, "
                                              "memory flat with trace size)")]
    notes = {str(r.get("app", {}).get("skipped") or r.get("app", {}).get("error") or "")
             for r in res.values()} - {""}
    lines += [f"app: {n}" for n in sorted(notes)]
    firsts = [r["open"].get("first_screen_s") for r in res.values() if "first_screen_s" in r.get("open", {})]
    rss = [r["open"]["rss_first_screen"] for r in res.values() if "rss_first_screen" in r.get("open", {})]
    if firsts:
        lines.append(f"first screen (reader): worst {fmt_s(max(firsts))} s -> "
                     f"{common.verdict(max(firsts), 1.0)} (<= 1 s)")
    app_firsts = [r["app"]["first_s"] for r in res.values() if "first_s" in r.get("app", {})]
    if app_firsts:
        lines.append(f"first screen (Textual app, call list shown): worst "
                     f"{fmt_s(max(app_firsts))} s -> {common.verdict(max(app_firsts), 1.2)} "
                     "(about 1 s: <= 1.2 s); alerts arrive after it")
    if len(rss) > 1:
        lines.append(f"RSS growth smallest->largest trace: {rss[-1] / rss[0]:.2f}x -> "
                     f"{common.verdict(rss[-1] / rss[0], 1.2)} (<= 1.2x)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="where the synthetic traces are written (kept)")
    p.add_argument("--calls", type=int, default=5000)
    p.add_argument("--sizes", default="0.5,4", help="trace sizes in GB (default 0.5,4)")
    p.add_argument("--regen", action="store_true", help="rewrite the traces even if present")
    p.add_argument("--no-app", action="store_true", help="skip the Textual app measurement")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--python", default=None)
    p.add_argument("--json", default=None)
    return common.child_or_run(p.parse_args(argv), child_main, run)


if __name__ == "__main__":
    sys.exit(main())
