"""Fallback's results: the layers it moved say "bf16" on FP8 health, and a comparison trained
with --fallback pairs with its twin without it (same settings and seed) on Results and in
`show --json`.

The stores are filled through the Store methods the training process writes with (a real
fallback run is trained in test_fallback.py); the pages run in-process with AppTest and the
CLI through its main().
"""

import json
import os

import numpy as np
import pytest
import streamlit as st
from conftest import ROOT
from streamlit.testing.v1 import AppTest

from fp8demo import cli, launcher, records
from fp8demo.config import preset
from fp8demo.store import Store

FALLBACK = "underflow>5%"
LAYERS = [  # the fp8 run's float8 layers: the classifier is kept in bf16 by its settings
    "decoder/self_attention/query",
    "decoder/self_attention/key",
    "decoder/feedforward_output_dense",
]
MOVED, MOVED_AT = "decoder/self_attention/key", 12
EVENT = {
    "step": MOVED_AT,
    "layer": MOVED,
    "role": "outputs_grad",
    "reason": FALLBACK,
    "value": 0.42,
}


@pytest.fixture
def page_home(tmp_path, monkeypatch) -> dict:
    """A temp FP8DEMO_HOME, no password, clean caches; the launcher's worker and supervisor
    starts are recorded instead of run (a real worker would train what a test queues)."""
    home = tmp_path / "home"
    monkeypatch.setenv("FP8DEMO_HOME", str(home))
    for name in ("FP8DEMO_STORE", "FP8DEMO_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    started = []
    monkeypatch.setattr(launcher, "ensure_supervisor", lambda store, **_: None)
    monkeypatch.setattr(launcher, "ensure_worker", lambda store, **_: started.append(store.home))
    st.cache_resource.clear()
    st.cache_data.clear()
    yield {"store": Store(home), "started": started}
    st.cache_resource.clear()
    st.cache_data.clear()


def add_comparison(store, accuracies, fallback="", events=(), **settings):
    """A bf16 + fp8 comparison with these test accuracies (None: still queued); the fp8 run
    records its float8 layers, amax, probe and `events` as training would."""
    config = preset(
        "Quick demo",
        fallback=fallback,
        bf16_layers=("classifier",),
        probe_every=4,
        ptq=False,  # `show` of a bf16 run would wait for its post-training evaluation
        **settings,
    )
    cid, (bf16, fp8) = store.create_comparison(config)
    record_float8(store, fp8, list(events))
    for run_id, accuracy in ((bf16, accuracies[0]), (fp8, accuracies[1])):
        if accuracy is not None:
            store.end_run(run_id, "finished", test_accuracy=accuracy, test_loss=0.5, step=40)
    return cid, {"bf16": bf16, "fp8": fp8}


def record_float8(store, run_id, events):
    """What the recorder writes for a float8 run: layers, amax per step, probes, and the
    fallback's events with their summary."""
    rng = np.random.default_rng(0)
    layers = [{"name": n, "class": "Dense", "policy": "float8_from_mixed_bfloat16"} for n in LAYERS]
    store.merge_summary(run_id, fp8_layers=layers)
    store.add_fp8_amax(run_id, 1, np.abs(rng.normal(1, 0.3, (20, len(LAYERS), 3))))
    store.add_fp8_probe(run_id, [(s, np.full((len(LAYERS), 3, 2), 0.01)) for s in (0, 8, 16)])
    if events:
        moved = sorted({e["layer"] for e in events})
        store.merge_summary(
            run_id,
            fallback_events=events,
            fallback_layers=moved,
            fallback_summary=f"{len(moved)} of {len(LAYERS)} float8 layers ended in bf16 "
            "(fallback)",
        )


def run_cli(capsys, *args) -> dict | list:
    assert cli.main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


def page(name, **query) -> AppTest:
    at = AppTest.from_file(os.path.join(ROOT, name), default_timeout=60)
    for key, value in query.items():
        at.query_params[key] = value
    return at.run()


# -- records: the twin ------------------------------------------------------------------------


def test_the_twin_is_the_same_settings_and_seed_without_fallback(page_home):
    store = page_home["store"]
    with_fallback, _ = add_comparison(store, (0.80, 0.81), FALLBACK, [EVENT])
    add_comparison(store, (0.80, 0.70), seed=43)  # another seed
    add_comparison(store, (0.80, 0.70), hidden_dim=64)  # other settings
    add_comparison(store, (0.80, 0.70), "saturation>1%")  # another fallback
    twin, _ = add_comparison(store, (0.80, 0.785))
    later, _ = add_comparison(store, (0.80, 0.70), side_by_side="off")  # equal, later
    comparisons = store.comparisons()
    comparison = store.comparison(with_fallback)
    assert records.fallback_twin(comparisons, comparison)["id"] == twin
    found = records.without_fallback(comparisons, comparison, "fp8")
    assert found["comparison_id"] == twin and found["test_accuracy"] == pytest.approx(0.785)
    assert found["difference"] == pytest.approx(2.5)  # points: 81 % with, 78.5 % without
    assert records.without_fallback(comparisons, comparison, "bf16") is None
    assert records.fallback_twin(comparisons, store.comparison(twin)) is None  # no fallback
    assert records.twin_config(comparison["config"]).fallback == ""
    assert records.twin_config(comparison["config"]).seed == comparison["config"].seed
    assert later != twin


def test_a_twin_still_training_has_no_difference_yet(page_home):
    store = page_home["store"]
    with_fallback, _ = add_comparison(store, (0.80, 0.81), FALLBACK)
    twin, _ = add_comparison(store, (None, None))
    found = records.without_fallback(store.comparisons(), store.comparison(with_fallback), "fp8")
    assert found == {"comparison_id": twin, "test_accuracy": None, "difference": None}


# -- show --json and health --json --------------------------------------------------------------


def test_show_and_health_json_say_what_fallback_moved_and_bought(page_home, capsys):
    store = page_home["store"]
    _, runs = add_comparison(store, (0.80, 0.81), FALLBACK, [EVENT])
    shown = run_cli(capsys, "show", str(runs["fp8"]), "--json")
    assert shown["without_fallback"] is None  # no twin yet
    assert shown["fallback_events"] == [EVENT]
    tensors = shown["fp8_health"]["tensors"]
    assert {t["fallback_step"] for t in tensors if t["layer"] == MOVED} == {MOVED_AT}
    assert {t["fallback_step"] for t in tensors if t["layer"] != MOVED} == {None}

    twin, _ = add_comparison(store, (0.80, 0.79))
    shown = run_cli(capsys, "show", str(runs["fp8"]), "--json")
    assert shown["without_fallback"]["comparison_id"] == twin
    assert shown["without_fallback"]["test_accuracy"] == pytest.approx(0.79)
    assert shown["without_fallback"]["difference"] == pytest.approx(2.0)
    assert run_cli(capsys, "show", str(runs["bf16"]), "--json")["without_fallback"] is None

    rows = run_cli(capsys, "health", str(runs["fp8"]), "--json")
    by_layer = {}
    for row in rows:
        by_layer.setdefault(row["layer"], []).append(row)
    assert [r["format"] for r in by_layer[MOVED]] == [f"bf16 (from step {MOVED_AT})"] * 3
    assert [r["fallback_step"] for r in by_layer[MOVED]] == [MOVED_AT] * 3
    assert [r["format"] for r in by_layer[LAYERS[0]]] == ["E4M3", "E4M3", "E5M2"]
    assert by_layer["classifier"][0]["format"] == "bf16"
    assert by_layer["classifier"][0]["fallback_step"] is None
    assert cli.main(["health", str(runs["fp8"])]) == 0
    assert f"bf16 (from step {MOVED_AT})" in capsys.readouterr().out


# -- FP8 health ---------------------------------------------------------------------------------


def test_health_table_says_bf16_from_the_fallback_step_and_leaves_bf16_cells_empty(page_home):
    store = page_home["store"]
    cid, _ = add_comparison(store, (0.80, 0.81), FALLBACK, [EVENT])
    at = page("pages/health.py", comparison=str(cid))
    assert not at.exception
    table = at.dataframe[0]
    assert table.proto.placeholder == ""  # missing numbers are empty cells, not "None"
    frame = table.value
    formats = dict(zip(zip(frame["layer"], frame["role"]), frame["format"]))
    assert formats[(MOVED, "outputs_grad")] == f"bf16 (from step {MOVED_AT})"
    assert formats[(MOVED, "inputs")] == f"bf16 (from step {MOVED_AT})"
    assert formats[(LAYERS[0], "inputs")] == "E4M3"
    kept = frame[frame["layer"] == "classifier"].iloc[0]
    assert kept["format"] == "bf16"
    assert all(kept[c] is None or np.isnan(kept[c]) for c in ("overflows", "min headroom"))


# -- Results ------------------------------------------------------------------------------------


def results(cid) -> AppTest:
    at = page("pages/results.py")
    at.selectbox("result").set_value(cid).run()
    assert not at.exception
    return at


def test_results_show_what_fallback_bought_against_the_twin(page_home):
    store = page_home["store"]
    cid, _ = add_comparison(store, (0.80, 0.81), FALLBACK, [EVENT])
    twin, _ = add_comparison(store, (0.80, 0.79))
    at = results(cid)
    texts = [m.value for m in at.markdown]
    assert f"**What fallback bought** (`{FALLBACK}`)" in texts
    assert (
        f"fp8: 81.00% with fallback, 79.00% without (comparison #{twin}, same seed): "
        "+2.00 points (one seed: a hint, not a verdict)." in texts
    )
    moved = next(df.value for df in at.dataframe if "threshold crossed" in df.value.columns)
    assert moved.to_dict("records") == [
        {
            "step": MOVED_AT,
            "layer": MOVED,
            "tensor": "outputs_grad",
            "threshold crossed": FALLBACK,
            "value": 0.42,
        }
    ]
    assert any("1 of 3 float8 layers ended in bf16" in c.value for c in at.caption)
    assert not [b for b in at.button if b.key == f"fallback_twin_{cid}"]
    # The twin's own page has no fallback section.
    assert not any("What fallback bought" in m.value for m in results(twin).markdown)


def test_results_button_trains_the_twin_when_there_is_none(page_home):
    store = page_home["store"]
    cid, _ = add_comparison(store, (0.80, 0.81), FALLBACK, [EVENT], seed=7)
    at = results(cid)
    assert any(
        "No comparison of the same settings and seed without fallback" in c.value
        for c in at.caption
    )
    at.button(f"fallback_twin_{cid}").click().run()
    assert not at.exception
    queued = max(store.comparisons(), key=lambda c: c["id"])
    assert queued["id"] != cid and page_home["started"]  # queued, a worker asked for
    assert queued["label"] == f"#{cid} without fallback"
    assert queued["config"].fallback == "" and queued["config"].seed == 7
    assert records.fallback_twin(store.comparisons(), store.comparison(cid))["id"] == queued["id"]
    store.cancel_comparison(queued["id"])
    # Once queued, the page pairs with it and waits for its result.
    at = results(cid)
    assert any(
        f"fp8: compared with comparison #{queued['id']}, same seed once both fp8 runs have "
        "finished." == m.value
        for m in at.markdown
    )
