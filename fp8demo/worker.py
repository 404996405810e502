"""The training process: runs the store's queue, one run at a time.

Launching a comparison queues its runs and makes sure one worker process exists
(`python -m fp8demo worker`, a subprocess in its own session: never a fork of a
multithreaded JAX process, and it keeps going when no browser is connected). A file lock
guarantees a single worker per store, so two trainings never share one GPU. The worker
exits when the queue stays empty; the next launch starts a new one.
"""

import errno
import fcntl
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from fp8demo.config import TrainConfig
from fp8demo.store import Store

LOCK_NAME = "worker.lock"
LOG_NAME = "worker.log"
IDLE_EXIT_SECONDS = 5.0


# -- the launching side (dashboard, CLI) -----------------------------------------------


def launch(config: TrainConfig, store: Store | None = None, label: str = "") -> int:
    """Queue one comparison (a run per precision) and make sure a worker runs it."""
    # (launch_repeats records the data source the launching process sees, so the run does
    # not depend on the environment of whichever process trains it.)
    return launch_repeats(config, 1, store, label)[0]


def launch_repeats(
    config: TrainConfig, repeats: int, store: Store | None = None, label: str = ""
) -> list[int]:
    """Queue the same comparison with seeds seed, seed+1, ...; they share one group id."""
    import dataclasses

    if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= 100:
        from fp8demo.config import ConfigError

        raise ConfigError(f"repeats must be a whole number between 1 and 100, got {repeats!r}.")
    store = store or Store()
    config.validate()
    from fp8demo.config import ConfigError
    from fp8demo.resources import launch_problems

    refused = launch_problems(config, store.home, repeats)
    if refused:
        raise ConfigError(" ".join(refused))
    if not config.data and os.environ.get("FP8DEMO_IMDB"):
        config = dataclasses.replace(config, data=os.environ["FP8DEMO_IMDB"])
    ids, group = [], ("self" if repeats > 1 else None)
    for k in range(repeats):
        seeded = dataclasses.replace(config, seed=config.seed + k)
        text = f"{label} (seed {seeded.seed})".strip() if repeats > 1 else label
        cid, _ = store.create_comparison(seeded, text, group_id=group)
        ids.append(cid)
        if group == "self":
            group = cid
    ensure_worker(store)
    return ids


def _try_lock(path: Path):
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def worker_pid(store: Store) -> int | None:
    """The pid of the store's live worker, or None."""
    lock_path = store.home / LOCK_NAME
    handle = _try_lock(lock_path)
    if handle is not None:  # nobody holds it
        handle.close()
        return None
    try:
        return int(lock_path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def ensure_worker(store: Store) -> int | None:
    """Start a worker if runs are queued and none is alive; return the worker's pid."""
    pid = worker_pid(store)
    if pid or not any(r["status"] == "queued" for r in store.queue()):
        return pid
    log = open(store.home / LOG_NAME, "ab")
    env = dict(os.environ, FP8DEMO_HOME=str(store.home))
    # A package path that works from any working directory.
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    process = subprocess.Popen(
        [sys.executable, "-m", "fp8demo", "worker"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        close_fds=True,
    )
    log.close()
    return process.pid


def supervise(store: Store) -> list[int]:
    """Mark runs of dead workers interrupted and restart the queue; return interrupted ids."""
    lost = store.reap()
    ensure_worker(store)
    return lost


# -- the worker process ----------------------------------------------------------------


# errno values and messages of a full disk, a quota or a file size limit.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
DISK_FULL_TEXTS = ("no space left", "disk quota", "file too large", "database or disk is full")


def disk_full_reason(error: BaseException) -> str | None:
    """What failed, when `error` (or its cause: h5py and sqlite wrap it) is a full disk."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if getattr(error, "errno", None) in DISK_FULL_ERRNOS:
            name = getattr(error, "filename", None)
            return os.strerror(error.errno) + (f": {Path(str(name)).name}" if name else "")
        if any(t in str(error).lower() for t in DISK_FULL_TEXTS):
            return str(error)[:200]
        error = error.__cause__ or error.__context__
    return None


def plain_error(error: BaseException, home=None, phase: str = "") -> str:
    """An exception in words a user can act on (the traceback goes to the worker log)."""
    text = str(error) or type(error).__name__
    lowered = text.lower()
    reason = disk_full_reason(error)
    if reason:
        import shutil

        where = f" in {home}" if home else ""
        try:
            free = f" ({shutil.disk_usage(home).free / 2**20:,.0f} MB free now)" if home else ""
        except OSError:
            free = ""
        during = f" while {phase}" if phase else ""
        return (
            f"Out of disk space{where}{during}{free}: a write failed ({reason}). "
            "The metrics recorded so far are kept. Free some space (or delete old "
            "comparisons on Results) and launch again."
        )
    if (
        isinstance(error, MemoryError)
        or "resource_exhausted" in lowered
        or "out of memory" in lowered
    ):
        return (
            "Out of memory: this configuration does not fit on the device. Use a smaller "
            f"batch size, sequence length or model. ({text[:300]})"
        )
    from fp8demo.config import ConfigError
    from fp8demo.data import DataError

    if isinstance(error, (DataError, ConfigError, FloatingPointError)):
        return text
    return f"{type(error).__name__}: {text[:500]}"


def execute(store: Store, run: dict, **train_options):
    from fp8demo import training

    run_id = run["id"]
    print(f"[worker {os.getpid()}] run {run_id} ({run['precision']}) started", flush=True)
    try:
        results = training.train_run(store, run, **train_options)
    except training.Cancelled:
        store.end_run(run_id, "cancelled")
    except BaseException as error:  # noqa: BLE001 — any failure must end the run, not the worker
        traceback.print_exc()
        phase = _phase(store, run_id)
        store.end_run(run_id, "failed", error=plain_error(error, store.home, phase))
        store.merge_summary(run_id, traceback=traceback.format_exc()[-4000:])
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
    else:
        store.end_run(run_id, "finished", **results)
    print(f"[worker {os.getpid()}] run {run_id} ended: {store.run(run_id)['status']}", flush=True)


def _phase(store: Store, run_id: int) -> str:
    try:
        return store.run(run_id)["phase"]
    except Exception:  # an unreadable store must not hide the original error
        return ""


def main(store: Store | None = None, idle_exit: float = IDLE_EXIT_SECONDS) -> int:
    store = store or Store()
    lock_path = store.home / LOCK_NAME
    handle = _try_lock(lock_path)
    if handle is None:
        return 0  # another worker owns this store
    try:
        handle.seek(0), handle.truncate(), handle.write(str(os.getpid())), handle.flush()
        store.reap()
        idle_since = time.time()
        while True:
            # Claimed first: the run shows its phase while the libraries are still loading.
            run = store.claim_next_run(os.getpid())
            if run is not None:
                from fp8demo.env import tensorflow

                tensorflow()  # hide GPUs from TensorFlow before anything initialises it
                execute(store, run)
                idle_since = time.time()
            elif time.time() - idle_since > idle_exit:
                break
            else:
                time.sleep(0.3)
    finally:
        handle.seek(0), handle.truncate(), handle.flush()
        handle.close()
    # A launch may have queued a run while we were leaving: hand over to a fresh worker.
    ensure_worker(store)
    return 0
