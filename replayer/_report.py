"""Replay results: per-call records, the report, and its JSON, JUnit and terminal forms."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree as ET

from ._compare import TensorComparison

__all__ = ["CallResult", "ReplayReport", "StepResult"]


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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CallResult:
        """Inverse of ``to_dict`` (``bad_batch_indices`` is derived, so it is not read back)."""
        return cls(
            call=int(data["call"]), module=data["module"], type=data["type"],
            phase=data["phase"], status=data["status"], step=int(data.get("step", 0)),
            index=int(data.get("index", 0)),
            tensors=[TensorComparison.from_dict(t) for t in data.get("tensors", [])],
            error=data.get("error"), traceback=data.get("traceback"),
            seconds=float(data.get("seconds", 0.0)), candidate=data.get("candidate", ""),
            notes=list(data.get("notes", [])),
        )


def _num(x: float | None) -> float:
    return -1.0 if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


@dataclass
class StepResult:
    """Whole-step comparisons of two runs (diff, splice): the loss, and parameter gradients
    that belong to no compared call."""

    step: int
    loss_reference: float | None = None
    loss_candidate: float | None = None
    tensors: list[TensorComparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.tensors)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "status": "pass" if self.passed else "fail",
            "loss_reference": _finite_or_str(self.loss_reference),
            "loss_candidate": _finite_or_str(self.loss_candidate),
            "tensors": [t.to_dict() for t in self.tensors],
            "notes": self.notes,
        }


def _finite_or_str(x: float | None) -> float | str | None:
    """JSON has no NaN or Inf: those become strings, as in tensor comparisons."""
    if x is None or math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


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
    steps: list[StepResult] = field(default_factory=list)

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
        return c["failed"] == 0 and c["errors"] == 0 and all(s.passed for s in self.steps)

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
            "steps": [s.to_dict() for s in self.steps],
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
        if self.steps:
            suite = ET.SubElement(root, "testsuite", name="tensortrace.steps",
                                  tests=str(len(self.steps)),
                                  failures=str(sum(not s.passed for s in self.steps)),
                                  errors="0", skipped="0", time="0")
            for s in self.steps:
                case = ET.SubElement(suite, "testcase", classname="steps", name=f"step {s.step}",
                                     time="0")
                if not s.passed:
                    bad = [t for t in s.tensors if not t.passed]
                    el = ET.SubElement(case, "failure", message=f"{bad[0].name}: {bad[0].message}")
                    el.text = "\n".join(f"{t.name}: {t.message}" for t in bad)
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
