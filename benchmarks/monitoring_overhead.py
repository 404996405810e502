"""What monitoring costs: training steps/s with everything the Live page needs recorded
(train_run(record=True): per-step metrics, progress, fp8 amax/scale snapshots every ~0.5 s,
the saturation/underflow probe every `probe_every` steps)
against the same run with record=False, alternating on/off a few times in one process.

Steps/s counts training steps only (validation, the first step of each epoch and
recompilations excluded), timed by a callback that runs next to the engine's recorder.
Target: median slowdown ≤ 3 %.

--probe-cost times the probe itself instead, with and without the what-if statistics under
every scaling recipe (recipes.py), alternated on one model after one epoch of training: its
one-time compilation, the time per probe, and that time as a share of the `probe_every`
training steps between two probes (the probe's part of the overhead above).

    .venv/bin/python benchmarks/monitoring_overhead.py [--subset 2000 --epochs 2 --pairs 3]
    .venv/bin/python benchmarks/monitoring_overhead.py --probe-cost [--rounds 10]
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subset", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=3, help="record on/off pairs")
    parser.add_argument("--precision", default="fp8", choices=("bf16", "fp8"))
    parser.add_argument("--vocab-method", default="fast", choices=("keras", "fast"))
    parser.add_argument(
        "--probe-every",
        type=int,
        default=None,
        help="steps between saturation/underflow probes (default: the engine's)",
    )
    parser.add_argument(
        "--probe-cost",
        action="store_true",
        help="time the probe with and without the scaling recipes' what-if, alternated",
    )
    parser.add_argument("--rounds", type=int, default=10, help="--probe-cost: timed rounds")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)

    home = _common.setup_env()
    _common.preload()
    from fp8demo import tokenizer, training
    from fp8demo.config import TrainConfig
    from fp8demo.store import Store

    config = TrainConfig(
        subset=args.subset,
        epochs=args.epochs,
        vocab_method=args.vocab_method,
        precisions=(args.precision,),
        ptq=False,
        data=os.environ.get("FP8DEMO_IMDB", ""),
        **({} if args.probe_every is None else {"probe_every": args.probe_every}),
    ).validate()
    if args.probe_cost:
        try:
            return probe_cost(args, config, home)
        finally:
            shutil.rmtree(home, ignore_errors=True)
    store = Store(home)
    try:
        tokenizer.prepare(config, home, progress=lambda *_: None)  # cache data and vocabulary
        results = {True: [], False: []}
        for pair in range(args.pairs):
            # Alternate which comes first, so a drift in machine load hits both alike.
            for record in (True, False) if pair % 2 == 0 else (False, True):
                _, (run_id,) = store.create_comparison(config)
                run = store.claim_next_run(os.getpid())
                timer = _common.StepTimer()
                started = time.perf_counter()
                training.train_run(
                    store, run, record=record, progress=lambda *_: None, callbacks=[timer]
                )
                wall = time.perf_counter() - started
                store.end_run(run_id, "finished")
                rate = timer.steps_per_sec()
                results[record].append({"steps_per_sec": rate, "wall_seconds": wall})
                print(
                    f"pair {pair + 1}: record={str(record):5} {rate:6.2f} steps/s "
                    f"(train_run {wall:.1f} s)",
                    flush=True,
                )
    finally:
        shutil.rmtree(home, ignore_errors=True)

    slowdowns = [
        off["steps_per_sec"] / on["steps_per_sec"] - 1
        for on, off in zip(results[True], results[False])
    ]
    median = _common.median(slowdowns)
    steps = len(timer.intervals)
    print(
        "\n"
        + _common.table(
            ["pair", "record=True steps/s", "record=False steps/s", "slowdown"],
            [
                (i + 1, f"{on['steps_per_sec']:.2f}", f"{off['steps_per_sec']:.2f}", f"{s:+.1%}")
                for i, (on, off, s) in enumerate(zip(results[True], results[False], slowdowns))
            ],
        )
    )
    walls = [
        on["wall_seconds"] / off["wall_seconds"] - 1
        for on, off in zip(results[True], results[False])
    ]
    print(
        f"\n{args.precision}, subset {args.subset}, {args.epochs} epoch(s), ~{steps} timed steps "
        f"per run, probe every {config.probe_every} steps: median slowdown {median:+.1%} "
        f"(target ≤ {TARGET:.0%}): {_common.met(median <= TARGET)}; whole train_run "
        f"(compilations, evaluation, saving included) {_common.median(walls):+.1%}"
    )
    _common.write_json(
        args.json,
        {
            "settings": vars(args),
            "results": {"record": results[True], "no_record": results[False]},
            "slowdowns": slowdowns,
            "median_slowdown": median,
        },
    )


def probe_cost(args, config, home):
    """The probe with and without recipes on one trained model, alternated round by round."""
    from fp8demo import model as model_lib
    from fp8demo import probe as probe_lib
    from fp8demo import tokenizer

    prepared = tokenizer.prepare(config, home, progress=lambda *_: None)
    model = model_lib.compile(model_lib.build(config, args.precision), config)
    timer = _common.StepTimer()
    model.fit(
        prepared.x_train,
        prepared.y_train,
        batch_size=config.batch_size,
        epochs=1,
        callbacks=[timer],
        verbose=0,
    )
    step_seconds = 1 / timer.steps_per_sec()
    batch = config.batch_size
    probes = {
        "without recipes": probe_lib.Probe(
            model, prepared.x_val[:batch], prepared.y_val[:batch], recipes=()
        ),
        "with recipes": probe_lib.Probe(model, prepared.x_val[:batch], prepared.y_val[:batch]),
    }
    compile_seconds, seconds = {}, {name: [] for name in probes}
    for name, probe in probes.items():
        started = time.perf_counter()
        probe.measure()  # compiles
        compile_seconds[name] = time.perf_counter() - started
        print(f"{name}: first call (compilation) {compile_seconds[name]:.1f} s", flush=True)
    for turn in range(args.rounds):
        # Alternate which goes first, so a drift in machine load hits both alike.
        for name in probes if turn % 2 == 0 else reversed(probes):
            started = time.perf_counter()
            probes[name].measure()
            seconds[name].append(time.perf_counter() - started)
    between = config.probe_every * step_seconds
    rows = [
        (
            name,
            f"{compile_seconds[name]:.1f}",
            f"{1000 * _common.median(seconds[name]):.0f}",
            f"{_common.median(seconds[name]) / between:.2%}" if between else "-",
        )
        for name in probes
    ]
    print(
        "\n"
        + _common.table(
            ["probe", "first call s", "per probe ms (median)", "share of the steps between"],
            rows,
        )
    )
    share = _common.median(seconds["with recipes"]) / between if between else 0.0
    print(
        f"\n{args.precision}, training step {1000 * step_seconds:.0f} ms, probe every "
        f"{config.probe_every} steps ({between:.1f} s of training), {args.rounds} rounds: the "
        f"probe with recipes takes {share:.2%} of the training time "
        f"(target ≤ {TARGET:.0%}): {_common.met(share <= TARGET)}"
    )
    _common.write_json(
        args.json,
        {
            "settings": vars(args),
            "step_seconds": step_seconds,
            "compile_seconds": compile_seconds,
            "probe_seconds": seconds,
            "share_with_recipes": share,
        },
    )


if __name__ == "__main__":
    main()
