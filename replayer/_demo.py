"""``tensortrace demo``: the whole workflow on the bundled example, CPU-only, in under a minute.

Record the example translation transformer; replay a correct candidate set (and the Triton
kernels under the interpreter when Triton is installed); replay the classic broken softmax
whose backward is right only for batch element 0 and show the report; train the reference
and the broken model side by side; write everything to DIR and say how to look at it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.console import Console
from rich.text import Text

import tracefmt

__all__ = ["run_demo", "examples_dir", "loss_plot"]

TRAIN_STEPS = 240


def examples_dir() -> Path:
    """The repository's ``examples/`` (the demo runs from a source checkout)."""
    here = Path(__file__).resolve().parent.parent / "examples"
    if not (here / "translation.py").is_file():
        raise tracefmt.UsageError(
            "the demo needs the repository's examples/ directory (run it from a source checkout)")
    return here


def loss_plot(series: dict[str, list[float]], *, width: int = 60, height: int = 10) -> Text:
    """A small terminal line chart of loss curves, one glyph and colour per series."""
    styles = [("●", "green"), ("×", "red"), ("+", "yellow")]
    values = [v for s in series.values() for v in s]
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    n = max(len(s) for s in series.values())
    grid: list[list[tuple[str, str]]] = [[(" ", "")] * width for _ in range(height)]
    for s, (mark, style) in zip(series.values(), styles, strict=False):
        for col in range(width):
            lo_i, hi_i = col * n // width, max(col * n // width + 1, (col + 1) * n // width)
            chunk = s[lo_i:hi_i]
            if not chunk:
                continue
            v = sum(chunk) / len(chunk)
            row = int(round((hi - v) / span * (height - 1)))
            grid[row][col] = (mark, style)
    out = Text()
    for r, line in enumerate(grid):
        label = f"{hi - r * span / (height - 1):6.2f} │" if r in (0, height - 1) else "       │"
        out.append(label, style="dim")
        for ch, style in line:
            out.append(ch, style=style)
        out.append("\n")
    out.append("       └" + "─" * width + f" {n} steps\n", style="dim")
    for (name, _), (mark, style) in zip(series.items(), styles, strict=False):
        out.append(f"        {mark} {name}", style=style)
    return out


def run_demo(out: Path, *, console: Console | None = None, train_steps: int = TRAIN_STEPS) -> int:
    """Run the demo into ``out``; returns 0 when it showed what it should."""
    import torch

    import recorder

    from ._candidates import load_candidates
    from ._console import print_report
    from ._outputs import write_report_files
    from ._replay import ReplayOptions, replay_trace
    from ._swap import swap_in_candidates

    console = console or Console()
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton
    torch.set_num_threads(1)  # a tiny model: more threads only add contention on small CPUs
    ex = examples_dir()
    out.mkdir(parents=True, exist_ok=True)
    trace = out / "ref.h5"
    t0 = time.perf_counter()

    console.rule("[bold]1. record the working model")
    with console.status("recording 2 training steps of examples/translation.py ..."):
        stats = recorder.record_recipe(str(ex / "translation.py"), trace, steps=2, seed=0)
    console.print(f"wrote {trace}: {stats['calls']} module calls, {stats['tensors']} tensors "
                  f"({stats['deduplicated']} stored once and referenced), "
                  f"{stats['bytes_written'] / 1e6:.1f} MB")

    console.rule("[bold]2. replay correct candidates")
    sets = [("hand-written LayerNorm, softmax, attention, linear", ex / "candidates" / "correct.py")]
    if _triton_usable():
        sets.append(("Triton LayerNorm and softmax kernels", ex / "candidates" / "triton_kernels.py"))
    else:
        console.print("[dim]Triton not installed: skipping the Triton candidates[/dim]")
    all_ok = True
    for label, path in sets:
        with console.status(f"replaying {label} ..."):
            rep = replay_trace(str(trace), str(path))
        c = rep.counts()
        mark = "[green]pass[/green]" if rep.ok else "[bold red]FAIL[/bold red]"
        console.print(f"{mark} {label}: {c['passed']} of {c['calls']} call results pass "
                      f"({path.relative_to(ex.parent)})")
        all_ok &= rep.ok

    console.rule("[bold]3. replay a broken port: softmax backward right only for batch element 0")
    broken_path = ex / "candidates" / "buggy" / "softmax_batch0_grad.py"
    with console.status("replaying the broken softmax ..."):
        broken = replay_trace(str(trace), str(broken_path), options=ReplayOptions(keep_outputs=True))
    print_report(broken, console=console)
    files = {"json": out / "broken-report.json", "junit": out / "broken-junit.xml",
             "results": out / "broken-results.h5"}
    write_report_files(broken, json_path=str(files["json"]), junit_path=str(files["junit"]),
                       results_path=str(files["results"]))
    first = broken.first_divergence("backward")
    if first is not None:
        worst = first.worst()
        console.print(Text.assemble(("→ first bad layer: ", "bold"),
                                    (f"{first.label} ({first.phase})", "bold red"),
                                    f": {worst.batch_note if worst else ''}"))

    console.rule(f"[bold]4. train {train_steps} steps: reference vs broken softmax spliced in")
    module = recorder.load_recipe(str(ex / "translation.py")).module
    cands = load_candidates(str(broken_path))
    with console.status("training both models ..."):
        ref_model = module.build_model()
        ref_losses = module.train(ref_model, train_steps)
        with recorder.capture_constructor_args():
            bad_model = module.build_model()
        swapped = swap_in_candidates(bad_model, cands)
        bad_losses = module.train(bad_model, train_steps)
    console.print(loss_plot({"reference": ref_losses, f"broken softmax ({len(swapped)} layers)": bad_losses}))
    tail = max(train_steps // 10, 1)
    ref_end, bad_end = (sum(x[-tail:]) / tail for x in (ref_losses, bad_losses))
    console.print(f"final loss (mean of last {tail} steps): reference {ref_end:.3f}, "
                  f"broken {bad_end:.3f}")

    console.rule("[bold]5. look at it")
    console.print(f"everything is in {out}/ ({time.perf_counter() - t0:.0f}s). Next:")
    console.print(f"  tensortrace tui {trace} --results {files['results']}   [dim]# press b: first backward divergence[/dim]")
    if first is not None:
        console.print(f"  tensortrace show {trace} '{first.label}' --grad --heatmap --results {files['results']}")
    console.print(f"  tensortrace check {trace}")
    console.print(f"  tensortrace replay {trace} {broken_path.relative_to(ex.parent)} --json report.json")
    return 0 if all_ok and first is not None and not broken.ok else 1


def _triton_usable() -> bool:
    import importlib.util

    import torch

    if importlib.util.find_spec("triton") is None:
        return False
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return True
