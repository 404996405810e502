"""Sweeps: search-space specs, grids, and real sweeps of comparisons driven by real workers."""

import json
import os
import signal

import pytest
from conftest import wait_for
from optuna.trial import TrialState
from test_cli import cli

from fp8demo import sweep
from fp8demo.config import ConfigError, TrainConfig
from fp8demo.store import Store, StoreError

# On SQLite: a study stored on PostgreSQL is tested in test_postgres_hosts.

# Learns within its first epoch, in seconds per run on a CPU: 24 bf16 runs (lr 1e-3 and 3e-3,
# seeds 20-31) reached test accuracies of 0.63-0.70. At vocabulary 1000 and 64 tokens it was
# 0.55-0.62, too near chance (0.5) for a threshold between learners and non-learners.
LEARNS = dict(
    subset=2000,
    batch_size=8,
    vocab_size=2000,
    seq_len=128,
    epochs=2,
    ptq=False,
    probe_every=0,
    vocab_method="fast",
    dropout_masks="fast",
)


# -- the search space (no training) --------------------------------------------------------


def test_specs_parse_into_choices_and_ranges_of_the_settings_type():
    space = sweep.parse_space(["heads=1,2,4", "lr=1e-4:1e-2:log", "hidden_dim=32:256"])
    assert space["heads"].choices == (1, 2, 4)
    assert (space["lr"].low, space["lr"].high, space["lr"].log, space["lr"].whole) == (
        1e-4,
        1e-2,
        True,
        False,
    )
    assert (space["hidden_dim"].low, space["hidden_dim"].high) == (32, 256)
    assert space["hidden_dim"].whole and not space["hidden_dim"].log
    assert sweep.parse_space({"quantize_head": "true,false"})["quantize_head"].choices == (
        True,
        False,
    )
    # A dict and a list of NAME=SPEC say the same.
    assert sweep.parse_space({"lr": "1e-4:1e-2:log"}) == {"lr": space["lr"]}


@pytest.mark.parametrize(
    "specs, message",
    [
        (["hiden_dim=32:64"], "Unknown setting 'hiden_dim' (did you mean hidden_dim?)."),
        (
            ["seed=1,2"],
            "seed cannot be searched: every trial and precision starts from the same seed, "
            "so differences are paired.",
        ),
        (["lr=1e-4:fast"], "lr must be a number, got 'fast'."),
        (["hidden_dim=32:6.5"], "hidden_dim must be a whole number, got '6.5'."),
        (
            ["lr=1e-2:1e-4"],
            "The range of lr must go from low to high: 0.01 is not below 0.0001.",
        ),
        (["dropout=0:0.5:log"], "A log range needs a low above 0: dropout starts at 0.0."),
        (["dropout=0.1,1.5"], "dropout must be in [0, 1), got 1.5."),
        (
            ["lr=1e-4:1e-2:ln"],
            "The range lr=1e-4:1e-2:ln is not LOW:HIGH or LOW:HIGH:log (log-spaced).",
        ),
        (
            ["vocab_method=a:b"],
            "vocab_method takes choices (vocab_method=keras,fast), not a range.",
        ),
        (["heads=2,2"], "heads lists 2 more than once."),
        (["lr"], "A parameter is NAME=SPEC (lr=1e-4:1e-2:log), got 'lr'."),
        ([], "Give at least one setting to search, e.g. lr=1e-4:1e-2:log."),
        (
            ["lr=1e-3,1e-2", "lr=1e-4:1e-2"],
            "lr is searched twice: give each setting once.",
        ),
    ],
)
def test_bad_specs_are_refused_with_a_sentence(specs, message):
    with pytest.raises(ConfigError) as refused:
        sweep.parse_space(specs)
    assert str(refused.value) == message


