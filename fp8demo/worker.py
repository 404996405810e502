"""The training processes: a pool of workers that run the store's queue.

Launching a comparison queues its runs and makes sure the pool's workers exist
(`python -m fp8demo worker --slot K`, subprocesses in their own session: never a fork of a
multithreaded JAX process, and they keep going when no browser is connected). A pool has one
slot per device: slot K's worker holds the lock file worker-K.lock, so one process trains on
each device, and before JAX loads it restricts itself to its GPU (CUDA_VISIBLE_DEVICES) or,
on a CPU, to its share of the cores. Which queued run a worker may start is the store's rule
(Store.claim_next_run): a comparison trains its precisions side by side or one after the
other, and a data-parallel run waits for the whole pool. Workers leave when nothing is queued;
the next launch starts new ones. On a GPU host of a shared store (`worker --stay`), they stay
and wait for runs that any host queues.
"""

import errno
import faulthandler
import fcntl
import functools
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from fp8demo.config import TrainConfig
from fp8demo.store import Store, host_name

LOG_NAME = "worker.log"
IDLE_EXIT_SECONDS = 5.0
HEARTBEAT_SECONDS = 5.0  # how often a worker refreshes its own and its run's heartbeat_at
REAP_SECONDS = 5.0  # how often a waiting worker looks for runs whose worker died


def lock_name(slot) -> str:
    """The lock file of a pool slot; its holder writes its pid in it."""
    return f"worker-{slot}.lock"


LOCK_NAME = lock_name(0)  # the first slot: the worker of a one-slot pool


# -- devices, found without importing JAX ---------------------------------------------------

# The GPUs and cores the whole pool shares, kept in the environment by a worker that took its
# slot's share of them: the workers it starts in turn inherit that share, but not these.
POOL_GPUS, POOL_CORES = "FP8DEMO_POOL_GPUS", "FP8DEMO_POOL_CORES"


