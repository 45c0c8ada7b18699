"""tracefmt — the tensortrace trace format (spec/trace-format.md), with numpy, h5py and msgpack only.

The torch side (recorder, replayer) and other frameworks write and read traces through
``TraceWriter`` and ``open_trace``; nothing here imports torch.
"""

from ._dtypes import DTYPES, DtypeInfo, decode_values, dtype_info, encode_values, storage_dtype
from ._encoding import MASKED_SCALE_DTYPES, encode_masked_scale, encode_zero_rows
from ._errors import (
    IncompleteTraceError,
    IntegrityError,
    NotATraceError,
    TraceError,
    TraceFormatError,
    TraceNotFoundError,
    TraceWriteError,
    UnsafeTraceError,
    UnsupportedVersionError,
    UsageError,
)
from ._layout import (
    BATCH_STAT_COLUMNS,
    FORMAT_MAJOR,
    FORMAT_MINOR,
    FORMAT_NAME,
    HIST_BINS,
    MAX_BATCH_STATS,
    MAX_NDIM,
    EventKind,
)
from ._reader import TraceReader, open_trace
from ._records import (
    BackwardRecord,
    CallRecord,
    ModuleInfo,
    ParamGradsRecord,
    RunInfo,
    StepRecord,
    TensorInfo,
)
from ._repair import RepairReport, repair_trace
from ._results import RESULTS_FORMAT, ResultsReader, open_results, write_results
from ._summary import TensorSummary, compute_summary
from ._traceset import (  # trace sets: one trace per rank of a distributed run
    RankMismatch,
    TraceSet,
    cross_rank_alerts,
    is_traceset,
    open_trace_or_rank,
    open_traceset,
    resolve_rank_path,
)
from ._tree import (
    ObjectNode,
    Opaque,
    TensorRef,
    check_tree,
    default_leaf,
    describe,
    has_opaque,
    iter_tensor_leaves,
    pack_blob,
    rebuild,
    unpack_blob,
)
from ._validate import ValidationReport, validate_trace
from ._writer import COMPRESSIONS, TraceWriter

__all__ = [
    "BATCH_STAT_COLUMNS",
    "BackwardRecord",
    "COMPRESSIONS",
    "CallRecord",
    "DTYPES",
    "DtypeInfo",
    "EventKind",
    "FORMAT_MAJOR",
    "FORMAT_MINOR",
    "FORMAT_NAME",
    "HIST_BINS",
    "IncompleteTraceError",
    "IntegrityError",
    "MASKED_SCALE_DTYPES",
    "MAX_BATCH_STATS",
    "MAX_NDIM",
    "ModuleInfo",
    "NotATraceError",
    "ObjectNode",
    "Opaque",
    "ParamGradsRecord",
    "RESULTS_FORMAT",
    "RankMismatch",
    "RepairReport",
    "ResultsReader",
    "RunInfo",
    "StepRecord",
    "TensorInfo",
    "TensorRef",
    "TensorSummary",
    "TraceError",
    "TraceFormatError",
    "TraceNotFoundError",
    "TraceReader",
    "TraceSet",
    "TraceWriteError",
    "TraceWriter",
    "UnsafeTraceError",
    "UnsupportedVersionError",
    "UsageError",
    "ValidationReport",
    "check_tree",
    "compute_summary",
    "cross_rank_alerts",
    "decode_values",
    "default_leaf",
    "describe",
    "dtype_info",
    "encode_masked_scale",
    "encode_values",
    "encode_zero_rows",
    "has_opaque",
    "is_traceset",
    "iter_tensor_leaves",
    "open_results",
    "open_trace",
    "open_trace_or_rank",
    "open_traceset",
    "pack_blob",
    "rebuild",
    "repair_trace",
    "resolve_rank_path",
    "storage_dtype",
    "unpack_blob",
    "validate_trace",
    "write_results",
]
