"""The Keras example's model, built from the hyperparameters, in bf16, fp8 or float32.

TokenAndPositionEmbedding → Dropout → TransformerDecoder → GlobalAveragePooling1D → Dropout
→ Dense(intermediate, relu) → Dropout → Dense(1, sigmoid).

Every layer has an explicit name: Keras uniquifies automatic names per process
(`transformer_decoder_3`), and saved weights and fp8 variable paths must be stable.

Precisions:
  bf16    global dtype policy mixed_bfloat16 (as the example)
  fp8     the same model, then model.quantize("float8"): every Dense/EinsumDense gets
          E4M3 forward / E5M2 gradient quantize-dequantize with delayed scaling
  float32 a full-precision reference
  fp8-current, fp8-rowwise, fp8-rowwise-gw-hp, fp8-block128, mxfp8, nvfp4
          the fp8 model, whose float8 layers quantize each GEMM's operands with another
          scaling recipe (recipes.py) instead of delayed scaling: see use_recipe; nvfp4
          with the parts of NVIDIA's recipe the config switches on (nvfp4_parts)
By default every Dense and EinsumDense is quantized, the sigmoid head too, as the example's
quantize() does; the layers of TrainConfig.bf16_layer_names() (bf16_layers, and the head when
quantize_head is off) stay in bf16: no float8 state, under every float8 precision.
"""

import contextlib
import functools
import math
import warnings

import numpy as np

import fp8demo.env  # noqa: F401
from fp8demo import fp8, gemms
from fp8demo import recipes as recipes_lib
from fp8demo.config import FLOAT8_PRECISIONS, HEAD, RECIPE_PRECISIONS, TrainConfig

POLICIES = {
    "bf16": "mixed_bfloat16",
    **dict.fromkeys(FLOAT8_PRECISIONS, "mixed_bfloat16"),
    "float32": "float32",
}


def build(config: TrainConfig, precision: str):
    """A fresh model for `precision`; seeds Keras first so every precision starts equal."""
    import keras  # lazy: keras loads in ~3 s
    import keras_hub

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(POLICIES[precision])
    try:
        keras.utils.set_random_seed(config.seed)
        token_ids = keras.layers.Input(shape=(None,), dtype="int32", name="input_ids")
        x = keras_hub.layers.TokenAndPositionEmbedding(
            vocabulary_size=config.vocab_size,
            sequence_length=config.seq_len,
            embedding_dim=config.hidden_dim,
            name="embedding",
        )(token_ids)
        x = keras.layers.Dropout(config.dropout, name="embedding_dropout")(x)
        x = keras_hub.layers.TransformerDecoder(
            intermediate_dim=config.intermediate_dim,
            num_heads=config.heads,
            dropout=config.dropout,
            name="decoder",
        )(x)
        x = keras.layers.GlobalAveragePooling1D(name="pooling")(x)
        x = keras.layers.Dropout(config.dropout, name="pooling_dropout")(x)
        x = keras.layers.Dense(config.intermediate_dim, activation="relu", name="dense")(x)
        x = keras.layers.Dropout(config.dropout, name="dense_dropout")(x)
        outputs = keras.layers.Dense(1, activation="sigmoid", name=HEAD)(x)
        model = keras.Model(token_ids, outputs, name=f"imdb_transformer_{precision}")
    finally:
        keras.config.set_dtype_policy(previous)
    if precision in FLOAT8_PRECISIONS:
        quantize_fp8(model, config)
    if precision in RECIPE_PRECISIONS:
        use_recipe(model, RECIPE_PRECISIONS[precision], config)
    return model


def quantize_fp8(model, config: TrainConfig):
    """model.quantize("float8") on the layers Keras can convert (Dense, EinsumDense), but
    those the config keeps in bf16: they get no float8 variables at all."""
    kept = set(config.bf16_layer_names())

    def selected(layer):
        return layer.path not in kept

    # lazy: keras loads in ~3 s
    from keras.src.dtype_policies.dtype_policy import QuantizedFloat8DTypePolicy

    # quantize() takes no history length: each layer reads this class default when it
    # creates its amax history variables, so set it for the duration of the call.
    default = QuantizedFloat8DTypePolicy.default_amax_history_length
    QuantizedFloat8DTypePolicy.default_amax_history_length = config.amax_history_length
    try:
        with warnings.catch_warnings():
            # quantize() warns once per layer it cannot convert (embedding, norms, ...).
            warnings.filterwarnings("ignore", message=".*quantiz.*", category=UserWarning)
            warnings.filterwarnings("ignore", message=".*Invalid quantization mode.*")
            model.quantize("float8", filters=selected)
    finally:
        QuantizedFloat8DTypePolicy.default_amax_history_length = default


