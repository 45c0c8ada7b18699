"""Tests of tensor comparison: tolerances that follow scale, ULPs, batch notes, noise floor."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from replayer._compare import (
    BatchElementStats,
    NoiseStats,
    TensorComparison,
    batch_breakdown,
    batch_note,
    compare_tensors,
    ulp_distance,
)
from replayer._tolerance import (
    DEFAULT_RTOL,
    MACHINE_EPS,
    ResolvedTolerance,
    Tolerance,
    ToleranceOverride,
    ToleranceTable,
    component_dtype,
    default_tolerance,
    dtype_kind,
    effective_atol,
    machine_eps,
    normalize_dtype,
    parse_tolerance_overrides,
)

REPORT_KEYS = {
    "name",
    "max_abs_err",
    "max_rel_err",
    "mismatch_fraction",
    "cosine",
    "ulp_max",
    "nan_ref",
    "nan_cand",
    "bad_batch_indices",
}


def _bf16(bits: int) -> np.float32:
    """A bfloat16 value decoded to float32 from its 16 bits."""
    return np.array([bits << 16], dtype=np.uint32).view(np.float32)[0]


def _sequential_sum(terms: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Float32 row sums accumulated column by column in the given order."""
    acc = np.zeros(terms.shape[0], dtype=np.float32)
    for j in order:
        acc = acc + terms[:, j]
    return acc


class TestModuleImports:
    def test_compare_does_not_import_torch(self) -> None:
        """_compare.py works on numpy only, so trace-vs-trace diffs need no torch."""
        source = Path(__file__).parents[1] / "replayer" / "_compare.py"
        tree = ast.parse(source.read_text())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module.split(".")[0])
        assert "torch" not in names


class TestNormalizeDtype:
    def test_accepts_torch_prefix(self) -> None:
        """str(torch.float32) is 'torch.float32', which names the same dtype."""
        assert normalize_dtype("torch.bfloat16") == "bfloat16"

    def test_rejects_unknown_names(self) -> None:
        """A typo in a dtype name is an error, not a silent default."""
        with pytest.raises(ValueError, match="unknown dtype"):
            normalize_dtype("float31")

    def test_kinds_and_components(self) -> None:
        """Complex dtypes compare at their component float's precision; ints and bool are exact kinds."""
        assert dtype_kind("complex64") == "complex" and component_dtype("complex64") == "float32"
        assert dtype_kind("uint8") == "int" and dtype_kind("bool") == "bool"
        assert dtype_kind("float8_e5m2") == "float"


class TestMachineEps:
    def test_table_values(self) -> None:
        """Machine epsilons are the documented powers of two."""
        assert MACHINE_EPS["float64"] == pytest.approx(2.2e-16, rel=0.01)
        assert MACHINE_EPS["float32"] == pytest.approx(1.19e-7, rel=0.01)
        assert MACHINE_EPS["float16"] == pytest.approx(9.8e-4, rel=0.01)
        assert MACHINE_EPS["bfloat16"] == pytest.approx(7.8e-3, rel=0.01)
        assert machine_eps("tf32") == MACHINE_EPS["float16"]

    def test_complex_and_int(self) -> None:
        """Complex uses its component's epsilon; exact dtypes have none."""
        assert machine_eps("complex128") == MACHINE_EPS["float64"]
        assert machine_eps("int32") == 0.0


class TestTolerance:
    def test_defaults_per_dtype(self) -> None:
        """Default rtol follows torch.testing; no fixed atol; ints and bool exact."""
        assert default_tolerance("float32").rtol == 1.3e-6
        assert default_tolerance("bfloat16").rtol == 1.6e-2
        assert default_tolerance("float8_e4m3fn").rtol == 0.125
        assert default_tolerance("float8_e5m2fnuz").rtol == 0.25
        assert default_tolerance("complex64").rtol == DEFAULT_RTOL["float32"]
        assert default_tolerance("float32").atol == 0.0
        assert default_tolerance("int64").exact and default_tolerance("bool").exact

    def test_noise_factor_defaults(self) -> None:
        """Noise factor is 2, and 3 for half precisions, as in the dynamo accuracy minifier."""
        assert default_tolerance("float32").noise_factor == 2.0
        assert default_tolerance("float16").noise_factor == 3.0
        assert default_tolerance("bfloat16").noise_factor == 3.0

    @pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
    def test_rejects_bad_values(self, bad: float) -> None:
        """Negative, NaN or infinite tolerances are refused at construction."""
        with pytest.raises(ValueError):
            Tolerance(rtol=bad)

    def test_round_trip(self) -> None:
        """to_dict is plain JSON and from_dict restores the same object."""
        tol = Tolerance(rtol=1e-3, atol=1e-8, atol_scale_factor=0.5, noise_factor=3.0)
        assert Tolerance.from_dict(json.loads(json.dumps(tol.to_dict()))) == tol


