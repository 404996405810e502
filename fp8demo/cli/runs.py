"""Run commands: train, runs, show, predict, health, export (cancel lives in main)."""

import json
import sys
import time

from fp8demo import (
    block_scales,
    fp8,
    launcher,
    post_training,
    prescription,
    probe,
    records,
    report,
)
from fp8demo.cli.arguments import CliError, config_from_args
from fp8demo.cli.output import (
    print_blocks,
    print_health,
    print_recipes,
    print_replay,
    print_run_record,
    progress_line,
    results_table,
)
from fp8demo.predict import SavedModel, describe_output, load_run, sentiment
from fp8demo.records import run_json, run_record
from fp8demo.store import ENDED, Store
from fp8demo.tensorboard_export import export_run


def cmd_train(args, store: Store) -> int:
    config = config_from_args(args)
    try:
        repeats = int(args.repeats)
    except ValueError:
        raise CliError(f"--repeats must be a whole number, got {args.repeats!r}.") from None
    comparison_ids = launcher.launch_repeats(config, repeats, store)
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
            launcher.ensure_supervisor(store)  # it reaps dead runs and restarts workers
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


def cmd_runs(args, store: Store) -> int:
    launcher.ensure_supervisor(store)  # dead runs are marked interrupted in a moment
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
    run = store.run(args.run)
    if post_training.post_training_pending(run):  # queued on first request, then kept
        run = wait_for_post_training(store, run)
    detail = {**run_record(store, run, tolerance=args.tolerance), **fallback_record(run)}
    if args.json:
        print(json.dumps(detail, indent=2))
        return 0
    print_run_record(detail)
    return 0


def fallback_record(run: dict) -> dict:
    """The layers a fallback moved to bf16 while training: its events ({step, layer, role,
    reason, value}) and the summary line ("2 of 8 float8 layers ended in bf16 (fallback)")."""
    summary = run["summary"]
    return {
        "fallback_events": summary.get("fallback_events", []),
        "fallback_summary": summary.get("fallback_summary") or None,
    }


def wait_for_post_training(store: Store, run: dict) -> dict:
    """Queue a run's post-training evaluation (a worker does it) and wait until it ends;
    the run as it is then. A failure is said on stderr: the rest is still worth showing."""
    print("evaluating int8/int4 post-training quantization…", file=sys.stderr, flush=True)
    evaluation = launcher.request_post_training(store, run["id"])
    try:
        while evaluation["status"] in ("queued", "running"):
            time.sleep(1.0)
            launcher.ensure_supervisor(store, pending=True)  # its worker may have died
            evaluation = store.evaluation(run["id"])
    except KeyboardInterrupt:  # Ctrl+C: the run without it (a worker still evaluates it)
        print("not waiting: it stays queued", file=sys.stderr)
    if evaluation["status"] == "failed":
        error = evaluation["error"]
        print(f"Post-training quantization not evaluated: {error}", file=sys.stderr)
    return store.run(run["id"])


def cmd_predict(args, store: Store) -> int:
    loaded = load_run(store, args.run, args.post_training)
    if isinstance(loaded, SavedModel):  # a user's own model (FP8Monitor): raw inputs
        return predict_raw(args, loaded)
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


def predict_raw(args, loaded: SavedModel) -> int:
    """A saved model's outputs: its inputs are the texts, one per argument, or one JSON array
    (the arguments joined: a shell may split it)."""
    raw = "\n".join(args.texts) if loaded.takes_text else " ".join(args.texts)
    outputs = loaded.predict(loaded.parse(raw))
    if args.json:
        print(json.dumps([{"output": o.tolist()} for o in outputs], indent=2))
    else:
        for i, output in enumerate(outputs):
            print(f"{i}: {describe_output(output)}")
    return 0


