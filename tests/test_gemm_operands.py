"""Each GEMM of each trained recipe against a plain numpy implementation of its reference.

A float8 linear layer runs three GEMMs: fprop Y = X·W, dgrad dX = dY·Wᵀ, wgrad dW = Xᵀ·dY.
Transformer Engine and torchao quantize each operand along *that GEMM's* contraction axis
(K, N and M, the tokens), so a tensor used by two GEMMs is quantized twice when its scales
are per row or per block. The references below follow the sources' descriptions
(NOTES.md, "How the references quantize each GEMM") with explicit loops over blocks and
float64 exponents; they share no code with fp8demo, only the element grids of
test_recipes.py. The operands' magnitudes spread over 2^-12 .. 2^12 element by element, so
every choice of axis, scale rounding or format gives different values.
"""

import math
import warnings

import jax
import numpy as np
import pytest
from test_recipes import current_rule, power_of_two_rule, round_to_format

import fp8demo.env  # noqa: F401
from fp8demo import gemms, recipes
from fp8demo import model as model_lib
from fp8demo.config import RECIPE_PRECISIONS
from fp8demo.recipes import E4M3, E5M2

# -- the references, on a matrix whose axis 1 is the GEMM's contraction axis -----------------


def blocks(shape, rows, cols):
    """Every rows x cols block of a matrix (None: the whole extent), the last ones partial."""
    rows, cols = rows or shape[0], cols or shape[1]
    for r in range(0, shape[0], rows):
        for c in range(0, shape[1], cols):
            yield slice(r, r + rows), slice(c, c + cols)


def scaled(matrix, rows, cols, rule, fmt):
    """Each block quantized to `fmt` with the divisor `rule(block amax)`."""
    out = np.empty(matrix.shape, np.float64)
    for block in blocks(matrix.shape, rows, cols):
        values = matrix[block].astype(np.float64)
        scale = rule(float(np.abs(values).max())) if values.size else 1.0
        out[block] = round_to_format(values / scale, fmt) * scale
    return out


# How each trained recipe quantizes one operand: (tile rows, tile cols, scale rule, format)
# for the operand as a matrix with the contraction axis last; None: left in high precision.
def reference_rule(recipe, gemm, role):
    kernel = role == "kernel"
    up = power_of_two_rule(E4M3, "up")
    if recipe == "current":  # TE Float8CurrentScaling: per tensor, E5M2 gradients
        fmt = E5M2 if role == "outputs_grad" else E4M3
        return None, None, current_rule(fmt), fmt
    if recipe == "rowwise":  # torchao rowwise: per row, E4M3, fmax/amax rounded down to 2^n
        return 1, None, up, E4M3
    if recipe == "rowwise-gw-hp":  # torchao rowwise_with_gw_hp
        if gemm == "wgrad":
            return None
        if gemm == "dgrad" and kernel:  # cast_config_weight_for_grad_input: TENSORWISE
            return None, None, current_rule(E4M3), E4M3
        return 1, None, current_rule(E4M3), E4M3
    if recipe == "block128":  # TE Float8BlockScaling: 1x128, kernels 128x128, E4M3
        return (128 if kernel else 1), 128, up, E4M3
    assert recipe == "mxfp8"  # TE MXFP8BlockScaling: 1x32, E8M0 rounded up, E4M3
    return 1, 32, up, E4M3


def reference_operand(x, letters, contracted, recipe, gemm, role):
    """x quantized as `role` of `gemm`: its `contracted` axes moved last and flattened."""
    rule = reference_rule(recipe, gemm, role)
    if rule is None:
        return x.astype(np.float64)
    axes = [letters.index(c) for c in contracted]
    others = [a for a in range(x.ndim) if a not in axes]
    moved = np.transpose(x, others + axes)
    k = math.prod(x.shape[a] for a in axes)
    matrix = scaled(moved.reshape(-1, k), *rule)
    return np.transpose(matrix.reshape(moved.shape), np.argsort(others + axes))


def reference_gemms(equation, x, kernel, dy, recipe):
    """(y, dx, dkernel) of the layer's three GEMMs, each operand quantized for its GEMM."""
    inputs, rest = equation.split(",")
    kern, outputs = rest.split("->")
    k = "".join(c for c in kern if c in inputs and c not in outputs)
    n = "".join(c for c in kern if c in outputs and c not in inputs)
    m = "".join(c for c in inputs if c in outputs and c not in kern)

    def q(value, letters, along, gemm, role):
        return reference_operand(value, letters, along, recipe, gemm, role)

    y = np.einsum(
        equation, q(x, inputs, k, "fprop", "inputs"), q(kernel, kern, k, "fprop", "kernel")
    )
    dx = np.einsum(
        f"{outputs},{kern}->{inputs}",
        q(dy, outputs, n, "dgrad", "outputs_grad"),
        q(kernel, kern, n, "dgrad", "kernel"),
    )
    dkernel = np.einsum(
        f"{inputs},{outputs}->{kern}",
        q(x, inputs, m, "wgrad", "inputs"),
        q(dy, outputs, m, "wgrad", "outputs_grad"),
    )
    return y, dx, dkernel