class TestEffectiveAtol:
    def test_floor_follows_reference_scale(self) -> None:
        """The floor is rtol times the largest reference magnitude, not a fixed 1e-5."""
        tol = Tolerance(rtol=1e-3)
        assert effective_atol(tol, reference_scale=1e-7) == pytest.approx(1e-10)

    def test_input_scale_raises_the_floor(self) -> None:
        """A near-zero output is judged against the magnitude of what went in."""
        tol = Tolerance(rtol=1e-3)
        assert effective_atol(tol, reference_scale=1e-9, input_scale=1e-2) == pytest.approx(1e-5)

    def test_user_atol_and_factor(self) -> None:
        """A user atol is a lower bound; atol_scale_factor scales the scale term."""
        tol = Tolerance(rtol=1e-3, atol=1e-4, atol_scale_factor=2.0)
        assert effective_atol(tol, reference_scale=1.0) == pytest.approx(2e-3)
        assert effective_atol(tol, reference_scale=1e-3) == 1e-4


class TestParseToleranceOverrides:
    def test_global_and_module_specs(self) -> None:
        """'key=value' is global; 'GLOB:key=value' applies to matching modules only."""
        table = parse_tolerance_overrides(["rtol=1e-3", "encoder.*:atol=1e-6,noise=4"])
        assert table.overrides[0] == ToleranceOverride(rtol=1e-3)
        assert table.overrides[1] == ToleranceOverride(
            pattern="encoder.*", atol=1e-6, noise_factor=4.0
        )

    @pytest.mark.parametrize("spec", ["rtol", "foo=1", "rtol=abc", ":rtol=1", "enc.*:", ""])
    def test_bad_specs_raise(self, spec: str) -> None:
        """Malformed specs raise ValueError naming the spec instead of being ignored."""
        with pytest.raises(ValueError, match="tolerance override"):
            parse_tolerance_overrides([spec])

    def test_none_is_empty_table(self) -> None:
        """No overrides means pure per-dtype defaults."""
        assert parse_tolerance_overrides(None).tolerance_for("float16") == default_tolerance(
            "float16"
        )


class TestToleranceTable:
    def test_resolution_order_field_by_field(self) -> None:
        """Module globs beat global overrides, which beat defaults, each field on its own."""
        table = parse_tolerance_overrides(["rtol=1e-4,atol=1e-9", "enc.*:rtol=1e-2"])
        resolved = table.resolve("float32", "enc.layer0")
        assert resolved.tolerance.rtol == 1e-2 and resolved.tolerance.atol == 1e-9
        assert resolved.sources["rtol"] == "module:enc.*"
        assert resolved.sources["atol"] == "global"
        assert resolved.sources["noise_factor"] == "default:float32"
        assert table.resolve("float32", "dec.layer0").tolerance.rtol == 1e-4

    def test_last_matching_glob_wins(self) -> None:
        """Among matching module globs, the later-declared one wins (as in .gitignore)."""
        table = parse_tolerance_overrides(["enc.*:rtol=1e-2", "enc.layer1*:rtol=5e-2"])
        assert table.tolerance_for("float32", "enc.layer1.mlp").rtol == 5e-2
        assert table.tolerance_for("float32", "enc.layer0.mlp").rtol == 1e-2

    def test_integers_stay_exact(self) -> None:
        """Overrides never loosen integer or bool comparisons."""
        table = parse_tolerance_overrides(["rtol=1e-2,atol=1"])
        assert table.tolerance_for("int32").exact

    def test_round_trip(self) -> None:
        """to_dict/from_dict keep overrides and their order; resolution is unchanged."""
        table = parse_tolerance_overrides(["rtol=1e-4", "a.*:atol=1e-7", "a.b:rtol=1e-1"])
        again = ToleranceTable.from_dict(json.loads(json.dumps(table.to_dict())))
        assert again.resolve("float16", "a.b") == table.resolve("float16", "a.b")

    def test_from_dict_accepts_module_mapping(self) -> None:
        """Config files may give modules as a {pattern: fields} mapping."""
        table = ToleranceTable.from_dict({"modules": {"x.*": {"rtol": 0.5}}})
        assert table.tolerance_for("float32", "x.y").rtol == 0.5

    def test_resolved_round_trip(self) -> None:
        """The per-comparison tolerance record survives JSON."""
        resolved = parse_tolerance_overrides(["rtol=1e-3"]).resolve("bfloat16", "m")
        assert ResolvedTolerance.from_dict(json.loads(json.dumps(resolved.to_dict()))) == resolved


