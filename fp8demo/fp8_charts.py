"""Plotly figures of fp8 numerics for the FP8 health page: headroom, overflows, the probe's
saturation and underflow, and the same tensors under every scaling recipe.

The conventions of charts.py hold here too (fixed colours and uirevision, float32 arrays,
server-side downsampling); its helpers are shared.
"""

import numpy as np
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from fp8demo.charts import (
    FALLBACK_COLOR,
    MAX_COLUMNS,
    MAX_POINTS,
    ROLE_TITLES,
    bucket_max,
    f32,
    layer_heatmap,
    layout,
    minmax_indices,
)
from fp8demo.fp8 import ROLES
from fp8demo.prescription import BAND_NAMES, BANDS, band_index, underflow_pct
from fp8demo.recipes import GEMM_OPERANDS, PER_TENSOR, ROLE_GEMMS

# Headroom heatmaps, log2 units: white at 0 (the scale fits the tensor tightly: healthy), red
# below (clipped; barely tinted within rounding, -0.1), blue above (spare range; deep blue =
# small values underflow). 0 sits at 4/20 of the range, -1 at 3/20.
HEADROOM_RANGE = (-4.0, 16.0)
HEADROOM_COLORS = [
    [0.0, "#b2182b"],
    [0.15, "#ef8a62"],
    [0.195, "#fbe3d6"],
    [0.2, "#f7f7f7"],
    [0.3, "#e4eef6"],
    [0.6, "#4393c3"],
    [1.0, "#053061"],
]

# -- fp8 numerics health ------------------------------------------------------------------


def headroom_figure(
    steps, headroom_role, layer_names, role="inputs", *, max_points=MAX_POINTS, height=360
) -> go.Figure:
    """log2 headroom per layer over time for one role; below 0 the tensor was clipped."""
    fig = go.Figure()
    steps = np.asarray(steps, dtype=np.float64)
    for i, name in enumerate(layer_names):
        values = np.asarray(headroom_role[:, i], dtype=np.float64)
        keep = minmax_indices(np.nan_to_num(values, nan=0.0), max_points)
        fig.add_trace(
            go.Scattergl(
                x=f32(steps[keep]),
                y=f32(values[keep]),
                mode="lines",
                name=name,
                line=dict(width=1.5),
            )
        )
    fig.add_hline(y=0, line=dict(color="red", dash="dash"), annotation_text="clipping")
    layout(
        fig,
        f"Headroom of {ROLE_TITLES.get(role, role)} (log2 of representable max / amax)",
        "step",
        "log2 headroom",
        uirevision=f"headroom-{role}",
        height=height,
    )
    return _legend_below(fig)


def _legend_below(fig: go.Figure) -> go.Figure:
    """One entry per float8 layer is too many for the top right: put the legend underneath."""
    fig.update_layout(
        legend=dict(orientation="h", yanchor="top", y=-0.25, xanchor="left", x=0), margin=dict(b=90)
    )
    return fig


def mark_overflows(fig: go.Figure, steps, overflow_role, layer_names) -> go.Figure:
    """Overlay ✕ markers on an amax heatmap where a step overflowed its delayed scale."""
    rows, cols = np.nonzero(np.asarray(overflow_role).T)  # (layer, step index)
    if len(rows):
        fig.add_trace(
            go.Scatter(
                x=f32(np.asarray(steps)[cols]),
                y=[layer_names[r] for r in rows],
                mode="markers",
                marker=dict(symbol="x", size=9, color="red", line=dict(width=1, color="white")),
                name="overflow",
                hovertemplate="overflow at step %{x}<br>%{y}<extra></extra>",
            )
        )
    return fig


