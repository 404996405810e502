"""Training with other FP8 scaling recipes: fp8-current, fp8-rowwise, fp8-block128, mxfp8.

First one layer at a time, against recipes.quantize applied by hand: the forward pass is the
matmul of the recipe's quantized inputs and kernel, the backward pass quantizes the output
gradient with the recipe, and Keras' bookkeeping still records each tensor's amax. Then a
tiny comparison of all six precisions through the worker: trained, recorded, drawn on Live
and Results, reloaded with the predictions it had before saving.
"""

import json
import os
import warnings

import numpy as np
import pytest
from conftest import backend, train_comparison

import fp8demo.env  # noqa: F401
from fp8demo import compiled, gemms, recipes
from fp8demo import model as model_lib
from fp8demo.config import RECIPE_PRECISIONS, ConfigError, TrainConfig

ALL_SIX = ("bf16", "fp8", "fp8-current", "fp8-rowwise", "fp8-block128", "mxfp8")
TINY = dict(subset=128, vocab_size=700, seq_len=48, epochs=1, ptq=False, probe_every=0)


def varied(rng, shape) -> np.ndarray:
    """Values whose magnitudes spread over 2^-12 .. 2^12, more than E4M3's normal range: which
    small values a scale flushes to zero or to subnormals then depends on what it covers (a
    tensor, row, 128-tile or 32-block), so every recipe and blocking gives different values."""
    magnitudes = 2.0 ** rng.integers(-12, 13, size=shape)
    return (rng.normal(size=shape) * magnitudes).astype(np.float32)


def float8_layer(layer, input_shape, recipe, rng):
    """`layer` (float32 compute, so results compare to float32 arithmetic) built, quantized
    to float8 by Keras, given a varied kernel, then switched to `recipe`."""
    import keras

    model = keras.Sequential([keras.Input(input_shape), layer])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.quantize("float8")
    layer._kernel.assign(varied(rng, layer._kernel.shape))
    layer.bias.assign(rng.normal(size=layer.bias.shape).astype(np.float32))
    model_lib.use_recipe(model, recipe)
    return layer


def q(x, recipe, role, block_dims=1) -> np.ndarray:
    return np.asarray(recipes.quantize(x, recipe, role, block_dims=block_dims))


def close(actual, expected):
    """Equal up to float32 summation order."""
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * scale)


def differs(actual, expected) -> bool:
    scale = float(np.abs(expected).max())
    return not np.allclose(actual, expected, rtol=1e-3, atol=1e-3 * scale)


LAYOUTS = [  # (equation, role, operand shape, blocked axes moved to recipes.quantize's place)
    (None, "inputs", (2, 3, 256), lambda x: (x, 1)),  # Dense: "...a,ab->...b"
    (None, "kernel", (256, 48), lambda x: (x, 1)),
    ("abcd,cde->abe", "inputs", (2, 3, 4, 64), lambda x: (x, 2)),  # heads x head size
    ("abcd,cde->abe", "kernel", (4, 64, 16), lambda x: (x, 2)),
    ("abcd,cde->abe", "outputs_grad", (2, 3, 16), lambda x: (x, 1)),
    ("abc,cde->abde", "outputs_grad", (2, 5, 2, 128), lambda x: (x, 2)),  # query, key, value
    ("abc,dc->abd", "kernel", (16, 256), lambda x: (x.T, 1)),  # kernel stored as (N, K)
    ("abc,cd->adb", "outputs_grad", (2, 16, 5), lambda x: (x.transpose(0, 2, 1), 1)),
]


@pytest.mark.parametrize("recipe", model_lib.RECIPES)
@pytest.mark.parametrize("equation, role, shape, blocked", LAYOUTS)
def test_operands_are_quantized_in_blocks_along_what_the_matmul_contracts(
    recipe, equation, role, shape, blocked
):
    """Exactly recipes.quantize with the contracted axes where it blocks: trailing for inputs
    and output gradients, leading for kernels (the output gradient's are the kernel's
    output axes, contracted by the input-gradient matmul)."""
    from types import SimpleNamespace

    import jax

    rng = np.random.default_rng(3)
    x = varied(rng, shape)
    axes = gemms.operand_axes(SimpleNamespace(equation=equation))[role]
    # Compiled, as in a training step (eager op-by-op rounding can differ in the last bit).
    got = np.asarray(jax.jit(lambda x: model_lib.recipe_qdq(x, recipe, role, axes, "float32"))(x))
    moved, block_dims = blocked(x)
    expected = q(moved, recipe, role, block_dims)
    undo = blocked(expected)[0] if moved is not x else expected  # the transposes undo themselves
    np.testing.assert_array_equal(got, undo)


