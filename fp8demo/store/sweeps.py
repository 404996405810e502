"""Sweep rows: a sweep's trials are Optuna's (sweep.py); the store keeps what a sweep is and
which comparison each trial trained (comparisons.sweep_id, trial_number)."""

import json
import time

from fp8demo.config import TrainConfig
from fp8demo.database import StoreError
from fp8demo.store.base import parse_id, sql_id


class Sweeps:
    """The sweeps of a store (a part of Store)."""

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
        sweep_id = parse_id(sweep_id, "a sweep id (a whole number)")
        row = self._execute("SELECT * FROM sweeps WHERE id=?", (sql_id(sweep_id),)).fetchone()
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
