"""Verdicts where fp8 meets bf16 beyond Results' own panel: each Sweep trial's verdict over the
seeds its settings have (page and `sweeps --json`), and a comparison a user's own script
recorded (FP8Monitor), whose repeats the engine cannot run.

The sweeps are real (Optuna studies asked and told by fp8demo.sweep); their runs' results are
written through the Store methods a training process uses instead of training.
"""

import dataclasses
import os

import pytest
import streamlit as st
from conftest import ROOT
from streamlit.testing.v1 import AppTest

from fp8demo import cli, launcher, report, sweep, verdicts
from fp8demo.config import TrainConfig, preset
from fp8demo.store import Store


@pytest.fixture
def page_home(tmp_path, monkeypatch):
    """A temp FP8DEMO_HOME, no password, clean caches; no worker or supervisor process starts
    (one would try to train the queued trials)."""
    home = tmp_path / "home"
    monkeypatch.setenv("FP8DEMO_HOME", str(home))
    for name in ("FP8DEMO_STORE", "FP8DEMO_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(launcher, "ensure_supervisor", lambda store, **_: None)
    monkeypatch.setattr(launcher, "ensure_worker", lambda store, **_: [])
    st.cache_resource.clear()
    st.cache_data.clear()
    yield Store(home)
    st.cache_resource.clear()
    st.cache_data.clear()


def finish(store, run_id, accuracy):
    """A run's end as training writes it: a validation epoch, then the test result."""
    store.add_epoch(run_id, 0, 20, 0.5, accuracy, 0.5, accuracy)
    store.end_run(run_id, "finished", test_accuracy=accuracy, test_loss=0.5, step=20)


def finished_sweep(store, accuracies: dict) -> int:
    """A grid sweep over heads whose trials finish with these {heads: (bf16, fp8)} accuracies,
    asked and told one at a time as the supervisor would."""
    request = sweep.SweepRequest(
        base=preset("Quick demo"),
        space={"heads": ",".join(map(str, accuracies))},
        trials=len(accuracies),
        objective="fp8_minus_bf16",
        sampler="grid",
        prune=False,
    )
    sweep_id = sweep.create_sweep(store, request)
    for _ in accuracies:
        for comparison in store.sweep_comparisons(sweep_id).values():
            pair = accuracies[comparison["config"].heads]
            for run, accuracy in zip(comparison["runs"], pair):
                if run["status"] == "queued":
                    finish(store, run["id"], accuracy)
        sweep.advance(store, sweep_id)
    assert store.sweep(sweep_id)["state"] == "complete"
    return sweep_id


def sweep_page() -> AppTest:
    """The Sweep page through app.py's navigation, which its links to trial pages need."""
    at = AppTest.from_file(os.path.join(ROOT, "app.py"), default_timeout=60)
    at.switch_page("pages/sweep.py")
    at.run()
    assert not at.exception
    return at


def trials_frame(at):
    return next(df.value for df in at.dataframe if "verdict (test, over seeds)" in df.value)


def test_each_trial_is_one_seed_inconclusive_until_its_settings_are_repeated(page_home, capsys):
    store = page_home
    sweep_id = finished_sweep(store, {1: (0.80, 0.79), 2: (0.80, 0.802)})
    one_seed = {h: verdicts.paired_verdict([d]) for h, d in ((1, -1.0), (2, 0.2))}
    at = sweep_page()
    frame = trials_frame(at)
    words = dict(zip(frame["heads"], frame["verdict (test, over seeds)"]))
    assert words == {h: verdicts.verdict_words(v) for h, v in one_seed.items()}
    assert words[2].startswith("inconclusive — run ")  # one seed: never better or worse
    best = one_seed[2]
    line = next(m.value for m in at.markdown if "Its verdict on the test split" in m.value)
    assert line.endswith(
        f"fp8 − bf16 +0.20 points, no interval over 1 seed (tolerance ±0.5): "
        f"inconclusive — run {best['more_seeds']} more seeds"
    )
    assert any(
        c.value.startswith(f"A decision needs about {best['more_seeds']} more seeds of these")
        for c in at.caption
    )
    record = run_and_read(capsys, "sweeps", str(sweep_id), "--json")
    by_heads = {t["params"]["heads"]: t["verdict"] for t in record["trials"]}
    assert by_heads[2]["verdict"] == "inconclusive" and by_heads[2]["seeds"] == 1
    assert by_heads[2]["difference"] == pytest.approx(0.2)
    assert by_heads[1]["more_seeds"] == one_seed[1]["more_seeds"]

    # Three more seeds of the best trial's settings (Results' "Repeat over more seeds"):
    # its verdict is now read over four.
    best_config = next(
        c["config"] for c in store.sweep_comparisons(sweep_id).values() if c["config"].heads == 2
    )
    for seed, fp8 in ((43, 0.801), (44, 0.802), (45, 0.801)):
        _, (bf16_run, fp8_run) = store.create_comparison(
            dataclasses.replace(best_config, seed=seed)
        )
        finish(store, bf16_run, 0.80)
        finish(store, fp8_run, fp8)
    at = sweep_page()
    words = dict(zip(trials_frame(at)["heads"], trials_frame(at)["verdict (test, over seeds)"]))
    assert words[2] == "equivalent" and words[1].startswith("inconclusive")
    line = next(m.value for m in at.markdown if "Its verdict on the test split" in m.value)
    assert "over 4 seeds (tolerance ±0.5): equivalent" in line
    assert not any(c.value.startswith("A decision needs") for c in at.caption)
    record = run_and_read(capsys, "sweeps", str(sweep_id), "--json")
    assert {t["params"]["heads"]: t["verdict"]["seeds"] for t in record["trials"]} == {1: 1, 2: 4}


def run_and_read(capsys, *args) -> dict:
    import json

    assert cli.main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


# -- a comparison a user's script recorded ------------------------------------------------------


def monitor_comparison(store, accuracies: dict, label="my-experiment", seed=None) -> int:
    """bf16 and fp8 runs as FP8Monitor(seed=seed) records them (Store.start_own_run, source
    "monitor"), finished with these test accuracies."""
    for precision, accuracy in accuracies.items():
        seeded = {} if seed is None else {"seed": seed}
        config = TrainConfig(**seeded, epochs=1, precisions=(precision,), probe_every=0, ptq=False)
        summary = {"source": "monitor", "name": f"train.py {precision}", "script": "train.py"}
        summary["seed_unknown"] = seed is None
        cid, run_id = store.start_own_run(label, precision, config, summary)
        store.end_run(run_id, "finished", test_accuracy=accuracy, test_loss=0.5)
    return cid


def results_page(cid) -> AppTest:
    at = AppTest.from_file(os.path.join(ROOT, "pages/results.py"), default_timeout=60).run()
    at.selectbox("result").set_value(cid).run()
    assert not at.exception
    return at


def test_results_of_a_monitored_script_leave_repeats_to_the_user(page_home):
    store = page_home
    cid = monitor_comparison(store, {"bf16": 0.80, "fp8": 0.795})
    assert report.recorded_by_monitor(store.comparison(cid))
    at = results_page(cid)
    metric = next(m for m in at.metric if m.label == "fp8 test accuracy")
    verdict = verdicts.paired_verdict([-0.5])
    assert metric.proto.delta_description == verdicts.verdict_words(verdict)
    assert any(
        m.value.endswith(
            f"fp8 − bf16 -0.50 points, no interval over 1 seed (tolerance ±0.5): "
            f"inconclusive — run {verdict['more_seeds']} more seeds"
        )
        for m in at.markdown
    )
    keys = [w.key for w in at.button] + [w.key for w in at.number_input]
    assert f"repeat_seeds_{cid}" not in keys and f"more_seeds_{cid}" not in keys
    assert not any(b.label in ("Repeat over more seeds",) for b in at.button)
    captions = [c.value for c in at.caption]
    assert captions.count(pages_results_caption()) == 1

    # An engine comparison of the same store keeps its button.
    engine_cid, runs = store.create_comparison(preset("Quick demo"))
    for run_id, accuracy in zip(runs, (0.80, 0.79)):
        store.end_run(run_id, "finished", test_accuracy=accuracy, test_loss=0.5)
    at = results_page(engine_cid)
    assert f"repeat_seeds_{engine_cid}" in [b.key for b in at.button]
    assert pages_results_caption() not in [c.value for c in at.caption]


def pages_results_caption() -> str:
    return (
        "Recorded by your own script (FP8Monitor): the dashboard cannot train your model "
        "again, so it offers no repeats over seeds. This verdict pools your script's "
        "comparisons with this label, one seed each: pass FP8Monitor(seed=...) so that a seed "
        "run twice counts once."
    )


def test_a_scripts_comparisons_pool_by_label_and_by_the_seed_it_says(tmp_path):
    store = Store(tmp_path / "home")
    first = monitor_comparison(store, {"bf16": 0.80, "fp8": 0.79}, "a", seed=1)
    monitor_comparison(store, {"bf16": 0.81, "fp8": 0.80}, "a", seed=2)
    monitor_comparison(store, {"bf16": 0.80, "fp8": 0.70}, "a", seed=2)  # seed 2 again: no news
    monitor_comparison(store, {"bf16": 0.80, "fp8": 0.81}, "a")  # no seed said: one of its own
    monitor_comparison(store, {"bf16": 0.70, "fp8": 0.40}, "b", seed=1)  # another experiment
    comparisons = store.comparisons()
    verdict = report.comparison_verdict(comparisons, store.comparison(first), "fp8")
    expected = verdicts.paired_verdict([-1.0, -1.0, 1.0])
    assert verdict["seeds"] == 3
    assert verdict["difference"] == pytest.approx(expected["difference"])
    other = next(c for c in comparisons if c["label"] == "b")
    assert report.comparison_verdict(comparisons, other, "fp8")["seeds"] == 1
