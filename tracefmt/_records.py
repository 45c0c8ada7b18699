"""Frozen records for what a trace holds, parsed from and written to msgpack maps.

Each record has ``from_dict`` (validating: a malformed map is a TraceFormatError) and
``to_dict`` (the exact map the spec describes). Tree-valued fields stay tree nodes; use
``tracefmt.rebuild`` or ``iter_tensor_leaves`` on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._dtypes import dtype_info
from ._errors import TraceFormatError
from ._summary import TensorSummary
from ._tree import check_tree, iter_tensor_leaves

__all__ = [
    "ModuleInfo",
    "RunInfo",
    "StepRecord",
    "ParamGradsRecord",
    "CallRecord",
    "BackwardRecord",
    "TensorInfo",
]

_EMPTY_TUPLE = {"$": "tuple", "items": []}
_EMPTY_DICT = {"$": "dict", "items": []}


def _get(d: Any, key: str, types: type | tuple[type, ...], what: str, default: Any = ...) -> Any:
    if not isinstance(d, dict):
        raise TraceFormatError(f"{what} is not a map")
    if key not in d:
        if default is ...:
            raise TraceFormatError(f"{what} lacks required key {key!r}")
        return default
    value = d[key]
    if value is None and default is None:
        return None
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise TraceFormatError(f"{what}: {key!r} has type {type(value).__name__}")
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _id_map(d: Any, what: str) -> dict[str, int]:
    if not isinstance(d, dict):
        raise TraceFormatError(f"{what} is not a map")
    for k, v in d.items():
        if not isinstance(k, str) or not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise TraceFormatError(f"{what} has a bad entry {k!r}: {v!r}")
    return dict(d)


@dataclass(frozen=True)
class ModuleInfo:
    """One module of the recorded model: where it sits, what it is, how it was built."""

    index: int
    path: str
    type: str
    ctor: dict | None = None  # {"args": tuple node, "kwargs": dict node}
    params: tuple[str, ...] = ()
    buffers: tuple[str, ...] = ()
    shared: dict[str, str] = field(default_factory=dict)  # local name -> canonical full name

    @property
    def name(self) -> str:
        return self.path or "<root>"

    def full_name(self, local: str) -> str:
        """The model-level name of a local parameter or buffer, following weight sharing."""
        if local in self.shared:
            return self.shared[local]
        return f"{self.path}.{local}" if self.path else local

    @classmethod
    def from_dict(cls, d: dict, index: int) -> ModuleInfo:
        what = f"module {index}"
        ctor = _get(d, "ctor", dict, what, None)
        if ctor is not None:
            check_tree(ctor.get("args", _EMPTY_TUPLE))
            check_tree(ctor.get("kwargs", _EMPTY_DICT))
        params = _get(d, "params", list, what, [])
        buffers = _get(d, "buffers", list, what, [])
        shared = _get(d, "shared", dict, what, {})
        if not all(isinstance(x, str) for x in [*params, *buffers, *shared, *shared.values()]):
            raise TraceFormatError(f"{what}: parameter and buffer names must be strings")
        return cls(index, _get(d, "path", str, what), _get(d, "type", str, what), ctor,
                   tuple(params), tuple(buffers), dict(shared))

    def to_dict(self) -> dict:
        return {"path": self.path, "type": self.type, "ctor": self.ctor,
                "params": list(self.params), "buffers": list(self.buffers), "shared": self.shared}


@dataclass(frozen=True)
class RunInfo:
    """The first event: the model's modules, the environment, the recording options."""

    modules: tuple[ModuleInfo, ...]
    environment: dict
    options: dict

    @classmethod
    def from_dict(cls, d: dict) -> RunInfo:
        mods = _get(d, "modules", list, "run event")
        return cls(
            tuple(ModuleInfo.from_dict(m, i) for i, m in enumerate(mods)),
            _get(d, "environment", dict, "run event", {}),
            _get(d, "options", dict, "run event", {}),
        )

    def to_dict(self) -> dict:
        return {"modules": [m.to_dict() for m in self.modules],
                "environment": self.environment, "options": self.options}


@dataclass(frozen=True)
class StepRecord:
    """Weights at the start of a step: full parameter/buffer name -> tensor id."""

    step: int
    params: dict[str, int]
    buffers: dict[str, int]

    @classmethod
    def from_dict(cls, d: dict) -> StepRecord:
        return cls(_get(d, "step", int, "step event"),
                   _id_map(_get(d, "params", dict, "step event", {}), "step params"),
                   _id_map(_get(d, "buffers", dict, "step event", {}), "step buffers"))

    def to_dict(self) -> dict:
        return {"step": self.step, "params": self.params, "buffers": self.buffers}


@dataclass(frozen=True)
class ParamGradsRecord:
    """Per-parameter gradients after a step's backward, and the loss."""

    step: int
    grads: dict[str, int]
    loss: float | None = None

    @classmethod
    def from_dict(cls, d: dict) -> ParamGradsRecord:
        loss = _get(d, "loss", (int, float), "param_grads event", None)
        return cls(_get(d, "step", int, "param_grads event"),
                   _id_map(_get(d, "grads", dict, "param_grads event", {}), "param grads"),
                   None if loss is None else float(loss))

    def to_dict(self) -> dict:
        return {"step": self.step, "grads": self.grads, "loss": self.loss}