@pytest.mark.parametrize("recipe", model_lib.RECIPES)
def test_dense_forward_multiplies_the_recipes_quantized_inputs_and_kernel(recipe):
    import keras

    rng = np.random.default_rng(0)
    layer = float8_layer(keras.layers.Dense(48, dtype="float32"), (3, 256), recipe, rng)
    x = varied(rng, (2, 3, 256))
    kernel, bias = np.asarray(layer._kernel.value), np.asarray(layer.bias.value)
    out = np.asarray(layer(x))
    close(out, q(x, recipe, "inputs") @ q(kernel, recipe, "kernel") + bias)
    assert differs(out, x @ kernel + bias)  # quantization shows at all
    other = "current" if recipe != "current" else "mxfp8"
    assert differs(out, q(x, other, "inputs") @ q(kernel, other, "kernel") + bias)


@pytest.mark.parametrize("recipe", model_lib.RECIPES)
def test_einsum_blocks_run_along_both_contracted_axes(recipe):
    """The attention output's einsum contracts two axes (heads x head size): blocks span both."""
    import keras

    rng = np.random.default_rng(1)
    layer = keras.layers.EinsumDense(
        "abcd,cde->abe", output_shape=(3, 16), bias_axes="e", dtype="float32"
    )
    layer = float8_layer(layer, (3, 4, 64), recipe, rng)
    x = varied(rng, (2, 3, 4, 64))
    kernel, bias = np.asarray(layer._kernel.value), np.asarray(layer.bias.value)
    expected = np.einsum("abcd,cde->abe", q(x, recipe, "inputs", 2), q(kernel, recipe, "kernel", 2))
    close(np.asarray(layer(x)), expected + bias)


@pytest.mark.parametrize("recipe", model_lib.PER_TENSOR_RECIPES)
def test_the_output_gradient_passes_through_the_recipes_quantization(recipe):
    """Backward of a per-tensor recipe: both matmuls take the recipe's quantized output
    gradient and the forward's quantized operands; Keras' bookkeeping records each amax.
    (Per-row and per-block recipes requantize each GEMM's operands: test_gemm_operands.py.)"""
    import jax
    import keras

    rng = np.random.default_rng(2)
    layer = keras.layers.EinsumDense(
        "abc,cde->abde", output_shape=(5, 2, 128), bias_axes="e", dtype="float32"
    )
    layer = float8_layer(layer, (5, 256), recipe, rng)
    x = varied(rng, (2, 5, 256))
    gradient = varied(rng, (2, 5, 2, 128))
    names = [v.name for v in layer.trainable_variables]
    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    def forward(trainable, x):
        return layer.stateless_call(trainable, non_trainable, x, training=True)[0]

    _, pullback = jax.vjp(forward, trainable, x)
    grads, dx = pullback(gradient)
    grads = dict(zip(names, (np.asarray(g) for g in grads)))
    kernel = np.asarray(layer._kernel.value)
    xq, kq = q(x, recipe, "inputs"), q(kernel, recipe, "kernel")
    gq = q(gradient, recipe, "outputs_grad", 2)  # blocks along d, e
    close(np.asarray(dx), np.einsum("abde,cde->abc", gq, kq))
    close(grads["kernel"], np.einsum("abc,abde->cde", xq, gq))
    assert differs(np.asarray(dx), np.einsum("abde,cde->abc", gradient, kq))
    # Keras' delayed bookkeeping keeps running: each history's newest entry is the amax.
    assert grads["inputs_amax_history"][0] == np.abs(x).max()
    assert grads["kernel_amax_history"][0] == np.abs(kernel).max()
    assert grads["outputs_grad_amax_history"][0] == np.abs(gradient).max()


