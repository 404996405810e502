"""Sweep commands: start a sweep and watch it; list, show, cancel or resume sweeps."""

import json
import sys
import time

from fp8demo import launcher, records, sweep
from fp8demo.cli.arguments import CliError, config_from_args
from fp8demo.cli.output import print_sweep, progress_line, trial_line
from fp8demo.store import Store


def cmd_sweep(args, store: Store) -> int:
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
            launcher.ensure_supervisor(store)  # it advances the sweep
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
        print(json.dumps(sweep_json(store, sweep_id), indent=2))
    else:
        print()
        print_sweep(store, sweep_id)
    record = sweep.sweep_record(store, sweep_id)
    return 0 if record["state"] == "complete" and record["best_trial"] is not None else 1


def cmd_sweeps(args, store: Store) -> int:
    launcher.ensure_supervisor(store)
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
        print(json.dumps(sweep_json(store, sweep_id), indent=2))
    elif not (args.cancel or args.resume):
        print_sweep(store, sweep_id)
    return 0


def sweep_json(store: Store, sweep_id) -> dict:
    """sweep.sweep_record with each trial's fp8 − bf16 verdict over the seeds its settings
    were trained with (records.trial_verdicts: one seed is "inconclusive"; null before the
    trial's pair finished)."""
    record = sweep.sweep_record(store, sweep_id)
    found = records.trial_verdicts(store, record["trials"])
    for trial in record["trials"]:
        trial["verdict"] = found[trial["number"]]
    return record
