"""replayer — feed a trace's exact recorded inputs into candidate layers and find the first divergence.

``tensortrace replay TRACE CANDIDATES`` on the command line, or ``replay_trace`` here.
"""

from ._candidates import (
    BuiltCandidate,
    CandidateSet,
    CandidateSpec,
    load_candidates,
    load_mapped_weights,
    reference_weights,
    weights_from_npy,
)
from ._compare import TensorComparison, compare_tensors
from ._outputs import write_report_files
from ._replay import ReplayOptions, replay_trace
from ._report import CallResult, ReplayReport
from ._tolerance import Tolerance, ToleranceTable, default_tolerance, parse_tolerance_overrides

__all__ = [
    "BuiltCandidate",
    "CallResult",
    "CandidateSet",
    "CandidateSpec",
    "ReplayOptions",
    "ReplayReport",
    "TensorComparison",
    "Tolerance",
    "ToleranceTable",
    "compare_tensors",
    "default_tolerance",
    "load_candidates",
    "load_mapped_weights",
    "parse_tolerance_overrides",
    "reference_weights",
    "replay_trace",
    "weights_from_npy",
    "write_report_files",
]