def probe_figure(steps, stats_role, layer_names, role="inputs", *, height=360) -> go.Figure:
    """Saturation and underflow (% of values) per layer at each probe, for one role.

    stats_role: [probes, layers, (saturation, underflow)] fractions, as the store holds them.
    """
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("saturation: % clipped", "underflow: % of nonzero flushed to 0"),
    )
    steps = f32(steps)
    palette = plotly.colors.qualitative.D3  # one colour per layer in both panels
    for i, name in enumerate(layer_names):
        line = dict(width=1.5, color=palette[i % len(palette)])
        for k in range(2):
            values = f32(np.asarray(stats_role)[:, i, k] * 100)
            _add_probe_line(fig, steps, values, name, line, first=k == 0, col=k + 1, unit=" %")
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="% of values", rangemode="tozero")
    layout(
        fig,
        f"Probe batch: {ROLE_TITLES.get(role, role)} under the scale in use",
        None,
        None,
        uirevision=f"probe-{role}",
        height=height,
    )
    fig.update_layout(margin=dict(t=80))
    return _legend_below(fig)


def headroom_heatmap(
    steps, headroom_role, layer_names, title, *, uirevision, max_columns=MAX_COLUMNS, height=None
) -> go.Figure:
    """Heatmap of log2 headroom: rows = float8 layers, columns = steps; red cells clipped.

    Bucketed by the minimum (the worst step in each column stays visible).
    """
    values = np.nan_to_num(np.asarray(headroom_role, np.float32), nan=np.inf)
    steps, lowest = bucket_max(steps, -values, max_columns)
    z = -lowest.T if len(steps) else np.zeros((len(layer_names), 0), np.float32)
    z = np.where(np.isfinite(z), z, np.nan).astype(np.float32)
    return layer_heatmap(
        steps,
        z,
        layer_names,
        title,
        HEADROOM_RANGE,
        HEADROOM_COLORS,
        "log2 headroom",
        uirevision=uirevision,
        height=height,
    )


# -- scaling recipes (what-if on the probe batch) ------------------------------------------

# One colour per recipe; a recipe some precision trains with shares that precision's colour.
RECIPE_COLORS = {
    "delayed": "#ff7f0e",  # fp8
    "current": "#d62728",  # fp8-current
    "rowwise": "#9467bd",  # fp8-rowwise
    "block128": "#8c564b",  # fp8-block128
    "mxfp8": "#e377c2",  # mxfp8
    "mxfp8-floor": "#bcbd22",
    "nvfp4": "#17becf",
}
# Fixed SNR colour range, dB: E4M3 rounding alone gives about 31 dB, E5M2 25, E2M1 (4-bit)
# about 20; lower means values lost to underflow or clipping. Exact cells take the top colour.
SNR_RANGE = (0.0, 40.0)


def _snr_text(value, unit="") -> str:
    if np.isnan(value):
        return ""
    return "exact" if value == np.inf else f"{value:.1f}{unit}"


def gemm_operands(first, second, recipes, gemm: str):
    """The two tensors `gemm` multiplies (recipes.GEMM_OPERANDS) at one probe, each as that
    GEMM quantizes it: (stats[layers, 2 roles, recipes, 3], roles). first and second: one probe
    of Store.fp8_recipes and Store.fp8_recipes_second; second None (recorded before the store
    kept it): per-tensor recipes repeat the first GEMM's numbers, the others are NaN (gaps)."""
    first = np.asarray(first, np.float32)
    if second is None:
        per_tensor = np.array([r in PER_TENSOR for r in recipes])[None, None, :, None]
        second = np.where(per_tensor, first, np.nan)
    second = np.asarray(second, np.float32)
    roles = GEMM_OPERANDS[gemm]
    columns = []
    for role in roles:
        source = first if ROLE_GEMMS[role][0] == gemm else second
        columns.append(source[:, ROLES.index(role)])
    return np.stack(columns, axis=1), roles


