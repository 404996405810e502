"""Faults a live demo must survive: failures end the run clearly, concurrent launches queue."""

import dataclasses
import threading

import pytest

from fp8demo import worker
from fp8demo.config import TrainConfig
from fp8demo.store import Store
from test_worker import wait_for

TINY = TrainConfig(subset=64, vocab_size=800, seq_len=32, epochs=1, precisions=("bf16",), ptq=False)


def test_a_failing_data_read_marks_the_run_failed_in_plain_words(home, tmp_path):
    store = Store(home)
    gone = tmp_path / "moved-away"
    cid, (run_id,) = store.create_comparison(dataclasses.replace(TINY, data=str(gone)))
    worker.execute(store, store.claim_next_run(0))
    run = store.run(run_id)
    assert run["status"] == "failed"
    assert run["error"] == (f"The IMDB path {gone} does not exist. Name the aclImdb_v1.tar.gz "
                            "archive or the folder it was extracted to.")
    assert "Traceback" in run["summary"]["traceback"]  # the details stay available


def test_a_nan_loss_stops_training_with_the_step_it_diverged_at(home):
    import time

    from fp8demo.training import make_recorder

    store = Store(home)
    cid, (run_id,) = store.create_comparison(TINY)
    recorder = make_recorder(store, run_id, n_train=64, batch_size=32, epochs=1)
    recorder.started = time.time()
    recorder.on_train_batch_end(0, {"loss": 0.69, "accuracy": 0.5})
    recorder.last_flush = 0.0  # due for a write
    with pytest.raises(FloatingPointError) as raised:
        recorder.on_train_batch_end(1, {"loss": float("nan"), "accuracy": 0.5})
    assert str(raised.value) == ("The loss became nan at step 2 (epoch 1): training diverged. "
                                 "Lower the learning rate or use a smaller model.")
    assert worker.plain_error(raised.value) == str(raised.value)
    assert list(store.step_metrics(run_id)["step"]) == [1.0, 2.0]  # the curve up to it is kept


def test_two_launches_at_the_same_moment_queue_and_never_overlap(home):
    store = Store(home)
    barrier = threading.Barrier(2)
    launched = []

    def launch(seed):
        barrier.wait()
        launched.append(worker.launch(dataclasses.replace(TINY, seed=seed), Store(home)))

    threads = [threading.Thread(target=launch, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(launched) == [1, 2]
    assert len(store.runs()) == 2  # no duplicate or lost rows
    busy = []
    wait_for(lambda: busy.append(sum(r["status"] == "running" for r in store.runs())) or
             worker.supervise(store) is not None and
             all(r["status"] in ("finished", "failed") for r in store.runs()), 300, "both runs")
    assert max(busy) <= 1  # never two trainings at once
    runs = store.runs()
    assert [r["status"] for r in runs] == ["finished", "finished"]
    first, second = sorted(runs, key=lambda r: r["started_at"])
    assert first["finished_at"] <= second["started_at"]


def test_a_launch_that_would_not_fit_is_refused_with_the_estimate(home, monkeypatch):
    from fp8demo.config import ConfigError, estimate_memory_bytes

    monkeypatch.setenv("FP8DEMO_MAX_MEMORY_GB", "16")
    huge = TrainConfig(vocab_size=1_000_000, hidden_dim=8192, heads=8)
    needed = estimate_memory_bytes(huge) / 2**30
    assert needed > 100  # 8 billion embedding weights alone are 128 GiB with Adam
    with pytest.raises(ConfigError) as refused:
        worker.launch(huge, Store(home))
    assert str(refused.value) == (
        f"This configuration needs about {needed:,.1f} GiB of memory (weights, Adam state and "
        "activations of one batch), more than the 16.0 GiB allowed here. Use a smaller "
        "vocabulary, hidden size, sequence length or batch size (the limit is FP8DEMO_MAX_MEMORY_GB).")
    assert Store(home).runs() == []  # nothing queued
    assert estimate_memory_bytes(TrainConfig()) < 2**30  # the example fits anywhere
