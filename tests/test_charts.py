"""fp8demo.charts: the math behind the figures and the conventions every figure keeps."""

import math

import numpy as np
import plotly.graph_objects as go
import pytest

from fp8demo import charts, fp8_charts
from fp8demo.fp8 import ROLES


def _decode(array):
    """A plotly trace array as numpy (plotly 7 keeps numpy arrays; JSON holds typed arrays)."""
    return np.asarray(array)


# -- smoothing ----------------------------------------------------------------------------


def test_ema_matches_tensorboard_debiased_formula():
    values = np.array([1.0, 2.0, 3.0, 4.0])
    w = 0.5
    last, expected = 0.0, []
    for n, v in enumerate(values, start=1):
        last = last * w + (1 - w) * v
        expected.append(last / (1 - w**n))
    np.testing.assert_allclose(charts.ema(values, w), expected)
    # Debiasing: the first smoothed point is the first value, not (1 - w) * value.
    assert charts.ema(values, 0.99)[0] == pytest.approx(1.0)


def test_ema_zero_smoothing_is_identity_and_constant_series_stays_constant():
    values = np.array([3.0, 1.0, 2.0])
    np.testing.assert_array_equal(charts.ema(values, 0.0), values)
    np.testing.assert_allclose(charts.ema(np.full(50, 7.0), 0.95), 7.0)


def test_ema_skips_nan_without_resetting():
    smooth = charts.ema(np.array([1.0, np.nan, 1.0]), 0.9)
    assert math.isnan(smooth[1])
    assert smooth[2] == pytest.approx(1.0)


def test_ema_rejects_smoothing_of_one():
    with pytest.raises(ValueError):
        charts.ema([1.0], 1.0)


# -- downsampling -------------------------------------------------------------------------


def test_minmax_downsampling_keeps_spikes_and_ends():
    rng = np.random.default_rng(0)
    y = rng.random(100_000)
    y[54_321] = 50.0  # a one-step loss spike
    y[12_345] = -3.0  # and a dip
    idx = charts.minmax_indices(y, 1000)
    assert len(idx) <= 1000
    assert 54_321 in idx and 12_345 in idx
    assert idx[0] == 0 and idx[-1] == len(y) - 1
    assert np.all(np.diff(idx) > 0)  # still in time order


def test_minmax_downsampling_leaves_short_series_alone_and_ignores_nan():
    np.testing.assert_array_equal(charts.minmax_indices(np.arange(10.0), 100), np.arange(10))
    y = np.full(10_000, np.nan)
    y[7_000] = 1.0
    assert 7_000 in charts.minmax_indices(y, 100)


def test_metric_figure_downsamples_long_runs_but_keeps_the_spike():
    steps = np.arange(50_000)
    loss = np.full(50_000, 0.5)
    loss[40_000] = 9.0
    fig = charts.metric_figure(
        [charts.curve("fp8", "fp8", steps, steps * 0.01, loss)],
        "loss",
        smoothing=0.0,
        max_points=500,
    )
    raw = fig.data[0]
    assert isinstance(raw, go.Scattergl)
    assert len(raw.y) <= 500
    assert _decode(raw.y).max() == pytest.approx(9.0)
    assert _decode(raw.y).dtype == np.float32


# -- curves -------------------------------------------------------------------------------


def _two_runs(metric="loss"):
    steps = np.arange(1, 101)
    times = steps * 0.5
    return [
        charts.curve(
            "bf16", "bf16", steps, times, np.linspace(0.7, 0.3, 100), [50, 100], [0.5, 0.35]
        ),
        charts.curve(
            "fp8", "fp8", steps, times, np.linspace(0.7, 0.32, 100), [50, 100], [0.52, 0.36]
        ),
    ]


def test_colours_are_fixed_per_precision_whatever_the_order():
    runs = _two_runs()
    for order in (runs, runs[::-1]):
        fig = charts.metric_figure(order, "loss")
        for trace in fig.data:
            precision = trace.legendgroup
            got = trace.line.color if trace.mode == "lines" else trace.marker.color
            assert got == charts.COLORS[precision]
    assert len(set(charts.COLORS.values())) == len(charts.COLORS)
    assert charts.color("float32") == charts.COLORS["float32"]


