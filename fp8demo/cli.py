"""python -m fp8demo: the dashboard's engine and store, from a terminal.

    train    queue a comparison (defaults: the Keras example), show progress, print results
    runs     every run in the store
    show     one run: config, status, metrics, float8 layers and their final scales
    predict  positive probability of texts under a finished run's model
    worker   the training process (started for you by train and the dashboard)
"""

import argparse
import json
import sys
import time

from fp8demo import compiled
from fp8demo.config import ConfigError, PRESETS, TrainConfig, preset
from fp8demo.store import ENDED, Store, StoreError

# CLI flag → TrainConfig field.
TRAIN_FLAGS = {
    "data": "data", "subset": "subset", "epochs": "epochs", "batch_size": "batch_size",
    "vocab_size": "vocab_size", "seq_len": "seq_len", "hidden_dim": "hidden_dim",
    "heads": "heads", "intermediate_dim": "intermediate_dim", "dropout": "dropout",
    "dropout_masks": "dropout_masks", "lr": "lr",
    "seed": "seed", "precision": "precisions", "vocab_method": "vocab_method",
    "quantize_head": "quantize_head", "ptq": "ptq", "restore_best": "restore_best",
    "early_stopping": "early_stopping", "amax_history_length": "amax_history_length",
    "data_parallel": "data_parallel", "probe_every": "probe_every",
}


class CliError(Exception):
    pass


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m fp8demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a comparison (default: the Keras example)")
    train.add_argument("--preset", choices=list(PRESETS), help="start from a preset")
    defaults = TrainConfig()
    for flag, field in TRAIN_FLAGS.items():
        default = getattr(defaults, field)
        shown = ",".join(default) if isinstance(default, tuple) else default
        train.add_argument("--" + flag.replace("_", "-"), dest=flag, default=None, metavar="X",
                           help=f"(default {shown!r})")
    train.add_argument("--repeats", default="1", metavar="N",
                       help="train the comparison with N seeds (seed, seed+1, ...)")
    train.add_argument("--no-wait", action="store_true", help="queue and return at once")
    train.add_argument("--json", action="store_true", help="print the final results as JSON")

    runs = commands.add_parser("runs", help="list every run")
    runs.add_argument("--json", action="store_true")

    show = commands.add_parser("show", help="show one run")
    show.add_argument("run")
    show.add_argument("--json", action="store_true")

    predict = commands.add_parser("predict", help="predict with a finished run's model")
    predict.add_argument("run")
    predict.add_argument("texts", nargs="+")
    predict.add_argument("--post-training", choices=["int8", "int4"],
                         help="quantize a bf16 run's model after training first")
    predict.add_argument("--json", action="store_true")

    health = commands.add_parser("health", help="fp8 numerics health of an fp8 run")
    health.add_argument("run")
    health.add_argument("--replay", action="store_true",
                        help="also replay the run's amaxes under other amax history lengths")
    health.add_argument("--json", action="store_true")

    cancel = commands.add_parser("cancel", help="cancel a queued or running run")
    cancel.add_argument("run")

    commands.add_parser("worker", help="run the queue (started automatically)")
    return parser.parse_args(argv)


# -- train ---------------------------------------------------------------------------------


def config_from_args(args) -> TrainConfig:
    given = {TRAIN_FLAGS[f]: getattr(args, f) for f in TRAIN_FLAGS if getattr(args, f) is not None}
    typed = TrainConfig.from_strings(given)
    base = preset(args.preset) if args.preset else TrainConfig()
    import dataclasses

    chosen = {k: getattr(typed, k) for k in given}
    return dataclasses.replace(base, **chosen).validate()


def progress_line(run) -> str:
    total = run["total_steps"] or 0
    done = run["step"] or 0
    width = 24
    filled = int(width * done / total) if total else 0
    bar = "█" * filled + "·" * (width - filled)
    parts = [f"run {run['id']:>3} {run['precision']:<7} [{bar}] {done}/{total or '?'}",
             f"epoch {run['epoch']}/{run['config'].epochs}", run["phase"]]
    if run["steps_per_sec"]:
        parts.append(f"{run['steps_per_sec']:.1f} steps/s")
    if run["eta"] is not None and run["status"] == "running":
        parts.append(f"ETA {run['eta']:.0f}s")
    return "  ".join(parts)


def results_table(runs) -> str:
    header = f"{'precision':<10}{'status':<12}{'test acc':>10}{'test loss':>11}{'fit s':>9}{'steps/s':>9}"
    lines = [header, "-" * len(header)]
    for r in runs:
        acc = f"{r['test_accuracy']:.4f}" if r["test_accuracy"] is not None else "-"
        loss = f"{r['test_loss']:.4f}" if r["test_loss"] is not None else "-"
        fit = f"{r['fit_seconds']:.1f}" if r["fit_seconds"] is not None else "-"
        rate = f"{r['steps_per_sec']:.1f}" if r["steps_per_sec"] is not None else "-"
        lines.append(f"{r['precision']:<10}{r['status']:<12}{acc:>10}{loss:>11}{fit:>9}{rate:>9}")
        if r["error"]:
            lines.append(f"    {r['error']}")
        for mode, result in (r["summary"].get("ptq") or {}).items():
            lines.append(f"{mode + ' PTQ':<10}{'(of bf16)':<12}{result['test_accuracy']:>10.4f}"
                         f"{result['test_loss']:>11.4f}")
    return "\n".join(lines)


