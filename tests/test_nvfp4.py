"""NVFP4 trained (`nvfp4`), part by part, against plain numpy references.

NVIDIA's recipe (arXiv 2509.25149, TE `NVFP4BlockScaling`): E2M1 values, 1x16 blocks with E4M3
scales and one FP32 tensor scale, each GEMM's operands along that GEMM's contraction axis;
16x16 blocks for weights; a 16x16 random Hadamard transform on both wgrad operands; stochastic
rounding of the gradients. The references below quantize with explicit loops over blocks and
share no code with fp8demo, only test_recipes.py's rounding to a format's grid.
"""

import dataclasses
import json
import math
import warnings

import jax
import numpy as np
import pytest
from conftest import train_comparison
from test_gemm_operands import LAYERS, close, differs, layer_gemms
from test_recipes import block_slices, round_to_format

import fp8demo.env  # noqa: F401
from fp8demo import model as model_lib
from fp8demo import recipes
from fp8demo.config import NVFP4_PARTS, RECIPE_PRECISIONS, TrainConfig
from fp8demo.recipes import E2M1, E4M3

ALL_OFF = dict.fromkeys(NVFP4_PARTS, False)


# -- the references --------------------------------------------------------------------------


def sylvester_hadamard(signs):
    """H·diag(signs)/4, H the 16x16 Hadamard matrix built by Kronecker products."""
    h = np.array([[1.0]])
    for _ in range(4):
        h = np.kron(np.array([[1.0, 1.0], [1.0, -1.0]]), h)
    return h * np.asarray(signs, float)[None, :] / 4.0


def rotated(matrix, signs):
    """Each full run of 16 values along the last axis times the Hadamard matrix."""
    out = matrix.astype(np.float64).copy()
    r = sylvester_hadamard(signs)
    for start in range(0, matrix.shape[1] - 15, 16):
        out[:, start : start + 16] = out[:, start : start + 16] @ r.T
    return out


def e2m1_neighbours(v):
    """The two E2M1 grid values around each |v| <= 6, with the sign of v."""
    grid = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6])
    magnitude = np.abs(v)
    low = grid[np.searchsorted(grid, magnitude, side="right") - 1]
    high = grid[np.minimum(np.searchsorted(grid, magnitude, side="left"), len(grid) - 1)]
    return np.sign(v) * low, np.sign(v) * high


def nvfp4_reference(matrix, rows=1, cols=16):
    """(quantized, per-element divisor): NVFP4 of a matrix blocked rows x cols along its last
    axis, rounded to nearest even; FP32 arithmetic for the scales as TE computes them."""
    m = np.asarray(matrix, np.float32)
    tensor_amax = np.float32(np.abs(m).max())
    tensor_scale = tensor_amax / np.float32(448 * 6) if tensor_amax > 0 else np.float32(1)
    quantized, divisor = np.zeros(m.shape), np.zeros(m.shape, np.float32)
    for block in block_slices(m.shape, rows, cols):
        block_amax = np.float32(np.abs(m[block]).max())
        block_scale = np.float32(round_to_format(block_amax / np.float32(6) / tensor_scale, E4M3))
        divisor[block] = block_scale * tensor_scale
        if divisor[block].max() > 0:
            quantized[block] = round_to_format(m[block] / divisor[block], E2M1) * divisor[block]
    return quantized, divisor


def reference_operand(x, letters, along, rows=1, signs=None):
    """x as one GEMM's operand: the `along` axes moved last and flattened, optionally
    Hadamard-transformed along them, quantized in rows x 16 blocks, moved back."""
    axes = [letters.index(c) for c in along]
    others = [a for a in range(x.ndim) if a not in axes]
    moved = np.transpose(x, others + axes)
    matrix = moved.reshape(-1, math.prod(x.shape[a] for a in axes))
    if signs is not None:
        matrix = rotated(matrix, signs).astype(np.float32)
    quantized = nvfp4_reference(matrix, rows, 16)[0]
    return np.transpose(quantized.reshape(moved.shape), np.argsort(others + axes))


