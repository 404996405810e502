"""Underflow bands, the worst tensors and the suggested policy (prescription.py): the rule on
hand-made probe rows, the heatmap that draws it, and `health RUN --suggest` end to end."""

import json
import os

import numpy as np
import pytest
from conftest import ROOT, all_runs_ended, copy_home, wait_for
from test_cli import cli

from fp8demo import fp8_charts, prescription
from fp8demo.config import MODEL_LAYERS, ConfigError, TrainConfig

LAYERS = list(MODEL_LAYERS[:3])  # query, key, value
QUERY, KEY, VALUE = LAYERS
STEPS = [0, 10, 20, 30, 40]


def probes(underflow: dict, default=0.001) -> np.ndarray:
    """Probe stats [probes, layers, roles, (saturation, underflow)] as the store holds them
    (fractions), every tensor at `default`; underflow {(layer, role index): per-probe %}."""
    stats = np.zeros((len(STEPS), len(LAYERS), 3, 2))
    stats[..., 1] = default
    for (i, j), percents in underflow.items():
        stats[:, i, j, 1] = np.asarray(percents, np.float64) / 100
    return stats


def row(layer, role, dead=None) -> dict:
    return {"layer": layer, "role": role, "dead since": dead}


# -- bands -----------------------------------------------------------------------------------


def test_bands_put_a_value_on_an_edge_in_the_band_above_and_nan_in_excellent():
    values = [0.0, 0.49, 0.5, 1.99, 2.0, 4.0, 4.01, 80, np.nan]
    assert prescription.band_index(values).tolist() == [0, 0, 1, 1, 2, 3, 3, 3, 0]
    assert prescription.band_index([0.2, 1.5], (0.1, 1, 2)).tolist() == [1, 2]
    assert prescription.band_words() == (
        "excellent < 0.5 %, warning 0.5–2 %, critical 2–4 %, severe > 4 %"
    )


@pytest.mark.parametrize("text", ["0.5,2", "2,0.5,4", "a,b,c", "0,1,2", "1,2,200"])
def test_bad_band_edges_get_one_line(text):
    with pytest.raises(ConfigError, match="Bands are three increasing percentages"):
        prescription.parse_bands(text)


def test_parsed_band_edges():
    assert prescription.parse_bands("0.1, 1,3") == (0.1, 1.0, 3.0)


# -- the rule --------------------------------------------------------------------------------


def test_a_layer_severe_at_each_of_its_last_three_probes_is_suggested():
    stats = probes({(1, 2): [50, 0.1, 6, 9, 12]})  # key's output gradient
    (suggestion,) = prescription.suggest(LAYERS, STEPS, stats, [])
    assert suggestion["layer"] == KEY
    assert suggestion["reasons"] == [
        "its output gradient loses 6 % or more of its values to underflow at its last 3 "
        "probes (severe: above 4 %)"
    ]


def test_one_severe_probe_of_the_last_three_or_the_scale_one_start_is_not_enough():
    once = probes({(0, 2): [0, 0, 1, 9, 1]})
    start = probes({(0, 2): [90, 0, 0, 0, 0]})  # step 0: delayed scaling's scale 1.0
    critical = probes({(0, 0): [3.9, 3.9, 3.9, 3.9, 3.9]})
    for stats in (once, start, critical):
        assert prescription.suggest(LAYERS, STEPS, stats, []) == []
    # Other bands: the same critical tensor is severe above 3 %.
    assert prescription.suggest(LAYERS, STEPS, critical, [], bands=(1, 2, 3))[0]["layer"] == QUERY


