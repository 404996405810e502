"""Plotly figures for the dashboard: plain data in, a Figure out (no Streamlit here).

Conventions every figure follows:
- each precision has one fixed colour, so bf16 is blue on every page;
- a fixed `uirevision`, so zoom and legend clicks survive live refreshes;
- a title and axis labels, and float32 arrays (plotly ships them as compact typed arrays);
- long series are downsampled here, on the server, with min/max buckets so spikes survive.
"""

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from fp8demo.fp8 import ROLES

COLORS = {
    "bf16": "#1f77b4",
    "fp8": "#ff7f0e",
    "fp8-current": "#d62728",
    "fp8-rowwise": "#9467bd",
    "fp8-rowwise-gw-hp": "#bcbd22",
    "fp8-block128": "#8c564b",
    "mxfp8": "#e377c2",
    "nvfp4": "#17becf",
    "float32": "#7f7f7f",
}
FALLBACK_COLOR = "#2ca02c"
# The three tensors each float8 layer scales, as the store orders them, with readable names.
ROLE_TITLES = dict(zip(ROLES, ("inputs", "kernel", "output gradient")))
# Fixed colour range of the amax heatmaps, in log2 units: 2^-16 .. 2^16. A fixed range keeps
# colours comparable between refreshes, roles and runs, but one role's amaxes span a few binary
# orders of it, so by default each heatmap colours its own range (amax_color_range).
AMAX_LOG2_RANGE = (-16.0, 16.0)
# The automatic range spans these percentiles of a role's log2 amaxes, so a lone spike does not
# squeeze every other step into one colour (the spike takes the top colour).
AMAX_PERCENTILES = (1.0, 99.0)
# Points per plotted series after downsampling (TensorBoard samples 1,000 per scalar): enough
# for a chart's pixel width, and what every viewer's browser receives each second on Live.
MAX_POINTS = 1000
MAX_COLUMNS = 600  # heatmap columns after bucketing
DASHES = ("solid", "dash", "dot", "dashdot")
# Keep the modebar's PNG export, at a resolution fit for slides.
PLOTLY_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}


def color(precision: str) -> str:
    return COLORS.get(precision, FALLBACK_COLOR)


def f32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


# -- series math --------------------------------------------------------------------------


def ema(values, smoothing: float) -> np.ndarray:
    """TensorBoard's debiased exponential moving average.

    The running average starts at 0 and is divided by (1 - smoothing^n), so the first
    points are not dragged towards zero. NaN points stay NaN and do not reset the average.
    """
    values = np.asarray(values, dtype=np.float64)
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    if smoothing == 0.0:
        return values.copy()
    out = np.full(values.shape, np.nan)
    last, n = 0.0, 0
    for i, v in enumerate(values):
        if not math.isfinite(v):
            continue
        last = last * smoothing + (1.0 - smoothing) * v
        n += 1
        out[i] = last / (1.0 - smoothing**n)
    return out