def reference_gemms(equation, x, kernel, dy, two_d=False, signs=None):
    """(y, dx, dkernel) of NVFP4 without stochastic rounding: each operand along its GEMM's
    contraction axis; kernels in 16x16 blocks with two_d; wgrad operands transformed with
    the Hadamard signs when given."""
    inputs, rest = equation.split(",")
    kern, outputs = rest.split("->")
    k = "".join(c for c in kern if c in inputs and c not in outputs)
    n = "".join(c for c in kern if c in outputs and c not in inputs)
    m = "".join(c for c in inputs if c in outputs and c not in kern)
    rows = 16 if two_d else 1
    y = np.einsum(
        equation,
        reference_operand(x, inputs, k),
        reference_operand(kernel, kern, k, rows),
    )
    dx = np.einsum(
        f"{outputs},{kern}->{inputs}",
        reference_operand(dy, outputs, n),
        reference_operand(kernel, kern, n, rows),
    )
    dkernel = np.einsum(
        f"{inputs},{outputs}->{kern}",
        reference_operand(x, inputs, m, signs=signs),
        reference_operand(dy, outputs, m, signs=signs),
    )
    return y, dx, dkernel


# -- one layer ---------------------------------------------------------------------------------


def nvfp4_layer(name, kernel, seed=42, **parts):
    """A float32 float8 layer of LAYERS switched to nvfp4 with the given parts (others off)."""
    import keras

    equation, input_shape, kernel_shape, grad_shape = LAYERS[name]
    if name == "dense":
        layer = keras.layers.Dense(kernel_shape[-1], dtype="float32")
    else:
        bias_axes = equation.split("->")[1][-1]
        layer = keras.layers.EinsumDense(
            equation, output_shape=grad_shape[1:], bias_axes=bias_axes, dtype="float32"
        )
    model = keras.Sequential([keras.Input(input_shape[1:]), layer])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.quantize("float8")
    layer._kernel.assign(kernel)
    config = TrainConfig(seed=seed, **{**ALL_OFF, **parts})
    model_lib.use_recipe(model, "nvfp4", config)
    return layer


def varied(rng, shape):
    """Values whose magnitudes spread over 2^-4 .. 2^4 element by element: every choice of
    block (axis, 1x16 or 16x16, transformed or not) rounds them differently, while most stay
    within a 16-value block's reach in E2M1 (a wider spread would flush them to zero)."""
    return (rng.normal(size=shape) * 2.0 ** rng.integers(-4, 5, size=shape)).astype(np.float32)


def gemms(name, seed=42, **parts):
    """(equation, (x, kernel, dy), (y, dx, dkernel)) of one training step of a layer."""
    equation, input_shape, kernel_shape, grad_shape = LAYERS[name]
    rng = np.random.default_rng(len(name))
    x, kernel, dy = (varied(rng, shape) for shape in (input_shape, kernel_shape, grad_shape))
    layer = nvfp4_layer(name, kernel, seed, **parts)
    y, dx, dkernel, _ = layer_gemms(layer, x, dy)
    return equation, (x, kernel, dy), (y, dx, dkernel)


@pytest.mark.parametrize("name", LAYERS)
def test_each_gemm_is_e2m1_with_e4m3_block_scales_along_its_contraction_axis(name):
    equation, (x, kernel, dy), got = gemms(name)
    for actual, want, gemm in zip(got, reference_gemms(equation, x, kernel, dy), recipes.GEMMS):
        close(actual, want, f"nvfp4 {gemm}")
    # Blocks along another axis (the forward's operands reused in wgrad) give another dW.
    inputs, rest = equation.split(",")
    kern, outputs = rest.split("->")
    k = "".join(c for c in kern if c in inputs and c not in outputs)
    n = "".join(c for c in kern if c in outputs and c not in inputs)
    reused = np.einsum(
        f"{inputs},{outputs}->{kern}",
        reference_operand(x, inputs, k),
        reference_operand(dy, outputs, n),
    )
    assert differs(got[2], reused)


def test_the_quantizer_is_the_reference_value_by_value():
    """Operand level, exact: 1x16 blocks, E4M3 block scales, the FP32 tensor scale; a partial
    last block (40 = 2 x 16 + 8) and a block too small for its E4M3 scale (flushed to 0)."""
    rng = np.random.default_rng(5)
    matrix = (rng.normal(size=(6, 40)) * 2.0 ** rng.integers(-12, 13, (6, 40))).astype(np.float32)
    matrix[0, :16] = 1e-9  # its block scale rounds to 0 in E4M3
    got = np.asarray(recipes.quantize(matrix, "nvfp4", "inputs"))
    want, divisor = nvfp4_reference(matrix)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    assert (got[0, :16] == 0).all() and (divisor[0, :16] == 0).all()
    values = want[divisor > 0] / divisor[divisor > 0]
    assert set(np.abs(np.round(values, 6))) <= {0, 0.5, 1, 1.5, 2, 3, 4, 6}


