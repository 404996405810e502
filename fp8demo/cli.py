"""python -m fp8demo: the dashboard's engine and store, from a terminal.

train    queue a comparison (defaults: the Keras example), show progress, print results
runs     every run in the store
show     one run: config, status, metrics, float8 layers and their final scales
predict  positive probability of texts under a finished run's model
export   a run's per-step metrics as CSV, or its records as TensorBoard event files
sweep    search settings with an Optuna sweep whose every trial is one comparison
sweeps   list sweeps; show, cancel or resume one
worker   the training process (started for you by train and the dashboard)
"""

import argparse
import json
import os
import sys
import time

from fp8demo import compiled, report
from fp8demo.config import PRESETS, ConfigError, TrainConfig, cli_flags, from_flags, preset
from fp8demo.store import ENDED, Store, StoreError


class CliError(Exception):
    pass


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m fp8demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a comparison (default: the Keras example)")
    train.add_argument("--preset", choices=list(PRESETS), help="start from a preset")
    for flag, options in cli_flags():  # one per TrainConfig field
        train.add_argument(flag, **options)
    train.add_argument(
        "--repeats",
        default="1",
        metavar="N",
        help="train the comparison with N seeds (seed, seed+1, ...)",
    )
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
    predict.add_argument(
        "--post-training",
        choices=["int8", "int4"],
        help="quantize a bf16 run's model after training first",
    )
    predict.add_argument("--json", action="store_true")

    health = commands.add_parser("health", help="fp8 numerics health of an fp8 run")
    health.add_argument("run")
    health.add_argument(
        "--replay",
        action="store_true",
        help="also replay the run's amaxes under other amax history lengths",
    )
    health.add_argument(
        "--recipes",
        action="store_true",
        help="instead: underflow %%, saturation %% and SNR (dB) of every float8 tensor on the "
        "probe batch under every scaling recipe, at the latest probe; with --json, rows of "
        "layer, role, recipe, step, underflow_pct, saturation_pct, snr_db, where snr_db is "
        "null when quantization was exact (SNR +inf)",
    )
    health.add_argument(
        "--all-probes", action="store_true", help="with --recipes: every probe, not the latest"
    )
    health.add_argument("--json", action="store_true")

    cancel = commands.add_parser("cancel", help="cancel a queued or running run")
    cancel.add_argument("run")

    export = commands.add_parser("export", help="a run's metrics as CSV or TensorBoard events")
    export.add_argument("run")
    export.add_argument(
        "--comparison",
        action="store_true",
        help="every run of the run's comparison (the Results page's export)",
    )
    export.add_argument(
        "--csv", metavar="FILE", help="per-step metrics as CSV to FILE (default: standard output)"
    )
    export.add_argument(
        "--tensorboard", metavar="DIR", help="TensorBoard event files into DIR/run<id>-<precision>"
    )

    add_sweep_commands(commands)
    pool = commands.add_parser("worker", help="run the queue (started automatically)")
    pool.add_argument(
        "--slot",
        type=_whole_number(0),
        metavar="K",
        help="be the pool's worker for slot K (its device: GPU K, or on a CPU its share of "
        "the cores); without it, be slot 0 and start the pool's other workers",
    )
    pool.add_argument(
        "--workers",
        type=_whole_number(1),
        metavar="N",
        help="slots in the pool, N runs at once (default: one per GPU, or 1 on a CPU)",
    )
    pool.add_argument(
        "--stay",
        action="store_true",
        help="keep waiting when nothing is queued (a GPU host's workers on a shared store: "
        "they train the runs that any host queues); stop them with Ctrl+C or kill",
    )
    for command in commands.choices.values():
        command.add_argument(
            "--store",
            metavar="URL",
            help="the run store: sqlite:///FILE or postgresql://USER@HOST/DB (default: "
            "FP8DEMO_STORE, else runs.sqlite in the fp8demo home)",
        )
    return parser.parse_args(argv)


def _whole_number(low: int, high: int = 1024):
    """An argparse type: a whole number in [low, high] (argparse shows the message)."""

    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            number = low - 1
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {low} to {high}, got {text!r}"
            )
        return number

    return parse


# -- train ---------------------------------------------------------------------------------


def config_from_args(args) -> TrainConfig:
    """The preset (default: the Keras example) with the settings given as flags."""
    base = preset(args.preset) if args.preset else TrainConfig()
    return from_flags(args, base).validate()


