"""What dropout's random numbers cost: one training step of the example model with Keras'
dropout (threefry keys, 32 bits per mask value), with the same dropout drawn from JAX's `rbg`
(Philox) keys, with the engine's fast masks (8 bits per value, `model.fast_dropout`), and
with no dropout. Each variant runs in its own subprocess (160 timed steps after 5 warm-up steps).

    .venv/bin/python benchmarks/dropout_rng.py [--precision bf16|fp8] [--steps 160]
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
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
    import numpy as np
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
    rng = np.random.default_rng(0)
    x = rng.integers(2, config.vocab_size, size=(32 * steps, config.seq_len), dtype=np.int32)
    y = rng.integers(0, 2, size=(32 * steps, 1)).astype(np.float32)
    model.fit(x[: 32 * 5], y[: 32 * 5], batch_size=32, epochs=1, verbose=0)  # compile
    started = time.perf_counter()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    return (time.perf_counter() - started) / steps * 1000


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
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                mode,
                "--precision",
                args.precision,
                "--steps",
                str(args.steps),
            ],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        result = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        print(f"{mode:9} {result[-1].split()[1] + ' ms/step' if result else 'FAILED'}", flush=True)


if __name__ == "__main__":
    main()