class TestUlpDistance:
    @pytest.mark.parametrize("ftype", [np.float64, np.float32, np.float16])
    def test_adjacent_ieee_floats_are_one_apart(self, ftype: type) -> None:
        """Neighbouring floats are 1 ULP apart, at any magnitude and sign."""
        x = np.array([1.0, -3.5, 1e-3, 0.0, 6e-5], dtype=ftype)
        up = np.nextafter(x, ftype(np.inf))
        name = np.dtype(ftype).name
        assert ulp_distance(x, up, dtype=name).tolist() == [1] * 5
        assert ulp_distance(-x, -up, dtype=name).tolist() == [1] * 5

    def test_adjacent_bfloat16_values(self) -> None:
        """Adjacent bfloat16 bit patterns are 1 ULP apart (via the top 16 bits of float32)."""
        pairs = [(0x3F80, 0x3F81), (0x0001, 0x0002), (0x7F7F, 0x7F80), (0xBF80, 0xBF81)]
        a = np.array([_bf16(p) for p, _ in pairs], dtype=np.float32)
        b = np.array([_bf16(q) for _, q in pairs], dtype=np.float32)
        assert ulp_distance(a, b, dtype="bfloat16").tolist() == [1, 1, 1, 1]

    @pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
    def test_symmetric_across_zero(self, dtype: str) -> None:
        """-0.0 equals +0.0, and the smallest values either side of zero are 2 apart."""
        tiny = {"float64": 5e-324, "float32": 1e-45, "float16": 6e-8, "bfloat16": _bf16(1)}[dtype]
        store = np.float64 if dtype == "float64" else np.float32
        if dtype == "float16":
            store = np.float16
        a = np.array([-0.0, -tiny, -2.0], dtype=store)
        b = np.array([0.0, tiny, 2.0], dtype=store)
        dist = ulp_distance(a, b, dtype=dtype)
        assert dist[0] == 0 and dist[1] == 2
        assert dist[2] == 2 * ulp_distance(np.array([0.0], store), b[2:], dtype=dtype)[0]

    def test_float64_extremes_do_not_overflow(self) -> None:
        """The distance from -max to +max float64 fits (no int64 overflow)."""
        big = np.finfo(np.float64).max
        dist = ulp_distance(np.array([-big]), np.array([big]), dtype="float64")
        assert int(dist[0]) == 2 * 0x7FEF_FFFF_FFFF_FFFF

    def test_float8_grid(self) -> None:
        """float8 ULPs count steps on the float8 grid, subnormals and Inf included."""
        a = np.array([1.0, 416.0, 0.0, 2.0**-6 * 0.875], dtype=np.float32)
        b = np.array([1.125, 448.0, 2.0**-9, 2.0**-6], dtype=np.float32)
        assert ulp_distance(a, b, dtype="float8_e4m3fn").tolist() == [1, 1, 1, 1]
        e5 = ulp_distance(np.float32([57344.0]), np.float32([np.inf]), dtype="float8_e5m2")
        assert e5.tolist() == [1]

    def test_nan_sentinel(self) -> None:
        """NaN against NaN is 0 apart; NaN against a number is the 2**64-1 sentinel."""
        dist = ulp_distance(
            np.float32([np.nan, np.nan]), np.float32([np.nan, 1.0]), dtype="float32"
        )
        assert dist.tolist() == [0, 2**64 - 1]

    def test_integers_and_complex(self) -> None:
        """Integers count plain differences exactly; complex takes the worse component."""
        big = np.array([2**62, -(2**62)], dtype=np.int64)
        assert ulp_distance(big, big[::-1], dtype="int64").tolist() == [2**63, 2**63]
        z = np.array([1 + 1j], dtype=np.complex64)
        w = np.array([1 + np.nextafter(np.float32(1), np.float32(9)) * 1j], dtype=np.complex64)
        assert ulp_distance(z, w, dtype="complex64").tolist() == [1]


