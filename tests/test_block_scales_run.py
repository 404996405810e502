"""Block scales of a real trained run (the session's tiny bf16 + fp8 comparison, probed every 4
steps): the rows its probe stored, `health RUN --blocks` in JSON and words, and the FP8 health
page's "Block scales" view."""

import json
import os
import subprocess
import sys

import pytest
import streamlit as st
from conftest import ROOT, copy_home
from streamlit.testing.v1 import AppTest

from fp8demo import block_scales
from fp8demo.config import BLOCK_SCALE_PRECISIONS, PRECISIONS, RECIPE_PRECISIONS, TrainConfig
from fp8demo.fp8 import ROLES
from fp8demo.store import Store

JSON_KEYS = {
    "layer",
    "role",
    "recipe",
    "gemm",
    "step",
    "scale_log2_min",
    "scale_log2_max",
    "scale_log2_std",
    "worst_block_snr_db",
    "limit_share",
    "worst_block",
}


@pytest.fixture
def home(trained, tmp_path, monkeypatch):
    """A copy of the trained comparison's home (pages and the CLI open it by FP8DEMO_HOME)."""
    home = copy_home(trained["home"], tmp_path / "home")
    monkeypatch.setenv("FP8DEMO_HOME", str(home))
    monkeypatch.delenv("FP8DEMO_STORE", raising=False)
    st.cache_resource.clear()
    yield home
    st.cache_resource.clear()