def test_every_problem_is_named_before_launch():
    problems = sweep.sweep_problems(
        sweep.SweepRequest(
            TrainConfig(precisions=("fp8",)),
            ["heads=1,2,4", "lr=0:1"],
            0,
            "fp8_minus_bf16",
            direction="upward",
            sampler="annealing",
        )
    )
    assert problems == [
        "lr must be greater than 0 (and at most 10), got 0.0.",
        "trials must be a whole number between 1 and 1000, got 0.",
        "The objective fp8_minus_bf16 reads the bf16 and fp8 runs, and the comparison trains "
        "fp8: add bf16 to its precisions.",
        "direction must be maximize or minimize, got 'upward'.",
        "Unknown sampler 'annealing': choose from grid, random, tpe.",
    ]
    # Settings invalid only together are not refused: that trial fails, the sweep goes on.
    together = sweep.SweepRequest(TrainConfig(), {"heads": "1,3"}, 2, "fp8_accuracy")
    assert sweep.sweep_problems(together) == []


def test_grid_cuts_each_range_into_enough_points():
    lr = sweep.parse_space({"lr": "1e-4:1e-2:log"})
    assert sweep.grid_space(lr, 3) == {"lr": [1e-4, 1e-3, 1e-2]}  # log-spaced, ends included
    assert sweep.grid_space(lr, 4) == {"lr": [1e-4, 0.000464159, 0.00215443, 1e-2]}
    assert sweep.grid_space(lr, 1) == {"lr": [1e-4, 1e-2]}  # at least both ends
    linear = sweep.parse_space({"dropout": "0:0.3"})
    assert sweep.grid_space(linear, 4) == {"dropout": [0.0, 0.1, 0.2, 0.3]}
    # Choices times points: 2 heads × 3 learning rates is the first grid with 5 points.
    both = sweep.parse_space({"heads": "1,2", "lr": "1e-3:3e-3"})
    assert sweep.grid_space(both, 5) == {"heads": [1, 2], "lr": [1e-3, 2e-3, 3e-3]}
    # A whole-number range holds its whole numbers at most (and log-spaced ones are rounded).
    hidden = sweep.parse_space({"hidden_dim": "32:36"})
    assert sweep.grid_space(hidden, 20) == {"hidden_dim": [32, 33, 34, 35, 36]}
    history = sweep.parse_space({"amax_history_length": "1:1024:log"})
    assert sweep.grid_space(history, 4) == {"amax_history_length": [1, 10, 102, 1024]}
    # A grid smaller than the trials asked for is refused, with its size.
    assert sweep.sweep_problems(
        sweep.SweepRequest(TrainConfig(), {"heads": "1,2,4"}, 5, "fp8_accuracy", sampler="grid")
    ) == [
        "The grid holds 3 settings, fewer than 5 trials: ask for at most 3, add choices, "
        "or search a range."
    ]
    assert sweep.sweep_problems(
        sweep.SweepRequest(
            TrainConfig(), {"hidden_dim": "32:36"}, 6, "fp8_accuracy", sampler="grid"
        )
    )


def test_bad_sweep_input_exits_2_and_queues_nothing(home):
    def refused(*args):
        done = cli("sweep", *args)
        assert done.returncode == 2 and done.stdout == ""
        return done.stderr.strip()

    objective = ["--objective", "fp8_accuracy"]
    assert refused("--param", "lr=1e-2:1e-4", "--trials", "4", *objective) == (
        "error: The range of lr must go from low to high: 0.01 is not below 0.0001."
    )
    assert refused("--param", "heads=1,2", "--trials", "x", *objective) == (
        "error: --trials must be a whole number, got 'x'."
    )
    assert refused("--param", "heads=1,2", "--trials", "2", *objective, "--prune", "maybe") == (
        "error: --prune must be true or false, got 'maybe'."
    )
    assert refused("--precision", "bf16", "--param", "heads=1,2", "--trials", "2", *objective) == (
        "error: The objective fp8_accuracy reads the fp8 runs, and the comparison trains "
        "bf16: add fp8 to its precisions."
    )
    missing = cli("sweeps", "7", "--json")
    assert missing.returncode == 2 and missing.stderr.strip() == "error: There is no sweep 7."
    store = Store(home)
    assert store.sweeps() == [] and store.runs() == []
    assert json.loads(cli("sweeps", "--json").stdout) == []


# -- real sweeps ---------------------------------------------------------------------------