# -- the layers ----------------------------------------------------------------------------


def operands(equation, shapes, rng):
    """x, kernel and dy whose magnitudes spread by axis: tokens (M) over 2^-12 .. 2^12, input
    features (K) over 2^-6 .. 2^6, output features (N) over 2^-12 .. 2^12, with
    x ~ 2^(m + k), kernel ~ 2^(n - k), dy ~ 2^(-m - n). Every term of each GEMM's sum is then
    of one size, so the values a block loses matter: a block along M (or N) spans 2^24, more
    than E4M3 holds, while one along K spans 2^12 and loses nothing; which axis a GEMM blocks
    along shows in its result."""
    inputs, rest = equation.split(",")
    kern, outputs = rest.split("->")
    size = dict(zip(inputs, shapes[0])) | dict(zip(kern, shapes[1])) | dict(zip(outputs, shapes[2]))

    def exponents(letters, low, high):
        return letters, rng.integers(low, high + 1, size=[size[c] for c in letters])

    m = exponents("".join(c for c in inputs if c not in kern), -12, 12)
    k = exponents("".join(c for c in inputs if c in kern), -6, 6)
    n = exponents("".join(c for c in kern if c not in inputs), -12, 12)

    def tensor(letters, *terms):
        shape = [size[c] for c in letters]
        exponent = sum(
            sign * np.einsum(f"{own},{letters}->{letters}", values, np.ones(shape))
            for sign, (own, values) in terms
        )
        return (rng.normal(size=shape) * 2.0**exponent).astype(np.float32)

    return (
        tensor(inputs, (1, m), (1, k)),
        tensor(kern, (1, n), (-1, k)),
        tensor(outputs, (-1, m), (-1, n)),
    )


# (einsum, input shape, kernel shape, output gradient shape): a Dense layer on tokens
# (M = 4 x 40 = 160 tokens: one full 128-block along M and a partial one), the attention's
# query projection (N over heads x head size) and its output (K over heads x head size).
LAYERS = {
    "dense": ("abc,cd->abd", (4, 40, 256), (256, 48), (4, 40, 48)),
    "query": ("abc,cde->abde", (4, 40, 160), (160, 2, 64), (4, 40, 2, 64)),
    "attention_output": ("abcd,cde->abe", (4, 40, 2, 96), (2, 96, 40), (4, 40, 40)),
}


def float8_layer(name, recipe, kernel):
    """A float32 layer (Dense for "dense", else EinsumDense) quantized by Keras, switched to
    `recipe`, with the given kernel and a zero bias."""
    import keras

    equation, input_shape, kernel_shape, grad_shape = LAYERS[name]
    if name == "dense":
        layer = keras.layers.Dense(kernel_shape[-1], dtype="float32")
    else:
        output_shape = grad_shape[1:]
        bias_axes = equation.split("->")[1][-1]
        layer = keras.layers.EinsumDense(
            equation, output_shape=output_shape, bias_axes=bias_axes, dtype="float32"
        )
    model = keras.Sequential([keras.Input(input_shape[1:]), layer])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.quantize("float8")
    layer._kernel.assign(kernel)
    model_lib.use_recipe(model, recipe)
    return layer


def layer_gemms(layer, x, dy):
    """(y, dx, dkernel, trainable gradients by name) of one training step of `layer`."""
    names = [v.name for v in layer.trainable_variables]
    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    def forward(trainable, x):
        return layer.stateless_call(trainable, non_trainable, x, training=True)[0]

    y, pullback = jax.vjp(forward, trainable, x)
    grads, dx = pullback(dy)
    grads = dict(zip(names, (np.asarray(g) for g in grads)))
    return np.asarray(y), np.asarray(dx), grads["kernel"], grads


def close(actual, expected, what):
    """Equal up to float32 summation order."""
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * scale, err_msg=what)


