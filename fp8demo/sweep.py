"""Sweeps: an Optuna study whose every trial is one paired comparison.

A sweep searches training settings (the search space) for the best value of an objective
read from the comparisons' final-epoch validation accuracy. Each trial trains one
comparison: the fixed settings plus the trial's parameters, every precision with the same
seed and data, so fp8 − bf16 is a paired difference. Test accuracy is reported beside it.

No process of its own runs a sweep. The processes around it ask and tell Optuna's trials,
under a lock per sweep that every process of the store shares (Store.lock):
- create_sweep records it and asks its first trials (one per live worker, at least one);
- the recorder, at every epoch's end, reports the objective of the epochs that every needed
  run has finished (runs may train one after the other or side by side) and prunes;
- the worker after each run, and the supervisor every few seconds, call advance(): it tells
  the trials whose comparison ended, asks new ones until `trials` were asked, and marks the
  sweep complete once every trial is told.
Optuna's study lives in its RDB storage (storage_url): SQLite next to the run store, or the
run store's own PostgreSQL database.

Search space (sweep_space.py): NAME=SPEC per setting, e.g. `heads=1,2,4`, `lr=1e-4:1e-2:log`.
Settings invalid only together (heads=3 with hidden_dim 32) fail that trial with the
message, and the sweep goes on.

Pruning (optional): Optuna's MedianPruner, fed each epoch's objective. A trial is pruned when
the best objective it reached by an epoch is worse than the median of the completed trials at
that epoch, from the second completed trial on (PRUNE_AFTER_TRIALS) and from the first epoch
(sweeps here are short), so a sweep of four trials can prune its third and fourth. A pruned
trial's runs are cancelled and the reason is kept (the trial's user attribute "reason", and
"sweep_pruned" in each run's summary).
"""

import contextlib
import dataclasses
import functools
import sys
import traceback

import numpy as np
import optuna
from optuna.trial import TrialState

from fp8demo import launcher, verdicts
from fp8demo.config import ConfigError, TrainConfig
from fp8demo.paths import host_name
from fp8demo.resources import launch_problems
from fp8demo.store import ACTIVE, Store, StoreError

# The search space (FIXED too, which the Sweep page reads from here).
from fp8demo.sweep_space import FIXED, Param, grid_size, grid_space, parse_space  # noqa: F401

# Optuna's INFO line per trial would fill the worker log and the CLI's output.
optuna.logging.set_verbosity(optuna.logging.WARNING)

OBJECTIVES = (
    "fp8_accuracy",
    "bf16_accuracy",
    "fp8_minus_bf16",
    "abs_fp8_minus_bf16",
    "fp8_equivalent",
)
SAMPLERS = ("grid", "random", "tpe")
DIRECTIONS = ("maximize", "minimize")
TRIAL_STATES = ("queued", "running", "complete", "pruned", "failed")
# The runs each objective reads, by precision.
OBJECTIVE_PRECISIONS = {
    "fp8_accuracy": ("fp8",),
    "bf16_accuracy": ("bf16",),
    "fp8_minus_bf16": ("bf16", "fp8"),
    "abs_fp8_minus_bf16": ("bf16", "fp8"),
    "fp8_equivalent": ("bf16", "fp8"),
}
# fp8_equivalent is the worse (lower) end of a 95 % interval of fp8 − bf16, to maximize. A
# trial trains one seed, which has no interval of its own: the interval is the one of a
# known seed-to-seed spread (verdicts.ASSUMED_STD_POINTS), difference ± 1.96 σ. Comparing
# trials it ranks like fp8_minus_bf16; its value reads as "fp8 is at worst this far behind".
# For an interval from the seeds themselves, repeat the best trial's settings over seeds
# (Results' "Repeat over more seeds", or train --repeats) and read its verdict.
EQUIVALENT_MARGIN = 1.96 * verdicts.ASSUMED_STD_POINTS / 100  # in accuracy, as the values
MAX_TRIALS = 1000
PRUNE_AFTER_TRIALS = 2  # MedianPruner's n_startup_trials: the median of two completed trials
PRUNE_FROM_EPOCH = 0  # MedianPruner's n_warmup_steps: the first epoch may already prune
TPE_RANDOM_TRIALS = 10  # TPE's random start (Optuna's default), at most half the trials


# -- objectives --------------------------------------------------------------------------