def cmd_train(args, store: Store) -> int:
    from fp8demo import worker

    config = config_from_args(args)
    try:
        repeats = int(args.repeats)
    except ValueError:
        raise CliError(f"--repeats must be a whole number, got {args.repeats!r}.") from None
    comparison_ids = worker.launch_repeats(config, repeats, store)
    for cid in comparison_ids:
        run_ids = [r["id"] for r in store.runs(cid)]
        print(f"comparison {cid}: runs {', '.join(map(str, run_ids))} queued "
              f"(store {store.home})", flush=True)
    if args.no_wait:
        return 0

    def all_runs():
        return [r for cid in comparison_ids for r in store.runs(cid)]

    interactive = sys.stdout.isatty()
    last_lines, last_print = {}, 0.0
    try:
        while True:
            worker.supervise(store)
            runs = all_runs()
            for run in runs:
                key = (run["phase"], run["status"])
                # On a terminal print running runs every second; in a log, phase changes
                # and every 10 s.
                due = interactive or time.time() - last_print > 10
                if last_lines.get(run["id"]) != key or (due and run["status"] == "running"):
                    print(progress_line(run), flush=True)
                    last_lines[run["id"]] = key
            if time.time() - last_print > 10:
                last_print = time.time()
            if all(r["status"] in ENDED for r in runs):
                break
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("\ncancelling …", flush=True)
        for cid in comparison_ids:
            store.cancel_comparison(cid)
        return 130
    runs = all_runs()
    comparisons = [store.comparison(cid) for cid in comparison_ids]
    if args.json:
        result = {"runs": [run_json(r) for r in runs]}
        if len(comparisons) > 1:
            result["repeats"] = worker.repeat_statistics(comparisons)
        print(json.dumps(result if len(comparisons) > 1 else result["runs"], indent=2))
    else:
        for comparison in comparisons:
            print(f"\ncomparison {comparison['id']} (seed {comparison['config'].seed})")
            print(results_table(comparison["runs"]))
            by_precision = {r["precision"]: r for r in comparison["runs"]}
            if {"bf16", "fp8"} <= set(by_precision) and all(
                    by_precision[p]["test_accuracy"] is not None for p in ("bf16", "fp8")):
                diff = by_precision["fp8"]["test_accuracy"] - by_precision["bf16"]["test_accuracy"]
                print(f"fp8 − bf16 test accuracy: {diff * 100:+.2f} points")
        if len(comparisons) > 1:
            print(f"\nover {len(comparisons)} seeds (mean ± std of test accuracy, points):")
            for name, stat in worker.repeat_statistics(comparisons).items():
                print(f"  {name:<12} {stat['mean'] * 100:7.2f} ± {stat['std'] * 100:.2f}  (n={stat['n']})")
    return 0 if all(r["status"] == "finished" for r in runs) else 1


# -- runs, show, predict ----------------------------------------------------------------


RUN_FIELDS = ("id", "comparison_id", "precision", "status", "phase", "worker_pid", "epoch",
              "step", "total_steps", "test_accuracy", "test_loss", "fit_seconds",
              "steps_per_sec", "samples_per_sec", "params", "device", "error")


def run_json(run) -> dict:
    return {k: run[k] for k in RUN_FIELDS}


def cmd_runs(args, store: Store) -> int:
    from fp8demo import worker

    worker.supervise(store)
    runs = store.runs()
    if args.json:
        print(json.dumps([run_json(r) for r in runs], indent=2))
        return 0
    print(f"{'run':>4} {'cmp':>4} {'precision':<9} {'status':<12} {'pid':>7} {'epoch':>5} "
          f"{'step':>6} {'test acc':>9}")
    for r in runs:
        acc = f"{r['test_accuracy']:.4f}" if r["test_accuracy"] is not None else "-"
        print(f"{r['id']:>4} {r['comparison_id']:>4} {r['precision']:<9} {r['status']:<12} "
              f"{r['worker_pid'] or '-':>7} {r['epoch']:>5} {r['step']:>6} {acc:>9}")
    if not runs:
        print("(no runs yet: python -m fp8demo train)")
    return 0


