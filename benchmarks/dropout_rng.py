"""What dropout's random numbers cost: one training step of the example model with Keras'
dropout (threefry keys, 32 bits per mask value), with the same dropout drawn from JAX's `rbg`
(Philox) keys, with the engine's fast masks (8 bits per value, `model.fast_dropout`), and
with no dropout. Each variant runs in its own subprocess (160 timed steps after 5 warm-up steps).

    .venv/bin/python benchmarks/dropout_rng.py [--precision bf16|fp8] [--steps 160]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

MODES = ("threefry", "philox", "fast", "none")


def philox_dropout(inputs, rate, noise_shape=None, seed=None):
    """keras.src.backend.jax.random.dropout, with the mask drawn from an rbg (Philox) key."""
    import jax
    import jax.numpy as jnp
    from keras.src.backend.jax import random as jax_random

    if rate == 1.0:
        return jnp.zeros_like(inputs)
    if rate == 0.0:
        return inputs
    seed = jax_random.jax_draw_seed(seed)
    keep = 1.0 - rate
    noise_shape = jax_random._get_concrete_noise_shape(inputs, noise_shape)
    data = jax.random.key_data(seed) if jnp.issubdtype(seed.dtype, jax.dtypes.prng_key) else seed
    key = jax.random.wrap_key_data(jnp.concatenate([data, data]).astype(jnp.uint32), impl="rbg")
    mask = jnp.broadcast_to(jax.random.bernoulli(key, p=keep, shape=noise_shape), inputs.shape)
    return jax.lax.select(mask, inputs / keep, jnp.zeros_like(inputs))


def measure(mode, precision, steps) -> float:
    """In the child process: milliseconds per training step with dropout drawn by `mode`."""
    from keras.src.backend.jax import random as jax_random

    import fp8demo.env  # noqa: F401
    from fp8demo import model as model_lib
    from fp8demo.config import TrainConfig

    if mode == "philox":
        jax_random.dropout = philox_dropout
    if mode == "fast":
        jax_random.dropout = model_lib.fast_dropout  # what TrainConfig(dropout_masks="fast") uses
    config = TrainConfig(dropout=0.0 if mode == "none" else 0.1).validate()
    model = model_lib.compile(model_lib.build(config, precision), config)
    x, y = _common.random_batch(config, 32 * steps)
    _common.fit_seconds(model, x, y, 32, 5)  # compiles
    return _common.fit_seconds(model, x, y, 32, steps) / steps * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp8"])
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(f"RESULT {measure(args.child, args.precision, args.steps):.2f}")
        return
    for mode in MODES:
        result, _ = _common.child_result(
            __file__, "--child", mode, "--precision", args.precision, "--steps", args.steps
        )
        print(f"{mode:9} {result + ' ms/step' if result else 'FAILED'}", flush=True)


if __name__ == "__main__":
    main()
