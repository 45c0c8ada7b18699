"""All benchmarks in one command, tables at the end.

    python bench/run_all.py            # CPU defaults
    python bench/run_all.py --gpu      # on CUDA: the issue's GPU model, replay on the device

Not part of the test run: these are timings of one machine at one moment, each variant in
its own fresh process and compared side by side within this one run. The GPU path needs
only torch, numpy, h5py and msgpack: no textual (the app measurement is skipped), no
network, and competitor tools that are not installed are skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import common  # noqa: F401 - puts the repository on sys.path for the bare GPU checkout
import record
import replay
import tui_open


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="run on CUDA with the gpu-size model")
    p.add_argument("--size", choices=["tiny", "small", "medium", "gpu"], default=None,
                   help="model size for record and replay (default: small on CPU, gpu on CUDA)")
    p.add_argument("--replay-size", choices=["tiny", "small", "medium", "gpu"], default=None,
                   help="model size for replay (default: small on CPU; medium on CUDA, the gpu "
                        "model's layers at batch 4, since replay compares on the host)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per record variant")
    p.add_argument("--rounds", type=int, default=1, help="record: interleaved repeats of (a)-(d)")
    p.add_argument("--threads", type=int, default=None, help="record: torch intra-op threads")
    p.add_argument("--out", default=None, help="scratch directory (default: $TMPDIR/tensortrace-bench)")
    p.add_argument("--skip", default="", help="comma-separated: record,replay,tui")
    p.add_argument("--no-tools", action="store_true", help="skip msprobe/torchlens/transformers")
    p.add_argument("--tui-sizes", default=None, help="trace sizes in GB for tui_open (default 0.5,4)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per child process")
    p.add_argument("--json", default=None, help="write every figure here as JSON")
    args = p.parse_args(argv)
    device = "cuda" if args.gpu else "cpu"
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            print("--gpu asked for, but torch sees no CUDA device")
            return 2
    out = Path(args.out or Path(tempfile.gettempdir()) / "tensortrace-bench")
    skip = set(filter(None, args.skip.split(",")))
    print(f"tensortrace benchmarks on {device} ({_machine(device)}), out={out}\n", flush=True)
    results: dict[str, Any] = {"device": device}
    tables: list[str] = []
    started = time.perf_counter()
    if "record" not in skip:
        ns = SimpleNamespace(device=device, size=args.size, steps=args.steps, warmup=1,
                             rounds=args.rounds, threads=args.threads,
                             out=str(out / "record"), only=None, no_tools=args.no_tools,
                             timeout=args.timeout, python=None)
        results["record"] = record.run(ns)
        tables.append(record.render(results["record"]["results"], device=device))
        print()
    if "replay" not in skip:
        replay_size = args.replay_size or args.size or ("medium" if args.gpu else None)
        ns = SimpleNamespace(device=device, size=replay_size, out=str(out / "replay"), keep=False,
                             timeout=args.timeout, python=None)
        results["replay"] = replay.run(ns)
        tables.append(replay.render(results["replay"]["results"], gpu=args.gpu))
        print()
    if "tui" not in skip:
        sizes = args.tui_sizes or ("0.5,2" if args.gpu else "0.5,4")
        ns = SimpleNamespace(out=str(out / "tui"), calls=5000, sizes=sizes, regen=False,
                             no_app=False, timeout=args.timeout, python=None)
        results["tui"] = tui_open.run(ns)
        tables.append(tui_open.render(results["tui"]))
        print()
    print("=" * 100)
    print(f"SUMMARY ({device}, {time.perf_counter() - started:.0f} s in all)")
    print("=" * 100)
    print("\n\n".join(tables))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


def _machine(device: str) -> str:
    import os

    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__} with {torch.get_num_threads()} threads")


if __name__ == "__main__":
    sys.exit(main())