@pytest.mark.parametrize("name", ["dense", "attention_output"])
def test_2d_weight_blocks_quantize_w_and_its_transpose_alike(name):
    equation, (x, kernel, dy), got = gemms(name, nvfp4_2d_weights=True)
    want = reference_gemms(equation, x, kernel, dy, two_d=True)
    for actual, expected, gemm in zip(got, want, recipes.GEMMS):
        close(actual, expected, f"nvfp4 2D {gemm}")
    _, _, plain = gemms(name)
    assert differs(got[0], plain[0]) and differs(got[1], plain[1])  # fprop, dgrad change
    np.testing.assert_array_equal(got[2], plain[2])  # wgrad has no kernel operand
    # Operand level: the kernel and its transpose quantize to the same values.
    matrix = kernel.reshape(-1, kernel.shape[-1])  # (K, N)
    two_d = recipes.NVFP4Parts(two_d_weights=True)
    w = np.asarray(recipes.quantize(matrix, "nvfp4", "kernel", nvfp4=two_d))
    w_t = np.asarray(recipes.quantize(matrix.T, "nvfp4", "kernel", nvfp4=two_d))
    np.testing.assert_array_equal(w, w_t.T)
    w_1d = np.asarray(recipes.quantize(matrix, "nvfp4", "kernel"))
    assert differs(w_1d, np.asarray(recipes.quantize(matrix.T, "nvfp4", "kernel")).T)


def test_the_hadamard_transform_is_orthogonal_and_keeps_products():
    signs = recipes.hadamard_signs(42)
    assert set(signs) == {-1, 1} and len(signs) == 16
    assert signs != recipes.hadamard_signs(43)
    r = recipes.hadamard_matrix(signs)
    np.testing.assert_allclose(r, sylvester_hadamard(signs), rtol=0, atol=0)
    np.testing.assert_allclose(r @ r.T, np.eye(16), atol=1e-6)
    # Along a contraction axis of 40 (two full runs and a tail left as it is), transforming
    # both operands restores their product up to float32 rounding.
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(5, 40)).astype(np.float32), rng.normal(size=(7, 40)).astype(np.float32)
    ra, rb = (np.asarray(recipes.random_hadamard(m, signs)) for m in (a, b))
    np.testing.assert_allclose(ra, rotated(a, signs), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ra[:, 32:], a[:, 32:])
    assert differs(ra, a)
    np.testing.assert_allclose(ra @ rb.T, a @ b.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["dense", "query"])