def _health(run_id, *flags):
    return subprocess.run(
        [sys.executable, "-m", "fp8demo", "health", str(run_id), *flags],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_probe_stored_block_scales_at_every_probe(trained, home):
    store = Store(home)
    run = store.run(trained["run_ids"]["fp8"])
    layers = [layer["name"] for layer in run["summary"]["fp8_layers"]]
    recipe_steps, _, _ = store.fp8_recipes(run["id"])
    every = store.fp8_blocks(run["id"], all_probes=True)
    assert sorted({r["step"] for r in every}) == [int(s) for s in recipe_steps]
    latest = store.fp8_blocks(run["id"])
    assert {r["step"] for r in latest} == {int(recipe_steps[-1])}
    assert len(latest) == len(layers) * len(ROLES) * 2 * len(block_scales.BLOCK_RECIPES)
    for row in latest:
        # A trained model's tensors are nonzero: every statistic is measured.
        assert row["scale_log2_min"] <= row["scale_log2_max"], row
        assert row["scale_log2_std"] >= 0 and 0 <= row["limit_share"] <= 1
        counts = row["details"]["histogram"]["counts"]
        assert sum(counts) > 0 and row["details"]["histogram"]["first"] == int(
            row["scale_log2_min"] // 1
        )
    # Power-of-two recipes have whole log2 scales; both MXFP8 roundings block the same values.
    by_key = {(r["layer"], r["role"], r["gemm"], r["recipe"]): r for r in latest}
    for (layer, role, gemm, recipe), row in by_key.items():
        if recipe != "nvfp4":
            assert row["scale_log2_min"] == int(row["scale_log2_min"])
            assert row["scale_log2_max"] == int(row["scale_log2_max"])
        if recipe == "mxfp8":
            floor = by_key[(layer, role, gemm, "mxfp8-floor")]
            assert sum(row["details"]["histogram"]["counts"]) == sum(
                floor["details"]["histogram"]["counts"]
            )


def test_health_blocks_json_has_exactly_the_keys_and_words_explain_them(trained, home):
    run_id = trained["run_ids"]["fp8"]
    shown = _health(run_id, "--blocks", "--json")
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    assert rows and all(set(r) == JSON_KEYS for r in rows)
    assert {r["gemm"] for r in rows if r["role"] == "kernel"} == {"fprop", "dgrad"}
    assert {r["gemm"] for r in rows if r["role"] == "inputs"} == {"fprop", "wgrad"}
    assert {r["recipe"] for r in rows} == set(block_scales.BLOCK_RECIPES)
    worst = next(r for r in rows if r["worst_block"] is not None)
    assert len(worst["worst_block"]) == 2 and all(isinstance(i, int) for i in worst["worst_block"])
    every = json.loads(_health(run_id, "--blocks", "--json", "--all-probes").stdout)
    assert len(every) > len(rows) and len({r["step"] for r in every}) > 1

    words = _health(run_id, "--blocks")
    assert words.returncode == 0, words.stderr
    assert "worst block" in words.stdout and "limit of nvfp4:" in words.stdout
    assert "decoder/self_attention/query" in words.stdout
    assert len(words.stdout.splitlines()) > len(rows)
    refused = _health(run_id, "--blocks", "--recipes")
    assert refused.returncode == 2 and "a view of its own" in refused.stderr


def test_a_run_without_block_scales_says_so_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("FP8DEMO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FP8DEMO_STORE", raising=False)
    store = Store(tmp_path / "home")
    _, (run_id,) = store.create_comparison(TrainConfig(precisions=("fp8",), probe_every=4))
    store.merge_summary(run_id, fp8_layers=[{"name": "a"}])
    shown = _health(run_id, "--blocks", "--json")
    assert shown.returncode == 2
    assert shown.stderr.strip().splitlines() == [
        f"error: Run {run_id} has no block-scale statistics: they are measured at each probe "
        "of runs with block scales on (--block-scales on; auto, the default, measures them in "
        "fp8-block128, mxfp8 and nvfp4 runs)."
    ]


def test_block_scales_are_measured_in_block_recipe_runs_unless_asked_otherwise():
    auto = TrainConfig()
    assert [p for p in PRECISIONS if auto.probes_block_scales(p)] == [
        "fp8-block128",
        "mxfp8",
        "nvfp4",
    ]
    on = TrainConfig.from_strings({"block_scales": "on"})
    assert [p for p in PRECISIONS if on.probes_block_scales(p)] == list(PRECISIONS)
    off = TrainConfig(block_scales="off")
    assert not any(off.probes_block_scales(p) for p in PRECISIONS)
    # Each of them trains a recipe the block-scale statistics know.
    assert {RECIPE_PRECISIONS[p] for p in BLOCK_SCALE_PRECISIONS} <= set(block_scales.BLOCK_RECIPES)
    assert TrainConfig(block_scales="sometimes").errors() == [
        "block_scales must be one of auto, on, off, got 'sometimes'."
    ]


def test_the_health_page_shows_a_tensors_block_scales_and_worst_blocks(trained, home):
    at = AppTest.from_file(os.path.join(ROOT, "pages/health.py"), default_timeout=120).run()
    assert not at.exception
    assert "Block scales" in [h.value for h in at.subheader]

    def histogram_title():
        specs = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
        return next(
            s["layout"]["title"]["text"]
            for s in specs
            if s["layout"]["title"]["text"].startswith("Block scales of")
        )

    assert histogram_title().startswith("Block scales of decoder/self_attention/query · inputs")
    assert "under block128" in histogram_title()
    worst = at.table[0].value
    assert list(worst.columns) == ["tensor", "GEMM", "block", "SNR dB", "limit %"]
    assert len(worst) == block_scales.WORST_BLOCKS
    assert set(worst["GEMM"]) == {"fprop"} and worst["block"][0].startswith("row ")

    at.selectbox(key="block_tensor").set_value(("decoder/feedforward_output_dense", "kernel")).run()
    at.radio(key="block_gemm_kernel_first").set_value("dgrad").run()
    at.selectbox(key="block_recipe").set_value("nvfp4").run()
    assert not at.exception
    assert "decoder/feedforward_output_dense · kernel under nvfp4" in histogram_title()
    worst = at.table[0].value
    assert set(worst["GEMM"]) == {"dgrad"}
    # The expander names the worst block of every tensor under the chosen recipe, worst first.
    every = at.table[1].value
    assert list(every["SNR dB"]) == sorted(every["SNR dB"])
    assert len(every) == len(set(zip(every["tensor"], every["GEMM"])))
