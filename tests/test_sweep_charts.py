"""fp8demo.sweep_charts: the paired figure, the fp8 − bf16 heatmap and Optuna's figures, from
trial rows shaped as fp8demo.sweep.trial_rows gives them (built here by hand)."""

import math

import numpy as np
import optuna
import pytest

from fp8demo import charts, sweep_charts


def trial(number, state, params, bf16, fp8, test=(None, None), reason=None) -> dict:
    """One trial row: both precisions' validation (and test) accuracy and their difference."""
    return {
        "number": number,
        "state": state,
        "params": params,
        "value": None,
        "comparison_id": 100 + number,
        "bf16_val_accuracy": bf16,
        "fp8_val_accuracy": fp8,
        "bf16_test_accuracy": test[0],
        "fp8_test_accuracy": test[1],
        "fp8_minus_bf16": None if bf16 is None or fp8 is None else fp8 - bf16,
        "reason": reason,
    }


ROWS = [
    trial(0, "complete", {"lr": 1e-4, "heads": 1}, 0.70, 0.69, test=(0.71, 0.70)),
    trial(1, "complete", {"lr": 1e-3, "heads": 2}, 0.80, 0.82),
    trial(2, "pruned", {"lr": 3e-2, "heads": 4}, 0.55, 0.50, reason="below the median"),
    trial(3, "failed", {"lr": 5e-2, "heads": 1}, None, None, reason="out of memory"),
    trial(4, "running", {"lr": 2e-3, "heads": 2}, 0.78, None),
    trial(5, "queued", {"lr": 4e-3, "heads": 4}, None, None),
]


def traces(fig, prefix):
    return {t.name: t for t in fig.data if (t.name or "").startswith(prefix)}


# -- the paired figure ---------------------------------------------------------------------


def test_paired_figure_pairs_each_trials_precisions_and_plots_their_difference_below():
    fig = sweep_charts.paired_figure(ROWS, "lr", log_x=True)
    bf16, fp8 = traces(fig, "bf16"), traces(fig, "fp8 ·")
    # One trace per precision and state, in the precision's colour.
    assert set(bf16) == {"bf16 · complete", "bf16 · pruned", "bf16 · running"}
    assert set(fp8) == {"fp8 · complete", "fp8 · pruned"}
    assert {t.marker.color for t in bf16.values()} == {charts.color("bf16")}
    assert {t.marker.color for t in fp8.values()} == {charts.color("fp8")}
    np.testing.assert_allclose(bf16["bf16 · complete"].x, [1e-4, 1e-3])
    np.testing.assert_allclose(fp8["fp8 · complete"].y, [0.69, 0.82])
    assert list(fp8["fp8 · complete"].customdata) == [0, 1]  # trial numbers, for hover/clicks
    # Pruned and failed trials look different from complete ones.
    assert bf16["bf16 · complete"].marker.symbol == "circle"
    assert bf16["bf16 · pruned"].marker.symbol != "circle"
    assert bf16["bf16 · running"].marker.symbol != "circle"
    # One thin line per trial with both accuracies, bf16 to fp8, broken by None.
    (pair,) = [t for t in fig.data if t.name == "pair"]
    assert list(pair.y) == [0.70, 0.69, None, 0.80, 0.82, None, 0.55, 0.50, None]
    assert pair.line.width == 1
    # The difference panel: fp8 − bf16 per trial on the second y axis, a zero line to read it.
    difference = traces(fig, "fp8 − bf16")
    complete = difference["fp8 − bf16 · complete"]
    assert complete.yaxis == "y2"
    np.testing.assert_allclose(complete.y, [-0.01, 0.02], atol=1e-12)
    assert set(difference) == {"fp8 − bf16 · complete", "fp8 − bf16 · pruned"}
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis2.type == "log"
    assert fig.layout.yaxis2.title.text == "fp8 − bf16"
    # Hover tells the trial, its state, the why of a pruned trial and the test accuracy.
    hover = " ".join(bf16["bf16 · pruned"].hovertext + bf16["bf16 · complete"].hovertext)
    assert "trial 2 (pruned)" in hover and "below the median" in hover and "71.00%" in hover


def test_paired_figure_over_choices_and_an_empty_sweep():
    fig = sweep_charts.paired_figure(ROWS, "heads")
    assert fig.layout.xaxis.type != "log"
    words = [trial(i, "complete", {"vocab_method": m}, 0.7, 0.7) for i, m in enumerate("ab")]
    assert sweep_charts.paired_figure(words, "vocab_method").layout.xaxis.type == "category"
    flags = [trial(0, "complete", {"quantize_head": True}, 0.7, 0.6)]
    fig = sweep_charts.paired_figure(flags, "quantize_head")
    assert list(traces(fig, "bf16")["bf16 · complete"].x) == ["true"]
    # No trial has the setting (or no trial yet): an empty figure, not an error.
    fig = sweep_charts.paired_figure([], "lr", log_x=True)
    assert not [t for t in fig.data if t.name != "pair"]


# -- the heatmap ---------------------------------------------------------------------------


