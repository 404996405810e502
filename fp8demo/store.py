"""The run store: a database (SQLite by default) plus an artifacts folder per run.

It is the only thing the training process and the dashboard share, as TensorBoard's log
dir is: a run launched from the CLI shows in the dashboard, and a reload loses nothing.
Many processes may read while training processes write.

The database is FP8DEMO_STORE (or --store): unset, it is runs.sqlite in the home folder (one
file, WAL); `postgresql://user@host/database` is a server that workers on several hosts
share (database.py). Layout under the home folder (FP8DEMO_HOME, default ~/.fp8demo), which is
local to each host either way:
    runs.sqlite            comparisons, runs, metrics, fp8 snapshots (the SQLite store)
    runs/<run id>/         weights, config and vocabulary of a finished run; on PostgreSQL a
                           cache of the copies kept in the database (see run_dir)
    data/, cache/          IMDB extraction and tokenizer caches (see data.py, tokenizer.py)
FP8DEMO_ARTIFACTS=<folder every host mounts> keeps the runs' artifacts there instead.
"""

import contextlib
import json
import math
import numbers
import os
import socket
import time
import zlib
from pathlib import Path

import numpy as np

from fp8demo import database
from fp8demo.config import TrainConfig
from fp8demo.database import StoreError, upsert
from fp8demo.fp8 import ROLES
from fp8demo.resources import min_free_bytes

SCHEMA_VERSION = 6
# PRAGMA application_id of every store ("fp8d" in ASCII): tells a run store apart from another
# program's SQLite database that happens to sit at the same path.
APPLICATION_ID = 0x66703864
SQLITE_HEADER = b"SQLite format 3\x00"  # the first bytes of every (non-empty) SQLite file
# Store files this process has opened and accepted. Their header is never read again: closing
# any file descriptor of a file drops every POSIX lock the process holds on it, SQLite's too,
# and another process could then write under a live connection (a corrupt store).
_accepted_paths = set()
MOVE_IT = "Move it away or set FP8DEMO_HOME to another folder."
# Statements that bring a store from schema N to N + 1.
MIGRATIONS = {
    1: ["ALTER TABLE comparisons ADD COLUMN group_id INTEGER"],  # repeats over seeds
    2: [],  # fp8_probe is a new table, created with the others
    3: [],  # so is fp8_recipes
    4: [  # the device pool (worker.py) and sweeps (sweep.py); the sweeps table is new
        "ALTER TABLE runs ADD COLUMN host TEXT",
        "ALTER TABLE runs ADD COLUMN slot TEXT",
        "ALTER TABLE runs ADD COLUMN heartbeat_at REAL",
        "ALTER TABLE comparisons ADD COLUMN sweep_id INTEGER",
        "ALTER TABLE comparisons ADD COLUMN trial_number INTEGER",
    ],
    5: [],  # workers is a new table, created with the others
}
ACTIVE = ("queued", "running")
ENDED = ("finished", "failed", "cancelled", "interrupted")
# A running run of another host whose worker sent no heartbeat for this long is interrupted.
HEARTBEAT_TIMEOUT_SECONDS = 60.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS comparisons (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    config TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    group_id INTEGER,  -- comparisons launched together as repeats over seeds share one
    sweep_id INTEGER,  -- a sweep's trial: the sweep and Optuna's trial number
    trial_number INTEGER
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    comparison_id INTEGER NOT NULL REFERENCES comparisons(id),
    precision TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'queued',
    phase TEXT NOT NULL DEFAULT 'queued',
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL,
    worker_pid INTEGER,
    host TEXT,  -- the host name of the worker that claimed it
    slot TEXT,  -- the pool slot that trains it: a device index, or "all" (data-parallel)
    heartbeat_at REAL,  -- the worker's last sign of life while it runs
    device TEXT,
    epoch INTEGER NOT NULL DEFAULT 0,
    step INTEGER NOT NULL DEFAULT 0,
    steps_per_epoch INTEGER,
    total_steps INTEGER,
    steps_per_sec REAL,
    samples_per_sec REAL,
    elapsed REAL,
    eta REAL,
    fit_seconds REAL,
    test_loss REAL,
    test_accuracy REAL,
    params INTEGER,
    error TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    summary TEXT NOT NULL DEFAULT '{}'
);
-- A sweep (sweep.py): an Optuna study whose every trial is one comparison.
CREATE TABLE IF NOT EXISTS sweeps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    study_name TEXT NOT NULL,
    config TEXT NOT NULL,  -- the fixed settings (TrainConfig JSON)
    space TEXT NOT NULL,  -- the search space: JSON {name: spec}
    objective TEXT NOT NULL,
    direction TEXT NOT NULL,
    sampler TEXT NOT NULL,
    prune INTEGER NOT NULL,
    trials INTEGER NOT NULL,  -- how many trials to run
    state TEXT NOT NULL DEFAULT 'running',  -- running, complete, cancelled, failed
    label TEXT NOT NULL DEFAULT '',
    error TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs(status, id);