@functools.cache
def visible_gpus() -> tuple[str, ...]:
    """The ids of the GPUs this host lets its processes use: CUDA_VISIBLE_DEVICES when set,
    else one per `nvidia-smi -L` GPU line; () without any. Cached: pages ask on each refresh."""
    named = os.environ.get(POOL_GPUS, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if named is not None:
        ids = tuple(i.strip() for i in named.split(",") if i.strip())
        return () if ids in ((), ("-1",)) else ids
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    count = sum(line.startswith("GPU ") for line in listing.splitlines())  # not MIG lines
    return tuple(str(i) for i in range(count))


def default_slots() -> int:
    """The pool's size unless asked for more: one slot per GPU, or one on a CPU."""
    return max(1, len(visible_gpus()))


def trains_side_by_side(config: TrainConfig) -> bool:
    """Whether a comparison trains its precisions at the same time: its side_by_side setting,
    "auto" meaning when this host has a GPU per precision (on a CPU they share the cores)."""
    if config.side_by_side == "auto":
        gpus = len(visible_gpus())
        return gpus > 0 and gpus >= len(config.precisions)
    return config.side_by_side == "on"


def pool_cores() -> list[int]:
    """The CPU cores the whole pool shares."""
    named = os.environ.get(POOL_CORES)
    return [int(c) for c in named.split(",")] if named else sorted(os.sched_getaffinity(0))


def take_device_share(slot: int, slots: int) -> str:
    """Restrict this process to slot `slot` of `slots` before JAX and TensorFlow load (they
    size their devices and thread pools at import): one GPU, or on a CPU its share of the
    cores. Returns what it took, in words."""
    gpus = visible_gpus()
    if gpus:
        gpu = gpus[slot % len(gpus)]  # more slots than GPUs only when the user asks for them
        os.environ[POOL_GPUS] = ",".join(gpus)
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        return f"GPU {gpu}"
    cores = pool_cores()
    share = cores[slot * len(cores) // slots : (slot + 1) * len(cores) // slots]
    share = share or [cores[min(slot * len(cores) // slots, len(cores) - 1)]]
    os.environ[POOL_CORES] = ",".join(map(str, cores))
    os.sched_setaffinity(0, share)
    return f"CPU cores {','.join(map(str, share))}"


# -- the launching side (dashboard, CLI) -----------------------------------------------


def launch(config: TrainConfig, store: Store | None = None, label: str = "") -> int:
    """Queue one comparison (a run per precision) and make sure workers run it."""
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


def _lock_holder(path: Path) -> int | None:
    """The pid written in a held lock file; None when nobody holds it."""
    handle = _try_lock(path)
    if handle is not None:  # nobody holds it
        handle.close()
        return None
    try:
        return int(path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def worker_pids(store: Store) -> dict[str, int]:
    """The live workers of the store's pool on this host: slot → pid, in slot order."""
    found = {}
    for path in store.home.glob(lock_name("*")):
        slot = path.name[len("worker-") : -len(".lock")]
        pid = _lock_holder(path)
        if pid:
            found[slot] = pid
    return dict(sorted(found.items(), key=lambda item: (not item[0].isdigit(), item[0].zfill(9))))


def worker_pid(store: Store) -> int | None:
    """The pid of a live worker of the store (the lowest slot's), or None."""
    return next(iter(worker_pids(store).values()), None)


def pool_demand(store: Store) -> int:
    """The slots the queued runs ask for: a comparison that trains side by side asks for one
    per precision; 0 when nothing is queued."""
    queued = [r for r in store.queue() if r["status"] == "queued"]
    if not queued:
        return 0
    return max(
        len(r["config"].precisions) if r["summary"].get("side_by_side") else 1 for r in queued
    )


def ensure_worker(store: Store, workers: int | None = None, stay: bool = False) -> list[int]:
    """Start the pool's missing workers if runs are queued (with `stay`, in any case, and
    they stay too); return every worker's pid.

    The pool has max(default_slots(), `workers`, what the queue asks for) slots.
    """
    demand = pool_demand(store)
    if not demand and not stay:
        return list(worker_pids(store).values())
    slots = max(default_slots(), workers or 0, demand)
    alive = worker_pids(store)
    for slot in range(slots):
        if str(slot) in alive:
            continue
        started = _started.get((str(store.home), slot))
        if started is not None and started.poll() is None:  # not holding its lock yet
            alive[str(slot)] = started.pid
        else:
            alive[str(slot)] = _start_worker(store, slot, slots, stay)
    return list(alive.values())


# The workers this process started, by (home, slot): a page that refreshes while one is still
# starting (before it holds its lock) must not start a second one for nothing.
_started = {}


def _default_store(store: Store) -> bool:
    """Whether the store is the home's own runs.sqlite, which a worker in that home opens."""
    default = store.home / "runs.sqlite"
    return store.backend == "sqlite" and store.path.resolve() == default.resolve()


def _start_worker(store: Store, slot: int, slots: int, stay: bool = False) -> int:
    """Start slot `slot`'s worker of a pool of `slots` in the background; return its pid."""
    log = open(store.home / LOG_NAME, "ab")
    env = dict(os.environ, FP8DEMO_HOME=str(store.home))
    env.pop("FP8DEMO_STORE", None)
    if not _default_store(store):  # a store given by URL: the worker must open the same one
        env["FP8DEMO_STORE"] = store.url
    # A package path that works from any working directory.
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "fp8demo", "worker", "--slot", str(slot)]
    process = subprocess.Popen(
        [*command, "--workers", str(slots), *(["--stay"] if stay else [])],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        close_fds=True,
    )
    log.close()
    _started[(str(store.home), slot)] = process
    return process.pid


def supervise(store: Store) -> list[int]:
    """Mark runs of dead workers interrupted and restart the queue; return interrupted ids."""
    lost = store.reap()
    from fp8demo import sweep

    sweep.advance_running(store)  # a trial whose worker died fails, and its sweep goes on
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
    from fp8demo import sweep

    sweep.run_ended(store, run_id)  # a sweep trial's run: tell its trial, ask the next


def _phase(store: Store, run_id: int) -> str:
    try:
        return store.run(run_id)["phase"]
    except Exception:  # an unreadable store must not hide the original error
        return ""


class Heartbeat:
    """While the with-block runs, refresh heartbeats every few seconds from a background
    thread: of the run being trained (`run_id`, may change) and of the worker itself
    (`worker`: host, slot, pid). How a worker tells every host of the store it is alive."""

    def __init__(self, store: Store, run_id=None, every=HEARTBEAT_SECONDS, worker=None):
        self.store, self.run_id, self.every, self.worker = store, run_id, every, worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def __enter__(self):
        if self.worker:
            self.store.worker_alive(*self.worker)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if self.worker:
            self.store.worker_gone(*self.worker)

    def _beat(self):
        while not self._stop.wait(self.every):
            try:
                if self.worker:
                    self.store.worker_alive(*self.worker)
                if self.run_id is not None:
                    self.store.heartbeat(self.run_id)
            except Exception as e:  # a busy store now and then must not end the training
                print(f"[worker {os.getpid()}] heartbeat failed: {e}", flush=True)


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
    slots = max(workers or default_slots(), slot + 1)
    handle = _try_lock(store.home / lock_name(slot))
    if handle is None:
        return 0  # another worker has this slot
    me, host = os.getpid(), host_name()
    share = None  # what this process took when it loaded JAX: "one" (its slot's) or "all"
    try:
        handle.seek(0), handle.truncate(), handle.write(str(me)), handle.flush()
        store.reap()
        if starts_the_pool:
            ensure_worker(store, slots, stay=stay)
        with Heartbeat(store, worker=(host, slot, me)) as heartbeat:
            idle_since = reaped_at = time.time()
            while True:
                # Claimed first: the run shows its phase while the libraries are still loading.
                run = store.claim_next_run(me, str(slot), host, data_parallel_ok=share != "one")
                if run is not None:
                    whole_pool = run["config"].data_parallel
                    if share is None:
                        share = "all" if whole_pool or slots == 1 else "one"
                        taken = "every device" if share == "all" else take_device_share(slot, slots)
                        print(f"[worker {me}] slot {slot} of {slots}: {taken}", flush=True)
                        from fp8demo.env import tensorflow

                        tensorflow()  # hide GPUs from TensorFlow before anything initialises it
                    heartbeat.run_id = run["id"]
                    store.heartbeat(run["id"])
                    try:
                        execute(store, run)
                    finally:
                        heartbeat.run_id = None
                    idle_since = time.time()
                    if whole_pool and slots > 1:
                        break  # this process sees every device: a fresh one takes the slot's
                    continue
                if share == "one" and store.data_parallel_next(host):
                    break  # a data-parallel run needs every device: a fresh process takes them
                if not stay and not store.queued_count() and time.time() - idle_since > idle_exit:
                    break
                # Waiting (for work, or for a run to end): notice runs whose worker died.
                if time.time() - reaped_at > REAP_SECONDS:
                    store.reap()
                    reaped_at = time.time()
                time.sleep(0.3)
    except KeyboardInterrupt:
        if starts_the_pool and stay:  # Ctrl+C stops the staying pool this worker started
            for pid in worker_pids(store).values():
                if pid != me:
                    os.kill(pid, signal.SIGINT)
        return 130
    finally:
        handle.seek(0), handle.truncate(), handle.flush()
        handle.close()
    # A launch may have queued a run while we were leaving: hand over to fresh workers.
    ensure_worker(store, stay=stay)
    return 0
