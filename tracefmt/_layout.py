"""Names, numbers and table layouts fixed by spec/trace-format.md (format 1.1)."""

from __future__ import annotations

import enum

import numpy as np

FORMAT_NAME = "tensortrace-trace"
FORMAT_MAJOR = 1
FORMAT_MINOR = 1

MAX_NDIM = 8
HIST_BINS = 32
BATCH_STAT_COLUMNS = ("l2", "max_abs", "nonfinite", "zeros")
MAX_BATCH_STATS = 4096
MAX_ELEMENTS = 1 << 40

HEAP = "heap"
BLOBS = "blobs"
TENSORS = "tensors"
BATCH_STATS = "batch_stats"
EVENTS = "events"
REQUIRED_DATASETS = (HEAP, BLOBS, TENSORS, BATCH_STATS, EVENTS)

FLAG_PAYLOAD = 1
FLAG_SUMMARY = 2
FLAG_REQUIRES_GRAD = 4
# format 1.1: the heap bytes are an encoded payload (spec §4.1), one bit per encoding
FLAG_MASKED_SCALE = 8
FLAG_ZERO_ROWS = 16
FLAG_ENCODING_BITS = FLAG_MASKED_SCALE | FLAG_ZERO_ROWS


class EventKind(enum.IntEnum):
    """The ``kind`` column of ``/events``."""

    RUN = 1
    STEP = 2
    CALL = 3
    BACKWARD = 4
    PARAM_GRADS = 5
    END = 6
    NOTE = 7


TENSOR_ROW = np.dtype(
    [
        ("offset", "<u8"),
        ("nbytes", "<u8"),
        ("dtype", "S16"),
        ("ndim", "u1"),
        ("flags", "u1"),
        ("shape", "<u8", (MAX_NDIM,)),
        ("strides", "<i8", (MAX_NDIM,)),
        ("crc32", "<u4"),
        ("min", "<f8"),
        ("max", "<f8"),
        ("mean", "<f8"),
        ("std", "<f8"),
        ("count", "<u8"),
        ("nan", "<u8"),
        ("posinf", "<u8"),
        ("neginf", "<u8"),
        ("zeros", "<u8"),
        ("hist", "<u8", (HIST_BINS,)),
        ("batch_offset", "<u8"),
        ("batch_count", "<u4"),
    ]
)

EVENT_ROW = np.dtype(
    [
        ("kind", "u1"),
        ("step", "<i8"),
        ("call", "<i8"),
        ("module", "<i4"),
        ("blob_offset", "<u8"),
        ("blob_nbytes", "<u8"),
        ("blob_crc32", "<u4"),
    ]
)
