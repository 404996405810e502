"""What training bf16 and fp8 at the same time costs on this machine, against one after the other.

The same bf16 + fp8 comparison is launched as the Train page launches it (launcher.launch), with
side_by_side "off" (one worker with every core, the precisions one after the other) and "on"
(two workers, each pinned to half of the cores, both precisions at once), alternating the
order from repeat to repeat. One store home serves every launch, after an untimed warm-up
launch has filled its caches (reviews, vocabulary, tokens, XLA executables), and each launch
waits for the previous one's workers to leave, so every launch starts fresh processes.

Measured per launch:
  total           launch → the last run ended (worker start, JAX import, data, compile,
                  training, evaluation of both precisions)
  steps/s         each run's training speed after its first (compiling) step, validation
                  excluded (the run's steps_per_sec, as Results shows it)
Prints the medians of each mode, the CPU model and the load average before and after (other
processes slow every timing).

    .venv/bin/python benchmarks/side_by_side.py --repeats 3
    .venv/bin/python benchmarks/side_by_side.py --repeats 1 --subset 256 --vocab-size 800
"""

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

MODES = ("off", "on")
TIMEOUT_S = 1800


def wait_for_no_workers(store, timeout=120):
    """Every worker of the store has left (each launch starts its own, pinned as it asks)."""
    from fp8demo import launcher

    deadline = time.time() + timeout
    while launcher.worker_pids(store):
        if time.time() > deadline:
            raise RuntimeError(
                f"workers still alive after {timeout} s: {launcher.worker_pids(store)}"
            )
        time.sleep(0.5)


def one_launch(store, config, mode: str, log=print) -> dict:
    """Launch the comparison with side_by_side=`mode` and time it by polling the store."""
    from fp8demo import launcher
    from fp8demo.store import ENDED

    wait_for_no_workers(store)
    launched = time.time()
    comparison_id = launcher.launch(dataclasses.replace(config, side_by_side=mode), store, mode)
    while True:
        runs = store.runs(comparison_id)
        if all(r["status"] in ENDED for r in runs):
            break
        if time.time() - launched > TIMEOUT_S:
            store.cancel_comparison(comparison_id)
            raise RuntimeError(f"side_by_side={mode}: not finished after {TIMEOUT_S} s")
        time.sleep(0.2)
    failed = [f"{r['precision']}: {r['error']}" for r in runs if r["status"] != "finished"]
    if failed:
        raise RuntimeError(f"side_by_side={mode} failed: {'; '.join(failed)}")
    result = {
        "mode": mode,
        "total": max(r["finished_at"] for r in runs) - launched,
        "overlap": min(r["finished_at"] for r in runs) - max(r["started_at"] for r in runs),
        "slots": sorted({r["slot"] for r in runs}),
    }
    for r in runs:
        result[f"{r['precision']} steps/s"] = r["steps_per_sec"]
        result[f"{r['precision']} fit s"] = r["fit_seconds"]
    log(
        f"  side_by_side={mode}: total {result['total']:.1f} s, overlap "
        f"{max(0.0, result['overlap']):.1f} s, "
        + ", ".join(
            f"{r['precision']} {_common.fmt(r['steps_per_sec'], '.1f')} steps/s" for r in runs
        )
    )
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="launches per mode")
    parser.add_argument("--preset", default="Quick demo", help="the workload (a Train preset)")
    parser.add_argument("--subset", type=int, help="reviews per split instead of the preset's")
    parser.add_argument("--vocab-size", type=int, help="vocabulary size instead of the preset's")
    parser.add_argument("--epochs", type=int, help="epochs instead of the preset's")
    parser.add_argument("--home", help="store home (default: a fresh temp folder)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    home = _common.setup_env(args.home, prefix="side-by-side-")
    from fp8demo.config import preset
    from fp8demo.store import Store

    overrides = {"subset": args.subset, "vocab_size": args.vocab_size, "epochs": args.epochs}
    config = preset(args.preset, precisions=("bf16", "fp8"), ptq=False)
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    store = Store(home)
    print(f"CPU: {_common.cpu_model()}")
    print(f"load average before: {_common.load_average()}")
    print(f"workload: {args.preset} {config.differences(preset(args.preset))}, home {home}")
    print("warm-up launch (untimed: fills the caches)")
    one_launch(store, config, "off")
    results = []
    for k in range(args.repeats):
        order = MODES if k % 2 == 0 else MODES[::-1]  # alternate: drift hits both modes
        print(f"repeat {k + 1}/{args.repeats}")
        results += [one_launch(store, config, mode) for mode in order]
    wait_for_no_workers(store)
    print(f"load average after: {_common.load_average()}")

    columns = ("total", "bf16 steps/s", "fp8 steps/s", "bf16 fit s", "fp8 fit s")
    rows = []
    for mode in MODES:
        mine = [r for r in results if r["mode"] == mode]
        rows.append(
            [f"side_by_side={mode}"]
            + [_common.fmt(_common.median([r[c] for r in mine]), ".1f") for c in columns]
        )
    print(f"\nmedians of {args.repeats} launch(es) per mode:")
    print(_common.table(["mode", "total s", *columns[1:]], rows))
    _common.write_json(args.json, {"cpu": _common.cpu_model(), "runs": results})


if __name__ == "__main__":
    main()
