"""Dialogs over the main screen: help, layer search, alerts, mask chooser.

They work on what the app already holds in memory (the index, the alerts, the call's
tensor names), so opening one never waits for the file.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from ._check import Alert
from ._index import TraceIndex
from ._keys import KEYS

__all__ = ["AlertsScreen", "HelpScreen", "MaskScreen", "SearchScreen", "help_table"]

_WHERE = {
    "app": "anywhere",
    "heatmap": "heatmap focused",
    "calls": "call list",
    "tree": "layer tree",
    "any": "anywhere",
    "dialogs": "dialogs",
}

_DIALOG_CSS = """
{name} {{ align: center middle; }}
{name} > Vertical {{
    width: 90%; max-width: 100; height: 80%; border: round $accent; background: $panel;
    padding: 0 1;
}}
{name} Static.title {{ text-style: bold; height: 1; }}
{name} OptionList {{ height: 1fr; border: none; }}
"""


def help_table() -> Table:
    """Every key of :data:`KEYS`, with where it works."""
    table = Table(box=None, padding=(0, 1), show_header=True, header_style="bold")
    table.add_column("key", no_wrap=True, style="bold cyan")
    table.add_column("does")
    table.add_column("where", style="dim", no_wrap=True)
    for key in KEYS:
        table.add_row(key.shown, key.help, _WHERE.get(key.where, key.where))
    return table


class HelpScreen(ModalScreen[None]):
    """Every key, scrollable; any of escape, q or ? closes it."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "close")]
    DEFAULT_CSS = _DIALOG_CSS.format(name="HelpScreen")

    def __init__(self) -> None:
        super().__init__()
        self.table = help_table()

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Keys — escape closes", classes="title")
            with VerticalScroll():
                yield Static(self.table, id="help-keys")

    def action_dismiss(self, result: None = None) -> None:
        self.dismiss(None)


class SearchScreen(ModalScreen[str | None]):
    """Type part of a module path or class; enter goes to the highlighted layer."""

    BINDINGS = [Binding("escape", "dismiss", "close"), Binding("down", "focus_list", show=False)]
    DEFAULT_CSS = _DIALOG_CSS.format(name="SearchScreen")

    def __init__(self, index: TraceIndex, text: str = "") -> None:
        super().__init__()
        self.index = index
        self.initial = text
        self.matches: list[str] = []

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Search layers by path or class", classes="title")
            yield Input(value=self.initial, placeholder="e.g. softmax, layers.1, LayerNorm")
            yield OptionList()

    def on_mount(self) -> None:
        self._refill(self.initial)
        self.query_one(Input).focus()

    def _refill(self, text: str) -> None:
        self.matches = self.index.search(text) if text.strip() else []
        options = self.query_one(OptionList)
        options.clear_options()
        for path in self.matches:
            info = self.index.modules[path]
            label = Text(path or "<root>")
            label.append(f"  {info.type.rpartition('.')[2]}", style="dim")
            label.append(f"  ×{len(self.index.module_calls.get(path, []))}", style="dim")
            options.add_option(Option(label, id=path or "<root>"))
        if self.matches:
            options.highlighted = 0

    def on_input_changed(self, event: Input.Changed) -> None:
        self._refill(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        options = self.query_one(OptionList)
        if self.matches:
            self.dismiss(self.matches[options.highlighted or 0])

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.matches[event.option_index])

    def action_focus_list(self) -> None:
        self.query_one(OptionList).focus()

    def action_dismiss(self, result: str | None = None) -> None:
        self.dismiss(None)


def _alert_prompt(alert: Alert) -> Text:
    text = Text()
    text.append(f"{alert.label:<17}", style="bold yellow")
    where = f"call {alert.call} " if alert.call is not None else ""
    text.append(f"{where}{alert.module or '<root>'}", style="bold")
    if alert.tensor:
        text.append(f" {alert.tensor}", style="cyan")
    text.append(f"\n  {alert.message}")
    return text


class AlertsScreen(ModalScreen[Alert | None]):
    """The alerts of ``tensortrace check``; enter jumps to the selected one."""

    BINDINGS = [Binding("escape,a", "dismiss", "close")]
    DEFAULT_CSS = _DIALOG_CSS.format(name="AlertsScreen")

    def __init__(self, alerts: list[Alert]) -> None:
        super().__init__()
        self.alerts = alerts

    def compose(self) -> ComposeResult:
        with Vertical():
            count = len(self.alerts)
            title = f"{count} alert{'s' if count != 1 else ''} — enter jumps, escape closes"
            yield Static(
                title if count else "No alerts: the summaries look healthy", classes="title"
            )
            if self.alerts:
                yield OptionList(*(Option(_alert_prompt(a)) for a in self.alerts))

    def on_mount(self) -> None:
        for options in self.query(OptionList):
            options.highlighted = 0
            options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.alerts[event.option_index])

    def action_dismiss(self, result: Alert | None = None) -> None:
        self.dismiss(None)


class MaskScreen(ModalScreen[str | None]):
    """Pick the tensor whose True (or non-zero) entries mask the heatmap; "none" clears it."""

    BINDINGS = [Binding("escape,m", "dismiss", "close")]
    DEFAULT_CSS = _DIALOG_CSS.format(name="MaskScreen")

    NONE = "(no mask)"

    def __init__(self, names: list[str], current: str | None) -> None:
        super().__init__()
        self.names = [self.NONE, *names]
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Mask the heatmap with (broadcast along batch)", classes="title")
            yield OptionList(*self.names)

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        current = self.current if self.current in self.names else self.NONE
        options.highlighted = self.names.index(current)
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        chosen = self.names[event.option_index]
        self.dismiss("" if chosen == self.NONE else chosen)

    def action_dismiss(self, result: str | None = None) -> None:
        self.dismiss(None)