def test_a_dead_tensor_moves_its_layer_and_the_suggestion_keeps_model_order():
    stats = probes({(2, 1): [9, 9, 9, 9, 9]})  # value's kernel, severe throughout
    rows = [row(QUERY, "outputs_grad", dead=20), row(KEY, "inputs")]
    suggestions = prescription.suggest(LAYERS, STEPS, stats, rows)
    assert [s["layer"] for s in suggestions] == [QUERY, VALUE]
    assert suggestions[0]["reasons"] == ["its output gradient is all zero since step 20 (dead)"]
    words = prescription.suggestion_words(suggestions)
    assert words[0] == (
        f"Keep `{QUERY}` in bf16: its output gradient is all zero since step 20 (dead)."
    )


def test_without_a_suggestion_it_says_so_plainly():
    (sentence,) = prescription.suggestion_words(prescription.suggest(LAYERS, STEPS, probes({}), []))
    assert sentence.startswith("No layer needs to stay in bf16")


def test_the_worst_tensors_are_the_dead_then_the_most_underflow_at_the_latest_probe():
    stats = probes({(0, 0): [0, 0, 0, 0, 3], (1, 2): [0, 0, 0, 0, 7]}, default=0.0)
    stats[-1, 2, 1, 1] = 0.0002  # value's kernel: 0.02 %
    worst = prescription.worst_tensors(LAYERS, STEPS, stats, [row(VALUE, "inputs", dead=10)])
    assert worst == [(VALUE, "inputs"), (KEY, "outputs_grad"), (QUERY, "inputs"), (VALUE, "kernel")]
    assert prescription.worst_tensors(LAYERS, STEPS, np.zeros_like(stats), []) == []
    many = probes({}, default=0.01)
    assert len(prescription.worst_tensors(LAYERS, STEPS, many, [])) == prescription.WORST


def test_the_heatmap_colours_bands_greys_all_zero_and_boxes_the_worst():
    stats = probes({(1, 2): [0.1, 1, 3, 5, np.nan]})
    worst = [(KEY, "outputs_grad"), (QUERY, "inputs")]
    fig = fp8_charts.underflow_bands_heatmap(STEPS, stats, LAYERS, worst=worst)
    (heatmap,) = fig.data
    key_gradient = 1 * 3 + 2  # rows: layer-major, then role
    assert np.asarray(heatmap.z)[key_gradient].tolist() == [0, 1, 2, 3, 4]  # 4: all zero
    assert heatmap.customdata[key_gradient][-1] == fp8_charts.ALL_ZERO
    boxes = [(s.y0 + 0.5, s.y1 - 0.5) for s in fig.layout.shapes]
    assert boxes == [(key_gradient, key_gradient), (0, 0)]
    assert [a.text for a in fig.layout.annotations] == ["#1", "#2"]
    ticks = list(heatmap.colorbar.ticktext)
    assert ticks[0] == "excellent < 0.5 %" and ticks[3] == "severe > 4 %"


# -- the comparison it launches --------------------------------------------------------------


def test_the_suggested_configs_keep_the_runs_settings_and_add_its_bf16_layers():
    config = TrainConfig(lr=3e-3, bf16_layers=("dense",), precisions=("bf16", "fp8-current"))
    baseline, policy = prescription.suggested_configs(config, "fp8-current", [KEY])
    assert baseline.precisions == ("bf16", "fp8-current") and baseline.bf16_layers == ("dense",)
    assert policy.precisions == ("fp8-current",) and policy.bf16_layers == (KEY, "dense")
    assert policy.lr == baseline.lr == 3e-3
    with pytest.raises(ConfigError, match="keeps every float8 layer in bf16"):
        prescription.suggested_configs(config, "fp8", MODEL_LAYERS)


