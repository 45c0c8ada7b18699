"""replayer — feed a trace's exact recorded inputs into candidate layers and find the first divergence.

``tensortrace replay TRACE CANDIDATES`` on the command line, or ``replay_trace`` here.
Names load on first use (PEP 562), so the numpy-only parts (``_compare``, ``_diff``, the
pytest plugin when unused, the CLI's parser) never pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BuiltCandidate": "_candidates",
    "CandidateSet": "_candidates",
    "CandidateSpec": "_candidates",
    "load_candidates": "_candidates",
    "load_mapped_weights": "_candidates",
    "reference_weights": "_candidates",
    "weights_from_npy": "_candidates",
    "TensorComparison": "_compare",
    "compare_tensors": "_compare",
    "diff_traces": "_diff",
    "write_report_files": "_outputs",
    "ReplayOptions": "_replay",
    "replay_trace": "_replay",
    "CallResult": "_report",
    "ReplayReport": "_report",
    "splice_run": "_splice",
    "Tolerance": "_tolerance",
    "ToleranceTable": "_tolerance",
    "default_tolerance": "_tolerance",
    "parse_tolerance_overrides": "_tolerance",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'replayer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
