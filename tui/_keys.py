"""Every key of the app in one table: the bindings and the help screen both come from it.

Keeping one table is what makes "the help lists every key" true by construction: a key
bound anywhere (app or widget) without a row here is caught by a test.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding

__all__ = ["KEYS", "Key", "bindings"]


@dataclass(frozen=True)
class Key:
    """A key (Textual key names, comma-separated), its action, where it works and what it does."""

    keys: str
    action: str
    help: str
    where: str = "app"
    label: str = ""
    footer: bool = False
    priority: bool = False
    short: str = ""

    @property
    def shown(self) -> str:
        """How the help screen writes the key(s)."""
        return self.label or " ".join(k for k in self.keys.split(","))


KEYS: tuple[Key, ...] = (
    Key("q", "quit", "quit", footer=True, short="quit"),
    Key("question_mark", "help", "this help", label="?", footer=True, short="help"),
    Key(
        "slash", "search", "search layers by path or class", label="/", footer=True, short="search"
    ),
    Key(
        "f",
        "first_divergence('forward')",
        "first forward divergence (results)",
        footer=True,
        short="1st fwd div",
    ),
    Key(
        "b",
        "first_divergence('backward')",
        "first backward divergence (results)",
        footer=True,
        short="1st bwd div",
    ),
    Key("n", "step_divergence(1)", "next divergence"),
    Key("N", "step_divergence(-1)", "previous divergence"),
    Key("a", "alerts", "alerts from check; enter jumps to one", footer=True, short="alerts"),
    Key("g", "toggle_grad", "data / gradient", footer=True, short="data/grad"),
    Key("o", "toggle_order", "call list in forward / backward order"),
    Key("L", "toggle_sidebar", "call list / layer tree"),
    Key("t", "step_tensor(1)", "next tensor of the call"),
    Key("T", "step_tensor(-1)", "previous tensor of the call"),
    Key("c", "toggle_candidate", "reference / candidate values (results)"),
    Key("e", "cycle_error", "error view: off, |cand-ref|, relative, out of tolerance"),
    Key("v", "cycle_panes", "heatmap / histogram / both"),
    Key("plus,equals_sign", "zoom(1)", "zoom in", label="+ ="),
    Key("minus", "zoom(-1)", "zoom out", label="-"),
    Key("0", "reset_view", "whole tensor again (zoom, pan, batch)"),
    Key("shift+left", "pan(0,-1)", "pan left", label="shift+← / h (heatmap)", priority=True),
    Key("shift+down", "pan(1,0)", "pan down", label="shift+↓ / j (heatmap)", priority=True),
    Key("shift+up", "pan(-1,0)", "pan up", label="shift+↑ / k (heatmap)", priority=True),
    Key("shift+right", "pan(0,1)", "pan right", label="shift+→ / l (heatmap)", priority=True),
    Key(
        "left_square_bracket",
        "step_batch(-1)",
        "previous batch element (all at the ends)",
        label="[",
    ),
    Key("right_square_bracket", "step_batch(1)", "next batch element", label="]"),
    Key("r", "toggle_reduction", "downsampling: max|x| / mean"),
    Key("m", "choose_mask", "mask: another tensor of the call (masked drawn black)"),
    Key("h", "app.pan(0,-1)", "pan left", where="heatmap"),
    Key("j", "app.pan(1,0)", "pan down", where="heatmap"),
    Key("k", "app.pan(-1,0)", "pan up", where="heatmap"),
    Key("l", "app.pan(0,1)", "pan right", where="heatmap"),
    Key("down,j", "cursor(1)", "next call", where="calls", label="↓ j"),
    Key("up,k", "cursor(-1)", "previous call", where="calls", label="↑ k"),
    Key("pagedown", "page(1)", "page down", where="calls"),
    Key("pageup", "page(-1)", "page up", where="calls"),
    Key("home", "edge(-1)", "first call", where="calls"),
    Key("end", "edge(1)", "last call", where="calls"),
    Key("l,right", "expand", "expand layer", where="tree", label="→ l"),
    Key("h,left", "collapse", "collapse layer", where="tree", label="← h"),
    Key("enter", "select_cursor", "go to the layer's first call", where="tree"),
    Key("tab", "focus_next", "next pane", where="any"),
    Key("escape", "dismiss", "close a dialog", where="dialogs"),
)


def bindings(where: str) -> list[Binding]:
    """Textual bindings for the keys that work in one place."""
    return [
        Binding(
            k.keys,
            k.action,
            k.short or k.help,
            show=k.footer,
            key_display=k.label or None,
            priority=k.priority,
        )
        for k in KEYS
        if k.where == where
    ]
