"""Comparisons and their runs: queueing, run state, cancelling, reaping and deleting."""

import json
import os
import shutil
import time

from fp8demo import database
from fp8demo.config import TrainConfig
from fp8demo.database import StoreError
from fp8demo.paths import host_name
from fp8demo.store.base import ACTIVE, ENDED, parse_id, sql_id

# The tables with rows of a run besides runs itself: deleted with it.
RUN_TABLES = (
    "step_metrics",
    "epoch_metrics",
    "fp8_amax",
    "fp8_scales",
    "fp8_probe",
    "fp8_recipes",
    "fp8_recipes_second",
    "fp8_blocks",
    "artifacts",
    "evaluations",
)


class Runs:
    """The comparisons and runs of a store (a part of Store)."""

    # -- launching ----------------------------------------------------------------------

    def create_comparison(
        self,
        config: TrainConfig,
        label: str = "",
        group_id: int | None = None,
        trial: tuple[int, int] | None = None,
        side_by_side: bool | None = None,
    ) -> tuple[int, list[int]]:
        """Queue one comparison: one run per precision of `config`, in order.

        group_id: the first comparison of a set of repeats over seeds ("self" = this one).
        trial: (sweep id, Optuna trial number) of the sweep trial it is (sweep.py).
        side_by_side: whether its precisions train at the same time, as the launcher decided
        from this host's devices; None: the setting alone (config.side_by_side == "on").
        """
        config.validate()
        if side_by_side is None:
            side_by_side = config.side_by_side == "on"
        now = time.time()
        # Decided once, here: every worker of the pool, on any host, reads the same answer.
        summary = json.dumps({"side_by_side": bool(side_by_side)})
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

    def start_own_run(
        self, label: str, precision: str, config: TrainConfig, summary: dict, new_label=""
    ) -> tuple[int, int]:
        """(comparison id, run id) of a run a user's own script trains (FP8Monitor), created
        'running' for this process and host: in the latest comparison labelled `label` that
        has no `precision` run yet, or else in a new one (labelled `label`, or `new_label`
        when there is none to join by). Not queued as create_comparison queues: a worker
        must never claim it."""
        now = time.time()
        with self._transaction() as conn:
            conn.serialize("monitor")  # two scripts starting at once join one comparison
            cid, precisions = None, None
            if label:
                row = conn.execute(
                    "SELECT c.id, c.config FROM comparisons c WHERE c.label=? "
                    "AND c.sweep_id IS NULL AND NOT EXISTS (SELECT 1 FROM runs r "
                    "WHERE r.comparison_id=c.id AND r.precision=?) ORDER BY c.id DESC LIMIT 1",
                    (label, precision),
                ).fetchone()
                if row:
                    cid, precisions = row[0], json.loads(row[1]).get("precisions", [])
            if cid is None:
                cid = conn.execute(
                    "INSERT INTO comparisons (created_at, config, label) VALUES (?, ?, ?) "
                    "RETURNING id",
                    (now, config.to_json(), label or new_label),
                ).fetchone()[0]
            else:  # the comparison lists every precision it holds, baseline (bf16) first
                joined = sorted({*precisions, precision}, key=lambda p: (p != "bf16", p))
                listed = TrainConfig.from_dict({**config.to_dict(), "precisions": joined})
                conn.execute("UPDATE comparisons SET config=? WHERE id=?", (listed.to_json(), cid))
            run_id = conn.execute(
                "INSERT INTO runs (comparison_id, precision, config, status, phase, created_at, "
                "updated_at, started_at, heartbeat_at, worker_pid, host, slot, summary) "
                "VALUES (?, ?, ?, 'running', 'compiling', ?, ?, ?, ?, ?, ?, 'monitor', ?) "
                "RETURNING id",
                (cid, precision, config.to_json(), now, now, now, now, os.getpid())
                + (host_name(), json.dumps(summary)),
            ).fetchone()[0]
        return cid, run_id

    # -- run state ----------------------------------------------------------------------

    def update_run(self, run_id: int, **fields):
        if "summary" in fields and not isinstance(fields["summary"], str):
            fields["summary"] = json.dumps(fields["summary"])
        fields["updated_at"] = time.time()
        columns = ", ".join(f"{name}=?" for name in fields)
        self._write(f"UPDATE runs SET {columns} WHERE id=?", (*fields.values(), int(run_id)))

    def merge_summary(self, run_id: int, **values):
        """Set these keys of a run's summary, keeping the others: read, merged and written in
        one transaction with the row locked, so concurrent writers (a worker's threads, an
        evaluating worker) never lose each other's keys."""
        try:
            with self._transaction() as conn:
                row = conn.execute(
                    "SELECT summary FROM runs WHERE id=? FOR UPDATE", (int(run_id),)
                ).fetchone()
                if row is None:
                    raise StoreError(f"There is no run {run_id} in {self.where}.")
                summary = {**json.loads(row[0] or "{}"), **values}
                conn.execute(
                    "UPDATE runs SET summary=?, updated_at=? WHERE id=?",
                    (json.dumps(summary), time.time(), int(run_id)),
                )
        except database.OperationalError as e:
            raise StoreError(f"Cannot write to the run store {self.where}: {e}") from e

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
        run_id = parse_id(run_id, "a run id (a whole number)")
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT status FROM runs WHERE id=? FOR UPDATE", (sql_id(run_id),)
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

    def reap(self, note: str = "") -> list[int]:
        """Mark running runs whose training process is gone (Store.alive) as interrupted, and
        fail running evaluations whose worker is gone; return the runs' ids.

        note: the caller's hint on why a process of this host may have died (a full disk),
        added to those runs' errors; the store itself gives no such advice."""
        here, now = host_name(), time.time()
        rows = self._execute(
            "SELECT id, worker_pid, host, heartbeat_at, started_at, phase FROM runs "
            "WHERE status='running'"
        ).fetchall()
        lost = []
        for row in rows:
            if self.alive(row["host"], row["worker_pid"], row["heartbeat_at"], row["started_at"]):
                continue
            where = "" if row["host"] in (None, here) else f" on host {row['host']}"
            error = f"The training process{where} (pid {row['worker_pid']}) "
            if where:
                silent = now - (row["heartbeat_at"] or row["started_at"] or 0)
                error += (
                    f"sent no heartbeat for {silent:.0f} s during '{row['phase']}': it stopped, "
                    "or lost the store, without finishing; partial metrics are kept."
                )
            else:
                error += (
                    f"stopped during '{row['phase']}' without finishing; partial metrics are kept."
                    + (f" {note.strip()}" if note.strip() else "")
                )
            self.end_run(row["id"], "interrupted", error=error)
            lost.append(row["id"])
        self._reap_evaluations()
        return lost

    # -- reading runs -------------------------------------------------------------------

    @staticmethod
    def _run_dict(row) -> dict:
        run = dict(row)
        run["config"] = TrainConfig.from_dict(json.loads(run["config"]))
        run["summary"] = json.loads(run["summary"] or "{}")
        return run

    def run(self, run_id) -> dict:
        run_id = parse_id(run_id, "a run id (a whole number)")
        row = self._execute("SELECT * FROM runs WHERE id=?", (sql_id(run_id),)).fetchone()
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

    # -- reading comparisons ------------------------------------------------------------

    def _comparison_dict(self, row) -> dict:
        comparison = dict(row)
        comparison["config"] = TrainConfig.from_dict(json.loads(comparison["config"]))
        comparison["runs"] = self.runs(row["id"])
        return comparison

    def comparisons(self) -> list[dict]:
        """Every comparison, newest first, with its runs."""
        rows = self._execute("SELECT * FROM comparisons ORDER BY id DESC").fetchall()
        return [self._comparison_dict(row) for row in rows]

    def comparison(self, comparison_id) -> dict:
        comparison_id = parse_id(comparison_id, "a comparison id")
        row = self._execute(
            "SELECT * FROM comparisons WHERE id=?", (sql_id(comparison_id),)
        ).fetchone()
        if row is None:
            raise StoreError(f"There is no comparison {comparison_id}.")
        return self._comparison_dict(row)

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

    # -- housekeeping -------------------------------------------------------------------

    def delete_comparison(self, comparison_id: int):
        """Delete a comparison whose runs ended: its runs, their rows of every table
        (evaluations too) and their files."""
        runs = self.runs(comparison_id)
        if any(r["status"] in ACTIVE for r in runs):
            raise StoreError("Stop the comparison's runs before deleting it.")
        with self._transaction() as conn:
            for run in runs:
                for table in RUN_TABLES:
                    conn.execute(f"DELETE FROM {table} WHERE run_id=?", (run["id"],))
                conn.execute("DELETE FROM runs WHERE id=?", (run["id"],))
            conn.execute("DELETE FROM comparisons WHERE id=?", (int(comparison_id),))
        for run in runs:
            shutil.rmtree(self._local_run_dir(run["id"]), ignore_errors=True)
            if self.artifacts is not None:
                shutil.rmtree(self.run_dir(run["id"]), ignore_errors=True)
