"""The database layer under the run store, on SQLite and on a real PostgreSQL server."""

import sqlite3
import threading

import pytest

from fp8demo import database
from fp8demo.database import Database, StoreError, upsert

TABLES = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, state TEXT NOT NULL DEFAULT 'queued',
    owner TEXT, weight REAL, big INTEGER, payload BLOB
);
CREATE TABLE IF NOT EXISTS pairs (
    a INTEGER NOT NULL, b TEXT NOT NULL, value REAL, PRIMARY KEY (a, b)
) WITHOUT ROWID
"""


@pytest.fixture
def db(store_url) -> Database:
    """A database of each backend with the two tables above."""
    db = Database(store_url)
    conn = db.connection()
    for statement in TABLES.split(";"):
        conn.ddl(statement)
    return db


def _queue(db, n: int) -> list[int]:
    conn = db.connection()
    return [
        conn.execute("INSERT INTO jobs (owner) VALUES (NULL) RETURNING id").fetchone()[0]
        for _ in range(n)
    ]


def test_placeholders_are_question_marks_outside_quotes_only(db):
    row = db.connection().execute("SELECT ?, 'what?', '100%', ? || '%'", ("x", "y")).fetchone()
    assert tuple(row) == ("x", "what?", "100%", "y%")


def test_insert_returning_gives_increasing_ids(db):
    assert _queue(db, 3) == [1, 2, 3]


def test_rows_read_by_position_name_and_as_dicts(db):
    _queue(db, 1)
    row = db.connection().execute("SELECT id, state, owner FROM jobs").fetchone()
    assert row[0] == row["id"] == 1 and row["state"] == "queued"
    assert dict(row) == {"id": 1, "state": "queued", "owner": None}
    assert [tuple(r) for r in db.connection().execute("SELECT id, state FROM jobs")] == [
        (1, "queued")
    ]


def test_values_keep_64_bits_and_bytes(db):
    """PostgreSQL's own REAL is 4 bytes and INTEGER 4: the layer gives 8-byte types."""
    conn = db.connection()
    values = (0.1 + 1e-12, 2**40 + 1, bytes(range(256)))
    conn.execute("INSERT INTO jobs (weight, big, payload) VALUES (?, ?, ?)", values)
    row = conn.execute("SELECT weight, big, payload FROM jobs").fetchone()
    assert (row[0], row[1], bytes(row[2])) == values
    conn.execute("UPDATE jobs SET big=?", (True,))  # stored as 1 on both
    assert conn.execute("SELECT big FROM jobs").fetchone()[0] == 1


def test_upsert_replaces_the_row_with_the_same_key(db):
    conn = db.connection()
    sql = upsert("pairs", ("a", "b", "value"), key=("a", "b"))
    conn.execute(sql, (1, "x", 1.5))
    conn.executemany(sql, [(1, "x", 2.5), (1, "y", 3.5)])
    rows = conn.execute("SELECT a, b, value FROM pairs ORDER BY b").fetchall()
    assert [tuple(r) for r in rows] == [(1, "x", 2.5), (1, "y", 3.5)]


def test_a_transaction_commits_or_rolls_back_as_a_whole(db):
    conn = db.connection()
    with conn.transaction():
        conn.execute("INSERT INTO pairs VALUES (1, 'kept', NULL)")
    with pytest.raises(KeyError):
        with conn.transaction():
            conn.execute("INSERT INTO pairs VALUES (2, 'dropped', NULL)")
            raise KeyError("any exception")
    with pytest.raises(database.IntegrityError):  # the driver's error, one class for both
        with conn.transaction():
            conn.execute("INSERT INTO pairs VALUES (3, 'dropped too', NULL)")
            conn.execute("INSERT INTO pairs VALUES (1, 'kept', NULL)")
    assert [r[0] for r in conn.execute("SELECT b FROM pairs")] == ["kept"]
    conn.execute("INSERT INTO pairs VALUES (4, 'after', NULL)")  # the connection still works
    assert len(conn.execute("SELECT * FROM pairs").fetchall()) == 2


