"""Faults a live demo must survive: failures end the run clearly, concurrent launches queue."""

import dataclasses
import threading

import pytest
from conftest import wait_for

from fp8demo import launcher, worker
from fp8demo.config import TrainConfig
from fp8demo.store import Store

# On SQLite: how a fault ends a run is the same SQL on PostgreSQL (tested in test_store).

TINY = TrainConfig(subset=64, vocab_size=800, seq_len=32, epochs=1, precisions=("bf16",), ptq=False)


def test_a_failing_data_read_marks_the_run_failed_in_plain_words(home, tmp_path):
    store = Store(home)
    gone = tmp_path / "moved-away"
    cid, (run_id,) = store.create_comparison(dataclasses.replace(TINY, data=str(gone)))
    worker.execute(store, store.claim_next_run(0))
    run = store.run(run_id)
    assert run["status"] == "failed"
    assert run["error"] == (
        f"The IMDB path {gone} does not exist. Name the aclImdb_v1.tar.gz "
        "archive or the folder it was extracted to."
    )
    assert "Traceback" in run["summary"]["traceback"]  # the details stay available


def test_a_nan_loss_stops_training_with_the_step_it_diverged_at(home):
    import time

    from fp8demo.recorder import Recorder

    store = Store(home)
    cid, (run_id,) = store.create_comparison(TINY)
    recorder = Recorder(store, run_id, n_train=64, batch_size=32, epochs=1)
    recorder.started = time.time()
    recorder.on_train_batch_end(0, {"loss": 0.69, "accuracy": 0.5})
    recorder.last_flush = 0.0  # due for a write
    with pytest.raises(FloatingPointError) as raised:
        recorder.on_train_batch_end(1, {"loss": float("nan"), "accuracy": 0.5})
    assert str(raised.value) == (
        "The loss became nan at step 2 (epoch 1): training diverged. "
        "Lower the learning rate or use a smaller model."
    )
    assert worker.plain_error(raised.value) == str(raised.value)
    assert list(store.step_metrics(run_id)["step"]) == [1.0, 2.0]  # the curve up to it is kept


def test_two_launches_at_the_same_moment_queue_and_never_overlap(home):
    store = Store(home)
    barrier = threading.Barrier(2)
    launched = []

    def launch(seed):
        barrier.wait()
        launched.append(launcher.launch(dataclasses.replace(TINY, seed=seed), Store(home)))

    threads = [threading.Thread(target=launch, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(launched) == [1, 2]
    assert len(store.runs()) == 2  # no duplicate or lost rows
    busy = []
    wait_for(
        lambda: (
            busy.append(sum(r["status"] == "running" for r in store.runs()))
            or all(r["status"] in ("finished", "failed") for r in store.runs())
        ),
        300,
        "both runs",
    )
    assert max(busy) <= 1  # never two trainings at once
    runs = store.runs()
    assert [r["status"] for r in runs] == ["finished", "finished"]
    first, second = sorted(runs, key=lambda r: r["started_at"])
    assert first["finished_at"] <= second["started_at"]


def test_a_launch_that_would_not_fit_is_refused_with_the_estimate(home, monkeypatch):
    from fp8demo.config import ConfigError
    from fp8demo.resources import estimate_memory_bytes

    monkeypatch.setenv("FP8DEMO_MAX_MEMORY_GB", "16")
    huge = TrainConfig(vocab_size=1_000_000, hidden_dim=8192, heads=8)
    needed = estimate_memory_bytes(huge) / 2**30
    assert needed > 100  # 8 billion embedding weights alone are 128 GiB with Adam
    with pytest.raises(ConfigError) as refused:
        launcher.launch(huge, Store(home))
    assert str(refused.value).startswith(
        f"This configuration needs about {needed:,.1f} GiB of memory (weights, Adam state and "
        "activations of one batch), more than the 16.0 GiB allowed here. Use a smaller "
        "vocabulary, hidden size, sequence length or batch size "
        "(the limit is FP8DEMO_MAX_MEMORY_GB). "
    )
    assert "Not enough disk space" in str(refused.value)  # the weights alone are 128 GB
    assert Store(home).runs() == []  # nothing queued
    assert estimate_memory_bytes(TrainConfig()) < 2**30  # the example fits anywhere


def test_a_launch_that_would_fill_the_disk_is_refused(home, monkeypatch):
    import shutil

    from fp8demo.config import ConfigError

    Store(home)
    free_mb = shutil.disk_usage(home).free / 2**20
    monkeypatch.setenv("FP8DEMO_MIN_FREE_MB", str(free_mb + 1024))  # keep more than there is
    with pytest.raises(ConfigError) as refused:
        launcher.launch(TINY, Store(home))
    message = str(refused.value)
    assert message.startswith(f"Not enough disk space in {home}: this launch writes up to about ")
    assert message.endswith(
        "must stay free (FP8DEMO_MIN_FREE_MB). Delete old comparisons on "
        "Results, free some space, or set FP8DEMO_HOME to another disk."
    )
    assert Store(home).runs() == []
    monkeypatch.delenv("FP8DEMO_MIN_FREE_MB")
    assert launcher.launch(dataclasses.replace(TINY, precisions=("bf16",)), Store(home))
    Store(home).cancel_comparison(1)


def test_disk_full_while_saving_fails_the_run_clearly_and_keeps_the_store(home):
    """The training process may write files of at most 2 MB (RLIMIT_FSIZE: the kernel refuses
    larger writes with EFBIG, as a full disk refuses with ENOSPC). Metrics, caches and the
    store fit; the 8 MB weights file does not."""
    import os
    import sqlite3
    import subprocess
    import sys

    store = Store(home)
    config = dataclasses.replace(TINY, vocab_size=20_000)  # 640k embedding weights
    cid, (run_id,) = store.create_comparison(config)
    # `python -m fp8demo worker` with the limit set first (in the child itself: a preexec_fn
    # would fork this multithreaded process).
    limited_worker = (
        "import resource, runpy, sys; "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({2 * 2**20}, {2 * 2**20})); "
        "sys.argv = ['fp8demo', 'worker']; "
        "runpy.run_module('fp8demo', run_name='__main__')"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "-c", limited_worker],
        env=dict(os.environ, PYTHONPATH=root),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    run = store.run(run_id)
    assert run["status"] == "failed"
    assert run["error"].startswith(f"Out of disk space in {home} while saving (")
    assert "a write failed (File too large" in run["error"]
    assert run["error"].endswith(
        "The metrics recorded so far are kept. Free some space (or "
        "delete old comparisons on Results) and launch again."
    )
    assert len(store.step_metrics(run_id)["step"]) == run["step"] > 0  # the curves are kept
    assert not store.run_dir(run_id).exists()  # no half-written weights
    if store.backend == "sqlite":  # the file on the full disk is intact (a server's is its own)
        with sqlite3.connect(store.path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
