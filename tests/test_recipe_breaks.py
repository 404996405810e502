"""benchmarks/recipe_breaks.py: the preset it runs, its statistics, and one real tiny run."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import recipe_breaks  # noqa: E402

from fp8demo import fp8  # noqa: E402
from fp8demo.config import PRESET_NOTES, preset  # noqa: E402


def test_the_preset_trains_bf16_delayed_fp8_and_two_recipes():
    config = preset(recipe_breaks.PRESET).validate()
    assert config.precisions == ("bf16", "fp8", "fp8-current", "mxfp8")
    assert recipe_breaks.PRESET in PRESET_NOTES


def test_paired_differences_judge_the_mean_against_two_standard_deviations():
    accuracy = {
        "bf16": {1: 0.80, 2: 0.82, 3: 0.81},
        "fp8": {1: 0.70, 2: 0.71, 3: 0.69},  # −10, −11, −12 points: consistent
        "mxfp8": {1: 0.82, 2: 0.80, 3: 0.81, 4: 0.5},  # seed 4 has no bf16 run: left out
    }
    paired = recipe_breaks.paired_differences(accuracy)
    assert paired["fp8"]["n"] == 3
    assert paired["fp8"]["mean"] == pytest.approx(-0.11)
    assert paired["fp8"]["std"] == pytest.approx(0.01)
    assert paired["fp8"]["beyond"]
    assert paired["mxfp8"]["n"] == 3
    assert paired["mxfp8"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert not paired["mxfp8"]["beyond"]
    # One seed has no spread to judge by.
    assert not recipe_breaks.paired_differences({"bf16": {1: 0.8}, "fp8": {1: 0.5}})["fp8"][
        "beyond"
    ]


def test_accuracy_falls_where_it_stays_below_the_margin_for_two_points():
    bf16 = [(0, 0.50), (25, 0.66), (50, 0.52), (75, 0.70), (100, 0.78), (125, 0.80)]
    fp8 = [(0, 0.50), (25, 0.50), (50, 0.50), (75, 0.55), (100, 0.50), (125, 0.50)]
    # Step 25 alone is a run learning later; from step 75 on it stays behind.
    assert recipe_breaks.first_fall(fp8, bf16, margin=0.10) == 75
    assert recipe_breaks.first_fall(fp8, bf16, margin=0.10, lasting=1) == 25
    assert recipe_breaks.first_fall(fp8, bf16, margin=0.25) == 100
    assert recipe_breaks.first_fall(fp8, bf16[:3], margin=0.10) is None


def test_a_flag_counts_from_step_two_on():
    timeline = [(0, {"q · outputs_grad": "underflow 100 %"}), (25, {}), (50, {"k · inputs": "x"})]
    assert recipe_breaks.first_flag(timeline) == (50, {"k · inputs": "x"})
    assert recipe_breaks.first_flag(timeline[:2]) == (None, {})


@pytest.mark.e2e  # trains three precisions through the benchmark's engine
def test_a_tiny_experiment_trains_reports_resumes_and_shows(
    tmp_path, monkeypatch, imdb_folder, capsys
):
    """One seed of bf16, fp8 and fp8-current on a tiny subset, through the engine; then Live
    and FP8 health offer both float8 runs and say what the recipe run's numbers are."""
    home = tmp_path / "home"
    monkeypatch.setenv("FP8DEMO_HOME", str(home))
    monkeypatch.setenv("FP8DEMO_IMDB", str(imdb_folder))
    flags = [
        "--home",
        str(home),
        "--seeds",
        "1",
        "--seed",
        "42",
        "--subset",
        "128",
        "--seq-len",
        "32",
        "--vocab-size",
        "500",
        "--vocab-method",
        "fast",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--probe-every",
        "4",
        "--precision",
        "fp8,fp8-current",  # bf16 is added: every difference is to bf16
        "--json",
        str(tmp_path / "out.json"),
    ]
    recipe_breaks.main(flags)
    printed = capsys.readouterr().out
    assert "| bf16 | 1 |" in printed and "| fp8-current | 1 |" in printed
    result = json.loads((tmp_path / "out.json").read_text())
    assert set(result["accuracy"]) == {"bf16", "fp8", "fp8-current"}
    timing = result["timing"]["fp8-current seed 42"]
    assert timing["probes"] == 128 // 16 // 4 + 1  # before the first step, then every 4
    from fp8demo.store import Store

    store = Store(home)
    runs = store.runs()
    assert [r["precision"] for r in runs] == ["bf16", "fp8", "fp8-current"]
    points = runs[2]["summary"]["validation_points"]
    assert [step for step, _ in points] == [0, 4, 8]
    assert all(0 <= accuracy <= 1 for _, accuracy in points)
    # A recipe run is flagged by its own recipe's statistics, not by the delayed scales it
    # never applied: the same tensors as the what-if column of "current" says.
    steps, names, stats = store.fp8_recipes(runs[2]["id"])
    timeline = recipe_breaks.probe_flags(store, store.run(runs[2]["id"]))
    current = stats[:, :, :, names.index("current")]  # underflow %, saturation %, SNR
    saturated = current[..., 1] >= fp8.SATURATION_AT_RISK
    flushed = current[..., 0] >= fp8.UNDERFLOW_AT_RISK
    expected = [int((saturated[p] | flushed[p]).sum()) for p in range(len(steps))]
    assert [len(flagged) for _, flagged in timeline] == expected
    # Run again: both runs are in the store, so nothing trains and the tables are the same.
    recipe_breaks.main(flags)
    assert len(store.runs()) == 3
    assert json.loads((tmp_path / "out.json").read_text())["accuracy"] == result["accuracy"]

    from streamlit.testing.v1 import AppTest

    pages = Path(__file__).resolve().parent.parent / "pages"
    for name, key in (("live.py", "live_float8_run"), ("health.py", "health_run")):
        at = AppTest.from_file(str(pages / name), default_timeout=120).run()
        assert not at.exception
        assert at.radio(key=key).options == ["fp8", "fp8-current"]
        assert at.radio(key=key).value == "fp8"  # Keras' own recipe first
        assert not any("fp8-current" in i.value for i in at.info)
        at.radio(key=key).set_value("fp8-current").run()
        assert not at.exception
        said = " ".join(e.value for e in [*at.info, *at.caption])
        assert "`current` recipe" in said
        assert "delayed scaling would have" in said.replace("*", "")
    # FP8 health of the recipe run: its own recipe is the column it trained with.
    assert any("current: what this run applied" in c.value for c in at.caption)
