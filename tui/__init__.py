"""tui — look at a trace in the terminal: ``tensortrace tui``, ``show`` and ``check``.

Everything here is numpy, h5py, Rich and Textual: nothing imports torch, so the app
starts fast over SSH on a machine without a GPU stack. The Textual app itself loads
only when asked for (``tui.TraceApp``), so ``show`` and ``check`` do not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._check import Alert, check_trace
from ._env import RenderSettings
from ._heatmap import Heatmap, error_map, tolerance_mask
from ._histogram import Histogram, HistogramData, shared_bins
from ._show import show_call

if TYPE_CHECKING:
    from ._app import TraceApp

__all__ = [
    "Alert",
    "Heatmap",
    "Histogram",
    "HistogramData",
    "RenderSettings",
    "TraceApp",
    "check_trace",
    "error_map",
    "shared_bins",
    "show_call",
    "tolerance_mask",
]


def __getattr__(name: str) -> Any:
    if name == "TraceApp":
        from ._app import TraceApp

        return TraceApp
    raise AttributeError(f"module 'tui' has no attribute {name!r}")
