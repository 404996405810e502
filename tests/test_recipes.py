"""recipes.py against plain numpy references: format grids, block layouts, scale rounding.

The references round to each format's grid explicitly (round half to even on the integer
significand, subnormals sharing the smallest exponent's step), find blocks with explicit
loops and take exponents from float64 log2, so they share no code with the module.
"""

import functools
import math

import jax
import numpy as np
import pytest

from fp8demo import recipes
from fp8demo.recipes import E2M1, E4M3, E5M2

# (mantissa bits, smallest normal exponent) of each element format.
GRID = {"E4M3": (3, -6), "E5M2": (2, -14), "E2M1": (1, 0)}


def saturation_limit(fmt):
    """fmax plus half the top step, the spacing of the format's two largest values."""
    top_step = 2.0 ** (math.floor(math.log2(fmt.max)) - GRID[fmt.name][0])
    return fmt.max + top_step / 2


def round_to_format(values, fmt):
    """Nearest value on the format's grid (ties to even) after clipping to ±fmax."""
    mantissa_bits, min_exponent = GRID[fmt.name]
    v = np.clip(np.asarray(values, np.float64), -fmt.max, fmt.max)
    magnitude = np.abs(v)
    exponent = np.floor(np.log2(np.where(magnitude > 0, magnitude, 1.0)))
    step = 2.0 ** (np.maximum(exponent, min_exponent) - mantissa_bits)
    return np.sign(v) * np.round(magnitude / step) * step  # np.round: half to even


def ref_qdq(x, scale, fmt):
    """(dequantized, saturated) with per-element divisor `scale`, in float32 like the module."""
    x = np.asarray(x, np.float32)
    scale = np.broadcast_to(np.asarray(scale, np.float32), x.shape)
    usable = scale > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = x / np.where(usable, scale, np.float32(1))
    dequantized = (round_to_format(scaled, fmt) * np.where(usable, scale, 1)).astype(np.float32)
    dequantized = np.where(usable, dequantized, 0).astype(np.float32)
    dequantized[np.isnan(x)] = np.nan
    saturated = usable & (np.abs(scaled) > saturation_limit(fmt))
    return dequantized, saturated


def block_slices(shape, rows, cols):
    """Every rows x cols block of a matrix, the last ones partial."""
    for r in range(0, shape[0], rows):
        for c in range(0, shape[1], cols):
            yield slice(r, r + rows), slice(c, c + cols)


def finite_amax(values):
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size else 0.0


def ref_scales(matrix, rows, cols, rule):
    scales = np.ones(matrix.shape, np.float64)
    for block in block_slices(matrix.shape, rows, cols):
        scales[block] = rule(finite_amax(matrix[block]))
    return scales


def current_rule(fmt):
    return lambda amax: np.float32(amax) / np.float32(fmt.max) if amax > 0 else 1.0


def power_of_two_rule(fmt, rounding):
    def rule(amax):
        if amax == 0:
            return 1.0
        if rounding == "up":
            exponent = math.ceil(math.log2(amax / fmt.max))
        else:  # OCP MX: floor(log2 amax) - emax_elem, emax_elem = floor(log2 fmax)
            exponent = math.floor(math.log2(amax)) - math.floor(math.log2(fmt.max))
        return 2.0 ** min(max(exponent, -126), 127)

    return rule


def ref_nvfp4(matrix):
    tensor_amax = np.float32(finite_amax(matrix))
    global_scale = tensor_amax / np.float32(448 * 6) if tensor_amax > 0 else np.float32(1)
    scales = np.zeros(matrix.shape, np.float32)
    for block in block_slices(matrix.shape, 1, 16):
        block_scale = np.float32(finite_amax(matrix[block])) / np.float32(6) / global_scale
        scales[block] = np.float32(round_to_format(block_scale, E4M3)) * global_scale
    return ref_qdq(matrix, scales, E2M1)


