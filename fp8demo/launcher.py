"""The launching side (dashboard, CLI, sweeps): queue work in the store and make sure the
processes that do it run.

Launching a comparison queues its runs and makes sure the pool's workers exist
(`python -m fp8demo worker --slot K`, subprocesses in their own session: never a fork of a
multithreaded JAX process, and they keep going when no browser is connected). A pool has one
slot per device: slot K's worker holds the lock file worker-K.lock. Workers leave when nothing
is queued; the supervisor (`python -m fp8demo supervisor`, one per home, holding
supervisor.lock) restarts them while work is queued, reaps the runs of dead workers and
advances sweeps, so that progress never waits for a page or a terminal to look.
"""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from fp8demo import device, paths
from fp8demo.config import ConfigError, TrainConfig
from fp8demo.resources import launch_problems
from fp8demo.store import Store

LOG_NAME = "worker.log"  # the workers' and the supervisor's output, in the home
SUPERVISOR_LOCK = "supervisor.lock"


def lock_name(slot) -> str:
    """The lock file of a pool slot; its holder writes its pid in it."""
    return f"worker-{slot}.lock"


LOCK_NAME = lock_name(0)  # the first slot: the worker of a one-slot pool


# -- queueing ----------------------------------------------------------------------------


def with_data_source(config: TrainConfig) -> TrainConfig:
    """The config with the data source the launching process sees (FP8DEMO_IMDB) written in,
    so that a run does not depend on the environment of whichever process trains it."""
    if not config.data and os.environ.get("FP8DEMO_IMDB"):
        return dataclasses.replace(config, data=os.environ["FP8DEMO_IMDB"])
    return config


def launch(config: TrainConfig, store: Store | None = None, label: str = "") -> int:
    """Queue one comparison (a run per precision) and make sure workers run it."""
    return launch_repeats(config, 1, store, label)[0]


def launch_repeats(
    config: TrainConfig, repeats: int, store: Store | None = None, label: str = ""
) -> list[int]:
    """Queue the same comparison with seeds seed, seed+1, ...; they share one group id."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= 100:
        raise ConfigError(f"repeats must be a whole number between 1 and 100, got {repeats!r}.")
    store = store or Store()
    config.validate()
    refused = launch_problems(config, store.home, repeats)
    if refused:
        raise ConfigError(" ".join(refused))
    config = with_data_source(config)
    side_by_side = device.trains_side_by_side(config)
    ids, group = [], ("self" if repeats > 1 else None)
    for k in range(repeats):
        seeded = dataclasses.replace(config, seed=config.seed + k)
        text = f"{label} (seed {seeded.seed})".strip() if repeats > 1 else label
        cid, _ = store.create_comparison(seeded, text, group_id=group, side_by_side=side_by_side)
        ids.append(cid)
        if group == "self":
            group = cid
    ensure_worker(store)
    ensure_supervisor(store)
    return ids


def request_post_training(store: Store, run_id) -> dict:
    """Queue the int8/int4 post-training evaluation of a finished bf16 run (once: a queued,
    running or finished one is returned as it is) and make sure a worker picks it up."""
    evaluation = store.request_evaluation(run_id)
    if evaluation["status"] == "queued":
        ensure_worker(store)
        ensure_supervisor(store)
    return evaluation


# -- the pool of workers -------------------------------------------------------------------


def worker_pids(store: Store) -> dict[str, int]:
    """The live workers of the store's pool on this host: slot → pid, in slot order."""
    found = {}
    for path in store.home.glob(lock_name("*")):
        slot = path.name[len("worker-") : -len(".lock")]
        pid = paths.lock_holder(path)
        if pid:
            found[slot] = pid
    return dict(sorted(found.items(), key=lambda item: (not item[0].isdigit(), item[0].zfill(9))))


def worker_pid(store: Store) -> int | None:
    """The pid of a live worker of the store (the lowest slot's), or None."""
    return next(iter(worker_pids(store).values()), None)