def test_each_recipe_precision_is_the_fp8_model_with_its_recipe():
    """Same layers, variables (saved-weight layout) and initial weights as fp8, from one seed."""
    from fp8demo import fp8

    config = TrainConfig(vocab_size=700, seq_len=48)
    reference = model_lib.build(config, "fp8")
    assert model_lib.scaling_recipe(reference) == "delayed"
    assert model_lib.scaling_recipe(model_lib.build(config, "bf16")) is None
    for precision, recipe in RECIPE_PRECISIONS.items():
        model = model_lib.build(config, precision)
        assert [w.path for w in model.weights] == [w.path for w in reference.weights]
        for mine, theirs in zip(model.get_weights(), reference.get_weights()):
            np.testing.assert_array_equal(mine, theirs)
        layers = fp8.float8_layers(model)
        assert len(layers) == len(fp8.float8_layers(reference)) == 8
        assert {layer.scaling_recipe for layer in layers} == {recipe}
        assert model_lib.scaling_recipe(model) == recipe
    with pytest.raises(ValueError, match="no training recipe 'delayed'"):
        model_lib.use_recipe(reference, "delayed")


def test_only_per_tensor_recipes_claim_the_fp8_gemms_counted():
    """On a GPU the count decides for per-tensor scales (and for the block-scaled GEMMs,
    test_block_scaled_gemm); emulated recipes stay emulated even if float8 operands reach a
    dot."""
    found = {
        "matmuls": 29,
        "fp8_matmuls": 20,
        "other_matmuls": {"bf16": 9},
        "float8_values": 40,
        "backend": "gpu",
    }
    for recipe in ("delayed", "current"):
        assert compiled.runs_fp8_gemms({**found, "recipe": recipe})
        assert "20 of the 29 matmuls in the compiled training step run as FP8 GEMMs" in (
            compiled.verdict({**found, "recipe": recipe})
        )
    for recipe, scope in compiled.EMULATED_RECIPES.items():
        text = compiled.verdict({**found, "recipe": recipe})
        assert not compiled.runs_fp8_gemms({**found, "recipe": recipe})
        assert text.startswith(f"The {recipe} recipe is emulated: it scales with {scope}")
        assert "run as FP8 GEMMs" not in text and "no FP8 speed-up is counted" in text
        assert compiled.headline({**found, "recipe": recipe}) == (
            f"{recipe} scaling emulated (numerics, not speed)"
        )


def test_cli_accepts_recipe_precisions_and_refuses_unknown_ones():
    from fp8demo import cli

    args = cli.parse_args(["train", "--precision", "bf16,fp8,fp8-current,mxfp8", "--no-wait"])
    assert cli.config_from_args(args).precisions == ("bf16", "fp8", "fp8-current", "mxfp8")
    args = cli.parse_args(["train", "--precision", "bf16,fp8-block64"])
    with pytest.raises(ConfigError) as refused:
        cli.config_from_args(args)
    assert str(refused.value) == (
        "Unknown precision fp8-block64: choose from bf16, fp8, fp8-current, fp8-rowwise, "
        "fp8-rowwise-gw-hp, fp8-block128, mxfp8, nvfp4, float32."
    )


# -- all six precisions through the worker ----------------------------------------------------


@pytest.fixture(scope="module")
def six(tmp_path_factory, imdb_folder):
    """A finished subset comparison of all six precisions, trained by the engine, with each
    model's predictions on three texts just before its weights were saved."""
    from fp8demo.store import Store

    config = TrainConfig(**TINY, precisions=ALL_SIX)
    # Three texts: prediction pads the batch to four rows, which must not change them.
    texts = ["a wonderful, moving film", "boring and awful, a waste of time", "it was fine"]
    done = train_comparison(tmp_path_factory.mktemp("six-home"), imdb_folder, config, texts)
    return dict(done, store=Store(done["home"]), before=done["predictions_before_save"])


