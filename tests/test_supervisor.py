"""The supervisor process: progress that waits for nobody (no page open, no CLI waiting)."""

import os
import signal
import subprocess
import sys

from conftest import wait_for

from fp8demo import launcher, supervisor, sweep
from fp8demo.config import TrainConfig
from fp8demo.store import Store

# One bf16 run per trial, a few seconds each on a CPU, with steps enough to be caught training.
TRIAL = TrainConfig(
    subset=400,
    batch_size=8,
    vocab_size=800,
    seq_len=32,
    epochs=2,
    precisions=("bf16",),
    ptq=False,
    probe_every=0,
    vocab_method="fast",
    dropout_masks="fast",
)


def dead_pid() -> int:
    """The pid of a process that has exited (and been waited for)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_supervise_once_reaps_a_dead_workers_run_with_a_low_disk_note(home, monkeypatch):
    store = Store(home)
    _, (run_id,) = store.create_comparison(TRIAL)
    store.claim_next_run(dead_pid())
    assert launcher.work_active(store)
    monkeypatch.setenv("FP8DEMO_MIN_FREE_MB", str(10**9))  # the disk counts as nearly full
    assert supervisor.supervise_once(store) == [run_id]
    run = store.run(run_id)
    assert run["status"] == "interrupted"
    assert f"The disk holding {home} has only " in run["error"]
    assert not launcher.work_active(store)
    assert launcher.ensure_supervisor(store) is None  # nothing to supervise: none started
    assert launcher.worker_pids(store) == {}  # and no worker for an empty queue


def test_a_sweep_whose_worker_is_killed_completes_with_nobody_watching(home):
    """The worker training trial 0 is killed; nothing but the supervisor that create_sweep
    started reaps its run, fails the trial, asks the next ones and restarts the workers:
    this test only reads the store."""
    store = Store(home)
    request = sweep.SweepRequest(
        TRIAL, {"lr": "1e-3,2e-3,3e-3"}, 3, "bf16_accuracy", sampler="grid", prune=False
    )
    sweep_id = sweep.create_sweep(store, request)

    def training_trial_0():
        comparison = store.sweep_comparisons(sweep_id).get(0)
        run = comparison["runs"][0] if comparison else None
        return run if run and run["status"] == "running" and run["step"] > 0 else None

    killed = wait_for(training_trial_0, 300, "trial 0 to train")
    os.kill(killed["worker_pid"], signal.SIGKILL)
    wait_for(lambda: store.sweep(sweep_id)["state"] != "running", 300, "the sweep to end")

    record = sweep.sweep_record(store, sweep_id)
    assert record["state"] == "complete"
    assert [t["state"] for t in record["trials"]] == ["failed", "complete", "complete"]
    lost = store.run(killed["id"])
    assert lost["status"] == "interrupted" and f"pid {killed['worker_pid']}" in lost["error"]
    reason = sweep.trial_rows(store, sweep_id)[0]["reason"]
    assert reason.startswith(f"Run {killed['id']} (bf16) interrupted: ")
    # Nothing active: the supervisor and the workers leave by themselves.
    wait_for(lambda: launcher.supervisor_pid(store) is None, 60, "the supervisor to leave")
    wait_for(lambda: not launcher.worker_pids(store), 60, "the workers to leave")
