"""The worker process: one slot of the pool, running the store's queue.

`python -m fp8demo worker --slot K` (started by the launcher) holds the lock file
worker-K.lock, so one process trains on each device, and before JAX loads it restricts itself
to its GPU (CUDA_VISIBLE_DEVICES) or, on a CPU, to its share of the cores. It claims the next
run the store's rule allows (Store.claim_next_run: a comparison trains its precisions side by
side or one after the other, a data-parallel run waits for the whole pool) and, when no run
may start, a queued post-training evaluation. It injects the sweep's hooks into training, and
requests the post-training evaluation of a bf16 run it finished. Workers leave when nothing is
queued; with `--stay` (a GPU host of a shared store) they wait for runs that any host queues.
Reaping the runs of dead workers and restarting workers is the supervisor's job.
"""

import errno
import faulthandler
import os
import signal
import time
import traceback
from pathlib import Path

from fp8demo import device, env, launcher, paths, sweep
from fp8demo.config import ConfigError
from fp8demo.data import DataError
from fp8demo.store import Store
from fp8demo.store.heartbeat import HEARTBEAT_SECONDS, Heartbeat  # noqa: F401 (worker.Heartbeat)

IDLE_EXIT_SECONDS = 5.0
SUPERVISOR_CHECK_SECONDS = 5.0  # how often a waiting worker makes sure a supervisor runs
LOG_NAME, LOCK_NAME, lock_name = launcher.LOG_NAME, launcher.LOCK_NAME, launcher.lock_name


# -- failures, in words a user can act on ------------------------------------------------

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
        where = f" in {home}" if home else ""
        free_mb = paths.free_megabytes(home) if home else None
        free = f" ({free_mb:,.0f} MB free now)" if free_mb is not None else ""
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
    if isinstance(error, (DataError, ConfigError, FloatingPointError)):
        return text
    return f"{type(error).__name__}: {text[:500]}"


# -- what a worker does with a claimed run or evaluation -----------------------------------


def execute(store: Store, run: dict, **train_options):
    """Train a claimed run and end it (finished, cancelled or failed with a message a user
    can act on); then tell its sweep, if it is a trial's. train_options go to train_run."""
    from fp8demo import training  # lazy: JAX loads after the process took its device share

    run_id = run["id"]
    train_options.setdefault("on_epoch_end", sweep.epoch_ended)  # a trial reports each epoch
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
    sweep.run_ended(store, run_id)  # a sweep trial's run: tell its trial, ask the next


def _phase(store: Store, run_id: int) -> str:
    try:
        return store.run(run_id)["phase"]
    except Exception:  # an unreadable store must not hide the original error
        return ""


def queue_post_training(store: Store, run_id: int):
    """Queue the post-training evaluation of a bf16 run that finished with ptq on, so that
    it follows the run (a worker claims it when no run may start)."""
    run = store.run(run_id)
    wanted = run["status"] == "finished" and run["precision"] == "bf16" and run["config"].ptq
    if wanted:
        store.request_evaluation(run_id)


def evaluate(store: Store, evaluation: dict):
    """Run a claimed post-training evaluation and end it: finished (the results are in its
    run's summary["ptq"]) or failed with a message a user can act on."""
    from fp8demo import post_training  # lazy: JAX loads after the device share is taken

    me, run_id = os.getpid(), evaluation["run_id"]
    print(f"[worker {me}] post-training evaluation of run {run_id} started", flush=True)
    try:
        post_training.evaluate_run(store, run_id)
    except BaseException as error:  # noqa: BLE001 — it must end the evaluation, not the worker
        traceback.print_exc()
        phase = "evaluating post-training quantization"
        store.end_evaluation(evaluation["id"], "failed", plain_error(error, store.home, phase))
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
    else:
        store.end_evaluation(evaluation["id"], "finished")
    print(f"[worker {me}] post-training evaluation of run {run_id} ended", flush=True)


# -- the process -----------------------------------------------------------------------


