"""Tolerances for comparing a candidate tensor with a recorded reference.

Defaults per dtype follow ``torch.testing.assert_close`` for ``rtol`` (float64 1e-7, float32
1.3e-6, float16 1e-3, bfloat16 1.6e-2, float8 e4m3 0.125, e5m2 0.25; complex as its component
float; integers and bool exact). The absolute floor is where this module departs from torch.

The absolute floor follows scale
--------------------------------
A fixed ``atol=1e-5`` is wrong in both directions. Gradients deep in a network are often
entirely below 1e-5, so a fixed floor passes a completely wrong gradient. And an output that is
zero in exact arithmetic (a bias gradient that cancels by symmetry) comes out as rounding noise
whose size is set by what went *into* the computation, not by the near-zero result: two correct
implementations disagree on it completely, elementwise. So the floor is a fraction of the scale
of the computation::

    scale          = max(max|reference|, input_scale or 0)       # finite elements only
    effective_atol = max(atol, rtol * atol_scale_factor * scale)
    element passes  <=>  |candidate - reference| <= effective_atol + rtol * |reference|

``atol`` is an optional user floor (default 0). ``input_scale`` is an optional magnitude of the
computation's inputs supplied by the caller: rounding error of a sum is bounded by
``eps * sum|terms|``, so for a reduction pass ``sum|terms|`` (for a bias gradient the sum of
``|grad_output|`` over the reduced axes; for a matmul the largest entry of ``|A| @ |B|``);
``max|grad_output|`` is enough for short reductions. Replay and diff pass
``broadcast_term_sum`` for a parameter gradient that sums grad outputs over their leading
dims (a bias), else ``max|grad_output|``. Without it an all-zero reference only
matches an all-zero candidate (or one within the user ``atol``): there is nothing else to
judge noise against. With ``atol_scale_factor=1`` the floor is one relative tolerance of the
largest magnitude involved, a normwise test: elements much smaller than the tensor's largest
are judged against the large ones, which is right for sums and products with cancellation,
lenient for elementwise-relative bugs in tiny elements (lower the factor for such layers).

Float64 noise floor
-------------------
When the caller also has a float64 recomputation ``f64`` of the same layer from the same inputs,
it judges the candidate against the reference's own error instead (as PyTorch's dynamo accuracy
minifier does). With ``err_ref = |reference - f64|``, ``err_cand = |candidate - f64|``,
``k = noise_factor`` (2; 3 for float16, bfloat16 and float8), ``eps`` the dtype's machine
epsilon and ``s = input_scale or 0``, the candidate passes when::

    RMSE(err_cand) <= k * RMSE(err_ref) + eps * max(RMS(f64), s)
    max(err_cand)  <= k * max(max(err_ref), eps * max(max|f64|, s))

The ``eps`` slacks (one rounding unit at the typical and at the largest magnitude) keep a
reference that happens to be exact, as an identity or a copy is, from demanding bit-exact
candidates; the RMSE slack uses the typical magnitude so that it stays small next to the
reference's own error. An element is counted as a mismatch when its ``err_cand`` exceeds the
max limit; NaN/Inf positions are left out of both errors (they match or mismatch as usual).

Overrides
---------
``parse_tolerance_overrides`` builds a ``ToleranceTable`` from ``[GLOB:]key=value,...`` specs.
Resolution is per field: dtype default, then global overrides in order, then every module
override whose ``fnmatch`` pattern matches the module path, in declaration order; the last
one that sets a field wins (as in ``.gitignore``), so list general patterns before specific
ones. Integer and bool dtypes stay exact whatever the overrides say.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal

import numpy as np

__all__ = [
    "DEFAULT_RTOL",
    "MACHINE_EPS",
    "DtypeKind",
    "Tolerance",
    "ToleranceOverride",
    "ResolvedTolerance",
    "ToleranceTable",
    "normalize_dtype",
    "dtype_kind",
    "component_dtype",
    "machine_eps",
    "default_tolerance",
    "comparison_scale",
    "broadcast_term_sum",
    "effective_atol",
    "parse_tolerance_overrides",
]

DtypeKind = Literal["float", "complex", "int", "bool"]

MACHINE_EPS: Mapping[str, float] = {
    "float64": 2.0**-52,
    "float32": 2.0**-23,
    "tf32": 2.0**-10,
    "float16": 2.0**-10,
    "bfloat16": 2.0**-7,
    "float8_e4m3fn": 2.0**-3,
    "float8_e4m3fnuz": 2.0**-3,
    "float8_e5m2": 2.0**-2,
    "float8_e5m2fnuz": 2.0**-2,
    "float8_e8m0fnu": 1.0,
}

DEFAULT_RTOL: Mapping[str, float] = {
    "float64": 1e-7,
    "float32": 1.3e-6,
    "float16": 1e-3,
    "bfloat16": 1.6e-2,
    "float8_e4m3fn": 0.125,
    "float8_e4m3fnuz": 0.125,
    "float8_e5m2": 0.25,
    "float8_e5m2fnuz": 0.25,
    "float8_e8m0fnu": 1.0,
}

_COMPLEX_COMPONENT: Mapping[str, str] = {
    "complex128": "float64",
    "complex64": "float32",
    "complex32": "float16",
}
_INT_DTYPES = frozenset(["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"])
_LOW_PRECISION = frozenset(
    ["float16", "bfloat16"] + [name for name in DEFAULT_RTOL if name.startswith("float8")]
)
_KEYS = ("rtol", "atol", "atol_scale_factor", "noise_factor")
_KEY_ALIASES = {"scale": "atol_scale_factor", "noise": "noise_factor"}


def normalize_dtype(name: str) -> str:
    """Canonical dtype name; accepts a ``torch.`` prefix because str(torch dtype) has one."""
    canonical = name.strip().removeprefix("torch.")
    if canonical in DEFAULT_RTOL or canonical in _COMPLEX_COMPONENT:
        return canonical
    if canonical in _INT_DTYPES or canonical == "bool":
        return canonical
    known = sorted([*DEFAULT_RTOL, *_COMPLEX_COMPONENT, *_INT_DTYPES, "bool"])
    raise ValueError(f"unknown dtype {name!r}; expected one of {', '.join(known)}")


def dtype_kind(name: str) -> DtypeKind:
    """Whether a dtype compares as real float, complex, integer or bool."""
    canonical = normalize_dtype(name)
    if canonical in _COMPLEX_COMPONENT:
        return "complex"
    if canonical in _INT_DTYPES:
        return "int"
    if canonical == "bool":
        return "bool"
    return "float"


def component_dtype(name: str) -> str:
    """The real float dtype whose precision governs ``name`` (itself for real floats)."""
    canonical = normalize_dtype(name)
    return _COMPLEX_COMPONENT.get(canonical, canonical)


def machine_eps(name: str) -> float:
    """Spacing of the dtype's floats just above 1 (0 for exact dtypes); ``tf32`` is accepted."""
    if name == "tf32":
        return MACHINE_EPS["tf32"]
    return MACHINE_EPS.get(component_dtype(name), 0.0)


