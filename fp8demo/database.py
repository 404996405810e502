"""The run store's database: one connection interface over SQLite and PostgreSQL.

`Database(url)` opens `sqlite:///path` (Python's sqlite3, the embedded default) or
`postgresql://user@host/database` (a server that workers of several hosts share). Both speak
the SQL the store writes: `?` placeholders, `INSERT … RETURNING id`, `INSERT … ON CONFLICT (…)
DO UPDATE`, and `SELECT … FOR UPDATE [SKIP LOCKED]` for row locks (dropped on SQLite, whose
write transaction already locks the whole file).

Every difference between the two lives here, behind Database and Connection: the schema's
one-time setup (schema_transaction: SQLite's file checks and stamp, PostgreSQL's advisory
lock), named locks among all processes (Database.exclusive), the transaction-scoped lock of
rules that read many rows (Connection.serialize), and whether hosts share the database
(Database.shared_between_hosts). The store above it has no `if backend`.

Why psycopg 3 and not SQLAlchemy Core: the store is hand-written SQL in the subset both
databases share, so a layer only needs to translate placeholders and column types; SQLAlchemy
would mean rewriting every statement as expressions (or text() with other placeholders) and
a second connection and transaction model next to sqlite3's, for no feature the store uses.
psycopg is the driver SQLAlchemy itself uses for PostgreSQL (Optuna's storage), so a
PostgreSQL store adds no other dependency, and the SQLite default needs none at all.
"""

import contextlib
import functools
import re
import sqlite3
import threading
import zlib
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fp8demo.paths import hold_lock

CONNECT_TIMEOUT_SECONDS = 10  # an unreachable server answers with a message, not a hang
URL_FORMS = (
    "Use sqlite:///relative/path.sqlite, sqlite:////absolute/path.sqlite or "
    "postgresql://user[:password]@host[:port]/database."
)
# PRAGMA application_id of every SQLite store ("fp8d" in ASCII): tells a run store apart from
# another program's database at the same path. On PostgreSQL, the first key of every advisory
# lock the store takes (other programs sharing the server use other keys).
APPLICATION_ID = 0x66703864
SQLITE_HEADER = b"SQLite format 3\x00"  # the first bytes of every (non-empty) SQLite file
# Store files this process has opened and accepted. Their header is never read again: closing
# any file descriptor of a file drops every POSIX lock the process holds on it, SQLite's too,
# and another process could then write under a live connection (a corrupt store).
_accepted_paths = set()
MOVE_IT = "Move it away or set FP8DEMO_HOME to another folder."


class StoreError(RuntimeError):
    """The store cannot be opened or used; the message says why and what to do."""


# Driver errors of either backend, raised as these (the driver's message, chained).
class Error(Exception):
    """A database error of either backend."""


class OperationalError(Error):
    """Locked, full, unreachable or lost: the database could not run the statement."""


class IntegrityError(Error):
    """A constraint (primary key, foreign key, NOT NULL) refused the statement."""


# -- the URL ------------------------------------------------------------------------------


def parse_url(url: str) -> tuple[str, str]:
    """(backend, what its driver opens: a file path or a libpq URL); StoreError otherwise."""
    text = str(url).strip()
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme == "sqlite":
        path = text[len("sqlite:///") :] if text.lower().startswith("sqlite:///") else ""
        if not path or path.startswith("?") or path == ":memory:":
            raise StoreError(
                f"{text!r} names no database file (an in-memory store would be empty in "
                f"every process). {URL_FORMS}"
            )
        return "sqlite", str(Path(path).expanduser())
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        libpq = "postgresql://" + text.split("://", 1)[1]  # SQLAlchemy's form works too
        try:
            from psycopg.conninfo import conninfo_to_dict  # lazy: psycopg only for a PostgreSQL URL
        except ImportError:
            raise StoreError(
                "A PostgreSQL store needs psycopg: pip install 'psycopg[binary]' "
                "(requirements.txt pins it)."
            ) from None
        try:
            conninfo_to_dict(libpq)
        except Exception as e:  # psycopg.ProgrammingError: libpq's parser said no
            raise StoreError(
                f"{redact(text)} is not a valid PostgreSQL URL ({_first_line(e)}). {URL_FORMS}"
            ) from None
        return "postgresql", libpq
    raise StoreError(f"{redact(text)!r} is not a run store URL. {URL_FORMS}")


