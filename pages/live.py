"""Live: watch one comparison train — progress, loss and accuracy, and the fp8 amax/scales.

Two fragments re-read the store while a run is queued or running and nobody paused it: the
run cards every second, the charts every second for a few viewers and less often for many
(built once per refresh for all of them). Otherwise the page is drawn once, so the user can
zoom in peace.
"""

import math
import time

import streamlit as st

from fp8demo import charts, compiled, recipes, records
from fp8demo.config import FLOAT8_PRECISIONS, RECIPE_PRECISIONS
from fp8demo.fp8 import E4M3_MAX, E5M2_MAX, ROLES
from pages import common

REFRESH_SECONDS = 1.0


def run_card(run):
    """Status, phase and progress of one run."""
    icon = common.STATUS_ICONS.get(run["status"], "")
    st.markdown(f"#### {icon} {run['precision']}")
    status = run["status"]
    if status == "running":
        total = run.get("total_steps") or 0
        fraction = min(run["step"] / total, 1.0) if total else 0.0
        st.progress(fraction, text=f"{run['phase']} — {common.progress_text(run)}")
        if run.get("samples_per_sec"):
            st.caption(
                f"{run['samples_per_sec']:,.0f} samples/s · elapsed "
                f"{common.fmt_seconds(run.get('elapsed'))}"
                + (f" · {run['device']}" if run.get("device") else "")
            )
    elif status == "queued":
        st.caption("Waiting: runs train one after another.")
    elif status == "finished":
        st.success(
            f"Test accuracy {common.fmt_pct(run['test_accuracy'])} · test loss "
            f"{common.fmt_number(run['test_loss'], '.4f')} · fit "
            f"{common.fmt_seconds(run['fit_seconds'])}"
        )
    elif status == "cancelled":
        st.warning(f"Cancelled at step {run['step']:,}; metrics so far are kept.")
    else:  # failed, interrupted
        st.error(run.get("error") or f"The run {status}.")
    found = (run.get("summary") or {}).get("compiled_step")
    headline = compiled.headline(found)
    if headline:
        st.caption(headline, help=compiled.verdict(found))


def metric_curves(metrics, runs, metric, smoothing, log_y, x_axis):
    """The runs' curves of `metric`, a marker where a fallback moved layers to bf16."""
    curves = [
        charts.curve_from_store(r["precision"], r["precision"], *metrics[r["id"]], metric)
        for r in runs
    ]
    fig = charts.metric_figure(
        curves, metric, smoothing=smoothing, log_y=log_y and metric == "loss", x_axis=x_axis
    )
    for run, curve in zip(runs, curves):
        charts.add_fallback_markers(fig, curve, fallback_events(run), x_axis)
    return fig


def fallback_events(run) -> list:
    """The run's fallback events so far (fallback.py): {step, layer, role, reason, value}."""
    return (run.get("summary") or {}).get("fallback_events") or []


def fp8_figures(store, run, fixed_scale=False) -> dict:
    """A float8 run's amax heatmaps (one per role) and scales, or a note why there are none.

    fixed_scale: every heatmap on the same log2 range, instead of each role's own.
    """
    layers = [layer["name"] for layer in run["summary"].get("fp8_layers", [])]
    precision = run["precision"]
    if not layers:
        return {
            "note": f"The amax heatmaps appear once the {precision} model has been built and "
            "quantized."
        }
    steps, amax = store.fp8_amax(run["id"])
    if not len(steps):
        return {"note": f"Waiting for the first training steps of the {precision} run…"}
    s_steps, scales = store.fp8_scales(run["id"])
    heatmaps = {
        role: charts.amax_heatmap(steps, amax[:, :, j], layers, role, fixed_scale=fixed_scale)
        for j, role in enumerate(ROLES)
    }
    for heatmap in heatmaps.values():
        charts.add_heatmap_fallback_markers(heatmap, fallback_events(run), layers)
    return {
        "amax": heatmaps,
        "scales": charts.scales_figure(s_steps, scales, layers) if len(s_steps) else None,
        "precision": precision,
        "fallback": run["summary"].get("fallback_summary"),
    }


def float8_runs(runs) -> list:
    """The runs that train in float8 (fp8 and the recipe precisions), in the comparison's
    order."""
    return [r for r in runs if r["precision"] in FLOAT8_PRECISIONS]