def recipe_heatmap(
    latest, layer_names, recipes, step=None, *, height=None, roles=ROLES, gemm=None
) -> go.Figure:
    """SNR (dB) of every float8 tensor (rows: layer · role) under every recipe (columns), at
    one probe; the hover shows underflow %, saturation % and SNR.

    latest: [layers, roles, recipes, (underflow_pct, saturation_pct, snr_db)], as one probe of
    Store.fp8_recipes; SNR is +inf where quantization is exact (shown as "exact").
    roles and gemm: the tensors of one GEMM as gemm_operands gives them, named in the title.
    """
    latest = np.asarray(latest, np.float32)
    rows = [f"{name} · {ROLE_TITLES[role]}" for name in layer_names for role in roles]
    by_tensor = latest.reshape(len(rows), len(recipes), 3)
    snr = by_tensor[:, :, 2]
    fig = go.Figure(
        go.Heatmap(
            x=list(recipes),
            y=rows,
            z=f32(np.clip(snr, *SNR_RANGE)),
            zmin=SNR_RANGE[0],
            zmax=SNR_RANGE[1],
            colorscale="Viridis",
            colorbar=dict(title=dict(text="SNR dB")),
            text=[[_snr_text(v) for v in row] for row in snr],
            texttemplate="%{text}",
            customdata=[
                [[u, s, _snr_text(v, " dB")] for u, s, v in row.tolist()] for row in by_tensor
            ],
            hoverongaps=False,
            hovertemplate="%{y}<br>recipe %{x}"
            + ("" if gemm is None else f" in {gemm}")
            + "<br>SNR %{customdata[2]}<br>"
            "underflow %{customdata[0]:.3~g} %<br>saturation %{customdata[1]:.3~g} %"
            "<extra></extra>",
        )
    )
    when = "" if step is None else f" (probe at step {int(step):,})"
    where = "" if gemm is None else f" in the {gemm} GEMM"
    title = f"What-if: SNR of each float8 tensor under each scaling recipe{where}{when}"
    return _tensor_rows_layout(fig, title, "scaling recipe", "recipe-heatmap", len(rows), height)


def recipe_probe_figure(steps, stats_tensor, recipes, tensor, *, height=360) -> go.Figure:
    """One tensor over the probes: SNR, underflow % and saturation %, a line per recipe.

    stats_tensor: [probes, recipes, (underflow_pct, saturation_pct, snr_db)]; exact
    quantization (SNR +inf) leaves a gap in the SNR panel.
    """
    stats_tensor = np.asarray(stats_tensor, np.float32)
    panels = ((2, "SNR (dB)"), (0, "underflow: % of nonzero flushed to 0"), (1, "saturation: %"))
    fig = make_subplots(rows=1, cols=3, subplot_titles=[title for _, title in panels])
    steps = f32(steps)
    for k, recipe in enumerate(recipes):
        line = dict(width=1.5, color=RECIPE_COLORS.get(recipe, FALLBACK_COLOR))
        for c, (n, _) in enumerate(panels):
            values = stats_tensor[:, k, n] if len(steps) else np.zeros(0, np.float32)
            finite = f32(np.where(np.isfinite(values), values, np.nan))
            _add_probe_line(fig, steps, finite, recipe, line, first=c == 0, col=c + 1)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(rangemode="tozero")
    layout(fig, f"{tensor} over the probes, by recipe", None, None, uirevision=f"recipes-{tensor}")
    fig.update_layout(height=height, margin=dict(t=80))
    return _legend_below(fig)


def _add_probe_line(fig, steps, values, name, line, first: bool, col: int, unit: str = ""):
    """One series of a per-probe panel; its legend entry once, on the first panel."""
    fig.add_trace(
        go.Scatter(
            x=steps,
            y=values,
            mode="lines+markers",
            marker=dict(size=4),
            line=line,
            name=name,
            legendgroup=name,
            showlegend=first,
            hovertemplate=f"{name}<br>step %{{x}}: %{{y:.3g}}{unit}<extra></extra>",
        ),
        row=1,
        col=col,
    )


# -- underflow bands (prescription.py) -------------------------------------------------------

# One colour per band, excellent → severe, and grey for a tensor with no nonzero value.
BAND_COLORS = ("#1a9850", "#fee08b", "#fc8d59", "#d73027", "#969696")
ALL_ZERO = "all zero"