def float8_capable_layers(model) -> list[str]:
    """The paths of `model`'s layers that quantize("float8") converts (Dense, EinsumDense),
    in model order, quantized or not: config.MODEL_LAYERS for this module's model."""
    import keras  # lazy: keras loads in ~3 s

    kinds = (keras.layers.Dense, keras.layers.EinsumDense)
    return [layer.path for layer in fp8.all_layers(model) if isinstance(layer, kinds)]


# -- other scaling recipes -------------------------------------------------------------------
#
# A recipe precision is the fp8 model (same layers, variables and saved weights) whose float8
# layers run `recipe_float8_call` instead of Keras' `_float8_call`. A per-tensor recipe keeps
# Keras' structure (inputs and kernel quantize-dequantized around the matmul, an identity
# whose backward quantizes the output gradient). The others quantize each of the three GEMMs'
# operands along that GEMM's contraction axes, as Transformer Engine and torchao do
# (_per_gemm_gemm): the scales come from the tensor being quantized (per row, 128-value tile
# or 32-value block), in the orientation the GEMM reads it. "rowwise" multiplies the float8
# values themselves (an f8 x f8 GEMM, which XLA can run on FP8 tensor cores) and scales the
# GEMM's output: its per-row scales are constant along what the GEMM sums.
#
# Keras' delayed-scaling bookkeeping keeps running unused by the recipe: each step still writes
# every tensor's amax into its `<role>_amax_history` and the delayed scale into `<role>_scale`.
# The recorded amax histories are the tensors' own and the scales what delayed scaling would
# have used, so the FP8 health charts and the delayed what-if read the same as for fp8.


RECIPES = tuple(RECIPE_PRECISIONS.values())  # the recipes a precision trains with


