"""python -m fp8demo: the dashboard's engine and store, from a terminal.

arguments  the command line and the settings it asks for
runs       train, runs, show, predict, health, export
sweeps     sweep and sweeps
output     the text they print
"""

import os
import sys

from fp8demo import env, supervisor, worker
from fp8demo.cli.arguments import CliError, config_from_args, parse_args
from fp8demo.cli.output import progress_line, results_table
from fp8demo.cli.runs import cmd_export, cmd_health, cmd_predict, cmd_runs, cmd_show, cmd_train
from fp8demo.cli.sweeps import cmd_sweep, cmd_sweeps
from fp8demo.config import ConfigError
from fp8demo.data import DataError
from fp8demo.predict import PredictError
from fp8demo.records import RUN_FIELDS, best_epoch_record, health_record, run_json, run_record
from fp8demo.store import Store, StoreError

__all__ = [
    "RUN_FIELDS",
    "CliError",
    "best_epoch_record",
    "config_from_args",
    "health_record",
    "main",
    "parse_args",
    "progress_line",
    "results_table",
    "run_json",
    "run_record",
]

COMMANDS = {
    "train": cmd_train,
    "runs": cmd_runs,
    "show": cmd_show,
    "predict": cmd_predict,
    "health": cmd_health,
    "export": cmd_export,
    "sweep": cmd_sweep,
    "sweeps": cmd_sweeps,
}


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # The worker's log keeps the libraries' start-up lines; a command's output shows results.
    env.configure(quiet=not args.verbose and args.command != "worker")
    try:
        if args.store:
            # In the environment too: the workers this command starts use the same store.
            os.environ["FP8DEMO_STORE"] = args.store
        store = Store(url=args.store)
        if args.command == "worker":
            return worker.main(store, slot=args.slot, workers=args.workers, stay=args.stay)
        if args.command == "supervisor":
            return supervisor.main(store, stay=args.stay)
        if args.command == "cancel":
            status = store.request_cancel(args.run)
            print(f"run {args.run}: cancel requested (was {status})")
            return 0
        return COMMANDS[args.command](args, store)
    except (ConfigError, StoreError, DataError, PredictError, CliError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