def cmd_show(args, store: Store) -> int:
    run = store.run(args.run)
    summary = run["summary"]
    layers = summary.get("fp8_layers", [])
    after = summary.get("fp8_after") or summary.get("fp8_before") or {}
    detail = {
        **run_json(run),
        "config": run["config"].to_dict(),
        "epochs": store.epoch_metrics(run["id"]),
        "phase_seconds": summary.get("phase_seconds") or {},
        "compiled_step": summary.get("compiled_step"),
        "float8_layers": [{**layer, "scales": {role: v["scale"] for role, v in
                                               after.get(layer["name"], {}).items()}}
                          for layer in layers],
    }
    if args.json:
        print(json.dumps(detail, indent=2))
        return 0
    for key in RUN_FIELDS:
        if detail[key] is not None:
            print(f"{key:>16}: {detail[key]}")
    print(f"{'config':>16}: {json.dumps(detail['config'])}")
    if detail["phase_seconds"]:
        print(f"{'seconds':>16}: " + ", ".join(f"{name} {seconds:.1f}" for name, seconds
                                               in detail["phase_seconds"].items()))
    for e in detail["epochs"]:
        print(f"{'epoch ' + str(e['epoch'] + 1):>16}: loss {e['loss']:.4f} acc {e['accuracy']:.4f} "
              f"val_loss {e['val_loss'] or float('nan'):.4f} val_acc {e['val_accuracy'] or float('nan'):.4f}")
    if detail["compiled_step"]:
        print(f"{'compiled step':>16}: {compiled.verdict(detail['compiled_step'])}")
    if layers:
        print(f"{'float8 layers':>16}: {len(layers)}")
        for layer in detail["float8_layers"]:
            scales = "  ".join(f"{role}_scale={v:.3g}" for role, v in layer["scales"].items())
            print(f"  {layer['name']:<44} {layer['policy']:<28} {scales}")
    return 0


def cmd_predict(args, store: Store) -> int:
    from fp8demo.predict import load_run

    loaded = load_run(store, args.run, args.post_training)
    probabilities = loaded.predict(args.texts)
    rows = [{"text": t, "positive_probability": float(p)} for t, p in zip(args.texts, probabilities)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            label = "positive" if row["positive_probability"] >= 0.5 else "negative"
            print(f"{row['positive_probability']:.4f}  {label:<8}  {row['text'][:70]}")
    return 0


def cmd_health(args, store: Store) -> int:
    from fp8demo import fp8

    run = store.run(args.run)
    layers = [layer["name"] for layer in run["summary"].get("fp8_layers", [])]
    if not layers:
        raise CliError(f"Run {run['id']} ({run['precision']}) has no float8 layers.")
    _, amax = store.fp8_amax(run["id"])
    probe_steps, probe_stats = store.fp8_probe(run["id"])
    rows = fp8.health_summary(amax, layers, run["config"].amax_history_length,
                              probe_steps, probe_stats)
    replay = fp8.history_length_effect(amax) if args.replay else None
    if args.json:
        print(json.dumps({"tensors": rows, "replay": replay} if args.replay else rows, indent=2))
        return 0

    def number(value, spec):
        return "-" if value is None else format(value, spec)

    print(f"{'layer':<40}{'role':<13}{'format':<7}{'overflows':>10}{'min hr':>8}"
          f"{'median hr':>10}{'sat %':>8}{'under %':>9}  risk")
    for r in rows:
        print(f"{r['layer']:<40}{r['role']:<13}{r['format']:<7}{r['overflows']:>10}"
              f"{number(r['min headroom'], '.2f'):>8}{number(r['median headroom'], '.2f'):>10}"
              f"{number(r.get('saturation %'), '.3g'):>8}{number(r.get('underflow %'), '.3g'):>9}"
              f"  {'AT RISK' if r['at risk'] else ''}")
    if len(probe_steps):
        print(f"\nProbe: {len(probe_steps)} measurements, latest at step {int(probe_steps[-1])}.")
    if replay:
        print(f"\nReplayed under other amax history lengths (this run: "
              f"{run['config'].amax_history_length}); all layers:")
        print(f"{'history':>8}  {'role':<13}{'overflows':>10}{'overflow %':>11}{'median hr':>10}"
              f"{'max hr':>8}")
        for r in replay:
            print(f"{r['history length']:>8}  {r['role']:<13}{r['overflows']:>10}"
                  f"{r['overflow %']:>11.3f}{number(r['median headroom'], '.2f'):>10}"
                  f"{number(r['max headroom'], '.2f'):>8}")
    print()
    for name, text in fp8.HEALTH_HELP.items():
        print(f"{name}: {text}.")
    return 0


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from fp8demo.data import DataError
    from fp8demo.predict import PredictError

    try:
        store = Store()
        if args.command == "worker":
            from fp8demo import worker

            return worker.main(store)
        if args.command == "cancel":
            status = store.request_cancel(args.run)
            print(f"run {args.run}: cancel requested (was {status})")
            return 0
        return {"train": cmd_train, "runs": cmd_runs, "show": cmd_show, "predict": cmd_predict,
                "health": cmd_health}[args.command](args, store)
    except (ConfigError, StoreError, DataError, PredictError, CliError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