def recipe_note(precision: str) -> str:
    """What a float8 run's heatmaps and scales are: for a recipe run, not what it scaled with."""
    recipe = RECIPE_PRECISIONS.get(precision)
    if recipe is None:
        return "Keras' delayed scaling: each step's scale comes from the amax history."
    return (
        f"{precision} scales with the `{recipe}` recipe: {recipes.RECIPE_HELP[recipe]}. Keras' "
        "delayed-scaling bookkeeping keeps running beside it: the amaxes are this run's own "
        "tensors, but the scales are what delayed scaling would have used, not the ones this "
        "run applied."
    )


def chart_seconds(viewers: int) -> float:
    """How often the charts refresh: every second for a few viewers, less often for many.

    Every refresh sends every chart to every viewer's browser (and renders it there), while
    the run cards stay at one second. TensorBoard reloads every 30 s; here at most 5 s.
    """
    return float(min(5, max(1, math.ceil(viewers / 2))))


@st.cache_resource(max_entries=64, show_spinner=False, ttl=600)
def shared_figures(
    _store,
    home: str,
    cid: int,
    runs_key: tuple,
    moment: float,
    smoothing: float,
    log_y: bool,
    x_axis: str,
    fixed_scale: bool,
    float8_run_id: int | None,
) -> dict:
    """Every chart of one refresh, built at most once per `moment` (when its time slot began)
    and settings and shared by all sessions watching (the figures are read-only): ten viewers
    cost one build, not ten, and an unchanged figure is sent as a reference to what the
    browser already has."""
    ids = [run_id for run_id, _ in runs_key]
    runs = [r for r in _store.runs(cid) if r["id"] in ids]
    metrics = common.run_metrics(_store, runs)
    chosen = [r for r in runs if r["id"] == float8_run_id]
    return {
        "loss": metric_curves(metrics, runs, "loss", smoothing, log_y, x_axis),
        "accuracy": metric_curves(metrics, runs, "accuracy", smoothing, log_y, x_axis),
        "fp8": fp8_figures(_store, chosen[0], fixed_scale) if chosen else None,
    }


def fp8_panel(figures: dict):
    """Heatmaps of every float8 layer's amax, one per role, and the scales over time."""
    if "note" in figures:
        st.caption(figures["note"])
        return
    st.caption(recipe_note(figures["precision"]))
    if figures.get("fallback"):
        st.caption(
            f"{figures['fallback']}: a triangle marks the step each layer left float8; its "
            "amax and scales stay as they were then."
        )
    st.caption(
        "Each float8 layer keeps the absolute maximum (amax) of its inputs, kernel and "
        f"output gradient per step; its scale is amax / fmax ({E4M3_MAX:g} for E4M3, "
        f"{E5M2_MAX:g} for E5M2). Colour is log2(amax), blank where amax is 0; each role's "
        "colours span its own values unless the scale is fixed."
    )
    common.fixed_scale_toggle("amax_fixed_scale")
    tabs = st.tabs([charts.ROLE_TITLES[r] for r in ROLES] + ["scales"])
    for j, role in enumerate(ROLES):
        with tabs[j]:
            common.plot(figures["amax"][role], key=f"amax-{role}")
    with tabs[-1]:
        if figures["scales"] is not None:
            common.plot(figures["scales"], key="scales")
        else:
            st.caption("No scale snapshots yet.")


def progress_view(store, cid, refreshing):
    """The run cards: status, phase, progress, speed. Every second while anything runs."""
    comparison = store.comparison(cid)
    if refreshing and not common.is_active(comparison):
        st.rerun()  # everything ended: redraw the page once, without the timers
    if refreshing and chart_seconds(common.count_viewers()) != st.session_state.get(
        "chart_seconds"
    ):
        st.rerun()  # viewers came or went: redraw with a chart interval to match
    cols = st.columns(len(comparison["runs"]))
    for col, run in zip(cols, comparison["runs"]):
        with col:
            run_card(run)


