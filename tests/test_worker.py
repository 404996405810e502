"""The training process: queue order, SIGKILL → interrupted, cancel → cancelled."""

import dataclasses
import os
import signal
import time

import pytest
from conftest import SLOW_RUN, TINY_RUN, all_runs_ended, backend, wait_for

from fp8demo import device, launcher, report
from fp8demo.config import TrainConfig
from fp8demo.store import Store

# On SQLite: the queue's claims on PostgreSQL are tested in test_pool and test_postgres_hosts.


def test_killed_worker_marks_run_interrupted_and_queue_goes_on(home):
    store = Store(home)
    slow = launcher.launch(SLOW_RUN, store)
    tiny = launcher.launch(TINY_RUN, store)
    slow_run = store.runs(slow)[0]["id"]
    wait_for(lambda: store.run(slow_run)["step"] >= 20, 240, "the slow run to train")
    pid = store.run(slow_run)["worker_pid"]
    os.kill(pid, signal.SIGKILL)
    # Nobody watches: the supervisor the launch started reaps it.
    wait_for(lambda: store.run(slow_run)["status"] != "running", 20, "the killed run to be reaped")
    run = store.run(slow_run)
    assert run["status"] == "interrupted"
    assert f"pid {pid}" in run["error"]
    kept = store.step_metrics(slow_run)
    assert len(kept["step"]) >= 10  # partial curves are kept
    # The next queued run still runs, in a fresh worker.
    tiny_run = store.runs(tiny)[0]["id"]
    wait_for(lambda: all_runs_ended(store, (tiny,)), 240, "the next run")
    assert store.run(tiny_run)["status"] == "finished", store.run(tiny_run)["error"]
    assert store.run(tiny_run)["worker_pid"] != pid


def test_cancel_running_and_queued_runs(home):
    store = Store(home)
    comparison = launcher.launch(dataclasses.replace(SLOW_RUN, precisions=("bf16", "fp8")), store)
    first, second = [r["id"] for r in store.runs(comparison)]
    wait_for(lambda: store.run(first)["step"] >= 5, 240, "training to start")
    store.cancel_comparison(comparison)
    assert store.run(second)["status"] == "cancelled"  # queued: cancelled at once
    wait_for(lambda: store.run(first)["status"] != "running", 30, "the running run to stop")
    run = store.run(first)
    assert run["status"] == "cancelled"
    assert run["step"] < run["total_steps"]
    # The worker leaves when the queue is empty.
    wait_for(lambda: launcher.worker_pid(store) is None, 30, "the worker to exit")


def test_repeats_over_seeds_share_a_group_and_give_mean_and_std(home):
    store = Store(home)
    # No probe: the repeats' statistics read test accuracies only.
    config = TrainConfig(
        subset=64,
        vocab_size=800,
        seq_len=32,
        epochs=1,
        precisions=("bf16", "fp8"),
        ptq=False,
        probe_every=0,
    )
    ids = launcher.launch_repeats(config, 2, store, label="noise")
    assert [store.comparison(i)["config"].seed for i in ids] == [42, 43]
    assert [c["id"] for c in store.group(ids[0])] == ids
    wait_for(lambda: all_runs_ended(store, ids), 300, "both seeds to train")
    comparisons = store.group(ids[0])
    assert all(r["status"] == "finished" for c in comparisons for r in c["runs"])
    stats = report.repeat_statistics(comparisons)
    bf16 = [r["test_accuracy"] for c in comparisons for r in c["runs"] if r["precision"] == "bf16"]
    fp8 = [r["test_accuracy"] for c in comparisons for r in c["runs"] if r["precision"] == "fp8"]
    import numpy as np

    assert stats["bf16"]["n"] == 2 and np.isclose(stats["bf16"]["mean"], np.mean(bf16))
    assert np.isclose(stats["bf16"]["std"], np.std(bf16, ddof=1))
    assert np.isclose(stats["fp8 − bf16"]["mean"], np.mean(np.subtract(fp8, bf16)))


