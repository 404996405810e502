"""Plotly figures of a sweep: trial rows (fp8demo.sweep.trial_rows) in, a Figure out.

Every trial of a sweep is one comparison, so the two figures of its own pair the trial's
bf16 and fp8 runs: their validation accuracies against a swept setting, and their difference
fp8 − bf16 over two settings. Optuna's figures (optuna.visualization) come through
`optuna_figure`, which says why instead of drawing an empty chart when a study cannot have
one yet. The conventions are fp8demo.charts': one colour per precision, a fixed uirevision.
"""

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from fp8demo.charts import color, layout

PAIR = ("bf16", "fp8")
# How each trial state draws its markers: an unfinished or stopped trial must not pass for a
# complete one (a pruned trial's accuracies are of the epoch it was stopped at).
STATE_SYMBOLS = {
    "complete": "circle",
    "running": "circle-open",
    "queued": "circle-open",
    "pruned": "x",
    "failed": "x-open",
}
STATE_ORDER = ("complete", "running", "pruned", "failed", "queued")
PAIR_LINE = "#9e9e9e"  # the thin line joining one trial's two accuracies
DIFFERENCE_COLOR = "#444444"
DIVERGING = "RdBu"  # fp8 worse than bf16 is red, better is blue, equal is white
HEATMAP_BINS = 6  # bins per continuous setting in the heatmap
OBJECTIVE_TITLES = {
    "fp8_accuracy": "fp8 validation accuracy",
    "bf16_accuracy": "bf16 validation accuracy",
    "fp8_minus_bf16": "fp8 − bf16 validation accuracy",
    "abs_fp8_minus_bf16": "|fp8 − bf16| validation accuracy",
    "fp8_equivalent": "fp8 − bf16, worse end of its interval",
}


# -- reading trial rows -------------------------------------------------------------------


def accuracy(row: dict, precision: str, split: str = "val"):
    """A trial row's validation ("val") or test accuracy of one precision, or None."""
    return row.get(f"{precision}_{split}_accuracy")


def difference(row: dict):
    """fp8 − bf16 validation accuracy of a trial row, or None while either is missing."""
    value = row.get("fp8_minus_bf16")
    if value is None:
        bf16, fp8 = accuracy(row, "bf16"), accuracy(row, "fp8")
        value = None if bf16 is None or fp8 is None else fp8 - bf16
    return value


def param_value(row: dict, name: str):
    """The trial's value of a swept setting; booleans as text, so they plot as two categories."""
    value = (row.get("params") or {}).get(name)
    return str(value).lower() if isinstance(value, bool) else value


def is_numeric(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def fmt_value(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _pct(value) -> str:
    return "–" if value is None else f"{value:.2%}"


def _hover(row: dict, name: str) -> str:
    """What hovering a trial shows: its number, state, setting, and both splits' accuracies."""
    lines = [
        f"trial {row['number']} ({row['state']})",
        f"{name} = {fmt_value(param_value(row, name))}",
    ]
    for precision in PAIR:
        lines.append(
            f"{precision}: validation {_pct(accuracy(row, precision))}, "
            f"test {_pct(accuracy(row, precision, 'test'))}"
        )
    if row.get("reason"):
        lines.append(str(row["reason"])[:80])
    return "<br>".join(lines)


# -- the paired figure: each trial's bf16 and fp8 against one setting --------------------


def paired_figure(rows, param: str, *, log_x: bool = False, height: int = 520) -> go.Figure:
    """Each trial's bf16 and fp8 validation accuracy against `param`, joined by a thin line,
    and below, on its own axis, the paired difference fp8 − bf16 (0 = no difference).

    Markers: a precision's colour; filled for complete trials, open for running ones, ✕ for
    pruned and failed ones (pruned: the accuracy of the epoch it stopped at). log_x: a log
    axis, for a setting swept over a log range.
    """
    rows = [r for r in rows if param_value(r, param) is not None]
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.06
    )
    _add_pair_lines(fig, rows, param)
    for state in STATE_ORDER:
        group = [r for r in rows if r["state"] == state]
        for precision in PAIR:
            points = [r for r in group if accuracy(r, precision) is not None]
            if points:
                fig.add_trace(_markers(points, param, state, precision), row=1, col=1)
        points = [r for r in group if difference(r) is not None]
        if points:
            fig.add_trace(_difference_markers(points, param, state), row=2, col=1)
    fig.add_hline(y=0, line=dict(color="black", width=1, dash="dot"), row=2, col=1)
    layout(
        fig,
        f"bf16 and fp8 validation accuracy of each trial, by {param}",
        None,
        None,
        uirevision=f"sweep-paired-{param}",
        height=height,
    )
    fig.update_xaxes(title_text=param, row=2, col=1)
    fig.update_yaxes(title_text="validation accuracy", tickformat=".0%", row=1, col=1)
    fig.update_yaxes(title_text="fp8 − bf16", tickformat="+.1%", row=2, col=1)
    values = [param_value(r, param) for r in rows]
    if log_x and values and is_numeric(values) and min(values) > 0:
        fig.update_xaxes(type="log")
    elif values and not is_numeric(values):
        fig.update_xaxes(type="category")
    return fig


def _add_pair_lines(fig, rows, param):
    """One thin grey line per trial from its bf16 to its fp8 accuracy (one trace for all)."""
    xs, ys = [], []
    for r in rows:
        bf16, fp8 = accuracy(r, "bf16"), accuracy(r, "fp8")
        if bf16 is not None and fp8 is not None:
            x = param_value(r, param)
            xs += [x, x, None]
            ys += [bf16, fp8, None]
    if xs:
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                line=dict(color=PAIR_LINE, width=1),
                name="pair",
                showlegend=False,
                hoverinfo="skip",
            ),
            row=1,
            col=1,
        )