def pool_demand(store: Store) -> int:
    """The slots the queued work asks for: a comparison that trains side by side asks for one
    per precision, any other queued run or a queued evaluation for one; 0 when none."""
    queued = [r for r in store.queue() if r["status"] == "queued"]
    demand = max(
        (len(r["config"].precisions) if r["summary"].get("side_by_side") else 1 for r in queued),
        default=0,
    )
    return max(demand, 1 if store.queued_evaluations() else 0)


def ensure_worker(store: Store, workers: int | None = None, stay: bool = False) -> list[int]:
    """Start the pool's missing workers if work is queued (with `stay`, in any case, and
    they stay too); return every worker's pid.

    The pool has max(default_slots(), `workers`, what the queue asks for) slots.
    """
    demand = pool_demand(store)
    if not demand and not stay:
        return list(worker_pids(store).values())
    slots = max(device.default_slots(), workers or 0, demand)
    alive = worker_pids(store)
    _seen_locked.update(alive.values())
    for slot in range(slots):
        if str(slot) in alive:
            continue
        started = _started.get((str(store.home), slot))
        # Not holding its lock yet: still starting, unless it held it already (then it is
        # leaving, having found nothing queued a moment ago, and the slot needs a fresh one).
        if started is not None and started.poll() is None and started.pid not in _seen_locked:
            alive[str(slot)] = started.pid
        else:
            command = ["worker", "--slot", str(slot), "--workers", str(slots)]
            process = _start(store, command + (["--stay"] if stay else []))
            _started[(str(store.home), slot)] = process
            alive[str(slot)] = process.pid
    return list(alive.values())


# The processes this process started, by (home, slot): a page that refreshes while a worker is
# still starting (before it holds its lock) must not start a second one for nothing.
_started = {}
# The pids seen holding a slot's lock: a started worker that no longer holds it is leaving.
_seen_locked = set()


# -- the supervisor ------------------------------------------------------------------------


def work_active(store: Store) -> bool:
    """Whether work is queued or running: runs, a running sweep (unless stalled: its last
    advance failed, see sweep.advance_running), queued evaluations. A running evaluation is
    its worker's: whoever shows one passes `pending` to ensure_supervisor instead, so that a
    supervisor fails it if that worker died."""
    return bool(
        store.queue()
        or any(s["state"] == "running" and not s["error"] for s in store.sweeps())
        or store.queued_evaluations()
    )


def supervisor_pid(store: Store) -> int | None:
    """The pid of the home's supervisor, or None when none runs."""
    return paths.lock_holder(store.home / SUPERVISOR_LOCK)


def ensure_supervisor(store: Store, pending: bool = False, stay: bool = False) -> int | None:
    """Start the home's supervisor when work is active (or the caller knows of `pending`
    work, e.g. a running evaluation it shows) and none runs; return its pid (None when none
    is needed). Cheap: a lock file and a few store reads, safe on every page refresh."""
    holder = supervisor_pid(store)
    if holder:
        return holder
    started = _started.get((str(store.home), "supervisor"))
    if started is not None and started.poll() is None:
        return started.pid  # still starting
    if not (pending or stay or work_active(store)):
        return None
    process = _start(store, ["supervisor", *(["--stay"] if stay else [])])
    _started[(str(store.home), "supervisor")] = process
    return process.pid


# -- starting a process --------------------------------------------------------------------


def _default_store(store: Store) -> bool:
    """Whether the store is the home's own runs.sqlite, which a process in that home opens."""
    default = store.home / "runs.sqlite"
    return store.backend == "sqlite" and store.path.resolve() == default.resolve()


def _start(store: Store, arguments: list[str]) -> subprocess.Popen:
    """Start `python -m fp8demo ARGUMENTS` on the store in the background, in its own session
    (it outlives a page or a terminal), its output appended to the home's worker.log."""
    log = open(store.home / LOG_NAME, "ab")
    env = dict(os.environ, FP8DEMO_HOME=str(store.home))
    env.pop("FP8DEMO_STORE", None)
    if not _default_store(store):  # a store given by URL: the process must open the same one
        env["FP8DEMO_STORE"] = store.url
    # A package path that works from any working directory.
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    process = subprocess.Popen(
        [sys.executable, "-m", "fp8demo", *arguments],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        close_fds=True,
    )
    log.close()
    return process