def ref_quantize(x, recipe, role, delayed_scale=None):
    """(dequantized, saturated) for inputs/outputs_grad (..., last) and 2-D kernels (K, N)."""
    hybrid = E5M2 if role == "outputs_grad" else E4M3
    matrix = x.T if role == "kernel" else x.reshape(-1, x.shape[-1])
    full = matrix.shape
    if recipe == "delayed":
        result = ref_qdq(matrix, delayed_scale, hybrid)
    elif recipe == "current":
        result = ref_qdq(matrix, ref_scales(matrix, *full, current_rule(hybrid)), hybrid)
    elif recipe == "rowwise":  # torchao: E4M3 for gradients too, power-of-two scales
        rule = power_of_two_rule(E4M3, "up")
        result = ref_qdq(matrix, ref_scales(matrix, 1, full[1], rule), E4M3)
    elif recipe == "block128":
        rows = 128 if role == "kernel" else 1
        rule = power_of_two_rule(E4M3, "up")
        result = ref_qdq(matrix, ref_scales(matrix, rows, 128, rule), E4M3)
    elif recipe in ("mxfp8", "mxfp8-floor"):
        rule = power_of_two_rule(E4M3, "floor" if recipe == "mxfp8-floor" else "up")
        result = ref_qdq(matrix, ref_scales(matrix, 1, 32, rule), E4M3)
    else:
        result = ref_nvfp4(matrix)
    restore = (lambda m: m.T) if role == "kernel" else (lambda m: m.reshape(x.shape))
    return restore(result[0]), restore(result[1])


def ref_statistics(x, dequantized, saturated):
    finite = np.isfinite(x)
    nonzero = finite & (x != 0)
    signal = np.sum(x[finite].astype(np.float64) ** 2)
    noise = np.sum((x[finite].astype(np.float64) - dequantized[finite]) ** 2)
    return {
        "underflow_pct": 100 * np.sum(nonzero & (dequantized == 0)) / max(nonzero.sum(), 1),
        "saturation_pct": 100 * saturated.sum() / max((~np.isnan(x)).sum(), 1),
        "snr_db": 10 * np.log10(signal / noise) if noise > 0 else np.inf,
    }


def signed_lognormal(shape, seed, sigma=3.0, scale=1.0):
    """Values spanning many binary orders (so scales matter), a few exact zeros."""
    rng = np.random.default_rng(seed)
    x = scale * rng.lognormal(0.0, sigma, shape) * rng.choice([-1.0, 1.0], shape)
    x[rng.random(shape) < 0.02] = 0.0
    return x.astype(np.float32)


# Shapes no block size divides: 70 = 2 x 32 + 6 = 4 x 16 + 6 (< 128); kernels (K=150, N=40).
# Every test uses these two shapes, so each role's functions compile once.
SHAPE, KERNEL_SHAPE = (3, 5, 70), (150, 40)
TENSORS = {
    "inputs": signed_lognormal(SHAPE, 0),
    "kernel": signed_lognormal(KERNEL_SHAPE, 1, sigma=1.0, scale=0.05),
    "outputs_grad": signed_lognormal(SHAPE, 2, scale=1e-6),
}


@functools.cache
def _compiled_all_recipes(role, block_dims):
    def run(x, delayed_scale):
        return {
            recipe: (
                recipes.quantize(x, recipe, role, delayed_scale, block_dims),
                recipes.what_if(x, recipe, role, delayed_scale, block_dims),
            )
            for recipe in recipes.RECIPES
        }

    return jax.jit(run)


def all_recipes(x, role, delayed_scale=1.0, block_dims=1):
    """{recipe: (dequantized, statistics)} from one compiled function, as the probe runs them
    (this also keeps the number of compilations, and so the test's time, small)."""
    out = _compiled_all_recipes(role, block_dims)(x, np.float32(delayed_scale))
    return {
        recipe: (np.asarray(q), {name: float(v) for name, v in stats.items()})
        for recipe, (q, stats) in out.items()
    }


@pytest.mark.parametrize("fmt", [E4M3, E5M2, E2M1], ids=lambda f: f.name)
def test_format_grid_rounding_matches_reference(fmt):
    mantissa_bits, min_exponent = GRID[fmt.name]
    # Every positive grid value, each midpoint (a tie) and random values, both signs.
    exponents = np.arange(min_exponent, math.floor(math.log2(fmt.max)) + 1)
    significands = np.arange(2 ** (mantissa_bits + 1))  # below 2^m only at the subnormal row
    grid = np.unique((significands[None, :] * 2.0 ** (exponents[:, None] - mantissa_bits)))
    grid = grid[grid <= fmt.max]
    midpoints = (grid[1:] + grid[:-1]) / 2
    rng = np.random.default_rng(3)
    values = np.concatenate([grid, midpoints, rng.uniform(0, fmt.max * 1.1, 200)])
    values = np.concatenate([values, -values]).astype(np.float32)
    got = np.asarray(recipes.qdq_delayed(values, 1.0, fmt))
    np.testing.assert_array_equal(got, round_to_format(values, fmt))


