"""The device pool: which run a worker may start, several workers training at once, a
killed worker among them, and workers of other hosts that stop sending heartbeats. The store
tests run on SQLite and on PostgreSQL (tests/postgres.py)."""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time

from conftest import SLOW_RUN, all_runs_ended, wait_for

from fp8demo import launcher, worker
from fp8demo.config import TrainConfig
from fp8demo.store import HEARTBEAT_TIMEOUT_SECONDS, Store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One small epoch per precision: the pool's behaviour, not the model's, is under test.
TINY = TrainConfig(subset=128, vocab_size=800, seq_len=32, epochs=1, ptq=False, probe_every=0)


# -- the claim rules, on a store with made-up workers ---------------------------------------


def test_side_by_side_sequential_and_data_parallel_claims(tmp_path, store_url):
    store = Store(tmp_path / "home", url=store_url)
    one_by_one, (a_bf16, a_fp8) = store.create_comparison(TrainConfig(side_by_side="off"))
    together, (b_bf16, b_fp8) = store.create_comparison(TrainConfig(side_by_side="on"))
    _, (whole,) = store.create_comparison(TrainConfig(data_parallel=True, precisions=("bf16",)))
    _, (after,) = store.create_comparison(TrainConfig(precisions=("fp8",)))
    # Decided at launch, for every worker: the setting, or for "auto" the launcher's answer
    # (by the launching host's GPUs: device.trains_side_by_side), which the store keeps.
    assert store.run(a_bf16)["summary"] == {"side_by_side": False}
    assert store.run(b_fp8)["summary"] == {"side_by_side": True}
    auto = TrainConfig()
    assert store.run(store.create_comparison(auto, side_by_side=True)[1][0])["summary"] == {
        "side_by_side": True
    }
    store.cancel_comparison(store.latest_comparison_id())

    claimed = store.claim_next_run(101, "0", "gpu-host-1")
    assert (claimed["id"], claimed["slot"], claimed["host"]) == (a_bf16, "0", "gpu-host-1")
    assert claimed["worker_pid"] == 101 and claimed["heartbeat_at"] >= claimed["started_at"]
    # a_fp8 waits for a_bf16 (one after the other); b's precisions start together.
    assert store.claim_next_run(102, "1")["id"] == b_bf16
    assert store.claim_next_run(103, "2")["id"] == b_fp8
    assert store.run(b_fp8)["host"] == socket.gethostname()
    # The data-parallel run waits for the whole pool, and the run after it waits too.
    assert store.claim_next_run(104, "3") is None
    assert not store.data_parallel_next()
    store.end_run(a_bf16, "finished")
    assert store.claim_next_run(104, "3")["id"] == a_fp8
    for run_id in (a_fp8, b_bf16, b_fp8):
        assert store.claim_next_run(105, "4") is None
        store.end_run(run_id, "finished")
    assert store.data_parallel_next()
    assert store.claim_next_run(105, "4", data_parallel_ok=False) is None  # sees one device
    parallel = store.claim_next_run(105, "4")
    assert (parallel["id"], parallel["slot"]) == (whole, "all")
    assert store.claim_next_run(106, "0") is None  # nothing starts while it runs
    store.end_run(whole, "finished")
    assert store.claim_next_run(106, "0")["id"] == after
    assert store.queued_count() == 0


def test_a_data_parallel_run_waits_for_the_runs_of_its_own_host_only(tmp_path, store_url):
    store = Store(tmp_path / "home", url=store_url)
    one = TrainConfig(precisions=("bf16",))
    _, (on_a,) = store.create_comparison(one)
    _, (whole,) = store.create_comparison(dataclasses.replace(one, data_parallel=True))
    _, (after,) = store.create_comparison(one)
    assert store.claim_next_run(101, "0", "host-a")["id"] == on_a
    assert store.claim_next_run(102, "1", "host-a") is None  # host a is busy: it waits
    assert store.data_parallel_next("host-b") and not store.data_parallel_next("host-a")
    parallel = store.claim_next_run(201, "0", "host-b")  # host b is idle: it takes it
    assert (parallel["id"], parallel["host"], parallel["slot"]) == (whole, "host-b", "all")
    assert store.claim_next_run(202, "1", "host-b") is None  # nothing else starts on host b
    store.end_run(on_a, "finished")
    assert store.claim_next_run(103, "0", "host-a")["id"] == after  # host a goes on


CLAIMER = """
import json, os, sys, time
from fp8demo.store import Store
store = Store(sys.argv[1], url=sys.argv[3])
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
claimed = []
while (run := store.claim_next_run(os.getpid())) is not None:
    claimed.append(run["id"])
    time.sleep(0.01)  # a worker trains between claims: the other one gets its turn
print(json.dumps(claimed))
"""