def differs(actual, expected) -> bool:
    scale = float(np.abs(expected).max())
    return not np.allclose(actual, expected, rtol=1e-3, atol=1e-3 * scale)


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("recipe", [r for r in model_lib.RECIPES if r != "nvfp4"])  # test_nvfp4
def test_each_gemm_quantizes_its_operands_as_the_reference(recipe, name):
    equation, input_shape, kernel_shape, grad_shape = LAYERS[name]
    rng = np.random.default_rng(len(name))
    x, kernel, dy = operands(equation, (input_shape, kernel_shape, grad_shape), rng)
    layer = float8_layer(name, recipe, kernel)
    y, dx, dkernel, grads = layer_gemms(layer, x, dy)
    expected = reference_gemms(equation, x, kernel, dy, recipe)
    for got, want, gemm in zip((y, dx, dkernel), expected, recipes.GEMMS):
        close(got, want, f"{recipe} {gemm}")
    # Keras' delayed bookkeeping keeps running: each history's newest entry is the amax.
    assert grads["inputs_amax_history"][0] == np.abs(x).max()
    assert grads["kernel_amax_history"][0] == np.abs(kernel).max()
    assert grads["outputs_grad_amax_history"][0] == np.abs(dy).max()
    if recipe == "current":
        return
    # The backward GEMMs differ from reusing the forward's quantized X and W (the old way):
    # wgrad always, dgrad where the kernel's scales run along K (all but 128x128 tiles).
    inputs, rest = equation.split(",")
    kern, outputs = rest.split("->")
    k = "".join(c for c in kern if c in inputs and c not in outputs)
    n = "".join(c for c in kern if c in outputs and c not in inputs)
    x_fprop = reference_operand(x, inputs, k, recipe, "fprop", "inputs")
    kernel_fprop = reference_operand(kernel, kern, k, recipe, "fprop", "kernel")
    dy_dgrad = reference_operand(dy, outputs, n, recipe, "dgrad", "outputs_grad")
    assert differs(dkernel, np.einsum(f"{inputs},{outputs}->{kern}", x_fprop, dy_dgrad))
    old_dx = np.einsum(f"{outputs},{kern}->{inputs}", dy_dgrad, kernel_fprop)
    assert differs(dx, old_dx) == (recipe != "block128")


def test_rowwise_is_torchaos_recipe_e4m3_with_power_of_two_scales():
    """Gradients in E4M3, not E5M2; each row's divisor a power of two at or above amax/448."""
    rng = np.random.default_rng(7)
    gradient = (rng.normal(size=(6, 64)) * 2.0 ** rng.integers(-12, 13, (6, 64))).astype(np.float32)
    got = np.asarray(recipes.quantize(gradient, "rowwise", "outputs_grad"))
    np.testing.assert_array_equal(
        got, scaled(gradient, 1, None, power_of_two_rule(E4M3, "up"), E4M3)
    )
    assert differs(got, scaled(gradient, 1, None, current_rule(E5M2), E5M2))
    assert recipes.recipe_format("rowwise", "outputs_grad") is E4M3
    # The torchao variant with a bf16 wgrad: its wgrad operands pass through unchanged.
    np.testing.assert_array_equal(
        recipes.quantize(gradient, "rowwise-gw-hp", "outputs_grad", gemm="wgrad"), gradient
    )


def test_gemm_layout_names_each_gemms_contraction_axes():
    dense = gemms.gemm_layout(None, 3)  # "...a,ab->...b" on (batch, tokens, features)
    assert dense == {
        "fprop": ("ABa,ab->ABb", {"inputs": ("ABa", "a"), "kernel": ("ab", "a")}),
        "dgrad": ("ABb,ab->ABa", {"outputs_grad": ("ABb", "b"), "kernel": ("ab", "b")}),
        "wgrad": ("ABa,ABb->ab", {"inputs": ("ABa", "AB"), "outputs_grad": ("ABb", "AB")}),
    }
    query = gemms.gemm_layout("abc,cde->abde", 3)
    assert query["dgrad"] == (
        "abde,cde->abc",
        {"outputs_grad": ("abde", "de"), "kernel": ("cde", "de")},
    )
    assert query["wgrad"][1]["inputs"] == ("abc", "ab")
    with pytest.raises(ValueError, match="sums axes x of one operand alone"):
        gemms.gemm_layout("abx,bc->ac", 3)
    with pytest.raises(ValueError, match="does not fit inputs of rank 2"):
        gemms.gemm_layout("abc,cd->abd", 2)
    with pytest.raises(ValueError, match="unknown GEMM 'bprop'"):
        recipes.quantize(np.ones((2, 4), np.float32), "rowwise", "inputs", gemm="bprop")


def test_the_torchao_variant_is_a_precision():
    assert RECIPE_PRECISIONS["fp8-rowwise-gw-hp"] == "rowwise-gw-hp"
    assert "rowwise-gw-hp" in model_lib.RECIPES and "rowwise-gw-hp" in recipes.RECIPE_HELP