def test_saturation_counts_values_beyond_half_the_top_step():
    """Clipped by more than half a step: E4M3 beyond 448 + 16, E5M2 beyond 57344 + 4096,
    E2M1 beyond 6 + 1 (the old 17/16 and 9/8 tolerances let 470 and 62000 pass)."""
    assert [saturation_limit(f) for f in (E4M3, E5M2, E2M1)] == [464, 61440, 7]
    assert [f.saturation_limit for f in (E4M3, E5M2, E2M1)] == [464, 61440, 7]
    inputs = np.array([470, 460, 464, 100, -465, 1, 2, 3], np.float32)
    stats = recipes.what_if(inputs, "delayed", "inputs", 1.0)
    assert float(stats["saturation_pct"]) == pytest.approx(100 * 2 / 8)
    gradients = np.array([62000, 61000, -61441, 5], np.float32)
    stats = recipes.what_if(gradients, "delayed", "outputs_grad", 1.0)
    assert float(stats["saturation_pct"]) == pytest.approx(100 * 2 / 4)
    # The same values at scale 2: nothing beyond 464 x 2.
    assert float(recipes.what_if(inputs, "delayed", "inputs", 2.0)["saturation_pct"]) == 0
    e2m1 = np.array([7.5, 6.9, -7.01, 1.0], np.float32)
    assert np.asarray(recipes._qdq(e2m1, np.float32(1), E2M1)[1]).tolist() == [
        True,
        False,
        True,
        False,
    ]


def test_known_values_on_each_grid():
    e2m1 = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -0.3], np.float32)
    np.testing.assert_array_equal(
        recipes.qdq_delayed(e2m1, 1.0, E2M1), [0, 1, 1, 2, 2, 4, 4, 6, -0.5]
    )
    # E4M3 subnormals are multiples of 2^-9: half of the smallest ties to 0, 3/2 of it to 2.
    tiny = np.array([2.0**-10, 3 * 2.0**-10, 2.0**-9, 5 * 2.0**-10], np.float32)
    np.testing.assert_array_equal(
        recipes.qdq_delayed(tiny, 1.0, E4M3), [0, 2.0**-8, 2.0**-9, 2.0**-8]
    )
    assert float(recipes.what_if(tiny, "delayed", "inputs", 1.0)["underflow_pct"]) == 25.0


@pytest.mark.parametrize("role", recipes.ROLES)
def test_recipes_match_reference(role):
    x = TENSORS[role]
    # A delayed scale half of what this tensor needs: its top values saturate.
    delayed_scale = np.float32(finite_amax(x) / recipes.recipe_format("delayed", role).max / 2)
    results = all_recipes(x, role, delayed_scale)
    assert set(results) == set(recipes.RECIPES)
    for recipe, (got, stats) in results.items():
        expected, saturated = ref_quantize(x, recipe, role, delayed_scale)
        assert got.shape == x.shape and got.dtype == np.float32
        if recipe in ("rowwise", "block128", "mxfp8", "mxfp8-floor"):  # power-of-two: exact
            np.testing.assert_array_equal(got, expected, err_msg=recipe)
        else:  # XLA divides by a broadcast scalar through its reciprocal: an ulp apart
            np.testing.assert_allclose(got, expected, rtol=2.0**-20, atol=0, err_msg=recipe)
        reference = ref_statistics(x, expected, saturated)
        assert set(stats) == set(recipes.STATISTICS)
        for name in recipes.STATISTICS:
            assert stats[name] == pytest.approx(reference[name], rel=1e-4, abs=1e-4), (recipe, name)
        if recipe in ("current", "rowwise", "block128", "mxfp8"):
            assert stats["saturation_pct"] == 0, recipe  # these scales never clip
    assert results["delayed"][1]["saturation_pct"] > 0