def cmd_export(args, store: Store) -> int:
    """CSV (every step, validation metrics on each epoch's last step) and/or TensorBoard."""
    run = store.run(args.run)
    runs = store.comparison(run["comparison_id"])["runs"] if args.comparison else [run]
    if args.tensorboard is not None:
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
    run = store.run(args.run)
    layers = records.float8_layer_names(run)
    if not layers:
        raise CliError(f"Run {run['id']} ({run['precision']}) has no float8 layers.")
    if args.recipes and args.suggest:
        raise CliError("--recipes and --suggest are separate views: ask for one at a time.")
    if args.blocks:
        return health_blocks(args, store, run)
    if args.recipes:
        return health_recipes(args, store, run, layers)
    if args.suggest:
        return health_suggest(args, store, run)
    if args.all_probes:
        raise CliError("--all-probes goes with --recipes or --blocks.")
    health = records.health(store, run)
    replay = fp8.history_length_effect(health.amax) if args.replay else None
    if args.json:
        rows = records.table_json(health)
        print(json.dumps({"tensors": rows, "replay": replay} if args.replay else rows, indent=2))
        return 0
    print_health(health)
    if replay:
        print_replay(replay, run["config"].amax_history_length)
    print()
    for name, text in fp8.HEALTH_HELP.items():
        print(f"{name}: {text}.")
    return 0


def health_suggest(args, store: Store, run: dict) -> int:
    """The suggested policy (prescription.py): the layers to keep in bf16 with their reasons,
    and, when there are some, the comparison that tests it queued; JSON or words."""
    if args.replay:
        raise CliError("--suggest and --replay are separate views: ask for one at a time.")
    bands = prescription.parse_bands(args.bands)
    health = records.health(store, run)
    suggestions = prescription.suggest(
        health.layers, health.probe_steps, health.probe_stats, health.rows, bands
    )
    worst = prescription.worst_tensors(
        health.layers, health.probe_steps, health.probe_stats, health.rows
    )
    layers = [s["layer"] for s in suggestions]
    queued = prescription.launch_suggested(store, run, layers) if layers else []
    if args.json:
        record = {
            "run": run["id"],
            "bands": {"edges_pct": list(bands), "names": list(prescription.BAND_NAMES)},
            "probes": len(health.probe_steps),
            "worst_tensors": [{"layer": layer, "role": role} for layer, role in worst],
            "suggested": suggestions,
            "comparisons": queued,
            "label": prescription.launch_label(run) if queued else None,
        }
        print(json.dumps(record, indent=2))
        return 0
    print(f"Underflow bands: {prescription.band_words(bands)}.")
    if not len(health.probe_steps):
        print(f"Run {run['id']} has no probe yet: only dead tensors count.")
    print("Worst tensors: " + (", ".join(f"{name} {role}" for name, role in worst) or "none") + ".")
    for sentence in prescription.suggestion_words(suggestions, bands):
        print(sentence.replace("`", ""))
    if queued:
        print(
            f"Queued comparisons {queued[0]} (bf16, {run['precision']}) and {queued[1]} "
            f"({run['precision']} with {len(layers)} layers in bf16) as "
            f"“{prescription.launch_label(run)}”; follow them with: python -m fp8demo runs"
        )
    return 0


def health_recipes(args, store: Store, run: dict, layers: list) -> int:
    """The probe's tensors under every scaling recipe: JSON rows, or a table of SNR (dB) per
    tensor and recipe at the latest probe with the summary in words."""
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
    second = store.fp8_recipes_second(run["id"], steps, names)  # None: recorded before it
    rows = probe.recipe_records(
        steps, names, stats, layers, all_probes=args.all_probes, second=second
    )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print_recipes(steps, names, stats, layers)
    return 0


def health_blocks(args, store: Store, run: dict) -> int:
    """The block recipes' block scales of every float8 tensor and GEMM: JSON rows or a table."""
    if args.recipes or args.suggest or args.replay:
        raise CliError("--blocks is a view of its own: ask for one view at a time.")
    rows = store.fp8_blocks(run["id"], all_probes=args.all_probes)
    if not rows:
        raise CliError(
            f"Run {run['id']} has no block-scale statistics"
            + (
                " (its probe was off: probe every 0 steps)."
                if run["config"].probe_every == 0
                else ": they are measured at each probe of runs with block scales on "
                "(--block-scales on; auto, the default, measures them in fp8-block128, "
                "mxfp8 and nvfp4 runs)."
            )
        )
    if args.json:
        print(json.dumps([block_scales.json_row(r) for r in rows], indent=2))
        return 0
    print_blocks(rows)
    return 0