def test_the_hadamard_transform_applies_to_wgrad_only(name):
    equation, (x, kernel, dy), got = gemms(name, nvfp4_rht=True)
    signs = recipes.hadamard_signs(42)
    want = reference_gemms(equation, x, kernel, dy, signs=signs)
    for actual, expected, gemm in zip(got, want, recipes.GEMMS):
        close(actual, expected, f"nvfp4 RHT {gemm}")
    _, _, plain = gemms(name)
    np.testing.assert_array_equal(got[0], plain[0])
    np.testing.assert_array_equal(got[1], plain[1])
    assert differs(got[2], plain[2])
    # Without quantization the transform changes nothing: it is undone inside the product.
    inputs, rest = equation.split(",")
    kern, outputs = rest.split("->")
    m = "".join(c for c in inputs if c in outputs and c not in kern)
    x_m = np.moveaxis(x, [inputs.index(c) for c in m], range(len(m))).reshape(-1, x.size // 160)
    dy_m = np.moveaxis(dy, [outputs.index(c) for c in m], range(len(m))).reshape(160, -1)
    exact = x_m.T.astype(np.float64) @ dy_m
    undone = rotated(x_m.T, signs) @ rotated(dy_m.T, signs).T
    np.testing.assert_allclose(undone, exact, rtol=1e-9, atol=1e-9 * np.abs(exact).max())


def test_stochastic_rounding_is_unbiased_and_seeded():
    """Each value goes to one of its two grid neighbours, on average to itself; one key gives
    the same values, another key others; inputs and kernels keep nearest rounding."""
    sr = recipes.NVFP4Parts(stochastic_rounding=True)
    rng = np.random.default_rng(11)
    row = rng.normal(size=16).astype(np.float32)
    matrix = np.tile(row, (4096, 1))  # every row one block with the same scales

    def rounded(key):
        return np.asarray(
            recipes.quantize(matrix, "nvfp4", "outputs_grad", gemm="dgrad", nvfp4=sr, key=key)
        )

    got = rounded(jax.random.PRNGKey(1))
    nearest, divisor = nvfp4_reference(matrix)
    low, high = (v.astype(np.float32) * divisor for v in e2m1_neighbours(matrix / divisor))
    assert ((got == low) | (got == high)).all()
    step, inside = np.abs(high - low)[0], np.abs(matrix / divisor)[0] < 6  # not clipped
    assert inside.sum() >= 14
    assert (np.abs(got.mean(axis=0) - row)[inside] <= 0.05 * step[inside]).all()
    bias_nearest = np.abs(nearest.mean(axis=0) - row)
    assert (bias_nearest > 0.1 * step).sum() >= 8  # nearest rounding is biased there
    np.testing.assert_array_equal(got, rounded(jax.random.PRNGKey(1)))
    assert differs(got, rounded(jax.random.PRNGKey(2)))
    for role in ("inputs", "kernel"):
        plain = recipes.quantize(matrix, "nvfp4", role, gemm="fprop")
        with_sr = recipes.quantize(matrix, "nvfp4", role, nvfp4=sr, key=jax.random.PRNGKey(1))
        np.testing.assert_array_equal(plain, with_sr)
    with pytest.raises(ValueError, match="stochastic rounding needs a random key"):
        recipes.quantize(matrix, "nvfp4", "outputs_grad", nvfp4=sr)


def test_stochastic_rounding_in_a_layer_follows_the_seed():
    """The gradients change with the run's seed, not with a rerun; the forward does not."""
    first = gemms("dense", seed=1, nvfp4_stochastic_rounding=True)[2]
    again = gemms("dense", seed=1, nvfp4_stochastic_rounding=True)[2]
    other = gemms("dense", seed=2, nvfp4_stochastic_rounding=True)[2]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first[0], other[0])
    assert differs(first[1], other[1]) and differs(first[2], other[2])
    plain = gemms("dense")[2]
    np.testing.assert_array_equal(first[0], plain[0])
    # Unbiased: close to nearest rounding's gradients, and not equal to them.
    assert differs(first[2], plain[2])
    scale = np.abs(plain[2]).max()
    assert np.abs(first[2] - plain[2]).mean() < 0.05 * scale


def test_the_config_switches_the_parts_and_saves_no_extra_weights():
    config = TrainConfig(vocab_size=700, seq_len=48)
    assert all(getattr(config, part) for part in NVFP4_PARTS)  # on, as the paper trains
    assert RECIPE_PRECISIONS["nvfp4"] == "nvfp4"
    model = model_lib.build(config, "nvfp4")
    assert model_lib.scaling_recipe(model) == "nvfp4"
    assert model_lib.recipe_parts(model) == dict.fromkeys(NVFP4_PARTS, True)
    fp8_model = model_lib.build(config, "fp8")
    assert [w.path for w in model.weights] == [w.path for w in fp8_model.weights]
    seeds = [v.path for v in model.variables if "nvfp4_rounding" in v.path]
    assert len(seeds) == len(set(seeds)) == 8  # one random stream per float8 layer
    off = model_lib.build(dataclasses.replace(config, **ALL_OFF), "nvfp4")
    assert model_lib.recipe_parts(off) == ALL_OFF
    assert not [v for v in off.variables if "nvfp4_rounding" in v.path]
    assert model_lib.recipe_parts(model_lib.build(config, "mxfp8")) is None


def test_the_parts_are_flags_url_parameters_and_sweepable():
    from fp8demo import cli
    from fp8demo.config import from_query, to_query
    from fp8demo.sweep_space import parse_space

    args = cli.parse_args(["train", "--precision", "nvfp4", "--nvfp4-rht", "false", "--no-wait"])
    config = cli.config_from_args(args)
    assert config.precisions == ("nvfp4",) and config.nvfp4_rht is False
    assert config.nvfp4_2d_weights is True and config.nvfp4_stochastic_rounding is True
    assert to_query(config) == {"precisions": "nvfp4", "nvfp4_rht": "false"}
    values, warnings_ = from_query({"nvfp4_stochastic_rounding": "off"})
    assert values == {} and warnings_ == [
        "nvfp4_stochastic_rounding must be true or false, got 'off'."
    ]
    assert TrainConfig(nvfp4_2d_weights="yes").errors() == [
        "nvfp4_2d_weights must be true or false."
    ]
    assert set(parse_space(["nvfp4_rht=true,false"])) == {"nvfp4_rht"}


