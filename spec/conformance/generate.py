"""Write the conformance traces of spec/trace-format.md and their manifest.json.

Valid files are written with ``tracefmt.TraceWriter`` and then compacted: copied with raw
h5py into datasets chunked to fit their data (chunk sizes are not part of the format), so
each file is a few KB instead of the writer's 1 MiB heap chunk. Invalid files are built
from valid ones with raw h5py and msgpack, the way a buggy or hostile writer would.

    python spec/conformance/generate.py [OUTDIR]     (default: this folder)

The manifest gives, per file, what a conforming reader does with it: ``valid``,
``incomplete`` (no END event), or ``error`` with the TraceError subclass a full read raises
(open, decode every event, read every referenced tensor). ``validate_exit`` is the status of
``tensortrace validate``; ``expect_deep`` / ``validate_deep_exit`` what ``--deep`` adds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import zlib
from collections import namedtuple
from pathlib import Path
from typing import Any

import h5py
import msgpack
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

import tracefmt  # noqa: E402
from tracefmt import EventKind, ModuleInfo, RunInfo, TraceWriter  # noqa: E402
from tracefmt._writer import set_text_attr  # noqa: E402

PRODUCER = "tensortrace conformance generator"
LINEAR = "torch.nn.modules.linear.Linear"
EMBEDDING = "torch.nn.modules.sparse.Embedding"

# -- known contents ------------------------------------------------------------------------

MINIMAL_X = np.array([[1.0, -2.0, 0.5]], dtype=np.float32)
MINIMAL_W = np.array([[0.25, 0.5, -1.0], [2.0, 0.0, 1.0]], dtype=np.float32)
MINIMAL_B = np.array([0.5, -0.5], dtype=np.float32)
MINIMAL_Y = MINIMAL_X @ MINIMAL_W.T + MINIMAL_B

# Stored bits per dtype (little-endian C order); the same-width unsigned view for dtypes
# numpy lacks. Floats: +0, -0, 1, -1.5, +inf, -inf, a NaN with payload, smallest subnormal.
EVERY_DTYPE_BITS: dict[str, tuple[str, list[int]]] = {
    "float64": ("<u8", [0, 1 << 63, 0x3FF0000000000000, 0xBFF8000000000000,
                        0x7FF0000000000000, 0xFFF0000000000000, 0x7FF8000000000001, 1]),
    "float32": ("<u4", [0, 1 << 31, 0x3F800000, 0xBFC00000, 0x7F800000, 0xFF800000,
                        0x7FC00001, 1]),
    "float16": ("<u2", [0, 0x8000, 0x3C00, 0xBE00, 0x7C00, 0xFC00, 0x7E01, 1]),
    "bfloat16": ("<u2", [0, 0x8000, 0x3F80, 0xBFC0, 0x7F80, 0xFF80, 0x7FC1, 1]),
    "float8_e4m3fn": ("|u1", list(range(256))),
    "float8_e4m3fnuz": ("|u1", list(range(256))),
    "float8_e5m2": ("|u1", list(range(256))),
    "float8_e5m2fnuz": ("|u1", list(range(256))),
    "float8_e8m0fnu": ("|u1", list(range(256))),
    # complex: (re, im) pairs of the float bits
    "complex128": ("<u8", [0x3FF0000000000000, 1 << 63, 0x7FF8000000000001, 0xBFF8000000000000]),
    "complex64": ("<u4", [0x3F800000, 1 << 31, 0x7FC00001, 0xBFC00000]),
    "complex32": ("<u2", [0x3C00, 0x8000, 0x7E01, 0xBE00]),
    "int64": ("<u8", [0, 1, (1 << 64) - 1, 1 << 63, (1 << 63) - 1]),
    "int32": ("<u4", [0, 1, (1 << 32) - 1, 1 << 31, (1 << 31) - 1]),
    "int16": ("<u2", [0, 1, 0xFFFF, 0x8000, 0x7FFF]),
    "int8": ("|u1", [0, 1, 0xFF, 0x80, 0x7F]),
    "uint64": ("<u8", [0, 1, (1 << 64) - 1]),
    "uint32": ("<u4", [0, 1, (1 << 32) - 1]),
    "uint16": ("<u2", [0, 1, 0xFFFF]),
    "uint8": ("|u1", [0, 1, 0xFF]),
    "bool": ("|u1", [0, 1, 1, 0]),
}


# encoded.h5 (format 1.1): a dropout (p = 0.2, so the scale 1.25 is exact) and a lookup
# table's gradient with two non-zero rows
DROPOUT = "torch.nn.modules.dropout.Dropout"
ENCODED_X = np.array([[1.0, -2.0, 0.5, -0.0, 3.0, 1e-3, -4.0, 2.5, 0.25],
                      [-1.5, 6.0, -0.125, 8.0, -7.0, 0.0, 9.5, -3.25, 1.0]], dtype=np.float32)
ENCODED_MASK = np.array([[1, 0, 1, 1, 0, 1, 1, 1, 0],
                         [1, 1, 0, 1, 1, 1, 0, 1, 1]], dtype=bool)
ENCODED_SCALE = 1.25
ENCODED_Y = ENCODED_X * np.where(ENCODED_MASK, np.float32(ENCODED_SCALE), np.float32(0))
ENCODED_TABLE = np.zeros((10, 3), dtype=np.float32)
ENCODED_TABLE[2] = [0.5, -1.0, 2.0]
ENCODED_TABLE[7] = [-0.0, 4.0, 1e-30]


def every_dtype_payload(name: str) -> bytes:
    """The exact heap bytes of the ``kwargs.<name>`` tensor in every_dtype.h5."""
    fmt, values = EVERY_DTYPE_BITS[name]
    return np.array(values, dtype=np.dtype(fmt).newbyteorder("<")).tobytes()


def every_dtype_shape(name: str) -> tuple[int, ...]:
    n = len(EVERY_DTYPE_BITS[name][1])
    if name.startswith("complex"):
        return (n // 2,)
    if name.startswith("float8"):
        return (16, 16)
    return (n,)


@dataclasses.dataclass
class Config:
    """A dataclass argument: becomes an object node."""

    hidden: int
    scale: float
    table: Any


Pair = namedtuple("Pair", ["left", "right"])


class Unrecordable:
    """No msgpack form: becomes an opaque node."""

    def __repr__(self) -> str:
        return "<Unrecordable>"


class Device:
    def __init__(self, name: str) -> None:
        self.name = name


# -- writing -------------------------------------------------------------------------------


def _call(call: int, module: str, type_: str, *, args: Any, outputs: Any, step: int = 0,
          index: int = 0, parent: int | None = None, depth: int = 0, kwargs: Any = None,
          rng: dict | None = None, replayable: bool = True, notes: tuple[str, ...] = ()) -> dict:
    return tracefmt.CallRecord(
        call=call, step=step, module=module, type=type_, index=index, parent=parent, depth=depth,
        training=True, grad_enabled=True, args=args,
        kwargs=kwargs if kwargs is not None else {"$": "dict", "items": []}, outputs=outputs,
        autocast={"cpu": {"enabled": False, "dtype": "bfloat16"}}, rng=rng or {},
        replayable=replayable, notes=notes,
    ).to_dict()


def _t(tid: int) -> dict:
    return {"$": "tensor", "id": tid}


def _tuple(*items: Any) -> dict:
    return {"$": "tuple", "items": list(items)}


def _env() -> dict:
    return {"torch": "2.5.0", "python": "3.11.7", "device": "cpu", "cuda": None,
            "flags": {"deterministic_algorithms": False, "cudnn_deterministic": False,
                      "cudnn_benchmark": False, "allow_tf32_matmul": False,
                      "allow_tf32_cudnn": True, "float32_matmul_precision": "highest"}}


def _opts(mode: str = "full") -> dict:
    return {"mode": mode, "include": [], "exclude": [], "grad_scale": 1.0, "compression": "none",
            "recipe": None, "seed": 0}


def _linear_module(index: int, path: str) -> ModuleInfo:
    ctor = {"args": _tuple(3, 2), "kwargs": {"$": "dict", "items": [["bias", True]]}}
    return ModuleInfo(index, path, LINEAR, ctor, ("weight", "bias"), ())


def write_minimal(path: Path) -> None:
    """One Linear module, one step, one forward call, no backward."""
    with TraceWriter(path, producer=PRODUCER) as w:
        w.write_run(RunInfo((_linear_module(0, ""),), _env(), _opts()))
        wt, bt = w.add_tensor(MINIMAL_W, requires_grad=True), w.add_tensor(MINIMAL_B, requires_grad=True)
        w.add_event(EventKind.STEP, {"step": 0, "params": {"weight": wt, "bias": bt}, "buffers": {}},
                    step=0)
        x, y = w.add_tensor(MINIMAL_X), w.add_tensor(MINIMAL_Y)
        w.add_event(EventKind.CALL, _call(0, "", LINEAR, args=_tuple(_t(x)), outputs=_t(y)),
                    step=0, call=0, module=0)


def write_every_dtype(path: Path) -> None:
    """One call whose kwargs hold one tensor of every dtype, with known bit patterns."""
    with TraceWriter(path, producer=PRODUCER) as w:
        w.write_run(RunInfo((ModuleInfo(0, "", "conformance.Identity"),), _env(), _opts()))
        items = []
        for name in EVERY_DTYPE_BITS:
            storage = tracefmt.storage_dtype(name)
            raw = np.frombuffer(every_dtype_payload(name), dtype=storage).reshape(every_dtype_shape(name))
            items.append([name, _t(w.add_tensor(raw, dtype=name))])
        kwargs = {"$": "dict", "items": items}
        w.add_event(EventKind.CALL, _call(0, "", "conformance.Identity", args=_tuple(),
                                          kwargs=kwargs, outputs=kwargs), step=0, call=0, module=0)


def nested_value(w: TraceWriter) -> tuple[Any, Any]:
    """The args and kwargs of nested_trees.h5, described with tracefmt.describe."""
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([1, 2, 3], dtype=np.int64)
    c = np.array(7.5, dtype=np.float64)

    ids: dict[int, int] = {}

    def leaf(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):  # the same array twice is one tensor
            if id(obj) not in ids:
                strides = (1, 3) if obj is a_t else None
                ids[id(obj)] = w.add_tensor(np.ascontiguousarray(obj), strides=strides)
            return _t(ids[id(obj)])
        if isinstance(obj, np.dtype):
            return {"$": "dtype", "name": obj.name}
        if isinstance(obj, Device):
            return {"$": "device", "name": obj.name}
        return NotImplemented

    a_t = a.T  # non-contiguous: stored in C order, strides (1, 3) recorded
    args = (a_t, [b, None, True, -3, 2.5, (1 << 64) - 1, "text", b"\x00\xff"],
            {"key": c, 7: "int key", None: None},
            Pair(left=b, right=1 + 2j), Config(hidden=4, scale=0.5, table={"inner": [a]}))
    kwargs = {"dtype": np.dtype("float16"), "device": Device("cuda:0"), "thing": Unrecordable()}
    return tracefmt.describe(args, leaf), tracefmt.describe(kwargs, leaf)


def write_nested(path: Path) -> None:
    """Tuples, lists, dicts, objects, scalars, strings, bytes, complex, dtype, device, opaque."""
    with TraceWriter(path, producer=PRODUCER) as w:
        w.write_run(RunInfo((ModuleInfo(0, "", "conformance.Nested"),), _env(), _opts()))
        args, kwargs = nested_value(w)
        out = w.add_tensor(np.array([[1.0, 2.0]], dtype=np.float32))
        outputs = {"$": "object", "type": "conformance.Output",
                   "fields": [["logits", _t(out)], ["aux", None]]}
        w.add_event(EventKind.CALL, _call(0, "", "conformance.Nested", args=args, kwargs=kwargs,
                                          outputs=outputs, replayable=False,
                                          notes=("an input has no recordable form (opaque)",)),
                    step=0, call=0, module=0)


STATS_VALUES = np.array([[0.0, 1.0, np.nan], [np.inf, -2.0, 4.0]], dtype=np.float32)


def write_stats(path: Path) -> None:
    """Stats mode: tensors carry dtype, shape and summary, no payload."""
    with TraceWriter(path, producer=PRODUCER) as w:
        w.write_run(RunInfo((ModuleInfo(0, "", "torch.nn.modules.activation.ReLU"),), _env(),
                            _opts("stats")))
        summary = tracefmt.compute_summary(STATS_VALUES)
        x = w.add_tensor(None, dtype="float32", shape=STATS_VALUES.shape, summary=summary)
        out = tracefmt.compute_summary(np.maximum(STATS_VALUES, 0))
        y = w.add_tensor(None, dtype="float32", shape=STATS_VALUES.shape, summary=out)
        w.add_event(EventKind.CALL, _call(0, "", "torch.nn.modules.activation.ReLU",
                                          args=_tuple(_t(x)), outputs=_t(y)),
                    step=0, call=0, module=0)


def write_backward(path: Path) -> None:
    """Root -> embed, head with head.weight tied to embed.weight; backward and param grads.

    Call ids are given when calls start (root 0, embed 1, head 2); CALL events are written
    when calls finish, so the root's comes last. Backward runs head, embed, root is not
    differentiated (its output is the loss's input: root's backward comes first).
    """
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((5, 3)).astype(np.float32)
    bias = np.zeros(5, dtype=np.float32)
    tokens = np.array([1, 4], dtype=np.int64)
    h = emb[tokens]
    logits = h @ emb.T + bias
    modules = (
        ModuleInfo(0, "", "conformance.TiedLM", None, (), ()),
        ModuleInfo(1, "embed", EMBEDDING,
                   {"args": _tuple(5, 3), "kwargs": {"$": "dict", "items": []}}, ("weight",), ()),
        ModuleInfo(2, "head", LINEAR,
                   {"args": _tuple(3, 5), "kwargs": {"$": "dict", "items": [["bias", True]]}},
                   ("weight", "bias"), (), {"weight": "embed.weight"}),
    )
    with TraceWriter(path, producer=PRODUCER) as w:
        w.write_run(RunInfo(modules, _env(), _opts()))
        we, wb = w.add_tensor(emb, requires_grad=True), w.add_tensor(bias, requires_grad=True)
        w.add_event(EventKind.STEP, {"step": 0, "params": {"embed.weight": we, "head.bias": wb},
                                     "buffers": {}}, step=0)
        t_tok, t_h, t_out = w.add_tensor(tokens), w.add_tensor(h), w.add_tensor(logits)
        w.add_event(EventKind.CALL, _call(1, "embed", EMBEDDING, args=_tuple(_t(t_tok)),
                                          outputs=_t(t_h), parent=0, depth=1),
                    step=0, call=1, module=1)
        w.add_event(EventKind.CALL, _call(2, "head", LINEAR, args=_tuple(_t(t_h)),
                                          outputs=_t(t_out), parent=0, depth=1),
                    step=0, call=2, module=2)
        w.add_event(EventKind.CALL, _call(0, "", "conformance.TiedLM", args=_tuple(_t(t_tok)),
                                          outputs=_t(t_out)), step=0, call=0, module=0)
        g_out = np.full_like(logits, 0.1)
        g_h = g_out @ emb
        t_gout, t_gh = w.add_tensor(g_out), w.add_tensor(g_h)
        for order, (call, module, gout, gargs) in enumerate((
                (0, 0, t_gout, _tuple(None)), (2, 2, t_gout, _tuple(_t(t_gh))),
                (1, 1, t_gh, _tuple(None)))):
            body = tracefmt.BackwardRecord(call, order, _t(gout), gargs).to_dict()
            w.add_event(EventKind.BACKWARD, body, step=0, call=call, module=module)
        g_emb = g_out.T @ h
        np.add.at(g_emb, tokens, g_h)
        grads = {"embed.weight": w.add_tensor(g_emb.astype(np.float32)),
                 "head.bias": w.add_tensor(g_out.sum(0))}
        w.add_event(EventKind.PARAM_GRADS, {"step": 0, "grads": grads, "loss": 1.25}, step=0)


DEDUP_W = np.array([[2.0]], dtype=np.float32)


def write_dedup(path: Path) -> None:
    """One tensor referenced from many places: a's output is b's input, the RNG state and the
    unchanged weight are shared by both calls and both steps."""
    modules = (ModuleInfo(0, "", "conformance.Seq"), _linear_module(1, "a"),
               _linear_module(2, "b"))
    with TraceWriter(path, producer=PRODUCER) as w:
        w.write_run(RunInfo(modules, _env(), _opts()))
        weight = w.add_tensor(DEDUP_W)
        state = w.add_tensor(np.arange(16, dtype=np.uint8))
        call = 0
        for step in (0, 1):
            w.add_event(EventKind.STEP, {"step": step, "params": {"a.weight": weight,
                                                                  "b.weight": weight},
                                         "buffers": {}}, step=step)
            x = w.add_tensor(np.array([[1.0 + step]], dtype=np.float32))
            h = w.add_tensor(np.array([[2.0 + 2 * step]], dtype=np.float32))
            y = w.add_tensor(np.array([[4.0 + 4 * step]], dtype=np.float32))
            for module, path_, a, o in ((1, "a", x, h), (2, "b", h, y)):
                w.add_event(EventKind.CALL, _call(call, path_, LINEAR, args=_tuple(_t(a)),
                                                  outputs=_t(o), step=step,
                                                  rng={"cpu": state}),
                            step=step, call=call, module=module)
                call += 1


def write_encoded(path: Path) -> None:
    """Format 1.1: a dropout's output stored as a masked-scale payload against its input, and
    a zero-rows payload with eight of ten rows left out."""
    with TraceWriter(path, producer=PRODUCER) as w:
        w.write_run(RunInfo((ModuleInfo(0, "", DROPOUT),), _env(), _opts()))
        x = w.add_tensor(ENCODED_X)
        y = w.add_tensor(ENCODED_Y, encoded=tracefmt.encode_masked_scale(
            ENCODED_Y, ENCODED_X, base_id=x, scales=(ENCODED_SCALE,)))
        table = w.add_tensor(ENCODED_TABLE, encoded=tracefmt.encode_zero_rows(ENCODED_TABLE))
        w.add_event(EventKind.CALL, _call(0, "", DROPOUT, args=_tuple(_t(x)), outputs=_t(y),
                                          kwargs={"$": "dict", "items": [["table", _t(table)]]}),
                    step=0, call=0, module=0)


# -- raw h5py ------------------------------------------------------------------------------


def load_raw(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Root attributes and every dataset of a trace, as written (no tracefmt)."""
    with h5py.File(path, "r") as f:
        return dict(f.attrs), {name: f[name][...] for name in f}