def _markers(points, param, state, precision) -> go.Scatter:
    open_marker = STATE_SYMBOLS[state].endswith("-open")
    return go.Scatter(
        x=[param_value(r, param) for r in points],
        y=[accuracy(r, precision) for r in points],
        mode="markers",
        name=f"{precision} · {state}",
        legendgroup=precision,
        marker=dict(
            color=color(precision),
            size=10,
            symbol=STATE_SYMBOLS[state],
            line=dict(color=color(precision) if open_marker else "white", width=1.5),
        ),
        customdata=[r["number"] for r in points],
        hovertext=[_hover(r, param) for r in points],
        hovertemplate="%{hovertext}<extra></extra>",
    )


def _difference_markers(points, param, state) -> go.Scatter:
    return go.Scatter(
        x=[param_value(r, param) for r in points],
        y=[difference(r) for r in points],
        mode="markers",
        name=f"fp8 − bf16 · {state}",
        legendgroup="difference",
        marker=dict(color=DIFFERENCE_COLOR, size=9, symbol=STATE_SYMBOLS[state]),
        customdata=[r["number"] for r in points],
        hovertext=[_hover(r, param) for r in points],
        hovertemplate="%{hovertext}<br>fp8 − bf16 %{y:+.2%}<extra></extra>",
    )


# -- the heatmap: fp8 − bf16 over two settings -------------------------------------------


def bins_of(values, *, log: bool = False, bins: int = HEATMAP_BINS):
    """How a heatmap axis groups a setting's values: (labels, index of each value's bin).

    Text and booleans, and numbers with at most `bins` distinct values, get one bin per value
    (sorted); other numbers `bins` equal-width bins over their range (equal in log space for a
    log setting), labelled by their edges.
    """
    distinct = sorted(
        set(values), key=lambda v: (not is_numeric([v]), v if is_numeric([v]) else str(v))
    )
    if not is_numeric(values) or len(distinct) <= bins:
        position = {v: i for i, v in enumerate(distinct)}
        return [fmt_value(v) for v in distinct], [position[v] for v in values]
    log = log and min(values) > 0
    scaled = np.log10(values) if log else np.asarray(values, dtype=np.float64)
    edges = np.linspace(scaled.min(), scaled.max(), bins + 1)
    index = np.clip(np.searchsorted(edges, scaled, side="right") - 1, 0, bins - 1)
    edges = 10**edges if log else edges
    labels = [f"{edges[i]:.3g}–{edges[i + 1]:.3g}" for i in range(bins)]
    return labels, [int(i) for i in index]


