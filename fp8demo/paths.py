"""Where things are on this host, and what this host can tell about itself (layer 0).

The home folder, this host's name, whether a process lives, how much disk is free, and the
one file lock every process of a home uses (worker slots, the supervisor, post-training
evaluation, the SQLite store's named locks). Only the standard library: everything imports it.
"""

import contextlib
import fcntl
import os
import shutil
import socket
from pathlib import Path


def default_home() -> Path:
    """FP8DEMO_HOME, else ~/.fp8demo: the run store, caches, logs and locks of this host."""
    return Path(os.environ.get("FP8DEMO_HOME") or Path.home() / ".fp8demo").expanduser()


def host_name() -> str:
    """The name of this host on runs and workers: FP8DEMO_HOST when set (several "hosts" on
    one machine, in tests), else the machine's host name."""
    return os.environ.get("FP8DEMO_HOST") or socket.gethostname()


def pid_alive(pid) -> bool:
    """True when `pid` is a live (not zombie) process."""
    if not pid:
        return False
    stat = Path(f"/proc/{pid}/stat")
    if stat.parent.parent.exists() and Path("/proc/self").exists():
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")  # a zombie has exited; only its parent has not looked
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def free_megabytes(path) -> float | None:
    """Free space (MB) on the disk holding `path`; None when it cannot be read."""
    try:
        return shutil.disk_usage(path).free / 2**20
    except OSError:
        return None


# -- file locks: held by an open handle, released by the kernel when the holder dies -------------


def try_lock(path):
    """Take the exclusive lock on file `path` without waiting: the open handle (keep it: the
    lock lasts while it is open), or None when another process holds it."""
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def lock_holder(path) -> int | None:
    """The pid that the holder of lock file `path` wrote into it; None when nobody holds it."""
    handle = try_lock(path)
    if handle is not None:  # nobody holds it
        handle.close()
        return None
    try:
        return int(Path(path).read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def hold_lock(path):
    """Hold the exclusive lock on file `path` for the with-block, waiting for it if need be."""
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield handle