def save_raw(path: Path, attrs: dict[str, Any], data: dict[str, np.ndarray], *,
             swmr_kill: bool = False) -> None:
    """Write attributes and datasets the way TraceWriter lays them out, chunked to fit."""
    f = h5py.File(path, "w", libver="latest", track_order=True)
    for k, v in attrs.items():
        if isinstance(v, bytes):
            set_text_attr(f, k, v.decode("utf-8"))
        else:
            f.attrs[k] = v
    compression = attrs.get("compression")
    for name, arr in data.items():
        chunks = (max(1, len(arr)),) + arr.shape[1:]
        kw: dict[str, Any] = {}
        if name == "heap" and compression in ("gzip", "lzf"):
            kw = {"compression": compression}
        f.create_dataset(name, data=arr, maxshape=(None,) + arr.shape[1:], chunks=chunks, **kw)
    if swmr_kill:
        f.swmr_mode = True
        f.flush()
        os._exit(0)  # the file is never closed: its consistency flags stay set
    f.close()


def compact(path: Path, *, minor: int = 0) -> None:
    """Rewrite chunked to fit, labelled format 1.``minor`` (1.0 unless it uses encodings)."""
    attrs, data = load_raw(path)
    attrs["format_minor"] = np.int64(minor)
    path.unlink()
    save_raw(path, attrs, data)