def _check_nonnegative(label: str, value: float) -> float:
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{label} must be a finite number >= 0, got {value!r}")
    return number


@dataclass(frozen=True)
class Tolerance:
    """How far a candidate may be from the reference; see the module docstring for the rule."""

    rtol: float
    atol: float = 0.0
    atol_scale_factor: float = 1.0
    noise_factor: float = 2.0

    def __post_init__(self) -> None:
        for key in _KEYS:
            object.__setattr__(self, key, _check_nonnegative(key, getattr(self, key)))

    @property
    def exact(self) -> bool:
        """True when nothing but bit-equal values can pass."""
        return self.rtol == 0.0 and self.atol == 0.0

    def to_dict(self) -> dict[str, float]:
        """Plain floats, JSON-ready."""
        return {key: getattr(self, key) for key in _KEYS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tolerance:
        """Inverse of ``to_dict``; missing optional keys take their defaults."""
        return cls(**{key: float(data[key]) for key in _KEYS if key in data})


def default_tolerance(dtype: str) -> Tolerance:
    """The per-dtype default: torch's rtol, no fixed atol, floor following scale."""
    component = component_dtype(dtype)
    if component in _INT_DTYPES or component == "bool":
        return Tolerance(rtol=0.0, atol=0.0, atol_scale_factor=0.0, noise_factor=0.0)
    noise = 3.0 if component in _LOW_PRECISION else 2.0
    return Tolerance(rtol=DEFAULT_RTOL[component], noise_factor=noise)


def comparison_scale(reference_scale: float, input_scale: float | None = None) -> float:
    """The magnitude errors are judged against: the larger of the output's and the inputs'."""
    scale = _check_nonnegative("reference_scale", reference_scale)
    if input_scale is None:
        return scale
    return max(scale, _check_nonnegative("input_scale", input_scale))


def broadcast_term_sum(shape: tuple[int, ...], grads: Iterable[Any]) -> float | None:
    """The ``input_scale`` of a parameter gradient that sums grad outputs over their leading
    dims (a bias, a norm's shift): the largest per-element sum of |grad output| over those
    dims, summed over ``grads`` (numpy arrays or torch tensors, e.g. one per call), which
    bounds the sum's rounding error. Where the terms cancel (a key projection's bias under
    softmax has an exactly zero gradient) the gradient is rounding noise of that size, which
    the largest |grad output| would call a bug. None when no grad ends in ``shape``."""
    total = None
    for g in grads:
        if not shape or g.ndim <= len(shape) or tuple(g.shape[-len(shape):]) != tuple(shape):
            continue
        if isinstance(g, np.ndarray):
            col = np.abs(g.astype(np.float64, copy=False).reshape(-1, *shape)).sum(axis=0)
        else:  # torch: reduced where it lives; one parameter's worth comes back
            col = g.detach().double().abs().reshape(-1, *shape).sum(0).cpu().numpy()
        col = col[np.isfinite(col)]
        if col.size:
            total = (total or 0.0) + float(col.max())
    return total


def effective_atol(
    tolerance: Tolerance, *, reference_scale: float, input_scale: float | None = None
) -> float:
    """``max(atol, rtol * atol_scale_factor * scale)``: the floor that follows scale."""
    scale = comparison_scale(reference_scale, input_scale)
    return max(tolerance.atol, tolerance.rtol * (tolerance.atol_scale_factor * scale))


@dataclass(frozen=True)
class ToleranceOverride:
    """Some fields of a Tolerance, for every module (``pattern`` None) or for a module glob."""

    pattern: str | None = None
    rtol: float | None = None
    atol: float | None = None
    atol_scale_factor: float | None = None
    noise_factor: float | None = None

    def __post_init__(self) -> None:
        for key in _KEYS:
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, _check_nonnegative(key, value))

    def matches(self, module: str) -> bool:
        """Global overrides match everything; others ``fnmatch`` the module path (case-sensitive)."""
        return self.pattern is None or fnmatchcase(module, self.pattern)

    def set_fields(self) -> dict[str, float]:
        """Only the fields this override sets."""
        return {key: getattr(self, key) for key in _KEYS if getattr(self, key) is not None}

    def to_dict(self) -> dict[str, Any]:
        """Pattern plus the fields it sets; unset fields are omitted."""
        return {"pattern": self.pattern, **self.set_fields()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ToleranceOverride:
        """Inverse of ``to_dict``; unknown keys are an error so typos do not pass silently."""
        unknown = set(data) - {"pattern", *_KEYS}
        if unknown:
            raise ValueError(f"unknown tolerance key(s): {', '.join(sorted(unknown))}")
        values = {key: float(data[key]) for key in _KEYS if data.get(key) is not None}
        return cls(pattern=data.get("pattern"), **values)


@dataclass(frozen=True)
class ResolvedTolerance:
    """The tolerance one comparison used, and where each field came from (for the report)."""

    dtype: str
    module: str
    tolerance: Tolerance
    sources: Mapping[str, str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the tolerance fields plus a field -> source map."""
        return {
            "dtype": self.dtype,
            "module": self.module,
            "tolerance": self.tolerance.to_dict(),
            "sources": dict(self.sources),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResolvedTolerance:
        """Inverse of ``to_dict``."""
        return cls(
            dtype=str(data["dtype"]),
            module=str(data["module"]),
            tolerance=Tolerance.from_dict(data["tolerance"]),
            sources={str(k): str(v) for k, v in data["sources"].items()},
        )


@dataclass(frozen=True)
class ToleranceTable:
    """Per-dtype defaults under global overrides under per-module-glob overrides."""

    overrides: tuple[ToleranceOverride, ...] = ()

    def resolve(self, dtype: str, module: str = "") -> ResolvedTolerance:
        """Field by field: default, then globals in order, then matching globs in order."""
        canonical = normalize_dtype(dtype)
        base = default_tolerance(canonical)
        values = base.to_dict()
        sources = dict.fromkeys(_KEYS, f"default:{canonical}")
        if dtype_kind(canonical) not in ("int", "bool"):
            ordered = [o for o in self.overrides if o.pattern is None]
            ordered += [o for o in self.overrides if o.pattern is not None and o.matches(module)]
            for override in ordered:
                origin = "global" if override.pattern is None else f"module:{override.pattern}"
                for key, value in override.set_fields().items():
                    values[key] = value
                    sources[key] = origin
        return ResolvedTolerance(canonical, module, Tolerance(**values), sources)

    def tolerance_for(self, dtype: str, module: str = "") -> Tolerance:
        """Shortcut for ``resolve(...).tolerance``."""
        return self.resolve(dtype, module).tolerance

    def to_dict(self) -> dict[str, Any]:
        """``{"global": {...}, "modules": [{"pattern": ..., ...}, ...]}``, order preserved."""
        merged: dict[str, float] = {}
        for override in self.overrides:
            if override.pattern is None:
                merged.update(override.set_fields())
        modules = [o.to_dict() for o in self.overrides if o.pattern is not None]
        return {"global": merged, "modules": modules}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ToleranceTable:
        """Inverse of ``to_dict``; ``modules`` may also be a ``{pattern: {...}}`` mapping."""
        overrides: list[ToleranceOverride] = []
        global_part = data.get("global") or {}
        if global_part:
            overrides.append(ToleranceOverride.from_dict({**global_part, "pattern": None}))
        modules = data.get("modules") or []
        if isinstance(modules, Mapping):
            modules = [{**v, "pattern": k} for k, v in modules.items()]
        for entry in modules:
            if not entry.get("pattern"):
                raise ValueError("a module tolerance override needs a non-empty 'pattern'")
            overrides.append(ToleranceOverride.from_dict(entry))
        return cls(tuple(overrides))


def _parse_one(spec: str) -> ToleranceOverride:
    text = spec.strip()
    pattern: str | None = None
    head, sep, tail = text.partition(":")
    if sep and "=" not in head:
        pattern, text = head.strip(), tail
        if not pattern:
            raise ValueError(f"tolerance override {spec!r}: empty module pattern before ':'")
    values: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, eq, raw = item.partition("=")
        key = _KEY_ALIASES.get(key.strip(), key.strip())
        if not eq or key not in _KEYS:
            raise ValueError(
                f"tolerance override {spec!r}: expected KEY=VALUE with KEY one of "
                f"{', '.join(_KEYS)} (aliases: scale, noise), got {item!r}"
            )
        try:
            values[key] = float(raw)
        except ValueError:
            raise ValueError(
                f"tolerance override {spec!r}: {raw.strip()!r} is not a number"
            ) from None
    if not values:
        raise ValueError(f"tolerance override {spec!r} sets nothing")
    return ToleranceOverride(pattern=pattern, **values)


def parse_tolerance_overrides(specs: Iterable[str] | str | None) -> ToleranceTable:
    """Build a table from ``[GLOB:]key=value[,key=value...]`` strings, in order.

    ``"rtol=1e-3"`` overrides every module; ``"encoder.layers.*:rtol=1e-2,atol=1e-6"`` only
    modules whose path matches the glob. Keys: rtol, atol, atol_scale_factor (alias scale),
    noise_factor (alias noise). Bad specs raise ValueError naming the spec.
    """
    if specs is None:
        return ToleranceTable()
    if isinstance(specs, str):
        specs = [specs]
    return ToleranceTable(tuple(_parse_one(spec) for spec in specs))
