"""Dropout masks: Keras' (32 random bits per value) and the engine's fast 8-bit ones."""

import numpy as np
from conftest import backend

import fp8demo.env  # noqa: F401
from fp8demo import model as model_lib


def dropped_fraction(method: str, rate: float, seed: int = 0) -> tuple[float, np.ndarray]:
    import keras

    layer = keras.layers.Dropout(rate, seed=seed)
    ones = np.ones((1000, 1000), np.float32)
    with model_lib.dropout_masks(method):
        out = np.asarray(layer(ones, training=True))
    return float((out == 0).mean()), out


def test_fast_masks_round_the_rate_to_256ths_and_keep_the_expectation():
    # rate 0.001 rounds up to 1/256 with 8-bit masks: a difference far beyond sampling noise
    # (1 M values: the std of the fraction is ~0.00006).
    keras_fraction, _ = dropped_fraction("keras", 0.001)
    fast_fraction, out = dropped_fraction("fast", 0.001)
    assert abs(keras_fraction - 0.001) < 0.0003
    assert abs(fast_fraction - 1 / 256) < 0.0003
    kept = out[out != 0]
    np.testing.assert_allclose(kept, 1 / (1 - 1 / 256), rtol=1e-6)  # rescaled by the true keep
    assert abs(out.mean() - 1.0) < 0.002
    # The example's rate: 0.1 → 26/256.
    fraction, out = dropped_fraction("fast", 0.1)
    assert abs(fraction - 26 / 256) < 0.002
    assert abs(out.mean() - 1.0) < 0.003


def test_fast_masks_are_only_used_inside_the_block_and_differ_per_seed():
    _, first = dropped_fraction("fast", 0.5, seed=1)
    _, again = dropped_fraction("fast", 0.5, seed=1)
    _, second = dropped_fraction("fast", 0.5, seed=2)
    assert (first == again).all()  # deterministic per seed
    assert ((first == 0) != (second == 0)).mean() > 0.4  # independent masks
    fraction, _ = dropped_fraction("keras", 0.001)
    assert abs(fraction - 0.001) < 0.0003  # Keras' dropout is back after the block
    for rate in (0.0, 1.0):
        _, out = dropped_fraction("fast", rate)
        assert (out == (1.0 if rate == 0.0 else 0.0)).all()


def test_fast_masks_inside_a_jitted_training_step_with_noise_shape():
    import keras

    layer = keras.layers.Dropout(0.25, noise_shape=(None, 1, 64), seed=3)
    x = np.ones((8, 10, 64), np.float32)
    with model_lib.dropout_masks("fast"):
        import jax

        out = np.asarray(jax.jit(lambda v: layer(v, training=True))(x))
    # One mask per (example, feature), shared along the broadcast axis.
    assert (out == out[:, :1, :]).all()
    assert 0.1 < (out == 0).mean() < 0.4


def test_evaluation_batch_per_backend():
    from fp8demo.training import eval_batch_size

    if backend() == "cpu":  # about 4,096 tokens: past that the attention scores outgrow the caches
        assert eval_batch_size(200) == 20  # the example: 25,000 test reviews in 1,250 batches
        assert eval_batch_size(16) == 256  # capped
        assert eval_batch_size(8192) == 1  # never zero
        assert eval_batch_size(48, multiple_of=2) == 84  # data-parallel: splits evenly (85 → 84)
        assert eval_batch_size(8192, multiple_of=4) == 4
    else:  # an accelerator: 256 whatever the length (fewer dispatches)
        assert eval_batch_size(200) == eval_batch_size(16) == eval_batch_size(8192) == 256
        assert eval_batch_size(200, multiple_of=2) == 256
        assert eval_batch_size(200, multiple_of=3) == 255  # data-parallel: splits evenly