def test_metric_figure_has_raw_smoothed_and_validation_traces_and_conventions():
    fig = charts.metric_figure(_two_runs(), "loss", smoothing=0.9)
    names = [t.name for t in fig.data]
    assert names == ["bf16 (raw)", "bf16", "bf16 validation", "fp8 (raw)", "fp8", "fp8 validation"]
    raw, smooth = fig.data[0], fig.data[1]
    assert raw.opacity < 1 and (smooth.opacity is None or smooth.opacity == 1)
    np.testing.assert_allclose(
        _decode(smooth.y), charts.ema(np.linspace(0.7, 0.3, 100), 0.9), rtol=1e-6
    )
    assert fig.layout.uirevision == "loss-step"
    assert fig.layout.title.text and fig.layout.xaxis.title.text == "step"
    assert fig.layout.yaxis.title.text == "loss"
    np.testing.assert_array_equal(_decode(fig.data[2].x), [50, 100])


def test_metric_figure_log_y_and_time_axis():
    fig = charts.metric_figure(_two_runs(), "loss", log_y=True, x_axis="time")
    assert fig.layout.yaxis.type == "log"
    assert "seconds" in fig.layout.xaxis.title.text
    np.testing.assert_allclose(_decode(fig.data[0].x)[:3], [0.5, 1.0, 1.5])
    # Validation markers sit at their step's training time.
    np.testing.assert_allclose(_decode(fig.data[2].x), [25.0, 50.0])
    assert fig.layout.uirevision == "loss-time"
    with pytest.raises(ValueError):
        charts.metric_figure(_two_runs(), "loss", x_axis="epoch")


def test_curve_from_store_output():
    steps = {
        "step": np.arange(1.0, 4.0),
        "epoch": np.zeros(3),
        "time": np.array([0.1, 0.2, 0.3]),
        "loss": np.array([0.7, 0.6, 0.5]),
        "accuracy": np.array([0.5, 0.6, 0.7]),
    }
    epochs = [
        {
            "epoch": 0,
            "step": 3,
            "loss": 0.6,
            "accuracy": 0.6,
            "val_loss": 0.55,
            "val_accuracy": 0.71,
        }
    ]
    c = charts.curve_from_store("fp8", "fp8", steps, epochs, "accuracy")
    np.testing.assert_array_equal(c["values"], [0.5, 0.6, 0.7])
    np.testing.assert_array_equal(c["val_values"], [0.71])
    fig = charts.metric_figure([c], "accuracy")
    assert list(fig.layout.yaxis.range) == [0, 1]


def test_empty_curves_still_make_a_titled_figure():
    empty = charts.curve("bf16", "bf16", [], [], [])
    fig = charts.metric_figure([empty], "accuracy")
    assert fig.layout.title.text and len(fig.data) == 0


# -- float8 heatmaps ----------------------------------------------------------------------


def test_amax_heatmap_is_log2_with_nan_for_zero_and_fixed_range():
    steps = np.arange(4)
    amax = np.array([[0.0, 1.0], [2.0, 0.5], [4.0, 0.0], [1024.0, 0.25]], dtype=np.float32)
    fig = charts.amax_heatmap(steps, amax, ["query", "key"], role="kernel", fixed_scale=True)
    heat = fig.data[0]
    z = _decode(heat.z)
    assert z.shape == (2, 4)  # rows = layers, columns = steps
    assert z.dtype == np.float32
    assert np.isnan(z[0, 0]) and np.isnan(z[1, 2])
    np.testing.assert_allclose(z[0, 1:], [1.0, 2.0, 10.0])
    np.testing.assert_allclose(z[1, [0, 1, 3]], [0.0, -1.0, -2.0])
    assert (heat.zmin, heat.zmax) == charts.AMAX_LOG2_RANGE
    assert heat.colorbar.title.text == "log2 amax"
    assert list(heat.y) == ["query", "key"]
    assert fig.layout.uirevision == "amax-kernel" and "kernel" in fig.layout.title.text


def test_amax_heatmap_buckets_long_runs_by_max():
    steps = np.arange(10_000)
    amax = np.ones((10_000, 3), dtype=np.float32)
    amax[7_777, 1] = 2.0**12
    fig = charts.amax_heatmap(steps, amax, ["a", "b", "c"], max_columns=100)
    z = _decode(fig.data[0].z)
    assert z.shape[1] <= 100
    assert np.nanmax(z[1]) == pytest.approx(12.0)
    assert np.all(np.diff(_decode(fig.data[0].x)) > 0)


def test_amax_heatmap_with_no_steps_yet():
    fig = charts.amax_heatmap(np.zeros(0, int), np.zeros((0, 2), np.float32), ["a", "b"])
    assert _decode(fig.data[0].z).shape == (2, 0)


def test_scales_figure_one_panel_per_role_log_y():
    steps = np.arange(5)
    scales = np.ones((5, 2, 3), dtype=np.float32)
    scales[:, 1, 2] = [1, 1, 0.5, 0.25, 0.125]
    fig = charts.scales_figure(steps, scales, ["query", "key"])
    assert len(fig.data) == 2 * len(ROLES)
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis3.type == "log"
    np.testing.assert_allclose(_decode(fig.data[5].y), [1, 1, 0.5, 0.25, 0.125])
    assert [a.text for a in fig.layout.annotations] == ["inputs", "kernel", "output gradient"]
    assert fig.layout.uirevision == "scales"


