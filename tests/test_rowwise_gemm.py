"""fp8-rowwise trains through real f8 x f8 GEMMs: each GEMM multiplies the E4M3 values of its
operands (float32 accumulation) and scales its output by their per-row scales afterwards,
which is exact because torchao's scales are constant along what a GEMM sums.

Against the emulated GEMM (the same operands quantize-dequantized, then an einsum): power-of-
two scales make every dequantized value, and every product of two, exact in float32, so the
two differ at most in the order of the float32 sum. On a CPU XLA runs both as the same float32
dot (it widens float8 and bf16 operands), so they agree bit for bit, bf16 layers too; on a GPU
cuBLASLt's FP8 GEMM sums in its own order, so there they agree within one bf16 step.
"""

import re
import warnings

import jax
import numpy as np
import pytest
from conftest import backend
from test_gemm_operands import LAYERS, operands

import fp8demo.env  # noqa: F401
from fp8demo import compiled, recipes
from fp8demo import model as model_lib
from fp8demo.config import TrainConfig

# A StableHLO dot_general of two E4M3 operands into float32, with its three types.
F8_DOT = re.compile(
    r"stablehlo\.dot_general .*: \((tensor<[^>]*xf8E4M3FN>), (tensor<[^>]*xf8E4M3FN>)\) "
    r"-> (tensor<[^>]*xf32>)"
)


def rowwise_layer(name, dtype, kernel, recipe="rowwise", config=None):
    """`LAYERS[name]` (a Dense layer for "dense", else an EinsumDense) in `dtype`, quantized
    by Keras and switched to `recipe` (with `config`'s nvfp4 parts), with the given kernel."""
    import keras

    equation, input_shape, kernel_shape, grad_shape = LAYERS[name]
    if name == "dense":
        layer = keras.layers.Dense(kernel_shape[-1], dtype=dtype)
    else:
        bias_axes = equation.split("->")[1][-1]
        layer = keras.layers.EinsumDense(
            equation, output_shape=grad_shape[1:], bias_axes=bias_axes, dtype=dtype
        )
    model = keras.Sequential([keras.Input(input_shape[1:]), layer])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.quantize("float8")
    layer._kernel.assign(kernel)
    model_lib.use_recipe(model, recipe, config)
    return layer


def training_step(layer):
    """A function (trainable values, x, dy) -> (y, dx, dkernel) of one forward and backward
    pass of `layer`, compiled as in training (dy is cast to the output's dtype)."""
    non_trainable = [v.value for v in layer.non_trainable_variables]
    kernel = [v.name for v in layer.trainable_variables].index("kernel")

    def step(trainable, x, dy):
        def forward(trainable, x):
            return layer.stateless_call(trainable, non_trainable, x, training=True)[0]

        y, pullback = jax.vjp(forward, trainable, x)
        grads, dx = pullback(dy.astype(y.dtype))
        return y, dx, grads[kernel]

    return step


def run(layer, x, dy, emulated: bool, monkeypatch):
    """(y, dx, dkernel) as float32 numpy arrays, from the low-precision GEMMs (f8 x f8,
    block-scaled) or, `emulated`, from quantize-dequantize GEMMs (block128's, for one)."""
    with monkeypatch.context() as patch:
        if emulated:
            patch.setattr(model_lib, "F8_GEMM_RECIPES", ())
            patch.setattr(model_lib, "BLOCK_SCALED_GEMM_RECIPES", ())
        trainable = [v.value for v in layer.trainable_variables]
        results = jax.jit(training_step(layer))(trainable, x, dy)
        return [np.asarray(r.astype("float32")) for r in results]


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("name", ["dense", "query"])  # query: "abc,cde->abde", N over heads
def test_f8_gemms_give_the_emulated_gemms_numbers(name, dtype, monkeypatch):
    """Forward output and both gradients; rows of x, kernel and dy span 2^-12 .. 2^12, so
    each row gets its own scale (test_gemm_operands.operands)."""
    equation, *shapes = LAYERS[name]
    x, kernel, dy = operands(equation, shapes, np.random.default_rng(5))
    layer = rowwise_layer(name, dtype, kernel)
    f8 = run(layer, x, dy, emulated=False, monkeypatch=monkeypatch)
    emulated = run(layer, x, dy, emulated=True, monkeypatch=monkeypatch)
    inputs, rest = equation.split(",")
    kern, outputs = rest.split("->")
    # Each GEMM's sum of |terms|: what the order of a float32 sum can move its result by.
    magnitudes = (
        np.einsum(equation, np.abs(x), np.abs(kernel)),
        np.einsum(f"{outputs},{kern}->{inputs}", np.abs(dy), np.abs(kernel)),
        np.einsum(f"{inputs},{outputs}->{kern}", np.abs(x), np.abs(dy)),
    )
    for got, want, magnitude, gemm in zip(f8, emulated, magnitudes, recipes.GEMMS):
        assert np.isfinite(want).all() and np.abs(want).max() > 0
        if backend() == "cpu":  # the same float32 dot on both sides
            np.testing.assert_array_equal(got, want, err_msg=gemm)
        else:  # one bf16 step of the sum's magnitude, with room for the quantization
            assert (np.abs(got - want) <= 2.0**-6 * magnitude).all(), gemm


