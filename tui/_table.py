"""The per-call debug table: every input and output, forward and backward side by side.

Everything comes from record-time summaries (no tensor is read), so the table is
instant even on stats-mode traces. Magnitudes are coloured by decade so a value that
grows by orders of magnitude from one call to the next stands out when stepping.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from tracefmt import CallRecord, TensorInfo, TraceReader

__all__ = [
    "CallDetail",
    "TensorRow",
    "comparison_line",
    "debug_table",
    "format_number",
    "load_call",
    "tensor_rows",
]

_SHORT_DTYPES = {
    "float64": "f64",
    "float32": "f32",
    "float16": "f16",
    "bfloat16": "bf16",
    "int64": "i64",
    "int32": "i32",
    "int16": "i16",
    "int8": "i8",
    "uint8": "u8",
    "complex64": "c64",
    "complex128": "c128",
}


@dataclass(frozen=True)
class TensorRow:
    """One named tensor of a call: its data and its gradient (either may be missing)."""

    name: str
    data: TensorInfo | None
    grad: TensorInfo | None

    @property
    def is_input(self) -> bool:
        return self.name.startswith(("args", "kwargs"))

    @property
    def shape(self) -> tuple[int, ...] | None:
        info = self.data or self.grad
        return None if info is None else info.shape


def tensor_rows(record: CallRecord, tensor: Callable[[int], TensorInfo]) -> list[TensorRow]:
    """Inputs then outputs, each with its gradient when the backward recorded one."""
    data = record.tensors()
    grads = record.grad_tensors()
    names = [*data, *(n for n in grads if n not in data)]
    names.sort(key=lambda n: 0 if n.startswith(("args", "kwargs")) else 1)
    return [
        TensorRow(
            n, tensor(data[n]) if n in data else None, tensor(grads[n]) if n in grads else None
        )
        for n in names
    ]


@dataclass(frozen=True)
class CallDetail:
    """A call record with the metadata and summaries of all its tensors."""

    record: CallRecord
    rows: list[TensorRow]

    def row(self, name: str | None) -> TensorRow | None:
        return next((r for r in self.rows if r.name == name), None)


def load_call(reader: TraceReader, call: int) -> CallDetail:
    """Everything the debug table needs for one call (metadata only, no tensor values)."""
    record = reader.call(call)
    return CallDetail(record, tensor_rows(record, reader.tensor))


def format_number(x: float) -> str:
    """Three significant digits, short exponents: ``-2.20e-5``, ``1.01``, ``3e+04``.

    Values under 1e-2 always use an exponent, so small magnitudes compare at a glance.
    """
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    text = f"{x:.2e}" if 0 < abs(x) < 1e-2 else f"{x:.3g}"
    if "e" in text:
        mant, exp = text.split("e")
        text = f"{mant}e{exp[0] if exp[0] == '-' else ''}{exp[1:].lstrip('0') or '0'}"
    return text


def _magnitude_style(x: float) -> str:
    mag = abs(x)
    if not math.isfinite(mag) or mag >= 1e6:
        return "bold red"
    if mag >= 1e3:
        return "yellow"
    if 0 < mag < 1e-6:
        return "cyan"
    return ""


def _value(info: TensorInfo | None, which: str) -> Text:
    s = info.summary if info is not None else None
    if s is None:
        return Text("—" if info is None else "?", style="dim")
    value = s.min if which == "min" else s.max
    return Text(format_number(value), style=_magnitude_style(value))


def _specials(info: TensorInfo | None) -> Text:
    s = info.summary if info is not None else None
    if s is None:
        return Text("")
    parts = [
        f"{n}{tag}" for n, tag in ((s.nan, "nan"), (s.posinf, "+inf"), (s.neginf, "-inf")) if n
    ]
    return Text(" ".join(parts), style="bold magenta" if parts else "")


def _shape(row: TensorRow) -> str:
    shape = row.shape
    if shape is None:
        return "?"
    return "×".join(str(d) for d in shape) if shape else "scalar"


def _dtype(row: TensorRow) -> str:
    info = row.data or row.grad
    return "?" if info is None else _SHORT_DTYPES.get(info.dtype, info.dtype)


def _verdict(entry: Mapping[str, Any] | None) -> Text:
    if entry is None:
        return Text("·", style="dim")
    if entry.get("passed"):
        return Text("✓", style="green")
    return Text("✗", style="bold red")


def debug_table(
    rows: list[TensorRow],
    *,
    selected: str | None = None,
    grad: bool = False,
    results: Callable[[str, str], Mapping[str, Any] | None] | None = None,
) -> Table:
    """A Rich table of the rows; ``results(phase, name)`` adds forward/backward verdicts."""
    table = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=True,
        show_edge=False,
        header_style="bold",
    )
    data_style, grad_style = ("", "bold") if grad else ("bold", "")
    table.add_column("", width=1, no_wrap=True)
    table.add_column("tensor", overflow="ellipsis", min_width=6)
    table.add_column("shape", no_wrap=True)
    table.add_column("dtype", no_wrap=True)
    table.add_column("min", justify="right", no_wrap=True, header_style=data_style)
    table.add_column("max", justify="right", no_wrap=True, header_style=data_style)
    table.add_column("∇min", justify="right", no_wrap=True, header_style=grad_style)
    table.add_column("∇max", justify="right", no_wrap=True, header_style=grad_style)
    table.add_column("nan/inf", overflow="ellipsis")
    if results is not None:
        table.add_column("F B", no_wrap=True)
    for row in rows:
        mark = Text("›", style="bold reverse") if row.name == selected else Text(" ")
        name = Text(row.name, style="bold" if row.name == selected else "")
        specials = _specials(row.data)
        grad_specials = _specials(row.grad)
        if grad_specials:
            specials.append(" ∇" if specials else "∇", style=grad_specials.style)
            specials.append_text(grad_specials)
        cells: list[Any] = [
            mark,
            name,
            _shape(row),
            _dtype(row),
            _value(row.data, "min"),
            _value(row.data, "max"),
            _value(row.grad, "min"),
            _value(row.grad, "max"),
            specials,
        ]
        if results is not None:
            verdicts = Text()
            verdicts.append_text(_verdict(results("forward", row.name)))
            verdicts.append(" ")
            verdicts.append_text(_verdict(results("backward", row.name)))
            cells.append(verdicts)
        table.add_row(*cells)
    return table


def comparison_line(
    phase: str, entry: Mapping[str, Any] | None, *, tensor: str | None = None
) -> Text:
    """One line per replayed phase: the verdict and, for a failing tensor, how far off it is."""
    if entry is None:
        return Text(f"{phase}: not replayed", style="dim")
    status = str(entry.get("status", "?"))
    style = {"pass": "green", "fail": "bold red", "error": "bold magenta"}.get(status, "dim")
    line = Text(f"{phase}: ")
    line.append(status.upper() if status in ("fail", "error") else status, style=style)
    if entry.get("error"):
        line.append(f" {entry['error']}")
        return line
    tensors = [t for t in entry.get("tensors") or [] if isinstance(t, dict)]
    chosen = [t for t in tensors if t.get("name") == tensor] or [
        t for t in tensors if not t.get("passed")
    ]
    for t in chosen[:1]:
        line.append(f" {t.get('name')}")
        note = t.get("batch_note")
        if note:
            line.append(f" · {note}", style="yellow")
        err = t.get("max_abs_err")
        if isinstance(err, (int, float)):
            line.append(f" · max|err| {format_number(float(err))}")
        rtol, atol = t.get("rtol_used"), t.get("atol_used")
        if isinstance(rtol, (int, float)) and isinstance(atol, (int, float)):
            line.append(f" (rtol {format_number(float(rtol))}, atol {format_number(float(atol))})")
    return line