def progress_line(run) -> str:
    total = run["total_steps"] or 0
    done = run["step"] or 0
    width = 24
    filled = int(width * done / total) if total else 0
    bar = "█" * filled + "·" * (width - filled)
    parts = [
        f"run {run['id']:>3} {run['precision']:<12} [{bar}] {done}/{total or '?'}",
        f"epoch {run['epoch']}/{run['config'].epochs}",
        run["phase"],
    ]
    if run["steps_per_sec"]:
        parts.append(f"{run['steps_per_sec']:.1f} steps/s")
    if run["eta"] is not None and run["status"] == "running":
        parts.append(f"ETA {run['eta']:.0f}s")
    return "  ".join(parts)


def results_table(runs) -> str:
    from fp8demo import training

    header = (
        f"{'precision':<13}{'status':<12}{'test acc':>10}{'test loss':>11}{'fit s':>9}"
        f"{'steps/s':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in runs:
        acc = f"{r['test_accuracy']:.4f}" if r["test_accuracy"] is not None else "-"
        loss = f"{r['test_loss']:.4f}" if r["test_loss"] is not None else "-"
        fit = f"{r['fit_seconds']:.1f}" if r["fit_seconds"] is not None else "-"
        rate = f"{r['steps_per_sec']:.1f}" if r["steps_per_sec"] is not None else "-"
        lines.append(f"{r['precision']:<13}{r['status']:<12}{acc:>10}{loss:>11}{fit:>9}{rate:>9}")
        if r["error"]:
            lines.append(f"    {r['error']}")
        for mode, result in (r["summary"].get("ptq") or {}).items():
            lines.append(
                f"{mode + ' PTQ':<10}{'(of bf16)':<12}{result['test_accuracy']:>10.4f}"
                f"{result['test_loss']:>11.4f}"
            )
        if training.post_training_pending(r):
            lines.append(f"    int8/int4 PTQ: python -m fp8demo show {r['id']} evaluates them")
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
        print(
            f"comparison {cid}: runs {', '.join(map(str, run_ids))} queued (store {store.home})",
            flush=True,
        )
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
            result["repeats"] = report.repeat_statistics(comparisons)
        print(json.dumps(result if len(comparisons) > 1 else result["runs"], indent=2))
    else:
        for comparison in comparisons:
            print(f"\ncomparison {comparison['id']} (seed {comparison['config'].seed})")
            print(results_table(comparison["runs"]))
            for precision, diff in report.paired_differences(comparison["runs"]).items():
                print(
                    f"{report.difference_name(precision)} test accuracy: {diff * 100:+.2f} points"
                )
        if len(comparisons) > 1:
            print(f"\nover {len(comparisons)} seeds (mean ± std of test accuracy, points):")
            for name, stat in report.repeat_statistics(comparisons).items():
                print(
                    f"  {name:<12} {stat['mean'] * 100:7.2f} ± {stat['std'] * 100:.2f}"
                    f"  (n={stat['n']})"
                )
    return 0 if all(r["status"] == "finished" for r in runs) else 1


# -- runs, show, predict ----------------------------------------------------------------


RUN_FIELDS = (
    "id",
    "comparison_id",
    "precision",
    "status",
    "phase",
    "worker_pid",
    "host",
    "slot",
    "epoch",
    "step",
    "total_steps",
    "test_accuracy",
    "test_loss",
    "fit_seconds",
    "steps_per_sec",
    "samples_per_sec",
    "params",
    "device",
    "error",
)


def run_json(run) -> dict:
    return {k: run[k] for k in RUN_FIELDS}


def cmd_runs(args, store: Store) -> int:
    from fp8demo import worker

    worker.supervise(store)
    runs = store.runs()
    if args.json:
        print(json.dumps([run_json(r) for r in runs], indent=2))
        return 0
    # A shared store: which host trained each run (a pid alone names no process there).
    hosts = len({r["host"] for r in runs if r["host"]}) > 1
    print(
        f"{'run':>4} {'cmp':>4} {'precision':<12} {'status':<12} {'pid':>7} "
        + (f"{'host':<16} " if hosts else "")
        + f"{'epoch':>5} {'step':>6} {'test acc':>9}"
    )
    for r in runs:
        acc = f"{r['test_accuracy']:.4f}" if r["test_accuracy"] is not None else "-"
        print(
            f"{r['id']:>4} {r['comparison_id']:>4} {r['precision']:<12} {r['status']:<12} "
            f"{r['worker_pid'] or '-':>7} "
            + (f"{(r['host'] or '-')[:16]:<16} " if hosts else "")
            + f"{r['epoch']:>5} {r['step']:>6} {acc:>9}"
        )
    if not runs:
        print("(no runs yet: python -m fp8demo train)")
    return 0


def cmd_show(args, store: Store) -> int:
    from fp8demo import training

    run = store.run(args.run)
    if training.post_training_pending(run):  # evaluated on first request, then kept
        print(f"Evaluating run {run['id']}'s post-training quantization …", file=sys.stderr)
        try:
            training.post_training_results(store, run["id"])
            run = store.run(run["id"])
        except Exception as e:  # the rest of the run is still worth showing
            print(f"Post-training quantization not evaluated: {e}", file=sys.stderr)
    detail = run_record(store, run)
    if args.json:
        print(json.dumps(detail, indent=2))
        return 0
    print_run_record(detail)
    return 0


def run_record(store: Store, run: dict) -> dict:
    """Everything Results shows for one run, as JSON-ready values."""
    summary = run["summary"]
    layers = summary.get("fp8_layers", [])
    after = summary.get("fp8_after") or summary.get("fp8_before") or {}
    return {
        **run_json(run),
        "config": run["config"].to_dict(),
        "epochs": store.epoch_metrics(run["id"]),
        "phase_seconds": summary.get("phase_seconds") or {},
        "compiled_step": summary.get("compiled_step"),
        "compiled_step_verdict": (
            compiled.verdict(summary["compiled_step"]) if summary.get("compiled_step") else None
        ),
        "best_epoch": best_epoch_record(summary),
        "post_training": [
            {
                "mode": mode,
                "test_accuracy": r["test_accuracy"],
                "test_loss": r["test_loss"],
                "weights_bytes": r.get("weights_bytes"),
            }
            for mode, r in (summary.get("ptq") or {}).items()
        ],
        "fp8_health": health_record(store, run) if layers else None,
        "float8_layers": [
            {
                **layer,
                "scales": {role: v["scale"] for role, v in after.get(layer["name"], {}).items()},
            }
            for layer in layers
        ],
    }


def print_run_record(detail: dict):
    """The record of `run_record` as aligned text."""
    for key in RUN_FIELDS:
        if detail[key] is not None:
            print(f"{key:>16}: {detail[key]}")
    print(f"{'config':>16}: {json.dumps(detail['config'])}")
    if detail["phase_seconds"]:
        print(
            f"{'seconds':>16}: "
            + ", ".join(
                f"{name} {seconds:.1f}" for name, seconds in detail["phase_seconds"].items()
            )
        )
    for e in detail["epochs"]:
        print(
            f"{'epoch ' + str(e['epoch'] + 1):>16}: loss {e['loss']:.4f} acc {e['accuracy']:.4f} "
            f"val_loss {e['val_loss'] or float('nan'):.4f} "
            f"val_acc {e['val_accuracy'] or float('nan'):.4f}"
        )
    if detail["compiled_step"]:
        print(f"{'compiled step':>16}: {detail['compiled_step_verdict']}")
    if best := detail["best_epoch"]:
        print(
            f"{'best epoch':>16}: {best['epoch'] + 1} (validation accuracy "
            f"{best['val_accuracy']:.4f}, test accuracy {best['test_accuracy']:.4f}"
            f"{', restored' if best['restored'] else ''})"
        )
    for r in detail["post_training"]:
        print(
            f"{r['mode'] + ' PTQ':>16}: test accuracy {r['test_accuracy']:.4f}, "
            f"loss {r['test_loss']:.4f}, weights {r['weights_bytes'] or 0:,} bytes"
        )
    if health := detail["fp8_health"]:
        at_risk = ", ".join(f"{t['layer']} {t['role']}" for t in health["tensors_at_risk"])
        print(
            f"{'fp8 health':>16}: {health['overflows']} overflows; at risk: {at_risk or 'none'}"
            " (python -m fp8demo health RUN for the table)"
        )
        for sentence in health["dead_summary"]:
            print(f"{'':>16}  {sentence}")
    if detail["float8_layers"]:
        print(f"{'float8 layers':>16}: {len(detail['float8_layers'])}")
        for layer in detail["float8_layers"]:
            scales = "  ".join(f"{role}_scale={v:.3g}" for role, v in layer["scales"].items())
            print(f"  {layer['name']:<44} {layer['policy']:<28} {scales}")


def best_epoch_record(summary: dict) -> dict | None:
    """The best-validation epoch and the test accuracy of its weights (Results' "Best epoch")."""
    best = summary.get("best")
    if not best:
        return None
    return {
        "epoch": best["epoch"],
        "val_accuracy": best["val_accuracy"],
        "test_accuracy": best.get("test_accuracy"),
        "test_loss": best.get("test_loss"),
        "restored": bool(summary.get("restored_best")),
    }


def health_record(store: Store, run: dict) -> dict:
    """FP8 health in brief: overflows per tensor, the tensors at risk, the dead tensors (in
    words too), the latest probe."""
    from fp8demo import fp8

    layers = [layer["name"] for layer in run["summary"].get("fp8_layers", [])]
    amax_steps, amax = store.fp8_amax(run["id"])
    probe_steps, probe_stats = store.fp8_probe(run["id"])
    rows = fp8.health_summary(
        amax,
        layers,
        run["config"].amax_history_length,
        probe_steps,
        probe_stats,
        amax_steps=amax_steps,
    )
    tensors = [
        {
            "layer": r["layer"],
            "role": r["role"],
            "overflows": r["overflows"],
            "saturation_pct": r.get("saturation %"),
            "underflow_pct": r.get("underflow %"),
            "at_risk": r["at risk"],
            "dead_since": r["dead since"],
        }
        for r in rows
    ]
    return {
        "overflows": sum(t["overflows"] for t in tensors),
        "tensors_at_risk": [
            {"layer": t["layer"], "role": t["role"]} for t in tensors if t["at_risk"]
        ],
        "dead_tensors": [
            {"layer": t["layer"], "role": t["role"], "since": t["dead_since"]}
            for t in tensors
            if t["dead_since"] is not None
        ],
        "dead_summary": fp8.dead_summary(rows),
        "latest_probe_step": int(probe_steps[-1]) if len(probe_steps) else None,
        "tensors": tensors,
    }


def cmd_predict(args, store: Store) -> int:
    from fp8demo.predict import load_run, sentiment

    loaded = load_run(store, args.run, args.post_training)
    probabilities = loaded.predict(args.texts)
    rows = [
        {"text": t, "positive_probability": float(p)} for t, p in zip(args.texts, probabilities)
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            label = sentiment(row["positive_probability"])
            print(f"{row['positive_probability']:.4f}  {label:<8}  {row['text'][:70]}")
    return 0


def cmd_export(args, store: Store) -> int:
    """CSV (every step, validation metrics on each epoch's last step) and/or TensorBoard."""
    run = store.run(args.run)
    runs = store.comparison(run["comparison_id"])["runs"] if args.comparison else [run]
    if args.tensorboard is not None:
        from fp8demo.tensorboard_export import export_run

        for r in runs:
            try:
                target = export_run(store, r["id"], args.tensorboard)
            except OSError as e:
                raise CliError(f"Cannot write {args.tensorboard}: {e.strerror or e}.") from None
            print(f"run {r['id']} ({r['precision']}): TensorBoard events written to {target}")
        print(f"View them with: tensorboard --logdir {args.tensorboard}")
        if args.csv is None:
            return 0
    text = report.metrics_csv(store, runs)
    if args.csv is None:
        sys.stdout.write(text)
        return 0
    try:
        with open(args.csv, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    except OSError as e:
        raise CliError(f"Cannot write {args.csv}: {e.strerror or e}.") from None
    rows = text.count("\n") - 1  # one line per step, after the header
    print(f"{rows} rows ({len(runs)} runs) written to {args.csv}")
    return 0


def cmd_health(args, store: Store) -> int:
    from fp8demo import fp8

    run = store.run(args.run)
    layers = [layer["name"] for layer in run["summary"].get("fp8_layers", [])]
    if not layers:
        raise CliError(f"Run {run['id']} ({run['precision']}) has no float8 layers.")
    if args.recipes:
        return health_recipes(args, store, run, layers)
    if args.all_probes:
        raise CliError("--all-probes goes with --recipes.")
    amax_steps, amax = store.fp8_amax(run["id"])
    probe_steps, probe_stats = store.fp8_probe(run["id"])
    rows = fp8.health_summary(
        amax,
        layers,
        run["config"].amax_history_length,
        probe_steps,
        probe_stats,
        amax_steps=amax_steps,
    )
    replay = fp8.history_length_effect(amax) if args.replay else None
    if args.json:
        print(json.dumps({"tensors": rows, "replay": replay} if args.replay else rows, indent=2))
        return 0

    def number(value, spec):
        return "-" if value is None else format(value, spec)

    print(
        f"{'layer':<40}{'role':<13}{'format':<7}{'overflows':>10}{'min hr':>8}"
        f"{'median hr':>10}{'sat %':>8}{'under %':>9}  risk"
    )
    for r in rows:
        print(
            f"{r['layer']:<40}{r['role']:<13}{r['format']:<7}{r['overflows']:>10}"
            f"{number(r['min headroom'], '.2f'):>8}{number(r['median headroom'], '.2f'):>10}"
            f"{number(r.get('saturation %'), '.3g'):>8}{number(r.get('underflow %'), '.3g'):>9}"
            f"  {'AT RISK' if r['at risk'] else ''}"
            + (f" (dead since step {r['dead since']})" if r["dead since"] is not None else "")
        )
    for sentence in fp8.dead_summary(rows):
        print(f"\n{sentence}")
    if len(probe_steps):
        print(f"\nProbe: {len(probe_steps)} measurements, latest at step {int(probe_steps[-1])}.")
    if replay:
        print(
            f"\nReplayed under other amax history lengths (this run: "
            f"{run['config'].amax_history_length}); all layers:"
        )
        print(
            f"{'history':>8}  {'role':<13}{'overflows':>10}{'overflow %':>11}{'median hr':>10}"
            f"{'max hr':>8}"
        )
        for r in replay:
            print(
                f"{r['history length']:>8}  {r['role']:<13}{r['overflows']:>10}"
                f"{r['overflow %']:>11.3f}{number(r['median headroom'], '.2f'):>10}"
                f"{number(r['max headroom'], '.2f'):>8}"
            )
    print()
    for name, text in fp8.HEALTH_HELP.items():
        print(f"{name}: {text}.")
    return 0


def health_recipes(args, store: Store, run: dict, layers: list) -> int:
    """The probe's tensors under every scaling recipe: JSON rows, or a table of SNR (dB) per
    tensor and recipe at the latest probe with the summary in words."""
    from fp8demo import probe, recipes

    if args.replay:
        raise CliError("--recipes and --replay are separate views: ask for one at a time.")
    steps, names, stats = store.fp8_recipes(run["id"])
    if not len(steps):
        raise CliError(
            f"Run {run['id']} has no recipe statistics"
            + (
                " (its probe was off: probe every 0 steps)."
                if run["config"].probe_every == 0
                else " yet: they are recorded at each probe."
            )
        )
    rows = probe.recipe_records(steps, names, stats, layers, all_probes=args.all_probes)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"SNR (dB) on the probe batch at step {int(steps[-1])}, under each scaling recipe:")
    print(f"{'layer':<40}{'role':<13}" + "".join(f"{name:>12}" for name in names))
    for i, layer in enumerate(layers):
        for j, role in enumerate(probe.ROLES):
            cells = (probe.snr_words(v) for v in stats[-1, i, j, :, 2])
            print(f"{layer:<40}{role:<13}" + "".join(f"{c:>12}" for c in cells))
    print()
    for sentence in probe.recipe_summary(names, stats[-1], layers):
        print(sentence.replace("`", ""))
    print()
    for name in names:
        print(f"{name}: {recipes.RECIPE_HELP.get(name, '')}")
    for name, text in recipes.STATISTICS_HELP.items():
        print(f"{name}: {text}")
    return 0


# -- sweep, sweeps ---------------------------------------------------------------------------


def add_sweep_commands(commands):
    """`sweep` (the train flags fix the settings every trial shares) and `sweeps`."""
    from fp8demo.sweep import OBJECTIVES, SAMPLERS

    sweep = commands.add_parser(
        "sweep", help="search settings with an Optuna sweep whose every trial is one comparison"
    )
    sweep.add_argument("--preset", choices=list(PRESETS), help="start from a preset")
    for flag, options in cli_flags():  # the settings every trial shares
        sweep.add_argument(flag, **options)
    sweep.add_argument(
        "--param",
        action="append",
        required=True,
        metavar="NAME=SPEC",
        help="a searched setting: choices (heads=1,2,4) or a range (hidden_dim=32:256, "
        "lr=1e-4:1e-2:log); repeat for more",
    )
    sweep.add_argument("--trials", required=True, metavar="N", help="how many trials to run")
    sweep.add_argument(
        "--objective",
        required=True,
        metavar="{" + ",".join(OBJECTIVES) + "}",
        help="read from the final epoch's validation accuracy",
    )
    sweep.add_argument("--direction", default="maximize", metavar="{maximize,minimize}")
    sweep.add_argument("--sampler", default="tpe", metavar="{" + ",".join(SAMPLERS) + "}")
    sweep.add_argument(
        "--prune", default="true", metavar="{true,false}", help="stop hopeless trials early"
    )
    sweep.add_argument("--label", default="", help="a name for the sweep")
    sweep.add_argument("--no-wait", action="store_true", help="queue and return at once")
    sweep.add_argument("--json", action="store_true", help="print the final record as JSON")

    sweeps = commands.add_parser("sweeps", help="list sweeps; show, cancel or resume one")
    sweeps.add_argument("sweep", nargs="?", help="a sweep id: its trials")
    sweeps.add_argument("--json", action="store_true")
    action = sweeps.add_mutually_exclusive_group()
    action.add_argument("--cancel", action="store_true", help="cancel the sweep's trials")
    action.add_argument("--resume", action="store_true", help="run a cancelled sweep on")


def cmd_sweep(args, store: Store) -> int:
    from fp8demo import sweep, worker

    config = config_from_args(args)
    try:
        trials = int(args.trials)
    except ValueError:
        raise CliError(f"--trials must be a whole number, got {args.trials!r}.") from None
    if args.prune.strip().lower() not in ("true", "false"):
        raise CliError(f"--prune must be true or false, got {args.prune!r}.")
    request = sweep.SweepRequest(
        base=config,
        space=args.param,
        trials=trials,
        objective=args.objective,
        direction=args.direction,
        sampler=args.sampler,
        prune=args.prune.strip().lower() == "true",
        label=args.label,
    )
    sweep_id = sweep.create_sweep(store, request)
    record = store.sweep(sweep_id)
    print(
        f"sweep {sweep_id}: {trials} trials, {record['objective']} ({record['direction']}), "
        f"sampler {record['sampler']}, pruning {'on' if record['prune'] else 'off'} "
        f"(store {store.home})",
        flush=True,
    )
    if args.no_wait:
        return 0
    interactive = sys.stdout.isatty()
    last_trials, last_runs, last_print = {}, {}, 0.0
    try:
        while True:
            worker.supervise(store)  # advances the sweep too
            for row in sweep.trial_rows(store, sweep_id):
                key = (row["state"], row["comparison_id"])
                if last_trials.get(row["number"]) != key:
                    print(trial_line(row), flush=True)
                    last_trials[row["number"]] = key
            due = interactive or time.time() - last_print > 10
            for run in sweep.active_runs(store, sweep_id):
                key = (run["phase"], run["status"])
                if last_runs.get(run["id"]) != key or (due and run["status"] == "running"):
                    print("  " + progress_line(run), flush=True)
                    last_runs[run["id"]] = key
            if time.time() - last_print > 10:
                last_print = time.time()
            if store.sweep(sweep_id)["state"] != "running":
                break
            time.sleep(1.0)
    except KeyboardInterrupt:
        print(
            f"\nSweep {sweep_id} goes on in the background. Watch it with python -m fp8demo "
            f"sweeps {sweep_id}; stop it with python -m fp8demo sweeps {sweep_id} --cancel.",
            flush=True,
        )
        return 130
    if args.json:
        print(json.dumps(sweep.sweep_record(store, sweep_id), indent=2))
    else:
        print()
        print_sweep(store, sweep_id)
    record = sweep.sweep_record(store, sweep_id)
    return 0 if record["state"] == "complete" and record["best_trial"] is not None else 1


def trial_line(row: dict) -> str:
    """One trial: number, state, params, value, comparison (and why it was pruned or failed)."""
    value = f"  {row['value']:.4f}" if row["value"] is not None else ""
    where = f"  comparison {row['comparison_id']}" if row["comparison_id"] else ""
    ended = row["reason"] and row["state"] in ("pruned", "failed")
    reason = f"  ({row['reason']})" if ended else ""
    params = params_text(row["params"])
    return f"trial {row['number']:>3} {row['state']:<9} {params}{value}{where}{reason}"


def params_text(params: dict) -> str:
    return " ".join(
        f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
        for name, value in params.items()
    )


def print_sweep(store: Store, sweep_id):
    """A sweep's trials as a table, then its best trial."""
    from fp8demo import sweep

    record = store.sweep(sweep_id)
    rows = sweep.trial_rows(store, sweep_id)
    space = ", ".join(f"{name}={spec}" for name, spec in record["space"].items())
    print(
        f"sweep {record['id']} ({record['state']}): {record['objective']} ({record['direction']})"
        f" over {space}, {len(rows)} of {record['trials']} trials asked"
    )
    if record["error"]:
        print(f"  {record['error']}")

    def number(value):
        return f"{value:.4f}" if value is not None else "-"

    header = (
        f"{'trial':>5}  {'state':<9}{'value':>8}{'bf16 val':>10}{'fp8 val':>9}{'bf16 test':>11}"
        f"{'fp8 test':>10}{'cmp':>6}  params"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['number']:>5}  {r['state']:<9}{number(r['value']):>8}"
            f"{number(r['bf16_val_accuracy']):>10}{number(r['fp8_val_accuracy']):>9}"
            f"{number(r['bf16_test_accuracy']):>11}{number(r['fp8_test_accuracy']):>10}"
            f"{r['comparison_id'] or '-':>6}  {params_text(r['params'])}"
        )
        if r["reason"] and r["state"] in ("pruned", "failed"):
            print(f"{'':>7}{r['reason']}")
    best = sweep.sweep_record(store, sweep_id)["best_trial"]
    if best is None:
        print("\nno completed trial yet")
        return
    row = rows[best]
    print(
        f"\nbest: trial {best}, {record['objective']} {row['value']:.4f} with "
        f"{params_text(row['params'])} (comparison {row['comparison_id']})"
    )


def cmd_sweeps(args, store: Store) -> int:
    from fp8demo import sweep, worker

    worker.supervise(store)
    if args.sweep is None:
        if args.cancel or args.resume:
            raise CliError("Name the sweep to cancel or resume: python -m fp8demo sweeps ID.")
        listed = sweep.sweeps(store)
        if args.json:
            print(json.dumps(listed, indent=2))
            return 0
        print(f"{'sweep':>5}  {'state':<10}{'trials':>8}  {'best':>7}  objective")
        for s in listed:
            best = f"{s['best_value']:.4f}" if s["best_value"] is not None else "-"
            print(
                f"{s['id']:>5}  {s['state']:<10}{s['trials_done']:>4}/{s['trials']:<3}  {best:>7}"
                f"  {s['objective']} ({s['direction']}){'  ' + s['label'] if s['label'] else ''}"
            )
        if not listed:
            print("(no sweeps yet: python -m fp8demo sweep --param lr=1e-4:1e-2:log ...)")
        return 0
    sweep_id = store.sweep(args.sweep)["id"]
    if args.cancel:
        sweep.cancel_sweep(store, sweep_id)
        print(f"sweep {sweep_id}: cancelled (its running trials stop at their next step)")
    elif args.resume:
        sweep.resume_sweep(store, sweep_id)
        print(f"sweep {sweep_id}: running")
    if args.json:
        print(json.dumps(sweep.sweep_record(store, sweep_id), indent=2))
    elif not (args.cancel or args.resume):
        print_sweep(store, sweep_id)
    return 0


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from fp8demo.data import DataError
    from fp8demo.predict import PredictError

    try:
        if args.store:
            # In the environment too: the workers this command starts use the same store.
            os.environ["FP8DEMO_STORE"] = args.store
        store = Store(url=args.store)
        if args.command == "worker":
            from fp8demo import worker

            return worker.main(store, slot=args.slot, workers=args.workers, stay=args.stay)
        if args.command == "cancel":
            status = store.request_cancel(args.run)
            print(f"run {args.run}: cancel requested (was {status})")
            return 0
        return {
            "train": cmd_train,
            "runs": cmd_runs,
            "show": cmd_show,
            "predict": cmd_predict,
            "health": cmd_health,
            "export": cmd_export,
            "sweep": cmd_sweep,
            "sweeps": cmd_sweeps,
        }[args.command](args, store)
    except (ConfigError, StoreError, DataError, PredictError, CliError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
