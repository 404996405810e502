"""The run store: a database (SQLite by default) plus an artifacts folder per run.

It is the only thing the training processes and the dashboard share, as TensorBoard's log
dir is: a run launched from the CLI shows in the dashboard, and a reload loses nothing.
Many processes may read while training processes write.

The database is FP8DEMO_STORE (or --store): unset, it is runs.sqlite in the home folder (one
file, WAL); `postgresql://user@host/database` is a server that workers on several hosts
share (database.py holds every difference between the two). Layout under the home folder
(FP8DEMO_HOME, default ~/.fp8demo), which is local to each host either way:
    runs.sqlite            comparisons, runs, metrics, fp8 snapshots (the SQLite store)
    runs/<run id>/         weights, config and vocabulary of a finished run; on PostgreSQL a
                           cache of the copies kept in the database (see run_dir)
    data/, cache/          IMDB extraction and tokenizer caches (see data.py, tokenizer.py)
FP8DEMO_ARTIFACTS=<folder every host mounts> keeps the runs' artifacts there instead.

`Store` is composed of one part per concern, each a mixin over the same database handle:
    schema.py     the tables, SCHEMA_VERSION and MIGRATIONS (used when a Store opens)
    runs.py       comparisons, runs, run state, cancel, reap, delete
    metrics.py    step and epoch metrics, fp8 amax / scales / probes / recipes
    queue.py      claims and the pool's rules, heartbeats, workers, liveness, evaluations
    sweeps.py     sweep rows
    artifacts.py  a run's files: run_dir, share_artifacts
"""

import os
from pathlib import Path

from fp8demo import database
from fp8demo.database import APPLICATION_ID, MOVE_IT, StoreError
from fp8demo.paths import default_home
from fp8demo.store.artifacts import ARTIFACTS_SHARED, MAX_ARTIFACT_BYTES, Artifacts
from fp8demo.store.base import ACTIVE, ENDED, StoreBase
from fp8demo.store.metrics import Metrics
from fp8demo.store.queue import HEARTBEAT_TIMEOUT_SECONDS, Queue, pick_next_run
from fp8demo.store.runs import Runs
from fp8demo.store.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION, open_schema
from fp8demo.store.sweeps import Sweeps

__all__ = [
    "ACTIVE",
    "APPLICATION_ID",
    "ARTIFACTS_SHARED",
    "ENDED",
    "HEARTBEAT_TIMEOUT_SECONDS",
    "MAX_ARTIFACT_BYTES",
    "MIGRATIONS",
    "MOVE_IT",
    "SCHEMA",
    "SCHEMA_VERSION",
    "Store",
    "StoreError",
    "pick_next_run",
]


class Store(Runs, Metrics, Queue, Sweeps, Artifacts, StoreBase):
    """Thread-safe handle on the run store (one database connection per thread).

    url: the database (see database.py); else FP8DEMO_STORE; else runs.sqlite in the home.
    """

    def __init__(self, home=None, url=None):
        self.home = Path(home).expanduser() if home else default_home()
        _make_home(self.home)
        url = url or os.environ.get("FP8DEMO_STORE") or f"sqlite:///{self.home / 'runs.sqlite'}"
        self.db = database.Database(url, lock_folder=self.home)
        self.url, self.backend = self.db.url, self.db.backend
        self.path = self.db.path  # the SQLite file; None on PostgreSQL
        self.where = self.db.where  # the file, or the URL without its password: for messages
        shared = os.environ.get("FP8DEMO_ARTIFACTS")
        self.artifacts = Path(shared).expanduser() if shared else None
        open_schema(self.db)

    def lock(self, name: str):
        """A context manager that holds `name` exclusively among all processes of this store
        while its with-block runs (database.Database.exclusive: a file lock in the home on
        SQLite, an advisory lock on PostgreSQL, which every host shares)."""
        return self.db.exclusive(name)


def _make_home(home: Path):
    """Create the home and its runs/ folder; StoreError naming what is in the way."""
    try:
        home.mkdir(parents=True, exist_ok=True)
        (home / "runs").mkdir(exist_ok=True)
    except OSError as e:
        reason = e.strerror
        # "File exists" / "Not a directory" do not say which file is in the way.
        for path in (home / "runs", home, *home.parents):
            if path.exists():
                if not path.is_dir():
                    reason = f"{path} is a file, not a folder"
                break
        raise StoreError(
            f"Cannot create the fp8demo home folder {home}: {reason}. "
            "Set FP8DEMO_HOME to a writable folder."
        ) from e