def test_two_processes_never_claim_the_same_run(tmp_path, store_url):
    store = Store(tmp_path / "home", url=store_url)
    queued = [
        store.create_comparison(TrainConfig(precisions=("bf16", "fp8"), side_by_side="on"))[1]
        for _ in range(30)
    ]
    go = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=ROOT)
    claimers = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(store.home), str(go), store.url],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    time.sleep(1.0)  # both waiting at the start line
    go.touch()
    first, second = (json.loads(p.communicate(timeout=120)[0]) for p in claimers)
    assert first and second, "both processes claimed runs"
    assert not set(first) & set(second)
    assert sorted(first + second) == sorted(i for ids in queued for i in ids)


# -- devices: found and shared without JAX --------------------------------------------------


SHARE = """
import json, os, sys
from fp8demo import device
taken = device.take_device_share(int(sys.argv[1]), int(sys.argv[2]))
share = [taken, sorted(os.sched_getaffinity(0)), os.environ.get("CUDA_VISIBLE_DEVICES")]
# What a worker started from this one (it inherits the share) still sees as the pool's:
device.visible_gpus.cache_clear()
pool = [list(device.visible_gpus()), device.pool_cores()]
print(json.dumps([*share, pool]))
"""


def device_share(slot: int, slots: int, gpus: str):
    env = dict(os.environ, PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES=gpus)
    done = subprocess.run(
        [sys.executable, "-c", SHARE, str(slot), str(slots)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_each_slot_takes_its_gpu_or_its_share_of_the_cores():
    cores = sorted(os.sched_getaffinity(0))
    assert device_share(1, 2, "3,5") == ["GPU 5", cores, "5", [["3", "5"], cores]]
    assert device_share(2, 2, "3,5")[0] == "GPU 3"  # more slots than GPUs: asked for
    shares = [device_share(slot, 2, "") for slot in range(2)]  # no GPU: the cores
    half = max(1, len(cores) // 2)
    assert shares[0][1] == cores[:half] and shares[1][1] == (cores[half:] or cores[-1:])
    assert all(share[3] == [[], cores] for share in shares)
    assert all(len(device_share(slot, 3 * len(cores), "")[1]) == 1 for slot in (0, 1))


def test_the_worker_command_refuses_a_bad_slot_or_pool_size():
    for flags in (["--slot", "-1"], ["--workers", "0"], ["--workers", "two"]):
        done = subprocess.run(
            [sys.executable, "-m", "fp8demo", "worker", *flags],
            env=dict(os.environ, PYTHONPATH=ROOT),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2 and "expected a whole number from" in done.stderr, flags


# -- real workers on this machine -------------------------------------------------------------


def test_two_workers_train_side_by_side_and_keep_a_sequential_comparison_in_order(home):
    """A side-by-side comparison starts the second worker itself and its runs overlap; a
    comparison that trains one after the other stays so with a worker idle beside it."""
    store = Store(home)
    together = launcher.launch(dataclasses.replace(TINY, side_by_side="on"), store)
    in_order = launcher.launch(dataclasses.replace(TINY, side_by_side="off", seed=1), store)
    # The side-by-side comparison asks for two workers.
    wait_for(lambda: len(launcher.worker_pids(store)) == 2, 60, "two workers")
    wait_for(lambda: all_runs_ended(store, (together, in_order)), 400, "both comparisons")
    runs = store.runs(together)
    for run in runs + store.runs(in_order):
        assert run["status"] == "finished", run["error"]
        assert run["host"] == socket.gethostname()
        assert run["heartbeat_at"] >= run["started_at"]
    assert {r["slot"] for r in runs} == {"0", "1"}
    assert len({r["worker_pid"] for r in runs}) == 2
    assert max(r["started_at"] for r in runs) < min(r["finished_at"] for r in runs)  # overlap
    first, second = store.runs(in_order)
    assert second["started_at"] >= first["finished_at"]
    log = (home / launcher.LOG_NAME).read_text()
    assert "slot 0 of 2: " in log and "slot 1 of 2: " in log  # each took its own share
    wait_for(lambda: not launcher.worker_pids(store), 30, "the idle workers to leave")


def test_a_killed_pool_worker_loses_its_run_and_the_other_finishes(home):
    store = Store(home)
    # Both long enough to be caught training at the same time (the doomed one never ends).
    slow = dataclasses.replace(SLOW_RUN, ptq=False, probe_every=0)
    doomed = launcher.launch(dataclasses.replace(slow, epochs=50), store)
    survivor = launcher.launch(dataclasses.replace(slow, seed=1), store)
    assert len(launcher.ensure_worker(store, workers=2)) == 2
    doomed_run, survivor_run = store.runs(doomed)[0]["id"], store.runs(survivor)[0]["id"]
    wait_for(
        lambda: store.run(doomed_run)["step"] >= 5 and store.run(survivor_run)["step"] >= 5,
        300,
        "both runs to train",
    )
    pid = store.run(doomed_run)["worker_pid"]
    assert pid != store.run(survivor_run)["worker_pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: all_runs_ended(store, (doomed, survivor)), 300, "the reap and the other run")
    lost = store.run(doomed_run)
    assert lost["status"] == "interrupted" and f"pid {pid}" in lost["error"]
    assert store.run(survivor_run)["status"] == "finished", store.run(survivor_run)["error"]


# -- heartbeats of workers on other hosts ------------------------------------------------------


def test_a_training_worker_beats_while_the_with_block_runs(tmp_path, store_url):
    store = Store(tmp_path / "home", url=store_url)
    _, (run_id,) = store.create_comparison(TrainConfig(precisions=("bf16",)))
    claimed = store.claim_next_run(os.getpid())["heartbeat_at"]
    with worker.Heartbeat(store, run_id, every=0.05):
        wait_for(lambda: store.run(run_id)["heartbeat_at"] > claimed, 10, "a heartbeat")
    stopped = store.run(run_id)["heartbeat_at"]
    time.sleep(0.2)
    assert store.run(run_id)["heartbeat_at"] == stopped  # no beat after the block


def test_a_silent_worker_of_another_host_is_interrupted(tmp_path, store_url):
    store = Store(tmp_path / "home", url=store_url)
    silent, beating, local = (
        store.create_comparison(TrainConfig(precisions=("bf16",)))[1][0] for _ in range(3)
    )
    store.claim_next_run(4242, "0", "gpu-host-2")
    store.claim_next_run(4243, "1", "gpu-host-3")
    store.claim_next_run(os.getpid(), "0")  # this host: judged by its pid, not a heartbeat
    old = time.time() - HEARTBEAT_TIMEOUT_SECONDS - 5
    for run_id in (silent, beating, local):
        store.update_run(run_id, heartbeat_at=old, phase="training")
    store.heartbeat(beating)
    assert store.run(beating)["heartbeat_at"] > old
    assert store.reap() == [silent]
    run = store.run(silent)
    assert run["status"] == "interrupted"
    assert run["error"].startswith(
        "The training process on host gpu-host-2 (pid 4242) sent no heartbeat for "
    )
    assert "during 'training'" in run["error"]
    assert [store.run(i)["status"] for i in (beating, local)] == ["running", "running"]


def test_a_staying_pool_waits_for_work_and_ctrl_c_stops_it(home):
    """`worker --stay --workers 2` (a GPU host of a shared store): both slots stay alive and
    recorded in the store while nothing is queued, train what is queued later, and Ctrl+C
    on the worker that started the pool stops every slot and removes them from the store."""
    store = Store(home)
    log = home / launcher.LOG_NAME  # both slots write here
    with open(log, "ab") as output:
        pool = subprocess.Popen(
            [sys.executable, "-m", "fp8demo", "worker", "--stay", "--workers", "2"],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            # As from a terminal: a shell's background job (CI's, say) would pass SIGINT on
            # ignored, and Python then never raises KeyboardInterrupt.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        wait_for(lambda: len(store.live_workers()) == 2, 60, "both slots")
        time.sleep(worker.IDLE_EXIT_SECONDS + 2)  # longer than a worker without --stay waits
        assert sorted(w["slot"] for w in store.live_workers()) == ["0", "1"]
        _, (run_id,) = store.create_comparison(dataclasses.replace(TINY, precisions=("bf16",)))
        wait_for(lambda: store.run(run_id)["status"] == "finished", 300, "the run")
        assert len(store.live_workers()) == 2
        pool.send_signal(signal.SIGINT)
        try:
            code = pool.wait(60)
        except subprocess.TimeoutExpired:
            pool.send_signal(signal.SIGUSR1)  # the stuck worker prints its threads' stacks
            time.sleep(2)
            raise AssertionError(
                "Ctrl+C did not stop the pool:\n" + log.read_text()[-6000:]
            ) from None
        assert code == 130
        wait_for(lambda: not store.live_workers() and not launcher.worker_pids(store), 30, "exit")
    finally:
        if pool.poll() is None:
            pool.kill()
        for pid in launcher.worker_pids(store).values():
            os.kill(pid, signal.SIGKILL)