def underflow_bands_heatmap(
    probe_steps, probe_stats, layer_names, bands=BANDS, worst=(), *, height=None
) -> go.Figure:
    """Underflow % of every float8 tensor (rows: layer · role) at every probe (columns),
    coloured by band (prescription.BANDS), the tensors of `worst` ((layer, role) pairs, worst
    first) boxed and numbered; the hover shows the value.

    probe_stats: [probes, layers, roles, (saturation, underflow)] fractions, as the store
    holds them; a tensor without a nonzero value (underflow NaN) is drawn grey.
    """
    underflow = underflow_pct(probe_stats)  # [probes, layers, roles]
    rows = [(name, role) for name in layer_names for role in ROLES]
    values = underflow.reshape(len(underflow), len(rows)).T  # [tensors, probes]
    z = np.where(np.isnan(values), len(BAND_NAMES), band_index(values, bands))
    names = [*BAND_NAMES, ALL_ZERO]
    n = len(names)
    colorscale = [
        [edge, color] for k, color in enumerate(BAND_COLORS) for edge in (k / n, (k + 1) / n)
    ]
    a, b, c = (f"{edge:g}" for edge in bands)
    words = (f"< {a} %", f"{a}–{b} %", f"{b}–{c} %", f"> {c} %")
    labels = [f"{name} · {ROLE_TITLES[role]}" for name, role in rows]
    fig = go.Figure(
        go.Heatmap(
            x=f32(probe_steps),
            y=labels,
            z=z.astype(np.float32),
            zmin=-0.5,
            zmax=n - 0.5,
            colorscale=colorscale,
            colorbar=dict(
                title=dict(text="underflow"),
                tickvals=list(range(n)),
                ticktext=[f"{b} {w}" for b, w in zip(BAND_NAMES, words)] + [ALL_ZERO],
            ),
            customdata=[[_underflow_text(v) for v in row] for row in values],
            hovertemplate="%{y}<br>probe at step %{x}<br>underflow %{customdata}<extra></extra>",
        )
    )
    for rank, key in enumerate(worst, start=1):
        k = rows.index(tuple(key))
        fig.add_shape(
            type="rect",
            xref="x domain",
            x0=0,
            x1=1,
            y0=k - 0.5,
            y1=k + 0.5,
            line=dict(color="black", width=2),
        )
        fig.add_annotation(
            xref="x domain", x=1, y=labels[k], text=f"#{rank}", showarrow=False, xanchor="left"
        )
    title = f"Underflow bands of every float8 tensor, the {len(worst)} worst boxed"
    return _tensor_rows_layout(fig, title, "probe step", "underflow-bands", len(rows), height)


def _tensor_rows_layout(fig, title, x_title, uirevision, n_rows, height=None):
    """A heatmap with a row per tensor, first row on top, tall enough to read every row."""
    layout(
        fig,
        title,
        x_title,
        None,
        uirevision=uirevision,
        height=height or max(320, 90 + 22 * n_rows),
    )
    fig.update_yaxes(autorange="reversed", automargin=True)
    return fig


def _underflow_text(value) -> str:
    return ALL_ZERO if np.isnan(value) else f"{value:.3g} %"


# -- block scales (block recipes, block_scales.py) -------------------------------------------


def block_scale_histogram(histogram, recipe: str, tensor: str, step=None, *, height=320):
    """Bars: how many blocks of one tensor have their scale in each integer log2 bin.

    histogram: {"first": lowest bin, "counts": [...]} (block_scales.compact_histogram); the bar
    at e counts the scales in [2^e, 2^(e+1)).
    """
    first, counts = histogram["first"], list(histogram["counts"])
    bins = list(range(first, first + len(counts))) if counts else []
    fig = go.Figure(
        go.Bar(
            x=bins,
            y=counts,
            marker_color=RECIPE_COLORS.get(recipe, FALLBACK_COLOR),
            hovertemplate="scale in [2^%{x}, 2^(%{x}+1)): %{y} blocks<extra></extra>",
        )
    )
    when = "" if step is None else f" (probe at step {int(step):,})"
    layout(
        fig,
        f"Block scales of {tensor} under {recipe}{when}",
        "log2 of the block scale",
        "blocks",
        uirevision=f"block-scales-{tensor}-{recipe}",
        height=height,
    )
    fig.update_xaxes(dtick=1 if len(bins) <= 24 else None)
    return fig
