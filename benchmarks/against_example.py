"""fp8demo's engine against the Keras example's own pipeline, side by side in one process.

Runs, on the same settings and data:
  1. the example pipeline (benchmarks/example_pipeline.py): bf16 then fp8;
  2. the engine, cold cache: a comparison (bf16 then fp8) through a Store in a fresh temp
     home — reading the reviews, vocabulary, tokenization and XLA compilation included;
  3. the engine, warm cache: the same comparison again in the same store.
and prints each phase, wall time, test accuracy and the ratios engine/example.

Targets: cold ≤ 0.5×, warm ≤ 0.25× the example's wall time; accuracies within noise.
The engine runs with its default settings: post-training quantization is on, evaluated when
first asked for, so it costs a comparison nothing. --repeats N alternates the three N times and
reports medians with the CPU model and the load average.

    .venv/bin/python benchmarks/against_example.py --workload small --repeats 3
    .venv/bin/python benchmarks/against_example.py --subset 2000 --epochs 1 --vocab-method fast
    .venv/bin/python benchmarks/against_example.py            # full data, the example's settings
    .venv/bin/python benchmarks/against_example.py --vocab-method fast --dropout-masks fast
"""

import argparse
import math
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

COLD_TARGET, WARM_TARGET = 0.5, 0.25


def run_engine(store, config, log=print) -> dict:
    """One comparison through the store, as the worker runs it; timings per run."""
    from fp8demo import worker

    started = time.perf_counter()
    comparison_id, run_ids = store.create_comparison(config, label="benchmark")
    runs = {}
    for _ in run_ids:
        run = store.claim_next_run(os.getpid())
        timer = _common.StepTimer()
        t = time.perf_counter()
        worker.execute(store, run, callbacks=[timer])
        seconds = time.perf_counter() - t
        row = store.run(run["id"])
        if row["status"] != "finished":
            raise RuntimeError(f"engine run {row['id']} {row['status']}: {row.get('error')}")
        runs[row["precision"]] = {
            "seconds": seconds,
            "fit_seconds": row["fit_seconds"],
            "test_accuracy": row["test_accuracy"],
            "test_loss": row["test_loss"],
            "data_seconds": row["summary"].get("data", {}).get("seconds", {}),
            "from_cache": row["summary"].get("data", {}).get("from_cache", {}),
            "steps_per_sec": timer.steps_per_sec(),
            "phase_seconds": row["summary"].get("phase_seconds") or {},
        }
        log(
            f"  engine {row['precision']}: {seconds:.1f} s (fit {row['fit_seconds']:.1f} s), "
            f"test accuracy {row['test_accuracy']:.2%}, "
            f"{_common.fmt(runs[row['precision']]['steps_per_sec'], '.1f')} steps/s"
        )
    return {
        "comparison": comparison_id,
        "runs": runs,
        "wall_seconds": time.perf_counter() - started,
    }


def engine_phases(result) -> dict:
    phases = {}
    for precision, r in result["runs"].items():
        if r.get("phase_seconds"):  # recorded by the engine itself
            phases.update({f"{precision}: {name}": s for name, s in r["phase_seconds"].items()})
            continue
        data_s = sum(r["data_seconds"].values())
        if data_s >= 0.05:
            for name, s in r["data_seconds"].items():
                phases[f"{precision}: {name}"] = s
        phases[f"{precision}: fit"] = r["fit_seconds"]
        phases[f"{precision}: build, evaluate, save"] = r["seconds"] - r["fit_seconds"] - data_s
    return phases


def tolerance(accuracy, n):
    """Accuracy difference counted as noise: 3 σ of a difference of two binomial estimates,
    and at least 2 points (different runs of the same recipe differ by about that)."""
    if not n or accuracy is None:
        return 0.02
    return max(0.02, 3 * math.sqrt(2 * accuracy * (1 - accuracy) / n))