def redact(url: str) -> str:
    """The URL with its password replaced by ***: fit for messages and logs."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password:
            user, host = netloc.rsplit("@", 1)
            netloc = f"{user.split(':', 1)[0]}:***@{host}"
        query = [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)]
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*")))
    except ValueError:  # not parseable: show nothing that might be a secret
        return url.split("://", 1)[0] + "://…"


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0].strip()


# -- SQL translation ----------------------------------------------------------------------

_STRING_LITERAL = re.compile(r"('(?:[^']|'')*')")
_ROW_LOCK = re.compile(r"\s+FOR\s+UPDATE(\s+SKIP\s+LOCKED)?\s*$", re.IGNORECASE)
_POSTGRES_TYPES = [  # SQLite's schema words → PostgreSQL's, in this order
    (
        r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b",
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    ),
    (r"\bINTEGER\b", "BIGINT"),  # ids, steps and byte counts may pass 2^31
    (r"\bREAL\b", "DOUBLE PRECISION"),  # PostgreSQL's REAL has 4 bytes, SQLite's 8
    (r"\bBLOB\b", "BYTEA"),
    (r"\)\s*WITHOUT ROWID", ")"),  # SQLite's storage choice; PostgreSQL has no rowid
]


@functools.lru_cache(maxsize=1024)
def sqlite_sql(sql: str) -> str:
    """Row locks dropped: BEGIN IMMEDIATE has taken the whole store's write lock."""
    return _ROW_LOCK.sub("", sql)


@functools.lru_cache(maxsize=1024)
def postgres_sql(sql: str) -> str:
    """`?` → `%s` outside string literals, and `%` → `%%` (psycopg's placeholder syntax)."""
    parts = _STRING_LITERAL.split(sql.replace("%", "%%"))
    parts[::2] = [part.replace("?", "%s") for part in parts[::2]]
    return "".join(parts)


@functools.lru_cache(maxsize=256)
def postgres_ddl(statement: str) -> str:
    """A schema statement written for SQLite with PostgreSQL's column types."""
    for pattern, replacement in _POSTGRES_TYPES:
        statement = re.sub(pattern, replacement, statement)
    return statement


# -- rows -----------------------------------------------------------------------------------


class Row(tuple):
    """A PostgreSQL row read by position (row[0]) or column name (row["id"]), and turned into
    a dict by dict(row): what sqlite3.Row gives the SQLite store."""

    __slots__ = ()
    _index: dict = {}

    def __getitem__(self, key):
        if isinstance(key, str):
            key = self._index[key]
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


@functools.lru_cache(maxsize=256)
def _row_class(names: tuple) -> type:
    return type("Row", (Row,), {"__slots__": (), "_index": {n: i for i, n in enumerate(names)}})


def _rows(cursor):
    """psycopg's row factory: Rows named by the cursor's columns."""
    if cursor.description is None:
        return tuple
    return _row_class(tuple(column.name for column in cursor.description))


# -- connections ----------------------------------------------------------------------------