@pytest.mark.e2e  # the CLI, and the workers its launch starts
def test_health_suggest_queues_bf16_fp8_and_fp8_with_the_layers_in_bf16(
    trained, tmp_path, imdb_folder
):
    """`health RUN --suggest` on a copy of a finished tiny run: with bands low enough that its
    tensors are severe it names layers, queues the two comparisons under one label (JSON),
    and says so in words; with the default bands it may find none and then queues nothing."""
    from fp8demo.store import Store

    home = copy_home(trained["home"], tmp_path / "home")
    env = dict(os.environ, FP8DEMO_HOME=str(home), FP8DEMO_IMDB=str(imdb_folder))
    store = Store(home)
    fp8_run = store.run(trained["run_ids"]["fp8"])
    before = {c["id"] for c in store.comparisons()}
    done = cli(
        "health",
        str(fp8_run["id"]),
        "--suggest",
        "--bands",
        "1e-6,2e-6,3e-6",
        "--json",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    layers = [s["layer"] for s in record["suggested"]]
    assert layers and all(s["reasons"] for s in record["suggested"])
    assert record["bands"]["edges_pct"] == [1e-6, 2e-6, 3e-6]
    queued = [c for c in store.comparisons() if c["id"] not in before]
    try:
        assert sorted(c["id"] for c in queued) == sorted(record["comparisons"])
        assert {c["label"] for c in queued} == {f"suggested bf16 layers of run #{fp8_run['id']}"}
        baseline, policy = sorted(queued, key=lambda c: c["id"])
        assert [r["precision"] for r in baseline["runs"]] == ["bf16", "fp8"]
        assert [r["precision"] for r in policy["runs"]] == ["fp8"]
        assert policy["config"].bf16_layer_names() == tuple(n for n in MODEL_LAYERS if n in layers)
        assert set(baseline["config"].differences(fp8_run["config"])) <= {"data"}
    finally:
        for c in queued:
            for r in c["runs"]:
                store.request_cancel(r["id"])
        wait_for(lambda: all_runs_ended(store, [c["id"] for c in queued]), 120, "cancelled runs")
    # In words, with the default bands: the suggestion, or plainly none (and nothing queued).
    text = cli("health", str(fp8_run["id"]), "--suggest", env=env)
    assert text.returncode == 0, text.stderr
    assert "Underflow bands: excellent < 0.5 %" in text.stdout
    if "No layer needs to stay in bf16" in text.stdout:
        assert "Queued" not in text.stdout
    else:
        assert "Queued comparisons" in text.stdout
        for c in store.comparisons():
            for r in c["runs"]:
                if r["status"] in ("queued", "running"):
                    store.request_cancel(r["id"])


def test_the_health_page_draws_the_bands_and_its_button_queues_the_comparison(
    trained, tmp_path, monkeypatch
):
    """FP8 health of a copy of a finished tiny run: the bands heatmap, the suggestion in words
    and, with bands low enough for a suggestion, the button that queues the comparison."""
    from streamlit.testing.v1 import AppTest

    from fp8demo.store import Store

    home = copy_home(trained["home"], tmp_path / "home")
    monkeypatch.setenv("FP8DEMO_HOME", str(home))
    store = Store(home)
    run = store.run(trained["run_ids"]["fp8"])
    at = AppTest.from_file(os.path.join(ROOT, "pages/health.py"), default_timeout=60).run()
    assert not at.exception
    titles = [json.loads(el.proto.spec)["layout"]["title"]["text"] for el in at.get("plotly_chart")]
    assert any(t.startswith("Underflow bands of every float8 tensor") for t in titles)
    assert any("excellent < 0.5 %" in c.value for c in at.caption)
    at.text_input(key="health_bands").set_value("1e-6,2e-6,3e-6").run()
    assert not at.exception
    assert any(m.value.startswith("- Keep `") for m in at.markdown)
    at.button(key="health_suggest").click().run()
    assert not at.exception
    queued = [c for c in store.comparisons() if c["label"] == prescription.launch_label(run)]
    for c in queued:
        store.cancel_comparison(c["id"])
    assert sorted(len(c["runs"]) for c in queued) == [1, 2]
    assert any("Queued comparisons" in s.value for s in at.success)
    at.text_input(key="health_bands").set_value("4,2,1").run()
    assert any("Bands are three increasing percentages" in e.value for e in at.error)