def test_data_parallel_on_two_cpu_devices(home, monkeypatch):
    """XLA's host platform split in two devices stands in for two GPUs (on a GPU machine the
    runs use its GPUs instead, whatever their number). That its metrics are single-device
    training's is the next test's (on splits that do not split evenly, the harder case)."""
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    store = Store(home)
    # fp8 alone: its sharded float8 variables, probe and compiled step are what can break.
    config = TrainConfig(
        subset=256, vocab_size=800, seq_len=48, epochs=1, precisions=("fp8",), data_parallel=True
    )
    parallel = launcher.launch(config, store)
    wait_for(lambda: all_runs_ended(store, (parallel,)), 400, "the data-parallel comparison")
    (run,) = store.runs(parallel)
    assert run["status"] == "finished", run["error"]
    if backend() == "cpu":
        assert run["summary"]["devices"] == ["cpu:0", "cpu:1"]  # both devices used
        assert run["device"].startswith("CPU, ")  # its label: "CPU, 2 cores"
    else:  # every GPU of this machine, named as the sidebar names them
        import jax

        assert run["summary"]["devices"] == [str(d) for d in jax.devices()]
        assert run["device"] == device.describe()["label"]
    assert "probe_error" not in run["summary"]  # the probe runs on sharded variables too
    # Probed before the first and after the last step, every float8 layer (8: four attention
    # projections, two feed-forward, the dense layer and the classifier).
    layers = [layer["name"] for layer in run["summary"]["fp8_layers"]]
    assert len(layers) == 8 and "classifier" in layers
    assert len(store.fp8_probe(run["id"])[0]) == 2
    found = run["summary"]["compiled_step"]  # the sharded step is read back too
    assert "error" not in found and found["matmuls"] > 0 and found["float8_values"] > 0
    assert 0.0 <= run["test_accuracy"] <= 1.0 and run["test_loss"] > 0


