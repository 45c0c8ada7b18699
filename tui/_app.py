"""``tensortrace tui``: browse a trace (and replay results) over SSH.

The app never opens a file itself: one reader thread (:class:`TraceLoader`) owns the
handles, reads only the rows a view needs, renders the heatmap and histogram lines, and
posts them back as messages. The UI thread only keeps state and paints, so a slow disk or
a large tensor never freezes the keyboard.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

from textual.app import App, ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import ContentSwitcher, Footer, Static

from ._bars import call_bar, status_bar, title_bar
from ._check import Alert, check_trace
from ._env import RenderSettings
from ._index import Phase, TraceIndex, build_index
from ._keys import bindings
from ._loader import Delivery, TraceLoader
from ._screens import AlertsScreen, HelpScreen, MaskScreen, SearchScreen
from ._table import CallDetail, TensorRow, debug_table, load_call
from ._view import (
    Source,
    Sources,
    ViewData,
    ViewRequest,
    mask_candidates,
    max_batches,
    render_view,
)
from ._viewport import Viewport
from ._widgets import CallList, HeatmapPane, HistogramPane, LayerTree, LinesView

__all__ = ["TraceApp"]

_ERRORS: tuple[Source | None, ...] = (None, "abs", "rel", "tol")
_PANES = ("heatmap", "histogram", "both")
_BOTH_FROM_HEIGHT = 24


def _first_failing(entry: dict[str, Any] | None) -> str | None:
    for t in (entry or {}).get("tensors") or []:
        if isinstance(t, dict) and not t.get("passed", True):
            return str(t.get("name"))
    return None


class TraceApp(App[int]):
    """The trace browser. ``settings`` fixes the colour depth (default: from the environment)."""

    CSS_PATH = "app.tcss"
    TITLE = "tensortrace"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = bindings("app")

    class Loaded(Message):
        """A job of the reader thread finished (posted from that thread)."""

        def __init__(self, delivery: Delivery) -> None:
            super().__init__()
            self.delivery = delivery

    def __init__(
        self,
        trace: str | Path,
        results: str | Path | None = None,
        *,
        settings: RenderSettings | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings or RenderSettings.from_env(os.environ, is_terminal=True)
        self.loader = TraceLoader(trace, results, self._deliver)
        self.has_results = results is not None
        self.index: TraceIndex | None = None
        self.alerts: list[Alert] | None = None
        self.detail: CallDetail | None = None
        self.call: int | None = None
        self.tensor: str | None = None
        self.grad = False
        self.order: Phase = "forward"
        self.viewport: Viewport | None = None
        self.base_source: Source = "ref"
        self.error: Source | None = None
        self.reduction: str = "maxabs"
        self.mask: str | None = None
        self.panes = "heatmap"
        self.view: ViewData | None = None
        self.open_error: BaseException | None = None
        self.inflight = 1
        self._panes_auto = True
        self._want: dict[str, Any] = {}
        self._last_request: ViewRequest | None = None

    # -- layout ----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static("opening…", id="title")
        yield Static("", id="call")
        yield Static("", id="table")
        yield Static("", id="status")
        with Horizontal(id="body"):
            with ContentSwitcher(initial="calls", id="sidebar"):
                yield CallList(id="calls")
                yield LayerTree(id="tree")
            with Vertical(id="viz"):
                yield HeatmapPane(id="heat")
                yield HistogramPane(id="hist")
        yield Footer()

    def on_mount(self) -> None:
        self._apply_panes()
        self.query_one(CallList).focus()
        self.loader.start()

    def on_unmount(self) -> None:
        self.loader.stop()

    @property
    def busy(self) -> bool:
        """True while a job is queued, running, or delivered but not yet handled."""
        return self.inflight > 0

    # -- the reader thread -------------------------------------------------------------------

    def _deliver(self, delivery: Delivery) -> None:
        self.post_message(self.Loaded(delivery))

    def _submit(self, kind: str, job: Any) -> None:
        self.inflight += 1
        self.loader.submit(kind, job)
        self._refresh_title()

    def on_trace_app_loaded(self, message: Loaded) -> None:
        d = message.delivery
        self.inflight -= 1
        try:
            if d.stale or (d.kind != "open" and not self.loader.is_latest(d.kind, d.generation)):
                return
            if d.error is not None:
                self._failed(d)
                return
            handler = getattr(self, f"_got_{d.kind}")
            handler(d.value)
        finally:
            self._refresh_title()

    def _failed(self, d: Delivery) -> None:
        if d.kind == "open":
            self.open_error = d.error
            self.exit(2, return_code=2)
        elif d.kind == "view":
            self.query_one(HeatmapPane).set_lines([[]])
            self.notify(f"cannot draw: {d.error}", severity="error")
        else:
            self.notify(f"{d.kind}: {d.error}", severity="error")

    def _got_open(self, value: tuple[str, int]) -> None:
        self._submit("index", lambda s: build_index(s.trace, s.results))

    def _got_index(self, index: TraceIndex) -> None:
        self.index = index
        self.query_one(LayerTree).load(index)
        order = index.order(self.order)
        self.query_one(CallList).show(index, order)
        if order:
            self.select_call(order[0])
        self._submit("alerts", lambda s: check_trace(s.trace))

    def _got_alerts(self, alerts: list[Alert]) -> None:
        self.alerts = alerts

    def _got_call(self, detail: CallDetail) -> None:
        if detail.record.call != self.call:
            return
        self.detail = detail
        want, self._want = self._want, {}
        if want.get("grad") is not None:
            self.grad = bool(want["grad"])
        if self.grad and not any(r.grad for r in detail.rows):
            self.grad = False
        name = want.get("tensor")
        if not self._usable(name):
            name = self.tensor if self._usable(self.tensor) else self._default_tensor()
        if self.mask is not None and detail.row(self.mask) is None:
            self.mask = None
        self._set_tensor(name)

    def _got_view(self, view: ViewData) -> None:
        self.view = view
        self.query_one(HeatmapPane).set_lines(view.heat)
        self.query_one(HistogramPane).set_lines(view.hist)

    # -- state -----------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        return "backward" if self.grad else "forward"

    @property
    def source(self) -> Source:
        return self.error or self.base_source

    def _info(self, row: TensorRow | None) -> Any:
        return None if row is None else (row.grad if self.grad else row.data)

    def _usable(self, name: str | None) -> bool:
        return self.detail is not None and self._info(self.detail.row(name)) is not None

    def _names(self) -> list[str]:
        return (
            [r.name for r in self.detail.rows if self._info(r) is not None] if self.detail else []
        )

    def _default_tensor(self) -> str | None:
        names = self._names()
        if not names:
            return None
        if self.grad:
            return next((n for n in names if not n.startswith("outputs")), names[0])
        return next((n for n in names if n.startswith("outputs")), names[0])

    def select_call(
        self, call: int, *, grad: bool | None = None, tensor: str | None = None
    ) -> None:
        """Make ``call`` current: the header at once, its tensors from the reader thread."""
        self.call = call
        self._want = {"grad": grad, "tensor": tensor}
        self.query_one(CallList).select(call)
        self._refresh_call()
        self._submit("call", lambda s: load_call(s.trace, call))

    def _set_tensor(self, name: str | None) -> None:
        self.tensor = name
        info = self._info(self.detail.row(name)) if self.detail else None
        self.viewport = (
            None if info is None else Viewport.for_shape(info.shape, max_batches=max_batches(info))
        )
        self._refresh_call()
        self._refresh_table()
        self.request_view()

    def request_view(self) -> None:
        """Ask the reader thread for the lines of the current view (if anything changed)."""
        if self.call is None or self.tensor is None or self.viewport is None:
            self.query_one(HeatmapPane).set_lines([])
            self.query_one(HistogramPane).set_lines([])
            return
        vp = self.viewport
        heat, hist = self.query_one(HeatmapPane), self.query_one(HistogramPane)
        request = ViewRequest(
            call=self.call,
            name=self.tensor,
            grad=self.grad,
            source=self.source,
            window=vp.window(),
            batch_range=vp.batch_range() if vp.partial else None,
            mask=self.mask,
            reduction=self.reduction,  # type: ignore[arg-type]
            heat_size=(heat.size.width, heat.size.height) if heat.display else (0, 0),
            hist_size=(hist.size.width, hist.size.height) if hist.display else (0, 0),
            settings=self.settings,
        )
        self._refresh_status()
        if request == self._last_request:
            return
        self._last_request = request
        self._submit("view", partial(_render, request=request))

    # -- painting --------------------------------------------------------------------------

    def _refresh_title(self) -> None:
        text = title_bar(
            self.index,
            order=self.order,
            grad=self.grad,
            alerts=self.alerts,
            busy=self.busy,
            error=self.open_error,
        )
        self.query_one("#title", Static).update(text)

    def _refresh_call(self) -> None:
        if self.index is not None and self.call is not None:
            row = self.index.rows[self.call]
            bar = call_bar(row, with_results=bool(self.index.results))
            self.query_one("#call", Static).update(bar)

    def _refresh_table(self) -> None:
        if self.detail is None or self.index is None:
            return
        call = self.detail.record.call
        index = self.index
        results = None
        if index.results:

            def results(phase: str, name: str) -> Any:
                return index.tensor_result(call, phase, name)  # type: ignore[arg-type]

        table = debug_table(self.detail.rows, selected=self.tensor, grad=self.grad, results=results)
        self.query_one("#table", Static).update(table)

    def _refresh_status(self) -> None:
        if self.index is None or self.call is None or self.viewport is None:
            return
        bar = status_bar(
            self.index,
            self.call,
            phase=self.phase,
            tensor=self.tensor,
            viewport=self.viewport,
            mask=self.mask,
        )
        self.query_one("#status", Static).update(bar)

    def _apply_panes(self) -> None:
        self.query_one(HeatmapPane).display = self.panes in ("heatmap", "both")
        self.query_one(HistogramPane).display = self.panes in ("histogram", "both")

    def on_resize(self) -> None:
        if self._panes_auto:
            self.call_after_refresh(self._auto_panes)

    def _auto_panes(self) -> None:
        if not self._panes_auto:
            return
        height = self.query_one("#body").size.height
        panes = "both" if height >= _BOTH_FROM_HEIGHT else "heatmap"
        if panes != self.panes:
            self.panes = panes
            self._apply_panes()

    def on_lines_view_resized(self, message: LinesView.Resized) -> None:
        self.request_view()

    def on_call_list_highlighted(self, message: CallList.Highlighted) -> None:
        self.select_call(message.call)

    def on_layer_tree_chosen(self, message: LayerTree.Chosen) -> None:
        self._goto_module(message.path)

    # -- actions ---------------------------------------------------------------------------

    def _need_results(self) -> bool:
        if self.index is None:
            return False
        if not self.index.results:
            self.notify("no results loaded: start with --results RESULTS.h5", severity="warning")
            return False
        return True

    def _jump(
        self, call: int, phase: Phase, *, tensor: str | None = None, candidate: bool = False
    ) -> None:
        assert self.index is not None
        if self.order != phase and call in self.index.order(phase):
            self.order = phase
            self.query_one(CallList).show(self.index, self.index.order(phase), select=call)
        if candidate:
            self.base_source, self.error = "cand", None
        self.grad = phase == "backward"
        self.select_call(call, grad=self.grad, tensor=tensor)

    def action_first_divergence(self, phase: Phase) -> None:
        if not self._need_results():
            return
        assert self.index is not None
        call = self.index.first_divergence.get(phase)
        if call is None:
            self.notify(f"no {phase} divergence in the results")
            return
        self._jump(
            call, phase, tensor=_first_failing(self.index.result(call, phase)), candidate=True
        )

    def action_step_divergence(self, step: int) -> None:
        if not self._need_results() or self.call is None:
            return
        assert self.index is not None
        found = self.index.step_divergence(self.call, self.phase, step)
        if found is None:
            self.notify("no divergences in the results")
            return
        entry = self.index.result(found.call, found.phase)
        self._jump(found.call, found.phase, tensor=_first_failing(entry), candidate=True)

    def action_toggle_grad(self) -> None:
        if self.detail is None:
            return
        if not self.grad and not any(r.grad for r in self.detail.rows):
            self.notify("no gradients were recorded for this call")
            return
        self.grad = not self.grad
        name = self.tensor if self._usable(self.tensor) else self._default_tensor()
        self._set_tensor(name)
        self._refresh_title()

    def action_toggle_order(self) -> None:
        if self.index is None:
            return
        self.order = "backward" if self.order == "forward" else "forward"
        self.query_one(CallList).show(self.index, self.index.order(self.order), select=self.call)
        self._refresh_title()

    def action_toggle_sidebar(self) -> None:
        switcher = self.query_one(ContentSwitcher)
        if switcher.current == "calls":
            switcher.current = "tree"
            tree = self.query_one(LayerTree)
            if self.index is not None and self.call is not None:
                tree.reveal(self.index.rows[self.call].module)
            tree.focus()
        else:
            switcher.current = "calls"
            self.query_one(CallList).focus()

    def action_step_tensor(self, step: int) -> None:
        names = self._names()
        if not names:
            return
        pos = names.index(self.tensor) if self.tensor in names else -step
        self._set_tensor(names[(pos + step) % len(names)])

    def action_toggle_candidate(self) -> None:
        if self._need_results():
            self.base_source = "cand" if self.base_source == "ref" else "ref"
            self.error = None
            self.request_view()

    def action_cycle_error(self) -> None:
        if self._need_results():
            self.error = _ERRORS[(_ERRORS.index(self.error) + 1) % len(_ERRORS)]
            self.request_view()

    def action_cycle_panes(self) -> None:
        self._panes_auto = False
        self.panes = _PANES[(_PANES.index(self.panes) + 1) % len(_PANES)]
        self._apply_panes()
        self.call_after_refresh(self.request_view)

    def _move(self, viewport: Viewport | None) -> None:
        if viewport is not None and viewport != self.viewport:
            self.viewport = viewport
            self.request_view()

    def action_zoom(self, delta: int) -> None:
        self._move(self.viewport and self.viewport.zoomed(delta))

    def action_pan(self, drow: int, dcol: int) -> None:
        self._move(self.viewport and self.viewport.panned(drow, dcol))

    def action_step_batch(self, step: int) -> None:
        self._move(self.viewport and self.viewport.with_batch(step))

    def action_reset_view(self) -> None:
        self._move(self.viewport and self.viewport.reset())

    def action_toggle_reduction(self) -> None:
        self.reduction = "mean" if self.reduction == "maxabs" else "maxabs"
        self.request_view()

    def action_choose_mask(self) -> None:
        if self.detail is None or self.tensor is None:
            return
        target = self._info(self.detail.row(self.tensor))
        names = [] if target is None else mask_candidates(self.detail.rows, self.tensor, target)
        if not names:
            self.notify("no other tensor of this call broadcasts over this one")
            return
        self.push_screen(MaskScreen(names, self.mask), self._mask_chosen)

    def _mask_chosen(self, name: str | None) -> None:
        if name is not None:
            self.mask = name or None
            self.request_view()

    def action_search(self) -> None:
        if self.index is not None:
            self.push_screen(SearchScreen(self.index), self._searched)

    def _searched(self, path: str | None) -> None:
        if path is not None:
            self._goto_module(path)

    def _goto_module(self, path: str) -> None:
        if self.index is None:
            return
        calls = self.index.module_calls.get(path)
        if not calls:
            self.notify(f"{path or '<root>'} was never called in this trace")
            return
        if self.query_one(ContentSwitcher).current == "tree":
            self.query_one(LayerTree).reveal(path)
        call = calls[0]
        if call not in self.index.order(self.order):
            self.order = "forward"
            self.query_one(CallList).show(self.index, self.index.order("forward"), select=call)
        self.select_call(call)

    def action_alerts(self) -> None:
        if self.alerts is None:
            self.notify("alerts are still being computed")
            return
        self.push_screen(AlertsScreen(self.alerts), self._alert_chosen)

    def _alert_chosen(self, alert: Alert | None) -> None:
        if alert is None or self.index is None:
            return
        if alert.call is None:
            self._goto_module(alert.module)
            self.notify(alert.message)
            return
        phase: Phase = "backward" if alert.phase == "backward" else "forward"
        self._jump(alert.call, phase, tensor=alert.tensor)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        self.loader.stop(timeout=0.2)
        self.exit(0)


def _render(sources: Sources, *, request: ViewRequest) -> ViewData:
    return render_view(sources, request)
