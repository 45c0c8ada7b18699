"""The app's panes: a virtual call list, a lazily filled layer tree, and line views.

None of these touch a file: they display what the reader thread delivered. The call list
draws only the visible lines, so a trace with a million calls scrolls as fast as one
with ten; the tree adds a module's children only when it is first expanded.
"""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from ._colors import Line
from ._index import CallRow, TraceIndex
from ._keys import bindings

__all__ = ["CallList", "HeatmapPane", "HistogramPane", "LayerTree", "LinesView", "badge"]

_STATUS_GLYPH = {
    None: ("·", Style(dim=True)),
    "pass": ("✓", Style(color="green")),
    "fail": ("✗", Style(color="red", bold=True)),
    "error": ("!", Style(color="magenta", bold=True)),
    "skipped": ("-", Style(dim=True)),
}
_NONFINITE = ("∞", Style(color="magenta", bold=True))


def badge(row: CallRow, *, with_results: bool) -> list[Segment]:
    """Forward and backward verdicts (with results) and the NaN/Inf marker."""
    out: list[Segment] = []
    if with_results:
        for status, present in ((row.forward, True), (row.backward, row.has_backward)):
            glyph, style = _STATUS_GLYPH.get(status, ("?", Style(dim=True)))
            out.append(Segment(glyph if present else " ", style))
    glyph, style = _NONFINITE if row.nonfinite else (" ", Style())
    out.append(Segment(glyph, style))
    return out


def _left_cut(text: str, width: int) -> str:
    """Keep the end of a path (the specific part) when it does not fit."""
    if width <= 0:
        return ""
    return text if len(text) <= width else "…" + text[len(text) - width + 1 :]


