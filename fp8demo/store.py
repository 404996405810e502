"""The run store: one SQLite file (WAL) plus an artifacts folder per run.

It is the only thing the training process and the dashboard share, as TensorBoard's log
dir is: a run launched from the CLI shows in the dashboard, and a reload loses nothing.
Many processes may read while one training process writes.

Layout under the home folder (FP8DEMO_HOME, default ~/.fp8demo):
    runs.sqlite            comparisons, runs, metrics, fp8 snapshots
    runs/<run id>/         weights, config and vocabulary of a finished run
    data/, cache/          IMDB extraction and tokenizer caches (see data.py, tokenizer.py)
"""

import contextlib
import json
import math
import numbers
import os
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np

from fp8demo.config import TrainConfig
from fp8demo.fp8 import ROLES
from fp8demo.resources import min_free_bytes

SCHEMA_VERSION = 4
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
}
ACTIVE = ("queued", "running")
ENDED = ("finished", "failed", "cancelled", "interrupted")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS comparisons (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    config TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    group_id INTEGER  -- comparisons launched together as repeats over seeds share one
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
"""


class StoreError(RuntimeError):
    """The store cannot be opened or used; the message says why and what to do."""


def default_home() -> Path:
    return Path(os.environ.get("FP8DEMO_HOME") or Path.home() / ".fp8demo").expanduser()


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
    """Thread-safe handle on the run store (one SQLite connection per thread)."""

    def __init__(self, home=None):
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
        self.path = self.home / "runs.sqlite"
        self._local = threading.local()
        self._init_schema()

    # -- connection ---------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            except sqlite3.Error as e:
                raise StoreError(f"Cannot open the run store {self.path}: {e}") from e
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 30000")
            self._local.conn = conn
        return conn

    def _execute(self, sql, params=()):
        return self._conn().execute(sql, params)

    @contextlib.contextmanager
    def _transaction(self):
        """One write transaction around the with-block: COMMIT when it ends (by a return too),
        ROLLBACK when it raises. BEGIN IMMEDIATE takes the write lock up front, so two
        processes never both read and then fail to upgrade to writing."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _write(self, sql, params=()):
        try:
            return self._execute(sql, params)
        except sqlite3.OperationalError as e:
            raise StoreError(f"Cannot write to the run store {self.path}: {e}") from e

    def _init_schema(self):
        """Create, migrate or accept the store; refuse (writing nothing) anything else."""
        if self.path.resolve() not in _accepted_paths:
            self._refuse_a_file_that_is_not_sqlite()
        conn = self._conn()
        try:
            # Every check runs inside the write lock, before the first write: a refused file
            # keeps its bytes, and two processes opening a new store create it once.
            with self._transaction():
                self._refuse_another_programs_database(conn)
                version = self._schema_version(conn)
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"The run store {self.path} was written by a newer fp8demo (schema "
                        f"{version}); this version reads schema {SCHEMA_VERSION}. Upgrade "
                        "fp8demo or set FP8DEMO_HOME to another folder."
                    )
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                for step in range(version, SCHEMA_VERSION):
                    for statement in MIGRATIONS[step]:
                        conn.execute(statement)
                conn.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                # Unstamped stores are recognised by their schema version; stamp them too.
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            _accepted_paths.add(self.path.resolve())
        except sqlite3.DatabaseError as e:
            raise StoreError(f"The run store {self.path} is not usable: {e}. {MOVE_IT}") from e

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
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
            )
        ]
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
                f"The run store {self.path} has an unreadable schema version ({text!r}). {MOVE_IT}"
            ) from None

    def run_dir(self, run_id: int) -> Path:
        return self.home / "runs" / str(int(run_id))

    # -- launching ----------------------------------------------------------------------

    def create_comparison(
        self, config: TrainConfig, label: str = "", group_id: int | None = None
    ) -> tuple[int, list[int]]:
        """Queue one comparison: one run per precision of `config`, in order.

        group_id: the first comparison of a set of repeats over seeds ("self" = this one).
        """
        config.validate()
        now = time.time()
        with self._transaction() as conn:
            cid = conn.execute(
                "INSERT INTO comparisons (created_at, config, label) VALUES (?, ?, ?)",
                (now, config.to_json(), label),
            ).lastrowid
            if group_id is not None:
                conn.execute(
                    "UPDATE comparisons SET group_id=? WHERE id=?",
                    (cid if group_id == "self" else int(group_id), cid),
                )
            run_ids = [
                conn.execute(
                    "INSERT INTO runs (comparison_id, precision, config, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (cid, precision, config.to_json(), now, now),
                ).lastrowid
                for precision in config.precisions
            ]
        return cid, run_ids

    def claim_next_run(self, worker_pid: int) -> dict | None:
        """Atomically move the oldest queued run to running and return it."""
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT id FROM runs WHERE status='queued' ORDER BY id LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            now = time.time()
            conn.execute(
                "UPDATE runs SET status='running', phase='starting', started_at=?, updated_at=?, "
                "worker_pid=? WHERE id=?",
                (now, now, worker_pid, row["id"]),
            )
        return self.run(row["id"])

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
            row = conn.execute("SELECT status FROM runs WHERE id=?", (_sql_id(run_id),)).fetchone()
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
        """Mark running runs whose training process is gone as interrupted; return their ids."""
        lost = [
            row["id"]
            for row in self._execute("SELECT id, worker_pid FROM runs WHERE status='running'")
            if not pid_alive(row["worker_pid"])
        ]
        for run_id in lost:
            run = self.run(run_id)
            self.end_run(
                run_id,
                "interrupted",
                error=f"The training process (pid {run['worker_pid']}) stopped during "
                f"'{run['phase']}' without finishing; partial metrics are kept."
                + self._low_disk_note(),
            )
        return lost

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
            raise StoreError(f"There is no run {run_id} in {self.path}.")
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
            "INSERT OR REPLACE INTO step_metrics VALUES (?, ?, ?, ?, ?, ?)",
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
            "INSERT OR REPLACE INTO epoch_metrics VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
            "INSERT OR REPLACE INTO fp8_amax VALUES (?, ?, ?)",
            [(int(run_id), first_step + i, amax[i].tobytes()) for i in range(len(amax))],
        )

    def add_fp8_scales(self, run_id: int, step: int, scales: np.ndarray):
        self._write(
            "INSERT OR REPLACE INTO fp8_scales VALUES (?, ?, ?)",
            (int(run_id), int(step), np.asarray(scales, dtype=np.float32).tobytes()),
        )

    def add_fp8_probe(self, run_id: int, rows):
        """rows: (step, stats[layers, 3 roles, 2]) with saturation and underflow fractions."""
        self._conn().executemany(
            "INSERT OR REPLACE INTO fp8_probe VALUES (?, ?, ?)",
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
            "INSERT OR REPLACE INTO fp8_recipes VALUES (?, ?, ?, ?)",
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
                ):
                    conn.execute(f"DELETE FROM {table} WHERE run_id=?", (run["id"],))
                conn.execute("DELETE FROM runs WHERE id=?", (run["id"],))
            conn.execute("DELETE FROM comparisons WHERE id=?", (int(comparison_id),))
        import shutil

        for run in runs:
            shutil.rmtree(self.run_dir(run["id"]), ignore_errors=True)


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
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    except sqlite3.OperationalError:  # no meta table, or one with other columns
        return None
    return None if row is None else str(row[0])


def _num(value):
    if value is None:
        return None
    value = float(value)
    return value if value == value else None  # NaN → NULL (shown as a gap)