@dataclass(frozen=True)
class BackwardRecord:
    """A call's gradients: w.r.t. its outputs (given) and its inputs (produced)."""

    call: int
    order: int
    grad_outputs: Any
    grad_args: Any = field(default_factory=lambda: _EMPTY_TUPLE)
    grad_kwargs: Any = field(default_factory=lambda: _EMPTY_DICT)
    recomputes: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> BackwardRecord:
        what = "backward event"
        rec = cls(_get(d, "call", int, what), _get(d, "order", int, what),
                  d.get("grad_outputs") if isinstance(d, dict) else None,
                  _get(d, "grad_args", dict, what, _EMPTY_TUPLE),
                  _get(d, "grad_kwargs", dict, what, _EMPTY_DICT),
                  _get(d, "recomputes", int, what, 0))
        for node in (rec.grad_outputs, rec.grad_args, rec.grad_kwargs):
            check_tree(node)
        return rec

    def to_dict(self) -> dict:
        return {"call": self.call, "order": self.order, "grad_outputs": self.grad_outputs,
                "grad_args": self.grad_args, "grad_kwargs": self.grad_kwargs,
                "recomputes": self.recomputes}

    def tensors(self) -> dict[str, int]:
        """Gradient tensors by the name of the data tensor they belong to."""
        out = dict(iter_tensor_leaves(self.grad_outputs, "outputs"))
        out.update(iter_tensor_leaves(self.grad_args, "args"))
        out.update(iter_tensor_leaves(self.grad_kwargs, "kwargs"))
        return out


@dataclass(frozen=True)
class CallRecord:
    """One forward call of one module, with what replay needs to be exact."""

    call: int
    step: int
    module: str
    type: str
    index: int
    parent: int | None
    depth: int
    training: bool
    grad_enabled: bool
    args: Any
    kwargs: Any
    outputs: Any
    inference_mode: bool = False
    autocast: dict = field(default_factory=dict)
    rng: dict = field(default_factory=dict)
    buffers_before: dict[str, int] = field(default_factory=dict)
    buffers_after: dict[str, int] = field(default_factory=dict)
    replayable: bool = True
    notes: tuple[str, ...] = ()
    backward: BackwardRecord | None = None

    @property
    def label(self) -> str:
        """``path#index`` — how the CLI names a call."""
        return f"{self.module or '<root>'}#{self.index}"

    def tensors(self) -> dict[str, int]:
        """Data tensors by name: ``args.0``, ``kwargs.mask``, ``outputs`` / ``outputs.1``."""
        out = dict(iter_tensor_leaves(self.args, "args"))
        out.update(iter_tensor_leaves(self.kwargs, "kwargs"))
        out.update(iter_tensor_leaves(self.outputs, "outputs"))
        return out

    def grad_tensors(self) -> dict[str, int]:
        return self.backward.tensors() if self.backward else {}

    @classmethod
    def from_dict(cls, d: dict) -> CallRecord:
        what = "call event"
        parent = _get(d, "parent", int, what, None)
        notes = _get(d, "notes", list, what, [])
        rng = _get(d, "rng", dict, what, {})
        rec = cls(
            call=_get(d, "call", int, what), step=_get(d, "step", int, what),
            module=_get(d, "module", str, what), type=_get(d, "type", str, what),
            index=_get(d, "index", int, what), parent=parent, depth=_get(d, "depth", int, what, 0),
            training=_get(d, "training", bool, what), grad_enabled=_get(d, "grad_enabled", bool, what),
            args=_get(d, "args", dict, what), kwargs=_get(d, "kwargs", dict, what, _EMPTY_DICT),
            outputs=d.get("outputs"), inference_mode=_get(d, "inference_mode", bool, what, False),
            autocast=_get(d, "autocast", dict, what, {}), rng=rng,
            buffers_before=_id_map(_get(d, "buffers_before", dict, what, {}), "buffers_before"),
            buffers_after=_id_map(_get(d, "buffers_after", dict, what, {}), "buffers_after"),
            replayable=_get(d, "replayable", bool, what, True),
            notes=tuple(str(n) for n in notes),
        )
        for node in (rec.args, rec.kwargs, rec.outputs):
            check_tree(node)
        return rec

    def to_dict(self) -> dict:
        return {
            "call": self.call, "step": self.step, "module": self.module, "type": self.type,
            "index": self.index, "parent": self.parent, "depth": self.depth,
            "training": self.training, "grad_enabled": self.grad_enabled,
            "inference_mode": self.inference_mode, "autocast": self.autocast, "rng": self.rng,
            "args": self.args, "kwargs": self.kwargs, "outputs": self.outputs,
            "buffers_before": self.buffers_before, "buffers_after": self.buffers_after,
            "replayable": self.replayable, "notes": list(self.notes),
        }


@dataclass(frozen=True)
class TensorInfo:
    """A row of ``/tensors``: dtype, shape, recorded strides, payload location, summary.

    ``offset``, ``nbytes`` and ``crc32`` describe the bytes stored in ``/heap``: the values
    themselves, or with ``encoding`` (format 1.1, spec §4.1) their encoded form, which
    ``TraceReader.read`` decodes. ``has_payload`` says the values can be read either way.
    """

    id: int
    dtype: str
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int
    nbytes: int
    crc32: int
    has_payload: bool
    requires_grad: bool
    summary: TensorSummary | None
    encoding: str | None = None  # "masked-scale" or "zero-rows"

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def value_nbytes(self) -> int:
        """numel × itemsize: the size of the values once read (``nbytes`` unless encoded)."""
        if self.encoding is None:
            return self.nbytes
        return self.numel * dtype_info(self.dtype).itemsize
