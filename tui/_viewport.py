"""Which region of a folded tensor the heatmap shows: zoom, pan and batch selection.

Pure arithmetic on the folded shape (``rows = batch * band``), so every key press is
testable without a terminal, and so the app knows which batch elements to read before
reading anything. ``max_rows`` caps the window for tensors too large to read whole.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ._fold import fold_to_2d

__all__ = ["Viewport"]


@dataclass(frozen=True)
class Viewport:
    """Zoom level (0 shows all), top-left corner, and the selected batch element (or all)."""

    rows: int
    cols: int
    band: int
    batched: bool = True
    zoom: int = 0
    row0: int = 0
    col0: int = 0
    batch: int | None = None
    max_rows: int | None = None

    @classmethod
    def for_shape(cls, shape: tuple[int, ...], *, max_batches: int | None = None) -> Viewport:
        """A zoomed-out viewport; ``max_batches`` limits how many batch elements one view reads."""
        rows, cols, band = fold_to_2d(shape)
        batched = len(shape) >= 2
        cap = None if max_batches is None or not batched else max(1, max_batches) * band
        return cls(rows=rows, cols=cols, band=band, batched=batched, max_rows=cap)

    @property
    def batches(self) -> int:
        """Number of batch elements (1 when the tensor has no batch dimension)."""
        return self.rows // self.band if self.batched and self.band else 1

    @property
    def partial(self) -> bool:
        """True when the tensor is too large to read whole: views read batch slices."""
        return self.max_rows is not None and self.max_rows < self.rows

    def _base(self) -> tuple[int, int]:
        """Rows the window may cover: the selected band, or everything."""
        if self.batch is not None:
            return self.batch * self.band, (self.batch + 1) * self.band
        return 0, self.rows

    def _size(self) -> tuple[int, int]:
        lo, hi = self._base()
        height = max(1, -(-(hi - lo) // (1 << self.zoom)))
        if self.max_rows is not None:
            height = min(height, self.max_rows)
        width = max(1, -(-self.cols // (1 << self.zoom)))
        return height, width

    def window(self) -> tuple[int, int, int, int]:
        """``(row_start, row_stop, col_start, col_stop)`` of the folded array, clamped."""
        lo, hi = self._base()
        height, width = self._size()
        r0 = min(max(self.row0, lo), max(lo, hi - height))
        c0 = min(max(self.col0, 0), max(0, self.cols - width))
        return r0, min(hi, r0 + height), c0, min(self.cols, c0 + width)

    def batch_range(self) -> tuple[int, int]:
        """The batch elements ``[first, stop)`` the window touches (what to read)."""
        if not self.batched:
            return 0, 1
        r0, r1, _, _ = self.window()
        return r0 // self.band, -(-r1 // self.band)

    def _settled(self, **changes: object) -> Viewport:
        moved = replace(self, **changes)  # type: ignore[arg-type]
        r0, _, c0, _ = moved.window()
        return replace(moved, row0=r0, col0=c0)

    def zoomed(self, delta: int) -> Viewport:
        """Zoom in (+1) or out (-1) around the window's centre."""
        r0, r1, c0, c1 = self.window()
        limit = max((self.rows - 1).bit_length(), (self.cols - 1).bit_length(), 0)
        zoom = min(max(self.zoom + delta, 0), limit)
        if zoom == self.zoom:
            return self
        new = replace(self, zoom=zoom)
        height, width = new._size()
        return new._settled(row0=(r0 + r1) // 2 - height // 2, col0=(c0 + c1) // 2 - width // 2)

    def panned(self, drow: int, dcol: int) -> Viewport:
        """Move by quarter windows (at least one element) down/right (+) or up/left (-)."""
        height, width = self._size()
        r0, _, c0, _ = self.window()
        return self._settled(
            row0=r0 + drow * max(1, height // 4), col0=c0 + dcol * max(1, width // 4)
        )

    def with_batch(self, step: int) -> Viewport:
        """Select the next (+1) / previous (-1) batch element; past either end means all."""
        if not self.batched or self.batches <= 1:
            return self
        cycle = [None, *range(self.batches)]
        pos = cycle.index(self.batch)
        batch = cycle[(pos + step) % len(cycle)]
        return self._settled(batch=batch, zoom=0, row0=0 if batch is None else batch * self.band)

    def reset(self) -> Viewport:
        """Back to the zoomed-out view of everything."""
        return replace(self, zoom=0, row0=0, col0=0, batch=None)

    def describe(self) -> str:
        """Short status text: batch selection and zoom."""
        batch = "all" if self.batch is None else str(self.batch)
        parts = [f"b {batch}" if self.batched else "no batch", f"zoom {1 << self.zoom}x"]
        return " · ".join(parts)