def objective_value(objective: str, accuracies: dict) -> float:
    """The objective from validation accuracies by precision ({"bf16": 0.8, "fp8": 0.79})."""
    if objective == "fp8_accuracy":
        return accuracies["fp8"]
    if objective == "bf16_accuracy":
        return accuracies["bf16"]
    difference = accuracies["fp8"] - accuracies["bf16"]
    if objective == "fp8_equivalent":
        return difference - EQUIVALENT_MARGIN
    return difference if objective == "fp8_minus_bf16" else abs(difference)


# -- Optuna's storage, study, sampler and pruner -----------------------------------------


def storage_url(store: Store) -> str:
    """Where the studies live: the run store's PostgreSQL database, else sweeps.sqlite in the
    home (SQLite, so it survives restarts and several processes ask and tell)."""
    if getattr(store, "backend", "sqlite") == "postgresql":
        return "postgresql+psycopg://" + store.url.split("://", 1)[1]
    return f"sqlite:///{store.home / 'sweeps.sqlite'}"


@functools.cache
def _storage(url: str) -> optuna.storages.RDBStorage:
    """One storage per database and process (creating one checks Optuna's schema)."""
    # SQLite: wait for another process's write as the run store does, rather than fail.
    options = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=options)


def study(store: Store, sweep_id) -> optuna.Study:
    """The sweep's Optuna study (for optuna.visualization's figures)."""
    return _load_study(store, store.sweep(sweep_id))


def _load_study(store: Store, sweep: dict) -> optuna.Study:
    try:
        return optuna.load_study(
            study_name=sweep["study_name"],
            storage=_storage(storage_url(store)),
            sampler=optuna.samplers.RandomSampler(),  # replaced before asking (_ask_trials)
            pruner=_pruner(sweep),
        )
    except KeyError:  # Optuna's answer for a study that is not there
        raise StoreError(
            f"Sweep {sweep['id']}'s Optuna study {sweep['study_name']} is missing from "
            f"{storage_url(store)}."
        ) from None


def _pruner(sweep: dict) -> optuna.pruners.BasePruner:
    if not sweep["prune"]:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=PRUNE_AFTER_TRIALS, n_warmup_steps=PRUNE_FROM_EPOCH
    )