def use_recipe(model, recipe: str, config: TrainConfig | None = None):
    """Make every float8 layer of `model` quantize with `recipe` (one of RECIPES); each
    layer remembers it as `scaling_recipe`. "nvfp4" takes its parts from `config`
    (nvfp4_parts; without a config, none: the what-if's plain NVFP4)."""
    if recipe not in RECIPES:
        raise ValueError(f"no training recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    parts = nvfp4_parts(config) if recipe == "nvfp4" and config else recipes_lib.NVFP4Parts()
    for index, layer in enumerate(fp8.float8_layers(model)):
        layer._float8_call = functools.partial(recipe_float8_call, layer, recipe)
        layer.scaling_recipe = recipe
        layer.nvfp4_parts = parts if recipe == "nvfp4" else None
        if layer.nvfp4_parts and parts.stochastic_rounding and not hasattr(layer, "rounding_seeds"):
            _add_rounding_seeds(layer, config.seed, index)


def nvfp4_parts(config: TrainConfig):
    """The NVFP4Parts a config switches on; the Hadamard signs come from its seed."""
    return recipes_lib.NVFP4Parts(
        two_d_weights=config.nvfp4_2d_weights,
        rht_signs=recipes_lib.hadamard_signs(config.seed) if config.nvfp4_rht else None,
        stochastic_rounding=config.nvfp4_stochastic_rounding,
    )


def recipe_parts(model) -> dict | None:
    """{part: on} of an nvfp4 model (config.NVFP4_PARTS's names), None for other models:
    what the run's summary records."""
    layers = fp8.float8_layers(model)
    parts = getattr(layers[0], "nvfp4_parts", None) if layers else None
    if parts is None:
        return None
    return {
        "nvfp4_2d_weights": parts.two_d_weights,
        "nvfp4_rht": parts.rht_signs is not None,
        "nvfp4_stochastic_rounding": parts.stochastic_rounding,
    }


def _add_rounding_seeds(layer, seed: int, index: int):
    """Give `layer` the random stream its stochastic rounding draws from: a Keras
    SeedGenerator whose state [seed, step] advances each training step (as Dropout's), so
    reruns with one seed round alike. Its state is a layer variable but no weight: saved
    weights and their layout stay those of the fp8 model."""
    import keras  # lazy: keras loads in ~3 s

    layer._tracker.unlock()  # the built layer's state is locked; quantize() unlocks it too
    name = layer.path.replace("/", "_") + "_nvfp4_rounding"  # variable paths stay unique
    layer.rounding_seeds = keras.random.SeedGenerator(seed, name=name)
    layer._tracker.lock()
    layer.rounding_stream = index  # folded into the key: each layer draws its own numbers


def scaling_recipe(model) -> str | None:
    """The recipe `model`'s float8 layers scale with: "delayed" (Keras), another name from
    recipes.RECIPES, or None without float8 layers."""
    layers = fp8.float8_layers(model)
    return getattr(layers[0], "scaling_recipe", "delayed") if layers else None


def recipe_qdq(
    x, recipe: str, role: str, axes: tuple, dtype, gemm: str = "fprop", nvfp4=None, key=None
):
    """`x` quantize-dequantized under `recipe` as `role` of `gemm`, blocked along `axes`'
    letters, in `dtype`; `nvfp4` and `key` as recipes.quantize takes them.

    recipes.quantize blocks the trailing axes of inputs and output gradients and the leading
    axes of kernels, so the blocked axes are moved there and back. "current" uses Keras' own
    quantize-dequantize with the current tensor's scalar scale instead: the graph Keras' fp8
    emits, the pattern XLA's GPU rewrite turns into FP8 GEMMs (like Keras, it applies the
    scale in `dtype`, bf16 in the model).
    """
    import jax.numpy as jnp  # lazy: jax loads in ~3 s
    from keras import quantizers

    fmt = recipes_lib.recipe_format(recipe, role)
    if recipe == "current":
        magnitude = jnp.where(jnp.isfinite(x), jnp.abs(x), 0).astype(jnp.float32)
        amax = jnp.max(magnitude, initial=0.0)
        scale = jnp.where(amax > 0, amax / fmt.max, 1.0)
        return quantizers.quantize_and_dequantize(x, scale, fmt.dtype, dtype)
    order, block_dims = _blocked_order(x.ndim, role, axes)
    moved = jnp.transpose(x, order)
    quantized = recipes_lib.quantize(
        moved, recipe, role, block_dims=block_dims, gemm=gemm, nvfp4=nvfp4, key=key
    )
    return jnp.transpose(quantized, np.argsort(order)).astype(dtype)


def _blocked_order(rank: int, role: str, axes: tuple) -> tuple[list, int]:
    """(axis order, number of blocked axes) that moves `axes`' blocked letters where
    recipes.quantize blocks: last for inputs and output gradients, first for kernels."""
    letters, blocked = axes
    explicit = letters.replace("...", "")
    offset = rank - len(explicit)  # axes the ellipsis stands for
    block_axes = [offset + explicit.index(c) for c in blocked] or [rank - 1]
    others = [a for a in range(rank) if a not in block_axes]
    return (block_axes + others if role == "kernel" else others + block_axes), len(block_axes)


def recipe_float8_call(layer, recipe: str, inputs, training=None):
    """A float8 Dense/EinsumDense layer's call with `recipe`'s scales (see use_recipe)."""
    from keras import ops  # lazy: keras loads in ~3 s

    def delayed_state(role):  # Keras' delayed-scaling variables of one tensor role
        return [
            ops.convert_to_tensor(getattr(layer, f"{role}_{kind}"))
            for kind in ("scale", "amax_history")
        ]

    kernel = ops.convert_to_tensor(layer._kernel)
    state = [v for role in fp8.ROLES for v in delayed_state(role)]
    gemm = _per_tensor_gemm if recipe in PER_TENSOR_RECIPES else _per_gemm_gemm
    x = gemm(layer, recipe, training)(inputs, kernel, *state)
    if layer.bias is not None:
        bias = layer.bias
        if layer.dtype_policy.compute_dtype == "float32":  # as Keras: a bf16-rounded bias
            bias = ops.cast(ops.cast(bias, "bfloat16"), bias.dtype)
        x = ops.add(x, bias)
    if layer.activation is not None:
        x = layer.activation(x)
    return x


# Recipes with one scale per tensor: both GEMMs that use a tensor see the same quantized
# values, so autodiff through the forward GEMM runs the backward ones as the references do.
PER_TENSOR_RECIPES = ("current",)


def _delayed_bookkeeping(x, scale, history, role):
    """Keras' update: the delayed scale from the history, and the history with x's amax."""
    from keras import ops, quantizers  # lazy: keras loads in ~3 s

    fmax = ops.cast(fp8.FORMAT_MAX[role], "float32")
    new_scale = quantizers.compute_float8_scale(ops.max(history, axis=0), scale, fmax)
    return new_scale, quantizers.compute_float8_amax_history(x, history)


def _upstream(args, upstream):
    """The cotangent Keras' custom_gradient hands a grad function (positional on JAX)."""
    return args[0] if upstream is None else upstream


def _per_tensor_gemm(layer, recipe, training):
    """Keras' structure: inputs and kernel quantize-dequantized around the matmul (gradients
    pass straight through), then an identity whose backward quantizes the output gradient."""
    from keras import ops  # lazy: keras loads in ~3 s

    axes = gemms.operand_axes(layer)
    equation = getattr(layer, "equation", None)

    def quantized_operand(role):
        @ops.custom_gradient
        def qdq(x, scale, history):
            updates = _delayed_bookkeeping(x, scale, history, role) if training else (None, None)

            def grad(*args, upstream=None, variables=None):
                return _upstream(args, upstream), *updates

            return recipe_qdq(x, recipe, role, axes[role], layer.compute_dtype), grad

        return qdq

    @ops.custom_gradient
    def quantized_output_gradient(outputs, scale, history):
        def grad(*args, upstream=None, variables=None):
            upstream, role = _upstream(args, upstream), "outputs_grad"
            gradient = recipe_qdq(upstream, recipe, role, axes[role], upstream.dtype)
            return gradient, *_delayed_bookkeeping(upstream, scale, history, role)

        return outputs, grad

    def gemm(x, kernel, x_scale, x_history, k_scale, k_history, g_scale, g_history):
        x = quantized_operand("inputs")(x, x_scale, x_history)
        kernel = quantized_operand("kernel")(kernel, k_scale, k_history)
        y = ops.einsum(equation, x, kernel) if equation else ops.matmul(x, kernel)
        return quantized_output_gradient(y, g_scale, g_history)

    return gemm


def _per_gemm_gemm(layer, recipe, training):
    """Y = X·W whose three GEMMs each quantize their operands along that GEMM's contraction
    axes, as Transformer Engine and torchao do: fprop X·W along K, dgrad dY·Wᵀ along N, wgrad
    Xᵀ·dY along M (gemms.gemm_layout). A per-row or per-block scale differs between the two
    GEMMs a tensor feeds, so the backward quantizes X, W and dY afresh (a custom gradient).
    The recipes of F8_GEMM_RECIPES multiply float8 values; the others dequantized ones."""
    import jax.numpy as jnp  # lazy: jax loads in ~3 s
    from keras import ops

    dtype = layer.compute_dtype
    parts, key = getattr(layer, "nvfp4_parts", None), _rounding_key(layer, training)

    @ops.custom_gradient
    def matmul(x, kernel, x_scale, x_history, k_scale, k_history, g_scale, g_history):
        layout = gemms.gemm_layout(getattr(layer, "equation", None), len(x.shape))

        def to(value, role):  # the dtype an operand is quantize-dequantized to
            return value.dtype if role == "outputs_grad" else dtype

        def qdq(value, gemm, role):
            axes = layout[gemm][1][role]
            return recipe_qdq(value, recipe, role, axes, to(value, role), gemm, parts, key)

        def product(gemm, a, b, b_quantized=None):
            """`gemm` of its operands a and b, each quantized for it (b_quantized: b as
            another GEMM quantized it, where that is the same)."""
            equation, axes = layout[gemm]
            (role_a, axes_a), (role_b, axes_b) = axes.items()
            if recipe in F8_GEMM_RECIPES or recipe in BLOCK_SCALED_GEMM_RECIPES:
                result = jnp.result_type(to(a, role_a), to(b, role_b))  # as the einsum below
                operands = [(a, role_a, axes_a), (b, role_b, axes_b)]
                if recipe in F8_GEMM_RECIPES:
                    return _rowwise_f8_gemm(equation, operands, result)
                return _block_scaled_gemm(equation, operands, result, recipe, gemm, parts, key)
            b_quantized = qdq(b, gemm, role_b) if b_quantized is None else b_quantized
            return ops.einsum(equation, qdq(a, gemm, role_a), b_quantized)

        updates = [None] * 4
        if training:
            updates = [
                *_delayed_bookkeeping(x, x_scale, x_history, "inputs"),
                *_delayed_bookkeeping(kernel, k_scale, k_history, "kernel"),
            ]
        # 128x128 and 16x16 kernel tiles survive the transpose: dgrad reuses fprop's.
        tiled = recipe == "block128" or (recipe == "nvfp4" and parts.two_d_weights)
        kernel_q = qdq(kernel, "fprop", "kernel") if tiled else None
        y = product("fprop", x, kernel, kernel_q)

        def grad(*args, upstream=None, variables=None):
            dy = _upstream(args, upstream)
            dx, dk = product("dgrad", dy, kernel, kernel_q), product("wgrad", x, dy)
            bookkeeping = _delayed_bookkeeping(dy, g_scale, g_history, "outputs_grad")
            return ops.cast(dx, x.dtype), ops.cast(dk, kernel.dtype), *updates, *bookkeeping

        return y, grad

    return matmul


# Recipes whose GEMMs multiply the float8 values themselves (_rowwise_f8_gemm).
F8_GEMM_RECIPES = ("rowwise",)
# Recipes whose GEMMs are block-scaled GEMMs (_block_scaled_gemm).
BLOCK_SCALED_GEMM_RECIPES = ("mxfp8", "nvfp4")


def _rowwise_f8_gemm(equation: str, operands: list, dtype):
    """einsum `equation` of two (value, role, (letters, contracted letters)) operands under
    torchao's rowwise recipe, as an f8 x f8 GEMM: their E4M3 values multiplied with float32
    accumulation, then each output scaled by its two operands' row scales; in `dtype`.
    The scales are powers of two, so every product of dequantized values is exact and this
    is the quantize-dequantize GEMM's result up to the order of the float32 sum."""
    import jax.numpy as jnp  # lazy: jax loads in ~3 s

    output = equation.split("->")[1]
    values, scale = [], 1.0
    for value, role, (letters, contracted) in operands:
        order, block_dims = _blocked_order(value.ndim, role, (letters, contracted))
        moved = recipes_lib.rowwise_values(jnp.transpose(value, order), role, block_dims)
        v, s = (jnp.transpose(m, np.argsort(order)) for m in moved)
        values.append(v)
        # The scales have size 1 along the contracted axes; they broadcast over the others.
        kept = "".join(c for c in letters if c not in contracted)
        s = jnp.squeeze(s, tuple(letters.index(c) for c in contracted))
        s = jnp.transpose(s, [kept.index(c) for c in output if c in kept])
        scale = scale * jnp.expand_dims(s, [i for i, c in enumerate(output) if c not in kept])
    y = jnp.einsum(equation, *values, preferred_element_type=jnp.float32)
    return (y * scale).astype(dtype)


def _block_scaled_gemm(equation: str, operands: list, dtype, recipe, gemm, parts, key):
    """einsum `equation` of two (value, role, (letters, contracted letters)) operands under
    a block recipe (mxfp8, nvfp4) as a block-scaled GEMM, in `dtype`: each operand's
    low-precision values and per-block scales (recipes.block_scaled_values) laid out
    (1, rows, K) with K the contracted axes, multiplied by `scaled_matmul`, then NVFP4's two
    FP32 tensor scales applied to the output, as the hardware GEMM does."""
    import jax.numpy as jnp  # lazy: jax loads in ~3 s

    output = equation.split("->")[1]
    values, scales, tensor_scale, kept, kept_shape = [], [], 1.0, "", []
    for value, role, (letters, contracted) in operands:
        order, block_dims = _blocked_order(value.ndim, role, (letters, contracted))
        v, s, t = recipes_lib.block_scaled_values(
            jnp.transpose(value, order), recipe, role, block_dims, gemm, parts, key
        )
        values.append(v[None])
        scales.append(s[None])
        tensor_scale = tensor_scale * t
        # A row is one index of the operand's other axes, in the operand's own order.
        rows = [c for c in letters if c not in contracted]
        kept += "".join(rows)
        kept_shape += [value.shape[letters.index(c)] for c in rows]
    y = scaled_matmul(*values, *scales)[0].reshape(kept_shape)
    y = jnp.transpose(y, [kept.index(c) for c in output])
    return (y * tensor_scale).astype(dtype)


def scaled_matmul(lhs, rhs, lhs_scales, rhs_scales):
    """jax.nn.scaled_matmul where this device has its kernel (cuDNN's block-scaled GEMM on
    an NVIDIA Blackwell GPU), else its definition: each value times its block's scale, a
    float32 einsum "bmk,bnk->bmn" (exact products; the sum as any float32 GEMM's)."""
    import jax  # lazy: jax loads in ~3 s
    import jax.numpy as jnp

    if block_scaled_gemm_support()[0]:
        # The kernel takes the scales in their storage formats: E8M0 (MXFP8), E4M3 (NVFP4).
        scale_type = jnp.float8_e4m3fn if lhs.dtype == jnp.float4_e2m1fn else jnp.float8_e8m0fnu
        return jax.nn.scaled_matmul(
            lhs, rhs, lhs_scales.astype(scale_type), rhs_scales.astype(scale_type)
        )

    def dequantized(values, scales):
        block = values.shape[-1] // scales.shape[-1]
        return values.astype(jnp.float32) * jnp.repeat(scales, block, axis=-1)

    a, b = dequantized(lhs, lhs_scales), dequantized(rhs, rhs_scales)
    return jnp.einsum("bmk,bnk->bmn", a, b, preferred_element_type=jnp.float32)


# cuDNN runs jax.nn.scaled_matmul's block-scaled GEMM from Blackwell on; XLA lowers it for no
# other NVIDIA GPU and no CPU.
BLOCK_SCALED_COMPUTE_CAPABILITY = 10.0


@functools.cache
def block_scaled_gemm_support() -> tuple[bool, str]:
    """(runs here, why not): whether this process's device runs jax.nn.scaled_matmul's
    block-scaled GEMM, and if not, why, in a few words."""
    import jax  # lazy: jax loads in ~3 s

    device = jax.devices()[0]
    if device.platform != "gpu":
        return False, f"this {device.platform.upper()} has no block-scaled GEMM"
    capability = str(getattr(device, "compute_capability", "") or "0")
    if float(capability) < BLOCK_SCALED_COMPUTE_CAPABILITY:
        return False, (
            f"this {device.device_kind} (compute capability {capability}) has no block-scaled "
            f"GEMM: cuDNN runs jax.nn.scaled_matmul from compute capability "
            f"{BLOCK_SCALED_COMPUTE_CAPABILITY:.0f}.0 (Blackwell)"
        )
    return True, ""


def _rounding_key(layer, training):
    """The random key of this call's stochastic rounding, None without it: in training the
    layer's [seed, step] (advancing its SeedGenerator), else (a gradient outside training,
    the probe's) the current step's without advancing; the layer's index folded in."""
    import jax  # lazy: jax loads in ~3 s
    from keras.src.backend.jax import random as jax_random

    parts, seeds = getattr(layer, "nvfp4_parts", None), getattr(layer, "rounding_seeds", None)
    if not (parts and parts.stochastic_rounding):
        return None
    key = jax_random.jax_draw_seed(seeds) if training else seeds.state.value
    return jax.random.fold_in(key, layer.rounding_stream)


# -- dropout masks ---------------------------------------------------------------------------
#
# Keras draws every dropout mask value from 32 random bits, one threefry hash per value. The
# attention dropout alone masks batch × heads × seq² values (2.6 M per step in the example),
# which makes the hashes about a quarter of a CPU training step. "fast" draws each value from
# 8 bits, a quarter of the hashes, and drops with rate rounded to a multiple of 1/256 (0.1 →
# 26/256 = 0.1016), rescaling by the true keep probability so the expectation is unchanged.

FAST_DROPOUT_BITS = 8


def fast_dropout(inputs, rate, noise_shape=None, seed=None):
    """keras.src.backend.jax.random.dropout with 8-bit mask values (same signature)."""
    import jax  # lazy: jax loads in ~3 s
    import jax.numpy as jnp
    from keras.src.backend.jax import random as jax_random  # lazy: keras loads JAX (seconds)

    if rate == 1.0:
        return jnp.zeros_like(inputs)
    if rate == 0.0:
        return inputs
    levels = 2**FAST_DROPOUT_BITS
    threshold = min(max(round(rate * levels), 1), levels - 1)
    keep = 1.0 - threshold / levels
    noise_shape = jax_random._get_concrete_noise_shape(inputs, noise_shape)
    size = math.prod(noise_shape)
    per_word = 32 // FAST_DROPOUT_BITS
    words = jax.random.bits(jax_random.jax_draw_seed(seed), (-(-size // per_word),), jnp.uint32)
    bits = jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(-1)[:size]
    mask = jnp.broadcast_to((bits >= threshold).reshape(noise_shape), inputs.shape)
    return jax.lax.select(mask, inputs / jnp.asarray(keep, inputs.dtype), jnp.zeros_like(inputs))


@contextlib.contextmanager
def dropout_masks(method: str):
    """Trace the training step with Keras' dropout masks ("keras") or 8-bit ones ("fast").

    Every Dropout layer (the model's, the decoder's, the attention's) calls the backend's
    dropout when the training step is traced, so the choice holds for what is compiled
    inside this block.
    """
    if method != "fast":
        yield
        return
    from keras.src.backend.jax import random as jax_random  # lazy: jax loads in ~3 s

    original, jax_random.dropout = jax_random.dropout, fast_dropout
    try:
        yield
    finally:
        jax_random.dropout = original


PTQ_MODES = ("int8", "int4")


def quantize_post_training(model, mode: str):
    """Post-training quantization of a trained model: int8 (per-channel weights, dynamic
    per-token activations, the embedding too) or int4 (weight-only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # layers it cannot convert
        model.quantize(mode)
    return model


def weights_bytes(model) -> int:
    """Bytes of the model's weights as stored (fp8 bookkeeping variables excluded)."""
    return int(
        sum(
            _size(w.shape) * np.dtype(w.dtype).itemsize
            for w in model.weights
            if not w.path.endswith(("_scale", "_amax_history"))
        )
    )


def compile(model, config: TrainConfig, steps_per_execution: int = 1):
    import keras  # lazy: keras loads in ~3 s

    # Weighted, so that the zero-weight padding of a data-parallel evaluation set does not
    # count (training.EvaluationSet); without sample weights it is the plain accuracy.
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.lr),
        loss="binary_crossentropy",
        weighted_metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    return model


def summarize(config: TrainConfig, precision: str) -> list[dict]:
    """Layers ("decoder/self_attention/query" for nested ones) with class, parameter count
    (fp8 bookkeeping variables excluded) and whether they compute in float8."""
    model = build(config, precision)
    rows = []

    def walk(layer, prefix):
        for child in getattr(layer, "_layers", []) or []:
            name = f"{prefix}{child.name}"
            rows.append(
                {
                    "name": name,
                    "class": type(child).__name__,
                    "params": int(
                        sum(
                            _size(w.shape)
                            for w in child.weights
                            if not w.path.endswith(("_scale", "_amax_history"))
                        )
                    ),
                    "float8": getattr(child, "quantization_mode", None) == "float8",
                }
            )
            walk(child, name + "/")

    walk(model, "")
    return rows


def _size(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n


def count_params(model) -> int:
    """Trainable model weights, without the fp8 bookkeeping variables."""
    return int(
        sum(
            _size(w.shape)
            for w in model.trainable_weights
            if not w.path.endswith(("_scale", "_amax_history"))
        )
    )
