"""``tensortrace show``: the TUI's renderers printed once, for CI logs and pipes.

Colours follow :class:`RenderSettings` (ANSI on a terminal, plain glyphs when piped or
with NO_COLOR). Tensors are read through the same budgeted view code as the app, so a
multi-GB tensor prints its first batch elements instead of exhausting memory.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from tracefmt import ResultsReader, TraceReader, UsageError

from ._env import RenderSettings
from ._table import comparison_line, debug_table, load_call
from ._view import Source, Sources, ViewRequest, max_batches, render_view
from ._viewport import Viewport

__all__ = ["show_call"]

_HEAT_HEIGHT = 24
_HIST_HEIGHT = 12


def _print_lines(console: Console, lines: list) -> None:
    for line in lines:
        text = Text()
        for seg in line:
            text.append(seg.text, seg.style)
        console.print(text, no_wrap=True, crop=True, overflow="crop")


def show_call(
    reader: TraceReader,
    spec: str,
    *,
    console: Console,
    settings: RenderSettings,
    tensor: str | None = None,
    grad: bool = False,
    hist: bool = False,
    heatmap: bool = False,
    results: ResultsReader | None = None,
) -> None:
    """Print a call's header, debug table, comparison lines and its tensor's renderings.

    ``spec`` is a call index, a module path (its first call) or ``path#N``. Without
    ``hist`` and ``heatmap`` both are printed. Raises UsageError for an unknown tensor.
    """
    call = reader.resolve_call(spec)
    detail = load_call(reader, call)
    rec = detail.record
    width = console.width
    header = f"call {call} · {rec.label} · {rec.type} · step {rec.step}"
    console.print(Text(header, style="bold"))
    entries: dict[str, dict] = {}
    if results is not None:
        for entry in results.calls():
            if entry.get("call") == call and entry.get("phase") in ("forward", "backward"):
                entries[entry["phase"]] = entry

    def verdict(phase: str, name: str) -> dict | None:
        for t in (entries.get(phase) or {}).get("tensors") or []:
            if t.get("name") == name:
                return t
        return None

    phase = "backward" if grad else "forward"
    names = [r.name for r in detail.rows if (r.grad if grad else r.data) is not None]
    if tensor is None:
        outputs = [n for n in names if n.startswith("outputs")]
        tensor = (outputs or names or [None])[0]
    console.print(
        debug_table(
            detail.rows,
            selected=tensor,
            grad=grad,
            results=verdict if results is not None else None,
        )
    )
    if results is not None:
        for p in ("forward", "backward"):
            console.print(comparison_line(p, entries.get(p), tensor=tensor if p == phase else None))
    if tensor is None or tensor not in names:
        what = "gradient" if grad else "tensor"
        known = ", ".join(names) or "none"
        raise UsageError(
            f"call {call} has no {what} {tensor!r} (it has: {known})", path=reader.path
        )
    row = detail.row(tensor)
    assert row is not None
    info = row.grad if grad else row.data
    assert info is not None
    both = not hist and not heatmap
    viewport = Viewport.for_shape(info.shape, max_batches=max_batches(info))
    sources = Sources(reader, results)
    sources_list: list[Source] = ["ref"]
    if results is not None and results.candidate(call, phase, tensor) is not None:
        sources_list.append("abs")
    for n, source in enumerate(sources_list):
        request = ViewRequest(
            call=call,
            name=tensor,
            grad=grad,
            source=source,
            window=viewport.window(),
            batch_range=viewport.batch_range() if viewport.partial else None,
            heat_size=(width, _HEAT_HEIGHT) if (heatmap or both) else (0, 0),
            hist_size=(width, _HIST_HEIGHT) if (hist or both) and n == 0 else (0, 0),
            settings=settings,
        )
        view = render_view(sources, request)
        if view.hist:
            console.print()
            _print_lines(console, view.hist)
        if view.heat:
            console.print()
            _print_lines(console, view.heat)
