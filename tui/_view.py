"""Read what one view shows and render it to lines — the reader thread's main job.

A view is one tensor of one call (data or gradient; reference, candidate or an error of
the two) seen through a viewport. Only the batch elements the viewport touches are read
(``TraceReader.read(rows=...)``), within :data:`MAX_VIEW_BYTES`, and rendering happens
here too, so the UI thread only paints finished lines.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from rich.segment import Segment

from tracefmt import ResultsReader, TensorInfo, TraceReader

from ._colors import Line, crop_line
from ._env import RenderSettings
from ._fold import Reduction
from ._heatmap import Heatmap, error_map, tolerance_mask
from ._histogram import Histogram, HistogramData, shared_bins
from ._table import TensorRow

__all__ = [
    "MAX_VIEW_BYTES",
    "Source",
    "Sources",
    "ViewData",
    "ViewRequest",
    "broadcast_mask",
    "mask_candidates",
    "max_batches",
    "render_view",
]

Source = Literal["ref", "cand", "abs", "rel", "tol"]

MAX_VIEW_BYTES = 64 << 20
"""Most bytes of one tensor a view reads; larger tensors are shown a batch slice at a time."""

_CACHE_BYTES = 256 << 20
_SOURCE_TITLE = {
    "ref": "reference",
    "cand": "candidate",
    "abs": "|cand - ref|",
    "rel": "|cand - ref| / |ref|",
    "tol": "out of tolerance",
}


def max_batches(info: TensorInfo) -> int | None:
    """How many batch elements of a tensor fit one view (None: no batch dimension)."""
    if len(info.shape) < 2 or info.shape[0] == 0:
        return None
    per = max(1, info.numel // info.shape[0]) * 8
    return max(1, MAX_VIEW_BYTES // per)


def broadcast_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """``mask`` lined up with a tensor of ``shape``, batch dimension first, or None.

    A mask with the tensor's batch size keeps its first axis on the batch axis; its other
    axes are tried left-aligned after the batch (``(B, S)`` over ``(B, S, D)``), then
    right-aligned (``(B, S)`` over ``(B, H, T, S)``). A mask without the batch axis is
    shared by every batch element.
    """
    m = np.asarray(mask)
    if not shape:
        return None
    heads = [m] if m.ndim and m.shape[0] == shape[0] else []
    heads.append(m[None])
    for head in heads:
        rest = head.ndim - 1
        if rest > len(shape) - 1:
            continue
        pad = len(shape) - 1 - rest
        for lead in (0, pad) if pad else (0,):
            view = head.reshape(head.shape[:1] + (1,) * lead + head.shape[1:] + (1,) * (pad - lead))
            try:
                return np.broadcast_to(view, shape)
            except ValueError:
                continue
    return None


def mask_candidates(rows: list[TensorRow], name: str, target: TensorInfo) -> list[str]:
    """Other data tensors of a call that broadcast over ``target``; boolean ones first."""
    found = []
    for row in rows:
        info = row.data
        if row.name == name or info is None or info.numel > target.numel:
            continue
        stand_in = np.broadcast_to(np.zeros((), dtype=bool), info.shape)
        if broadcast_mask(stand_in, target.shape) is not None:
            found.append((info.dtype != "bool", row.name))
    return [n for _, n in sorted(found, key=lambda f: f[0])]


def _valid(mask: np.ndarray) -> np.ndarray:
    """True where a value counts: masks mark what to ignore (True, or non-zero additive)."""
    if mask.dtype == np.bool_:
        return ~mask
    return np.asarray(mask) == 0


@dataclass(frozen=True)
class ViewRequest:
    """Everything that decides what a view shows; equal requests give equal lines."""

    call: int
    name: str
    grad: bool = False
    source: Source = "ref"
    window: tuple[int, int, int, int] | None = None
    batch_range: tuple[int, int] | None = None
    mask: str | None = None
    reduction: Reduction = "maxabs"
    heat_size: tuple[int, int] = (80, 16)
    hist_size: tuple[int, int] = (80, 10)
    settings: RenderSettings = field(default_factory=RenderSettings)

    @property
    def phase(self) -> str:
        return "backward" if self.grad else "forward"


@dataclass(frozen=True)
class ViewData:
    """Finished lines for the heatmap and histogram panes, and what was read."""

    request: ViewRequest
    heat: list[Line]
    hist: list[Line]
    rows_read: tuple[int, int] | None = None


class _Arrays:
    """LRU cache of arrays read for views, bounded by bytes."""

    def __init__(self, budget: int = _CACHE_BYTES) -> None:
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._budget = budget
        self._bytes = 0

    def get(self, key: Hashable) -> np.ndarray | None:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: Hashable, value: np.ndarray) -> np.ndarray:
        self._items[key] = value
        self._bytes += value.nbytes
        while self._bytes > self._budget and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.nbytes
        return value


@dataclass
class Sources:
    """The open files (owned by one thread) and the cache of what was read from them."""

    trace: TraceReader
    results: ResultsReader | None = None
    cache: _Arrays = field(default_factory=_Arrays)

    def rows(self, tid: int, span: tuple[int, int] | None) -> np.ndarray:
        key = ("ref", tid, span)
        found = self.cache.get(key)
        if found is None:
            rows = None if span is None else slice(*span)
            found = self.cache.put(key, self.trace.read(tid, rows=rows))
        return found

    def candidate(
        self, call: int, phase: str, name: str, span: tuple[int, int] | None
    ) -> np.ndarray | None:
        if self.results is None:
            return None
        key = ("cand", call, phase, name)
        found = self.cache.get(key)
        if found is None:
            got = self.results.candidate(call, phase, name)
            if got is None:
                return None
            found = self.cache.put(key, got)
        return found if span is None else found[span[0] : span[1]]

    def tolerance(self, call: int, phase: str, name: str) -> tuple[float, float] | None:
        if self.results is None:
            return None
        for entry in self.results.calls():
            if entry.get("call") == call and entry.get("phase") == phase:
                for t in entry.get("tensors") or []:
                    if t.get("name") == name and "rtol_used" in t and "atol_used" in t:
                        return float(t["rtol_used"]), float(t["atol_used"])
        return None


def _message(text: str, width: int) -> list[Line]:
    return [crop_line([Segment(text)], width)]


def _title(
    req: ViewRequest, source: Source, span: tuple[int, int] | None, batches: int | None
) -> str:
    shown = _SOURCE_TITLE[source] + (" (no candidate here)" if source != req.source else "")
    parts = [f"{'∇ ' if req.grad else ''}{req.name}", shown]
    if req.reduction == "mean":
        parts.append("mean")
    if req.mask:
        parts.append(f"mask {req.mask}")
    if span is not None and batches is not None and span != (0, batches):
        parts.append(f"read b{span[0]}..{span[1] - 1}")
    return " · ".join(parts)


def _histogram(
    req: ViewRequest,
    info: TensorInfo,
    ref: np.ndarray | None,
    cand: np.ndarray | None,
    valid: np.ndarray | None,
) -> list[Line]:
    width, height = req.hist_size
    if width <= 0 or height <= 0:
        return []
    bars = max(2, height - 4)
    s = info.summary
    if ref is not None and cand is not None and ref.shape == cand.shape:
        keep = None if valid is None else np.broadcast_to(valid, ref.shape)
        a, b = (ref, cand) if keep is None else (ref[keep], cand[keep])
        ha, hb = shared_bins(a, b, bins=64)
        hist = Histogram(ha, hb, height=bars, title="histogram · ref vs cand (shared bins)")
    elif s is not None and valid is None:
        data = HistogramData.from_recorded(
            np.asarray(s.hist), s.min, s.max, s.nan, s.posinf, s.neginf
        )
        hist = Histogram(data, height=bars, title="histogram · recorded")
    elif ref is not None:
        data = HistogramData.from_values(ref, mask=valid)
        hist = Histogram(data, height=bars, title="histogram · computed")
    else:
        return _message("no histogram: no summary and no stored values", width)
    return hist.lines(width, settings=req.settings)[:height]


def _display(
    req: ViewRequest, source: Source, sources: Sources, ref: np.ndarray, cand: np.ndarray | None
) -> np.ndarray | str:
    """The array to draw for a source, or why there is none."""
    if source == "ref" or cand is None:
        return ref
    if cand.shape != ref.shape:
        return f"candidate shape {cand.shape} differs from reference {ref.shape}"
    if source == "cand":
        return cand
    if source in ("abs", "rel"):
        return error_map(ref, cand, kind="abs" if source == "abs" else "rel")
    tol = sources.tolerance(req.call, req.phase, req.name)
    if tol is None:
        return "no tolerance recorded for this tensor in the results"
    return tolerance_mask(ref, cand, rtol=tol[0], atol=tol[1]).astype(np.float64)


def render_view(sources: Sources, req: ViewRequest) -> ViewData:
    """Read the rows the request needs (from cache when possible) and render both panes."""
    rec = sources.trace.call(req.call)
    tensors = rec.grad_tensors() if req.grad else rec.tensors()
    width, height = req.heat_size
    if req.name not in tensors:
        what = "gradient" if req.grad else "tensor"
        return ViewData(req, _message(f"no {what} {req.name} in this call", width), [])
    info = sources.trace.tensor(tensors[req.name])
    batches = info.shape[0] if len(info.shape) >= 2 else None
    span = req.batch_range if batches is not None else None
    if span is not None and span == (0, batches):
        span = None
    if not info.has_payload:
        note = _message("stats mode: no stored values (summary only)", width)
        return ViewData(req, note, _histogram(req, info, None, None, None))
    ref = sources.rows(info.id, span)
    cand = sources.candidate(req.call, req.phase, req.name, span)
    valid = None
    if req.mask:
        mask_tid = rec.tensors().get(req.mask)
        if mask_tid is not None:
            mask_info = sources.trace.tensor(mask_tid)
            batched = (
                bool(mask_info.shape) and batches is not None and mask_info.shape[0] == batches
            )
            raw = sources.rows(mask_tid, span if batched else None)
            lined = broadcast_mask(raw, ref.shape)
            valid = None if lined is None else _valid(lined)
    source: Source = req.source if cand is not None else "ref"
    shown = _display(req, source, sources, ref, cand)
    hist = _histogram(req, info, ref, cand, valid)
    if isinstance(shown, str):
        return ViewData(req, _message(shown, width), hist, span)
    if width <= 0 or height <= 0:
        return ViewData(req, [], hist, span)
    first = 0 if span is None else span[0]
    band = math.prod(ref.shape[1:-1]) if ref.ndim >= 2 else 1
    window = None
    if req.window is not None:
        r0, r1, c0, c1 = req.window
        window = (r0 - first * band, r1 - first * band, c0, c1)
    s = info.summary
    value_range = None
    if span is not None and source == "ref" and s is not None and s.finite:
        value_range = (s.min, s.max)
    heat = Heatmap.from_tensor(
        shown,
        mask=valid,
        reduction=req.reduction,
        settings=req.settings,
        title=_title(req, source, span, batches),
        value_range=value_range,
        window=window,
        band_offset=first,
    )
    return ViewData(req, heat.lines(width, height, settings=req.settings), hist, span)
