"""The store's tables: the schema, its version, and the migrations that bring older stores
forward. A store is created, migrated or accepted once, however many processes open it at the
same time (database.Database.schema_transaction); a newer one is refused, written by nothing.
"""

from fp8demo import database
from fp8demo.database import StoreError, upsert

SCHEMA_VERSION = 9
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
    6: [],  # so is evaluations (post-training quantization as queued work)
    7: [],  # so is fp8_recipes_second (each tensor's what-if in its other GEMM)
    8: [],  # so is fp8_blocks (block recipes' block scales per tensor and GEMM)
}

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
-- The same for each tensor in the other GEMM that uses it (recipes.ROLE_GEMMS): the inputs
-- and output gradients in wgrad, the kernel in dgrad, blocked along that GEMM's contraction.
CREATE TABLE IF NOT EXISTS fp8_recipes_second (
    run_id INTEGER NOT NULL, step INTEGER NOT NULL, recipe TEXT NOT NULL, stats BLOB NOT NULL,
    PRIMARY KEY (run_id, step, recipe)
) WITHOUT ROWID;
-- One row per probe, float8 tensor, GEMM that uses it and block recipe (block_scales.py): the
-- statistics of the blocks' log2 scales, the share at the format's limit, the worst block's
-- SNR (NULL: not finite), and details, JSON {"histogram": {"first", "counts"}, "worst": [[block
-- row, block column, SNR dB], ...]}.
CREATE TABLE IF NOT EXISTS fp8_blocks (
    run_id INTEGER NOT NULL, step INTEGER NOT NULL, layer TEXT NOT NULL, role TEXT NOT NULL,
    gemm TEXT NOT NULL, recipe TEXT NOT NULL,
    scale_log2_min REAL, scale_log2_max REAL, scale_log2_std REAL, limit_share REAL,
    worst_block_snr_db REAL, details TEXT NOT NULL,
    PRIMARY KEY (run_id, step, layer, role, gemm, recipe)
) WITHOUT ROWID;
-- The live workers of every host (worker.py): a sweep keeps one trial per worker active.
CREATE TABLE IF NOT EXISTS workers (
    host TEXT NOT NULL, slot TEXT NOT NULL, pid INTEGER NOT NULL,
    started_at REAL NOT NULL, heartbeat_at REAL NOT NULL,
    PRIMARY KEY (host, slot)
);
-- Post-training quantization of a finished bf16 run as queued work: a worker claims it,
-- evaluates int8 and int4 together and writes the results into the run's summary["ptq"].
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    status TEXT NOT NULL DEFAULT 'queued',  -- queued, running, finished, failed
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    host TEXT,  -- the worker that claimed it
    worker_pid INTEGER,
    error TEXT
);
CREATE INDEX IF NOT EXISTS evaluations_by_status ON evaluations(status, id);
CREATE INDEX IF NOT EXISTS evaluations_by_run ON evaluations(run_id, id);
-- A finished run's files (weights, config, vocabulary) when the store is PostgreSQL, so that
-- every host reaches them (see Store.run_dir). Unused on SQLite.
CREATE TABLE IF NOT EXISTS artifacts (
    run_id INTEGER NOT NULL, name TEXT NOT NULL, bytes BLOB NOT NULL,
    PRIMARY KEY (run_id, name)
) WITHOUT ROWID;
"""


def open_schema(db: database.Database):
    """Create, migrate or accept the store's tables; refuse (writing nothing) anything else."""

    def unstamped_store(conn) -> bool:  # a store written before the application_id stamp
        return _version_text(conn) is not None

    with db.schema_transaction(unstamped_store) as conn:
        text = _version_text(conn)
        if text != str(SCHEMA_VERSION):
            _create_or_migrate(conn, db, _version(text, db))


def _create_or_migrate(conn, db, version: int):
    """Create the schema's missing tables, migrate from `version`, record the version."""
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"The run store {db.where} was written by a newer fp8demo (schema "
            f"{version}); this version reads schema {SCHEMA_VERSION}. Upgrade "
            f"fp8demo or {db.elsewhere}."
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


def _version(text: str | None, db) -> int:
    """The store's schema version from meta's text; SCHEMA_VERSION for a new store."""
    if text is None:
        return SCHEMA_VERSION
    try:
        return int(text)
    except ValueError:
        raise StoreError(
            f"The run store {db.where} has an unreadable schema version ({text!r}). {db.move_it}"
        ) from None


def _version_text(conn) -> str | None:
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
