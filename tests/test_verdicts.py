"""Verdicts with confidence: the statistics, their reading of a store, `show` and Results."""

import json
import math
import os
import subprocess
import sys

import pytest
import streamlit as st
from conftest import ROOT
from streamlit.proto.Metric_pb2 import Metric as MetricProto
from streamlit.testing.v1 import AppTest

from fp8demo import records, report, sweep, verdicts
from fp8demo.config import preset
from fp8demo.store import Store
from fp8demo.verdicts import half_width, paired_verdict, t_quantile

# -- Student's t --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "p, df, expected",
    [
        (0.975, 1, 12.706),
        (0.975, 2, 4.303),
        (0.975, 4, 2.776),
        (0.975, 10, 2.228),
        (0.975, 30, 2.042),
        (0.95, 5, 2.015),
        (0.995, 3, 5.841),
        (0.975, 1e7, 1.960),
    ],
)
def test_t_quantile_matches_the_tables(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=1e-3)


def test_incomplete_beta_and_the_tail():
    assert verdicts.incomplete_beta(1, 1, 0.3) == pytest.approx(0.3)
    assert verdicts.incomplete_beta(2, 3, 0.0) == 0.0 and verdicts.incomplete_beta(2, 3, 1) == 1
    # df = 1 is Cauchy: P(|T| > 1) = 1/2.
    assert verdicts.t_tail(1.0, 1) == pytest.approx(0.5)
    assert verdicts.t_tail(0.0, 7) == pytest.approx(1.0)


def test_t_quantile_refuses_what_it_cannot_answer():
    for p, df in ((0.4, 3), (1.0, 3), (0.975, 0)):
        with pytest.raises(ValueError):
            t_quantile(p, df)


# -- intervals and verdicts on fixed data --------------------------------------------------


def test_interval_on_fixed_data():
    v = paired_verdict([0.1, 0.2, 0.3])
    half = 4.303 * 0.1 / math.sqrt(3)  # t(0.975, 2) · s / √n
    assert v["difference"] == pytest.approx(0.2)
    assert v["ci_low"] == pytest.approx(0.2 - half, abs=1e-4)
    assert v["ci_high"] == pytest.approx(0.2 + half, abs=1e-4)
    assert v["seeds"] == 3 and v["tolerance"] == 0.5
    assert v["verdict"] == "equivalent" and "more_seeds" not in v


@pytest.mark.parametrize(
    "differences, tolerance, verdict",
    [
        ([0.1, 0.2, 0.3], 0.5, "equivalent"),  # [-0.05, 0.45] inside ±0.5
        ([0.1, 0.2, 0.3], 0.3, "inconclusive"),  # reaches past +0.3 and holds 0
        ([2.0, 2.2, 1.8, 2.1], 0.5, "better"),  # all above 0, beyond the tolerance
        ([0.3, 0.35, 0.4, 0.32], 0.2, "better"),  # above 0, not within ±0.2
        ([-2.0, -2.2, -1.8, -2.1], 0.5, "worse"),
        ([-1.0, 1.5, 0.3], 0.5, "inconclusive"),
        ([0.4], 0.5, "inconclusive"),  # one seed: never a verdict
        ([0.0, 0.0], 0.0, "equivalent"),  # no spread, exactly on the margin
    ],
)
def test_every_verdict(differences, tolerance, verdict):
    assert paired_verdict(differences, tolerance)["verdict"] == verdict


def test_inconclusive_says_how_many_more_seeds_the_spread_needs():
    differences = [-1.0, 1.5, 0.3]
    v = paired_verdict(differences)
    mean = sum(differences) / 3
    std = math.sqrt(sum((d - mean) ** 2 for d in differences) / 2)
    target = max(0.5 - abs(mean), abs(mean))  # the easier of equivalent and better
    total = 3 + v["more_seeds"]
    assert half_width(std, total) < target <= half_width(std, total - 1)
    assert "run" in verdicts.verdict_words(v) and str(v["more_seeds"]) in verdicts.verdict_words(v)


