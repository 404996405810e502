"""Is the engine's test accuracy the example's, within seed-to-seed noise?

One workload, several seeds, alternated: for each seed the Keras example pipeline
(benchmarks/example_pipeline.py, bf16 then fp8) and the engine (one comparison, same
settings, same seed). Prints every accuracy, then mean ± standard deviation per side and
precision, the difference of the means and its standard error (Welch). A gap is a finding
only when it is larger than about twice that standard error.

    .venv/bin/python benchmarks/accuracy_seeds.py --workload small --seeds 5
"""

import argparse
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from against_example import WORKLOADS, run_engine  # noqa: E402

PRECISIONS = ("bf16", "fp8")


def summarise(values: list) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", choices=list(WORKLOADS), default="small")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 1 … N")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    workload = WORKLOADS[args.workload]

    base = _common.setup_env()
    archive = _common.archive()
    _common.preload()
    import example_pipeline

    from fp8demo.config import TrainConfig
    from fp8demo.store import Store

    print(f"Workload {args.workload}: {workload}; CPU: {_common.cpu_model()}")
    accuracy = {side: {p: [] for p in PRECISIONS} for side in ("example", "engine")}
    store = Store(base / "store")
    for seed in range(1, args.seeds + 1):
        example = example_pipeline.run(
            archive,
            workload["subset"],
            workload["epochs"],
            seed=seed,
            log=lambda *_: None,
            vocabulary_size=workload["vocab_size"],
        )
        config = TrainConfig(
            epochs=workload["epochs"],
            subset=workload["subset"],
            vocab_size=workload["vocab_size"],
            seed=seed,
            data=str(archive),
            ptq=False,
        )
        engine = run_engine(store, config, log=lambda *_: None)
        for p in PRECISIONS:
            accuracy["example"][p].append(example[p]["test_accuracy"])
            accuracy["engine"][p].append(engine["runs"][p]["test_accuracy"])
        print(
            f"seed {seed}: example "
            + " ".join(f"{p} {accuracy['example'][p][-1]:.2%}" for p in PRECISIONS)
            + " · engine "
            + " ".join(f"{p} {accuracy['engine'][p][-1]:.2%}" for p in PRECISIONS),
            flush=True,
        )
    shutil.rmtree(base, ignore_errors=True)

    rows = []
    for p in PRECISIONS:
        (m_ex, s_ex), (m_en, s_en) = (summarise(accuracy[side][p]) for side in accuracy)
        n = args.seeds
        standard_error = math.sqrt(s_ex**2 / n + s_en**2 / n)
        gap = m_en - m_ex
        rows.append(
            (
                p,
                f"{m_ex:.2%} ± {s_ex:.2%}",
                f"{m_en:.2%} ± {s_en:.2%}",
                f"{gap * 100:+.2f} pts ± {standard_error * 100:.2f}",
                "yes" if abs(gap) > 2 * standard_error else "no",
            )
        )
    print(
        f"\n{args.seeds} seeds, {time.strftime('%Y-%m-%d')}, CPU {_common.cpu_model()}\n"
        + _common.table(
            ["precision", "example (mean ± std)", "engine", "engine − example", "beyond 2 SE"],
            rows,
        )
    )
    _common.write_json(args.json, {"workload": args.workload, "accuracy": accuracy})
    os.environ.pop("FP8DEMO_HOME", None)


if __name__ == "__main__":
    main()