class Connection:
    """One connection (of one thread) with the interface the store uses on both backends:
    execute, executemany, transaction, ddl, tables and columns. Results are the driver's
    cursors (fetchone, fetchall, iteration, rowcount) of rows as described by Row."""

    def __init__(self, raw, backend: str):
        self.raw = raw
        self.backend = backend
        self._errors = _driver_errors(backend)

    def execute(self, sql: str, params=()):
        """Run one statement with `?` placeholders; the cursor holds its rows."""
        try:
            if self.backend == "sqlite":
                return self.raw.execute(sqlite_sql(sql), params)
            if not params:
                return self.raw.execute(sql)
            return self.raw.execute(postgres_sql(sql), _postgres_params(params))
        except self._errors as e:
            raise _translated(e) from e

    def executemany(self, sql: str, rows):
        """Run one statement for each row of parameters (on PostgreSQL in one transaction)."""
        try:
            if self.backend == "sqlite":
                return self.raw.executemany(sqlite_sql(sql), rows)
            rows = [_postgres_params(row) for row in rows]
            with self.raw.transaction():
                self.raw.cursor().executemany(postgres_sql(sql), rows)
        except self._errors as e:
            raise _translated(e) from e

    @contextlib.contextmanager
    def transaction(self):
        """A write transaction: COMMIT when the block ends (a return too), ROLLBACK when it
        raises. SQLite: BEGIN IMMEDIATE takes the write lock up front, so two processes never
        both read and then fail to upgrade to writing. PostgreSQL: BEGIN, and statements that
        read what they will change lock those rows with SELECT … FOR UPDATE."""
        if self.backend == "postgresql":
            try:
                with self.raw.transaction():
                    yield self
            except self._errors as e:  # from COMMIT (a serialization failure, a lost server)
                raise _translated(e) from e
            return
        try:
            self.execute("BEGIN IMMEDIATE")
            yield self
            self.execute("COMMIT")
        except BaseException:
            # Also when Ctrl+C lands just after BEGIN (it waits for the lock, and the interrupt
            # is raised once it returns) or COMMIT failed: never leave the write lock held.
            if self.raw.in_transaction:
                self.raw.execute("ROLLBACK")
            raise

    def serialize(self, name: str):
        """Within a transaction, wait until no other transaction that serializes on `name`
        runs (for rules that read many rows, not one: claims). PostgreSQL: a transaction-scoped
        advisory lock. SQLite: nothing to do, BEGIN IMMEDIATE already serialises every writer."""
        if self.backend == "postgresql":
            self.execute("SELECT pg_advisory_xact_lock(?, ?)", _lock_key(name))

    def ddl(self, statement: str):
        """Run a schema statement written for SQLite, with this backend's column types."""
        if self.backend == "postgresql":
            statement = postgres_ddl(statement)
        return self.execute(statement)

    def tables(self) -> list[str]:
        """The tables and views of the store's database (PostgreSQL: its current schema)."""
        if self.backend == "sqlite":
            sql = (
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
            )
        else:
            sql = (
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema() ORDER BY table_name"
            )
        return [row[0] for row in self.execute(sql)]

    def columns(self, table: str) -> list[str]:
        """The column names of `table`, in order ([] when there is no such table)."""
        if self.backend == "sqlite":
            return [row[1] for row in self.execute(f"PRAGMA table_info({table})")]
        return [
            row[0]
            for row in self.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = ? "
                "ORDER BY ordinal_position",
                (table,),
            )
        ]

    def close(self):
        self.raw.close()

    def __del__(self):
        # A thread's connection goes with its thread: close it (psycopg warns otherwise).
        if self.backend == "postgresql":
            with contextlib.suppress(Exception):
                self.raw.close()


def _lock_key(name: str) -> tuple[int, int]:
    """The two 32-bit keys of PostgreSQL's advisory lock called `name`."""
    return APPLICATION_ID, int.from_bytes(zlib.crc32(name.encode()).to_bytes(4), signed=True)


def _postgres_params(params):
    """SQLite stores True as 1; PostgreSQL refuses a boolean for an integer column."""
    return tuple(int(p) if p.__class__ is bool else p for p in params)


@functools.cache
def _driver_errors(backend: str) -> type | tuple:
    if backend == "sqlite":
        return sqlite3.Error
    import psycopg  # lazy: only a PostgreSQL store needs the driver

    return psycopg.Error


def _translated(error: Exception) -> Error:
    """The driver's error as this module's class of it, with the driver's message."""
    name = type(error).__mro__
    if any(cls.__name__ == "IntegrityError" for cls in name):
        return IntegrityError(str(error))
    if any(cls.__name__ == "OperationalError" for cls in name):
        return OperationalError(str(error))
    return Error(str(error))


# -- the database ---------------------------------------------------------------------------


