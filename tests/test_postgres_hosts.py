"""Two "hosts" on one PostgreSQL store: worker processes with homes of their own (their own
data, caches and local copies of run files) share one queue, and a run trained by one is
usable on the other."""

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, SLOW_RUN, TINY_RUN, wait_for

from fp8demo import launcher, worker
from fp8demo.store import HEARTBEAT_TIMEOUT_SECONDS, Store


class Host:
    """A home folder and the worker processes started in it, on the shared store."""

    def __init__(self, home, url, imdb_folder):
        self.home, self.url = home, url
        self.env = dict(
            os.environ, FP8DEMO_HOME=str(home), FP8DEMO_STORE=url, FP8DEMO_IMDB=str(imdb_folder)
        )
        self.store = Store(home, url=url)
        self.processes = []

    def start_worker(self, *options) -> int:
        with open(self.home / "test-worker.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "fp8demo", "worker", *options],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process.pid

    def started_runs(self) -> list[int]:
        """Every run a worker of this host started training, by its log lines."""
        text = "".join(p.read_text() for p in self.home.glob("*.log"))
        return [int(n) for n in re.findall(r"\] run (\d+) \(\w+\) started", text)]

    def stop(self):
        pids = [p.pid for p in self.processes] + list(launcher.worker_pids(self.store).values())
        pids.append(launcher.supervisor_pid(self.store))  # a waiting worker asked for one
        for pid in set(pids) - {None}:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for process in self.processes:
            process.wait(timeout=30)


@pytest.fixture
def hosts(tmp_path, postgres_url, imdb_folder):
    """Host A and host B on one PostgreSQL store."""
    made = [Host(tmp_path / name, postgres_url, imdb_folder) for name in ("host a", "host b")]
    yield made
    for host in made:
        host.stop()


def test_a_run_whose_host_went_silent_is_interrupted_by_another_host(
    tmp_path, postgres_url, monkeypatch
):
    store = Store(tmp_path / "home", url=postgres_url)
    silent, beating = (store.create_comparison(TINY_RUN)[1][0] for _ in range(2))
    monkeypatch.setenv("FP8DEMO_HOST", "a")
    for run_id in (silent, beating):  # this process's pid: alive, as seen from host a
        assert store.claim_next_run(os.getpid())["id"] == run_id
    assert {store.run(r)["host"] for r in (silent, beating)} == {"a"}
    store.update_run(silent, heartbeat_at=time.time() - HEARTBEAT_TIMEOUT_SECONDS - 5)
    store.heartbeat(beating)
    assert store.reap() == []  # host a judges its own runs by their live pid

    monkeypatch.setenv("FP8DEMO_HOST", "b")  # host b sees only the heartbeats
    assert store.reap() == [silent]
    run = store.run(silent)
    assert run["status"] == "interrupted"
    assert run["error"].startswith(f"The training process on host a (pid {os.getpid()}) ")
    assert store.run(beating)["status"] == "running"


def test_two_hosts_drain_one_queue_and_use_each_others_runs(hosts):
    a, b = hosts
    # Without post-training quantization: its evaluation, queued after each bf16 run, may be
    # claimed by either host, which then fetches the run's files (not what is tested here).
    quick = dataclasses.replace(TINY_RUN, ptq=False)
    comparisons = [a.store.create_comparison(quick, label=f"c{k}")[0] for k in range(3)]
    runs = [run["id"] for cid in comparisons for run in a.store.runs(cid)]
    pids = {a.start_worker(): "a", b.start_worker(): "b"}

    def ended():
        return all(a.store.run(r)["status"] in ("finished", "failed") for r in runs)

    wait_for(ended, 900, "both hosts to train the queue")
    trained = {r: a.store.run(r) for r in runs}
    assert {r: run["status"] for r, run in trained.items()} == dict.fromkeys(runs, "finished")
    # Each run was started once, by one of the two hosts' workers.
    assert sorted(a.started_runs() + b.started_runs()) == runs
    by_host = {pids[run["worker_pid"]] for run in trained.values()}
    assert by_host == {"a", "b"}, "one host trained the whole queue"

    # Each host predicts with a run the other trained: its files come from the database.
    from fp8demo.predict import load_run

    for here, there in ((a, "b"), (b, "a")):
        run_id = next(r for r, run in trained.items() if pids[run["worker_pid"]] == there)
        assert not (here.home / "runs" / str(run_id)).exists()
        scores = load_run(here.store, run_id).predict(["a wonderful film", "dull and awful"])
        assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))
        assert (here.home / "runs" / str(run_id) / "model.weights.h5").is_file()


