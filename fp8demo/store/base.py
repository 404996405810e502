"""What every part of the store shares: the connection helpers, run states and row ids."""

import math
import numbers

import numpy as np

from fp8demo import database
from fp8demo.database import StoreError

ACTIVE = ("queued", "running")
ENDED = ("finished", "failed", "cancelled", "interrupted")


class StoreBase:
    """The database of a store and the few ways its parts talk to it (one connection per
    thread: see database.Database). Store sets `db` and `where`."""

    db: database.Database
    where: str

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


def parse_id(value, what: str) -> int:
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


def sql_id(number: int) -> int:
    """SQLite ids are signed 64-bit: a larger number names no row (and would overflow)."""
    return number if -(2**63) <= number < 2**63 else -1  # ids are positive: -1 matches nothing
