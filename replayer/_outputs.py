"""Writing a report's files: JSON, JUnit XML, and the results HDF5 the TUI reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

import tracefmt

from ._report import ReplayReport

__all__ = ["write_report_files"]


def _numpy(t: Any) -> np.ndarray:
    """A torch tensor as numpy (torch imported only then: diff reports hold numpy already)."""
    if isinstance(t, np.ndarray):
        return t
    import torch

    t = t.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.complex32) or "float8" in str(t.dtype):
        t = t.float() if not t.is_complex() else t.to(torch.complex64)
    return t.numpy()


def write_report_files(report: ReplayReport, *, json_path: str | None = None,
                       junit_path: str | None = None, results_path: str | None = None) -> None:
    """Write whichever of the three outputs were asked for."""
    try:
        if json_path:
            Path(json_path).write_text(report.to_json())
        if junit_path:
            Path(junit_path).write_text(report.to_junit())
    except OSError as exc:
        raise tracefmt.TraceWriteError(f"cannot write report ({exc.strerror})",
                                       path=exc.filename) from None
    if results_path:
        outputs = getattr(report, "outputs", {}) or {}
        tensors = ((call, phase, name, _numpy(t))
                   for (call, phase), named in outputs.items() for name, t in named.items())
        tracefmt.write_results(results_path, json.loads(report.to_json()), tensors)
