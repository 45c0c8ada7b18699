"""Rendering knobs read from the environment, in one place.

The heatmap, the histogram, the ``show`` command and the Textual app must agree on
whether to colour and how many colours the terminal has, so they all build one
:class:`RenderSettings` here instead of reading ``os.environ`` themselves.

Precedence, strongest first:

1. ``TENSORTRACE_COLOR=none|16|256|truecolor`` — an explicit choice for this tool, so it
   wins over everything (``TENSORTRACE_COLOR=256 tensortrace show ... | less -R`` works).
2. ``NO_COLOR`` set to any non-empty value — plain glyphs (https://no-color.org).
3. stdout is not a terminal (piped or redirected) — plain glyphs.
4. ``COLORTERM=truecolor|24bit`` — 24-bit colour; else ``TERM`` containing ``256color``
   — 256 colours; else the 16 ANSI colours.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, cast

__all__ = [
    "ColorDepth",
    "RenderSettings",
    "color_depth",
    "color_override",
    "no_color",
]

ColorDepth = Literal["none", "16", "256", "truecolor"]

_DEPTHS: tuple[ColorDepth, ...] = ("none", "16", "256", "truecolor")
_RICH_SYSTEMS: dict[ColorDepth, str | None] = {
    "none": None,
    "16": "standard",
    "256": "256",
    "truecolor": "truecolor",
}
_FROM_RICH: dict[str, ColorDepth] = {
    "standard": "16",
    "windows": "16",
    "256": "256",
    "truecolor": "truecolor",
}


def no_color(environ: Mapping[str, str] = os.environ) -> bool:
    """True when ``NO_COLOR`` is set to a non-empty value (an empty value means unset)."""
    return bool(environ.get("NO_COLOR", ""))


def color_override(environ: Mapping[str, str] = os.environ) -> ColorDepth | None:
    """The depth forced by ``TENSORTRACE_COLOR``, or None when unset or not understood."""
    value = environ.get("TENSORTRACE_COLOR", "").strip().lower()
    aliases = {"24bit": "truecolor", "no": "none", "off": "none", "0": "none", "8bit": "256"}
    value = aliases.get(value, value)
    return cast(ColorDepth, value) if value in _DEPTHS else None


def color_depth(environ: Mapping[str, str] = os.environ) -> ColorDepth:
    """The terminal's colour depth from ``COLORTERM`` and ``TERM``, ignoring overrides."""
    if environ.get("COLORTERM", "").strip().lower() in ("truecolor", "24bit"):
        return "truecolor"
    if "256color" in environ.get("TERM", "").lower():
        return "256"
    return "16"


@dataclass(frozen=True)
class RenderSettings:
    """How to draw: colour depth, or ``"none"`` for plain glyphs that survive pipes and NO_COLOR."""

    depth: ColorDepth = "truecolor"

    @property
    def plain(self) -> bool:
        """True when drawing with glyphs only (no ANSI escapes, no half blocks)."""
        return self.depth == "none"

    @property
    def color_system(self) -> str | None:
        """The matching ``rich.console.Console(color_system=...)`` argument."""
        return _RICH_SYSTEMS[self.depth]

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] = os.environ, *, is_terminal: bool
    ) -> RenderSettings:
        """Settings for a stdout that is (or is not) a terminal, following the module precedence."""
        forced = color_override(environ)
        if forced is not None:
            return cls(depth=forced)
        if no_color(environ) or not is_terminal:
            return cls(depth="none")
        return cls(depth=color_depth(environ))

    @classmethod
    def from_color_system(cls, color_system: str | None) -> RenderSettings:
        """Settings matching a Rich console's ``color_system`` (None means plain)."""
        if color_system is None:
            return cls(depth="none")
        return cls(depth=_FROM_RICH.get(color_system, "16"))

    def limited_to(self, color_system: str | None) -> RenderSettings:
        """These settings capped at what a console can show, so colours never reach a plain console."""
        other = RenderSettings.from_color_system(color_system)
        rank = min(_DEPTHS.index(self.depth), _DEPTHS.index(other.depth))
        return RenderSettings(depth=_DEPTHS[rank])
