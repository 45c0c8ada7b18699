"""Replay results: per-call records, the report, and its JSON, JUnit and terminal forms."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree as ET

from ._compare import TensorComparison

__all__ = ["CallResult", "ReplayReport"]


@dataclass
class CallResult:
    """The verdict on one call in one phase."""

    call: int
    module: str
    type: str
    phase: str  # "forward" | "backward"
    status: str  # "pass" | "fail" | "error" | "skipped"
    step: int = 0
    index: int = 0
    tensors: list[TensorComparison] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None
    seconds: float = 0.0
    candidate: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.module or '<root>'}#{self.index}"

    @property
    def bad_batch_indices(self) -> list[int]:
        out: set[int] = set()
        for t in self.tensors:
            if not t.passed:
                out.update(t.bad_batch_indices)
        return sorted(out)

    def worst(self) -> TensorComparison | None:
        failing = [t for t in self.tensors if not t.passed]
        pool = failing or self.tensors
        if not pool:
            return None
        return max(pool, key=lambda t: _num(t.max_abs_err))

    def to_dict(self) -> dict[str, Any]:
        return {
            "call": self.call,
            "module": self.module,
            "type": self.type,
            "phase": self.phase,
            "status": self.status,
            "step": self.step,
            "index": self.index,
            "candidate": self.candidate,
            "bad_batch_indices": self.bad_batch_indices,
            "tensors": [t.to_dict() for t in self.tensors],
            "error": self.error,
            "traceback": self.traceback,
            "seconds": round(self.seconds, 6),
            "notes": self.notes,
        }


def _num(x: float | None) -> float:
    return -1.0 if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


@dataclass
class ReplayReport:
    """All call results in report order: forward calls in forward order, then backward calls
    in the order their backward ran."""

    trace: str
    candidates: str
    device: str
    results: list[CallResult]
    tolerances: dict[str, Any] = field(default_factory=dict)
    mode: str = "isolated"

    def counts(self) -> dict[str, int]:
        c = {"calls": len(self.results), "passed": 0, "failed": 0, "errors": 0, "skipped": 0}
        key = {"pass": "passed", "fail": "failed", "error": "errors", "skipped": "skipped"}
        for r in self.results:
            c[key[r.status]] += 1
        return c

    def first_divergence(self, phase: str) -> CallResult | None:
        return next(
            (r for r in self.results if r.phase == phase and r.status in ("fail", "error")), None
        )

    @property
    def ok(self) -> bool:
        c = self.counts()
        return c["failed"] == 0 and c["errors"] == 0

    def to_dict(self) -> dict[str, Any]:
        fwd, bwd = self.first_divergence("forward"), self.first_divergence("backward")
        return {
            "trace": self.trace,
            "candidates": self.candidates,
            "device": self.device,
            "mode": self.mode,
            "tolerances": self.tolerances,
            "summary": self.counts(),
            "first_divergence": {
                "forward": fwd.to_dict() if fwd else None,
                "backward": bwd.to_dict() if bwd else None,
            },
            "calls": [r.to_dict() for r in self.results],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False, default=_json_default)

    def to_junit(self) -> str:
        """One test case per replayed call, in a suite per phase."""
        root = ET.Element("testsuites", name="tensortrace replay")
        for phase in ("forward", "backward"):
            rows = [r for r in self.results if r.phase == phase]
            suite = ET.SubElement(
                root,
                "testsuite",
                name=f"tensortrace.{phase}",
                tests=str(len(rows)),
                failures=str(sum(r.status == "fail" for r in rows)),
                errors=str(sum(r.status == "error" for r in rows)),
                skipped=str(sum(r.status == "skipped" for r in rows)),
                time=f"{sum(r.seconds for r in rows):.6f}",
            )
            for r in rows:
                case = ET.SubElement(
                    suite,
                    "testcase",
                    classname=f"{phase}.{r.module or 'root'}",
                    name=f"call {r.call} {r.label} [{phase}]",
                    time=f"{r.seconds:.6f}",
                )
                if r.status == "fail":
                    el = ET.SubElement(case, "failure", message=describe_failure(r))
                    el.text = "\n".join(t.message for t in r.tensors if not t.passed)
                elif r.status == "error":
                    el = ET.SubElement(case, "error", message=r.error or "candidate raised")
                    el.text = r.traceback or ""
                elif r.status == "skipped":
                    ET.SubElement(case, "skipped", message="; ".join(r.notes) or "not replayable")
        ET.indent(root)
        return ET.tostring(root, encoding="unicode", xml_declaration=True)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def describe_failure(r: CallResult) -> str:
    """One sentence: which tensor, how far off, which batch elements."""
    if r.status == "error":
        return f"candidate raised: {r.error}"
    bad = [t for t in r.tensors if not t.passed]
    if not bad:
        return "passed"
    w = max(bad, key=lambda t: _num(t.max_abs_err))
    text = f"{w.name}: {w.message}"
    if w.batch_note and w.batch_note not in text:
        text += f" — {w.batch_note}"
    if len(bad) > 1:
        text += f" (+{len(bad) - 1} more tensors)"
    return text


def results_in_order(
    forward: Iterable[CallResult], backward: Iterable[CallResult]
) -> list[CallResult]:
    return [*forward, *backward]