def charts_view(store, cid, smoothing, log_y, x_axis, interval, viewers=1):
    """Loss and accuracy curves and a float8 run's heatmaps, every `interval` seconds."""
    if interval > REFRESH_SECONDS:
        st.caption(f"{viewers} viewers: charts refresh every {interval:.0f} s.")
    runs = store.runs(cid)
    started = [r for r in runs if r["status"] not in ("queued",)]
    if not started:
        st.info("Charts appear when the first run starts training.")
        return
    runs_key = tuple((r["id"], r["status"]) for r in started)
    # Live: one shared build per time slot of `interval` seconds, keyed by when the slot began
    # (sessions on other intervals never share a key). Paused or ended: fresh, drawn once.
    moment = time.time() // interval * interval if interval else -time.time()
    # The toggle and the run picker are drawn further down (with the heatmaps); their values
    # are known already.
    fixed_scale = st.session_state.get("amax_fixed_scale", False)
    candidates = float8_runs(started)
    chosen = pick_float8_run(candidates, st.session_state.get("live_float8_run"))
    figures = shared_figures(
        store,
        str(store.home),
        cid,
        runs_key,
        moment,
        smoothing,
        log_y,
        x_axis,
        fixed_scale,
        chosen["id"] if chosen else None,
    )
    left, right = st.columns(2)
    with left:
        common.plot(figures["loss"], key="live-loss")
    with right:
        common.plot(figures["accuracy"], key="live-acc")
    heading = st.empty()
    if len(candidates) > 1:
        st.radio(
            "float8 run",
            [r["precision"] for r in candidates],
            index=candidates.index(chosen),
            horizontal=True,
            key="live_float8_run",
            help="Each float8 run of the comparison records its own amaxes and scales.",
        )
    heading.subheader(f"Inside the {chosen['precision'] if chosen else 'fp8'} run")
    if figures["fp8"] is not None:
        fp8_panel(figures["fp8"])
    elif float8_runs(runs):
        st.caption(f"The {float8_runs(runs)[0]['precision']} run has not started yet.")
    else:
        st.caption("This comparison has no float8 run (fp8 or a scaling recipe).")


def pick_float8_run(candidates, wanted):
    """The float8 run whose insides to show: the one picked, else fp8, else the first."""
    for precision in (wanted, "fp8"):
        for run in candidates:
            if run["precision"] == precision:
                return run
    return candidates[0] if candidates else None


def stop(store, cid):
    store.cancel_comparison(cid)
    st.toast("Stopping: waiting runs are cancelled, the running one stops at its next step.")


# -- the page -----------------------------------------------------------------------------

store = common.page_store()
st.title("Live")
comparisons = store.comparisons()
if not comparisons:
    common.next_step(
        f"No runs yet: launch a comparison on Train ({common.QUICK_DEMO_HINT}) and watch it "
        "train here, step by step."
    )
    st.stop()

preferred = st.session_state.pop("live_comparison", None) or common.query_int("comparison")
if preferred is None:
    preferred = next((c["id"] for c in comparisons if common.is_active(c)), None)
# No status in the selector: it is drawn once, while statuses change in the live part below.
cid = common.pick_comparison(comparisons, key="comparison", preferred=preferred, with_status=False)
if common.query_int("comparison") != cid:
    st.query_params["comparison"] = str(cid)
comparison = next(c for c in comparisons if c["id"] == cid)
active = common.is_active(comparison)
st.caption(f"Settings: {common.fmt_settings(comparison['config'])}")
if kept := records.kept_in_bf16_words(comparison["config"]):
    st.caption(kept)

c = st.columns([4, 3, 2, 2, 1], vertical_alignment="center")
smoothing = c[0].slider(
    "Smoothing",
    0.0,
    0.99,
    0.6,
    0.01,
    key="smoothing",
    help="Exponential moving average, debiased as in TensorBoard.",
)
x_axis = c[1].radio("x axis", ["step", "time"], horizontal=True, key="x_axis")
log_y = c[2].toggle("Log-scale loss", key="log_y")
paused = c[3].toggle(
    "Pause", key="pause", help="Stop refreshing, e.g. to zoom into a chart.", disabled=not active
)
c[4].button(
    "Stop",
    key="stop",
    on_click=stop,
    args=(store, cid),
    disabled=not active or not common.can_control(),
    help=common.LOCKED_HELP
    if not common.can_control()
    else "Cancel this comparison's running and waiting runs.",
)

refreshing = active and not paused
if paused:
    st.caption("Paused: charts are frozen. Turn Pause off to follow the training again.")
viewers = common.count_viewers()
interval = chart_seconds(viewers) if refreshing else 0.0
st.session_state["chart_seconds"] = interval
st.fragment(run_every=REFRESH_SECONDS if refreshing else None)(progress_view)(
    store, cid, refreshing
)
# The same place on the page whatever the interval: a fragment's id follows its position, and
# a moved fragment would leave its browsers' timers asking for the old one.
st.fragment(run_every=interval or None)(charts_view)(
    store, cid, smoothing, log_y, x_axis, interval, viewers
)
