"""Recipes' training speed, side by side: this tree's against another revision's.

The example's model (vocabulary 5,000, sequence 200, batch 32) on random token ids. Each code
tree runs in its own worker process that builds and compiles a precision on first use (a short
fit), then times 20-step fits on request; the arms (tree x precision) alternate, so a slower
minute slows every arm alike, and each arm's median over the repeats is printed. nvfp4 also
runs with its three parts off. `--against REV` checks REV out into a temporary git worktree
(default: this tree alone); a precision REV does not know is left out there.

    .venv/bin/python benchmarks/recipe_speed.py [--repeats 3] [--precisions mxfp8,nvfp4]
    .venv/bin/python benchmarks/recipe_speed.py --against 2bf2ab6^ --precisions bf16,mxfp8
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# One code tree's worker: reads an arm per line ("mxfp8", "nvfp4 parts off"), answers the
# seconds of one 20-step fit of it, or "unknown" for a precision this tree lacks.
WORKER = r"""
import dataclasses, sys, time
import numpy as np
import fp8demo.env
from fp8demo import config as config_lib, model as model_lib

config = config_lib.TrainConfig(vocab_size=5000, seq_len=200)
rng = np.random.default_rng(0)
x = rng.integers(0, 5000, size=(32 * 20, 200)).astype("int32")
y = rng.integers(0, 2, size=(32 * 20, 1)).astype("float32")
models = {}
for line in sys.stdin:
    arm = line.strip()
    precision = arm.split()[0]
    if precision not in config_lib.PRECISIONS:
        print("unknown", flush=True)
        continue
    if arm not in models:
        arm_config = config
        if arm.endswith("parts off"):
            arm_config = dataclasses.replace(config, **dict.fromkeys(config_lib.NVFP4_PARTS, False))
        model = model_lib.compile(model_lib.build(arm_config, precision), arm_config)
        model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)  # compiles
        models[arm] = model
    started = time.perf_counter()
    models[arm].fit(x, y, batch_size=32, epochs=1, verbose=0)
    print(time.perf_counter() - started, flush=True)
"""


def start_worker(tree: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER],
        cwd=tree,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def ask(worker: subprocess.Popen, arm: str) -> float | None:
    worker.stdin.write(arm + "\n")
    worker.stdin.flush()
    answer = worker.stdout.readline().strip()
    if not answer:
        raise RuntimeError(f"the worker for {arm!r} ended without an answer")
    return None if answer == "unknown" else float(answer)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", default="mxfp8,nvfp4")
    parser.add_argument("--against", default="", help="a git revision to compare with")
    args = parser.parse_args()

    arms = []
    for precision in args.precisions.split(","):
        arms.append(precision)
        if precision == "nvfp4":
            arms.append("nvfp4 parts off")
    trees = {"this tree": ROOT}
    scratch = None
    if args.against:
        scratch = Path(tempfile.mkdtemp(prefix="recipe-speed-")) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(scratch), args.against],
            check=True,
            capture_output=True,
        )
        trees[args.against] = scratch
    workers = {name: start_worker(tree) for name, tree in trees.items()}
    seconds = {(name, arm): [] for name in trees for arm in arms}
    try:
        for repeat in range(args.repeats + 1):  # the first round compiles and is not counted
            for arm in arms:
                for name, worker in workers.items():
                    measured = ask(worker, arm)
                    if repeat and measured is not None:
                        seconds[(name, arm)].append(measured)
    finally:
        for worker in workers.values():
            worker.stdin.close()
            worker.wait()
        if scratch:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(scratch)])

    median = {key: statistics.median(times) for key, times in seconds.items() if times}
    first = median.get(("this tree", arms[0]))
    header = f"| arm | this tree, s per 20 steps (median) | vs {arms[0]} |"
    if args.against:
        header += f" {args.against} | this / {args.against} |"
    print(header + "\n" + "|---" * (header.count("|") - 1) + "|")
    for arm in arms:
        mine = median.get(("this tree", arm))
        row = f"| {arm} | {mine:.2f} | {mine / first:.2f}x |"
        if args.against:
            theirs = median.get((args.against, arm))
            row += f" {theirs:.2f} | {mine / theirs:.2f}x |" if theirs else " – | – |"
        print(row)


if __name__ == "__main__":
    main()
