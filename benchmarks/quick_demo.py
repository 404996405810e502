"""The Quick demo preset from Launch to both precisions finished, as the dashboard runs it.

Each repeat starts from nothing: a fresh store home (no worker, no review, vocabulary, token
or XLA compilation cache), then launches the preset exactly as the Train page's Launch button
does (launcher.launch: queue the comparison, start the worker process) and watches the store
as the Live page does. Measured from Launch:

  phase shown     the first run's phase leaves "queued" (the worker claimed it)
  data phase      the first run shows a data phase ("loading data")
  first loss      the first per-step loss point is in the store (what Live plots first)
  both finished   every run of the comparison has ended

with each run's test accuracy and test-set size. Prints the medians of N repeats, the CPU
model and the load average before and after (other processes slow every timing).

Targets (issue #14): phase ≤ 5 s, first loss ≤ 25 s, both finished ≤ 60 s, test accuracy
≥ 78 % for both precisions on at least 2,000 test reviews.

    .venv/bin/python benchmarks/quick_demo.py --repeats 3
"""

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

TARGETS = {"phase shown": 5.0, "first loss": 25.0, "both finished": 60.0}
ACCURACY_TARGET, TEST_REVIEWS_TARGET = 0.78, 2000
TIMEOUT_S = 900


def one_launch(preset_name: str, log=print) -> dict:
    """Launch the preset in a fresh home and time it by polling the store."""
    from fp8demo import launcher
    from fp8demo.config import preset
    from fp8demo.store import ENDED, Store

    home = Path(_common.setup_env(prefix="quick-demo-"))
    store = Store(home)
    seen = {}
    try:
        launched = time.perf_counter()
        comparison_id = launcher.launch(preset(preset_name), store, label="quick demo benchmark")
        first = None
        while time.perf_counter() - launched < TIMEOUT_S:
            now = time.perf_counter() - launched
            runs = store.runs(comparison_id)
            first = runs[0]
            if first["phase"] not in ("queued", "", None):
                seen.setdefault("phase shown", now)
            if first["phase"] not in ("queued", "starting", "", None):
                seen.setdefault("data phase", now)
            if "first loss" not in seen and len(store.step_metrics(first["id"])["step"]):
                seen["first loss"] = now
            if all(r["status"] in ENDED for r in runs):
                seen["both finished"] = now
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"the Quick demo did not finish within {TIMEOUT_S} s")
        result = {"seconds": seen, "runs": {}}
        for r in store.runs(comparison_id):
            if r["status"] != "finished":
                raise RuntimeError(f"run {r['id']} ({r['precision']}) {r['status']}: {r['error']}")
            summary = r["summary"]
            result["runs"][r["precision"]] = {
                "test_accuracy": r["test_accuracy"],
                "test_reviews": summary["data"]["sizes"]["test"],
                "steps_per_sec": r["steps_per_sec"],
                "phase_seconds": summary.get("phase_seconds") or {},
            }
        log(
            "  "
            + ", ".join(f"{k} {v:.1f} s" for k, v in seen.items())
            + "; test accuracy "
            + ", ".join(f"{p} {r['test_accuracy']:.2%}" for p, r in result["runs"].items())
        )
        return result
    finally:
        pid = launcher.worker_pid(store)
        if pid:  # the worker this launch started, still going after an error or a timeout
            os.kill(pid, signal.SIGTERM)
        shutil.rmtree(home, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", default="Quick demo")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)

    # FP8DEMO_IMDB → the shared archive; every launch makes its own home.
    shutil.rmtree(_common.setup_env(prefix="quick-demo-"), ignore_errors=True)
    from fp8demo.config import preset

    config = preset(args.preset)
    print(f"Preset {args.preset!r}: {config.differences()}")
    print(f"CPU: {_common.cpu_model()}; load average before: {_common.load_average()}")
    results = [one_launch(args.preset) for _ in range(args.repeats)]
    print(f"load average after: {_common.load_average()}")

    rows = []
    for name, target in TARGETS.items():
        values = [r["seconds"].get(name) for r in results]
        value = _common.median(values)
        rows.append(
            (
                name,
                " / ".join(_common.fmt(v, ".1f") for v in values),
                _common.fmt(value, ".1f"),
                f"≤ {target:.0f}",
                _common.met(value is not None and value <= target),
            )
        )
    values = [r["seconds"].get("data phase") for r in results]
    rows.append(
        (
            "data phase",
            " / ".join(_common.fmt(v, ".1f") for v in values),
            _common.fmt(_common.median(values), ".1f"),
            "",
            "",
        )
    )
    for precision in config.precisions:
        accuracies = [r["runs"][precision]["test_accuracy"] for r in results]
        reviews = min(r["runs"][precision]["test_reviews"] for r in results)
        worst = min(accuracies)
        rows.append(
            (
                f"{precision} test accuracy ({reviews:,} reviews)",
                " / ".join(f"{a:.2%}" for a in accuracies),
                f"{_common.median(accuracies):.2%}",
                f"≥ {ACCURACY_TARGET:.0%}",
                _common.met(worst >= ACCURACY_TARGET and reviews >= TEST_REVIEWS_TARGET),
            )
        )
    print(
        "\n"
        + _common.table(
            ["from Launch", f"each of {args.repeats} (s)", "median", "target", "met"], rows
        )
    )
    phases = {}
    for r in results:
        for precision, run in r["runs"].items():
            for name, seconds in run["phase_seconds"].items():
                phases.setdefault(f"{precision}: {name}", []).append(seconds)
    print(
        "\nWhere the time went (median seconds per phase)\n"
        + _common.table(
            ["phase", "seconds"],
            [(name, f"{_common.median(v):.1f}") for name, v in phases.items()],
        )
    )
    _common.write_json(
        args.json,
        {
            "preset": args.preset,
            "config": config.to_dict(),
            "cpu": _common.cpu_model(),
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