def test_one_seed_has_no_interval_and_estimates_from_the_assumed_spread():
    v = paired_verdict([-0.15])
    assert v["ci_low"] is None and v["ci_high"] is None and v["seeds"] == 1
    assert v["verdict"] == "inconclusive"
    total = 1 + v["more_seeds"]
    target = max(0.5 - 0.15, 0.15)
    assert half_width(verdicts.ASSUMED_STD_POINTS, total) < target
    assert half_width(verdicts.ASSUMED_STD_POINTS, total - 1) >= target
    line = verdicts.verdict_line(v)
    assert line.startswith("fp8 − bf16 -0.15 points, no interval over 1 seed (tolerance ±0.5)")
    assert line.endswith(f"inconclusive — run {v['more_seeds']} more seeds")


def test_no_seed_no_verdict_and_a_negative_tolerance_is_refused():
    assert paired_verdict([]) is None
    with pytest.raises(ValueError):
        paired_verdict([0.1, 0.2], tolerance=-0.5)


def test_an_unreachable_verdict_says_so():
    # A mean of exactly zero and no tolerance: no half-width is below zero.
    v = paired_verdict([-1.0, 1.0], tolerance=0.0)
    assert v["verdict"] == "inconclusive" and v["more_seeds"] is None
    assert "more than" in verdicts.verdict_words(v)


def test_sweep_objective_is_the_worse_end_of_a_one_seed_interval():
    value = sweep.objective_value("fp8_equivalent", {"bf16": 0.80, "fp8": 0.81})
    assert value == pytest.approx(0.01 - 1.96 * verdicts.ASSUMED_STD_POINTS / 100)
    assert "fp8_equivalent" in sweep.OBJECTIVES


# -- a store with comparisons of the same settings -------------------------------------------


def add_comparison(store, accuracies, label="", **settings):
    """A finished bf16 + fp8 comparison with these test accuracies (no training)."""
    cid, run_ids = store.create_comparison(preset("Quick demo", **settings), label=label)
    for run_id, accuracy in zip(run_ids, accuracies):
        if accuracy is None:
            store.end_run(run_id, "failed", error="Out of memory.")
        else:
            store.end_run(run_id, "finished", test_accuracy=accuracy, test_loss=0.5)
    return cid, run_ids


@pytest.fixture
def repeated(tmp_path) -> dict:
    """Seeds 42–44 of one setting, a fourth seed launched on its own, a repeat of seed 42
    (ignored), a failed seed, and a comparison of other settings."""
    store = Store(tmp_path / "home")
    ids = [add_comparison(store, (0.80, 0.79), seed=42)]
    ids.append(add_comparison(store, (0.81, 0.80), seed=43))
    ids.append(add_comparison(store, (0.79, 0.785), seed=44))
    ids.append(add_comparison(store, (0.80, 0.81), seed=45, side_by_side="off"))
    add_comparison(store, (0.80, 0.50), seed=42)  # a second seed 42: no new evidence
    add_comparison(store, (0.80, None), seed=46)  # its fp8 run failed
    add_comparison(store, (0.70, 0.40), seed=42, hidden_dim=64)  # other settings
    return dict(store=store, ids=ids)


def test_verdict_reads_every_comparison_of_the_same_settings(repeated):
    store, ids = repeated["store"], repeated["ids"]
    comparison = store.comparison(ids[1][0])
    verdict = report.comparison_verdict(store.comparisons(), comparison, "fp8")
    expected = paired_verdict([-1.0, -1.0, -0.5, 1.0])
    assert verdict["seeds"] == 4
    for key in ("difference", "ci_low", "ci_high"):
        assert verdict[key] == pytest.approx(expected[key])
    assert report.comparison_verdict(store.comparisons(), comparison, "bf16") is None
    assert report.next_seed(store.comparisons(), comparison) == 47


