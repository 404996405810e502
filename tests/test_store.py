"""The run store's schema: versioned, migrated forward, refused when newer."""

import sqlite3

import numpy as np
import pytest
from conftest import ROOT

from fp8demo.config import TrainConfig
from fp8demo.store import APPLICATION_ID, SCHEMA_VERSION, Store, StoreError

V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE comparisons (id INTEGER PRIMARY KEY AUTOINCREMENT, created_at REAL NOT NULL,
                          config TEXT NOT NULL, label TEXT NOT NULL DEFAULT '');
INSERT INTO meta VALUES ('schema_version', '1');
"""


def test_a_version_1_store_is_migrated_and_keeps_its_rows(tmp_path):
    path = tmp_path / "runs.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(V1)
        conn.execute(
            "INSERT INTO comparisons (created_at, config, label) VALUES (1.0, ?, 'old')",
            (TrainConfig().to_json(),),
        )
    store = Store(tmp_path)
    old = store.comparison(1)
    assert old["label"] == "old" and old["group_id"] is None
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)
    cid, _ = store.create_comparison(TrainConfig(), group_id="self")
    assert store.comparison(cid)["group_id"] == cid
    assert _application_id(path) == APPLICATION_ID  # recognised by its tables, then stamped


def _application_id(path) -> int:
    with sqlite3.connect(path) as conn:
        value = conn.execute("PRAGMA application_id").fetchone()[0]
    conn.close()
    return value


def test_a_new_store_is_stamped_as_fp8demos(tmp_path):
    Store(tmp_path)
    assert _application_id(tmp_path / "runs.sqlite") == APPLICATION_ID


def test_an_unstamped_store_keeps_opening_and_is_stamped(tmp_path):
    store = Store(tmp_path)
    cid, run_ids = store.create_comparison(TrainConfig(), label="kept")
    with sqlite3.connect(store.path) as conn:  # a store as written without the stamp
        conn.execute("PRAGMA application_id = 0")
    conn.close()
    assert _application_id(store.path) == 0
    reopened = Store(tmp_path)
    assert reopened.comparison(cid)["label"] == "kept"
    assert [r["id"] for r in reopened.runs(cid)] == run_ids
    assert _application_id(store.path) == APPLICATION_ID


def test_an_empty_sqlite_file_becomes_a_store(tmp_path):
    (tmp_path / "runs.sqlite").touch()
    sqlite3.connect(tmp_path / "runs.sqlite").close()
    store = Store(tmp_path)
    store.create_comparison(TrainConfig())
    assert len(store.runs()) == len(TrainConfig().precisions)


def test_a_store_that_sqlite_itself_cannot_read_is_still_refused_clearly(tmp_path):
    store = Store(tmp_path)
    store.create_comparison(TrainConfig())
    del store
    path = tmp_path / "runs.sqlite"
    damaged = bytearray(path.read_bytes())
    damaged[100:] = b"\xff" * (len(damaged) - 100)  # the header survives, the pages do not
    path.write_bytes(bytes(damaged))
    (tmp_path / "runs.sqlite-wal").unlink(missing_ok=True)
    try:
        Store(tmp_path)
    except StoreError as e:
        assert str(e).startswith(f"The run store {path} is not usable: ")
        assert str(e).endswith("Move it away or set FP8DEMO_HOME to another folder.")
    else:
        raise AssertionError("a damaged store opened")
    assert path.read_bytes() == bytes(damaged)


@pytest.mark.parametrize("run_id", ["2", " 2 ", 2, 2.0, np.int64(2), np.float32(2)], ids=repr)
def test_a_whole_number_names_a_run_in_any_form(run_id, tmp_path):
    store = Store(tmp_path)
    store.create_comparison(TrainConfig(precisions=("bf16", "fp8")))
    run = store.run(run_id)
    assert run["id"] == 2 and run["precision"] == "fp8"


def test_a_version_3_store_gets_the_recipe_table_and_keeps_its_probes(tmp_path):
    store = Store(tmp_path)
    _, (run_id,) = store.create_comparison(TrainConfig(precisions=("fp8",)))
    store.merge_summary(run_id, fp8_layers=[{"name": "a"}, {"name": "b"}])
    probe = np.full((2, 3, 2), 0.25, np.float32)
    store.add_fp8_probe(run_id, [(0, probe)])
    with sqlite3.connect(store.path) as conn:  # the store as schema 3 left it
        conn.execute("DROP TABLE fp8_recipes")
        conn.execute("UPDATE meta SET value='3' WHERE key='schema_version'")
    conn.close()

    store = Store(tmp_path)
    np.testing.assert_array_equal(store.fp8_probe(run_id)[1], [probe])
    steps, names, stats = store.fp8_recipes(run_id)
    assert len(steps) == 0 and names == () and stats.shape == (0, 2, 3, 0, 3)
    # [layers, roles, recipes, (underflow %, saturation %, SNR dB)], +inf SNR kept as is.
    measured = np.arange(2 * 3 * 2 * 3, dtype=np.float32).reshape(2, 3, 2, 3)
    measured[1, 2, 0, 2] = np.inf
    store.add_fp8_recipes(run_id, ("mxfp8", "delayed"), [(0, measured), (4, measured + 1)])
    steps, names, stats = store.fp8_recipes(run_id)
    assert list(steps) == [0, 4] and names == ("delayed", "mxfp8")  # recipes.RECIPES' order
    np.testing.assert_array_equal(stats[0], measured[:, :, ::-1])
    np.testing.assert_array_equal(stats[1], measured[:, :, ::-1] + 1)
    assert len(store.fp8_recipes(run_id, since_step=0)[0]) == 1
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)
    conn.close()


def test_opening_a_store_again_keeps_sqlites_locks_for_live_connections(tmp_path):
    """A second Store on the same file in this process must not drop the POSIX locks SQLite
    holds for the first: another process would then take this store for unused, checkpoint
    and delete its write-ahead log under a live connection (a corrupt store)."""
    import subprocess
    import sys

    home = tmp_path / "home"
    first = Store(home)
    first.create_comparison(TrainConfig(precisions=("bf16",)))  # a live connection, a WAL
    Store(home).runs()  # the same file opened again in this process
    other = "import sys; from fp8demo.store import Store; Store(sys.argv[1]).runs()"
    subprocess.run([sys.executable, "-c", other, str(home)], check=True, cwd=ROOT)
    # Only the last connection to close may remove the log; this process still holds one.
    assert (home / "runs.sqlite-wal").exists()
    assert [r["precision"] for r in first.runs()] == ["bf16"]