def test_a_sweep_over_lr_completes_some_trials_and_prunes_those_that_cannot_learn(home):
    """Deterministic on a machine, and near it across CPUs. The grid's order is the seed's
    (Optuna's GridSampler shuffles its grid with it; seed 5 puts 1e-3 and 3e-3 first,
    asserted below). Those two learning rates learn within the first epoch; 1e-9 and 1e-8
    cannot move the weights, so their validation accuracy is the untrained model's, near
    chance. Once two trials completed,
    the median pruner compares each later trial's first epoch with their median, and stops
    both non-learners there: their bf16 run is cancelled at its first epoch's end and their
    fp8 run never starts."""
    fixed = [f"--{name.replace('_', '-')}={value}" for name, value in LEARNS.items()]
    space = ["--param", "lr=1e-3,3e-3,1e-9,1e-8", "--trials", "4", "--sampler", "grid"]
    objective = ["--objective", "bf16_accuracy", "--prune", "true"]
    done = cli("sweep", *fixed, "--seed=5", "--precision=bf16,fp8", *space, *objective)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Pruned after epoch 1: its best bf16_accuracy so far" in done.stdout

    shown = cli("sweeps", "1", "--json")
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert list(record) == ["id", "objective", "direction", "state", "best_trial", "trials"]
    assert (record["id"], record["objective"], record["direction"], record["state"]) == (
        1,
        "bf16_accuracy",
        "maximize",
        "complete",
    )
    trials = record["trials"]
    keys = ["number", "state", "params", "value", "comparison_id", "verdict"]
    assert all(list(t) == keys for t in trials)
    assert [t["params"] for t in trials] == [{"lr": lr} for lr in (1e-3, 3e-3, 1e-9, 1e-8)]
    assert [t["state"] for t in trials] == ["complete", "complete", "pruned", "pruned"]
    learned = [t["value"] for t in trials[:2]]
    assert record["best_trial"] == (0 if learned[0] >= learned[1] else 1)
    assert f"best: trial {record['best_trial']}, bf16_accuracy" in done.stdout
    assert min(learned) > 0.55 and all(t["value"] < 0.55 for t in trials[2:])

    # Each trial is one comparison, in runs, labelled and linked to its sweep and trial.
    store = Store(home)
    runs = {r["id"]: r for r in json.loads(cli("runs", "--json").stdout)}
    for t in trials:
        comparison = store.comparison(t["comparison_id"])
        assert comparison["label"] == f"sweep 1 · trial {t['number']}"
        assert (comparison["sweep_id"], comparison["trial_number"]) == (1, t["number"])
        assert comparison["config"].lr == t["params"]["lr"] and comparison["config"].seed == 5
        statuses = [runs[r["id"]]["status"] for r in comparison["runs"]]
        if t["state"] == "complete":
            assert statuses == ["finished", "finished"]
        else:  # stopped at the end of its first epoch: the fp8 run never trained
            assert statuses == ["cancelled", "cancelled"]
            bf16, fp8 = comparison["runs"]
            assert bf16["step"] == bf16["steps_per_epoch"] and fp8["step"] == 0
            assert bf16["summary"]["sweep_pruned"].startswith("Pruned after epoch 1")
    rows = sweep.trial_rows(store, 1)
    assert rows[0]["value"] == rows[0]["bf16_val_accuracy"]
    assert rows[0]["fp8_minus_bf16"] == rows[0]["fp8_val_accuracy"] - rows[0]["bf16_val_accuracy"]
    first = store.comparison(trials[0]["comparison_id"])["runs"]
    assert rows[0]["bf16_test_accuracy"] == first[0]["test_accuracy"]
    assert rows[2]["fp8_val_accuracy"] is None and rows[2]["reason"].startswith("Pruned")
    listed = json.loads(cli("sweeps", "--json").stdout)
    assert [(s["id"], s["state"], s["trials_done"], s["trials"]) for s in listed] == [
        (1, "complete", 4, 4)
    ]