class TestFiniteUlpMax:
    @pytest.mark.parametrize(("dtype", "itype"), [("float32", np.int32), ("float16", np.int16),
                                                  ("bfloat16", np.int32), ("float64", np.int64)])
    def test_equals_the_maximum_of_the_elementwise_distance(self, dtype: str, itype: type) -> None:
        """The fast maximum agrees with max(finite_ulp) on random bit patterns of every sign."""
        from replayer._ulp import finite_ulp, finite_ulp_max

        rng = np.random.default_rng(7)
        info = np.iinfo(itype)
        for _ in range(20):
            bits = rng.integers(info.min, info.max, size=(2, 257), dtype=itype, endpoint=True)
            ftype = {np.int32: np.float32, np.int16: np.float16, np.int64: np.float64}[itype]
            a, b = bits.view(ftype)
            keep = ~(np.isnan(a) | np.isnan(b))
            a, b = a[keep], b[keep]
            if dtype == "bfloat16":
                a = (a.view(np.int32) & np.int32(-65536)).view(np.float32)
            assert finite_ulp_max(a, b, dtype) == int(np.max(finite_ulp(a, b, dtype)))
        assert finite_ulp_max(np.zeros(0, np.float32), np.zeros(0, np.float32), dtype) == 0


class TestBatchBreakdown:
    def test_per_element_stats(self) -> None:
        """Each batch element gets its own max error and mismatch count."""
        err = np.zeros((3, 2, 2))
        err[1, 0, 1] = 0.5
        stats = batch_breakdown(err, err > 0.1, batch_dim=0)
        assert [s.mismatch_count for s in stats] == [0, 1, 0]
        assert stats[1] == BatchElementStats(1, 0.5, 1, 4)

    def test_other_and_negative_axis(self) -> None:
        """The batch axis may be any axis, negative indices included."""
        err = np.zeros((2, 5))
        err[:, 3] = 1.0
        stats = batch_breakdown(err, err > 0, batch_dim=-1)
        assert [s.mismatch_count for s in stats] == [0, 0, 0, 2, 0]

    def test_no_batch_axis(self) -> None:
        """batch_dim None and 0-d tensors have no batch axis: an empty breakdown."""
        assert batch_breakdown(np.ones((2, 3)), batch_dim=None) == []
        assert batch_breakdown(np.float64(1.0), batch_dim=0) == []

    def test_out_of_range_axis(self) -> None:
        """A batch axis the tensor does not have is an error."""
        with pytest.raises(ValueError, match="batch_dim"):
            batch_breakdown(np.ones((2, 3)), batch_dim=2)

    def test_round_trip(self) -> None:
        """Batch element stats survive JSON."""
        stats = BatchElementStats(2, math.inf, 3, 10)
        assert BatchElementStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats


class TestBatchNote:
    def test_phrasings(self) -> None:
        """Notes name the few good elements, the bad ones, or say all diverge."""
        assert batch_note(range(1, 8), 8) == "only batch element 0 matches; elements 1-7 diverge"
        assert batch_note([2, 5], 8) == "batch elements 2, 5 diverge"
        assert batch_note([3], 8) == "batch element 3 diverges"
        assert batch_note(range(8), 8) == "all 8 batch elements diverge"
        assert batch_note([], 8) == ""

    def test_long_lists_are_capped(self) -> None:
        """Many scattered bad elements are summarised, not listed in full."""
        note = batch_note(range(0, 200, 2), 200)
        assert note.endswith("more ranges diverge") and len(note) < 120