def test_bins_of_keeps_few_values_and_bins_many_in_log_space():
    labels, index = sweep_charts.bins_of([4, 1, 2, 1])
    assert labels == ["1", "2", "4"] and index == [2, 0, 1, 0]
    labels, index = sweep_charts.bins_of(["fast", "keras", "fast"])
    assert labels == ["fast", "keras"] and index == [0, 1, 0]
    values = [1e-4, 1e-3, 1e-2, 1e-1, 3e-4, 3e-3, 3e-2]
    labels, index = sweep_charts.bins_of(values, log=True, bins=3)
    assert len(labels) == 3 and labels[0].startswith("0.0001") and labels[-1].endswith("0.1")
    assert index == [0, 1, 2, 2, 0, 1, 2]  # equal widths in log10: [-4, -3), [-3, -2), [-2, -1]
    _, linear = sweep_charts.bins_of(values, log=False, bins=3)
    assert linear.count(0) == 6  # linear bins put all but the largest into the first


def test_difference_heatmap_averages_complete_trials_on_a_centred_diverging_scale():
    rows = [
        trial(0, "complete", {"lr": 1e-3, "heads": 1}, 0.80, 0.70),
        trial(1, "complete", {"lr": 1e-3, "heads": 1}, 0.80, 0.76),
        trial(2, "complete", {"lr": 1e-2, "heads": 2}, 0.70, 0.72),
        trial(3, "pruned", {"lr": 1e-2, "heads": 1}, 0.50, 0.10),  # not a finished pair
        trial(4, "failed", {"lr": 1e-3, "heads": 2}, None, None),
    ]
    fig = sweep_charts.difference_heatmap(rows, "lr", "heads", x_log=True)
    (heat,) = fig.data
    assert heat.type == "heatmap"
    assert list(heat.x) == ["0.001", "0.01"] and list(heat.y) == ["1", "2"]
    z = np.asarray(heat.z, dtype=float)
    assert z[0, 0] == pytest.approx(-0.07)  # mean of -0.10 and -0.04
    assert z[1, 1] == pytest.approx(0.02)
    assert math.isnan(z[0, 1]) and math.isnan(z[1, 0])  # no complete trial there
    assert heat.zmid == 0 and heat.zmin == pytest.approx(-heat.zmax)
    assert heat.zmax == pytest.approx(0.07)
    assert heat.colorscale[0][1] != heat.colorscale[-1][1]  # diverging: two ends
    assert "n=2" in heat.text[0][0] and heat.text[0][1] == ""
    assert "3 complete trials" in fig.layout.title.text


def test_difference_heatmap_of_no_complete_trial_is_empty_not_an_error():
    fig = sweep_charts.difference_heatmap(ROWS[3:], "lr", "heads")
    assert np.asarray(fig.data[0].z).size == 0


# -- Optuna's figures ----------------------------------------------------------------------

LR = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
HEADS = optuna.distributions.CategoricalDistribution([1, 2, 4])


def study_with(values, space, states=None):
    """An in-memory study with one told trial per value (None: a pruned trial)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    for value in values:
        t = study.ask(space)
        if value is None:
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(t, value)
    return study


def test_optuna_figures_say_why_not_instead_of_drawing_nothing():
    empty = study_with([], {"lr": LR})
    for kind in sweep_charts.OPTUNA_FIGURES:
        fig, reason = sweep_charts.optuna_figure(empty, kind)
        assert fig is None and "complete trial" in reason, (kind, reason)
    only_pruned = study_with([None, None], {"lr": LR})
    fig, reason = sweep_charts.optuna_figure(only_pruned, "history")
    assert fig is None and "the sweep has 0 complete trials" in reason
    one_setting = study_with([0.7, 0.8, None], {"lr": LR})
    fig, reason = sweep_charts.optuna_figure(one_setting, "contour")
    assert fig is None and "two swept settings" in reason
    fig, reason = sweep_charts.optuna_figure(one_setting, "importances")
    assert fig is None and "two swept settings" in reason
    with pytest.raises(ValueError, match="Unknown figure"):
        sweep_charts.optuna_figure(one_setting, "pie")


def test_optuna_figures_are_drawn_once_a_study_can_have_them():
    study = study_with([0.70, 0.75, 0.72, None, 0.80], {"lr": LR, "heads": HEADS})
    title = sweep_charts.objective_title("fp8_minus_bf16")
    for kind in sweep_charts.OPTUNA_FIGURES:
        fig, reason = sweep_charts.optuna_figure(study, kind, title)
        assert reason == "" and fig is not None and fig.data, kind
        assert fig.layout.uirevision == f"optuna-{kind}"
    fig, _ = sweep_charts.optuna_figure(study, "history", title)
    objective = next(t for t in fig.data if t.mode == "markers")
    assert sorted(objective.y) == [0.70, 0.72, 0.75, 0.80]  # the complete trials only
    assert title in fig.layout.yaxis.title.text
    fig, _ = sweep_charts.optuna_figure(study, "importances", title)
    assert set(fig.data[0].y) == {"lr", "heads"}