CREATE TABLE IF NOT EXISTS step_metrics (
    run_id INTEGER NOT NULL, step INTEGER NOT NULL, epoch INTEGER NOT NULL,
    time REAL NOT NULL, loss REAL, accuracy REAL,
    PRIMARY KEY (run_id, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS epoch_metrics (
    run_id INTEGER NOT NULL, epoch INTEGER NOT NULL, step INTEGER NOT NULL, time REAL NOT NULL,
    loss REAL, accuracy REAL, val_loss REAL, val_accuracy REAL,
    PRIMARY KEY (run_id, epoch)
) WITHOUT ROWID;
-- One row per training step: float32 amax values, shape (layers, 3 roles).
CREATE TABLE IF NOT EXISTS fp8_amax (
    run_id INTEGER NOT NULL, step INTEGER NOT NULL, amax BLOB NOT NULL,
    PRIMARY KEY (run_id, step)
) WITHOUT ROWID;
-- One row per snapshot: the scales in use, shape (layers, 3 roles).
CREATE TABLE IF NOT EXISTS fp8_scales (
    run_id INTEGER NOT NULL, step INTEGER NOT NULL, scales BLOB NOT NULL,
    PRIMARY KEY (run_id, step)
) WITHOUT ROWID;
-- One row per probe (probe.py): float32 fractions, shape (layers, 3 roles, 2 statistics).
CREATE TABLE IF NOT EXISTS fp8_probe (
    run_id INTEGER NOT NULL, step INTEGER NOT NULL, stats BLOB NOT NULL,
    PRIMARY KEY (run_id, step)
) WITHOUT ROWID;
-- One row per probe and scaling recipe (recipes.py): the probe's tensors quantized under that
-- recipe, float32, shape (layers, 3 roles, 3: underflow %, saturation %, SNR dB (inf: exact)).
CREATE TABLE IF NOT EXISTS fp8_recipes (
    run_id INTEGER NOT NULL, step INTEGER NOT NULL, recipe TEXT NOT NULL, stats BLOB NOT NULL,
    PRIMARY KEY (run_id, step, recipe)
) WITHOUT ROWID;
-- The live workers of every host (worker.py): a sweep keeps one trial per worker active.
CREATE TABLE IF NOT EXISTS workers (
    host TEXT NOT NULL, slot TEXT NOT NULL, pid INTEGER NOT NULL,
    started_at REAL NOT NULL, heartbeat_at REAL NOT NULL,
    PRIMARY KEY (host, slot)
);
-- A finished run's files (weights, config, vocabulary) when the store is PostgreSQL, so that
-- every host reaches them (see Store.run_dir). Unused on SQLite.
CREATE TABLE IF NOT EXISTS artifacts (
    run_id INTEGER NOT NULL, name TEXT NOT NULL, bytes BLOB NOT NULL,
    PRIMARY KEY (run_id, name)
) WITHOUT ROWID;
"""
# The largest artifact file the database keeps (PostgreSQL's limit for one value is 1 GB, and
# both ends hold a value in memory): larger models need FP8DEMO_ARTIFACTS.
MAX_ARTIFACT_BYTES = 256 * 2**20
# Written into a run's local folder once its files are in the database (or came from it).
ARTIFACTS_SHARED = ".in-store"


def default_home() -> Path:
    return Path(os.environ.get("FP8DEMO_HOME") or Path.home() / ".fp8demo").expanduser()


def host_name() -> str:
    """The name of this host on runs and in reap(): FP8DEMO_HOST when set (several "hosts" on
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
        return state not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """Thread-safe handle on the run store (one database connection per thread).

    url: the database (see database.py); else FP8DEMO_STORE; else runs.sqlite in the home.
    """

    def __init__(self, home=None, url=None):
        self.home = Path(home).expanduser() if home else default_home()
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            (self.home / "runs").mkdir(exist_ok=True)
        except OSError as e:
            reason = e.strerror
            # "File exists" / "Not a directory" do not say which file is in the way.
            for path in (self.home / "runs", self.home, *self.home.parents):
                if path.exists():
                    if not path.is_dir():
                        reason = f"{path} is a file, not a folder"
                    break
            raise StoreError(
                f"Cannot create the fp8demo home folder {self.home}: {reason}. "
                "Set FP8DEMO_HOME to a writable folder."
            ) from e
        url = url or os.environ.get("FP8DEMO_STORE") or f"sqlite:///{self.home / 'runs.sqlite'}"
        self.db = database.Database(url)
        self.url, self.backend = self.db.url, self.db.backend
        self.path = self.db.path  # the SQLite file; None on PostgreSQL
        self.where = self.db.where  # the file, or the URL without its password: for messages
        shared = os.environ.get("FP8DEMO_ARTIFACTS")
        self.artifacts = Path(shared).expanduser() if shared else None
        if self.backend == "sqlite":
            self._init_sqlite_schema()
        else:
            self._init_postgres_schema()

    # -- connection ---------------------------------------------------------------------

    def _conn(self) -> database.Connection:
        return self.db.connection()

    def _execute(self, sql, params=()):
        return self._conn().execute(sql, params)

    def _transaction(self):
        """One write transaction around the with-block (database.Connection.transaction):
        COMMIT when it ends (by a return too), ROLLBACK when it raises. On PostgreSQL a
        statement that reads rows it will change locks them: SELECT … FOR UPDATE."""
        return self._conn().transaction()

    def _write(self, sql, params=()):
        try:
            return self._execute(sql, params)
        except database.OperationalError as e:
            raise StoreError(f"Cannot write to the run store {self.where}: {e}") from e

    def _init_sqlite_schema(self):
        """Create, migrate or accept the store; refuse (writing nothing) anything else."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"Cannot create the folder of the run store {self.path}: {e}") from e
        if self.path.resolve() not in _accepted_paths:
            self._refuse_a_file_that_is_not_sqlite()
        conn = self._conn()
        try:
            # Every check runs inside the write lock, before the first write: a refused file
            # keeps its bytes, and two processes opening a new store create it once.
            with self._transaction():
                self._refuse_another_programs_database(conn)
                self._create_or_migrate(conn, self._schema_version(conn))
                # Unstamped stores are recognised by their schema version; stamp them too.
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            _accepted_paths.add(self.path.resolve())
        except database.Error as e:
            raise StoreError(f"The run store {self.path} is not usable: {e}. {MOVE_IT}") from e

    def _init_postgres_schema(self):
        """Create or migrate the store's tables in the database, once however many processes
        open it at the same time: an advisory lock serialises them (the others then find the
        schema version current). The database may hold other tables (Optuna's study)."""
        conn = self._conn()
        try:
            with self._transaction():
                conn.execute("SELECT pg_advisory_xact_lock(?)", (APPLICATION_ID,))
                version = self._schema_version(conn)
                if version != SCHEMA_VERSION or "meta" not in conn.tables():
                    self._create_or_migrate(conn, version)
        except database.Error as e:
            raise StoreError(
                f"The run store {self.where} is not usable: {e}. Its user needs to be "
                "allowed to create tables there (for example the database's owner)."
            ) from e

    def _create_or_migrate(self, conn, version: int):
        """Create the schema's missing tables, migrate from `version`, record the version."""
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"The run store {self.where} was written by a newer fp8demo (schema "
                f"{version}); this version reads schema {SCHEMA_VERSION}. Upgrade "
                f"fp8demo or {self._another_store()}."
            )
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.ddl(statement)
        for step in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[step]:
                if not _adds_an_existing_column(conn, statement):
                    conn.ddl(statement)
        conn.execute(
            upsert("meta", ("key", "value"), key=("key",)), ("schema_version", str(SCHEMA_VERSION))
        )

    def _refuse_a_file_that_is_not_sqlite(self):
        """A clear answer for notes, an archive, … at the store's path (SQLite says less)."""
        try:
            with open(self.path, "rb") as f:
                header = f.read(len(SQLITE_HEADER))
        except (FileNotFoundError, IsADirectoryError):
            return  # a new store, or a folder: sqlite3.connect names that problem
        except OSError as e:
            raise StoreError(f"Cannot read the run store {self.path}: {e.strerror}.") from e
        if header and header != SQLITE_HEADER:
            raise StoreError(
                f"{self.path} is not an fp8demo run store: it is not a SQLite "
                f"database at all. {MOVE_IT}"
            )

    def _refuse_another_programs_database(self, conn):
        """StoreError for a SQLite database that holds something, but not a run store."""
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if application_id == APPLICATION_ID:
            return
        tables = conn.tables()
        if application_id == 0 and (not tables or _schema_version_text(conn) is not None):
            return  # a new, empty database, or an unstamped store
        what = (
            f"it holds {', '.join(tables)}"
            if tables
            else f"its application_id is {application_id:#x}"
        )
        raise StoreError(
            f"{self.path} is a SQLite database of another program ({what}), not "
            f"an fp8demo run store; it was left untouched. {MOVE_IT}"
        )

    def _schema_version(self, conn) -> int:
        """The store's schema version; SCHEMA_VERSION for a new store."""
        text = _schema_version_text(conn)
        if text is None:
            return SCHEMA_VERSION
        try:
            return int(text)
        except ValueError:
            raise StoreError(
                f"The run store {self.where} has an unreadable schema version ({text!r}). "
                + (MOVE_IT if self.backend == "sqlite" else f"Use {self._another_store()}.")
            ) from None

    def _another_store(self) -> str:
        if self.backend == "sqlite":
            return "set FP8DEMO_HOME to another folder"
        return "another database (FP8DEMO_STORE or --store)"

    # -- artifacts: a finished run's weights, config and vocabulary ----------------------

    def run_dir(self, run_id: int) -> Path:
        """The folder of a run's files, on this host. With a PostgreSQL store (and no
        FP8DEMO_ARTIFACTS) the files live in the database: the first call on a host that did
        not train the run writes them here."""
        if self.artifacts is not None:
            return self.artifacts / str(int(run_id))
        folder = self._local_run_dir(run_id)
        if self._artifacts_in_database() and not (folder / ARTIFACTS_SHARED).exists():
            self._fetch_artifacts(int(run_id), folder)
        return folder

    def _local_run_dir(self, run_id: int) -> Path:
        return self.home / "runs" / str(int(run_id))

    def _artifacts_in_database(self) -> bool:
        return self.backend == "postgresql" and self.artifacts is None

    def share_artifacts(self, run_id: int):
        """Copy a run's files into the database, where every host finds them (PostgreSQL
        store only; a shared folder or SQLite needs nothing). StoreError, copying nothing, for
        a file over MAX_ARTIFACT_BYTES."""
        if not self._artifacts_in_database():
            return
        folder = self._local_run_dir(run_id)
        files = sorted(  # not locks (training.PTQ_LOCK) nor hidden files (the marker)
            f
            for f in folder.iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix != ".lock"
        )
        for f in files:
            size = f.stat().st_size
            if size > MAX_ARTIFACT_BYTES:
                raise StoreError(
                    f"Run {run_id}'s {f.name} has {size:,} bytes, more than the "
                    f"{MAX_ARTIFACT_BYTES:,} the database store keeps per file: set "
                    "FP8DEMO_ARTIFACTS to a folder every host mounts to keep larger models."
                )
        sql = upsert("artifacts", ("run_id", "name", "bytes"), key=("run_id", "name"))
        with self._transaction() as conn:
            for f in files:
                conn.execute(sql, (int(run_id), f.name, f.read_bytes()))
        (folder / ARTIFACTS_SHARED).touch()

    def _fetch_artifacts(self, run_id: int, folder: Path):
        """Write the run's files from the database into `folder` (nothing when it has none);
        each file appears whole (a temporary name, then a rename), the marker last."""
        rows = self._execute("SELECT name, bytes FROM artifacts WHERE run_id=?", (run_id,))
        rows = rows.fetchall()
        if not rows:
            return
        folder.mkdir(parents=True, exist_ok=True)
        import tempfile

        for name, payload in rows:
            handle, partial = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
            with os.fdopen(handle, "wb") as f:
                f.write(payload)
            os.replace(partial, folder / name)
        (folder / ARTIFACTS_SHARED).touch()

    # -- a lock shared by every process of the store --------------------------------------

    @contextlib.contextmanager
    def lock(self, name: str):
        """Hold `name` exclusively among all processes of this store while the with-block
        runs: a file lock in the home on SQLite (one host), an advisory lock in the database
        on PostgreSQL (every host; the server releases it when its holder dies)."""
        if self.backend == "sqlite":
            import fcntl

            with open(self.home / f"{name}.lock", "a+") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                yield
            return
        key = (APPLICATION_ID, int.from_bytes(zlib.crc32(name.encode()).to_bytes(4), signed=True))
        conn = self._conn()
        conn.execute("SELECT pg_advisory_lock(?, ?)", key)
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(?, ?)", key)

    # -- launching ----------------------------------------------------------------------

    def create_comparison(
        self,
        config: TrainConfig,
        label: str = "",
        group_id: int | None = None,
        trial: tuple[int, int] | None = None,
    ) -> tuple[int, list[int]]:
        """Queue one comparison: one run per precision of `config`, in order.

        group_id: the first comparison of a set of repeats over seeds ("self" = this one).
        trial: (sweep id, Optuna trial number) of the sweep trial it is (sweep.py).
        """
        config.validate()
        now = time.time()
        from fp8demo.worker import trains_side_by_side

        # Decided once, here: every worker of the pool, on any host, reads the same answer.
        summary = json.dumps({"side_by_side": trains_side_by_side(config)})
        with self._transaction() as conn:
            cid = conn.execute(
                "INSERT INTO comparisons (created_at, config, label) VALUES (?, ?, ?) RETURNING id",
                (now, config.to_json(), label),
            ).fetchone()[0]
            if group_id is not None:
                conn.execute(
                    "UPDATE comparisons SET group_id=? WHERE id=?",
                    (cid if group_id == "self" else int(group_id), cid),
                )
            if trial is not None:
                conn.execute(
                    "UPDATE comparisons SET sweep_id=?, trial_number=? WHERE id=?",
                    (int(trial[0]), int(trial[1]), cid),
                )
            run_ids = [
                conn.execute(
                    "INSERT INTO runs (comparison_id, precision, config, created_at, updated_at, "
                    "summary) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                    (cid, precision, config.to_json(), now, now, summary),
                ).fetchone()[0]
                for precision in config.precisions
            ]
        return cid, run_ids

    # -- run state ----------------------------------------------------------------------

    def update_run(self, run_id: int, **fields):
        if "summary" in fields and not isinstance(fields["summary"], str):
            fields["summary"] = json.dumps(fields["summary"])
        fields["updated_at"] = time.time()
        columns = ", ".join(f"{name}=?" for name in fields)
        self._write(f"UPDATE runs SET {columns} WHERE id=?", (*fields.values(), int(run_id)))

    def merge_summary(self, run_id: int, **values):
        summary = self.run(run_id)["summary"]
        summary.update(values)
        self.update_run(run_id, summary=summary)

    def end_run(self, run_id: int, status: str, error: str | None = None, **fields):
        assert status in ENDED, status
        self.update_run(
            run_id,
            status=status,
            phase=status,
            finished_at=time.time(),
            error=error,
            eta=None,
            **fields,
        )

    def request_cancel(self, run_id: int) -> str:
        """Cancel a run: a queued one ends at once, a running one at its next step."""
        run_id = _parse_id(run_id, "a run id (a whole number)")
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT status FROM runs WHERE id=? FOR UPDATE", (_sql_id(run_id),)
            ).fetchone()
            if row is None:
                raise StoreError(f"There is no run {run_id}.")
            now = time.time()
            if row["status"] == "queued":
                conn.execute(
                    "UPDATE runs SET status='cancelled', phase='cancelled', "
                    "finished_at=?, updated_at=? WHERE id=?",
                    (now, now, run_id),
                )
            elif row["status"] == "running":
                conn.execute(
                    "UPDATE runs SET cancel_requested=1, updated_at=? WHERE id=?", (now, run_id)
                )
        return row["status"]

    def cancel_comparison(self, comparison_id: int):
        for run in self.runs(comparison_id):
            if run["status"] in ACTIVE:
                self.request_cancel(run["id"])

    def cancel_requested(self, run_id: int) -> bool:
        row = self._execute(
            "SELECT cancel_requested FROM runs WHERE id=?", (int(run_id),)
        ).fetchone()
        return bool(row and row[0])

    def reap(self) -> list[int]:
        """Mark running runs whose training process is gone as interrupted; return their ids.

        A run of this host is gone when its worker's pid is; a run of another host (a shared
        PostgreSQL store) when its heartbeat is older than HEARTBEAT_TIMEOUT_SECONDS."""
        here, now = host_name(), time.time()
        lost = {}
        for row in self._execute(
            "SELECT id, worker_pid, host, heartbeat_at, started_at FROM runs WHERE status='running'"
        ):
            if row["host"] in (None, here):
                if not pid_alive(row["worker_pid"]):
                    lost[row["id"]] = ""
            elif now - (row["heartbeat_at"] or row["started_at"] or 0) > HEARTBEAT_TIMEOUT_SECONDS:
                lost[row["id"]] = row["host"]
        for run_id, host in lost.items():
            run = self.run(run_id)
            if host:
                silent = now - (run["heartbeat_at"] or run["started_at"] or 0)
                error = (
                    f"The training process on host {host} (pid {run['worker_pid']}) sent no "
                    f"heartbeat for {silent:.0f} s during '{run['phase']}': it stopped, or lost "
                    "the store, without finishing; partial metrics are kept."
                )
            else:
                error = (
                    f"The training process (pid {run['worker_pid']}) stopped during "
                    f"'{run['phase']}' without finishing; partial metrics are kept."
                    + self._low_disk_note()
                )
            self.end_run(run_id, "interrupted", error=error)
        return list(lost)

    def _low_disk_note(self) -> str:
        """A hint when the disk is (nearly) full: the likeliest reason a worker died silently."""
        import shutil

        try:
            free = shutil.disk_usage(self.home).free
        except OSError:
            return ""
        if free >= min_free_bytes():
            return ""
        return (
            f" The disk holding {self.home} has only {free / 2**20:,.0f} MB free: a full disk "
            "may have stopped it."
        )

    # -- reading runs -------------------------------------------------------------------

    @staticmethod
    def _run_dict(row) -> dict:
        run = dict(row)
        run["config"] = TrainConfig.from_dict(json.loads(run["config"]))
        run["summary"] = json.loads(run["summary"] or "{}")
        return run

    def run(self, run_id) -> dict:
        run_id = _parse_id(run_id, "a run id (a whole number)")
        row = self._execute("SELECT * FROM runs WHERE id=?", (_sql_id(run_id),)).fetchone()
        if row is None:
            raise StoreError(f"There is no run {run_id} in {self.where}.")
        return self._run_dict(row)

    def runs(self, comparison_id=None) -> list[dict]:
        if comparison_id is None:
            rows = self._execute("SELECT * FROM runs ORDER BY id")
        else:
            rows = self._execute(
                "SELECT * FROM runs WHERE comparison_id=? ORDER BY id", (int(comparison_id),)
            )
        return [self._run_dict(r) for r in rows]

    def queue(self) -> list[dict]:
        """Running and waiting runs, in the order they will train."""
        rows = self._execute(
            "SELECT * FROM runs WHERE status IN ('queued', 'running') ORDER BY status='queued', id"
        )
        return [self._run_dict(r) for r in rows]

    def comparisons(self) -> list[dict]:
        """Every comparison, newest first, with its runs."""
        result = []
        for row in self._execute("SELECT * FROM comparisons ORDER BY id DESC"):
            comparison = dict(row)
            comparison["config"] = TrainConfig.from_dict(json.loads(comparison["config"]))
            comparison["runs"] = self.runs(row["id"])
            result.append(comparison)
        return result

    def comparison(self, comparison_id) -> dict:
        comparison_id = _parse_id(comparison_id, "a comparison id")
        row = self._execute(
            "SELECT * FROM comparisons WHERE id=?", (_sql_id(comparison_id),)
        ).fetchone()
        if row is None:
            raise StoreError(f"There is no comparison {comparison_id}.")
        comparison = dict(row)
        comparison["config"] = TrainConfig.from_dict(json.loads(comparison["config"]))
        comparison["runs"] = self.runs(comparison_id)
        return comparison

    def group(self, group_id) -> list[dict]:
        """The comparisons of one set of repeats over seeds, oldest first."""
        ids = [
            r[0]
            for r in self._execute(
                "SELECT id FROM comparisons WHERE group_id=? ORDER BY id", (int(group_id),)
            )
        ]
        return [self.comparison(i) for i in ids]

    def latest_comparison_id(self) -> int | None:
        row = self._execute("SELECT MAX(id) FROM comparisons").fetchone()
        return row[0]

    # -- metrics ------------------------------------------------------------------------

    def add_steps(self, run_id: int, rows):
        """rows: (step, epoch, time, loss, accuracy) with true per-batch loss and accuracy."""
        self._conn().executemany(
            upsert(
                "step_metrics",
                ("run_id", "step", "epoch", "time", "loss", "accuracy"),
                key=("run_id", "step"),
            ),
            [
                (int(run_id), int(s), int(e), float(t), _num(loss), _num(a))
                for s, e, t, loss, a in rows
            ],
        )

    def add_epoch(
        self,
        run_id: int,
        epoch: int,
        step: int,
        loss=None,
        accuracy=None,
        val_loss=None,
        val_accuracy=None,
    ):
        self._write(
            upsert(
                "epoch_metrics",
                ("run_id", "epoch", "step", "time", "loss", "accuracy", "val_loss", "val_accuracy"),
                key=("run_id", "epoch"),
            ),
            (
                int(run_id),
                int(epoch),
                int(step),
                time.time(),
                _num(loss),
                _num(accuracy),
                _num(val_loss),
                _num(val_accuracy),
            ),
        )

    def step_metrics(self, run_id: int, since_step: int = -1) -> dict:
        """Per-step metrics as numpy arrays: step, epoch, time, loss, accuracy."""
        rows = self._execute(
            "SELECT step, epoch, time, loss, accuracy FROM step_metrics "
            "WHERE run_id=? AND step>? ORDER BY step",
            (int(run_id), since_step),
        ).fetchall()
        arrays = np.array(rows, dtype=np.float64).reshape(-1, 5)
        return {
            name: arrays[:, i]
            for i, name in enumerate(("step", "epoch", "time", "loss", "accuracy"))
        }

    def epoch_metrics(self, run_id: int) -> list[dict]:
        return [
            dict(r)
            for r in self._execute(
                "SELECT * FROM epoch_metrics WHERE run_id=? ORDER BY epoch", (int(run_id),)
            )
        ]

    # -- fp8 snapshots ------------------------------------------------------------------

    def add_fp8_amax(self, run_id: int, first_step: int, amax: np.ndarray):
        """amax: (steps, layers, 3 roles), the amax of each step from `first_step` on."""
        amax = np.asarray(amax, dtype=np.float32)
        self._conn().executemany(
            upsert("fp8_amax", ("run_id", "step", "amax"), key=("run_id", "step")),
            [(int(run_id), first_step + i, amax[i].tobytes()) for i in range(len(amax))],
        )

    def add_fp8_scales(self, run_id: int, step: int, scales: np.ndarray):
        self._write(
            upsert("fp8_scales", ("run_id", "step", "scales"), key=("run_id", "step")),
            (int(run_id), int(step), np.asarray(scales, dtype=np.float32).tobytes()),
        )

    def add_fp8_probe(self, run_id: int, rows):
        """rows: (step, stats[layers, 3 roles, 2]) with saturation and underflow fractions."""
        self._conn().executemany(
            upsert("fp8_probe", ("run_id", "step", "stats"), key=("run_id", "step")),
            [
                (int(run_id), int(step), np.asarray(stats, np.float32).tobytes())
                for step, stats in rows
            ],
        )

    def fp8_probe(self, run_id: int, since_step: int = -1):
        """(steps, stats[probes, layers, roles, (saturation, underflow)]) in time order."""
        return self._fp8_series("fp8_probe", "stats", run_id, since_step, extra=(2,))

    def add_fp8_recipes(self, run_id: int, recipes, rows):
        """rows: (step, stats[layers, 3 roles, recipes, 3]) of probe.Probe.measure, the
        recipes in the order of `recipes`."""
        self._conn().executemany(
            upsert(
                "fp8_recipes",
                ("run_id", "step", "recipe", "stats"),
                key=("run_id", "step", "recipe"),
            ),
            [
                (int(run_id), int(step), recipe, np.ascontiguousarray(stats[:, :, k]).tobytes())
                for step, stats in ((s, np.asarray(v, np.float32)) for s, v in rows)
                for k, recipe in enumerate(recipes)
            ],
        )

    def fp8_recipes(self, run_id: int, since_step: int = -1):
        """(steps, recipes, stats[probes, layers, roles, recipes, (underflow_pct,
        saturation_pct, snr_db)]) in time order; recipes in recipes.RECIPES' order, a recipe
        missing at a probe NaN."""
        from fp8demo.recipes import RECIPES

        n_layers = len(self.run(run_id)["summary"].get("fp8_layers", []))
        rows = self._execute(
            "SELECT step, recipe, stats FROM fp8_recipes WHERE run_id=? AND step>? ORDER BY step",
            (int(run_id), since_step),
        ).fetchall()
        steps = sorted({r[0] for r in rows})
        known = {name: k for k, name in enumerate(RECIPES)}  # others (older names) last
        names = sorted({r[1] for r in rows}, key=lambda n: (known.get(n, len(known)), n))
        stats = np.full((len(steps), n_layers, len(ROLES), len(names), 3), np.nan, np.float32)
        at_step = {step: i for i, step in enumerate(steps)}
        at_recipe = {name: k for k, name in enumerate(names)}
        for step, recipe, blob in rows:
            values = np.frombuffer(blob, np.float32).reshape(n_layers, len(ROLES), 3)
            stats[at_step[step], :, :, at_recipe[recipe]] = values
        return np.array(steps, np.int64), tuple(names), stats

    def _fp8_series(self, table, column, run_id, since_step, extra=()):
        n_layers = len(self.run(run_id)["summary"].get("fp8_layers", []))
        rows = self._execute(
            f"SELECT step, {column} FROM {table} WHERE run_id=? AND step>? ORDER BY step",
            (int(run_id), since_step),
        ).fetchall()
        steps = np.array([r[0] for r in rows], dtype=np.int64)
        values = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
        return steps, values.reshape(len(rows), n_layers, len(ROLES), *extra)

    def fp8_amax(self, run_id: int, since_step: int = -1):
        """(steps, amax[steps, layers, roles]) in time order.

        Layer names are in the run's summary['fp8_layers'].
        """
        return self._fp8_series("fp8_amax", "amax", run_id, since_step)

    def fp8_scales(self, run_id: int, since_step: int = -1):
        return self._fp8_series("fp8_scales", "scales", run_id, since_step)

    # -- the device pool ------------------------------------------------------------------
    # Each worker of the pool (worker.py) claims the next run pick_next_run allows; while it
    # trains, the worker refreshes the run's heartbeat_at so that reap() on any host can tell
    # a dead worker of another host from a live one.

    def claim_next_run(
        self, worker_pid: int, slot="0", host: str | None = None, data_parallel_ok: bool = True
    ) -> dict | None:
        """Atomically move the next run the pool of `host` (default: this one, host_name())
        may start (pick_next_run) to running, as trained by `worker_pid` in pool slot `slot`
        ("all" for a data-parallel run), and return it; None when no run may start now.

        data_parallel_ok: False for a worker that cannot see every device."""
        host = host or host_name()
        with self._transaction() as conn:
            if self.backend == "postgresql":  # the rules read every active run: one claim at once
                conn.execute("SELECT pg_advisory_xact_lock(?, ?)", (APPLICATION_ID, 1))
            rows = conn.execute(
                "SELECT id, comparison_id, status, config, summary, host FROM runs "
                "WHERE status IN ('queued', 'running') ORDER BY id"
            ).fetchall()
            active = [_pool_row(row) for row in rows]
            run_id = pick_next_run(active, data_parallel_ok, host)
            if run_id is None:
                return None
            whole_pool = next(r["data_parallel"] for r in active if r["id"] == run_id)
            now = time.time()
            # (Still queued: on PostgreSQL a cancel may have ended it since the SELECT.)
            claimed = conn.execute(
                "UPDATE runs SET status='running', phase='starting', started_at=?, updated_at=?, "
                "heartbeat_at=?, worker_pid=?, host=?, slot=? WHERE id=? AND status='queued'",
                (
                    now,
                    now,
                    now,
                    worker_pid,
                    host,
                    "all" if whole_pool else str(slot),
                    run_id,
                ),
            ).rowcount
        return self.run(run_id) if claimed else None

    def heartbeat(self, run_id: int):
        """The worker training `run_id` is alive."""
        self._write(
            "UPDATE runs SET heartbeat_at=? WHERE id=? AND status='running'",
            (time.time(), int(run_id)),
        )

    # -- workers ------------------------------------------------------------------------

    def worker_alive(self, host: str, slot, pid: int):
        """Worker `pid` of `host` holds pool slot `slot` and is alive (its heartbeat)."""
        now = time.time()
        self._write(
            "INSERT INTO workers (host, slot, pid, started_at, heartbeat_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (host, slot) DO UPDATE SET "
            "heartbeat_at=excluded.heartbeat_at, pid=excluded.pid, started_at=CASE WHEN "
            "workers.pid=excluded.pid THEN workers.started_at ELSE excluded.started_at END",
            (host, str(slot), int(pid), now, now),
        )

    def worker_gone(self, host: str, slot, pid: int):
        """Worker `pid` of `host` left pool slot `slot`."""
        self._write(
            "DELETE FROM workers WHERE host=? AND slot=? AND pid=?", (host, str(slot), int(pid))
        )

    def live_workers(self) -> list[dict]:
        """The workers of every host that are alive: on this host, by their pid; on another,
        by a heartbeat younger than HEARTBEAT_TIMEOUT_SECONDS. Host, then slot order."""
        here, now = host_name(), time.time()
        rows = self._execute("SELECT * FROM workers ORDER BY host, slot").fetchall()
        return [
            dict(row)
            for row in rows
            if (
                pid_alive(row["pid"])
                if row["host"] == here
                else now - row["heartbeat_at"] < HEARTBEAT_TIMEOUT_SECONDS
            )
        ]

    def queued_count(self) -> int:
        return self._execute("SELECT COUNT(*) FROM runs WHERE status='queued'").fetchone()[0]

    def data_parallel_next(self, host: str | None = None) -> bool:
        """True when the next run the pool of `host` (default: this one) may start is
        data-parallel (that pool is idle)."""
        rows = self._execute(
            "SELECT id, comparison_id, status, config, summary, host FROM runs "
            "WHERE status IN ('queued', 'running') ORDER BY id"
        ).fetchall()
        active = [_pool_row(row) for row in rows]
        run_id = pick_next_run(active, host=host or host_name())
        return any(r["id"] == run_id and r["data_parallel"] for r in active)

    # -- sweeps -------------------------------------------------------------------------
    # A sweep's trials are Optuna's (sweep.py); the store keeps what a sweep is and which
    # comparison each trial trained (comparisons.sweep_id, trial_number).

    def create_sweep(
        self,
        config: TrainConfig,
        space: dict,
        objective: str,
        direction: str,
        sampler: str,
        prune: bool,
        trials: int,
        label: str = "",
    ) -> int:
        """Record a sweep that sweep.create_sweep validated; its Optuna study is sweep-<id>."""
        with self._transaction() as conn:
            sweep_id = conn.execute(
                "INSERT INTO sweeps (created_at, study_name, config, space, objective, "
                "direction, sampler, prune, trials, label) "
                "VALUES (?, '', ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    time.time(),
                    config.to_json(),
                    json.dumps(space),
                    objective,
                    direction,
                    sampler,
                    int(bool(prune)),
                    int(trials),
                    label,
                ),
            ).fetchone()[0]
            conn.execute(
                "UPDATE sweeps SET study_name=? WHERE id=?", (f"sweep-{sweep_id}", sweep_id)
            )
        return sweep_id

    @staticmethod
    def _sweep_dict(row) -> dict:
        sweep = dict(row)
        sweep["config"] = TrainConfig.from_dict(json.loads(sweep["config"]))
        sweep["space"] = json.loads(sweep["space"])
        sweep["prune"] = bool(sweep["prune"])
        return sweep

    def sweep(self, sweep_id) -> dict:
        sweep_id = _parse_id(sweep_id, "a sweep id (a whole number)")
        row = self._execute("SELECT * FROM sweeps WHERE id=?", (_sql_id(sweep_id),)).fetchone()
        if row is None:
            raise StoreError(f"There is no sweep {sweep_id}.")
        return self._sweep_dict(row)

    def sweeps(self) -> list[dict]:
        """Every sweep, newest first."""
        return [self._sweep_dict(r) for r in self._execute("SELECT * FROM sweeps ORDER BY id DESC")]

    def set_sweep_state(self, sweep_id: int, state: str, error: str | None = None):
        assert state in ("running", "complete", "cancelled", "failed"), state
        self._write("UPDATE sweeps SET state=?, error=? WHERE id=?", (state, error, int(sweep_id)))

    def sweep_comparisons(self, sweep_id: int) -> dict[int, dict]:
        """The comparison of each trial of a sweep, by trial number, with its runs."""
        rows = self._execute(
            "SELECT id, trial_number FROM comparisons WHERE sweep_id=? ORDER BY trial_number",
            (int(sweep_id),),
        ).fetchall()
        return {row["trial_number"]: self.comparison(row["id"]) for row in rows}

    # -- housekeeping -------------------------------------------------------------------

    def delete_comparison(self, comparison_id: int):
        runs = self.runs(comparison_id)
        if any(r["status"] in ACTIVE for r in runs):
            raise StoreError("Stop the comparison's runs before deleting it.")
        with self._transaction() as conn:
            for run in runs:
                for table in (
                    "step_metrics",
                    "epoch_metrics",
                    "fp8_amax",
                    "fp8_scales",
                    "fp8_probe",
                    "fp8_recipes",
                    "artifacts",
                ):
                    conn.execute(f"DELETE FROM {table} WHERE run_id=?", (run["id"],))
                conn.execute("DELETE FROM runs WHERE id=?", (run["id"],))
            conn.execute("DELETE FROM comparisons WHERE id=?", (int(comparison_id),))
        import shutil

        for run in runs:
            shutil.rmtree(self._local_run_dir(run["id"]), ignore_errors=True)
            if self.artifacts is not None:
                shutil.rmtree(self.run_dir(run["id"]), ignore_errors=True)


def _pool_row(row) -> dict:
    """What the pool's rules read of an active run."""
    return {
        "id": row["id"],
        "comparison_id": row["comparison_id"],
        "status": row["status"],
        "host": row["host"],
        "data_parallel": bool(json.loads(row["config"]).get("data_parallel")),
        "side_by_side": bool(json.loads(row["summary"] or "{}").get("side_by_side")),
    }


def pick_next_run(
    active: list[dict], data_parallel_ok: bool = True, host: str | None = None
) -> int | None:
    """The id of the queued run the pool of `host` may start now, or None.

    active: the queued and running runs, oldest first, as _pool_row reads them. The oldest
    queued run that the rules allow: nothing starts on a host while a data-parallel run (which
    uses every device of its host) runs there; a data-parallel run starts only when nothing
    runs on the host, and the runs queued after it wait for it; a run of a comparison that
    trains one precision after the other waits while another run of its comparison runs (on
    any host). host None: every host's runs count as this pool's (one host).
    """
    running = [r for r in active if r["status"] == "running"]
    # A run without a host was claimed before runs recorded one: count it as this host's.
    here = [r for r in running if host is None or r.get("host") in (None, host)]
    if any(r["data_parallel"] for r in here):
        return None
    busy = {r["comparison_id"] for r in running}
    for run in active:
        if run["status"] != "queued":
            continue
        if run["data_parallel"]:
            return run["id"] if not here and data_parallel_ok else None
        if run["side_by_side"] or run["comparison_id"] not in busy:
            return run["id"]
    return None


def _parse_id(value, what: str) -> int:
    """A row id from user text or a number; StoreError (not a crash) for anything else.

    Only whole numbers pass: int() alone would turn 1.5 into run 1 and True into run 1.
    """
    if isinstance(value, (bool, np.bool_)):
        pass
    elif isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    elif isinstance(value, numbers.Integral):
        return int(value)
    elif isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    raise StoreError(f"{value!r} is not {what}.")


def _sql_id(number: int) -> int:
    """SQLite ids are signed 64-bit: a larger number names no row (and would overflow)."""
    return number if -(2**63) <= number < 2**63 else -1  # ids are positive: -1 matches nothing


def _schema_version_text(conn) -> str | None:
    """meta's schema_version; None without one (a new database, or another program's)."""
    if not {"key", "value"} <= set(conn.columns("meta")):  # no meta, or another program's
        return None
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return None if row is None else str(row[0])


def _adds_an_existing_column(conn, statement: str) -> bool:
    """True for an ALTER TABLE … ADD COLUMN whose column exists: a table that the current
    SCHEMA created during this migration has every column already."""
    words = statement.split()
    if words[:2] != ["ALTER", "TABLE"] or words[3:5] != ["ADD", "COLUMN"]:
        return False
    return words[5] in conn.columns(words[2])


def _num(value):
    if value is None:
        return None
    value = float(value)
    return value if value == value else None  # NaN → NULL (shown as a gap)
