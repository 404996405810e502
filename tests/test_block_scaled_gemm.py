"""mxfp8 and nvfp4 train through block-scaled GEMMs: each GEMM takes its operands' low-precision
values (E4M3; E2M1 for nvfp4) with one scale per block along what it sums, laid out as
jax.nn.scaled_matmul takes them, (1, rows, K) and (1, rows, K / block). On a Blackwell GPU
cuDNN runs that GEMM; elsewhere scaled_matmul's own definition does (each value times its
block's scale, a float32 einsum), since XLA lowers it on no other device.

Against the emulated GEMM (the operands quantize-dequantized, then an einsum):
- mxfp8's scales are powers of two, so every dequantized value and every product of two is
  exact: on a CPU the two agree bit for bit, bf16 layers too (test_rowwise_gemm's argument),
  except for a GEMM summing a single value (the classifier's dgrad, N = 1), where XLA turns
  the emulation's bf16 dot into a bf16 multiply that rounds twice: there the block-scaled
  GEMM, which rounds once, is the exact one;
- nvfp4 multiplies by its FP32 tensor scales once, on the GEMM's output, as the hardware does,
  where the emulation scales every value (rounded to float32, and to bf16 in a bf16 layer):
  they agree to float32's precision, or to bf16's in a bf16 layer.
"""

import math
import re

import jax
import numpy as np
import pytest
from conftest import backend
from test_gemm_operands import LAYERS, operands
from test_rowwise_gemm import rowwise_layer, run, training_step

import fp8demo.env  # noqa: F401
from fp8demo import compiled, recipes
from fp8demo import model as model_lib
from fp8demo.config import TrainConfig


def magnitudes(equation, x, kernel, dy):
    """Each GEMM's sum of |terms|: what the order of a float32 sum can move its result by."""
    inputs, rest = equation.split(",")
    kern, outputs = rest.split("->")
    return (
        np.einsum(equation, np.abs(x), np.abs(kernel)),
        np.einsum(f"{outputs},{kern}->{inputs}", np.abs(dy), np.abs(kernel)),
        np.einsum(f"{inputs},{outputs}->{kern}", np.abs(x), np.abs(dy)),
    )


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("name", ["dense", "query", "attention_output"])
@pytest.mark.parametrize("recipe", model_lib.BLOCK_SCALED_GEMM_RECIPES)
def test_block_scaled_gemms_give_the_emulated_gemms_numbers(recipe, name, dtype, monkeypatch):
    """Forward output and both gradients of one training step; nvfp4 with all its parts on
    (16x16 kernel tiles, Hadamard transform on wgrad, stochastic rounding), which both paths
    must apply to the same values."""
    equation, *shapes = LAYERS[name]
    rng = np.random.default_rng(11)
    if recipe == "mxfp8":
        x, kernel, dy = operands(equation, shapes, rng)
    else:  # values over 2^±4: operands spread over 2^±24 leave NVFP4's range (all zero)
        x, kernel, dy = (
            (rng.normal(size=s) * 2.0 ** rng.integers(-4, 5, s)).astype(np.float32) for s in shapes
        )
    layer = rowwise_layer(name, dtype, kernel, recipe, TrainConfig(seed=3))
    scaled = run(layer, x, dy, emulated=False, monkeypatch=monkeypatch)
    emulated = run(layer, x, dy, emulated=True, monkeypatch=monkeypatch)
    for got, want, magnitude, gemm in zip(
        scaled, emulated, magnitudes(equation, x, kernel, dy), recipes.GEMMS
    ):
        assert np.isfinite(want).all() and np.abs(want).max() > 0
        if recipe == "mxfp8" and backend() == "cpu":  # the same float32 dot on both sides
            np.testing.assert_array_equal(got, want, err_msg=gemm)
        else:  # float32's (bf16's) rounding of the dequantized values, and the sum's order
            step = 2.0**-20 if dtype == "float32" and backend() == "cpu" else 2.0**-6
            assert (np.abs(got - want) <= step * magnitude).all(), gemm


