"""The supervisor: the one process that keeps a home's work going with nobody watching.

`python -m fp8demo supervisor` (started by the launcher when work is queued, by a sweep, by
a waiting worker, or from a page or the CLI asking launcher.ensure_supervisor) holds
supervisor.lock in the home, so one runs per home. Every few seconds it marks the runs and
evaluations of dead workers interrupted or failed, advances running sweeps (a trial whose
worker died fails, and the next is asked) and starts the workers the queue needs. It leaves
when nothing has been active for a while (with `--stay`, only when stopped).

Why a process of its own: a worker that finds nothing queued leaves, and a sweep asks its
next trial only when someone advances it; before the supervisor, that someone was a page
refresh or a waiting CLI, so a sweep whose worker was killed waited for an audience.
"""

import faulthandler
import os
import signal
import time
import traceback

from fp8demo import launcher, paths, sweep
from fp8demo.resources import min_free_bytes
from fp8demo.store import Store

SUPERVISE_SECONDS = 2.0  # how often it reaps, advances sweeps and restarts workers
IDLE_EXIT_SECONDS = 10.0  # how long it stays once nothing is active (without --stay)


def low_disk_note(home) -> str:
    """A hint for the error of a run whose worker died, when the disk holding the home is
    (nearly) full: the likeliest reason a worker dies without a word."""
    free_mb = paths.free_megabytes(home)
    if free_mb is None or free_mb * 2**20 >= min_free_bytes():
        return ""
    return (
        f" The disk holding {home} has only {free_mb:,.0f} MB free: a full disk "
        "may have stopped it."
    )


def supervise_once(store: Store) -> list[int]:
    """Reap the runs (and evaluations) of dead workers, advance running sweeps, start the
    workers the queue needs; returns the ids of the runs reaped."""
    lost = store.reap(note=low_disk_note(store.home))
    sweep.advance_running(store)  # a trial whose worker died fails, and its sweep goes on
    launcher.ensure_worker(store)
    return lost


def main(
    store: Store | None = None,
    every: float = SUPERVISE_SECONDS,
    stay: bool = False,
    idle_exit: float = IDLE_EXIT_SECONDS,
) -> int:
    """Supervise the store every `every` seconds until nothing has been active for
    `idle_exit` seconds (with `stay`, until stopped). Returns at once (0) when another
    supervisor holds the home's lock; 130 on Ctrl+C."""
    store = store or Store()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1`: its stacks
    handle = paths.try_lock(store.home / launcher.SUPERVISOR_LOCK)
    if handle is None:
        return 0  # this home has its supervisor
    print(f"[supervisor {os.getpid()}] started", flush=True)
    try:
        handle.seek(0), handle.truncate(), handle.write(str(os.getpid())), handle.flush()
        _supervise(store, every, stay, idle_exit)
    except KeyboardInterrupt:
        return 130
    finally:
        handle.seek(0), handle.truncate(), handle.flush()
        handle.close()
    print(f"[supervisor {os.getpid()}] nothing active: leaving", flush=True)
    # Work queued while we were leaving: hand over to a fresh supervisor.
    launcher.ensure_supervisor(store)
    return 0


def _supervise(store: Store, every: float, stay: bool, idle_exit: float):
    idle_since = time.time()
    while True:
        try:
            supervise_once(store)
            active = launcher.work_active(store)
        except Exception:  # a busy store now and then must not end supervision, but a store
            traceback.print_exc()  # gone for good (its folder deleted) must not keep it
            active = False
        if active:
            idle_since = time.time()
        elif not stay and time.time() - idle_since > idle_exit:
            return
        time.sleep(every)
