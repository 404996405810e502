"""Emulated recipes' training speed, side by side in one process.

The example's model (vocabulary 5,000, sequence 200, batch 32) built once per precision,
compiled by a first short fit, then timed over 20-step fits, alternated, median of the
repeats. nvfp4 runs with its parts on (the default) and with all three off.

    .venv/bin/python benchmarks/recipe_speed.py [--repeats 3] [--precisions mxfp8,nvfp4]
"""

import argparse
import dataclasses
import time

import numpy as np

import fp8demo.env  # noqa: F401  (JAX backend and quiet start-up, before keras)
from fp8demo import model as model_lib
from fp8demo.config import NVFP4_PARTS, TrainConfig

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--precisions", default="mxfp8,nvfp4")
args = parser.parse_args()

config = TrainConfig(vocab_size=5000, seq_len=200)  # the example's model
rng = np.random.default_rng(0)
x = rng.integers(0, 5000, size=(32 * 20, 200)).astype("int32")
y = rng.integers(0, 2, size=(32 * 20, 1)).astype("float32")

arms = []
for precision in args.precisions.split(","):
    arms.append((precision, config))
    if precision == "nvfp4":
        parts_off = dataclasses.replace(config, **dict.fromkeys(NVFP4_PARTS, False))
        arms.append(("nvfp4 (parts off)", parts_off))
models = []
for name, arm_config in arms:
    model = model_lib.build(arm_config, name.split()[0])
    model_lib.compile(model, arm_config)
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)  # compiles
    models.append(model)

seconds = [[] for _ in arms]
for _ in range(args.repeats):  # alternated, so a slower minute slows every arm alike
    for i, model in enumerate(models):
        started = time.perf_counter()
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)
        seconds[i].append(time.perf_counter() - started)
first = float(np.median(seconds[0]))
print("| precision | s per 20 steps (median) | vs first |\n|---|---|---|")
for (name, _), times in zip(arms, seconds):
    median = float(np.median(times))
    print(f"| {name} | {median:.2f} | {median / first:.2f}x |")