def test_invalid_settings_a_killed_worker_and_a_cancel_fail_trials_not_the_sweep(home):
    """heads=3 does not divide hidden_dim 32 (that trial fails at once); the worker training
    the next trial is killed (it fails, its partial curves kept) and the sweep goes on with
    nobody watching (the supervisor process advances it; the test only reads the store); the
    one after is cancelled with the sweep, which then resumes and completes its last trial."""
    store = Store(home)
    base = TrainConfig(**LEARNS, seed=0)  # seed 0: the grid's order is heads 3, 4, 2, 1
    request = sweep.SweepRequest(
        base, {"heads": "1,2,3,4"}, 4, "fp8_minus_bf16", sampler="grid", prune=False
    )
    sweep_id = sweep.create_sweep(store, request)
    rows = sweep.trial_rows(store, sweep_id)
    assert [(r["number"], r["state"], r["params"]) for r in rows] == [
        (0, "failed", {"heads": 3}),
        (1, "queued", {"heads": 4}),
    ]
    assert rows[0]["reason"] == (
        "hidden_dim (32) must be divisible by heads (3): each attention head gets "
        "hidden_dim / heads dimensions."
    )
    assert rows[0]["comparison_id"] is None

    def training(number):
        comparison = store.sweep_comparisons(sweep_id).get(number)
        running = [r for r in comparison["runs"] if r["step"] >= 5] if comparison else []
        return running and running[0]["status"] == "running" and running[0]

    killed = wait_for(lambda: training(1), 300, "trial 1 to train")
    os.kill(killed["worker_pid"], signal.SIGKILL)
    wait_for(
        lambda: len(sweep.trial_rows(store, sweep_id)) == 3,
        60,
        "the killed trial to fail and the next to be asked",
    )
    rows = sweep.trial_rows(store, sweep_id)
    assert rows[1]["state"] == "failed"
    assert rows[1]["reason"].startswith(f"Run {killed['id']} (bf16) interrupted: ")
    assert f"pid {killed['worker_pid']}" in rows[1]["reason"]  # the store's reason, kept
    assert len(store.step_metrics(killed["id"])["step"]) >= 5  # its partial curves are kept
    assert [r["status"] for r in store.runs(rows[1]["comparison_id"])] == [
        "interrupted",
        "cancelled",
    ]

    # No page is open: the supervisor starts a worker for trial 2 (the one that trained
    # trial 1 is dead, and a worker that left before trial 2 was queued is replaced).
    cancelled = wait_for(lambda: training(2), 300, "trial 2 to train")
    sweep.cancel_sweep(store, sweep_id)
    assert store.sweep(sweep_id)["state"] == "cancelled"
    wait_for(lambda: sweep.trial_rows(store, sweep_id)[2]["state"] == "failed", 60, "the cancel")
    assert sweep.trial_rows(store, sweep_id)[2]["reason"] == "Cancelled with the sweep."
    wait_for(lambda: store.run(cancelled["id"])["status"] == "cancelled", 60, "the run to stop")
    assert len(sweep.trial_rows(store, sweep_id)) == 3  # no trial is asked while cancelled
    with pytest.raises(StoreError, match="is cancelled: there is nothing to cancel"):
        sweep.cancel_sweep(store, sweep_id)

    resumed = cli("sweeps", str(sweep_id), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    wait_for(lambda: store.sweep(sweep_id)["state"] != "running", 300, "the resumed sweep to end")
    record = sweep.sweep_record(store, sweep_id)
    assert record["state"] == "complete" and record["best_trial"] == 3
    assert [t["state"] for t in record["trials"]] == ["failed", "failed", "failed", "complete"]
    # The paired objective, reported for each epoch once both runs had it.
    last = record["trials"][3]
    bf16, fp8 = (store.epoch_metrics(r["id"]) for r in store.runs(last["comparison_id"]))
    differences = [f["val_accuracy"] - b["val_accuracy"] for b, f in zip(bf16, fp8)]
    told = sweep.study(store, sweep_id).trials[3]
    assert told.state == TrialState.COMPLETE
    assert told.intermediate_values == {0: differences[0], 1: differences[1]}
    assert last["value"] == differences[1]
    assert told.user_attrs["comparison_id"] == last["comparison_id"]
