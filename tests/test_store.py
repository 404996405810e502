"""The run store's schema: versioned, migrated forward, refused when newer."""

import sqlite3

from fp8demo.config import TrainConfig
from fp8demo.store import SCHEMA_VERSION, Store

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
        conn.execute("INSERT INTO comparisons (created_at, config, label) VALUES (1.0, ?, 'old')",
                     (TrainConfig().to_json(),))
    store = Store(tmp_path)
    old = store.comparison(1)
    assert old["label"] == "old" and old["group_id"] is None
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)
    cid, _ = store.create_comparison(TrainConfig(), group_id="self")
    assert store.comparison(cid)["group_id"] == cid