def difference_heatmap(
    rows,
    x_param: str,
    y_param: str,
    *,
    x_log: bool = False,
    y_log: bool = False,
    bins: int = HEATMAP_BINS,
    height: int = 460,
) -> go.Figure:
    """Mean fp8 − bf16 validation accuracy of the complete trials over two settings.

    Continuous settings are binned (bins_of); cells without a trial stay blank. The colour
    scale diverges around 0, symmetric, so white means "fp8 matches bf16" in every sweep.
    """
    rows = [
        r
        for r in rows
        if r["state"] == "complete"
        and difference(r) is not None
        and param_value(r, x_param) is not None
        and param_value(r, y_param) is not None
    ]
    x_labels, x_index = bins_of([param_value(r, x_param) for r in rows], log=x_log, bins=bins)
    y_labels, y_index = bins_of([param_value(r, y_param) for r in rows], log=y_log, bins=bins)
    total = np.zeros((len(y_labels), len(x_labels)))
    count = np.zeros_like(total)
    for r, i, j in zip(rows, y_index, x_index):
        total[i, j] += difference(r)
        count[i, j] += 1
    with np.errstate(invalid="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    finite = mean[np.isfinite(mean)]
    reach = float(np.abs(finite).max()) if finite.size else 0.0
    reach = reach if reach > 0 else 0.01  # all equal: still a white, centred scale
    text = [
        [
            "" if not count[i, j] else f"{mean[i, j]:+.1%} (n={int(count[i, j])})"
            for j in range(len(x_labels))
        ]
        for i in range(len(y_labels))
    ]
    fig = go.Figure(
        go.Heatmap(
            x=x_labels,
            y=y_labels,
            z=mean,
            zmid=0.0,
            zmin=-reach,
            zmax=reach,
            colorscale=DIVERGING,
            colorbar=dict(title=dict(text="fp8 − bf16"), tickformat="+.1%"),
            text=text,
            texttemplate="%{text}",
            hoverongaps=False,
            hovertemplate=f"{x_param} %{{x}}<br>{y_param} %{{y}}<br>"
            "fp8 − bf16 %{z:+.2%}<extra></extra>",
        )
    )
    layout(
        fig,
        f"fp8 − bf16 validation accuracy over {x_param} and {y_param} "
        f"(mean of {len(rows)} complete trials)",
        x_param,
        y_param,
        uirevision=f"sweep-heatmap-{x_param}-{y_param}",
        height=height,
    )
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return fig


# -- Optuna's own figures ----------------------------------------------------------------

OPTUNA_FIGURES = {  # kind: (title, optuna.visualization function)
    "history": ("Optimization history", "plot_optimization_history"),
    "parallel": ("Parallel coordinates", "plot_parallel_coordinate"),
    "contour": ("Contour", "plot_contour"),
    "slice": ("Slice", "plot_slice"),
    "importances": ("Parameter importances", "plot_param_importances"),
}


def optuna_figure_problem(study, kind: str) -> str:
    """Why Optuna cannot draw figure `kind` of this study yet, in words; "" when it can."""
    import optuna  # lazy: optuna loads in ~1 s

    if kind not in OPTUNA_FIGURES:
        raise ValueError(f"Unknown figure {kind!r}: choose from {', '.join(OPTUNA_FIGURES)}.")
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    params = {name for t in complete for name in t.params}
    needed = {"history": 1, "slice": 1}.get(kind, 2)
    if len(complete) < needed:
        have = f"{len(complete)} complete trial" + ("" if len(complete) == 1 else "s")
        return f"needs {needed} complete trial{'s' if needed > 1 else ''}; the sweep has {have}."
    if kind == "contour" and len(params) < 2:
        return "needs two swept settings; this sweep varies one."
    if kind == "importances" and len(params) < 2:
        return "needs two swept settings: with one, it has all the importance."
    return ""


def optuna_figure(study, kind: str, target_name: str = "objective", *, height: int = 460):
    """Optuna's plotly figure `kind` (OPTUNA_FIGURES) of `study`, as (figure, "") or, when
    Optuna cannot draw it yet or fails to, (None, the reason in words). Never raises for a
    study's state: a page may ask at any moment of a sweep."""
    from optuna import visualization  # lazy: optuna loads in ~1 s

    problem = optuna_figure_problem(study, kind)
    if problem:
        return None, problem
    title, function = OPTUNA_FIGURES[kind]
    try:
        fig = getattr(visualization, function)(study, target_name=target_name)
    except Exception as e:  # Optuna's own checks: say what it said, keep the page up
        return None, f"Optuna could not draw it: {e}"
    if not fig.data:
        return None, "Optuna found nothing to draw yet."
    fig.update_layout(
        uirevision=f"optuna-{kind}", height=height, margin=dict(l=10, r=10, t=50, b=10)
    )
    return fig, ""


def objective_title(objective: str) -> str:
    """The objective in words, for axis titles ("fp8 − bf16 validation accuracy")."""
    return OBJECTIVE_TITLES.get(objective, objective)
