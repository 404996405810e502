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
By default the sigmoid head is quantized too, as the example's quantize() does;
TrainConfig.quantize_head=False keeps it in bf16.
"""

import contextlib
import math
import warnings

import fp8demo.env  # noqa: F401
from fp8demo.config import TrainConfig

POLICIES = {"bf16": "mixed_bfloat16", "fp8": "mixed_bfloat16", "float32": "float32"}
HEAD = "classifier"


def build(config: TrainConfig, precision: str):
    """A fresh model for `precision`; seeds Keras first so every precision starts equal."""
    import keras
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
    if precision == "fp8":
        quantize_fp8(model, config)
    return model


def quantize_fp8(model, config: TrainConfig):
    """model.quantize("float8") on the layers Keras can convert (Dense, EinsumDense)."""

    def selected(layer):
        return config.quantize_head or layer.name != HEAD

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
    import jax
    import jax.numpy as jnp
    from keras.src.backend.jax import random as jax_random

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
    from keras.src.backend.jax import random as jax_random

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
    import numpy as np

    return int(
        sum(
            _size(w.shape) * np.dtype(w.dtype).itemsize
            for w in model.weights
            if not w.path.endswith(("_scale", "_amax_history"))
        )
    )


def compile(model, config: TrainConfig, steps_per_execution: int = 1):
    import keras

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