def test_partial_blocks_take_their_scale_from_their_own_values():
    x = np.zeros(SHAPE, np.float32)
    x[0, 0, 40] = 960.0  # block 32..63 of the first row is large
    x[0, 0, 64:70] = 1.5 * 2.0**-20  # the partial block 64..69 is tiny
    x[1:] = np.linspace(-3, 3, x[1:].size).reshape(x[1:].shape)
    results = all_recipes(x, "inputs")
    for recipe in ("mxfp8", "mxfp8-floor"):
        np.testing.assert_array_equal(results[recipe][0][0, 0, 64:70], x[0, 0, 64:70])
    # 960 needs the scale 2^ceil(log2(960 / 448)) = 4; floor takes 2 and clips to 448 x 2.
    assert results["mxfp8"][0][0, 0, 40] == 960 and results["mxfp8-floor"][0][0, 0, 40] == 896
    # One 1x128 tile, or one scale per row or tensor, holds the large value too: the tiny
    # ones fall below E4M3's smallest subnormal and flush to zero.
    for recipe in ("block128", "current", "rowwise"):
        assert (results[recipe][0][0, 0, 64:70] == 0).all()
    # Without the first row, the other rows quantize the same, except per tensor.
    first_row_zeroed = x.copy()
    first_row_zeroed[0, 0] = 0
    without = all_recipes(first_row_zeroed, "inputs")

    def other_rows(recipe, results):
        return results[recipe][0].reshape(-1, 70)[1:]

    for recipe in ("block128", "mxfp8", "mxfp8-floor", "rowwise"):
        np.testing.assert_array_equal(other_rows(recipe, results), other_rows(recipe, without))
    assert (other_rows("current", results) != other_rows("current", without)).any()