def test_rowwise_values_are_quantize_before_dequantizing():
    """values × scale is recipes.quantize's "rowwise", NaN and saturation included: E4M3
    values, one power-of-two scale per row along the blocked axes."""
    rng = np.random.default_rng(6)
    x = (rng.normal(size=(4, 6, 32)) * 2.0 ** rng.integers(-12, 13, (4, 6, 32))).astype(np.float32)
    x[0, 0, 3], x[1, 2, 5], x[2, 1, 0] = np.nan, np.inf, -np.inf
    for role, block_dims, scale_shape in (
        ("inputs", 1, (4, 6, 1)),
        ("outputs_grad", 2, (4, 1, 1)),
        ("kernel", 1, (1, 6, 32)),  # a (K, ..., N) kernel: one scale per output channel
    ):
        values, scale = (np.asarray(a) for a in recipes.rowwise_values(x, role, block_dims))
        assert values.dtype == np.dtype("float8_e4m3fn") and values.shape == x.shape
        assert scale.dtype == np.float32 and scale.shape == scale_shape
        assert (np.frexp(scale)[0] == 0.5).all()  # powers of two
        dequantized = values.astype(np.float32) * scale
        expected = np.asarray(recipes.quantize(x, "rowwise", role, block_dims=block_dims))
        np.testing.assert_array_equal(dequantized, expected, err_msg=role)
    values, scale = (np.asarray(a) for a in recipes.rowwise_values(x, "inputs"))
    assert np.isnan(values[0, 0, 3].astype(np.float32))  # NaN stays NaN
    assert values[1, 2, 5].astype(np.float32) == 448 and values[2, 1, 0].astype(np.float32) == -448


def test_the_lowered_layer_multiplies_e4m3_operands(monkeypatch):
    """In StableHLO (before XLA's optimizations, so on every backend) each of the three GEMMs
    is a dot_general of two f8E4M3FN operands into float32; emulated, none is."""
    equation, x_shape, kernel_shape, y_shape = LAYERS["query"]
    x, kernel, dy = operands(equation, (x_shape, kernel_shape, y_shape), np.random.default_rng(7))
    layer = rowwise_layer("query", "mixed_bfloat16", kernel)
    trainable = [v.value for v in layer.trainable_variables]

    def gemms():
        text = jax.jit(training_step(layer)).lower(trainable, x, dy).as_text()
        return sorted(match.groups()[-1] for match in F8_DOT.finditer(text))

    # fprop into y's shape, dgrad into x's, wgrad into the kernel's.
    shapes = (y_shape, x_shape, kernel_shape)
    assert gemms() == sorted(f"tensor<{'x'.join(map(str, s))}xf32>" for s in shapes)
    with monkeypatch.context() as patch:
        patch.setattr(model_lib, "F8_GEMM_RECIPES", ())
        assert gemms() == []


def test_an_fp8_rowwise_train_step_runs_f8_gemms_and_says_so():
    """Every float8 layer's three GEMMs take E4M3 operands in the lowered training step; the
    compiled step's verdict counts them as FP8 GEMMs where XLA keeps them (a GPU with FP8
    tensor cores) and says plainly when it does not (a CPU)."""
    config = TrainConfig(vocab_size=1000, seq_len=64).validate()
    model = model_lib.compile(model_lib.build(config, "fp8-rowwise"), config)
    model.optimizer.build(model.trainable_variables)  # as fit would
    rng = np.random.default_rng(8)
    x = rng.integers(2, config.vocab_size, size=(config.batch_size, config.seq_len), dtype=np.int32)
    y = rng.integers(0, 2, size=(config.batch_size, 1)).astype(np.float32)
    text = compiled.lower_train_step(model, x, y).as_text()
    assert len(F8_DOT.findall(text)) == 8 * 3  # 8 float8 layers, fprop, dgrad and wgrad each
    assert "rowwise" in model_lib.F8_GEMM_RECIPES and "rowwise" not in compiled.EMULATED_RECIPES
    found = compiled.inspect(model, x, y)
    assert found["recipe"] == "rowwise" and found["float8_values"] > 0
    text = compiled.verdict(found)
    if backend() == "cpu":  # XLA widens the float8 operands to float32 on a CPU
        assert found["fp8_matmuls"] == 0 and not compiled.runs_fp8_gemms(found)
        assert text.startswith(f"None of the {found['matmuls']} matmuls")
        assert "this CPU has no FP8 matmul" in text and "rounded to E4M3 (" in text
    elif found["fp8_matmuls"]:
        assert compiled.runs_fp8_gemms(found) and "run as FP8 GEMMs" in text
    else:
        assert "XLA multiplies the float8 values in higher precision" in text
    # The count decides, as for per-tensor scales: on a GPU that ran them, FP8 GEMMs.
    gpu = {**found, "backend": "gpu", "fp8_matmuls": 24}
    assert compiled.runs_fp8_gemms(gpu) and compiled.headline(gpu).endswith("on tensor cores")