# Named workloads: the Keras example's settings, and issue #14's per-comparison fixed cost (a
# small comparison, where everything but training dominates).
WORKLOADS = {
    "example": dict(subset=0, epochs=3, vocab_size=20000),
    "small": dict(subset=2000, epochs=2, vocab_size=5000),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--workload",
        choices=list(WORKLOADS),
        help="small: 1,000 reviews per class, vocabulary 5,000, 2 epochs; example: the "
        "example's settings (sets --subset, --epochs and --vocab-size)",
    )
    parser.add_argument("--subset", type=int, default=0, help="reviews per split (0 = full data)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--vocab-size", type=int, default=20000)
    parser.add_argument("--vocab-method", choices=("keras", "fast"), default="keras")
    parser.add_argument("--dropout-masks", choices=("keras", "fast"), default="keras")
    parser.add_argument("--no-ptq", action="store_true", help="switch the engine's PTQ option off")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="alternate example, engine cold, engine warm this many times; medians reported",
    )
    parser.add_argument("--data", default="", help="aclImdb_v1.tar.gz (default: FP8DEMO_IMDB)")
    parser.add_argument(
        "--home", default="", help="store folder (default: fresh temp folders, deleted afterwards)"
    )
    parser.add_argument("--skip-example", action="store_true", help="engine only (no ratios)")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    if args.workload:
        for name, value in WORKLOADS[args.workload].items():
            setattr(args, name, value)

    base = _common.setup_env(args.home or None)
    if args.data:
        os.environ["FP8DEMO_IMDB"] = args.data
    archive = _common.archive()
    _common.preload()
    import example_pipeline

    from fp8demo.config import TrainConfig
    from fp8demo.store import Store

    # The engine's defaults (post-training quantization included) except the workload's.
    config = TrainConfig(
        epochs=args.epochs,
        subset=args.subset,
        vocab_size=args.vocab_size,
        vocab_method=args.vocab_method,
        dropout_masks=args.dropout_masks,
        ptq=not args.no_ptq,
        data=str(archive),
    ).validate()
    print(f"Settings: {config.differences() or 'the Keras example'}; data {archive}")
    print(f"CPU: {_common.cpu_model()}; load average before: {_common.load_average()}")
    results = {
        "settings": config.to_dict(),
        "date": time.strftime("%Y-%m-%d"),
        "cpu": _common.cpu_model(),
        "load_average_before": _common.load_average(),
        "example": [],
        "cold": [],
        "warm": [],
    }
    for k in range(args.repeats):
        # Alternated, so that a change in the machine's load hits both sides alike.
        home = base / f"repeat-{k}"
        try:
            if not args.skip_example:
                print(f"== repeat {k + 1}/{args.repeats}: Keras example pipeline")
                example = example_pipeline.run(
                    archive,
                    args.subset,
                    args.epochs,
                    cleanup=False,
                    vocabulary_size=args.vocab_size,
                )
                results["example"].append(example)
                print(example_pipeline.report(example))
            store = Store(home)
            for label in ("cold", "warm"):
                print(f"== repeat {k + 1}/{args.repeats}: fp8demo engine, {label} cache")
                results[label].append(run_engine(store, config))
        finally:
            # Between measurements: deleting 50,000 files slows whatever runs next.
            shutil.rmtree(home, ignore_errors=True)
            for example in results["example"]:
                if example.get("workdir"):
                    shutil.rmtree(example.pop("workdir"), ignore_errors=True)
    if not args.home:
        shutil.rmtree(base, ignore_errors=True)
    results["load_average_after"] = _common.load_average()
    report(results, args)
    _common.write_json(args.json, results)


def median_phases(phase_dicts) -> dict:
    names = list(dict.fromkeys(name for d in phase_dicts for name in d))
    return {name: _common.median([d.get(name) for d in phase_dicts]) for name in names}


