"""fp8demo's engine against the Keras example's own pipeline, side by side in one process.

Runs, on the same settings and data:
  1. the example pipeline (benchmarks/example_pipeline.py): bf16 then fp8;
  2. the engine, cold cache: a comparison (bf16 then fp8) through a Store in a fresh temp
     home — extraction, vocabulary and tokenization included;
  3. the engine, warm cache: the same comparison again in the same store.
and prints each phase, wall time, test accuracy and the ratios engine/example.

Targets: cold ≤ 0.5×, warm ≤ 0.25× the example's wall time; accuracies within noise.
The engine runs without post-training quantization (the example does none); --ptq adds it.

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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subset", type=int, default=0, help="reviews per split (0 = full data)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--vocab-method", choices=("keras", "fast"), default="keras")
    parser.add_argument("--dropout-masks", choices=("keras", "fast"), default="keras")
    parser.add_argument("--ptq", action="store_true", help="engine also evaluates int8/int4 PTQ")
    parser.add_argument("--data", default="", help="aclImdb_v1.tar.gz (default: FP8DEMO_IMDB)")
    parser.add_argument(
        "--home", default="", help="store folder (default: a fresh temp folder, deleted afterwards)"
    )
    parser.add_argument("--skip-example", action="store_true", help="engine only (no ratios)")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)

    home = _common.setup_env(args.home or None)
    if args.data:
        os.environ["FP8DEMO_IMDB"] = args.data
    archive = _common.archive()
    _common.preload()
    from fp8demo.config import TrainConfig
    from fp8demo.store import Store

    config = TrainConfig(
        epochs=args.epochs,
        subset=args.subset,
        vocab_method=args.vocab_method,
        dropout_masks=args.dropout_masks,
        ptq=args.ptq,
        data=str(archive),
    ).validate()
    print(f"Settings: {config.differences() or 'the Keras example'}; data {archive}; store {home}")
    results = {
        "settings": config.to_dict(),
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
    }
    try:
        if not args.skip_example:
            import example_pipeline

            print("== Keras example pipeline")
            results["example"] = example_pipeline.run(
                archive, args.subset, args.epochs, cleanup=False
            )
            print(example_pipeline.report(results["example"]))
        store = Store(home)
        for label in ("cold", "warm"):
            print(f"== fp8demo engine, {label} cache")
            results[label] = run_engine(store, config)
    finally:
        if not args.home:
            shutil.rmtree(home, ignore_errors=True)
        if results.get("example", {}).get("workdir"):
            shutil.rmtree(results["example"]["workdir"], ignore_errors=True)

    # -- report --------------------------------------------------------------------------------
    print("\n== Phases (seconds)")
    for label in ("cold", "warm"):
        rows = [(k, f"{v:.1f}") for k, v in engine_phases(results[label]).items()]
        rows.append(("**wall time**", f"**{results[label]['wall_seconds']:.1f}**"))
        print(f"engine, {label} cache:\n" + _common.table(["phase", "seconds"], rows))
    n_test = args.subset or 25000
    rows = []
    example = results.get("example")
    for name, wall, acc in (
        [
            (
                "Keras example",
                example["wall_seconds"],
                {p: example[p]["test_accuracy"] for p in ("bf16", "fp8")},
            )
        ]
        if example
        else []
    ) + [
        (
            f"engine, {label} cache",
            results[label]["wall_seconds"],
            {p: r["test_accuracy"] for p, r in results[label]["runs"].items()},
        )
        for label in ("cold", "warm")
    ]:
        ratio = wall / example["wall_seconds"] if example else None
        rows.append(
            (
                name,
                f"{wall:.1f}",
                _common.fmt(ratio, ".2f") + ("×" if ratio else ""),
                f"{acc['bf16']:.2%}",
                f"{acc['fp8']:.2%}",
            )
        )
    print(
        "\n"
        + _common.table(
            ["pipeline", "wall s", "ratio vs example", "bf16 test acc", "fp8 test acc"], rows
        )
    )
    if example:
        cold = results["cold"]["wall_seconds"] / example["wall_seconds"]
        warm = results["warm"]["wall_seconds"] / example["wall_seconds"]
        results["ratios"] = {"cold": cold, "warm": warm}
        print(
            f"\ncold / example = {cold:.2f}× (target ≤ {COLD_TARGET}×): "
            f"{_common.met(cold <= COLD_TARGET)}"
        )
        print(
            f"warm / example = {warm:.2f}× (target ≤ {WARM_TARGET}×): "
            f"{_common.met(warm <= WARM_TARGET)}"
        )
        ok = True
        for precision in ("bf16", "fp8"):
            ref = example[precision]["test_accuracy"]
            tol = tolerance(ref, n_test)
            for label in ("cold", "warm"):
                diff = results[label]["runs"][precision]["test_accuracy"] - ref
                ok &= abs(diff) <= tol
                print(
                    f"{precision} accuracy, engine {label} − example: {diff:+.2%} "
                    f"(noise ±{tol:.2%})"
                )
        results["accuracy_within_noise"] = ok
        print(f"accuracies within noise: {_common.met(ok)}")
        ex_rate = {p: example[p]["steps_per_sec"] for p in ("bf16", "fp8")}
        print(
            f"training speed (steps/s, training steps only), bf16 / fp8: example "
            f"{_common.fmt(ex_rate['bf16'], '.1f')} / {_common.fmt(ex_rate['fp8'], '.1f')}; "
            + "; ".join(
                f"engine {label} "
                + " / ".join(
                    _common.fmt(results[label]["runs"][p]["steps_per_sec"], ".1f")
                    for p in ("bf16", "fp8")
                )
                for label in ("cold", "warm")
            )
        )
    _common.write_json(args.json, results)


if __name__ == "__main__":
    main()