def small_aclimdb(source, target, train: int, test: int):
    """An aclImdb folder with the first `train` and `test` real reviews of each split, about
    half of each class."""
    import shutil

    for split, n in (("train", train), ("test", test)):
        for cls, count in (("neg", n - n // 2), ("pos", n // 2)):
            (target / split / cls).mkdir(parents=True)
            for name in sorted(os.listdir(source / split / cls))[:count]:
                shutil.copy(source / split / cls / name, target / split / cls / name)
    return target


def test_data_parallel_evaluation_of_splits_that_do_not_split_over_the_devices(
    home, imdb_folder, tmp_path, monkeypatch
):
    """Validation and test splits of odd size on two devices: their last batches are padded
    and weighted, and the metrics are those of single-device evaluation. A training split of
    odd size is refused in plain words."""
    import numpy as np

    from fp8demo import model as model_lib
    from fp8demo import post_training, tokenizer
    from fp8demo.predict import load_run

    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    store = Store(home)
    # 55 training reviews: the last 20 % (11) validate, 44 train (batches of 32 and 12).
    folder = small_aclimdb(imdb_folder, tmp_path / "aclImdb", train=55, test=33)
    config = TrainConfig(
        data=str(folder),
        vocab_size=800,
        seq_len=48,
        epochs=1,
        precisions=("bf16",),
        vocab_method="fast",
        data_parallel=True,
    )
    uneven = launcher.launch(config, store)
    odd_training = launcher.launch(dataclasses.replace(config, data="", subset=63), store)
    wait_for(lambda: all_runs_ended(store, (uneven, odd_training)), 400, "both comparisons")

    run = store.runs(uneven)[0]
    assert run["status"] == "finished", run["error"]
    assert run["summary"]["data"]["sizes"] == {"train": 44, "validation": 11, "test": 33}
    # Its post-training quantization (here in the test's process, on one device, unless the
    # worker that trained it was first: then its results are read).
    assert set(post_training.evaluate_run(store, run["id"])) == {"int8", "int4"}
    # The saved weights evaluated here, on one device, without padding.
    prepared = tokenizer.prepare(store.comparison(uneven)["config"], home)
    model = model_lib.compile(load_run(store, run["id"]).model, config)

    def bf16_rounding(x, y):
        """How far the metrics of (x, y) may move when each review's probability rounds to a
        neighbouring bfloat16: the bf16 head's output is one rounding of a float32 sum whose
        order depends on the batch shape (each device's half of a padded batch against one
        device's whole batches), so another shape may land one ulp (2^-7 of a power of two)
        away: 2e-4 of the test loss on an Intel CPU was one review rounded so. A
        review's loss then moves by ulp / p (ulp / (1 - p) for a negative), the mean by the
        mean of those; its prediction flips only if p is within one ulp of 0.5. A padded or
        mis-weighted review moves accuracy by a whole review instead."""
        p = model.predict(x, verbose=0)[:, 0].astype("float64")
        ulp = 2.0 ** (np.floor(np.log2(np.maximum(p, 1e-30))) - 7)
        losses = np.where(y > 0.5, ulp / np.maximum(p, 1e-7), ulp / np.maximum(1 - p, 1e-7))
        return losses.mean(), np.sum(np.abs(p - 0.5) <= ulp) / len(y) + 1e-6

    test_loss, test_accuracy = model.evaluate(prepared.x_test, prepared.y_test, verbose=0)
    loss_slack, accuracy_slack = bf16_rounding(prepared.x_test, prepared.y_test)
    assert abs(run["test_loss"] - test_loss) <= loss_slack
    assert abs(run["test_accuracy"] - test_accuracy) <= accuracy_slack
    val_loss, val_accuracy = model.evaluate(prepared.x_val, prepared.y_val, verbose=0)
    loss_slack, accuracy_slack = bf16_rounding(prepared.x_val, prepared.y_val)
    epoch = store.epoch_metrics(run["id"])[-1]
    assert abs(epoch["val_loss"] - val_loss) <= loss_slack
    assert abs(epoch["val_accuracy"] - val_accuracy) <= accuracy_slack

    refused = store.runs(odd_training)[0]
    assert refused["status"] == "failed"
    assert refused["error"] == (
        "Data-parallel training on 2 devices needs a training split divisible by 2, so that "
        "its last batch splits evenly over them; this one holds 63 reviews. Choose a subset "
        "(reviews per split) divisible by 2."
    )


def cancel_on_phase(store, run_id, phase, timeout=240) -> float:
    """Request a cancel as soon as the run reports `phase`; returns when it was asked."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = store.run(run_id)
        if run["phase"].startswith(phase):
            store.request_cancel(run_id)
            return time.time()
        assert run["status"] in ("queued", "running"), f"{run['status']} before '{phase}'"
        time.sleep(0.02)
    raise AssertionError(f"the run never reached '{phase}'")


# Evaluating 3,000 test reviews of 200 tokens lasts a few seconds here: long enough to be
# caught; the cancel is checked every 0.5 s inside it and at every phase change.
@pytest.mark.parametrize("phase", ["compiling", "evaluating"])
def test_cancel_while_compiling_or_evaluating_ends_the_run_promptly(home, phase):
    store = Store(home)
    config = TrainConfig(
        subset=3000,
        vocab_size=800,
        seq_len=200,
        epochs=1,
        precisions=("fp8",),
        ptq=False,
        vocab_method="fast",
        probe_every=0,  # the probe's compilation would only lengthen the phase waited out
    )
    run_id = store.runs(launcher.launch(config, store))[0]["id"]
    asked = cancel_on_phase(store, run_id, phase)
    wait_for(lambda: store.run(run_id)["status"] != "running", 60, "the run to stop")
    run = store.run(run_id)
    assert run["status"] == "cancelled", run["error"]
    # The steps and the missing accuracy below show where it stopped; the time bound only
    # catches a run that went on to its end (generous: a loaded CPU compiles slowly).
    assert run["finished_at"] - asked < 60
    assert run["test_accuracy"] is None  # no result from a cancelled evaluation
    if phase == "compiling":
        assert run["step"] <= 1  # seen at the end of the first (compiling) step
    else:
        assert run["step"] == run["total_steps"]