def test_block_scaled_values_are_quantize_before_dequantizing():
    """values × block scale × tensor scale is recipes.quantize's matrix (exactly for mxfp8,
    to float32's rounding for nvfp4), each block's scale shared by its 32 (16) values, K
    padded with zeros to whole blocks; a kernel's rows are its output channels."""
    rng = np.random.default_rng(12)
    x = (rng.normal(size=(4, 6, 40)) * 2.0 ** rng.integers(-12, 13, (4, 6, 40))).astype(np.float32)
    for recipe, fmt, block in (("mxfp8", "float8_e4m3fn", 32), ("nvfp4", "float4_e2m1fn", 16)):
        for role, block_dims in (("inputs", 1), ("outputs_grad", 2), ("kernel", 1)):
            values, scales, tensor = recipes.block_scaled_values(x, recipe, role, block_dims)
            values, scales = np.asarray(values), np.asarray(scales)
            expected = np.asarray(recipes.quantize(x, recipe, role, block_dims=block_dims))
            if role == "kernel":  # (K, 6, 40) -> rows 6 x 40, K = 4
                expected = expected.reshape(4, -1).T
            else:
                expected = expected.reshape(-1, math.prod(x.shape[-block_dims:]))
            rows, k = expected.shape
            assert values.dtype == np.dtype(fmt) and values.shape == (rows, -(-k // block) * block)
            assert scales.shape == (rows, -(-k // block)) and scales.dtype == np.float32
            assert (values[:, k:].astype(np.float32) == 0).all()
            dequantized = values.astype(np.float32) * np.repeat(scales, block, axis=1)
            dequantized = dequantized[:, :k] * np.float32(tensor)
            if recipe == "mxfp8":
                assert float(tensor) == 1.0 and (np.frexp(scales)[0] == 0.5).all()
                np.testing.assert_array_equal(dequantized, expected, err_msg=role)
            else:
                np.testing.assert_allclose(dequantized, expected, rtol=2e-7, err_msg=role)


def test_a_nan_reaches_the_block_scaled_gemm():
    """E4M3 keeps a NaN value; E2M1 has none, so NVFP4 marks its block's scale NaN instead:
    either way the dequantized block holds a NaN where the input did."""
    x = np.ones((2, 64), np.float32)
    x[1, 40] = np.nan
    for recipe, block in (("mxfp8", 32), ("nvfp4", 16)):
        values, scales, tensor = recipes.block_scaled_values(x, recipe, "inputs")
        dequantized = np.asarray(values).astype(np.float32) * np.repeat(scales, block, axis=1)
        assert np.isnan(dequantized[1, 40]) and not np.isnan(dequantized[0]).any(), recipe
        assert not np.isnan(dequantized[1, : 32 if block == 32 else 32]).any(), recipe


def test_block_scaled_values_refuse_other_recipes():
    with pytest.raises(ValueError, match="'block128' is not a block recipe"):
        recipes.block_scaled_values(np.ones((2, 32), np.float32), "block128", "inputs")


def test_scaled_matmul_is_jaxs_definition_where_no_kernel_runs():
    """Off Blackwell the GEMM is jax.nn.scaled_matmul's documented definition; a CPU says why."""
    rng = np.random.default_rng(13)
    a = rng.normal(size=(1, 3, 64)).astype("float8_e4m3fn")
    b = rng.normal(size=(1, 5, 64)).astype("float8_e4m3fn")
    sa, sb = 2.0 ** rng.integers(-4, 5, (1, 3, 2)), 2.0 ** rng.integers(-4, 5, (1, 5, 2))
    got = np.asarray(model_lib.scaled_matmul(a, b, sa.astype(np.float32), sb.astype(np.float32)))
    want = np.einsum(
        "bmk,bnk->bmn",
        a.astype(np.float64) * np.repeat(sa, 32, axis=-1),
        b.astype(np.float64) * np.repeat(sb, 32, axis=-1),
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)
    runs, why = model_lib.block_scaled_gemm_support()
    if backend() == "cpu":
        assert not runs and why == "this CPU has no block-scaled GEMM"
    elif not runs:
        assert "compute capability" in why and "Blackwell" in why


@pytest.mark.parametrize("recipe, element", [("mxfp8", "f8E4M3FN"), ("nvfp4", "f4E2M1FN")])
def test_the_lowered_step_multiplies_block_scaled_operands(recipe, element, monkeypatch):
    """In StableHLO each of the three GEMMs takes the operands' float8 (float4) values: on a
    device without the kernel they are widened right before the dot, on a Blackwell GPU they
    reach the block-scaled GEMM's custom call; emulated, no (1, rows, K) operand exists."""
    equation, x_shape, kernel_shape, y_shape = LAYERS["query"]
    x, kernel, dy = operands(equation, (x_shape, kernel_shape, y_shape), np.random.default_rng(14))
    layer = rowwise_layer("query", "mixed_bfloat16", kernel, recipe, TrainConfig())
    trainable = [v.value for v in layer.trainable_variables]

    def lowered():
        return jax.jit(training_step(layer)).lower(trainable, x, dy).as_text()

    # A (1, rows, K) operand of scaled_matmul, widened for the dot off Blackwell.
    widened = re.compile(rf"stablehlo\.convert %\S+ : \(tensor<1x\d+x\d+x{element}>\)")
    text = lowered()
    if model_lib.block_scaled_gemm_support()[0]:
        assert text.count("__op$block_scaled_dot") == 3
    else:
        assert len(widened.findall(text)) == 6  # two operands x fprop, dgrad, wgrad
    with monkeypatch.context() as patch:
        patch.setattr(model_lib, "BLOCK_SCALED_GEMM_RECIPES", ())
        text = lowered()
        assert not widened.findall(text) and "block_scaled_dot" not in text


def test_a_block_recipe_verdict_says_whether_block_scaled_gemms_ran():
    """Counted cuDNN block-scaled GEMMs are the recipe's own; without them the verdict says
    why (no kernel on this device) and counts no speed-up."""
    found = {
        "matmuls": 29,
        "fp8_matmuls": 0,
        "other_matmuls": {"f32": 29},
        "float8_values": 40,
        "backend": "cpu",
    }
    for recipe in model_lib.BLOCK_SCALED_GEMM_RECIPES:
        text = compiled.verdict({**found, "recipe": recipe})
        assert not compiled.runs_fp8_gemms({**found, "recipe": recipe})
        assert text.startswith(f"The {recipe} recipe's GEMMs are block-scaled GEMMs")
        assert "this CPU has no block-scaled GEMM" in text and "no speed-up is counted" in text
        gpu = {**found, "recipe": recipe, "backend": "gpu", "fp8_matmuls": 24}
        gpu["other_matmuls"] = {"bf16": 5}
        assert compiled.runs_fp8_gemms(gpu)
        assert "24 of the 29 matmuls" in compiled.verdict(gpu)
        assert (
            compiled.headline(gpu)
            == f"{recipe} block-scaled GEMMs: 24 of 29 matmuls on tensor cores"
        )