def test_all_six_train_and_are_recorded(six):
    store = six["store"]
    for precision, run_id in six["run_ids"].items():
        run = store.run(run_id)
        assert run["status"] == "finished", (precision, run.get("error"))
        assert 0.0 <= run["test_accuracy"] <= 1.0 and np.isfinite(run["test_loss"])
        assert len(store.step_metrics(run_id)["step"]) == 4  # 128 reviews, batch 32
        if precision == "bf16":
            assert "compiled_step" not in run["summary"]
            continue
        # The recorder reads Keras' amax histories, which recipe runs keep writing.
        steps, amax = store.fp8_amax(run_id)
        assert len(steps) and amax.shape[1:] == (8, 3) and (amax[-1] > 0).all()
        found = run["summary"]["compiled_step"]
        recipe = RECIPE_PRECISIONS.get(precision, "delayed")
        assert found["recipe"] == recipe and found["backend"] == backend()
        text = compiled.verdict(found)
        if recipe in compiled.EMULATED_RECIPES:
            assert text.startswith(f"The {recipe} recipe is emulated")
            assert "no FP8 speed-up is counted" in text
            assert not compiled.runs_fp8_gemms(found)
            assert compiled.headline(found) == f"{recipe} scaling emulated (numerics, not speed)"
        elif recipe in compiled.BLOCK_SCALED_OPERANDS and not found["fp8_matmuls"]:
            assert text.startswith(f"The {recipe} recipe's GEMMs are block-scaled GEMMs")
            assert found["no_block_scaled_gemm"] in text and not compiled.runs_fp8_gemms(found)
            if backend() == "cpu":
                assert "this CPU has no block-scaled GEMM" in text
        elif backend() == "cpu":  # per-tensor scales: the count decides; none on a CPU
            assert found["fp8_matmuls"] == 0 and text.startswith("None of the")


def test_all_six_predict_the_same_after_reload(six):
    from fp8demo.predict import load_run

    store = six["store"]
    for precision, run_id in six["run_ids"].items():
        loaded = load_run(store, run_id)
        assert loaded.precision == precision
        after = loaded.predict(six["texts"])
        np.testing.assert_allclose(after, six["before"][run_id], atol=1e-6, err_msg=precision)
    saved = json.loads((store.run_dir(six["run_ids"]["mxfp8"]) / "config.json").read_text())
    assert saved["precision"] == "mxfp8"


def test_all_six_show_live_and_in_results(six, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from fp8demo import charts

    monkeypatch.setenv("FP8DEMO_HOME", str(six["home"]))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cid = str(six["comparison_id"])
    st.cache_resource.clear()
    st.cache_data.clear()
    live = AppTest.from_file(os.path.join(root, "pages/live.py"), default_timeout=60)
    live.query_params["comparison"] = cid
    live.run()
    assert not live.exception
    loss = next(
        json.loads(el.proto.spec)
        for el in live.get("plotly_chart")
        if "Loss" in json.loads(el.proto.spec)["layout"]["title"]["text"]
    )
    legend = {t["name"]: t["line"]["color"] for t in loss["data"] if t["name"] in ALL_SIX}
    assert legend == {p: charts.color(p) for p in ALL_SIX}
    assert len(set(legend.values())) == 6  # one colour each
    captions = [c.value for c in live.caption]
    assert "block128 scaling emulated (numerics, not speed)" in captions
    mxfp8 = six["store"].run(six["run_ids"]["mxfp8"])["summary"]["compiled_step"]
    assert compiled.headline(mxfp8).startswith("mxfp8 block-scaled GEMMs") and (
        compiled.headline(mxfp8) in captions
    )

    results = AppTest.from_file(os.path.join(root, "pages/results.py"), default_timeout=60)
    results.query_params["comparison"] = cid
    results.run()
    assert not results.exception
    metrics = {m.label: m for m in results.metric}
    runs = {p: six["store"].run(i) for p, i in six["run_ids"].items()}
    for precision in ALL_SIX[1:]:
        difference = (runs[precision]["test_accuracy"] - runs["bf16"]["test_accuracy"]) * 100
        assert metrics[f"{precision} test accuracy"].delta == f"{difference:+.2f} pp vs bf16"
        assert metrics[f"{precision} training speed"].delta.endswith("% vs bf16")
    shown = [i.value for i in results.info] + [s.value for s in results.success]
    for precision in [p for p in RECIPE_PRECISIONS if p in runs]:  # the six's recipe runs
        found = runs[precision]["summary"]["compiled_step"]
        assert f"**{precision}**: {compiled.verdict(found)}" in shown
    st.cache_resource.clear()
    st.cache_data.clear()
