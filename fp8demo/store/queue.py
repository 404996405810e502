"""The work queue: which run the device pool of a host may start next, claims, heartbeats,
the workers of every host and whether they live, and post-training evaluations as queued work.

Each worker of the pool (worker.py) claims the next run pick_next_run allows; while it trains,
the worker refreshes the run's heartbeat_at so that reap() on any host can tell a dead worker
of another host from a live one (Store.alive, the one liveness rule).
"""

import json
import time

from fp8demo.database import StoreError
from fp8demo.paths import host_name, pid_alive

# A running run of another host whose worker sent no heartbeat for this long is interrupted.
HEARTBEAT_TIMEOUT_SECONDS = 60.0
EVALUATION_COLUMNS = (
    "id, run_id, status, created_at, started_at, finished_at, host, worker_pid, error"
)


class Queue:
    """Claims, workers and evaluations (a part of Store)."""

    # -- liveness -----------------------------------------------------------------------

    def alive(self, host, pid, heartbeat_at, started_at=None) -> bool:
        """Whether the process `pid` of `host` lives: on this host (or no host recorded) its
        pid tells; on another host, a heartbeat (else its start) younger than
        HEARTBEAT_TIMEOUT_SECONDS."""
        if host in (None, host_name()):
            return pid_alive(pid)
        return time.time() - (heartbeat_at or started_at or 0) < HEARTBEAT_TIMEOUT_SECONDS

    # -- runs: the device pool ----------------------------------------------------------

    def active_runs(self) -> list[dict]:
        """The queued and running runs as the pool's rules read them (_pool_row), oldest
        first."""
        rows = self._execute(
            "SELECT id, comparison_id, status, config, summary, host FROM runs "
            "WHERE status IN ('queued', 'running') ORDER BY id"
        ).fetchall()
        return [_pool_row(row) for row in rows]

    def claim_next_run(
        self, worker_pid: int, slot="0", host: str | None = None, data_parallel_ok: bool = True
    ) -> dict | None:
        """Atomically move the next run the pool of `host` (default: this one, host_name())
        may start (pick_next_run) to running, as trained by `worker_pid` in pool slot `slot`
        ("all" for a data-parallel run), and return it; None when no run may start now.

        data_parallel_ok: False for a worker that cannot see every device."""
        host = host or host_name()
        with self._transaction() as conn:
            conn.serialize("claims")  # the rules read every active run: one claim at once
            active = self.active_runs()
            run_id = pick_next_run(active, data_parallel_ok, host)
            if run_id is None:
                return None
            whole_pool = next(r["data_parallel"] for r in active if r["id"] == run_id)
            now = time.time()
            # (Still queued: on PostgreSQL a cancel may have ended it since the SELECT.)
            claimed = conn.execute(
                "UPDATE runs SET status='running', phase='starting', started_at=?, updated_at=?, "
                "heartbeat_at=?, worker_pid=?, host=?, slot=? WHERE id=? AND status='queued'",
                (now, now, now, worker_pid, host, "all" if whole_pool else str(slot), run_id),
            ).rowcount
        return self.run(run_id) if claimed else None

    def heartbeat(self, run_id: int):
        """The worker training `run_id` is alive."""
        self._write(
            "UPDATE runs SET heartbeat_at=? WHERE id=? AND status='running'",
            (time.time(), int(run_id)),
        )

    def queued_count(self) -> int:
        return self._execute("SELECT COUNT(*) FROM runs WHERE status='queued'").fetchone()[0]

    def data_parallel_next(self, host: str | None = None) -> bool:
        """True when the next run the pool of `host` (default: this one) may start is
        data-parallel (that pool is idle)."""
        active = self.active_runs()
        run_id = pick_next_run(active, host=host or host_name())
        return any(r["id"] == run_id and r["data_parallel"] for r in active)

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
        """The workers of every host that are alive (Store.alive), in host, then slot order."""
        rows = self._execute("SELECT * FROM workers ORDER BY host, slot").fetchall()
        return [
            dict(row)
            for row in rows
            if self.alive(row["host"], row["pid"], row["heartbeat_at"], row["started_at"])
        ]

    # -- evaluations: post-training quantization of a finished bf16 run ------------------

    def request_evaluation(self, run_id) -> dict:
        """Queue the post-training evaluation (int8 and int4 together) of a finished bf16
        run, unless one is queued, running or finished already (a failed one is queued
        anew); return that evaluation (see evaluation)."""
        run = self.run(run_id)
        if run["status"] != "finished" or run["precision"] != "bf16":
            raise StoreError(
                f"Run {run['id']} is a {run['status']} {run['precision']} run: post-training "
                "quantization evaluates finished bf16 runs."
            )
        with self._transaction() as conn:
            conn.serialize("evaluations")  # two requests at once queue one evaluation
            latest = self.evaluation(run["id"])
            if latest is None or latest["status"] == "failed":
                conn.execute(
                    "INSERT INTO evaluations (run_id, created_at) VALUES (?, ?)",
                    (run["id"], time.time()),
                )
        return self.evaluation(run["id"])

    def evaluation(self, run_id) -> dict | None:
        """The latest evaluation of a run: {id, run_id, status ('queued', 'running',
        'finished' or 'failed'), created_at, started_at, finished_at, host, worker_pid,
        error}; None when none was asked for."""
        row = self._execute(
            f"SELECT {EVALUATION_COLUMNS} FROM evaluations WHERE run_id=? ORDER BY id DESC LIMIT 1",
            (int(run_id),),
        ).fetchone()
        return None if row is None else dict(row)

    def claim_next_evaluation(self, worker_pid: int, host: str | None = None) -> dict | None:
        """Atomically move the oldest queued evaluation to running, as done by `worker_pid`
        of `host` (default: this one), and return it; None when none waits."""
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT id FROM evaluations WHERE status='queued' ORDER BY id LIMIT 1 "
                "FOR UPDATE SKIP LOCKED"
            ).fetchone()
            if row is None:
                return None
            claimed = conn.execute(
                "UPDATE evaluations SET status='running', started_at=?, host=?, worker_pid=? "
                "WHERE id=? AND status='queued'",
                (time.time(), host or host_name(), int(worker_pid), row["id"]),
            ).rowcount
        return self._evaluation_by_id(row["id"]) if claimed else None

    def end_evaluation(self, evaluation_id: int, status: str, error: str | None = None):
        """The evaluation finished (its results are in the run's summary["ptq"]) or failed."""
        assert status in ("finished", "failed"), status
        self._write(
            "UPDATE evaluations SET status=?, error=?, finished_at=? WHERE id=?",
            (status, error, time.time(), int(evaluation_id)),
        )

    def queued_evaluations(self) -> int:
        return self._execute("SELECT COUNT(*) FROM evaluations WHERE status='queued'").fetchone()[0]

    def _evaluation_by_id(self, evaluation_id: int) -> dict:
        row = self._execute(
            f"SELECT {EVALUATION_COLUMNS} FROM evaluations WHERE id=?", (int(evaluation_id),)
        ).fetchone()
        return dict(row)

    def _reap_evaluations(self):
        """Fail the running evaluations whose worker is gone (the worker's own heartbeat in
        the workers table tells for another host); asking again queues a new one."""
        rows = self._execute(
            "SELECT e.id, e.host, e.worker_pid, e.started_at, (SELECT MAX(w.heartbeat_at) "
            "FROM workers w WHERE w.host=e.host AND w.pid=e.worker_pid) AS heartbeat_at "
            "FROM evaluations e WHERE e.status='running'"
        ).fetchall()
        for row in rows:
            host, pid = row["host"], row["worker_pid"]
            if self.alive(host, pid, row["heartbeat_at"], row["started_at"]):
                continue
            where = "" if host in (None, host_name()) else f" on host {host}"
            self.end_evaluation(
                row["id"],
                "failed",
                f"The evaluating process{where} (pid {pid}) stopped without finishing; "
                "ask again to evaluate anew.",
            )


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
