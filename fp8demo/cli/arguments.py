"""The command line: one small builder per subcommand, and the settings it asks for."""

import argparse

from fp8demo import verdicts
from fp8demo.config import PRESETS, TrainConfig, cli_flags, from_flags, preset
from fp8demo.sweep import OBJECTIVES, SAMPLERS

COMMANDS = """python -m fp8demo: the dashboard's engine and store, from a terminal.

train    queue a comparison (defaults: the Keras example), show progress, print results
runs     every run in the store
show     one run: config, status, metrics, float8 layers and their final scales, and an
         fp8 run's verdict against bf16 over the seeds of its settings
predict  positive probability of texts under a finished run's model
export   a run's per-step metrics as CSV, or its records as TensorBoard event files
sweep    search settings with an Optuna sweep whose every trial is one comparison
sweeps   list sweeps; show, cancel or resume one
worker   the training process (started for you by train and the dashboard)
supervisor  reaps dead runs, advances sweeps, restarts workers (started for you)
"""

VERBOSE_HELP = "also show TensorFlow's, JAX's and absl's start-up lines (hidden by default)"


class CliError(Exception):
    """A mistake in what the user asked for: printed as `error: ...`, exit status 2."""


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m fp8demo",
        description=COMMANDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    commands = parser.add_subparsers(dest="command", required=True)
    add_train_command(commands)
    add_run_commands(commands)
    add_health_command(commands)
    add_export_command(commands)
    add_sweep_commands(commands)
    add_worker_command(commands)
    add_supervisor_command(commands)
    for command in commands.choices.values():
        command.add_argument(
            "--store",
            metavar="URL",
            help="the run store: sqlite:///FILE or postgresql://USER@HOST/DB (default: "
            "FP8DEMO_STORE, else runs.sqlite in the fp8demo home)",
        )
        # After the command too; SUPPRESS keeps a --verbose given before it.
        command.add_argument(
            "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP
        )
    return parser.parse_args(argv)


def add_train_command(commands):
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


def add_run_commands(commands):
    """`runs`, `show` and `predict`: reading runs."""
    runs = commands.add_parser("runs", help="list every run")
    runs.add_argument("--json", action="store_true")

    show = commands.add_parser("show", help="show one run")
    show.add_argument("run")
    show.add_argument("--json", action="store_true")
    show.add_argument(
        "--tolerance",
        type=tolerance_points,
        default=verdicts.TOLERANCE_POINTS,
        metavar="POINTS",
        help="an fp8 run's verdict calls fp8 equivalent to bf16 when the 95%% interval of "
        "its test accuracy difference over the seeds lies within ±POINTS (default: %(default)s)",
    )

    predict = commands.add_parser("predict", help="predict with a finished run's model")
    predict.add_argument("run")
    predict.add_argument(
        "texts",
        nargs="+",
        metavar="INPUT",
        help="reviews; for an FP8Monitor run's saved model: texts, or one JSON array",
    )
    predict.add_argument(
        "--post-training",
        choices=["int8", "int4"],
        help="quantize a bf16 run's model after training first",
    )
    predict.add_argument("--json", action="store_true")


def add_health_command(commands):
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
        "--blocks",
        action="store_true",
        help="instead: the block scales of block128, mxfp8, mxfp8-floor and nvfp4 for every "
        "float8 tensor in both GEMMs that use it, at the latest probe; with --json, rows of "
        "layer, role, recipe, gemm, step, scale_log2_min, scale_log2_max, scale_log2_std, "
        "worst_block_snr_db (null: every block exact), limit_share, worst_block ([block row, "
        "block column] or null)",
    )
    health.add_argument(
        "--all-probes",
        action="store_true",
        help="with --recipes or --blocks: every probe, not the latest",
    )
    health.add_argument(
        "--suggest",
        action="store_true",
        help="instead: the layers to keep in bf16, each with its reasons (a tensor dead, or "
        "in the severe underflow band at each of its last 3 probes), and queue the "
        "comparison bf16 / the run's precision / that precision with them in bf16 over the "
        "run's settings, under one label (nothing is queued when none is suggested)",
    )
    health.add_argument(
        "--bands",
        default="0.5,2,4",
        metavar="A,B,C",
        help="with --suggest: the underflow band edges in %%, excellent below A, severe "
        "above C (default: 0.5,2,4)",
    )
    health.add_argument("--json", action="store_true")


def add_export_command(commands):
    """`cancel` and `export`: one run's queue entry and its records."""
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


def add_sweep_commands(commands):
    """`sweep` (the train flags fix the settings every trial shares) and `sweeps`."""
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


def add_worker_command(commands):
    pool = commands.add_parser("worker", help="run the queue (started automatically)")
    pool.add_argument(
        "--slot",
        type=whole_number(0),
        metavar="K",
        help="be the pool's worker for slot K (its device: GPU K, or on a CPU its share of "
        "the cores); without it, be slot 0 and start the pool's other workers",
    )
    pool.add_argument(
        "--workers",
        type=whole_number(1),
        metavar="N",
        help="slots in the pool, N runs at once (default: one per GPU, or 1 on a CPU)",
    )
    pool.add_argument(
        "--stay",
        action="store_true",
        help="keep waiting when nothing is queued (a GPU host's workers on a shared store: "
        "they train the runs that any host queues); stop them with Ctrl+C or kill",
    )


def add_supervisor_command(commands):
    watch = commands.add_parser(
        "supervisor", help="keep the queue and sweeps going (started automatically)"
    )
    watch.add_argument(
        "--stay",
        action="store_true",
        help="keep supervising when nothing is active; stop it with Ctrl+C or kill",
    )


def whole_number(low: int, high: int = 1024):
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


def tolerance_points(text: str) -> float:
    """An argparse type: the equivalence margin, in points of test accuracy (≥ 0)."""
    try:
        points = float(text)
    except ValueError:
        points = -1.0
    if not 0 <= points <= 100:
        raise argparse.ArgumentTypeError(
            f"expected points of test accuracy from 0 to 100 (0.5 = half a point), got {text!r}"
        )
    return points


def config_from_args(args) -> TrainConfig:
    """The preset (default: the Keras example) with the settings given as flags."""
    base = preset(args.preset) if args.preset else TrainConfig()
    return from_flags(args, base).validate()