def minmax_indices(values, max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices of a downsampled series: each bucket's min and max point, in order.

    Plain striding would hide a one-step loss spike; keeping both extremes of every
    bucket draws the same envelope with at most `max_points` points.
    """
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n <= max_points:
        return np.arange(n)
    buckets = max(1, (max_points - 2) // 2)
    size = math.ceil(n / buckets)
    padded = np.full(buckets * size, np.nan)
    padded[:n] = values
    rows = padded.reshape(buckets, size)
    nan = np.isnan(rows)
    low = np.where(nan, np.inf, rows).argmin(axis=1)
    high = np.where(nan, -np.inf, rows).argmax(axis=1)
    offsets = np.arange(buckets) * size
    picked = np.concatenate([offsets + low, offsets + high, [0, n - 1]])
    picked = np.unique(picked[picked < n])
    return picked


def bucket_max(steps, values, max_columns: int = MAX_COLUMNS):
    """Shrink [steps, ...] to at most `max_columns` rows, keeping each bucket's max.

    Used for amax heatmaps: the largest amax in a bucket is the one that sets the scale.
    Returns (last step of each bucket, max of each bucket).
    """
    steps = np.asarray(steps)
    values = np.asarray(values, dtype=np.float32)
    n = len(steps)
    if n <= max_columns:
        return steps, values
    size = math.ceil(n / max_columns)
    starts = np.arange(0, n, size)
    with np.errstate(invalid="ignore"):
        maxima = np.fmax.reduceat(values, starts, axis=0)
    ends = np.minimum(starts + size, n) - 1
    return steps[ends], maxima


# -- training curves ----------------------------------------------------------------------


def curve(
    label, precision, steps, times, values, val_steps=(), val_values=(), dash="solid", best=None
):
    """One run's series for `metric_figure` (step metrics plus per-epoch validation points).

    best: index of the best epoch (highest validation accuracy) among the validation points.
    """
    return dict(
        label=label,
        precision=precision,
        steps=np.asarray(steps, dtype=np.float64),
        times=np.asarray(times, dtype=np.float64),
        values=np.asarray(values, dtype=np.float64),
        val_steps=np.asarray(val_steps, dtype=np.float64),
        val_values=np.asarray(val_values, dtype=np.float64),
        dash=dash,
        best=best,
    )


def curve_from_store(
    label, precision, step_metrics: dict, epoch_metrics: list, metric: str, dash="solid"
):
    """Build a curve from `Store.step_metrics` / `Store.epoch_metrics` output."""
    val = [e for e in epoch_metrics if e.get(f"val_{metric}") is not None]
    accuracies = [e.get("val_accuracy") for e in val]
    best = (
        int(np.nanargmax(np.array(accuracies, dtype=float)))
        if accuracies and None not in accuracies and len(val) > 1
        else None
    )
    return curve(
        label,
        precision,
        step_metrics["step"],
        step_metrics["time"],
        step_metrics[metric],
        [e["step"] for e in val],
        [e[f"val_{metric}"] for e in val],
        dash=dash,
        best=best,
    )


METRIC_TITLES = {"loss": "Loss (binary cross-entropy)", "accuracy": "Accuracy"}


def metric_figure(
    curves,
    metric="loss",
    *,
    smoothing=0.6,
    log_y=False,
    x_axis="step",
    max_points=MAX_POINTS,
    title=None,
    height=360,
) -> go.Figure:
    """Per-step training curves overlaid: raw (faint), EMA-smoothed, validation markers.

    x_axis: "step" (training step) or "time" (seconds since the run's training started).
    """
    if x_axis not in ("step", "time"):
        raise ValueError(f"x_axis must be 'step' or 'time', got {x_axis!r}")
    fig = go.Figure()
    for c in curves:
        x_all = c["steps"] if x_axis == "step" else c["times"]
        if len(c["values"]):
            _add_step_traces(fig, c, x_all, smoothing, max_points)
        if len(c["val_values"]):
            _add_validation_traces(fig, c, x_axis)
    layout(
        fig,
        title or METRIC_TITLES.get(metric, metric),
        "step" if x_axis == "step" else "seconds since training started",
        metric,
        uirevision=f"{metric}-{x_axis}",
        height=height,
    )
    if log_y:
        fig.update_yaxes(type="log")
    elif metric == "accuracy":
        fig.update_yaxes(range=[0, 1])
    return fig


def _add_step_traces(fig, c, x_all, smoothing, max_points):
    """One curve's raw values (faint, no legend entry) and their EMA (bold, in the legend)."""
    col = color(c["precision"])
    smooth = ema(c["values"], smoothing)
    for values, width, opacity, name in (
        (c["values"], 1, 0.25, f"{c['label']} (raw)"),
        (smooth, 2, 1.0, c["label"]),
    ):
        keep = minmax_indices(values, max_points)
        fig.add_trace(
            go.Scattergl(
                x=f32(x_all[keep]),
                y=f32(values[keep]),
                mode="lines",
                line=dict(color=col, width=width, dash=c["dash"]),
                opacity=opacity,
                name=name,
                legendgroup=c["label"],
                showlegend=name == c["label"],
                hovertemplate=f"{name.replace(' (raw)', ' raw')}<br>%{{x}}: %{{y:.4f}}"
                "<extra></extra>",
            )
        )


def _add_validation_traces(fig, c, x_axis):
    """One curve's per-epoch validation diamonds and a star on its best epoch."""
    col = color(c["precision"])
    vx = c["val_steps"]
    if x_axis == "time":
        # Epoch rows carry wall-clock times; place them on the run's own time axis.
        vx = np.interp(vx, c["steps"], c["times"]) if len(c["steps"]) else vx * np.nan
    fig.add_trace(
        go.Scatter(
            x=f32(vx),
            y=f32(c["val_values"]),
            mode="markers",
            marker=dict(color=col, size=10, symbol="diamond", line=dict(color="white", width=1)),
            name=f"{c['label']} validation",
            legendgroup=c["label"],
            hovertemplate=f"{c['label']} validation<br>%{{x}}: %{{y:.4f}}<extra></extra>",
        )
    )
    if c.get("best") is not None:  # the epoch with the best validation accuracy
        b = c["best"]
        fig.add_trace(
            go.Scatter(
                x=f32(vx[b : b + 1]),
                y=f32(c["val_values"][b : b + 1]),
                mode="markers",
                marker=dict(color=col, size=18, symbol="star", line=dict(color="black", width=1)),
                name=f"{c['label']} best epoch",
                legendgroup=c["label"],
                hovertemplate=f"{c['label']} best epoch ({b + 1})<br>%{{x}}: %{{y:.4f}}"
                "<extra></extra>",
            )
        )


# -- float8 state -------------------------------------------------------------------------


# -- fallback to bf16: where a layer left float8 (fallback.py) ------------------------------

FALLBACK_NAME = "fallback to bf16"
FALLBACK_MARKER = dict(symbol="triangle-down", size=13, color="#2ca02c", line=dict(width=1))


def fallback_by_step(events) -> dict:
    """{step: hover text} of a run's fallback events (summary "fallback_events"), one entry
    per probe step that moved layers: "step 0: query, key → bf16"."""
    moved = {}
    for event in events:
        name = event["layer"].rsplit("/", 1)[-1]
        why = f"{name} ({event['role']} {event['reason']}, {event['value']:.3g})"
        moved.setdefault(int(event["step"]), []).append(why)
    return {step: f"step {step}: {', '.join(whys)} → bf16" for step, whys in moved.items()}


def add_fallback_markers(fig, c, events, x_axis="step"):
    """Mark curve `c` (a `curve` dict) where its run's fallback moved layers to bf16: a
    triangle on the raw curve at each such step (the first step's value for a probe before
    it). Nothing until the curve has a point."""
    if not events or not len(c["values"]):
        return
    by_step = fallback_by_step(events)
    steps = np.array(sorted(by_step), dtype=np.float64)
    y = np.interp(steps, c["steps"], c["values"])
    x = steps if x_axis == "step" else np.interp(steps, c["steps"], c["times"])
    fig.add_trace(
        go.Scatter(
            x=f32(x),
            y=f32(y),
            mode="markers",
            marker=FALLBACK_MARKER,
            name=f"{c['label']}: {FALLBACK_NAME}",
            text=[by_step[int(step)] for step in steps],
            hovertemplate="%{text}<extra></extra>",
        )
    )


def add_heatmap_fallback_markers(fig, events, layer_names):
    """Mark each moved layer's row of a per-layer heatmap at the step it left float8 (its
    amax stops changing there)."""
    rows = [e for e in events if e["layer"] in layer_names]
    if not rows:
        return
    by_step = fallback_by_step(rows)
    fig.add_trace(
        go.Scatter(
            x=[float(e["step"]) for e in rows],
            y=[e["layer"] for e in rows],
            mode="markers",
            marker={**FALLBACK_MARKER, "symbol": "triangle-right"},
            name=FALLBACK_NAME,
            showlegend=False,
            text=[by_step[int(e["step"])] for e in rows],
            hovertemplate="%{y}<br>%{text}<extra></extra>",
        )
    )


def amax_log2(amax) -> np.ndarray:
    """log2(amax) as float32, NaN where amax is zero (an unfilled or all-zero tensor)."""
    amax = np.asarray(amax, dtype=np.float32)
    out = np.full(amax.shape, np.nan, dtype=np.float32)
    positive = amax > 0
    out[positive] = np.log2(amax[positive])
    return out


def amax_color_range(amax_role, percentiles=AMAX_PERCENTILES) -> tuple[float, float]:
    """Colour range (log2 units) that fits one role's amaxes: the given percentiles of the
    log2 of its positive, finite amaxes, rounded outward to whole binary orders.

    Zeros (unfilled history slots) are ignored. Equal values get one order either side;
    with no positive amax at all, the fixed AMAX_LOG2_RANGE.
    """
    logs = amax_log2(amax_role)
    logs = logs[np.isfinite(logs)]
    if not logs.size:
        return AMAX_LOG2_RANGE
    low, high = np.percentile(logs, percentiles)
    low, high = math.floor(low), math.ceil(high)
    if low == high:
        low, high = low - 1, high + 1
    return float(low), float(high)


def _log2_ticks(z_range) -> list:
    """Whole binary orders across a colour range, at most about eight of them."""
    low, high = int(z_range[0]), int(z_range[1])
    return list(range(low, high + 1, max(1, math.ceil((high - low) / 8))))


def amax_heatmap(
    steps,
    amax_role,
    layer_names,
    role="inputs",
    *,
    fixed_scale=False,
    max_columns=MAX_COLUMNS,
    height=None,
) -> go.Figure:
    """Heatmap of one role's amax: rows = float8 layers, columns = steps (oldest left).

    steps: (T,), amax_role: (T, layers). Colour is log2(amax) over the range of this role's
    values (amax_color_range), or over AMAX_LOG2_RANGE with fixed_scale, the same for every
    role and run; zero amax is blank. Long runs are bucketed by max so a single large amax
    stays visible.
    """
    steps, amax_role = bucket_max(steps, np.asarray(amax_role, dtype=np.float32), max_columns)
    z = amax_log2(amax_role).T if len(steps) else np.zeros((len(layer_names), 0), np.float32)
    z_range = AMAX_LOG2_RANGE if fixed_scale else amax_color_range(amax_role)
    return layer_heatmap(
        steps,
        z,
        layer_names,
        f"amax per step — {ROLE_TITLES.get(role, role)}",
        z_range,
        "Viridis",
        "log2 amax",
        uirevision=f"amax-{role}",
        height=height,
        tickvals=_log2_ticks(z_range),
    )


def layer_heatmap(
    steps,
    z,
    layer_names,
    title,
    z_range,
    colorscale,
    z_title,
    *,
    uirevision,
    height=None,
    tickvals=None,
) -> go.Figure:
    """Rows = float8 layers (the model's order, top down), columns = steps; colours span z_range."""
    fig = go.Figure(
        go.Heatmap(
            x=f32(steps),
            y=list(layer_names),
            z=z,
            zmin=z_range[0],
            zmax=z_range[1],
            colorscale=colorscale,
            colorbar=dict(title=dict(text=z_title), tickvals=tickvals),
            hoverongaps=False,
            hovertemplate=f"%{{y}}<br>step %{{x}}<br>{z_title} %{{z:.2f}}<extra></extra>",
        )
    )
    layout(
        fig,
        title,
        "step",
        "float8 layer",
        uirevision=uirevision,
        height=height or max(260, 60 + 28 * len(layer_names)),
    )
    fig.update_yaxes(autorange="reversed", automargin=True)
    return fig


def scales_figure(
    steps, scales, layer_names, roles=ROLES, *, max_points=MAX_POINTS // 2, height=360
) -> go.Figure:
    """Scale of every float8 layer over training, one panel per role, log y.

    steps: (T,), scales: (T, layers, roles). scale = amax / fmax, so it follows the amax
    history with a delay; a scale of 1.0 is the untouched initial value.
    """
    scales = np.asarray(scales, dtype=np.float32)
    fig = make_subplots(
        rows=1,
        cols=len(roles),
        subplot_titles=[ROLE_TITLES.get(r, r) for r in roles],
        shared_yaxes=False,
    )
    palette = (
        "#636efa",
        "#ef553b",
        "#00cc96",
        "#ab63fa",
        "#ffa15a",
        "#19d3f3",
        "#ff6692",
        "#b6e880",
        "#ff97ff",
        "#fecb52",
    )
    steps = np.asarray(steps)
    for j in range(len(roles)):
        for i, name in enumerate(layer_names):
            y = scales[:, i, j] if len(steps) else np.zeros(0, np.float32)
            keep = minmax_indices(y, max_points)
            fig.add_trace(
                go.Scattergl(
                    x=f32(steps[keep]),
                    y=f32(y[keep]),
                    mode="lines",
                    name=name,
                    legendgroup=name,
                    showlegend=(j == 0),
                    line=dict(color=palette[i % len(palette)], width=1.5),
                    hovertemplate=f"{name}<br>step %{{x}}<br>scale %{{y:.3g}}<extra></extra>",
                ),
                row=1,
                col=j + 1,
            )
    layout(
        fig,
        "float8 scales over training (scale = amax / fmax)",
        None,
        None,
        uirevision="scales",
        height=height,
    )
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(type="log", exponentformat="power")
    fig.update_yaxes(title_text="scale", row=1, col=1)
    return fig


def fp8_state_rows(before: dict, after: dict) -> list[dict]:
    """One row per float8 variable group (layer × role): scale and amax before vs after."""
    rows = []
    for layer in _layer_order(before, after):
        for role in ROLE_TITLES:
            b = before.get(layer, {}).get(role, {})
            a = after.get(layer, {}).get(role, {})
            if not a and not b:
                continue
            rows.append(
                {
                    "layer": layer,
                    "role": ROLE_TITLES[role],
                    "scale before": b.get("scale"),
                    "scale after": a.get("scale"),
                    "amax max before": b.get("amax_max"),
                    "amax max after": a.get("amax_max"),
                    "amax history filled": a.get("amax_nonzero"),
                    "amax history (newest first)": ", ".join(
                        f"{v:.3g}" for v in a.get("history_head", [])
                    ),
                }
            )
    return rows


def scale_change_figure(before: dict, after: dict, role="inputs", height=320) -> go.Figure:
    """Bars of each float8 layer's scale before vs after training, for one role (log y)."""
    layers = _layer_order(before, after)

    def get(state, layer):
        return state.get(layer, {}).get(role, {}).get("scale")

    fig = go.Figure(
        [
            go.Bar(
                x=layers,
                y=f32([get(before, name) or np.nan for name in layers]),
                name="before training",
                marker_color="#c7c7c7",
            ),
            go.Bar(
                x=layers,
                y=f32([get(after, name) or np.nan for name in layers]),
                name="after training",
                marker_color=COLORS["fp8"],
            ),
        ]
    )
    layout(
        fig,
        f"{ROLE_TITLES.get(role, role)} scale before vs after training",
        "float8 layer",
        "scale",
        uirevision=f"scale-change-{role}",
        height=height,
    )
    fig.update_layout(barmode="group")
    fig.update_yaxes(type="log", exponentformat="power")
    return fig


def _layer_order(before: dict, after: dict) -> list:
    """Layer names in the model's order (the summary dicts keep it), after's first."""
    return list(dict.fromkeys([*after, *before]))


def layout(fig, title, x_title, y_title, *, uirevision, height=None):
    fig.update_layout(
        title=dict(text=title),
        uirevision=uirevision,
        height=height,
        margin=dict(l=10, r=10, t=50, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
        hovermode="closest",
    )
    if x_title is not None:
        fig.update_xaxes(title_text=x_title)
    if y_title is not None:
        fig.update_yaxes(title_text=y_title)
    return fig