def test_run_record_has_the_paired_verdict_of_fp8_runs_only(repeated):
    store, ids = repeated["store"], repeated["ids"]
    bf16, fp8 = ids[0][1]
    record = records.run_record(store, store.run(fp8), tolerance=3.0)
    assert set(record["paired_verdict"]) == {
        "difference",
        "ci_low",
        "ci_high",
        "seeds",
        "tolerance",
        "verdict",
    }
    assert record["paired_verdict"]["verdict"] == "equivalent"
    assert record["paired_verdict"]["tolerance"] == 3.0
    assert records.run_record(store, store.run(bf16))["paired_verdict"] is None


def test_show_prints_the_verdict(repeated, tmp_path):
    store, ids = repeated["store"], repeated["ids"]
    fp8 = str(ids[0][1][1])
    env = {**os.environ, "FP8DEMO_HOME": str(store.home)}
    env.pop("FP8DEMO_STORE", None)

    def show(*args):
        done = subprocess.run(
            [sys.executable, "-m", "fp8demo", "show", fp8, *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    verdict = json.loads(show("--json"))["paired_verdict"]
    assert verdict["seeds"] == 4 and verdict["tolerance"] == 0.5
    assert verdict["verdict"] == "inconclusive" and verdict["more_seeds"] >= 1
    assert verdict["difference"] == pytest.approx(-0.375)
    text = show("--tolerance", "3")
    assert "verdict: fp8 − bf16 -0.3" in text and " points, 95 % interval [" in text
    assert "over 4 seeds (tolerance ±3): equivalent" in text


# -- Results --------------------------------------------------------------------------------


@pytest.fixture
def results_home(tmp_path, monkeypatch):
    """A temp FP8DEMO_HOME for the page, no password, no supervisor started, clean caches."""
    from fp8demo import launcher

    home = tmp_path / "home"
    monkeypatch.setenv("FP8DEMO_HOME", str(home))
    monkeypatch.delenv("FP8DEMO_STORE", raising=False)
    monkeypatch.delenv("FP8DEMO_PASSWORD", raising=False)
    monkeypatch.setattr(launcher, "ensure_supervisor", lambda store, **_: None)
    st.cache_resource.clear()
    st.cache_data.clear()
    yield home
    st.cache_resource.clear()
    st.cache_data.clear()


def results_page(comparison_id) -> AppTest:
    at = AppTest.from_file(os.path.join(ROOT, "pages/results.py"), default_timeout=60).run()
    at.selectbox("result").set_value(comparison_id).run()
    assert not at.exception
    return at


def test_results_one_seed_is_inconclusive_grey_and_repeats(results_home, monkeypatch):
    from fp8demo import launcher

    cid, _ = add_comparison(Store(results_home), (0.80, 0.7985), label="one seed")
    launched = []
    monkeypatch.setattr(
        launcher,
        "launch_repeats",
        lambda config, repeats, store, label="": launched.append((config.seed, repeats)) or [9],
    )
    at = results_page(cid)
    metric = next(m for m in at.metric if m.label == "fp8 test accuracy")
    assert metric.delta == "-0.15 pp vs bf16"
    assert metric.proto.color == MetricProto.MetricColor.GRAY  # not red
    assert metric.proto.direction == MetricProto.MetricDirection.NONE  # no arrow
    assert metric.proto.delta_description.startswith("inconclusive — run ")
    lines = [m.value for m in at.markdown if "fp8 − bf16" in m.value]
    assert any("no interval over 1 seed" in line and "inconclusive" in line for line in lines)
    more = paired_verdict([-0.15])["more_seeds"]
    assert at.number_input(f"more_seeds_{cid}").value == more
    at.button(f"repeat_seeds_{cid}").click().run()
    assert not at.exception
    assert launched == [(43, more)]  # the seeds after 42


def test_results_colour_a_decided_verdict(results_home):
    store = Store(results_home)
    cids = [add_comparison(store, (0.80, 0.78 + 0.001 * k), seed=42 + k)[0] for k in range(4)]
    at = results_page(cids[0])
    metric = next(m for m in at.metric if m.label == "fp8 test accuracy")
    assert metric.proto.color == MetricProto.MetricColor.RED
    assert metric.proto.delta_description == "worse"
    assert any("over 4 seeds" in m.value and "worse" in m.value for m in at.markdown)