class TestCompareTensors:
    def test_identical_tensors_pass_with_zero_error(self) -> None:
        """Bit-identical tensors pass with zero error, ULP 0, cosine 1."""
        x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
        res = compare_tensors(x, x.copy(), dtype="float32")
        assert res.passed and res.max_abs_err == 0.0 and res.ulp_max == 0
        assert res.cosine == 1.0 and res.rmse == 0.0 and res.mismatch_count == 0
        assert res.max_abs_err_index is None and res.bad_batch_indices == []

    def test_reordered_float32_reduction_passes(self) -> None:
        """Float32 sums in different orders (and float64-then-cast) differ by noise and pass."""
        rows = np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32)
        pairwise = rows.sum(axis=1)
        via_f64 = rows.astype(np.float64).sum(axis=1).astype(np.float32)
        sequential = np.cumsum(rows, axis=1, dtype=np.float32)[:, -1]
        for cand in (via_f64, sequential):
            res = compare_tensors(pairwise, cand, dtype="float32", batch_dim=None)
            assert res.passed, res.message
            assert res.max_abs_err > 0

    @pytest.mark.parametrize("kind", ["random", "sign_flip"])
    def test_wrong_gradient_below_1e5_fails(self, kind: str) -> None:
        """A completely wrong gradient entirely below 1e-5 fails; a fixed atol=1e-5 would pass it."""
        rng = np.random.default_rng(2)
        ref = (rng.standard_normal((16, 32)) * 1e-7).astype(np.float32)
        cand = (
            -ref
            if kind == "sign_flip"
            else (rng.standard_normal((16, 32)) * 1e-7).astype(np.float32)
        )
        res = compare_tensors(ref, cand, dtype="float32")
        assert not res.passed
        assert res.mismatch_fraction > 0.9
        assert res.atol_used < 1e-12

    def test_zero_by_symmetry_bias_gradient_passes_with_input_scale(self) -> None:
        """A bias gradient that is zero in exact arithmetic is pure noise; it passes at input scale."""
        rng = np.random.default_rng(1)
        x = rng.uniform(0.5, 1.0, (64, 4)) * 1e-2 * rng.choice([-1.0, 1.0], (64, 4))
        terms = np.concatenate([x, -x], axis=1).astype(np.float32)
        ref = _sequential_sum(terms, rng.permutation(8))
        cand = _sequential_sum(terms, rng.permutation(8))
        assert 0 < np.abs(ref - cand).max() < 1e-8
        res = compare_tensors(ref, cand, dtype="float32", input_scale=1e-2, batch_dim=None)
        assert res.passed, res.message
        without = compare_tensors(ref, cand, dtype="float32", batch_dim=None)
        assert not without.passed

    def test_only_batch_element_zero_correct(self) -> None:
        """A gradient right only for batch element 0 lists elements 1-7 and says so."""
        rng = np.random.default_rng(3)
        ref = (rng.standard_normal((8, 4, 10, 10)) * 1e-3).astype(np.float32)
        cand = ref.copy()
        cand[1:] = (rng.standard_normal((7, 4, 10, 10)) * 1e-3).astype(np.float32)
        res = compare_tensors(ref, cand, dtype="float32", batch_dim=0)
        assert not res.passed
        assert res.bad_batch_indices == [1, 2, 3, 4, 5, 6, 7]
        assert res.batch_note == "only batch element 0 matches; elements 1-7 diverge"
        assert res.batch_note in res.message and res.batch_size == 8

    def test_nan_in_same_positions_is_equal(self) -> None:
        """NaN at the same positions on both sides counts as equal by default."""
        ref = np.array([1.0, np.nan, 3.0], dtype=np.float32)
        res = compare_tensors(ref, ref.copy(), dtype="float32", batch_dim=None)
        assert res.passed and res.nan_ref == 1 and res.nan_cand == 1 and res.ulp_max == 0

    def test_nan_on_one_side_fails(self) -> None:
        """NaN in the candidate only is a mismatch; no tolerance can fix it."""
        ref = np.array([1.0, 2.0, 3.0], dtype=np.float32)
        cand = np.array([1.0, np.nan, 3.0], dtype=np.float32)
        res = compare_tensors(ref, cand, dtype="float32", batch_dim=None)
        assert not res.passed and res.mismatch_count == 1 and res.nonfinite_mismatch_count == 1
        assert res.nan_cand == 1 and res.nan_ref == 0
        assert res.ulp_max is None and res.min_rtol_to_pass is None
        assert res.max_abs_err == 0.0
        assert "1 NaN in candidate only" in res.message

    def test_equal_nan_false(self) -> None:
        """With equal_nan=False even matching NaNs are mismatches."""
        ref = np.array([np.nan, 1.0])
        res = compare_tensors(ref, ref.copy(), dtype="float64", equal_nan=False, batch_dim=None)
        assert not res.passed and res.mismatch_count == 1

    def test_inf_equal_only_with_same_sign(self) -> None:
        """Inf matches Inf of the same sign; opposite signs or Inf vs finite mismatch."""
        ref = np.array([np.inf, -np.inf, 1.0])
        assert compare_tensors(ref, ref.copy(), dtype="float64", batch_dim=None).passed
        cand = np.array([np.inf, np.inf, np.inf])
        res = compare_tensors(ref, cand, dtype="float64", batch_dim=None)
        assert res.mismatch_count == 2 and res.inf_ref == 2 and res.inf_cand == 3

    def test_cosine_and_rmse(self) -> None:
        """Cosine is 1 for a positive multiple, -1 for negation, 0 when one side is zero."""
        ref = np.array([3.0, -4.0, 0.0])
        assert compare_tensors(ref, 2 * ref, dtype="float64").cosine == pytest.approx(1.0)
        assert compare_tensors(ref, -ref, dtype="float64").cosine == pytest.approx(-1.0)
        assert compare_tensors(ref, np.zeros(3), dtype="float64").cosine == 0.0
        assert compare_tensors(np.zeros(3), np.zeros(3), dtype="float64").cosine == 1.0
        orth = compare_tensors(np.array([1.0, 0.0]), np.array([0.0, 1.0]), dtype="float64")
        assert orth.cosine == pytest.approx(0.0)
        offset = compare_tensors(ref, ref + 0.5, dtype="float64")
        assert offset.rmse == pytest.approx(0.5)

    def test_cosine_of_tiny_float64_values(self) -> None:
        """Cosine and RMSE survive values whose squares underflow float64."""
        ref = np.array([1e-200, 2e-200])
        res = compare_tensors(ref, ref * 3, dtype="float64", batch_dim=None)
        assert res.cosine == pytest.approx(1.0)
        assert res.rmse == pytest.approx(math.sqrt(10) * 1e-200, rel=1e-12)

    def test_message_style(self) -> None:
        """The one-line message reads like torch.testing's, with counts and indices."""
        ref = np.zeros((4, 4), dtype=np.float32)
        ref[0, 0] = 1.0
        cand = ref.copy()
        cand[2, 3] = 0.5
        res = compare_tensors(ref, cand, dtype="float32", batch_dim=None)
        assert res.message.startswith("Mismatched elements: 1 / 16 (6.2%)")
        assert "greatest absolute difference 0.5 at index (2, 3)" in res.message
        assert "\n" not in res.message
        assert res.max_abs_err_index == (2, 3) and res.max_rel_err == math.inf

    def test_shape_mismatch_fails_clearly(self) -> None:
        """Different shapes fail with a message naming both shapes and no statistics."""
        res = compare_tensors(np.zeros((2, 3)), np.zeros((3, 2)), dtype="float32")
        assert not res.passed and res.shape_mismatch and res.mode == "shape_mismatch"
        assert "(2, 3)" in res.message and "(3, 2)" in res.message
        assert res.max_abs_err is None and res.mismatch_fraction is None

    def test_dtype_mismatch(self) -> None:
        """A differing candidate dtype fails unless check_dtype=False, which uses the looser default."""
        x = np.ones(4, dtype=np.float32)
        strict = compare_tensors(x, x, dtype="float32", candidate_dtype="bfloat16")
        assert not strict.passed and strict.dtype_mismatch
        assert strict.message.startswith("dtype mismatch")
        loose = compare_tensors(
            x, x * 1.01, dtype="float32", candidate_dtype="bfloat16", check_dtype=False
        )
        assert loose.passed and loose.rtol_used == DEFAULT_RTOL["bfloat16"]

    def test_integers_are_exact(self) -> None:
        """Integers match exactly, even past 2**53 where float64 cannot tell them apart."""
        ref = np.array([2**60, 5], dtype=np.int64)
        assert compare_tensors(ref, ref.copy(), dtype="int64").passed
        res = compare_tensors(ref, ref + np.array([1, 0]), dtype="int64", batch_dim=None)
        assert not res.passed and res.mode == "exact" and res.ulp_max == 1
        flags = np.array([True, False])
        assert not compare_tensors(flags, ~flags, dtype="bool").passed

    def test_explicit_integer_tolerance(self) -> None:
        """An explicit tolerance loosens an integer comparison (e.g. off-by-one quantisation)."""
        ref = np.array([10, 20], dtype=np.int8)
        res = compare_tensors(ref, ref + 1, dtype="int8", tolerance=Tolerance(rtol=0, atol=1))
        assert res.passed and res.mode == "tolerance"

    def test_complex(self) -> None:
        """Complex tensors compare by modulus of the difference; a phase error fails."""
        ref = np.exp(1j * np.linspace(0, 3, 16)).astype(np.complex64)
        assert compare_tensors(ref, ref * np.complex64(1 + 1e-7), dtype="complex64").passed
        res = compare_tensors(ref, ref * np.complex64(1j), dtype="complex64")
        assert not res.passed and res.cosine == pytest.approx(0.0, abs=1e-6)

    def test_zero_dim_and_empty(self) -> None:
        """0-d tensors have no batch axis; empty tensors pass with zero error."""
        res = compare_tensors(np.float32(1.0), np.float32(2.0), dtype="float32", batch_dim=0)
        assert not res.passed and res.max_abs_err_index == () and res.bad_batch_indices == []
        assert res.batch_dim is None and res.batch_note == ""
        empty = compare_tensors(np.zeros((0, 3)), np.zeros((0, 3)), dtype="float32")
        assert empty.passed and empty.mismatch_fraction == 0.0

    def test_bfloat16_values_given_as_float32(self) -> None:
        """bfloat16 arrives as decoded float32; one bfloat16 ULP off passes, ULP counted as 1."""
        ref = np.array([_bf16(0x3F80), _bf16(0x4000)], dtype=np.float32)
        cand = np.array([_bf16(0x3F81), _bf16(0x4000)], dtype=np.float32)
        res = compare_tensors(ref, cand, dtype="bfloat16", batch_dim=None)
        assert res.passed and res.ulp_max == 1

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        ref=hnp.arrays(
            np.float64,
            st.integers(1, 20),
            elements=st.floats(-100, 100, width=32, allow_subnormal=False),
        ),
        noise=hnp.arrays(np.float64, 20, elements=st.floats(-1, 1, allow_subnormal=False)),
        rtol=st.floats(1e-7, 1e-1),
        atol=st.sampled_from([0.0, 1e-6, 1e-3]),
        factor=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
        input_scale=st.sampled_from([None, 0.0, 1.0, 50.0]),
    )
    def test_min_rtol_to_pass_is_tight(
        self,
        ref: np.ndarray,
        noise: np.ndarray,
        rtol: float,
        atol: float,
        factor: float,
        input_scale: float | None,
    ) -> None:
        """Re-running with min_rtol_to_pass passes, and (with no atol) 0.1% less fails."""
        cand = ref + noise[: ref.size]
        tol = Tolerance(rtol=rtol, atol=atol, atol_scale_factor=factor)
        kw = {"dtype": "float64", "input_scale": input_scale, "batch_dim": None}
        res = compare_tensors(ref, cand, tolerance=tol, **kw)
        need = res.min_rtol_to_pass
        assume(need is not None and need < 1e300)
        assert compare_tensors(ref, cand, tolerance=Tolerance(need, atol, factor), **kw).passed
        if atol == 0.0 and need > 0:
            below = Tolerance(need * 0.999, atol, factor)
            assert not compare_tensors(ref, cand, tolerance=below, **kw).passed

    @settings(max_examples=60, deadline=None)
    @given(
        ref=hnp.arrays(
            np.float64,
            st.integers(1, 20),
            elements=st.floats(-100, 100, width=32, allow_subnormal=False),
        ),
        noise=hnp.arrays(np.float64, 20, elements=st.floats(-1, 1, allow_subnormal=False)),
        rtol=st.floats(0, 1e-1),
    )
    def test_min_atol_to_pass_is_tight(
        self, ref: np.ndarray, noise: np.ndarray, rtol: float
    ) -> None:
        """Re-running with atol=min_atol_to_pass passes; a floor 0.1% lower fails."""
        cand = ref + noise[: ref.size]
        kw = {"dtype": "float64", "batch_dim": None}
        res = compare_tensors(ref, cand, tolerance=Tolerance(rtol), **kw)
        need = res.min_atol_to_pass
        assert need is not None
        assert compare_tensors(ref, cand, tolerance=Tolerance(rtol, atol=need), **kw).passed
        assume(need > 1e-9 * (need + rtol * float(np.max(np.abs(ref)))))
        lower = Tolerance(rtol, atol=need * 0.999, atol_scale_factor=0.0)
        assert not compare_tensors(ref, cand, tolerance=lower, **kw).passed

    def test_noise_floor_mode(self) -> None:
        """Against float64, a perturbation 1.5x the reference's own error passes and 10x fails."""
        rng = np.random.default_rng(4)
        a = rng.standard_normal((128, 256)).astype(np.float32)
        b = rng.standard_normal((256, 64)).astype(np.float32)
        f64 = a.astype(np.float64) @ b.astype(np.float64)
        ref = a @ b
        own_error = rng.permutation((ref - f64).ravel()).reshape(f64.shape)
        kw = {"dtype": "float32", "float64_reference": f64, "batch_dim": None}
        mild = compare_tensors(ref, (f64 + 1.5 * own_error).astype(np.float32), **kw)
        assert mild.passed and mild.mode == "noise", mild.message
        assert mild.noise is not None and 1.2 < mild.noise.ratio < 1.8
        bad = compare_tensors(ref, (f64 + 10 * own_error).astype(np.float32), **kw)
        assert not bad.passed and bad.mismatch_count > 0
        assert "outside 2x" in bad.message

    def test_noise_floor_needs_float_dtype_and_shape(self) -> None:
        """The float64 recomputation must match in shape and only applies to float dtypes."""
        with pytest.raises(ValueError, match="shape"):
            compare_tensors(np.ones(3), np.ones(3), dtype="float32", float64_reference=np.ones(4))
        with pytest.raises(ValueError, match="floating"):
            compare_tensors(np.ones(3), np.ones(3), dtype="int32", float64_reference=np.ones(3))

    def test_large_tensor_is_vectorised(self) -> None:
        """Two million elements compare quickly (no per-element Python loop)."""
        rng = np.random.default_rng(5)
        ref = rng.standard_normal((16, 125_000)).astype(np.float32)
        res = compare_tensors(ref, ref * np.float32(1 + 2e-7), dtype="float32")
        assert res.passed and res.numel == 2_000_000