class Database:
    """A store's database: its URL and one connection per thread, opened on first use.

    lock_folder: where exclusive() keeps its lock files on SQLite (default: the file's folder).
    """

    def __init__(self, url: str, lock_folder=None):
        self.backend, self.target = parse_url(url)
        self.url = url if self.backend == "sqlite" else self.target
        # Where messages say the store is: the file, or the URL without its password.
        self.where = self.target if self.backend == "sqlite" else redact(self.target)
        self.path = Path(self.target) if self.backend == "sqlite" else None
        if self.backend == "sqlite":
            self.lock_folder = Path(lock_folder) if lock_folder else self.path.parent
            self.elsewhere = "set FP8DEMO_HOME to another folder"  # how to use another store
            self.move_it = MOVE_IT
        else:
            self.lock_folder = None
            self.elsewhere = "another database (FP8DEMO_STORE or --store)"
            self.move_it = f"Use {self.elsewhere}."
        self._local = threading.local()

    @property
    def shared_between_hosts(self) -> bool:
        """A server that workers of several hosts reach (PostgreSQL), not a file of one host."""
        return self.backend == "postgresql"

    def connection(self) -> Connection:
        """This thread's connection (a new one when there is none or the server dropped it)."""
        conn = getattr(self._local, "conn", None)
        if conn is None or (self.backend == "postgresql" and (conn.raw.broken or conn.raw.closed)):
            conn = self._connect()
            self._local.conn = conn
        return conn

    def _connect(self) -> Connection:
        if self.backend == "sqlite":
            try:
                raw = sqlite3.connect(self.target, timeout=30, isolation_level=None)
            except sqlite3.Error as e:
                raise StoreError(f"Cannot open the run store {self.target}: {e}") from e
            raw.row_factory = sqlite3.Row
            raw.execute("PRAGMA busy_timeout = 30000")
            return Connection(raw, "sqlite")
        import psycopg  # lazy: only a PostgreSQL store needs the driver

        options = {"autocommit": True, "row_factory": _rows, "application_name": "fp8demo"}
        # No server-side prepared statements: a `SELECT *` prepared before another process
        # migrates the schema would fail ("cached plan must not change result type").
        options["prepare_threshold"] = None
        if "connect_timeout" not in self.target:
            options["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
        try:
            raw = psycopg.connect(self.target, **options)
        except psycopg.Error as e:
            raise StoreError(
                f"Cannot connect to the run store {self.where}: {_first_line(e)}. Check that "
                "the PostgreSQL server runs and accepts connections at that host and port, "
                "that the user and the database exist and the password is right "
                "(FP8DEMO_STORE or --store), or unset FP8DEMO_STORE to use the embedded "
                "SQLite store."
            ) from None
        return Connection(raw, "postgresql")

    # -- the store's schema, once per database ------------------------------------------

    @contextlib.contextmanager
    def schema_transaction(self, unstamped_store):
        """The transaction that creates, migrates or accepts the store's tables, one process
        at a time however many open the store at once. SQLite refuses, writing nothing, a file
        that is not SQLite or is another program's database (unstamped_store(conn) recognises a
        store written before the application_id stamp), then stamps it and turns on WAL.
        PostgreSQL serialises on an advisory lock (the database may hold other tables: Optuna's
        study). A database error becomes a StoreError that says what to do."""
        if self.backend == "sqlite":
            with self._sqlite_schema_transaction(unstamped_store) as conn:
                yield conn
            return
        conn = self.connection()
        try:
            with conn.transaction():
                conn.serialize("schema")
                yield conn
        except Error as e:
            raise StoreError(
                f"The run store {self.where} is not usable: {e}. Its user needs to be "
                "allowed to create tables there (for example the database's owner)."
            ) from e

    @contextlib.contextmanager
    def _sqlite_schema_transaction(self, unstamped_store):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"Cannot create the folder of the run store {self.path}: {e}") from e
        if self.path.resolve() not in _accepted_paths:
            self._refuse_a_file_that_is_not_sqlite()
        conn = self.connection()
        try:
            # Every check runs inside the write lock, before the first write: a refused file
            # keeps its bytes, and two processes opening a new store create it once.
            with conn.transaction():
                self._refuse_another_programs_database(conn, unstamped_store)
                yield conn
                # Unstamped stores are recognised by their schema; stamp them too.
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            _accepted_paths.add(self.path.resolve())
        except Error as e:
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

    def _refuse_another_programs_database(self, conn, unstamped_store):
        """StoreError for a SQLite database that holds something, but not a run store."""
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if application_id == APPLICATION_ID:
            return
        tables = conn.tables()
        if application_id == 0 and (not tables or unstamped_store(conn)):
            return  # a new, empty database, or a store written before the stamp
        what = (
            f"it holds {', '.join(tables)}"
            if tables
            else f"its application_id is {application_id:#x}"
        )
        raise StoreError(
            f"{self.path} is a SQLite database of another program ({what}), not "
            f"an fp8demo run store; it was left untouched. {MOVE_IT}"
        )

    # -- a lock shared by every process of the store ------------------------------------

    @contextlib.contextmanager
    def exclusive(self, name: str):
        """Hold `name` exclusively among all processes of this database while the with-block
        runs: a file in lock_folder on SQLite (one host), an advisory lock on PostgreSQL
        (every host; the server releases it when its holder dies)."""
        if self.backend == "sqlite":
            with hold_lock(self.lock_folder / f"{name}.lock"):
                yield
            return
        key = _lock_key(name)
        conn = self.connection()
        conn.execute("SELECT pg_advisory_lock(?, ?)", key)
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(?, ?)", key)

    def close(self):
        """Close this thread's connection (others close when their thread ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


@functools.lru_cache(maxsize=64)
def upsert(table: str, columns: tuple, key: tuple) -> str:
    """INSERT that replaces the row with the same `key`, in the syntax both databases speak."""
    placeholders = ", ".join("?" for _ in columns)
    updates = ", ".join(f"{c}=excluded.{c}" for c in columns if c not in key)
    action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders}) "
        f"ON CONFLICT ({', '.join(key)}) {action}"
    )