class CallList(ScrollView, can_focus=True):
    """Calls in forward or backward order, one line each, drawn on demand."""

    BINDINGS = bindings("calls")
    DEFAULT_CSS = "CallList { scrollbar-size-vertical: 1; overflow-x: hidden; }"

    class Highlighted(Message):
        """The cursor moved to a call."""

        def __init__(self, call: int) -> None:
            super().__init__()
            self.call = call

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.order: list[int] = []
        self.rows: dict[int, CallRow] = {}
        self.with_results = False
        self.cursor = 0
        self._positions: dict[int, int] = {}

    def show(self, index: TraceIndex, order: list[int], *, select: int | None = None) -> None:
        """Display ``order`` (call ids) and put the cursor on ``select`` without announcing it."""
        self.rows = index.rows
        self.order = order
        self.with_results = bool(index.results)
        self._positions = {c: i for i, c in enumerate(order)}
        self.virtual_size = Size(self.size.width, len(order))
        self.cursor = self._positions.get(select, 0) if select is not None else 0
        self._scroll_to_cursor()
        self.refresh()

    @property
    def current(self) -> int | None:
        return self.order[self.cursor] if 0 <= self.cursor < len(self.order) else None

    def select(self, call: int) -> bool:
        """Move the cursor to a call quietly (the app already knows); False if not listed."""
        pos = self._positions.get(call)
        if pos is None:
            return False
        self.cursor = pos
        self._scroll_to_cursor()
        self.refresh()
        return True

    def _move(self, index: int) -> None:
        if not self.order:
            return
        index = min(max(index, 0), len(self.order) - 1)
        if index != self.cursor:
            self.cursor = index
            self._scroll_to_cursor()
            self.refresh()
            self.post_message(self.Highlighted(self.order[index]))

    def _scroll_to_cursor(self) -> None:
        height = max(1, self.scrollable_content_region.height)
        top = int(self.scroll_offset.y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + height:
            self.scroll_to(y=self.cursor - height + 1, animate=False, immediate=True)

    def action_cursor(self, delta: int) -> None:
        self._move(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self._move(self.cursor + direction * max(1, self.scrollable_content_region.height - 1))

    def action_edge(self, direction: int) -> None:
        self._move(0 if direction < 0 else len(self.order) - 1)

    def on_click(self, event: events.Click) -> None:
        self._move(int(self.scroll_offset.y) + event.y)

    def on_resize(self) -> None:
        self.virtual_size = Size(self.size.width, len(self.order))
        self._scroll_to_cursor()

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        index = int(self.scroll_offset.y) + y
        if index >= len(self.order):
            return Strip.blank(width, self.rich_style)
        row = self.rows[self.order[index]]
        digits = len(str(max(self.order))) if self.order else 1
        segments = badge(row, with_results=self.with_results)
        prefix = sum(len(s.text) for s in segments) + digits + 2
        segments += [
            Segment(f" {row.call:>{digits}} ", Style(dim=True)),
            Segment(_left_cut(row.label, width - prefix)),
        ]
        strip = Strip(segments).adjust_cell_length(width)
        if index == self.cursor:
            strip = strip.apply_style(
                Style(reverse=True) if self.has_focus else Style(bold=True, underline=True)
            )
        return strip.apply_style(self.rich_style)

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()


class LayerTree(Tree[str]):
    """The module hierarchy; a node's children are added the first time it is expanded."""

    BINDINGS = bindings("tree")

    class Chosen(Message):
        """Enter on a layer: go to its first call."""

        def __init__(self, path: str) -> None:
            super().__init__()
            self.path = path

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("layers", data="", id=id)
        self.auto_expand = False
        self.show_root = True
        self._index: TraceIndex | None = None
        self._filled: set[str] = set()
        self._by_path: dict[str, TreeNode[str]] = {}

    def load(self, index: TraceIndex) -> None:
        self._index = index
        self._filled.clear()
        self.clear()
        self.root.set_label(self._label(""))
        self.root.data = ""
        self._by_path = {"": self.root}
        self._fill(self.root)
        self.root.expand()

    def _label(self, path: str) -> Text:
        assert self._index is not None
        info = self._index.modules.get(path)
        name = path.rpartition(".")[2] if path else "<root>"
        calls = self._index.module_calls.get(path, [])
        rows = [self._index.rows[c] for c in calls]
        text = Text(name)
        if info is not None:
            text.append(f" {info.type.rpartition('.')[2]}", style="dim")
        text.append(f" ×{len(calls)}", style="dim")
        if any(r.diverged for r in rows):
            text.append(" ✗", style="bold red")
        if any(r.nonfinite for r in rows):
            text.append(" ∞", style="bold magenta")
        return text

    def _fill(self, node: TreeNode[str]) -> None:
        path = node.data or ""
        if self._index is None or path in self._filled:
            return
        self._filled.add(path)
        for child in self._index.children.get(path, []):
            has_kids = bool(self._index.children.get(child))
            self._by_path[child] = node.add(self._label(child), data=child, allow_expand=has_kids)

    def on_tree_node_expanded(self, event: Tree.NodeExpanded[str]) -> None:
        self._fill(event.node)

    def on_tree_node_selected(self, event: Tree.NodeSelected[str]) -> None:
        event.stop()
        self.post_message(self.Chosen(event.node.data or ""))

    def reveal(self, path: str) -> None:
        """Expand the ancestors of a module and put the cursor on it."""
        if self._index is None:
            return
        chain = []
        p: str | None = path
        while p:
            chain.append(p)
            p = p.rpartition(".")[0] if "." in p else ""
        node = self.root
        self._fill(node)
        node.expand()
        for step in reversed(chain):
            found = self._by_path.get(step)
            if found is None:
                break
            node = found
            self._fill(node)
            if step != path:
                node.expand()
        self.move_cursor(node, animate=False)

    def action_expand(self) -> None:
        node = self.cursor_node
        if node is not None and node.allow_expand:
            self._fill(node)
            node.expand()

    def action_collapse(self) -> None:
        node = self.cursor_node
        if node is None:
            return
        if node.is_expanded and node.allow_expand:
            node.collapse()
        elif node.parent is not None:
            self.move_cursor(node.parent, animate=False)


class LinesView(Widget):
    """Shows lines rendered elsewhere (in the reader thread); reports its size changes."""

    class Resized(Message):
        """The view's size changed: its lines must be rendered again."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.lines: list[Line] = []
        self._last_size = Size(0, 0)

    def set_lines(self, lines: list[Line]) -> None:
        self.lines = lines
        self.refresh()

    @property
    def text(self) -> str:
        """The plain text shown (for tests and for reading in a log)."""
        return "\n".join("".join(s.text for s in line) for line in self.lines)

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        if y >= len(self.lines):
            return Strip.blank(width, self.rich_style)
        return Strip(self.lines[y]).adjust_cell_length(width).apply_style(self.rich_style)

    def on_resize(self, event: events.Resize) -> None:
        if event.size != self._last_size:
            self._last_size = event.size
            self.post_message(self.Resized())


class HeatmapPane(LinesView, can_focus=True):
    """The heatmap; focused, h/j/k/l pan it."""

    BINDINGS = bindings("heatmap")


class HistogramPane(LinesView):
    """The histogram of the selected tensor."""