class TestCompareIdenticalFastPath:
    """Bitwise-identical arrays skip the float64 statistics; the result must not change."""

    CASES = [
        ("float32", np.random.default_rng(0).standard_normal((8, 33)).astype(np.float32)),
        ("float32", np.array([[1.0, np.nan, -np.inf], [0.0, -0.0, 3e38]], dtype=np.float32)),
        ("float64", np.random.default_rng(1).standard_normal((3, 4, 5)) * 1e200),
        ("float16", np.random.default_rng(2).standard_normal((5, 7)).astype(np.float16)),
        ("bfloat16", np.array([[1.0, 2.5], [-3.0, 0.0]], dtype=np.float32)),
        ("complex64", (np.arange(12) * (1 + 2j)).astype(np.complex64).reshape(3, 4)),
        ("int64", np.array([[1, -(2**62)], [3, 2**62]], dtype=np.int64)),
        ("bool", np.array([[True, False], [False, False]])),
        ("float32", np.zeros((0, 4), dtype=np.float32)),
        ("float32", np.float32(2.5)),
    ]

    @pytest.mark.parametrize(("dtype", "x"), CASES)
    def test_same_result_as_full_comparison(self, dtype: str, x: np.ndarray,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
        """Every field of the fast result equals the full path's for the same arrays."""
        import replayer._compare as compare_module

        fast = compare_tensors(x, np.array(x, copy=True), dtype=dtype, input_scale=2.0)
        monkeypatch.setattr(compare_module, "_identical", lambda *a, **k: None)
        full = compare_tensors(x, np.array(x, copy=True), dtype=dtype, input_scale=2.0)
        assert fast.to_dict() == full.to_dict()

    def test_nan_without_equal_nan_takes_the_full_path(self) -> None:
        """With equal_nan=False, identical NaNs are still reported as mismatches."""
        x = np.array([1.0, np.nan], dtype=np.float32)
        res = compare_tensors(x, x.copy(), dtype="float32", equal_nan=False)
        assert not res.passed and res.nonfinite_mismatch_count == 1

    def test_signed_zero_is_not_bitwise_identical(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """-0.0 against 0.0 differs in bits: the fast path declines, the full one passes it."""
        import replayer._compare as compare_module

        answers: list[object] = []
        fast = compare_module._identical

        def spy(*args: object, **kwargs: object) -> object:
            answers.append(fast(*args, **kwargs))
            return answers[-1]

        monkeypatch.setattr(compare_module, "_identical", spy)
        res = compare_tensors(np.array([0.0], np.float32), np.array([-0.0], np.float32),
                              dtype="float32")
        assert answers == [None] and res.passed and res.max_abs_err == 0.0


class TestNoiseStats:
    def test_round_trip(self) -> None:
        """Noise statistics survive JSON, a missing ratio included."""
        stats = NoiseStats(1e-7, 2e-7, 1e-6, 3e-6, 2.0, 1e-8, 1e-7, 2.1e-7, 2.2e-6, None)
        assert NoiseStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats


class TestTensorComparison:
    def test_json_round_trip(self) -> None:
        """to_dict is strict JSON (Inf as a string) and from_dict restores an equal object."""
        ref = np.zeros((2, 3), dtype=np.float32)
        cand = ref.copy()
        cand[1, 2] = 1e-3
        cand[0, 0] = np.nan
        res = compare_tensors(ref, cand, dtype="float32", name="layer.weight.grad")
        text = json.dumps(res.to_dict(), allow_nan=False)
        back = TensorComparison.from_dict(json.loads(text))
        assert back == res
        assert json.loads(text)["max_rel_err"] == "inf"

    def test_report_schema_keys(self) -> None:
        """The keys fixed by the report schema are present, with JSON-native values."""
        res = compare_tensors(np.ones((2, 2)), np.ones((2, 2)), dtype="float64", name="x")
        data = res.to_dict()
        assert data.keys() >= REPORT_KEYS
        assert isinstance(data["bad_batch_indices"], list) and data["name"] == "x"
        assert isinstance(data["shape"], list)

    def test_noise_mode_round_trip(self) -> None:
        """A noise-mode comparison (nested stats, null rtol) survives JSON."""
        f64 = np.linspace(-1, 1, 10)
        ref = f64.astype(np.float32)
        res = compare_tensors(ref, ref, dtype="float32", float64_reference=f64)
        back = TensorComparison.from_dict(json.loads(json.dumps(res.to_dict(), allow_nan=False)))
        assert back == res and back.rtol_used is None and back.noise is not None
