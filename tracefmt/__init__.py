"""tracefmt — the tensortrace trace format (spec/trace-format.md), with numpy, h5py and msgpack only.

The torch side (recorder, replayer) and other frameworks write and read traces through
``TraceWriter`` and ``open_trace``; nothing here imports torch.
"""

from ._dtypes import DTYPES, DtypeInfo, decode_values, dtype_info, encode_values, storage_dtype
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
from ._layout import FORMAT_MAJOR, FORMAT_MINOR, FORMAT_NAME, HIST_BINS, MAX_NDIM, EventKind
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
from ._results import RESULTS_FORMAT, ResultsReader, open_results, write_results
from ._summary import TensorSummary, compute_summary
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
from ._writer import COMPRESSIONS, TraceWriter

__all__ = [
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
    "MAX_NDIM",
    "ModuleInfo",
    "NotATraceError",
    "ObjectNode",
    "Opaque",
    "ParamGradsRecord",
    "RESULTS_FORMAT",
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
    "TraceWriteError",
    "TraceWriter",
    "UnsafeTraceError",
    "UnsupportedVersionError",
    "UsageError",
    "check_tree",
    "compute_summary",
    "decode_values",
    "default_leaf",
    "describe",
    "dtype_info",
    "encode_values",
    "has_opaque",
    "iter_tensor_leaves",
    "open_results",
    "open_trace",
    "pack_blob",
    "rebuild",
    "storage_dtype",
    "unpack_blob",
    "write_results",
]