def event_blobs(data: dict[str, np.ndarray]) -> list[bytes]:
    blobs = data["blobs"].tobytes()
    return [blobs[int(e["blob_offset"]):int(e["blob_offset"]) + int(e["blob_nbytes"])]
            for e in data["events"]]


def set_blobs(data: dict[str, np.ndarray], blobs: list[bytes]) -> None:
    """Rewrite /blobs from per-event bytes, with offsets and CRC-32s to match."""
    events = data["events"].copy()
    pos = 0
    for e, blob in zip(events, blobs):
        e["blob_offset"], e["blob_nbytes"], e["blob_crc32"] = pos, len(blob), zlib.crc32(blob)
        pos += len(blob)
    data["events"] = events
    data["blobs"] = np.frombuffer(b"".join(blobs), dtype=np.uint8).copy()


def call_event(data: dict[str, np.ndarray]) -> int:
    return int(np.flatnonzero(data["events"]["kind"] == EventKind.CALL)[0])


def mutate_call(data: dict[str, np.ndarray], change: Any) -> None:
    blobs = event_blobs(data)
    i = call_event(data)
    body = msgpack.unpackb(blobs[i], raw=False, strict_map_key=False)
    change(body)
    blobs[i] = msgpack.packb(body, use_bin_type=True)
    set_blobs(data, blobs)


