"""What dropout's random numbers cost: one training step of the example model with Keras'
dropout (threefry keys, 32 bits per mask value), with the same dropout drawn from JAX's `rbg`
(Philox) keys, with the engine's fast masks (8 bits per value, `model.fast_dropout`), and
with no dropout. Each variant runs in its own subprocess (160 timed steps after 5 warm-up steps);
with --repeats N the variants alternate N times and the medians are reported.

    .venv/bin/python benchmarks/dropout_rng.py [--precision bf16|fp8] [--steps 160] [--repeats 3]
    XLA_FLAGS=--xla_cpu_max_isa=AVX2 .venv/bin/python benchmarks/dropout_rng.py --repeats 3
    .venv/bin/python benchmarks/dropout_rng.py --repeats 3 --cache "$(mktemp -d)"

The second line compiles for a CPU without AVX-512 on the same machine: the share of a step
that dropout's random bits take depends on the vector width XLA may use. The third compiles
through the persistent compilation cache, as the engine does: the first repeat writes each
variant's executable, the later ones run what they load from it.
"""

import argparse
import math
import os
import statistics
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


def measure(mode, precision, steps, cache=None) -> float:
    """In the child process: milliseconds per training step with dropout drawn by `mode`;
    with `cache`, the step is compiled through the engine's persistent compilation cache in
    that folder (the first child of a mode writes it, the later ones load it)."""
    import keras
    from keras.src.backend.jax import random as jax_random

    from fp8demo import env
    from fp8demo import model as model_lib

    assert keras.backend.backend() == "jax", keras.backend.backend()

    if cache:
        env.use_compilation_cache(cache)
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
    parser.add_argument("--repeats", type=int, default=1, help="alternate the variants N times")
    parser.add_argument(
        "--cache",
        metavar="HOME",
        help="compile through the engine's persistent cache in HOME/cache/xla (a fresh "
        "folder: the first repeat compiles, the later ones load what it wrote)",
    )
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        # Before Keras loads: KERAS_BACKEND=jax, whatever ~/.keras/keras.json says (Keras writes
        # "tensorflow" there by default, and the masks patched below are JAX's).
        import fp8demo.env  # noqa: F401

        print(f"RESULT {measure(args.child, args.precision, args.steps, args.cache):.2f}")
        return
    cache = ("--cache", args.cache) if args.cache else ()
    print(f"{_common.cpu_model()}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)
    print(f"load average before: {_common.load_average()}", flush=True)
    times = {mode: [] for mode in MODES}
    for repeat in range(args.repeats):
        for mode in MODES:
            result, tail = _common.child_result(
                __file__,
                "--child",
                mode,
                "--precision",
                args.precision,
                "--steps",
                args.steps,
                *cache,
            )
            if result is None:
                print(f"{mode:9} FAILED: {tail}", flush=True)
                continue
            times[mode].append(float(result))
            print(f"repeat {repeat + 1}: {mode:9} {result} ms/step", flush=True)
    print(f"load average after: {_common.load_average()}")
    keras_masks = statistics.median(times["threefry"]) if times["threefry"] else math.nan
    for mode, values in times.items():
        if values:
            median = statistics.median(values)
            print(
                f"{mode:9} median {median:6.2f} ms/step ({keras_masks / median:.2f}× Keras' "
                f"speed), each: {' '.join(f'{v:.1f}' for v in values)}"
            )


if __name__ == "__main__":
    main()