def test_kernel_tiles_run_along_k_and_rows_are_output_channels():
    # Output channels (columns) spanning four decades.
    kernel = signed_lognormal(KERNEL_SHAPE, 4, sigma=1.0) * 10.0 ** -(np.arange(40) // 10)
    kernel = kernel.astype(np.float32)
    results = all_recipes(kernel, "kernel")
    np.testing.assert_array_equal(results["mxfp8"][0], np.asarray(recipes.qdq_mxfp8(kernel.T)).T)
    np.testing.assert_array_equal(
        results["block128"][0], np.asarray(recipes.qdq_block(kernel.T, (128, 128))).T
    )
    # Rowwise: each output channel keeps its largest value; per tensor the small ones flush.
    np.testing.assert_allclose(
        np.abs(results["rowwise"][0]).max(axis=0), np.abs(kernel).max(axis=0), rtol=2.0**-4
    )
    assert results["current"][1]["underflow_pct"] > results["rowwise"][1]["underflow_pct"]
    # An EinsumDense kernel contracting over two axes, and inputs with two contracted axes.
    kernel3 = signed_lognormal((4, 8, 6), 5)
    np.testing.assert_array_equal(
        recipes.quantize(kernel3, "mxfp8", "kernel", block_dims=2),
        np.asarray(recipes.quantize(kernel3.reshape(32, 6), "mxfp8", "kernel")).reshape(4, 8, 6),
    )
    inputs4 = signed_lognormal((2, 3, 4, 8), 6)
    np.testing.assert_array_equal(
        recipes.quantize(inputs4, "nvfp4", "inputs", block_dims=2),
        np.asarray(recipes.qdq_nvfp4(inputs4.reshape(6, 32))).reshape(inputs4.shape),
    )


def test_e8m0_scale_rounds_up_or_down():
    amax = np.array([448, 449, 480, 896, 0.875, 0.9, 1.0, 2.0**-120, 3e38, 0], np.float32)
    up = [1, 2, 2, 2, 2.0**-9, 2.0**-8, 2.0**-8, 2.0**-126, 2.0**120, 1]
    floor = [1, 1, 1, 2, 2.0**-9, 2.0**-9, 2.0**-8, 2.0**-126, 2.0**119, 1]
    for rounding, expected in (("up", up), ("floor", floor)):
        scale = np.asarray(recipes.power_of_two_scale(amax, E4M3, rounding))
        np.testing.assert_array_equal(scale, np.array(expected, np.float32))
        reference = [power_of_two_rule(E4M3, rounding)(float(a)) for a in amax]
        np.testing.assert_array_equal(scale, np.array(reference, np.float32))
    # One block: floor clips 480 to 448 (beyond half a step: saturated), up keeps it.
    x = np.zeros(SHAPE, np.float32)
    x[0, 0, :4] = [480.0, 449.0, 0.9, 0.0]
    results = all_recipes(x, "inputs")
    np.testing.assert_array_equal(results["mxfp8-floor"][0][0, 0, :4], [448, 448, 0.875, 0])
    np.testing.assert_array_equal(results["mxfp8"][0][0, 0, :4], [480, 448, 0.875, 0])
    assert results["mxfp8-floor"][1]["saturation_pct"] == pytest.approx(100 / x.size)
    assert results["mxfp8"][1]["saturation_pct"] == 0
    with pytest.raises(ValueError, match="rounding"):
        recipes.qdq_mxfp8(x, round="nearest")


def test_nvfp4_two_level_scales():
    x = np.zeros(SHAPE, np.float32)
    x[0, 0, :8] = [6, 4, 3, 2, 1.5, 1, 0.5, -6]  # amax 6: block scale 448, total scale 1
    x[0, 0, 16:20] = [0.0006, 0.0003, -0.0001, 0.0002]
    x[0, 0, 32:34] = [6e-6, 3e-6]  # block scale below E4M3's subnormals
    got, stats = all_recipes(x, "inputs")["nvfp4"]
    np.testing.assert_allclose(got[0, 0, :16], x[0, 0, :16], rtol=1e-6)  # on the E2M1 grid
    np.testing.assert_array_equal(got, ref_nvfp4(x.reshape(-1, 70))[0].reshape(SHAPE))
    assert (got[0, 0, 32:34] == 0).all() and np.isfinite(got).all()
    assert stats["underflow_pct"] >= 100 * 2 / 14


def test_all_zero_blocks_and_tensors():
    x = np.zeros(SHAPE, np.float32)
    x[1, 2, 5:9] = [0.5, -2.0, 3.0, 1e-3]
    kernel = np.zeros(KERNEL_SHAPE, np.float32)
    kernel[5:9, 3] = [0.5, -2.0, 3.0, 1e-3]
    exact = {"underflow_pct": 0.0, "saturation_pct": 0.0, "snr_db": math.inf}
    for tensor, role in ((x, "inputs"), (kernel, "kernel"), (np.zeros(SHAPE), "outputs_grad")):
        for recipe, (got, stats) in all_recipes(tensor, role, 0.01).items():
            assert np.isfinite(got).all() and (got[tensor == 0] == 0).all(), recipe
            assert not any(np.isnan(list(stats.values()))), recipe
            if not tensor.any():
                assert stats == exact, recipe
    empty = np.zeros((0, 70), np.float32)
    assert np.asarray(recipes.quantize(empty, "mxfp8", "inputs")).shape == (0, 70)
    assert {k: float(v) for k, v in recipes.what_if(empty, "current", "inputs").items()} == exact


def test_nan_propagates_inf_saturates_scales_ignore_both():
    clean = signed_lognormal(SHAPE, 7, sigma=1.0)
    x = clean.copy()
    x[0, 0, 3], x[0, 0, 4], x[1, 2, 20] = np.nan, np.inf, -np.inf
    zeroed = np.where(np.isfinite(x), clean, 0).astype(np.float32)
    results, zeroed_results = all_recipes(x, "inputs", 0.05), all_recipes(zeroed, "inputs", 0.05)
    others = np.isfinite(x)
    for recipe, (got, stats) in results.items():
        assert np.isnan(got[0, 0, 3]) and np.isnan(got).sum() == 1, recipe
        assert got[0, 0, 4] > 0 and got[1, 2, 20] < 0, recipe
        assert np.isfinite(got[0, 0, 4]) and np.isfinite(got[1, 2, 20]), recipe
        # The other values are quantized as if the non-finite ones were zero.
        clean_got, clean_stats = zeroed_results[recipe]
        np.testing.assert_array_equal(got[others], clean_got[others], err_msg=recipe)
        assert math.isfinite(stats["snr_db"])
        assert stats["snr_db"] == pytest.approx(clean_stats["snr_db"], rel=1e-5), recipe
        # The two infinities count as saturated, out of the non-NaN values.
        saturated = clean_stats["saturation_pct"] * x.size / 100 + 2
        assert stats["saturation_pct"] == pytest.approx(100 * saturated / (x.size - 1), rel=1e-5), (
            recipe
        )


def test_bad_arguments_say_what_is_wrong():
    x = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match="unknown recipe 'fp4'.*mxfp8-floor"):
        recipes.quantize(x, "fp4", "inputs")
    with pytest.raises(ValueError, match="unknown tensor role 'bias'"):
        recipes.what_if(x, "current", "bias")
    with pytest.raises(ValueError, match="delayed_scale"):
        recipes.what_if(x, "delayed", "kernel")
    with pytest.raises(ValueError, match="block_dims"):
        recipes.quantize(x, "mxfp8", "inputs", block_dims=3)
    assert set(recipes.RECIPE_HELP) == set(recipes.RECIPES + recipes.TRAINING_ONLY)
    assert recipes.recipe_format("current", "outputs_grad") is E5M2
    assert recipes.recipe_format("mxfp8", "outputs_grad") is E4M3
