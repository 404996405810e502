"""What monitoring costs with fallback on: training steps/s of three runs of the same
settings, alternated in one process, each repeated:

    off        train_run(record=False): nothing recorded, no probe
    recorded   train_run(record=True): metrics, fp8 state, the probe every `probe_every` steps
    fallback   recorded, plus --fallback thresholds checked at every probe (fallback.py)

The thresholds are ones this model never crosses after its first probe (the point is the
cost of watching, not of moving layers; a layer that moves computes in bf16, which changes
the step time for other reasons); the runs' events are counted to make sure. Steps/s counts
training steps only (validation and each epoch's first step, which compiles, left out).
Target: fallback's median steps/s at most 3 % below off's.

    .venv/bin/python benchmarks/fallback_overhead.py [--subset 1000 --epochs 1 --repeats 3]
"""

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

TARGET = 0.03
# Never crossed by this model after step 0; at step 0 scale 1.0 flushes gradients to zero,
# which is underflow, not saturation or a negative SNR.
WATCHING = "saturation>50%,snr<-10"
ARMS = ("off", "recorded", "fallback")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subset", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the three runs")
    parser.add_argument("--probe-every", type=int, default=25)
    parser.add_argument("--fallback", default=WATCHING, help="the thresholds watched")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)

    home = _common.setup_env()
    _common.preload()
    from fp8demo import tokenizer
    from fp8demo.config import TrainConfig
    from fp8demo.store import Store

    base = dict(
        subset=args.subset,
        epochs=args.epochs,
        vocab_method="fast",
        precisions=("fp8",),
        ptq=False,
        probe_every=args.probe_every,
        data=os.environ.get("FP8DEMO_IMDB", ""),
    )
    configs = {
        "off": TrainConfig(**base).validate(),
        "recorded": TrainConfig(**base).validate(),
        "fallback": TrainConfig(**base, fallback=args.fallback).validate(),
    }
    store = Store(home)
    results = {arm: [] for arm in ARMS}
    try:
        tokenizer.prepare(configs["off"], home, progress=lambda *_: None)  # cache the data
        for repeat in range(args.repeats):
            # Rotate the order, so a drift in machine load hits every arm alike.
            order = ARMS[repeat % 3 :] + ARMS[: repeat % 3]
            for arm in order:
                results[arm].append(one_run(store, configs[arm], record=arm != "off"))
                row = results[arm][-1]
                print(
                    f"repeat {repeat + 1}: {arm:<9} {row['steps_per_sec']:6.2f} steps/s, "
                    f"{row['events']} fallback events",
                    flush=True,
                )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    report(args, results)


def one_run(store, config, record: bool) -> dict:
    """Train one queued run of `config`; its steps/s, wall seconds and fallback events."""
    from fp8demo import training

    _, (run_id,) = store.create_comparison(config)
    run = store.claim_next_run(os.getpid())
    timer = _common.StepTimer()
    started = time.perf_counter()
    training.train_run(store, run, record=record, progress=lambda *_: None, callbacks=[timer])
    wall = time.perf_counter() - started
    store.end_run(run_id, "finished")
    events = store.run(run_id)["summary"].get("fallback_events", [])
    return {
        "steps_per_sec": timer.steps_per_sec(),
        "wall_seconds": wall,
        "events": len(events),
        "timed_steps": len(timer.intervals),
    }


def decision_seconds(thresholds: str, layers: int = 8, recipes: int = 7, rounds=2000) -> float:
    """Seconds fallback's decision takes per probe (tensor_statistics + Fallback.check on
    probe-shaped numbers, none crossing): what fallback adds to a probe, without noise."""
    import numpy as np

    from fp8demo import fallback

    rng = np.random.default_rng(0)
    stats = rng.random((layers, 3, 2)) * 1e-3
    by_recipe = np.concatenate(
        [rng.random((layers, 3, recipes, 2)) * 0.1, np.full((layers, 3, recipes, 1), 30.0)], -1
    )
    names = [f"layer{i}" for i in range(layers)]
    recipe_names = [f"r{k}" for k in range(recipes)]
    check = fallback.Fallback(fallback.parse(thresholds), names)
    started = time.perf_counter()
    for step in range(rounds):
        statistics = fallback.tensor_statistics(
            stats, by_recipe, recipe_names, "r0", np.ones((layers, 3))
        )
        assert not check.check(step, statistics)
    return (time.perf_counter() - started) / rounds


def report(args, results):
    medians = {arm: _common.median([r["steps_per_sec"] for r in results[arm]]) for arm in ARMS}
    overhead = 1 - medians["fallback"] / medians["off"]
    added = 1 - medians["fallback"] / medians["recorded"]
    print(
        "\n"
        + _common.table(
            ["run", "steps/s (each repeat)", "median", "fallback events"],
            [
                (
                    arm,
                    " / ".join(f"{r['steps_per_sec']:.2f}" for r in results[arm]),
                    f"{medians[arm]:.2f}",
                    sum(r["events"] for r in results[arm]),
                )
                for arm in ARMS
            ],
        )
    )
    steps = results["off"][-1]["timed_steps"]
    print(
        f"\nfp8, subset {args.subset}, {args.epochs} epoch(s), ~{steps} timed steps per run, "
        f"probe every {args.probe_every} steps, fallback {args.fallback!r}: steps/s with "
        f"fallback on {-overhead:+.1%} against unrecorded (target ≥ {-TARGET:.0%}): "
        f"{_common.met(overhead <= TARGET)}; {-added:+.1%} against recorded without fallback."
        f"\nCPU: {_common.cpu_model()}; load average {_common.load_average()}"
    )
    decision = decision_seconds(args.fallback)
    step = 1 / medians["fallback"]
    print(
        f"The decision alone: {decision * 1e6:.0f} µs per probe, {decision / step:.4%} of one "
        f"training step ({step * 1e3:.0f} ms), {decision / (step * args.probe_every):.5%} of "
        f"the {args.probe_every} steps between two probes."
    )
    _common.write_json(
        args.json,
        {
            "settings": vars(args),
            "results": results,
            "medians": medians,
            "overhead": overhead,
            "added_by_fallback": added,
            "decision_seconds": decision,
        },
    )


if __name__ == "__main__":
    main()