def test_fp8_state_rows_and_scale_change_figure():
    before = {
        "q": {
            "inputs": {"scale": 1.0, "amax_max": 0.0, "amax_nonzero": 0, "history_head": [0.0] * 8}
        }
    }
    after = {
        "q": {
            "inputs": {
                "scale": 0.01,
                "amax_max": 4.48,
                "amax_nonzero": 1024,
                "history_head": [4.0, 4.48],
            }
        }
    }
    rows = charts.fp8_state_rows(before, after)
    assert rows == [
        {
            "layer": "q",
            "role": "inputs",
            "scale before": 1.0,
            "scale after": 0.01,
            "amax max before": 0.0,
            "amax max after": 4.48,
            "amax history filled": 1024,
            "amax history (newest first)": "4, 4.48",
        }
    ]
    fig = charts.scale_change_figure(before, after, "inputs")
    np.testing.assert_allclose(_decode(fig.data[1].y), [0.01], rtol=1e-6)
    assert fig.layout.yaxis.type == "log" and fig.layout.title.text


def test_best_epoch_is_starred_on_the_curves():
    steps = {
        "step": np.arange(1, 31, dtype=float),
        "time": np.arange(30, dtype=float),
        "loss": np.linspace(1, 0.2, 30),
        "accuracy": np.linspace(0.5, 0.9, 30),
    }
    epochs = [
        {"epoch": 0, "step": 10, "val_loss": 0.5, "val_accuracy": 0.84},
        {"epoch": 1, "step": 20, "val_loss": 0.6, "val_accuracy": 0.82},
        {"epoch": 2, "step": 30, "val_loss": 0.7, "val_accuracy": 0.81},
    ]
    for metric in ("loss", "accuracy"):
        fig = charts.metric_figure(
            [charts.curve_from_store("fp8", "fp8", steps, epochs, metric)], metric
        )
        stars = [t for t in fig.data if t.name == "fp8 best epoch"]
        assert len(stars) == 1
        assert list(stars[0].x) == [10.0]  # epoch 1 had the best validation accuracy


def test_headroom_heatmap_keeps_the_worst_step_of_each_bucket():
    steps = np.arange(1, 1201)
    headroom = np.full((1200, 2), 3.0, np.float32)
    headroom[700, 1] = -2.0  # one clipped step
    headroom[:2, 0] = np.nan  # no amax yet: blank
    fig = fp8_charts.headroom_heatmap(
        steps, headroom, ["a", "b"], "t", uirevision="x", max_columns=600
    )
    z = np.asarray(fig.data[0].z)
    assert z.shape == (2, 600)
    assert z[1].min() == -2.0 and (z[1] == 3.0).sum() == 599  # the spike survives bucketing
    assert np.isnan(z[0, 0]) and z[0, 1] == 3.0
    assert (fig.data[0].zmin, fig.data[0].zmax) == fp8_charts.HEADROOM_RANGE


def test_probe_figure_plots_percent_per_layer_and_statistic():
    stats = np.zeros((3, 2, 2), np.float32)  # [probes, layers, (saturation, underflow)]
    stats[:, 1, 1] = [0.5, 0.1, 0.0]
    fig = fp8_charts.probe_figure([0, 250, 500], stats, ["a", "b"], "outputs_grad")
    assert len(fig.data) == 4 and "output gradient" in fig.layout.title.text
    underflow_b = next(t for t in fig.data if t.name == "b" and t.xaxis == "x2")
    np.testing.assert_allclose(underflow_b.y, [50, 10, 0], rtol=1e-6)


# -- amax colour range per role -------------------------------------------------------------


def test_amax_color_range_of_equal_values_is_one_order_either_side():
    assert charts.amax_color_range(np.full((50, 4), 8.0, np.float32)) == (2.0, 4.0)
    # Not a power of two: the orders around it.
    assert charts.amax_color_range(np.full((50, 4), 3.0, np.float32)) == (1.0, 2.0)


def test_amax_color_range_ignores_zeros_and_non_finite_values():
    amax = np.zeros((100, 3), np.float32)  # unfilled history slots
    amax[10:, 0] = 0.25
    amax[10:, 1] = 2.0
    amax[5, 2] = np.inf
    amax[6, 2] = np.nan
    assert charts.amax_color_range(amax) == (-2.0, 1.0)
    assert charts.amax_color_range(np.zeros((10, 2), np.float32)) == charts.AMAX_LOG2_RANGE
    assert charts.amax_color_range(np.zeros((0, 2), np.float32)) == charts.AMAX_LOG2_RANGE


