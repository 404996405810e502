"""How training speed and memory grow with the model: steps/s and peak RSS for bf16 and fp8
as sequence length, hidden size and batch size grow (one at a time, from the example's
seq 200 / hidden 32 / batch 32; heads 2, intermediate = hidden as in the example).

Each point runs in its own subprocess (so peak RSS, VmHWM, is that point's alone): build
the fp8demo model, compile, fit a few warm-up steps (compilation), then time a few steps
on random token ids (training steps only, per-step intervals). Prints a markdown table.

    .venv/bin/python benchmarks/scaling.py [--steps 20] [--quick]
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

BASE = dict(seq_len=200, hidden_dim=32, batch_size=32)
AXES = {"seq_len": (64, 128, 200, 400), "hidden_dim": (32, 128, 512), "batch_size": (16, 32, 128)}


def measure(precision, seq_len, hidden_dim, batch_size, steps, warmup, dropout=0.1) -> dict:
    """In the child process: steps/s and peak memory of one configuration."""
    import keras

    from fp8demo import model as model_lib
    from fp8demo.config import TrainConfig

    config = TrainConfig(
        seq_len=seq_len,
        hidden_dim=hidden_dim,
        intermediate_dim=hidden_dim,
        heads=2,
        batch_size=batch_size,
        dropout=dropout,
    ).validate()
    rss_before = _common.peak_rss_mb()
    model = model_lib.compile(model_lib.build(config, precision), config)
    x, y = _common.random_batch(config, batch_size * max(steps + 1, warmup))
    compile_s = _common.fit_seconds(model, x, y, batch_size, warmup)
    timer = _common.StepTimer()  # the first step's interval is left out: one more step
    _common.fit_seconds(model, x, y, batch_size, steps + 1, callbacks=[timer])
    rate = timer.steps_per_sec()
    return {
        "precision": precision,
        "seq_len": seq_len,
        "hidden_dim": hidden_dim,
        "batch_size": batch_size,
        "dropout": dropout,
        "params": model_lib.count_params(model),
        "steps_per_sec": rate,
        "ms_per_step": 1000 / rate if rate else None,
        "samples_per_sec": rate * batch_size if rate else None,
        "warmup_seconds": compile_s,
        "peak_rss_mb": _common.peak_rss_mb(),
        "rss_after_imports_mb": rss_before,
        "keras": keras.__version__,
    }


def points():
    seen = []
    for axis, values in AXES.items():
        for value in values:
            point = dict(BASE, **{axis: value})
            if point not in seen:
                seen.append(point)
    return seen


def run_point(point, precision, steps, warmup, dropout=0.1, timeout=900) -> dict:
    """One point measured in its own subprocess (its own peak RSS), or its error."""
    spec = dict(point, precision=precision, dropout=dropout)
    result, output = _common.child_result(
        __file__, "--child", json.dumps(spec), "--steps", steps, "--warmup", warmup, timeout=timeout
    )
    if result is None:
        return dict(point, precision=precision, error=output)
    return json.loads(result)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per point")
    parser.add_argument("--warmup", type=int, default=3, help="steps before timing (compiles)")
    parser.add_argument("--quick", action="store_true", help="one point only (a smoke test)")
    parser.add_argument("--base-only", action="store_true", help="only the example's point")
    parser.add_argument(
        "--dropout",
        type=float,
        default=0.1,
        help="dropout rate (0 shows what dropout's random numbers cost)",
    )
    parser.add_argument("--precisions", default="bf16,fp8")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)

    if args.child:
        import fp8demo.env  # noqa: F401

        spec = json.loads(args.child)
        print("RESULT " + json.dumps(measure(steps=args.steps, warmup=args.warmup, **spec)))
        return

    chosen = [dict(BASE)] if args.base_only else points()[:1] if args.quick else points()
    precisions = args.precisions.split(",")
    rows, results = [], []
    for point in chosen:
        for precision in precisions:
            r = run_point(point, precision, args.steps, args.warmup, args.dropout)
            results.append(r)
            if "error" in r:
                print(f"{point} {precision}: FAILED {r['error']}", flush=True)
                continue
            print(
                f"seq {r['seq_len']:4} hidden {r['hidden_dim']:4} batch {r['batch_size']:4} "
                f"{precision:5} {r['steps_per_sec']:7.2f} steps/s {r['ms_per_step']:7.1f} ms/step "
                f"peak RSS {r['peak_rss_mb']:6.0f} MiB",
                flush=True,
            )
    by = {
        (r["seq_len"], r["hidden_dim"], r["batch_size"], r["precision"]): r
        for r in results
        if "error" not in r
    }
    for point in chosen:
        key = (point["seq_len"], point["hidden_dim"], point["batch_size"])
        cells = []
        for precision in ("bf16", "fp8"):
            r = by.get(key + (precision,))
            cells += [
                _common.fmt(r and r["steps_per_sec"], ".1f"),
                _common.fmt(r and r["peak_rss_mb"], ".0f"),
            ]
        b, f = by.get(key + ("bf16",)), by.get(key + ("fp8",))
        ratio = f["steps_per_sec"] / b["steps_per_sec"] if b and f else None
        params = (b or f or {}).get("params")
        rows.append((*key, _common.fmt(params, ",d"), *cells, _common.fmt(ratio, ".2f")))
    print(
        f"\n{os.cpu_count()} CPUs, dropout {args.dropout}, {args.steps} timed steps per point "
        f"after {args.warmup} warm-up steps\n"
    )
    print(
        _common.table(
            [
                "seq len",
                "hidden",
                "batch",
                "params",
                "bf16 steps/s",
                "bf16 peak RSS MiB",
                "fp8 steps/s",
                "fp8 peak RSS MiB",
                "fp8/bf16 speed",
            ],
            rows,
        )
    )
    _common.write_json(args.json, results)


if __name__ == "__main__":
    main()