def report(results, args):
    """Median phases and wall times, ratios, accuracies and training speeds."""
    walls = {
        label: [r["wall_seconds"] for r in results[label]] for label in ("example", "cold", "warm")
    }
    medians = {label: _common.median(values) for label, values in walls.items()}
    print(
        f"\nCPU: {results['cpu']}; load average before {results['load_average_before']}, "
        f"after {results['load_average_after']}"
    )
    print("\n== Phases (median seconds)")
    if results["example"]:
        rows = [
            (k, f"{v:.1f}")
            for k, v in median_phases([r["phases"] for r in results["example"]]).items()
        ]
        rows.append(("**wall time**", f"**{medians['example']:.1f}**"))
        print("Keras example:\n" + _common.table(["phase", "seconds"], rows))
    for label in ("cold", "warm"):
        phases = median_phases([engine_phases(r) for r in results[label]])
        rows = [(k, f"{v:.1f}") for k, v in phases.items()]
        rows.append(("**wall time**", f"**{medians[label]:.1f}**"))
        print(f"engine, {label} cache:\n" + _common.table(["phase", "seconds"], rows))

    example = results["example"][0] if results["example"] else None
    rows = []
    for label, name in (
        ("example", "Keras example"),
        ("cold", "engine, cold cache"),
        ("warm", "engine, warm cache"),
    ):
        if not results[label]:
            continue
        first = results[label][0]
        accuracy = (
            {p: first[p]["test_accuracy"] for p in ("bf16", "fp8")}
            if label == "example"
            else {p: r["test_accuracy"] for p, r in first["runs"].items()}
        )
        ratio = medians[label] / medians["example"] if example else None
        rows.append(
            (
                name,
                " / ".join(f"{w:.1f}" for w in walls[label]),
                f"{medians[label]:.1f}",
                _common.fmt(ratio, ".2f") + ("×" if ratio else ""),
                f"{accuracy['bf16']:.2%}",
                f"{accuracy['fp8']:.2%}",
            )
        )
    headers = [
        "pipeline",
        "wall s, each repeat",
        "median",
        "ratio vs example",
        "bf16 test acc",
        "fp8 test acc",
    ]
    print("\n" + _common.table(headers, rows))
    if not example:
        return
    cold = medians["cold"] / medians["example"]
    warm = medians["warm"] / medians["example"]
    results["ratios"] = {"cold": cold, "warm": warm}
    print(
        f"\ncold / example = {cold:.2f}× (target ≤ {COLD_TARGET}×): "
        f"{_common.met(cold <= COLD_TARGET)}"
    )
    print(
        f"warm / example = {warm:.2f}× (target ≤ {WARM_TARGET}×): "
        f"{_common.met(warm <= WARM_TARGET)}"
    )
    n_test = args.subset or 25000
    ok = True
    for precision in ("bf16", "fp8"):
        ref = example[precision]["test_accuracy"]
        tol = tolerance(ref, n_test)
        for label in ("cold", "warm"):
            diff = results[label][0]["runs"][precision]["test_accuracy"] - ref
            ok &= abs(diff) <= tol
            print(f"{precision} accuracy, engine {label} − example: {diff:+.2%} (noise ±{tol:.2%})")
    results["accuracy_within_noise"] = ok
    print(f"accuracies within noise: {_common.met(ok)}")

    def rate(label, precision):
        if label == "example":
            values = [r[precision]["steps_per_sec"] for r in results["example"]]
        else:
            values = [r["runs"][precision]["steps_per_sec"] for r in results[label]]
        return _common.median(values)

    print(
        "training speed (median steps/s, training steps only), bf16 / fp8: "
        + "; ".join(
            f"{label} {_common.fmt(rate(label, 'bf16'), '.1f')} / "
            f"{_common.fmt(rate(label, 'fp8'), '.1f')}"
            for label in ("example", "cold", "warm")
        )
    )


if __name__ == "__main__":
    main()