def test_a_killed_hosts_run_is_interrupted_and_the_other_host_goes_on(hosts):
    a, b = hosts
    slow = a.store.runs(a.store.create_comparison(SLOW_RUN)[0])[0]["id"]
    tiny = a.store.runs(a.store.create_comparison(TINY_RUN)[0])[0]["id"]
    killed = a.start_worker()
    wait_for(lambda: a.store.run(slow)["step"] >= 20, 300, "host a to train the slow run")
    assert a.store.run(tiny)["status"] == "queued"
    os.killpg(killed, signal.SIGKILL)
    a.processes[0].wait(timeout=30)
    # Its worker trains the queue and asks for a supervisor, which reaps the run that lost its
    # worker (a host's run: once its heartbeat is older than HEARTBEAT_TIMEOUT_SECONDS).
    b.start_worker()
    wait_for(lambda: b.store.run(slow)["status"] != "running", 120, "the lost run to be reaped")
    run = b.store.run(slow)
    assert run["status"] == "interrupted" and f"pid {killed}" in run["error"]
    assert len(b.store.step_metrics(slow)["step"]) >= 10  # its partial curves are kept
    wait_for(lambda: b.store.run(tiny)["status"] in ("finished", "failed"), 600, "host b's run")
    assert b.store.run(tiny)["status"] == "finished", b.store.run(tiny)["error"]
    assert b.started_runs() == [tiny] and a.started_runs() == [slow]


def test_a_sweep_on_postgresql_is_driven_by_the_workers_of_two_hosts(hosts, monkeypatch):
    """Each host runs `worker --stay` (a GPU host's workers wait for work); the sweep's study
    is in the run store's database and keeps one trial per live worker of either host
    active. A trial's precisions train one after the other, so while one host trains a
    trial's first run, the other can only take the other trial's: both hosts train."""
    from fp8demo import sweep

    a, b = hosts
    b.env["FP8DEMO_HOST"], a.env["FP8DEMO_HOST"] = "b", "a"
    monkeypatch.setenv("FP8DEMO_HOST", "a")  # this process is host a's dashboard
    monkeypatch.setenv("FP8DEMO_IMDB", a.env["FP8DEMO_IMDB"])
    a.start_worker("--stay"), b.start_worker("--stay")
    wait_for(lambda: len(a.store.live_workers()) == 2, 120, "both hosts' workers")
    time.sleep(worker.IDLE_EXIT_SECONDS + 1)  # longer than a worker without --stay waits
    assert {w["host"] for w in a.store.live_workers()} == {"a", "b"}
    base = dataclasses.replace(
        TINY_RUN, precisions=("bf16", "fp8"), side_by_side="off", ptq=False, probe_every=0
    )
    request = sweep.SweepRequest(
        base, {"lr": "1e-3,2e-3"}, 2, "fp8_minus_bf16", sampler="grid", prune=False
    )
    sweep_id = sweep.create_sweep(a.store, request)
    assert sweep.storage_url(a.store).startswith("postgresql+psycopg://")
    wait_for(lambda: a.store.sweep(sweep_id)["state"] != "running", 900, "the sweep to end")
    record = sweep.sweep_record(b.store, sweep_id)
    assert record["state"] == "complete"
    assert [t["state"] for t in record["trials"]] == ["complete", "complete"]
    comparisons = b.store.sweep_comparisons(sweep_id)
    assert sorted(comparisons) == [0, 1]
    runs = [run for comparison in comparisons.values() for run in comparison["runs"]]
    assert [run["status"] for run in runs] == ["finished"] * 4
    assert sorted(a.started_runs() + b.started_runs()) == sorted(run["id"] for run in runs)
    assert {run["host"] for run in runs} == {"a", "b"}, "one host trained every trial"
    # The staying workers are still there for the next sweep.
    assert {w["host"] for w in b.store.live_workers()} == {"a", "b"}