def _sampler(sweep: dict, space: dict[str, Param], asked: int) -> optuna.samplers.BaseSampler:
    """The sweep's sampler for its trial number `asked`.

    Samplers are not stored with the study: each process makes one per ask. The grid's order
    is the fixed settings' seed (GridSampler shuffles its grid with it, and trial n takes
    point n); random and TPE draw with seed + n, so two processes never repeat a draw.
    """
    seed = sweep["config"].seed
    if sweep["sampler"] == "grid":
        return optuna.samplers.GridSampler(grid_space(space, sweep["trials"]), seed=seed)
    if sweep["sampler"] == "random":
        return optuna.samplers.RandomSampler(seed=seed + asked)
    startup = max(1, min(TPE_RANDOM_TRIALS, sweep["trials"] // 2))
    return optuna.samplers.TPESampler(seed=seed + asked, n_startup_trials=startup)


def _tell(study: optuna.Study, number: int, value=None, state=None):
    try:
        study.tell(number, value, state=state)
    except RuntimeError as e:
        # GridSampler stops Study.optimize's loop once its grid is done; there is none here,
        # and the trial is told before it tries.
        if "Study.stop" not in str(e):
            raise


def _trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


# -- launching ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SweepRequest:
    """A sweep as it is asked for: what sweep_problems checks and create_sweep records.

    base: the fixed settings every trial shares; space: {name: spec} or ["name=spec", ...];
    trials: how many trials are asked; objective: one of OBJECTIVES; direction: one of
    DIRECTIONS; sampler: one of SAMPLERS; prune: Optuna's MedianPruner on or off; label: an
    optional name shown with the sweep.
    """

    base: TrainConfig
    space: dict | list
    trials: int
    objective: str
    direction: str = "maximize"
    sampler: str = "tpe"
    prune: bool = True
    label: str = ""


def sweep_problems(request: SweepRequest, home=None) -> list[str]:
    """Every reason this sweep cannot be launched, as sentences (empty when it can).

    With home (the run store's folder), the launch's own checks too (resources.launch_problems).
    """
    base, space, trials = request.base, request.space, request.trials
    objective, direction, sampler = request.objective, request.direction, request.sampler
    problems = []
    try:
        parsed = parse_space(space)
    except ConfigError as e:
        problems.append(str(e))
        parsed = None
    if isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= MAX_TRIALS:
        problems.append(
            f"trials must be a whole number between 1 and {MAX_TRIALS}, got {trials!r}."
        )
    elif parsed and sampler == "grid" and grid_size(grid_space(parsed, trials)) < trials:
        size = grid_size(grid_space(parsed, trials))
        problems.append(
            f"The grid holds {size} settings, fewer than {trials} trials: ask for at most "
            f"{size}, add choices, or search a range."
        )
    if objective not in OBJECTIVES:
        problems.append(f"Unknown objective {objective!r}: choose from {', '.join(OBJECTIVES)}.")
    else:
        missing = [p for p in OBJECTIVE_PRECISIONS[objective] if p not in base.precisions]
        if missing:
            needed = " and ".join(OBJECTIVE_PRECISIONS[objective])
            problems.append(
                f"The objective {objective} reads the {needed} runs, and the comparison trains "
                f"{','.join(base.precisions)}: add {', '.join(missing)} to its precisions."
            )
    if direction not in DIRECTIONS:
        problems.append(f"direction must be maximize or minimize, got {direction!r}.")
    elif objective == "fp8_equivalent" and direction != "maximize":
        problems.append(
            "fp8_equivalent is maximized: it is the worse end of fp8 − bf16's interval."
        )
    if sampler not in SAMPLERS:
        problems.append(f"Unknown sampler {sampler!r}: choose from {', '.join(SAMPLERS)}.")
    if not isinstance(request.prune, bool):
        problems.append(f"prune must be true or false, got {request.prune!r}.")
    problems += base.errors()
    if home is not None and not base.errors():
        problems += launch_problems(base, home)
    return problems


def create_sweep(store: Store, request: SweepRequest) -> int:
    """Validate a sweep (ConfigError with every problem, nothing queued), record it with its
    Optuna study, ask its first trials and start the workers; returns the sweep's id.

    The comparison of trial n is labelled "sweep <id> · trial <n>".
    """
    problems = sweep_problems(request, store.home)
    if problems:
        raise ConfigError(" ".join(problems))
    base = launcher.with_data_source(request.base)
    specs = {name: param.spec for name, param in parse_space(request.space).items()}
    sweep_id = store.create_sweep(
        base,
        specs,
        request.objective,
        request.direction,
        request.sampler,
        request.prune,
        request.trials,
        request.label.strip(),
    )
    name, storage = f"sweep-{sweep_id}", _storage(storage_url(store))
    try:
        # A study of that name is left from another run store at this home: ids come from
        # the run store, so it belongs to no sweep there.
        if name in optuna.get_all_study_names(storage):
            optuna.delete_study(study_name=name, storage=storage)
        optuna.create_study(study_name=name, storage=storage, direction=request.direction)
    except Exception as e:
        store.set_sweep_state(sweep_id, "failed", f"Its Optuna study could not be created: {e}")
        raise StoreError(f"Sweep {sweep_id}'s Optuna study could not be created: {e}") from e
    advance(store, sweep_id)
    launcher.ensure_supervisor(store)  # advances the sweep with nobody watching
    return sweep_id


# -- driving: ask, report, tell ----------------------------------------------------------


def _locked(store: Store, sweep_id: int):
    """One process at a time, on any host of the store, asks, reports or tells a sweep's
    trials (never twice): Store.lock."""
    return store.lock(f"sweep-{int(sweep_id)}")


def advance(store: Store, sweep_id) -> None:
    """Tell Optuna each trial whose comparison ended, ask new trials while the sweep runs
    (one per live worker, until `trials` were asked), and mark the sweep complete once every
    trial is told. Safe from any process at any time: it never tells or asks twice."""
    sweep_id = store.sweep(sweep_id)["id"]
    with _locked(store, sweep_id):
        sweep = store.sweep(sweep_id)
        study_ = _load_study(store, sweep)
        comparisons = store.sweep_comparisons(sweep_id)
        for trial in study_.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            _tell_if_ended(store, sweep, study_, trial, comparisons.get(trial.number))
        if sweep["state"] != "running":
            return
        queued = _ask_trials(store, sweep, study_)
        trials = study_.get_trials(deepcopy=False)
        if len(trials) >= sweep["trials"] and all(t.state.is_finished() for t in trials):
            store.set_sweep_state(sweep_id, "complete")
    if queued:
        launcher.ensure_worker(store)


def _tell_if_ended(store: Store, sweep: dict, study_, trial, comparison: dict | None):
    """Complete a trial whose runs all finished, with its objective; fail one whose run
    failed, was interrupted or cancelled (its other runs are cancelled: the trial is lost)."""
    live = optuna.trial.Trial(study_, trial._trial_id)
    if comparison is None:  # its asker stopped before queueing it, or it was deleted
        live.set_user_attr("reason", "Its comparison is not in the run store.")
        return _tell(study_, trial.number, state=TrialState.FAIL)
    runs = comparison["runs"]
    broken = [r for r in runs if r["status"] in ("failed", "interrupted", "cancelled")]
    if broken:
        store.cancel_comparison(comparison["id"])
        live.set_user_attr("reason", _failure_reason(sweep, broken[0]))
        return _tell(study_, trial.number, state=TrialState.FAIL)
    if any(r["status"] != "finished" for r in runs):
        return
    rows = _accuracies(store, runs)
    for key, value in rows.items():
        live.set_user_attr(key, value)
    needed = OBJECTIVE_PRECISIONS[sweep["objective"]]
    validation = {p: rows.get(f"{p}_val_accuracy") for p in needed}
    missing = [p for p, value in validation.items() if value is None]
    if missing:
        reason = f"The {' and '.join(missing)} run recorded no validation accuracy."
        live.set_user_attr("reason", reason)
        return _tell(study_, trial.number, state=TrialState.FAIL)
    _tell(study_, trial.number, objective_value(sweep["objective"], validation))


def _failure_reason(sweep: dict, run: dict) -> str:
    if run["status"] == "cancelled" and sweep["state"] == "cancelled":
        return "Cancelled with the sweep."
    what = f"Run {run['id']} ({run['precision']}) {run['status']}"
    return f"{what}: {run['error']}" if run["error"] else f"{what}."


def _ask_trials(store: Store, sweep: dict, study_) -> int:
    """Ask trials until one per live worker is active or `trials` were asked; queue each
    one's comparison, or fail it at once when its settings are invalid. Returns how many
    comparisons were queued."""
    space, queued = parse_space(sweep["space"]), 0
    while True:
        trials = study_.get_trials(deepcopy=False)
        active = sum(t.state == TrialState.RUNNING for t in trials)
        if len(trials) >= sweep["trials"] or active >= _parallel_trials(store):
            return queued
        study_.sampler = _sampler(sweep, space, len(trials))
        trial = study_.ask()
        params = {name: param.suggest(trial) for name, param in space.items()}
        config = dataclasses.replace(sweep["config"], **params)
        problems = config.errors() or launch_problems(config, store.home)
        if problems:
            trial.set_user_attr("reason", " ".join(problems))
            _tell(study_, trial.number, state=TrialState.FAIL)
            continue
        label = f"sweep {sweep['id']} · trial {trial.number}"
        comparison_id, _ = store.create_comparison(config, label, trial=(sweep["id"], trial.number))
        trial.set_user_attr("comparison_id", comparison_id)
        queued += 1


def _parallel_trials(store: Store) -> int:
    """Trials to keep active: one per live worker of every host of the store (a worker of
    this host that has not yet recorded itself counts too), at least one."""
    live = {(w["host"], w["slot"]) for w in store.live_workers()}
    live |= {(host_name(), slot) for slot in launcher.worker_pids(store)}
    return max(1, len(live))


def epoch_ended(store: Store, run_id: int) -> None:
    """The recorder's hook at each epoch's end: when the run is a sweep trial's, report the
    objective of every epoch all its needed runs have finished, and prune the trial when the
    pruner says so. A failure here is recorded in the run's summary and never ends training."""
    try:
        comparison = store.comparison(store.run(run_id)["comparison_id"])
        if comparison["sweep_id"] is None:
            return
        _report_epochs(store, comparison)
    except Exception as e:
        traceback.print_exc()
        with contextlib.suppress(Exception):
            store.merge_summary(run_id, sweep_error=f"{type(e).__name__}: {e}"[:500])


def _report_epochs(store: Store, comparison: dict):
    sweep = store.sweep(comparison["sweep_id"])
    needed = OBJECTIVE_PRECISIONS[sweep["objective"]]
    runs = {r["precision"]: r for r in comparison["runs"]}
    curves = {
        p: {e["epoch"]: e["val_accuracy"] for e in store.epoch_metrics(runs[p]["id"])}
        for p in needed
    }
    reason = None
    with _locked(store, sweep["id"]):
        study_ = _load_study(store, sweep)
        trial = _trial(study_, comparison["trial_number"])
        if trial.state != TrialState.RUNNING:
            return  # told already (pruned, or failed)
        live = optuna.trial.Trial(study_, trial._trial_id)
        epochs = sorted(set.intersection(*(set(c) for c in curves.values())))
        new = [
            e
            for e in epochs
            if e not in trial.intermediate_values and all(curves[p][e] is not None for p in needed)
        ]
        for epoch in new:
            accuracies = {p: curves[p][epoch] for p in needed}
            live.report(objective_value(sweep["objective"], accuracies), epoch)
        if new and sweep["prune"] and sweep["state"] == "running" and live.should_prune():
            reason = _pruned_reason(study_, sweep, _trial(study_, trial.number), new[-1])
            live.set_user_attr("reason", reason)
            _tell(study_, trial.number, state=TrialState.PRUNED)
    if reason:
        store.cancel_comparison(comparison["id"])
        for run in comparison["runs"]:
            store.merge_summary(run["id"], sweep_pruned=reason)


def _pruned_reason(study_, sweep: dict, trial, epoch: int) -> str:
    """Why the median pruner stopped a trial, in the numbers it compared."""
    maximize = sweep["direction"] == "maximize"
    reached = [v for step, v in trial.intermediate_values.items() if step <= epoch]
    best = max(reached) if maximize else min(reached)
    completed = [
        t.intermediate_values[epoch]
        for t in study_.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if epoch in t.intermediate_values
    ]
    return (
        f"Pruned after epoch {epoch + 1}: its best {sweep['objective']} so far, {best:.4f}, is "
        f"{'below' if maximize else 'above'} the median of the completed trials at that epoch, "
        f"{float(np.median(completed)):.4f}."
    )


def run_ended(store: Store, run_id: int) -> None:
    """The worker's hook after each run: advance the run's sweep, when it is a trial's. A
    failure is logged; the supervisor advances the sweep again later."""
    try:
        comparison = store.comparison(store.run(run_id)["comparison_id"])
        if comparison["sweep_id"] is not None:
            advance(store, comparison["sweep_id"])
    except Exception:
        traceback.print_exc()


def advance_running(store: Store) -> None:
    """Advance every running sweep (the supervisor's hook): a trial whose worker was killed is
    failed and the sweep goes on. A sweep that cannot advance keeps the reason in its error
    (and counts as stalled: launcher.work_active) until it advances again or is resumed."""
    for sweep in store.sweeps():
        if sweep["state"] != "running":
            continue
        try:
            advance(store, sweep["id"])
        except Exception as e:
            print(f"sweep {sweep['id']} did not advance: {e}", file=sys.stderr)
            store.set_sweep_state(sweep["id"], "running", f"{type(e).__name__}: {e}"[:500])
            continue
        if sweep["error"] and store.sweep(sweep["id"])["state"] == "running":
            store.set_sweep_state(sweep["id"], "running")  # it advanced: the error is past


def cancel_sweep(store: Store, sweep_id) -> None:
    """Stop a running sweep: its active trials' runs are cancelled (their trials fail) and no
    trial is asked until it is resumed."""
    sweep = store.sweep(sweep_id)
    with _locked(store, sweep["id"]):
        sweep = store.sweep(sweep["id"])
        if sweep["state"] != "running":
            raise StoreError(
                f"Sweep {sweep['id']} is {sweep['state']}: there is nothing to cancel."
            )
        store.set_sweep_state(sweep["id"], "cancelled")
        for comparison in store.sweep_comparisons(sweep["id"]).values():
            store.cancel_comparison(comparison["id"])
    advance(store, sweep["id"])  # tells the trials whose runs ended; the rest when they stop


def resume_sweep(store: Store, sweep_id) -> None:
    """Run a cancelled, failed or stalled sweep on: the trials told so far count, new ones are
    asked until it has its number of trials."""
    sweep = store.sweep(sweep_id)
    with _locked(store, sweep["id"]):
        sweep = store.sweep(sweep["id"])
        if sweep["state"] == "complete":
            raise StoreError(
                f"Sweep {sweep['id']} is complete: its {sweep['trials']} trials all ran."
            )
        store.set_sweep_state(sweep["id"], "running")
    advance(store, sweep["id"])
    launcher.ensure_worker(store)
    launcher.ensure_supervisor(store)


# -- reading -----------------------------------------------------------------------------


def trial_state(trial, comparison: dict | None) -> str:
    """One of TRIAL_STATES: Optuna's finished states, or what the trial's runs are doing."""
    finished = {
        TrialState.COMPLETE: "complete",
        TrialState.PRUNED: "pruned",
        TrialState.FAIL: "failed",
    }
    if trial.state in finished:
        return finished[trial.state]
    if comparison is None or all(r["status"] == "queued" for r in comparison["runs"]):
        return "queued"
    return "running"


def _accuracies(store: Store, runs: list) -> dict:
    """bf16 and fp8 validation accuracy (latest epoch) and test accuracy, by precision."""
    values = {}
    for run in runs:
        if run["precision"] not in ("bf16", "fp8"):
            continue
        epochs = store.epoch_metrics(run["id"])
        values[f"{run['precision']}_val_accuracy"] = epochs[-1]["val_accuracy"] if epochs else None
        values[f"{run['precision']}_test_accuracy"] = run["test_accuracy"]
    return values


def best_trial(study_, direction: str):
    """The completed trial with the best value (the earliest among equals), or None."""
    completed = study_.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        return None
    sign = -1 if direction == "maximize" else 1
    return min(completed, key=lambda t: (sign * t.value, t.number))


def trial_rows(store: Store, sweep_id) -> list[dict]:
    """Every asked trial, for tables and figures: number, state, params, value (a pruned
    trial's is the last it reported, as Optuna keeps it), comparison_id, bf16 and fp8
    validation (latest epoch) and test accuracy, their fp8 − bf16 differences, reason."""
    sweep = store.sweep(sweep_id)
    study_ = _load_study(store, sweep)
    comparisons = store.sweep_comparisons(sweep["id"])
    rows = []
    for trial in study_.get_trials(deepcopy=False):
        comparison = comparisons.get(trial.number)
        accuracies = {
            f"{p}_{split}_accuracy": None for p in ("bf16", "fp8") for split in ("val", "test")
        }
        if comparison is not None:
            accuracies.update(_accuracies(store, comparison["runs"]))
        rows.append(
            {
                "number": trial.number,
                "state": trial_state(trial, comparison),
                "params": dict(trial.params),
                "value": trial.value,
                "comparison_id": comparison["id"] if comparison else None,
                **accuracies,
                "fp8_minus_bf16": _difference(accuracies, "val"),
                "fp8_minus_bf16_test": _difference(accuracies, "test"),
                "reason": trial.user_attrs.get("reason"),
            }
        )
    return rows


def _difference(accuracies: dict, split: str) -> float | None:
    fp8, bf16 = accuracies[f"fp8_{split}_accuracy"], accuracies[f"bf16_{split}_accuracy"]
    return None if fp8 is None or bf16 is None else fp8 - bf16


def sweep_record(store: Store, sweep_id) -> dict:
    """The sweep as `python -m fp8demo sweeps SWEEP --json` prints it."""
    sweep = store.sweep(sweep_id)
    best = best_trial(_load_study(store, sweep), sweep["direction"])
    return {
        "id": sweep["id"],
        "objective": sweep["objective"],
        "direction": sweep["direction"],
        "state": sweep["state"],
        "best_trial": best.number if best else None,
        "trials": [
            {key: row[key] for key in ("number", "state", "params", "value", "comparison_id")}
            for row in trial_rows(store, sweep["id"])
        ],
    }


def sweeps(store: Store) -> list[dict]:
    """Every sweep, newest first: id, label, objective, direction, sampler, state,
    trials_done (told) of trials, best_trial and best_value, created_at, error."""
    listed = []
    for sweep in store.sweeps():
        try:
            study_ = _load_study(store, sweep)
            done = len([t for t in study_.get_trials(deepcopy=False) if t.state.is_finished()])
            best = best_trial(study_, sweep["direction"])
        except StoreError:  # its study is gone; the row still says what it was
            done, best = 0, None
        listed.append(
            {
                "id": sweep["id"],
                "label": sweep["label"],
                "objective": sweep["objective"],
                "direction": sweep["direction"],
                "sampler": sweep["sampler"],
                "state": sweep["state"],
                "trials_done": done,
                "trials": sweep["trials"],
                "best_trial": best.number if best else None,
                "best_value": best.value if best else None,
                "created_at": sweep["created_at"],
                "error": sweep["error"],
            }
        )
    return listed


def active_runs(store: Store, sweep_id) -> list[dict]:
    """The queued and running runs of a sweep's trials (for progress lines)."""
    return [
        run
        for comparison in store.sweep_comparisons(sweep_id).values()
        for run in comparison["runs"]
        if run["status"] in ACTIVE
    ]
