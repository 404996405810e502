"""The what-if per GEMM (issue 22, part 3): each tensor's recipe statistics in both GEMMs that
use it, kept in the store beside the first GEMM's, read back by `health --recipes --json`;
an older store (schema 7) migrates and still shows its rows."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, TINY, train_comparison

from fp8demo import probe, recipes
from fp8demo.config import TrainConfig
from fp8demo.database import Database
from fp8demo.fp8 import ROLES
from fp8demo.store import SCHEMA_VERSION, Store

LAYERS = [{"name": "a"}, {"name": "b"}]
NAMES = ("mxfp8", "delayed")  # stored in this order, read back in recipes.RECIPES' order


@pytest.fixture
def store(store_url, tmp_path) -> Store:
    """A new store on each backend: tests taking it run on SQLite and on PostgreSQL."""
    return Store(tmp_path / "home", url=store_url)


def _fp8_run(store) -> int:
    _, (run_id,) = store.create_comparison(TrainConfig(precisions=("fp8",), probe_every=4))
    store.merge_summary(run_id, fp8_layers=LAYERS)
    return run_id


def _measured(offset: float) -> np.ndarray:
    """[layers, roles, recipes (NAMES), 3] with a distinct value in every cell."""
    return np.arange(2 * 3 * 2 * 3, dtype=np.float32).reshape(2, 3, 2, 3) + offset


def _health_json(store, run_id: int, tmp_path) -> list:
    env = dict(os.environ, FP8DEMO_HOME=str(tmp_path / "cli home"), FP8DEMO_STORE=store.url)
    shown = subprocess.run(
        [sys.executable, "-m", "fp8demo", "health", str(run_id), "--recipes", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def test_the_second_gemm_is_stored_apart_and_read_at_the_first_gemms_probes(store):
    run_id = _fp8_run(store)
    store.add_fp8_recipes(run_id, NAMES, [(0, _measured(0)), (4, _measured(100))])
    assert store.fp8_recipes_second(run_id, [0, 4], ("delayed", "mxfp8")) is None
    second = [(0, _measured(1000)), (4, _measured(2000))]
    store.add_fp8_recipes(run_id, NAMES, second, second=True)

    steps, names, first = store.fp8_recipes(run_id)  # the first GEMM's rows are untouched
    assert list(steps) == [0, 4] and names == ("delayed", "mxfp8")
    np.testing.assert_array_equal(first[1], _measured(100)[:, :, ::-1])
    aligned = store.fp8_recipes_second(run_id, steps, names)
    as_stored = store.fp8_recipes(run_id, second=True)
    assert list(as_stored[0]) == [0, 4] and as_stored[1] == names
    np.testing.assert_array_equal(as_stored[2], aligned)
    np.testing.assert_array_equal(aligned[0], _measured(1000)[:, :, ::-1])
    np.testing.assert_array_equal(aligned[1], _measured(2000)[:, :, ::-1])
    # Aligned to what it is asked for: a probe or recipe it lacks is NaN.
    partial = store.fp8_recipes_second(run_id, [4, 8], ("delayed", "current", "mxfp8"))
    np.testing.assert_array_equal(partial[0, :, :, 2], _measured(2000)[:, :, 0])
    assert np.isnan(partial[1]).all() and np.isnan(partial[0, :, :, 1]).all()
    # Deleting the run deletes its second-GEMM rows too.
    store.end_run(run_id, "finished")
    store.delete_comparison(store.run(run_id)["comparison_id"])
    raw = Database(store.url).connection()
    assert raw.execute("SELECT COUNT(*) FROM fp8_recipes_second").fetchone()[0] == 0


def test_a_schema_7_store_migrates_and_still_shows_its_rows(store, tmp_path):
    run_id = _fp8_run(store)
    store.add_fp8_recipes(run_id, NAMES, [(4, _measured(0))])
    raw = Database(store.url).connection()  # the store as schema 7 left it
    raw.execute("DROP TABLE fp8_recipes_second")
    raw.execute("UPDATE meta SET value='7' WHERE key='schema_version'")

    reopened = Store(tmp_path / "another home", url=store.url)
    assert "fp8_recipes_second" in raw.tables()
    assert raw.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION) == "9"
    rows = _health_json(reopened, run_id, tmp_path)
    # Recorded before the second GEMM was kept: per-tensor recipes repeat their first GEMM's
    # numbers (they quantize a tensor the same in both), block recipes show the first only.
    first = {(r["layer"], r["role"], r["recipe"]): r for r in rows if r["gemm"] == _first(r)}
    assert len(first) == 2 * 3 * 2
    stored = _measured(0)
    for (layer, role, recipe), row in first.items():
        i, j, k = ["a", "b"].index(layer), ROLES.index(role), NAMES.index(recipe)
        assert [row["underflow_pct"], row["saturation_pct"], row["snr_db"]] == list(stored[i, j, k])
    others = [r for r in rows if r["gemm"] != _first(r)]
    assert {r["recipe"] for r in others} == {"delayed"} and len(others) == 2 * 3
    for row in others:
        twin = first[(row["layer"], row["role"], "delayed")]
        assert {**row, "gemm": twin["gemm"]} == twin

    # What the migrated store records from now on shows under the second GEMM.
    reopened.add_fp8_recipes(run_id, NAMES, [(8, _measured(10))])
    reopened.add_fp8_recipes(run_id, NAMES, [(8, _measured(500))], second=True)
    rows = _health_json(reopened, run_id, tmp_path)
    assert {r["step"] for r in rows} == {8} and len(rows) == 2 * 3 * 2 * 2
    mx = [r for r in rows if r["recipe"] == "mxfp8" and r["gemm"] != _first(r)]
    assert sorted(r["snr_db"] for r in mx) == sorted(_measured(500)[:, :, 0, 2].ravel().tolist())


def _first(row) -> str:
    return recipes.ROLE_GEMMS[row["role"]][0]


def test_a_trained_fp8_run_shows_every_tensor_under_both_its_gemms(home, imdb_folder, tmp_path):
    config = TrainConfig(**TINY, precisions=("fp8",), probe_every=2)
    done = train_comparison(home, imdb_folder, config, ["a fine film"])
    run_id = done["run_ids"]["fp8"]
    store = Store(home)
    steps, names, first = store.fp8_recipes(run_id)
    second = store.fp8_recipes_second(run_id, steps, names)
    assert len(steps) >= 2 and names == recipes.RECIPES and second is not None
    assert not np.isnan(second).any()
    layers = [layer["name"] for layer in store.run(run_id)["summary"]["fp8_layers"]]

    rows = _health_json(store, run_id, tmp_path)
    assert [(r["layer"], r["role"], r["gemm"], r["recipe"]) for r in rows] == [
        (layer, role, gemm, recipe)
        for layer in layers
        for role, gemms in recipes.ROLE_GEMMS.items()
        for gemm in gemms
        for recipe in recipes.RECIPES
    ]
    assert rows == probe.recipe_records(steps, names, first, layers, second=second)
    # Per-tensor recipes quantize a tensor the same in both GEMMs; a block recipe's second
    # GEMM blocks it along another axis, so its numbers differ somewhere.
    for k, recipe in enumerate(names):
        same = np.allclose(first[-1, :, :, k], second[-1, :, :, k], equal_nan=True)
        assert same == (recipe in recipes.PER_TENSOR), recipe


def test_the_heatmap_shows_one_gemms_two_operands_as_that_gemm_quantizes_them():
    from fp8demo import fp8_charts  # lazy: plotly

    names = ("delayed", "mxfp8")
    first, second = _measured(0), _measured(1000)  # [layers, roles, recipes, 3]
    latest, roles = fp8_charts.gemm_operands(first, second, names, "wgrad")
    # wgrad multiplies the inputs (their second GEMM) and the output gradients (also their second).
    assert roles == ("inputs", "outputs_grad")
    np.testing.assert_array_equal(latest[:, 0], second[:, 0])
    np.testing.assert_array_equal(latest[:, 1], second[:, 2])
    latest, roles = fp8_charts.gemm_operands(first, second, names, "dgrad")
    np.testing.assert_array_equal(latest[:, 0], first[:, 2])  # output gradients: first GEMM
    np.testing.assert_array_equal(latest[:, 1], second[:, 1])  # the kernel: its second
    # Without the second GEMM recorded: per-tensor recipes repeat the first, blocks are gaps.
    old, _ = fp8_charts.gemm_operands(first, None, names, "wgrad")
    np.testing.assert_array_equal(old[:, :, 0], first[:, [0, 2], 0])
    assert np.isnan(old[:, :, 1]).all()

    fig = fp8_charts.recipe_heatmap(latest, ["a", "b"], names, 8, roles=roles, gemm="dgrad")
    heatmap = fig.data[0]
    assert list(heatmap.y) == [
        "a · output gradient",
        "a · kernel",
        "b · output gradient",
        "b · kernel",
    ]
    assert np.asarray(heatmap.z)[3, 1] == np.clip(second[1, 1, 1, 2], *fp8_charts.SNR_RANGE)
    assert "in dgrad" in heatmap.hovertemplate and "underflow" in heatmap.hovertemplate
    assert "What-if: SNR" in fig.layout.title.text and "dgrad GEMM" in fig.layout.title.text