def test_ctrl_c_just_after_begin_leaves_no_lock_held(tmp_path, monkeypatch):
    """A Ctrl+C that arrives while BEGIN IMMEDIATE waits for SQLite's write lock is raised as
    soon as BEGIN returns, before the block starts: the lock must still be released at once
    (a worker's other thread, and every other process, would wait 30 s for it)."""
    db = Database(f"sqlite:///{tmp_path / 'store.sqlite'}")
    conn = db.connection()
    conn.ddl(TABLES.split(";")[1])
    begin = conn.execute

    def interrupted_after_begin(sql, params=()):
        result = begin(sql, params)
        if sql == "BEGIN IMMEDIATE":
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(conn, "execute", interrupted_after_begin)
    with pytest.raises(KeyboardInterrupt):
        with conn.transaction():
            raise AssertionError("the block must not run")
    other = sqlite3.connect(db.path, timeout=0.1, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # "database is locked" if the interrupted one held on
    other.execute("INSERT INTO pairs VALUES (1, 'other', NULL)")
    other.execute("COMMIT")
    monkeypatch.undo()
    assert [r[0] for r in conn.execute("SELECT b FROM pairs")] == ["other"]


def _claim(db, owner: str):
    """The claim pattern of the store: lock the oldest free row, skipping locked ones."""
    conn = db.connection()
    with conn.transaction():
        row = conn.execute(
            "SELECT id FROM jobs WHERE state='queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
        ).fetchone()
        if row is not None:
            conn.execute("UPDATE jobs SET state='running', owner=? WHERE id=?", (owner, row[0]))
    return None if row is None else row[0]


def test_claims_from_many_threads_never_take_one_row_twice(db):
    ids = _queue(db, 40)
    claimed = {}

    def claimer(name):
        while (job := _claim(db, name)) is not None:
            claimed.setdefault(job, []).append(name)

    threads = [threading.Thread(target=claimer, args=(f"t{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == ids and all(len(names) == 1 for names in claimed.values())
    owners = {r["id"]: r["owner"] for r in db.connection().execute("SELECT id, owner FROM jobs")}
    assert owners == {job: names[0] for job, names in claimed.items()}


def test_skip_locked_passes_over_a_row_another_connection_holds(postgres_url):
    first, second = Database(postgres_url), Database(postgres_url)  # two connections
    first.connection().ddl(TABLES.split(";")[0])
    _queue(first, 2)
    holder = first.connection()
    with holder.transaction():
        held = holder.execute(
            "SELECT id FROM jobs ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
        ).fetchone()[0]
        assert _claim(second, "second") == held + 1  # not blocked, and not the held row
        assert _claim(second, "second") is None  # the held row is skipped, not waited for
    assert _claim(second, "second") == held  # released at COMMIT


def test_the_schema_gets_postgresql_types(postgres_url):
    db = Database(postgres_url)
    for statement in TABLES.split(";"):
        db.connection().ddl(statement)
    types = {
        r[0]: r[1]
        for r in db.connection().execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name='jobs'"
        )
    }
    assert types == {
        "id": "bigint",
        "state": "text",
        "owner": "text",
        "weight": "double precision",
        "big": "bigint",
        "payload": "bytea",
    }
    assert db.connection().tables() == ["jobs", "pairs"]
    assert db.connection().columns("pairs") == ["a", "b", "value"]


def test_an_unreachable_server_is_a_message_with_what_to_check(postgres_server):
    from postgres import free_port

    url = f"postgresql://fp8:secret@127.0.0.1:{free_port()}/runs"
    with pytest.raises(StoreError) as raised:
        Database(url).connection()
    message = str(raised.value)
    assert message.startswith("Cannot connect to the run store postgresql://fp8:***@127.0.0.1:")
    assert "Connection refused" in message and "secret" not in message
    assert "Check that the PostgreSQL server runs" in message and "FP8DEMO_STORE" in message
    assert raised.value.__cause__ is None and "\n" not in message  # no driver traceback


def test_a_missing_database_is_named(postgres_server):
    with pytest.raises(StoreError) as raised:
        Database(postgres_server.url("no_such_db")).connection()
    assert 'database "no_such_db" does not exist' in str(raised.value)


@pytest.mark.parametrize(
    "url, says",
    [
        ("mysql://me@host/db", "'mysql://me@host/db' is not a run store URL."),
        ("runs.sqlite", "'runs.sqlite' is not a run store URL."),
        ("sqlite://", "'sqlite://' names no database file"),
        ("sqlite:///:memory:", "'sqlite:///:memory:' names no database file"),
        ("postgresql://me:pw@host/db?sslmode=nonsense&x=1", "is not a valid PostgreSQL URL"),
    ],
)
def test_a_bad_url_says_which_forms_work(url, says):
    with pytest.raises(StoreError) as raised:
        Database(url)
    assert says in str(raised.value) and "pw" not in str(raised.value)
    assert str(raised.value).endswith("or postgresql://user[:password]@host[:port]/database.")


def test_sqlalchemy_style_urls_are_accepted(postgres_url, tmp_path):
    db = Database(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    assert db.backend == "postgresql" and db.url == postgres_url
    assert db.connection().execute("SELECT 1").fetchone()[0] == 1
    db = Database(f"sqlite:///{tmp_path / 'x.sqlite'}")
    assert db.backend == "sqlite" and db.path == tmp_path / "x.sqlite"


def test_without_postgresql_the_tests_fail_saying_how_to_install(monkeypatch):
    import postgres

    monkeypatch.setattr(postgres, "server_programs", lambda: None)
    with pytest.raises(pytest.fail.Exception, match=r"`apt-get install postgresql`"):
        postgres.Server()