def test_amax_color_range_rounds_outward_and_leaves_rare_outliers_out():
    rng = np.random.default_rng(0)
    amax = (2.0 ** rng.uniform(-3.3, 5.2, (1000, 4))).astype(np.float32)
    assert charts.amax_color_range(amax) == (-4.0, 6.0)
    amax[123, 2] = 2.0**14  # one spike: it takes the top colour, the rest keeps its spread
    amax[456, 1] = 2.0**-15
    assert charts.amax_color_range(amax) == (-4.0, 6.0)
    assert charts.amax_color_range(amax, percentiles=(0, 100)) == (-15.0, 14.0)


def test_amax_heatmap_colours_follow_each_roles_own_values():
    steps = np.arange(200)
    rng = np.random.default_rng(1)
    kernel = (2.0 ** rng.uniform(-6.5, -4.5, (200, 3))).astype(np.float32)
    grads = (2.0 ** rng.uniform(-30.5, -27.2, (200, 3))).astype(np.float32)
    grads[0] = 0.0
    layers = ["a", "b", "c"]
    heat = charts.amax_heatmap(steps, kernel, layers, "kernel").data[0]
    assert (heat.zmin, heat.zmax) == (-7.0, -4.0)
    assert list(heat.colorbar.tickvals) == [-7, -6, -5, -4]
    heat = charts.amax_heatmap(steps, grads, layers, "outputs_grad").data[0]
    assert (heat.zmin, heat.zmax) == (-31.0, -27.0)  # outside the fixed range altogether
    # The displayed values sit inside the automatic range, not squeezed into a sliver of it.
    z = _decode(heat.z)
    assert np.nanmin(z) >= heat.zmin - 0.1 and np.nanmax(z) <= heat.zmax
    fixed = charts.amax_heatmap(steps, grads, layers, "outputs_grad", fixed_scale=True).data[0]
    assert (fixed.zmin, fixed.zmax) == charts.AMAX_LOG2_RANGE
    assert list(fixed.colorbar.tickvals) == list(range(-16, 17, 4))


def test_recipe_heatmap_colours_snr_and_hovers_all_three_numbers():
    recipes = ("delayed", "mxfp8")
    latest = np.zeros((2, 3, 2, 3), np.float32)  # [layers, roles, recipes, statistics]
    latest[..., 2] = 31.0
    latest[1, 2, 0] = [9.0, 0.5, 12.25]  # b's output gradients under delayed scaling
    latest[0, 1, 1, 2] = np.inf  # exact
    fig = fp8_charts.recipe_heatmap(latest, ["a", "b"], recipes, step=250)
    heatmap = fig.data[0]
    assert heatmap.type == "heatmap" and list(heatmap.x) == list(recipes)
    assert list(heatmap.y)[5] == "b · output gradient" and len(heatmap.y) == 6
    z = np.asarray(heatmap.z)
    assert z[5, 0] == 12.25 and z[1, 1] == fp8_charts.SNR_RANGE[1]  # exact: the top colour
    assert (heatmap.zmin, heatmap.zmax) == fp8_charts.SNR_RANGE
    assert heatmap.text[1][1] == "exact" and heatmap.customdata[5][0] == [9.0, 0.5, "12.2 dB"]
    assert "underflow" in heatmap.hovertemplate and "saturation" in heatmap.hovertemplate
    assert "step 250" in fig.layout.title.text


def test_recipe_probe_figure_draws_a_line_per_recipe_and_statistic():
    stats = np.zeros((3, 2, 3), np.float32)  # [probes, recipes, statistics]
    stats[:, 0, 0] = [50.0, 5.0, 0.0]  # delayed underflow falls
    stats[:, :, 2] = [[20.0, 30.0], [25.0, np.inf], [28.0, 31.0]]
    fig = fp8_charts.recipe_probe_figure([0, 250, 500], stats, ("delayed", "mxfp8"), "b · kernel")
    assert len(fig.data) == 6 and "b · kernel" in fig.layout.title.text
    delayed_underflow = next(t for t in fig.data if t.name == "delayed" and t.xaxis == "x2")
    np.testing.assert_allclose(delayed_underflow.y, [50, 5, 0])
    mxfp8_snr = next(t for t in fig.data if t.name == "mxfp8" and t.xaxis == "x")
    assert np.isnan(mxfp8_snr.y[1]) and mxfp8_snr.line.color == fp8_charts.RECIPE_COLORS["mxfp8"]
