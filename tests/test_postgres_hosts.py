"""Two "hosts" on one PostgreSQL store: worker processes with homes of their own (their own
data, caches and local copies of run files) share one queue, and a run trained by one is
usable on the other."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT

from fp8demo import worker
from fp8demo.config import TrainConfig
from fp8demo.store import Store

TINY = TrainConfig(subset=64, vocab_size=800, seq_len=64, epochs=1, precisions=("bf16",))
# Long enough to be caught mid-training, small enough to start fast (as in test_worker.py).
SLOW = TrainConfig(subset=1600, vocab_size=800, seq_len=64, epochs=4, precisions=("bf16",))


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Host:
    """A home folder and the worker processes started in it, on the shared store."""

    def __init__(self, home, url, imdb_folder):
        self.home, self.url = home, url
        self.env = dict(
            os.environ, FP8DEMO_HOME=str(home), FP8DEMO_STORE=url, FP8DEMO_IMDB=str(imdb_folder)
        )
        self.store = Store(home, url=url)
        self.processes = []

    def start_worker(self) -> int:
        with open(self.home / "test-worker.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "fp8demo", "worker"],
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
        pids = [p.pid for p in self.processes] + list(worker.worker_pids(self.store).values())
        for pid in set(pids):
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


def test_two_hosts_drain_one_queue_and_use_each_others_runs(hosts):
    a, b = hosts
    comparisons = [a.store.create_comparison(TINY, label=f"c{k}")[0] for k in range(3)]
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
    slow = a.store.runs(a.store.create_comparison(SLOW)[0])[0]["id"]
    tiny = a.store.runs(a.store.create_comparison(TINY)[0])[0]["id"]
    killed = a.start_worker()
    wait_for(lambda: a.store.run(slow)["step"] >= 20, 300, "host a to train the slow run")
    assert a.store.run(tiny)["status"] == "queued"
    os.killpg(killed, signal.SIGKILL)
    a.processes[0].wait(timeout=30)
    b.start_worker()  # its worker reaps the run that lost its worker, then trains the queue
    wait_for(lambda: b.store.run(slow)["status"] != "running", 120, "the lost run to be reaped")
    run = b.store.run(slow)
    assert run["status"] == "interrupted" and f"pid {killed}" in run["error"]
    assert len(b.store.step_metrics(slow)["step"]) >= 10  # its partial curves are kept
    wait_for(lambda: b.store.run(tiny)["status"] in ("finished", "failed"), 600, "host b's run")
    assert b.store.run(tiny)["status"] == "finished", b.store.run(tiny)["error"]
    assert b.started_runs() == [tiny] and a.started_runs() == [slow]
