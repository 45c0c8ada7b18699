"""Compare a candidate tensor with its recorded reference, to tell float noise from a bug.

All math is numpy float64 (complex128 for complex dtypes), so trace-vs-trace diffs need no
torch. The dtype is given by name: bfloat16 and float8 arrays arrive already decoded to float32
values and the name says their real precision (for ULP counting and default tolerances).

Three modes, reported in ``TensorComparison.mode``:

* ``"tolerance"``: the rule in ``replayer._tolerance`` (absolute floor following scale).
* ``"noise"``: a float64 recomputation was given; the candidate's error against it is judged
  against the reference's own error (float64 noise floor, also in ``replayer._tolerance``).
* ``"exact"``: integers and bool (and any dtype with rtol = atol = 0): bit-equal values only.

Non-finite values: NaN in the same position on both sides counts as equal when ``equal_nan``
(default, as torch's ``equal_nan=True``); NaN on one side only is a mismatch; Inf matches Inf
of the same sign only. Error statistics (max abs/rel error, RMSE, cosine, ULP) are over the
positions finite on both sides; non-finite mismatches are counted separately and make any
finite ``min_rtol_to_pass``/``min_atol_to_pass`` impossible (reported as None).

JSON encoding (``to_dict``): finite floats are plain floats; NaN and +/-Inf are the strings
``"nan"``, ``"inf"``, ``"-inf"`` (JSON has no such numbers, and a null would hide them); null
means "not applicable" (e.g. statistics of a shape mismatch); index tuples become lists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

import numpy as np

from ._batch import (
    BatchElementStats,
    batch_arrays,
    batch_axis,
    batch_breakdown,
    batch_note,
    encode_float,
)
from ._tolerance import (
    Tolerance,
    comparison_scale,
    default_tolerance,
    dtype_kind,
    effective_atol,
    machine_eps,
    normalize_dtype,
)
from ._ulp import finite_ulp_max, ulp_distance

__all__ = [
    "CompareMode",
    "BatchElementStats",
    "NoiseStats",
    "TensorComparison",
    "compare_tensors",
    "batch_breakdown",
    "batch_note",
    "ulp_distance",
]

CompareMode = Literal["tolerance", "noise", "exact", "shape_mismatch"]

# Re-running with min_rtol/min_atol must pass despite float64 rounding in the check itself;
# 1e-14 relative covers the handful of roundings involved (see compare_tensors).
_ROUND_UP = 1.0 + 1e-14


def _dec(value: Any) -> float | None:
    if value is None:
        return None
    return float(value)  # float() also parses "nan", "inf", "-inf"


def _index(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _pct(fraction: float) -> str:
    if 0 < fraction < 0.001:
        return f"{fraction * 100:.2g}%"
    return f"{fraction:.1%}"


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class NoiseStats:
    """Float64 noise-floor figures: the candidate's error vs the reference's own error."""

    rmse_ref_err: float
    rmse_cand_err: float
    max_ref_err: float
    max_cand_err: float
    factor: float
    rmse_slack: float
    max_slack: float
    rmse_limit: float
    max_limit: float
    ratio: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (module docstring for NaN/Inf)."""
        return {f.name: encode_float(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NoiseStats:
        """Inverse of ``to_dict``."""
        values = {f.name: _dec(data[f.name]) for f in fields(cls)}
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TensorComparison:
    """Everything one candidate-vs-reference comparison found, for the report and the TUI.

    ``min_rtol_to_pass``: smallest rtol that passes with atol, atol_scale_factor and the
    scale unchanged (the floor moves with rtol, as it would on a re-run).
    ``min_atol_to_pass``: smallest effective absolute floor that passes with rtol unchanged;
    setting it as ``Tolerance.atol`` passes. Both None when no value can pass (non-finite
    mismatch, or rtol cannot help against an all-zero scale) and in noise mode.
    ``max_abs_err_index``/``max_rel_err_index`` are None when nothing differs. ``max_rel_err``
    is ``inf`` where a zero reference meets a nonzero candidate, as in torch. ``ulp_max`` is
    None when a NaN/Inf position mismatches (its distance is undefined or meaningless).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    passed: bool
    mode: CompareMode
    message: str
    candidate_dtype: str
    candidate_shape: tuple[int, ...]
    shape_mismatch: bool = False
    dtype_mismatch: bool = False
    numel: int = 0
    max_abs_err: float | None = None
    max_abs_err_index: tuple[int, ...] | None = None
    max_rel_err: float | None = None
    max_rel_err_index: tuple[int, ...] | None = None
    mismatch_count: int | None = None
    mismatch_fraction: float | None = None
    nonfinite_mismatch_count: int = 0
    ulp_max: int | None = None
    cosine: float | None = None
    rmse: float | None = None
    nan_ref: int = 0
    nan_cand: int = 0
    inf_ref: int = 0
    inf_cand: int = 0
    equal_nan: bool = True
    reference_scale: float | None = None
    input_scale: float | None = None
    rtol_used: float | None = None
    atol_used: float | None = None
    min_rtol_to_pass: float | None = None
    min_atol_to_pass: float | None = None
    batch_dim: int | None = None
    batch_size: int | None = None
    bad_batch_indices: list[int] = field(default_factory=list)
    batch_note: str = ""
    tolerance: Tolerance | None = None
    noise: NoiseStats | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; key names are fixed by the report schema."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _FLOAT_FIELDS:
                out[f.name] = encode_float(value)
            elif f.name in _TUPLE_FIELDS:
                out[f.name] = None if value is None else [int(i) for i in value]
            elif f.name in ("tolerance", "noise"):
                out[f.name] = None if value is None else value.to_dict()
            elif f.name == "bad_batch_indices":
                out[f.name] = [int(i) for i in value]
            else:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorComparison:
        """Inverse of ``to_dict``; optional keys missing from ``data`` take their defaults."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            raw = data[f.name]
            if f.name in _FLOAT_FIELDS:
                values[f.name] = _dec(raw)
            elif f.name in _TUPLE_FIELDS:
                values[f.name] = None if raw is None else tuple(int(i) for i in raw)
            elif f.name == "tolerance":
                values[f.name] = None if raw is None else Tolerance.from_dict(raw)
            elif f.name == "noise":
                values[f.name] = None if raw is None else NoiseStats.from_dict(raw)
            elif f.name == "bad_batch_indices":
                values[f.name] = [int(i) for i in raw]
            else:
                values[f.name] = raw
        return cls(**values)


_FLOAT_FIELDS = frozenset(
    [
        "max_abs_err",
        "max_rel_err",
        "mismatch_fraction",
        "cosine",
        "rmse",
        "reference_scale",
        "input_scale",
        "rtol_used",
        "atol_used",
        "min_rtol_to_pass",
        "min_atol_to_pass",
    ]
)
_TUPLE_FIELDS = frozenset(["shape", "candidate_shape", "max_abs_err_index", "max_rel_err_index"])


# ---------------------------------------------------------------------------------------------
# The comparison


def _max_abs(x: np.ndarray) -> float:
    if x.size == 0:
        return 0.0
    if np.iscomplexobj(x):
        return float(np.max(np.abs(x)))
    return float(max(abs(float(np.max(x))), abs(float(np.min(x)))))


def _rms(x: np.ndarray, count: int, peak: float) -> float:
    """Root mean square of a non-negative real array, safe from overflow/underflow."""
    if count == 0 or peak == 0.0:
        return 0.0
    flat = x.reshape(-1)
    if 1e-150 < peak < 1e150:
        return math.sqrt(float(np.dot(flat, flat)) / count)
    scaled = flat / peak
    return peak * math.sqrt(float(np.dot(scaled, scaled)) / count)


def _cosine(r: np.ndarray, c: np.ndarray, r_peak: float, c_peak: float) -> float:
    """Cosine of the flattened tensors; both zero is 1.0, one zero is 0.0."""
    if r_peak == 0.0 and c_peak == 0.0:
        return 1.0
    if r_peak == 0.0 or c_peak == 0.0:
        return 0.0
    a, b = r.reshape(-1), c.reshape(-1)
    if not (1e-70 < r_peak < 1e70 and 1e-70 < c_peak < 1e70):  # keep |a|^2 * |b|^2 finite
        a, b = a / r_peak, b / c_peak
    dot = float(np.vdot(a, b).real)
    norms = float(np.vdot(a, a).real) * float(np.vdot(b, b).real)
    return min(1.0, max(-1.0, dot / math.sqrt(norms)))  # sqrt(x*x) == x: identical gives 1.0


def _as_values(x: np.ndarray, kind: str, label: str) -> np.ndarray:
    if kind == "complex":
        return np.asarray(x, dtype=np.complex128)
    if np.iscomplexobj(x):
        raise ValueError(f"{label} is complex but the dtype is {kind}")
    return np.asarray(x, dtype=np.float64)


@dataclass(frozen=True)
class _NonFinite:
    """Where NaN/Inf sit and which of those positions mismatch."""

    both_finite: np.ndarray | None  # None: every position finite on both sides
    mismatch: np.ndarray | None
    nan_ref: int = 0
    nan_cand: int = 0
    inf_ref: int = 0
    inf_cand: int = 0
    nan_ref_only: int = 0
    nan_cand_only: int = 0
    count: int = 0


def _nonfinite(r: np.ndarray, c: np.ndarray, *, equal_nan: bool) -> _NonFinite:
    fin_r, fin_c = np.isfinite(r), np.isfinite(c)
    if fin_r.all() and fin_c.all():
        return _NonFinite(None, None)
    nan_r, nan_c = np.isnan(r), np.isnan(c)
    both_finite = fin_r & fin_c
    same = (nan_r & nan_c) if equal_nan else np.zeros_like(nan_r)
    same |= ~nan_r & ~nan_c & ~both_finite & (r == c)
    mismatch = ~both_finite & ~same
    return _NonFinite(
        both_finite=both_finite,
        mismatch=mismatch,
        nan_ref=int(np.count_nonzero(nan_r)),
        nan_cand=int(np.count_nonzero(nan_c)),
        inf_ref=int(np.count_nonzero(~fin_r & ~nan_r)),
        inf_cand=int(np.count_nonzero(~fin_c & ~nan_c)),
        nan_ref_only=int(np.count_nonzero(nan_r & ~nan_c)),
        nan_cand_only=int(np.count_nonzero(nan_c & ~nan_r)),
        count=int(np.count_nonzero(mismatch)),
    )


def _nonfinite_phrase(nf: _NonFinite, equal_nan: bool) -> str:
    if nf.count == 0:
        return ""
    parts = []
    if nf.nan_cand_only:
        parts.append(f"{nf.nan_cand_only} NaN in candidate only")
    if nf.nan_ref_only:
        parts.append(f"{nf.nan_ref_only} NaN in reference only")
    rest = nf.count - nf.nan_cand_only - nf.nan_ref_only
    if not equal_nan:
        both_nan = nf.nan_ref - nf.nan_ref_only
        if both_nan:
            parts.append(f"{both_nan} NaN on both sides (equal_nan=False)")
        rest -= both_nan
    if rest:
        parts.append(f"{rest} Inf mismatched")
    return "; ".join(parts)


def _min_rtol(
    d: np.ndarray,
    absr: np.ndarray,
    tol: Tolerance,
    scale: float,
    buffer: np.ndarray | None = None,
) -> float | None:
    """Smallest rtol x with max(atol, x*F*S) + x*|r| >= |d| everywhere (F*S fixed).

    Per element that is min((|d| - atol) / |r|, |d| / (F*S + |r|)) where |d| > atol, else 0.
    ``buffer``, a scratch array shaped like ``d``, saves a full-size allocation.
    """
    over = d > tol.atol
    if not over.any():
        return 0.0
    floor_scale = tol.atol_scale_factor * scale
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if tol.atol == 0.0:  # the common case: the second term is always the smaller
            need = np.add(absr, floor_scale, out=buffer)
            np.divide(d, need, out=need)
            if not floor_scale > 0.0:  # else d == 0 already gives 0; only 0/0 needs clearing
                need[~over] = 0.0
        else:
            ys, rs = d[over], absr[over]
            need = np.minimum((ys - tol.atol) / rs, ys / (floor_scale + rs))
    worst = float(np.max(need))
    return worst * _ROUND_UP if math.isfinite(worst) else None


def compare_tensors(
    reference: np.ndarray,
    candidate: np.ndarray,
    *,
    dtype: str,
    tolerance: Tolerance | None = None,
    input_scale: float | None = None,
    batch_dim: int | None = 0,
    float64_reference: np.ndarray | None = None,
    name: str = "",
    equal_nan: bool = True,
    candidate_dtype: str | None = None,
    check_dtype: bool = True,
) -> TensorComparison:
    """Compare candidate with reference; see the module docstrings for every rule.

    ``tolerance`` None takes the dtype default. ``input_scale`` is the magnitude of what went
    into the computation (the absolute floor follows it). ``float64_reference``, a float64
    recomputation from the same inputs, switches to noise-floor mode. ``candidate_dtype``
    names the candidate's dtype when it differs; that fails unless ``check_dtype`` is False
    (then the looser default tolerance of the two applies). Shapes must match exactly.
    """
    ref_dtype = normalize_dtype(dtype)
    cand_dtype = ref_dtype if candidate_dtype is None else normalize_dtype(candidate_dtype)
    if input_scale is not None:
        input_scale = comparison_scale(0.0, input_scale)
    kind = dtype_kind(ref_dtype)
    dtype_mismatch = cand_dtype != ref_dtype
    if tolerance is None:
        tolerance = default_tolerance(ref_dtype)
        if dtype_mismatch and not check_dtype:
            tolerance = max(tolerance, default_tolerance(cand_dtype), key=lambda t: t.rtol)
    ref_arr, cand_arr = np.asarray(reference), np.asarray(candidate)
    common: dict[str, Any] = {
        "name": name,
        "dtype": ref_dtype,
        "shape": tuple(int(n) for n in ref_arr.shape),
        "candidate_dtype": cand_dtype,
        "candidate_shape": tuple(int(n) for n in cand_arr.shape),
        "dtype_mismatch": dtype_mismatch,
        "equal_nan": equal_nan,
        "input_scale": input_scale,
        "batch_dim": batch_dim,
        "tolerance": tolerance,
    }
    prefix = (
        f"dtype mismatch: reference {ref_dtype}, candidate {cand_dtype}; "
        if dtype_mismatch and check_dtype
        else ""
    )
    if ref_arr.shape != cand_arr.shape:
        return TensorComparison(
            passed=False,
            mode="shape_mismatch",
            message=f"{prefix}Shape mismatch: reference {ref_arr.shape}, candidate {cand_arr.shape}",
            shape_mismatch=True,
            **common,
        )
    axis = batch_axis(ref_arr.ndim, batch_dim)
    common["batch_dim"] = axis
    f64 = None
    if float64_reference is not None:
        if kind not in ("float", "complex"):
            raise ValueError(f"float64_reference needs a floating dtype, not {ref_dtype}")
        f64 = np.asarray(float64_reference)
        if f64.shape != ref_arr.shape:
            raise ValueError(
                f"float64_reference shape {f64.shape} differs from reference shape {ref_arr.shape}"
            )
        f64 = np.atleast_1d(f64)
    shape = ref_arr.shape
    batch_size = None if axis is None else int(shape[axis])
    ref_arr, cand_arr = np.atleast_1d(ref_arr), np.atleast_1d(cand_arr)  # 0-d: work on (1,)
    if f64 is None and not dtype_mismatch:
        same = _identical(ref_arr, cand_arr, kind=kind, equal_nan=equal_nan,
                          tolerance=tolerance, input_scale=input_scale, batch_size=batch_size,
                          common=common)
        if same is not None:
            return same
    exact = kind in ("int", "bool") and tolerance.exact
    mode: CompareMode = (
        "noise" if f64 is not None else ("exact" if tolerance.exact else "tolerance")
    )
    value_kind = "complex" if kind == "complex" else "float"
    r = _as_values(ref_arr, value_kind, "reference")
    c = _as_values(cand_arr, value_kind, "candidate")
    nf = (
        _nonfinite(r, c, equal_nan=equal_nan)
        if kind in ("float", "complex")
        else _NonFinite(None, None)
    )
    if nf.both_finite is not None:
        r = np.where(nf.both_finite, r, 0)
        c = np.where(nf.both_finite, c, 0)
    n_finite = r.size if nf.both_finite is None else int(np.count_nonzero(nf.both_finite))

    diff = np.asarray(np.subtract(c, r))  # asarray: 0-d operands give a scalar
    d = np.abs(diff) if diff.dtype.kind == "c" else np.abs(diff, out=diff)
    del diff
    absr = np.abs(r)
    ref_scale = float(np.max(absr)) if r.size else 0.0
    cand_scale = _max_abs(c)
    scale = comparison_scale(ref_scale, input_scale)

    noise: NoiseStats | None = None
    rtol_used: float | None = tolerance.rtol
    min_rtol: float | None = None
    min_atol: float | None = None
    if exact:
        atol_used: float | None = 0.0
        mismatch = ref_arr != cand_arr
        min_atol = float(np.max(d)) if d.size else 0.0
        min_rtol = _min_rtol(d, absr, tolerance, scale)
    elif f64 is not None:
        noise, mismatch = _noise_floor(r, c, f64, nf, ref_dtype, tolerance, input_scale)
        rtol_used, atol_used = None, noise.max_limit
    else:
        atol_used = effective_atol(tolerance, reference_scale=ref_scale, input_scale=input_scale)
        scratch = np.multiply(absr, tolerance.rtol)
        scratch += atol_used
        mismatch = d > scratch
        if nf.count == 0 and d.size:
            np.multiply(absr, tolerance.rtol, out=scratch)  # the same rounding as the check
            np.subtract(d, scratch, out=scratch)
            min_atol = max(0.0, float(np.max(scratch))) * _ROUND_UP
            min_rtol = _min_rtol(d, absr, tolerance, scale, buffer=scratch)
        elif d.size == 0:
            min_atol, min_rtol = 0.0, 0.0
        del scratch
    if nf.mismatch is not None:
        mismatch |= nf.mismatch

    mismatch_count = int(np.count_nonzero(mismatch))
    passed = mismatch_count == 0 and not (dtype_mismatch and check_dtype)
    if noise is not None:
        passed = passed and noise.rmse_cand_err <= noise.rmse_limit

    max_abs = max_rel = 0.0
    abs_index = rel_index = None
    if d.size:
        flat = int(np.argmax(d))
        max_abs = float(d.reshape(-1)[flat])
        if max_abs > 0:
            abs_index = _index(flat, shape)
            # tiny or zero |reference| gives inf, the honest answer; 0/0 is no error at all
            with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
                rel = np.divide(d, absr)
            np.fmax(rel, 0.0, out=rel)  # fmax drops the NaN of 0/0
            flat_rel = int(np.argmax(rel))
            max_rel = float(rel.reshape(-1)[flat_rel])
            rel_index = _index(flat_rel, shape)
            del rel

    ulp_max: int | None = None
    if nf.count == 0:
        if kind in ("int", "bool") or nf.both_finite is None:  # original arrays: no re-cast
            ulp_max = finite_ulp_max(ref_arr, cand_arr, ref_dtype)
        else:
            ulp_max = finite_ulp_max(r, c, ref_dtype)

    bad: list[int] = []
    if axis is not None and mismatch_count:
        _, counts = batch_arrays(d, mismatch, axis)
        bad = [int(i) for i in np.flatnonzero(counts)]
    note = batch_note(bad, batch_size or 0)
    fraction = mismatch_count / r.size if r.size else 0.0
    result = TensorComparison(
        passed=passed,
        mode=mode,
        message="",
        numel=int(r.size),
        max_abs_err=max_abs,
        max_abs_err_index=abs_index,
        max_rel_err=max_rel,
        max_rel_err_index=rel_index,
        mismatch_count=mismatch_count,
        mismatch_fraction=fraction,
        nonfinite_mismatch_count=nf.count,
        ulp_max=ulp_max,
        cosine=_cosine(r, c, ref_scale, cand_scale),
        rmse=_rms(d, n_finite, max_abs),
        nan_ref=nf.nan_ref,
        nan_cand=nf.nan_cand,
        inf_ref=nf.inf_ref,
        inf_cand=nf.inf_cand,
        reference_scale=ref_scale,
        rtol_used=rtol_used,
        atol_used=atol_used,
        min_rtol_to_pass=min_rtol,
        min_atol_to_pass=min_atol,
        batch_size=batch_size,
        bad_batch_indices=bad,
        batch_note=note,
        noise=noise,
        **common,
    )
    return replace(result, message=prefix + _message(result, _nonfinite_phrase(nf, equal_nan)))


def _identical(
    ref: np.ndarray,
    cand: np.ndarray,
    *,
    kind: str,
    equal_nan: bool,
    tolerance: Tolerance,
    input_scale: float | None,
    batch_size: int | None,
    common: dict[str, Any],
) -> TensorComparison | None:
    """The comparison of bitwise-identical arrays, or None when they differ.

    A correct candidate on the reference's device usually reproduces it bit for bit; one
    memcmp then replaces the float64 statistics and ULP keys (most of replay's time per
    call). Every field equals what the full comparison computes for such arrays.
    """
    if ref.dtype != cand.dtype:
        return None
    a, b = np.ascontiguousarray(ref), np.ascontiguousarray(cand)
    bytes_a, bytes_b = a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)
    if not np.array_equal(bytes_a[:4096], bytes_b[:4096]):  # most differing pairs stop here
        return None
    if bytes_a.size % 8 == 0:  # eight bytes per comparison
        bytes_a, bytes_b = bytes_a.view(np.uint64), bytes_b.view(np.uint64)
    if not np.array_equal(bytes_a, bytes_b):
        return None
    nan = inf = 0
    values = a
    if kind in ("float", "complex"):
        finite = np.isfinite(a)
        if not finite.all():
            nans = np.isnan(a)
            nan = int(np.count_nonzero(nans))
            if nan and not equal_nan:
                return None  # NaN == NaN is a mismatch then: the full path counts them
            inf = int(np.count_nonzero(~finite & ~nans))
            values = np.where(finite, a, 0)
    # as the full path: real magnitudes are exact in their own dtype, complex ones need float64
    if kind == "complex":
        values = values.astype(np.complex128)
    elif kind != "float":
        values = values.astype(np.float64)
    ref_scale = _max_abs(values)
    result = TensorComparison(
        passed=True,
        mode="exact" if tolerance.exact else "tolerance",
        message="",
        numel=int(a.size),
        max_abs_err=0.0,
        max_abs_err_index=None,
        max_rel_err=0.0,
        max_rel_err_index=None,
        mismatch_count=0,
        mismatch_fraction=0.0,
        nonfinite_mismatch_count=0,
        ulp_max=0,
        cosine=1.0,
        rmse=0.0,
        nan_ref=nan,
        nan_cand=nan,
        inf_ref=inf,
        inf_cand=inf,
        reference_scale=ref_scale,
        rtol_used=tolerance.rtol,
        atol_used=(0.0 if kind in ("int", "bool") and tolerance.exact
                   else effective_atol(tolerance, reference_scale=ref_scale,
                                       input_scale=input_scale)),
        min_rtol_to_pass=0.0,
        min_atol_to_pass=0.0,
        batch_size=batch_size,
        bad_batch_indices=[],
        batch_note=batch_note([], batch_size or 0),
        noise=None,
        **common,
    )
    return replace(result, message=_message(result, ""))


def _noise_floor(
    r: np.ndarray,
    c: np.ndarray,
    f64_raw: np.ndarray,
    nf: _NonFinite,
    dtype: str,
    tolerance: Tolerance,
    input_scale: float | None,
) -> tuple[NoiseStats, np.ndarray]:
    """Candidate error vs float64 against the reference's own; returns stats and mismatches."""
    f = _as_values(f64_raw, "complex" if np.iscomplexobj(r) else "float", "float64_reference")
    usable = np.isfinite(f)
    if nf.both_finite is not None:
        usable &= nf.both_finite
    all_usable = bool(usable.all())
    if not all_usable:
        f = np.where(usable, f, 0)
    err_ref = np.abs(r - f)
    err_cand = np.abs(c - f)
    if not all_usable:
        err_ref[~usable] = 0.0
        err_cand[~usable] = 0.0
    count = int(np.count_nonzero(usable))
    eps = machine_eps(dtype)
    f_abs = np.abs(f)
    f_peak = float(np.max(f_abs)) if f_abs.size else 0.0
    rmse_slack = eps * comparison_scale(_rms(f_abs, count, f_peak), input_scale)
    max_slack = eps * comparison_scale(f_peak, input_scale)
    del f_abs
    k = tolerance.noise_factor
    max_ref = float(np.max(err_ref)) if err_ref.size else 0.0
    max_cand = float(np.max(err_cand)) if err_cand.size else 0.0
    rmse_ref = _rms(err_ref, count, max_ref)
    rmse_cand = _rms(err_cand, count, max_cand)
    max_limit = k * max(max_ref, max_slack)
    stats = NoiseStats(
        rmse_ref_err=rmse_ref,
        rmse_cand_err=rmse_cand,
        max_ref_err=max_ref,
        max_cand_err=max_cand,
        factor=k,
        rmse_slack=rmse_slack,
        max_slack=max_slack,
        rmse_limit=k * rmse_ref + rmse_slack,
        max_limit=max_limit,
        ratio=rmse_cand / rmse_ref if rmse_ref > 0 else None,
    )
    return stats, err_cand > max_limit


def _message(result: TensorComparison, nonfinite: str) -> str:
    """One line in the style of torch.testing's mismatch message."""
    total = result.numel
    parts: list[str] = []
    if total == 0:
        return "Tensor-likes are close (empty tensors)"
    if result.mode == "noise" and result.noise is not None:
        n = result.noise
        verdict = "within" if result.passed else "outside"
        parts.append(
            f"Error vs float64 {verdict} {n.factor:g}x the reference's own: "
            f"RMSE {_fmt(n.rmse_cand_err)} (reference {_fmt(n.rmse_ref_err)}, "
            f"allowed {_fmt(n.rmse_limit)}), max {_fmt(n.max_cand_err)} "
            f"(allowed {_fmt(n.max_limit)})"
        )
    count = result.mismatch_count or 0
    if count:
        parts.append(f"Mismatched elements: {count} / {total} ({_pct(count / total)})")
    elif result.mode != "noise":
        allowed = "exactly equal" if result.mode == "exact" else "within tolerance"
        parts.append(f"Tensor-likes are close: all {total} elements {allowed}")
    if result.max_abs_err_index is not None:
        abs_part = (
            f"greatest absolute difference {_fmt(result.max_abs_err)} "
            f"at index {result.max_abs_err_index}"
        )
        if result.mode == "tolerance":
            abs_part += f" (up to {_fmt(result.atol_used)} allowed)"
        parts.append(abs_part)
        rel_part = (
            f"greatest relative difference {_fmt(result.max_rel_err)} "
            f"at index {result.max_rel_err_index}"
        )
        if result.mode == "tolerance":
            rel_part += f" (up to {_fmt(result.rtol_used)} allowed)"
        parts.append(rel_part)
    elif not nonfinite:
        parts.append("no element differs")
    if nonfinite:
        parts.append(nonfinite)
    if result.batch_note:
        parts.append(result.batch_note)
    return "; ".join(parts)