def _nest(depth: int) -> dict:
    node: Any = _t(0)
    for _ in range(depth):
        node = _tuple(node)
    return node


# -- the manifest --------------------------------------------------------------------------


def build(out: Path) -> list[dict[str, Any]]:
    """Write every conformance file into ``out`` and return the manifest entries."""
    out.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []

    def valid(name: str, writer: Any, description: str, *, minor: int = 0) -> Path:
        p = out / name
        p.unlink(missing_ok=True)
        writer(p)
        compact(p, minor=minor)
        entries.append({"file": name, "expect": "valid", "validate_exit": 0,
                        "description": description})
        return p

    def invalid(name: str, error: str, validate_exit: int, description: str, *,
                attrs: dict[str, Any], data: dict[str, np.ndarray]) -> Path:
        p = out / name
        p.unlink(missing_ok=True)
        save_raw(p, attrs, data)
        entries.append({"file": name, "expect": "error", "error": error,
                        "validate_exit": validate_exit, "description": description})
        return p

    minimal = valid("minimal.h5", write_minimal,
                    "one Linear module, one step, one forward call (no backward)")
    valid("every_dtype.h5", write_every_dtype,
          "one tensor of every dtype with known bits: NaN payloads, -0.0, inf, subnormals, "
          "all 256 codes of each float8 kind")
    valid("nested_trees.h5", write_nested,
          "args/kwargs/outputs with tuple, list, dict, object, None, bool, int, uint64, float, "
          "str, bin, complex, dtype, device and opaque nodes; a transposed (strided) input")
    valid("stats_mode.h5", write_stats, "stats mode: tensors with summaries and no payload")
    valid("backward.h5", write_backward,
          "nested calls written child-first, backward events, param grads, a tied weight")
    valid("dedup.h5", write_dedup,
          "two steps; one tensor referenced from several events (output -> input, RNG state, "
          "unchanged weights)")
    valid("encoded.h5", write_encoded,
          "format 1.1: a dropout output stored as a masked-scale payload against its input, "
          "and a 10-row table with 8 zero rows stored as a zero-rows payload", minor=1)

    def base() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return load_raw(minimal)

    p = out / "not_hdf5.h5"
    p.write_text("tensortrace-trace\nthis is a text file, not HDF5\n")
    entries.append({"file": p.name, "expect": "error", "error": "NotATraceError",
                    "validate_exit": 2, "description": "a text file"})

    attrs, data = base()
    del attrs["format"]
    invalid("no_format_attr.h5", "NotATraceError", 2,
            "HDF5 with the trace's datasets but no format attribute", attrs=attrs, data=data)

    attrs, data = base()
    attrs["format_major"], attrs["format_minor"] = np.int64(2), np.int64(0)
    invalid("future_major.h5", "UnsupportedVersionError", 2, "format version 2.0",
            attrs=attrs, data=data)

    attrs, data = base()
    del data["events"]
    invalid("missing_events.h5", "TraceFormatError", 2, "no /events dataset",
            attrs=attrs, data=data)

    p = out / "truncated.h5"
    raw = minimal.read_bytes()
    p.write_bytes(raw[:len(raw) - 512])
    entries.append({"file": p.name, "expect": "error", "error": "TraceFormatError",
                    "validate_exit": 2, "description": "minimal.h5 without its last 512 bytes"})

    attrs, data = base()
    p = invalid("external_link.h5", "UnsafeTraceError", 2,
                "an external link /extra -> other.h5:/", attrs=attrs, data=data)
    with h5py.File(p, "r+") as f:
        f["extra"] = h5py.ExternalLink("other.h5", "/")

    attrs, data = base()
    p = invalid("soft_link.h5", "UnsafeTraceError", 2, "a soft link /extra -> /heap",
                attrs=attrs, data=data)
    with h5py.File(p, "r+") as f:
        f["extra"] = h5py.SoftLink("/heap")

    attrs, data = base()
    p = invalid("virtual_dataset.h5", "UnsafeTraceError", 2,
                "a virtual dataset /extra mapping other.h5:/data", attrs=attrs, data=data)
    with h5py.File(p, "r+") as f:
        layout = h5py.VirtualLayout(shape=(4,), dtype="u1")
        layout[:] = h5py.VirtualSource("other.h5", "data", shape=(4,))
        f.create_virtual_dataset("extra", layout)

    attrs, data = base()
    p = invalid("external_storage.h5", "UnsafeTraceError", 2,
                "a dataset /extra whose data lives in external file raw.bin",
                attrs=attrs, data=data)
    with h5py.File(p, "r+") as f:
        f.create_dataset("extra", (4,), "u1", external=[("raw.bin", 0, 4)])

    attrs, data = base()
    blobs = event_blobs(data)
    blobs[call_event(data)] = b"\xc1\x00\x01"  # 0xc1 is never used in msgpack
    set_blobs(data, blobs)
    invalid("bad_msgpack.h5", "TraceFormatError", 1,
            "the call event's blob is not msgpack (its CRC-32 matches)", attrs=attrs, data=data)

    attrs, data = base()
    blobs = event_blobs(data)
    blobs[call_event(data)] = msgpack.packb(msgpack.ExtType(5, b"x"))
    set_blobs(data, blobs)
    invalid("msgpack_ext.h5", "TraceFormatError", 1, "the call event's blob is a msgpack ext type",
            attrs=attrs, data=data)

    attrs, data = base()
    mutate_call(data, lambda body: body.__setitem__("args", _nest(40)))
    invalid("msgpack_too_deep.h5", "UnsafeTraceError", 1,
            "the call's args tree nests 40 levels (limit 32)", attrs=attrs, data=data)

    attrs, data = base()
    data["events"]["blob_crc32"][call_event(data)] ^= 1
    invalid("blob_checksum.h5", "IntegrityError", 1,
            "the call event's blob CRC-32 does not match", attrs=attrs, data=data)

    attrs, data = base()
    mutate_call(data, lambda body: body.__setitem__("outputs", _t(99)))
    invalid("tensor_id_out_of_range.h5", "TraceFormatError", 1,
            "the call's output refers to tensor 99 of 4", attrs=attrs, data=data)

    attrs, data = base()
    data["tensors"]["nbytes"][2] -= 4
    invalid("nbytes_mismatch.h5", "TraceFormatError", 1,
            "tensor 2 (shape (1, 3) float32) stores 8 bytes, not 12", attrs=attrs, data=data)

    attrs, data = base()
    data["tensors"]["shape"][2][:2] = (1 << 25, 1 << 25)
    invalid("absurd_shape.h5", "UnsafeTraceError", 1,
            "tensor 2 declares shape (2**25, 2**25): 2**50 elements", attrs=attrs, data=data)

    attrs, data = base()
    data["tensors"]["dtype"][2] = b"float33"
    invalid("unknown_dtype.h5", "TraceFormatError", 1, "tensor 2 has dtype 'float33'",
            attrs=attrs, data=data)

    attrs, data = base()
    row = data["tensors"][2]
    data["heap"][int(row["offset"]) + 5] ^= 0x10
    p = out / "flipped_bit.h5"
    p.unlink(missing_ok=True)
    save_raw(p, attrs, data)
    entries.append({"file": p.name, "expect": "valid", "validate_exit": 0,
                    "expect_deep": "error", "error": "IntegrityError", "validate_deep_exit": 1,
                    "description": "one bit of tensor 2's payload flipped: found only by CRC-32 "
                                   "(validate --deep, read(verify=True))"})

    p = out / "killed.h5"
    p.unlink(missing_ok=True)
    subprocess.run([sys.executable, __file__, "--killed", str(minimal), str(p)], check=True)
    entries.append({"file": p.name, "expect": "incomplete", "validate_exit": 1,
                    "description": "minimal.h5 without its END event, left open in SWMR write "
                                   "mode by a killed writer (readers open it in SWMR read mode)"})
    return entries


def _write_killed(src: Path, dst: Path) -> None:
    """Child process: write ``src`` minus its END event in SWMR mode and die without closing."""
    attrs, data = load_raw(src)
    keep = data["events"]["kind"] != EventKind.END
    data["events"] = data["events"][keep]
    save_raw(dst, attrs, data, swmr_kill=True)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--killed"]:
        _write_killed(Path(argv[1]), Path(argv[2]))
        return 0
    out = Path(argv[0]) if argv else HERE
    entries = build(out)
    (out / "manifest.json").write_text(json.dumps(entries, indent=2) + "\n")
    print(f"wrote {len(entries)} files and manifest.json to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
