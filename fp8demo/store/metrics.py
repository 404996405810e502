"""A run's measurements: per-step and per-epoch metrics, and the fp8 snapshots (amax, scales,
probes, recipes) stored as float32 arrays, one row per step."""

import json
import time

import numpy as np

from fp8demo.block_scales import BLOCK_RECIPES
from fp8demo.block_scales import STATISTICS as BLOCK_STATISTICS
from fp8demo.database import upsert
from fp8demo.fp8 import ROLES
from fp8demo.recipes import GEMMS, RECIPES

BLOCK_KEY = ("layer", "role", "gemm", "recipe")


class Metrics:
    """The metrics and fp8 snapshots of runs (a part of Store)."""

    # -- metrics ------------------------------------------------------------------------

    def add_steps(self, run_id: int, rows):
        """rows: (step, epoch, time, loss, accuracy) with true per-batch loss and accuracy."""
        self._conn().executemany(
            upsert(
                "step_metrics",
                ("run_id", "step", "epoch", "time", "loss", "accuracy"),
                key=("run_id", "step"),
            ),
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
            upsert(
                "epoch_metrics",
                ("run_id", "epoch", "step", "time", "loss", "accuracy", "val_loss", "val_accuracy"),
                key=("run_id", "epoch"),
            ),
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
            upsert("fp8_amax", ("run_id", "step", "amax"), key=("run_id", "step")),
            [(int(run_id), first_step + i, amax[i].tobytes()) for i in range(len(amax))],
        )

    def add_fp8_scales(self, run_id: int, step: int, scales: np.ndarray):
        self._write(
            upsert("fp8_scales", ("run_id", "step", "scales"), key=("run_id", "step")),
            (int(run_id), int(step), np.asarray(scales, dtype=np.float32).tobytes()),
        )

    def add_fp8_probe(self, run_id: int, rows):
        """rows: (step, stats[layers, 3 roles, 2]) with saturation and underflow fractions."""
        self._conn().executemany(
            upsert("fp8_probe", ("run_id", "step", "stats"), key=("run_id", "step")),
            [
                (int(run_id), int(step), np.asarray(stats, np.float32).tobytes())
                for step, stats in rows
            ],
        )

    def fp8_probe(self, run_id: int, since_step: int = -1):
        """(steps, stats[probes, layers, roles, (saturation, underflow)]) in time order."""
        return self._fp8_series("fp8_probe", "stats", run_id, since_step, extra=(2,))

    def add_fp8_recipes(self, run_id: int, recipes, rows, second: bool = False):
        """rows: (step, stats[layers, 3 roles, recipes, 3]) of probe.Probe.measure, the
        recipes in the order of `recipes`; second: the rows are Probe.second_gemm (each
        tensor in the other GEMM that uses it), kept in their own table."""
        self._conn().executemany(
            upsert(
                _recipe_table(second),
                ("run_id", "step", "recipe", "stats"),
                key=("run_id", "step", "recipe"),
            ),
            [
                (int(run_id), int(step), recipe, np.ascontiguousarray(stats[:, :, k]).tobytes())
                for step, stats in ((s, np.asarray(v, np.float32)) for s, v in rows)
                for k, recipe in enumerate(recipes)
            ],
        )

    def fp8_recipes(self, run_id: int, since_step: int = -1, second: bool = False):
        """(steps, recipes, stats[probes, layers, roles, recipes, (underflow_pct,
        saturation_pct, snr_db)]) in time order; recipes in recipes.RECIPES' order, a recipe
        missing at a probe NaN. second: each tensor in its other GEMM (add_fp8_recipes)."""
        n_layers = len(self.run(run_id)["summary"].get("fp8_layers", []))
        rows = self._execute(
            f"SELECT step, recipe, stats FROM {_recipe_table(second)} "
            "WHERE run_id=? AND step>? ORDER BY step",
            (int(run_id), since_step),
        ).fetchall()
        steps = sorted({r[0] for r in rows})
        known = {name: k for k, name in enumerate(RECIPES)}  # others (older names) last
        names = sorted({r[1] for r in rows}, key=lambda n: (known.get(n, len(known)), n))
        return np.array(steps, np.int64), tuple(names), _recipe_array(rows, steps, names, n_layers)

    def fp8_recipes_second(self, run_id: int, steps, names):
        """fp8_recipes(second=True)'s stats at the given probe `steps` and `recipes` (those
        fp8_recipes returned), NaN where one is missing; None for a run without any (recorded
        before the store kept the second GEMM: schema 7 and older)."""
        n_layers = len(self.run(run_id)["summary"].get("fp8_layers", []))
        rows = self._execute(
            "SELECT step, recipe, stats FROM fp8_recipes_second WHERE run_id=? AND step>=?",
            (int(run_id), int(min(steps, default=0))),
        ).fetchall()
        wanted_steps, wanted_names = set(int(s) for s in steps), set(names)
        rows = [r for r in rows if r[0] in wanted_steps and r[1] in wanted_names]
        if not rows:
            return None
        return _recipe_array(rows, [int(s) for s in steps], list(names), n_layers)

    def add_fp8_blocks(self, run_id: int, rows):
        """rows: block_scales.block_records' dicts (layer, role, gemm, recipe, step, the
        statistics, details as JSON text)."""
        columns = ("run_id", "step", *BLOCK_KEY, *BLOCK_STATISTICS, "details")
        self._conn().executemany(
            upsert("fp8_blocks", columns, key=("run_id", "step", *BLOCK_KEY)),
            [
                (int(run_id), int(r["step"]), *(r[c] for c in BLOCK_KEY))
                + tuple(_num(r[c]) for c in BLOCK_STATISTICS)
                + (r["details"],)
                for r in rows
            ],
        )

    def fp8_blocks(self, run_id: int, all_probes: bool = False) -> list[dict]:
        """The block scales' rows of a run's latest probe (every probe with `all_probes`), in
        probe, layer (the run's order), role, GEMM and recipe order: layer, role, gemm,
        recipe, step, the statistics (None: not finite) and details parsed ({"histogram",
        "worst"}). [] for a run without any (no probe, or recorded before schema 9)."""
        columns = ("step", *BLOCK_KEY, *BLOCK_STATISTICS, "details")
        latest = " AND step=(SELECT MAX(step) FROM fp8_blocks WHERE run_id=?)"
        latest, params = ("", (int(run_id),)) if all_probes else (latest, (int(run_id),) * 2)
        rows = [
            dict(zip(columns, r))
            for r in self._execute(
                f"SELECT {', '.join(columns)} FROM fp8_blocks WHERE run_id=?{latest}", params
            ).fetchall()
        ]
        layers = [x["name"] for x in self.run(run_id)["summary"].get("fp8_layers", [])]
        orders = (layers, ROLES, GEMMS, BLOCK_RECIPES)

        def position(row):
            return (row["step"],) + tuple(
                order.index(row[c]) if row[c] in order else len(order)
                for c, order in zip(BLOCK_KEY, orders)
            )

        for row in rows:
            row["details"] = json.loads(row["details"])
        return sorted(rows, key=position)

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


def _recipe_table(second: bool) -> str:
    """The table of each tensor's what-if in its first GEMM, or in its second."""
    return "fp8_recipes_second" if second else "fp8_recipes"


def _recipe_array(rows, steps, names, n_layers: int) -> np.ndarray:
    """rows (step, recipe, blob[layers, roles, 3]) as [probes, layers, roles, recipes, 3] in
    the order of `steps` and `names`; NaN where a row is missing."""
    stats = np.full((len(steps), n_layers, len(ROLES), len(names), 3), np.nan, np.float32)
    at_step = {step: i for i, step in enumerate(steps)}
    at_recipe = {name: k for k, name in enumerate(names)}
    for step, recipe, blob in rows:
        values = np.frombuffer(blob, np.float32).reshape(n_layers, len(ROLES), 3)
        stats[at_step[step], :, :, at_recipe[recipe]] = values
    return stats


def _num(value):
    if value is None:
        return None
    value = float(value)
    return value if value == value else None  # NaN → NULL (shown as a gap)