# -- trained, reloaded, predicting -----------------------------------------------------------

TINY = dict(subset=128, vocab_size=700, seq_len=48, epochs=1, ptq=False, probe_every=0)


def test_nvfp4_trains_reloads_and_predicts_through_the_engine(tmp_path_factory, imdb_folder):
    """All parts on (the default): trained by the worker, recorded, reloaded, predicting."""
    from fp8demo.predict import load_run
    from fp8demo.store import Store

    texts = ["a wonderful, moving film", "boring and awful, a waste of time", "it was fine"]
    config = TrainConfig(**TINY, precisions=("bf16", "nvfp4"))
    done = train_comparison(tmp_path_factory.mktemp("nvfp4-home"), imdb_folder, config, texts)
    store, run_id = Store(done["home"]), done["run_ids"]["nvfp4"]
    run = store.run(run_id)
    assert run["status"] == "finished", run.get("error")
    assert np.isfinite(run["test_loss"]) and 0.0 <= run["test_accuracy"] <= 1.0
    assert len(store.step_metrics(run_id)["step"]) == 4  # 128 reviews, batch 32
    assert run["summary"]["compiled_step"]["recipe"] == "nvfp4"
    saved = json.loads((store.run_dir(run_id) / "config.json").read_text())
    assert saved["precision"] == "nvfp4"
    assert all(saved["config"][part] is True for part in NVFP4_PARTS)
    loaded = load_run(store, run_id)
    assert model_lib.recipe_parts(loaded.model) == dict.fromkeys(NVFP4_PARTS, True)
    after = loaded.predict(texts)
    np.testing.assert_allclose(after, done["predictions_before_save"][run_id], atol=1e-6)


@pytest.mark.parametrize("part", NVFP4_PARTS)
def test_nvfp4_trains_and_reloads_with_each_part_switched_off(part, tmp_path):
    """Two training steps with one part off: the loss is finite, the weights move, and a model
    rebuilt from the config and the saved weights predicts the same."""
    config = TrainConfig(vocab_size=700, seq_len=48, **{part: False})
    rng = np.random.default_rng(0)
    tokens = rng.integers(2, 700, size=(64, 48)).astype("int32")
    labels = rng.integers(0, 2, size=(64, 1)).astype("float32")
    model = model_lib.compile(model_lib.build(config, "nvfp4"), config)
    assert model_lib.recipe_parts(model) == {p: p != part for p in NVFP4_PARTS}
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(tokens, labels, batch_size=32, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    moved = [not np.array_equal(a, b) for a, b in zip(before, model.get_weights())]
    assert sum(moved) >= len(moved) // 2
    if part != "nvfp4_stochastic_rounding":  # each layer's random stream is at [seed, step]
        states = [np.asarray(v.value) for v in model.variables if "nvfp4_rounding" in v.path]
        assert len(states) == 8 and all(list(state) == [42, 2] for state in states)
    model.save_weights(tmp_path / "model.weights.h5")
    rebuilt = model_lib.build(config, "nvfp4")
    rebuilt.load_weights(tmp_path / "model.weights.h5")
    np.testing.assert_allclose(
        rebuilt.predict(tokens[:4], verbose=0), model.predict(tokens[:4], verbose=0), atol=1e-6
    )


def test_the_train_page_shows_the_parts_only_with_nvfp4(tmp_path, monkeypatch):
    import os

    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FP8DEMO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FP8DEMO_STORE", raising=False)
    st.cache_resource.clear()
    st.cache_data.clear()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    at = AppTest.from_file(os.path.join(root, "pages/train.py"), default_timeout=60).run()
    assert not at.exception
    keys = {c.key for c in at.checkbox}
    assert not keys & set(NVFP4_PARTS)
    help_text = at.multiselect("precisions").help
    assert "about 15 % of the linear layers in bf16" in help_text
    at.multiselect("precisions").set_value(["bf16", "nvfp4"]).run()
    assert not at.exception and not at.error
    assert all(at.checkbox(part).value is True for part in NVFP4_PARTS)
    at.checkbox("nvfp4_rht").uncheck().run()
    assert dict(at.query_params) == {"precisions": "bf16,nvfp4", "nvfp4_rht": "false"}
    assert any("15 % of the linear layers" in c.value for c in at.caption)
    st.cache_resource.clear()
    st.cache_data.clear()