def main(
    store: Store | None = None,
    idle_exit: float = IDLE_EXIT_SECONDS,
    slot: int | None = None,
    workers: int | None = None,
    stay: bool = False,
) -> int:
    """Run slot `slot`'s worker of a pool of `workers` slots until nothing is queued (with
    `stay`, until it is stopped: a GPU host's worker on a shared store).

    Without a slot: be slot 0 and start the pool's other workers (`python -m fp8demo worker
    --workers N` in a terminal). The worker takes its device share when it loads JAX, for its
    first run: a data-parallel run gets every device instead, and the process then leaves
    (when the pool has other slots) so that its slot comes back on its own device.
    """
    store = store or Store()
    # `kill -USR1 <pid>` prints every thread's stack to the worker's log: where a stuck one is.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    starts_the_pool = slot is None
    slot = int(slot or 0)
    slots = max(workers or device.default_slots(), slot + 1)
    handle = paths.try_lock(store.home / lock_name(slot))
    if handle is None:
        return 0  # another worker has this slot
    try:
        handle.seek(0), handle.truncate(), handle.write(str(os.getpid())), handle.flush()
        if starts_the_pool:
            launcher.ensure_worker(store, slots, stay=stay)
        _work(store, slot, slots, idle_exit, stay)
    except KeyboardInterrupt:
        if starts_the_pool and stay:  # Ctrl+C stops the staying pool this worker started
            for pid in launcher.worker_pids(store).values():
                if pid != os.getpid():
                    os.kill(pid, signal.SIGINT)
        return 130
    finally:
        handle.seek(0), handle.truncate(), handle.flush()
        handle.close()
    # A launch may have queued work while we were leaving: hand over to fresh workers.
    launcher.ensure_worker(store, stay=stay)
    return 0


def _work(store: Store, slot: int, slots: int, idle_exit: float, stay: bool):
    """Claim and do work until none is left for `idle_exit` seconds (never, with `stay`) or
    this process must give its slot to a fresh one (see main)."""
    me, host = os.getpid(), paths.host_name()
    share = None  # what this process took when it loaded JAX: "one" (its slot's) or "all"
    with Heartbeat(store, worker=(host, slot, me)) as heartbeat:
        idle_since, checked_at = time.time(), 0.0  # asks for a supervisor when first idle
        while True:
            # Claimed first: the run shows its phase while the libraries are still loading.
            run = store.claim_next_run(me, str(slot), host, data_parallel_ok=share != "one")
            if run is not None:
                whole_pool = run["config"].data_parallel
                share = share or _take_share(whole_pool, slot, slots)
                heartbeat.run_id = run["id"]
                store.heartbeat(run["id"])
                try:
                    execute(store, run)
                finally:
                    heartbeat.run_id = None
                queue_post_training(store, run["id"])
                idle_since = time.time()
                if whole_pool and slots > 1:
                    return  # this process sees every device: a fresh one takes the slot's
                continue
            if share == "one" and store.data_parallel_next(host):
                return  # a data-parallel run needs every device: a fresh process takes them
            evaluation = store.claim_next_evaluation(me, host)  # no run may start: evaluate
            if evaluation is not None:
                share = share or _take_share(False, slot, slots)
                evaluate(store, evaluation)
                idle_since = time.time()
                continue
            queued = store.queued_count() or store.queued_evaluations()
            if not stay and not queued and time.time() - idle_since > idle_exit:
                return
            if time.time() - checked_at > SUPERVISOR_CHECK_SECONDS:
                launcher.ensure_supervisor(store)  # runs of this host reaped, sweeps advanced
                checked_at = time.time()
            time.sleep(0.3)


def _take_share(whole_pool: bool, slot: int, slots: int) -> str:
    """Before JAX loads: take this slot's device share ("one"), or every device ("all") for
    a data-parallel run or a one-slot pool. Returns which."""
    share = "all" if whole_pool or slots == 1 else "one"
    taken = "every device" if share == "all" else device.take_device_share(slot, slots)
    print(f"[worker {os.getpid()}] slot {slot} of {slots}: {taken}", flush=True)
    env.tensorflow()  # hide GPUs from TensorFlow before anything initialises it
    return share
