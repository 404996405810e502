"""Results: every comparison, one in detail (accuracy, speed, float8 state), two side by side."""

import dataclasses
import json

import pandas as pd
import streamlit as st

from fp8demo import charts, compiled, device, launcher, records, report, verdicts
from fp8demo.config import FLOAT8_PRECISIONS, RECIPE_PRECISIONS, ConfigError, TrainConfig
from fp8demo.store import StoreError
from fp8demo.tensorboard_export import export_zip
from pages import common


def comparisons_table(comparisons) -> pd.DataFrame:
    rows = []
    for c in comparisons:
        row = {
            "id": c["id"],
            "created": pd.Timestamp(c["created_at"], unit="s", tz="UTC").tz_localize(None),
            "label": c["label"],
            "settings (vs the example)": common.fmt_settings(c["config"]),
            "status": common.comparison_status(c),
        }
        for r in c["runs"]:
            row[f"{r['precision']} test acc"] = r["test_accuracy"]
        rows.append(row)
    return pd.DataFrame(rows)


def run_rows(runs) -> pd.DataFrame:
    """One row per trained precision, plus the bf16 model's post-training int8/int4."""
    rows = []
    for r in runs:
        rows.append(
            {
                "precision": r["precision"],
                "status": r["status"],
                "test accuracy": r["test_accuracy"],
                "test loss": r["test_loss"],
                "weights (KB)": (r["summary"].get("weights_bytes") or 0) / 1024 or None,
                "fit time (s)": r["fit_seconds"],
                "steps/s": r["steps_per_sec"],
                "samples/s": r["samples_per_sec"],
                "params": r["params"],
                "device": device_cell(r["device"] or r["summary"].get("device")),
            }
        )
        for mode, result in (r["summary"].get("ptq") or {}).items():
            rows.append(
                {
                    "precision": f"{mode} PTQ of {r['precision']}",
                    "status": "post-training",
                    "test accuracy": result["test_accuracy"],
                    "test loss": result["test_loss"],
                    "weights (KB)": result["weights_bytes"] / 1024,
                }
            )
    return pd.DataFrame(rows)


def device_cell(label: str | None) -> str | None:
    """A run's device as it recorded it ("CPU, 2 cores", "NVIDIA H200"); on a CPU fp8 is
    emulated, which its speed reflects."""
    return f"{label} (fp8 emulated)" if device.emulates_fp8(label) else label


def phase_table(runs) -> pd.DataFrame:
    """Seconds each run spent per phase (data, model, fit, evaluation, saving), and its
    post-training quantization, evaluated after it by a worker."""
    recorded = {}
    for r in runs:
        seconds = dict(r["summary"].get("phase_seconds") or {})
        for mode, result in (r["summary"].get("ptq") or {}).items():
            if result.get("seconds") is not None:
                seconds[f"evaluating {mode} post-training quantization (after training)"] = result[
                    "seconds"
                ]
        recorded[r["precision"]] = seconds
    names = list(dict.fromkeys(name for seconds in recorded.values() for name in seconds))
    return pd.DataFrame(
        {"phase": names, **{p: [seconds.get(n) for n in names] for p, seconds in recorded.items()}}
    )


def accuracy_metrics(runs, found: dict):
    """st.metric per run; other precisions show their difference to the baseline (bf16).

    `found`: the float8 precisions' verdicts over seeds (comparison_verdicts). A difference
    is drawn red or green, with an arrow, only when its verdict is better or worse; one seed
    (always inconclusive), an equivalent or an inconclusive verdict is drawn grey."""
    accuracy = report.paired_differences(runs, "test_accuracy")
    loss = report.paired_differences(runs, "test_loss")
    speed = report.paired_ratios(runs, "steps_per_sec")
    versus = f"vs {report.BASELINE}"
    cols = st.columns(len(runs))
    for col, r in zip(cols, runs):
        p = r["precision"]
        verdict = found.get(p)
        decided = verdict is not None and verdict["verdict"] in ("better", "worse")
        with col:
            st.metric(
                f"{p} test accuracy",
                common.fmt_pct(r["test_accuracy"]),
                delta=f"{accuracy[p] * 100:+.2f} pp {versus}" if p in accuracy else None,
                delta_color="normal" if decided else "off",
                delta_arrow="auto" if decided else "off",
                delta_description=verdicts.verdict_words(verdict) if verdict else None,
                border=True,
            )
            st.metric(
                f"{p} test loss",
                common.fmt_number(r["test_loss"], ".4f"),
                delta=f"{loss[p]:+.4f} {versus}" if p in loss else None,
                delta_color="inverse" if decided else "off",
                delta_arrow="auto" if decided else "off",
                border=True,
            )
            # The speed fp8 is for: on a GPU with FP8 GEMMs it should beat bf16, elsewhere not.
            rate = r["steps_per_sec"]
            st.metric(
                f"{p} training speed",
                common.fmt_number(rate, ".1f") + " steps/s" if rate else "–",
                border=True,
                delta=f"{(speed[p] - 1) * 100:+.0f}% {versus}" if p in speed else None,
                help="Training steps per second, compilation and validation excluded.",
            )
            if r["status"] != "finished":
                st.caption(
                    f"{common.STATUS_ICONS.get(r['status'], '')} {r['status']}"
                    + (f": {r['error']}" if r.get("error") else "")
                )


# -- fp8 vs bf16 over seeds: the verdict and more seeds ----------------------------------------

# The engine cannot train a user's own model again: its repeats are the user's to run.
MONITOR_REPEATS = (
    "Recorded by your own script (FP8Monitor): the dashboard cannot train your model "
    "again, so it offers no repeats over seeds. This verdict pools your script's comparisons "
    "with this label, one seed each: pass FP8Monitor(seed=...) so that a seed run twice "
    "counts once."
)


def comparison_verdicts(comparisons, comparison, tolerance: float) -> dict:
    """{float8 precision: its verdict against bf16} over the seeds of the comparison's
    settings (report.comparison_verdict), for the precisions with a seed finished."""
    found = {}
    for r in comparison["runs"]:
        verdict = report.comparison_verdict(comparisons, comparison, r["precision"], tolerance)
        if verdict:
            found[r["precision"]] = verdict
    return found


def verdict_tolerance() -> float:
    """The equivalence margin the verdicts use (its widget is drawn by verdict_panel)."""
    return float(st.session_state.get("verdict_tolerance", verdicts.TOLERANCE_POINTS))


def verdict_panel(store, comparison, comparisons, found: dict):
    """Each float8 precision's verdict in one line, the tolerance, and a button repeating
    the comparison's settings over more seeds."""
    if not found:
        return
    left, right = st.columns([3, 1])
    with right:
        st.number_input(
            "Tolerance (± points)",
            min_value=0.0,
            max_value=100.0,
            value=verdicts.TOLERANCE_POINTS,
            step=0.1,
            key="verdict_tolerance",
            help="Set it before looking: fp8 is called equivalent to bf16 when the 95 % "
            "interval of its test accuracy difference lies within ± this many points.",
        )
    with left:
        for precision, verdict in found.items():
            name = report.difference_name(precision)
            line = verdicts.verdict_line(verdict, name)
            st.markdown(f"{common.VERDICT_ICONS[verdict['verdict']]} {line}")
        st.caption(
            "Over every finished comparison with these settings and another seed (a paired "
            "Student-t interval of the per-seed differences); one seed has no interval."
        )
    if report.recorded_by_monitor(comparison):
        st.caption(MONITOR_REPEATS)
        return
    more = [v["more_seeds"] for v in found.values() if v.get("more_seeds")]
    repeat_button(store, comparison, comparisons, max(more) if more else 2)


def repeat_button(store, comparison, comparisons, suggested: int):
    """Queue the comparison's settings again with seeds after every seed they have (protected
    like launching)."""
    first = report.next_seed(comparisons, comparison)
    allowed = common.can_control()
    left, right = st.columns([1, 3], vertical_alignment="bottom")
    seeds = left.number_input(
        "More seeds", 1, 100, min(max(int(suggested), 1), 100), key=f"more_seeds_{comparison['id']}"
    )
    if not right.button(
        "Repeat over more seeds",
        key=f"repeat_seeds_{comparison['id']}",
        disabled=not allowed,
        help=common.LOCKED_HELP
        if not allowed
        else f"Queues these settings with seeds {first} to {first + int(seeds) - 1}.",
    ):
        return
    config = dataclasses.replace(comparison["config"], seed=first)
    try:
        ids = launcher.launch_repeats(config, int(seeds), store, label=comparison["label"])
    except (ConfigError, StoreError) as e:
        st.error(str(e))
        return
    st.toast(f"Queued comparisons #{ids[0]}–#{ids[-1]} (seeds {first}…{first + len(ids) - 1}).")


# -- with and without fallback: what moving layers to bf16 bought -----------------------------


def fallback_section(store, comparison, comparisons):
    """For a comparison trained with --fallback: each float8 run's test accuracy with and
    without it (the twin: same settings and seed, no fallback), the layers it moved, and a
    button training the twin when there is none."""
    float8 = [r for r in comparison["runs"] if r["precision"] in FLOAT8_PRECISIONS]
    if not comparison["config"].fallback or not float8:
        return
    st.markdown(f"**What fallback bought** (`{comparison['config'].fallback}`)")
    twin = records.fallback_twin(comparisons, comparison)
    if twin is None:
        st.caption(
            "No comparison of the same settings and seed without fallback yet: train one to "
            "see what moving layers to bf16 changed."
        )
        twin_button(store, comparison)
    for run in float8:
        if twin is not None:
            st.markdown(
                fallback_words(
                    run, records.without_fallback(comparisons, comparison, run["precision"])
                )
            )
        moved_layers_table(run)


def fallback_words(run, found: dict) -> str:
    """One line: "fp8: 81.20 % with fallback, 80.70 % without (comparison #7, same seed):
    +0.50 points." (or what is still training)."""
    p, twin = run["precision"], f"comparison #{found['comparison_id']}, same seed"
    if found["difference"] is None:
        return f"{p}: compared with {twin} once both {p} runs have finished."
    return (
        f"{p}: {common.fmt_pct(run['test_accuracy'])} with fallback, "
        f"{common.fmt_pct(found['test_accuracy'])} without ({twin}): "
        f"{found['difference']:+.2f} points (one seed: a hint, not a verdict)."
    )


def moved_layers_table(run):
    """The layers the run's fallback moved to bf16: step, layer, tensor, threshold, value."""
    events = run["summary"].get("fallback_events") or []
    if not events:
        done = run["status"] == "finished"
        st.caption(f"{run['precision']}: no layer {'was' if done else 'has been'} moved to bf16.")
        return
    st.caption(f"{run['precision']}: {run['summary'].get('fallback_summary') or ''}")
    st.dataframe(
        pd.DataFrame(events).rename(columns={"role": "tensor", "reason": "threshold crossed"}),
        hide_index=True,
        width="stretch",
        column_config={"value": st.column_config.NumberColumn(format="%.4g")},
    )


def twin_button(store, comparison):
    """Queue the comparison's settings and seed without fallback (protected like launching)."""
    allowed = common.can_control()
    if not st.button(
        "Train the same without fallback",
        key=f"fallback_twin_{comparison['id']}",
        disabled=not allowed,
        help=common.LOCKED_HELP
        if not allowed
        else f"Queues these settings with seed {comparison['config'].seed} and no fallback.",
    ):
        return
    label = f"#{comparison['id']} without fallback"
    try:
        (cid,) = launcher.launch_repeats(records.twin_config(comparison["config"]), 1, store, label)
    except (ConfigError, StoreError) as e:
        st.error(str(e))
        return
    st.toast(f"Queued comparison #{cid}: the same settings and seed without fallback.")


def weights_reader(path):
    """Read the weights file only when the user clicks (it can be hundreds of MB)."""
    return lambda: path.read_bytes()


def tensorboard_reader(store, run_ids):
    """Write the event files only when the user clicks (TensorFlow summary writing)."""

    def read():
        return export_zip(store, run_ids)

    return read


def downloads(store, comparison):
    runs = comparison["runs"]
    cid = comparison["id"]
    c = st.columns(3 + len(runs))
    c[0].download_button(
        "Metrics CSV",
        report.metrics_csv(store, runs),
        f"fp8demo-{cid}-metrics.csv",
        "text/csv",
        key="download_csv",
        on_click="ignore",
    )
    config_json = json.dumps(
        {"comparison": cid, "label": comparison["label"], "config": comparison["config"].to_dict()},
        indent=2,
    )
    c[1].download_button(
        "Config JSON",
        config_json,
        f"fp8demo-{cid}-config.json",
        "application/json",
        key="download_config",
        on_click="ignore",
    )
    c[2].download_button(
        "TensorBoard (zip)",
        tensorboard_reader(store, [r["id"] for r in runs]),
        f"fp8demo-{cid}-tensorboard.zip",
        "application/zip",
        key="download_tensorboard",
        on_click="ignore",
        help="Event files of every run (loss, accuracy, validation, scales, amax histories): "
        "unzip and run `tensorboard --logdir` on the folder.",
    )
    for col, r in zip(c[3:], runs):
        path = store.run_dir(r["id"]) / "model.weights.h5"
        if path.exists():
            col.download_button(
                f"{r['precision']} weights",
                weights_reader(path),
                f"fp8demo-{cid}-{r['precision']}.weights.h5",
                "application/octet-stream",
                key=f"download_weights_{r['id']}",
                on_click="ignore",
            )
        else:
            col.caption(f"No {r['precision']} weights file (saved when a run finishes).")


def fp8_details(run):
    summary = run["summary"]
    layers = summary.get("fp8_layers", [])
    if not layers:
        st.caption("The fp8 run has not recorded its float8 layers yet.")
        return
    found = summary.get("compiled_step")
    if found is not None or run["status"] == "finished":
        speedup = found and not found.get("error") and found["fp8_matmuls"]
        (st.success if speedup else st.info)(compiled.verdict(found), icon=":material/memory:")
    st.markdown(
        f'**{len(layers)} float8 layers** (`model.quantize("float8")` converts each '
        "Dense and EinsumDense leaf):"
    )
    st.dataframe(layers, hide_index=True, width="stretch")
    before, after = summary.get("fp8_before", {}), summary.get("fp8_after", {})
    if not after:
        st.caption("The float8 variables after training appear when the run finishes.")
        return
    st.markdown(
        "**Float8 variables before vs after training** (scale = amax / fmax; the amax "
        "history holds the last 1024 steps, newest first):"
    )
    st.dataframe(
        charts.fp8_state_rows(before, after),
        hide_index=True,
        width="stretch",
        column_config={
            k: st.column_config.NumberColumn(format="%.4g")
            for k in ("scale before", "scale after", "amax max before", "amax max after")
        },
    )
    role = st.radio(
        "Role",
        list(charts.ROLE_TITLES),
        format_func=charts.ROLE_TITLES.get,
        horizontal=True,
        key="scale_role",
    )
    common.plot(charts.scale_change_figure(before, after, role), key="scale-change")


def recipe_verdicts(runs):
    """Per recipe run: did its compiled step run FP8 GEMMs (counted), or emulate the recipe?"""
    for r in runs:
        found = r["summary"].get("compiled_step")
        if found is None and r["status"] != "finished":
            st.caption(f"{r['precision']}: its compiled step is read once its fit ends.")
            continue
        show = st.success if compiled.runs_fp8_gemms(found) else st.info
        show(f"**{r['precision']}**: {compiled.verdict(found)}", icon=":material/memory:")


def curves(metrics, runs, metric, smoothing, labels=None, dashes=None):
    curves = [
        charts.curve_from_store(
            labels[i] if labels else r["precision"],
            r["precision"],
            *metrics[r["id"]],
            metric,
            dash=dashes[i] if dashes else "solid",
        )
        for i, r in enumerate(runs)
    ]
    return charts.metric_figure(curves, metric, smoothing=smoothing)


def repeats_summary(store, comparison):
    """Mean ± std over the seeds this comparison was launched with."""
    group = store.group(comparison["group_id"])
    stats = report.repeat_statistics(group)
    finished = sum(all(r["status"] == "finished" for r in c["runs"]) for c in group)
    st.markdown(
        f"**Repeats over seeds** — {len(group)} comparisons "
        f"(#{group[0]['id']}–#{group[-1]['id']}), {finished} finished"
    )
    if stats:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "": name,
                        "mean test accuracy (%)": stat["mean"] * 100,
                        "std (points)": stat["std"] * 100,
                        "seeds": stat["n"],
                    }
                    for name, stat in stats.items()
                ]
            ),
            hide_index=True,
            width="stretch",
            column_config={
                "mean test accuracy (%)": st.column_config.NumberColumn(format="%.2f"),
                "std (points)": st.column_config.NumberColumn(format="%.2f"),
            },
        )
        st.caption(
            f"Differences such as {report.difference_name('fp8')} pair the runs of the "
            "same seed; std uses n − 1."
        )


# -- post-training quantization: queued work, shown as it goes --------------------------

PTQ_STATES = {
    "queued": "queued: a worker evaluates it when no training run may start",
    "running": "being evaluated by a worker",
}


def post_training_section(store, comparison):
    """The int8/int4 post-training quantization of the comparison's finished bf16 runs (their
    results are rows of the table above): queued, running, failed with its error, or not
    asked for, with a button asking a worker for it. Refreshes itself every 2 s while one
    is pending, and the whole page once it is in."""
    key = f"_ptq_pending_{comparison['id']}"
    every = 2.0 if st.session_state.get(key) else None
    st.fragment(run_every=every)(_post_training_panel)(store, comparison["id"], key)


def _post_training_panel(store, comparison_id: int, key: str):
    comparison = store.comparison(comparison_id)
    wanted = [
        r
        for r in comparison["runs"]
        if r["precision"] == "bf16" and r["config"].ptq and r["status"] == "finished"
    ]
    pending = False
    for run in wanted:
        if run["summary"].get("ptq"):  # done: its rows are in the table
            continue
        evaluation = store.evaluation(run["id"])
        state = evaluation["status"] if evaluation else None
        what = f"int8/int4 post-training quantization of run {run['id']}"
        if state in PTQ_STATES:
            pending = True
            st.caption(f":material/hourglass_top: The {what} is {PTQ_STATES[state]}…")
            continue
        if state == "failed":
            st.warning(f"The {what} failed: {evaluation['error']}")
        elif state is None:
            st.caption(f"The {what} has not been asked for.")
        else:
            continue  # finished: the run's summary has its results on the next refresh
        ask_for_post_training(store, run["id"], again=state == "failed")
    if pending:
        launcher.ensure_supervisor(store, pending=True)  # its worker may have died
    if pending != st.session_state.get(key, False):
        st.session_state[key] = pending
        st.rerun()  # the timer on or off; the whole page shows the results once in


def ask_for_post_training(store, run_id: int, again: bool):
    """A button queueing the run's post-training evaluation (protected like launching)."""
    allowed = common.can_control()
    label = "Evaluate again" if again else "Evaluate int8/int4 post-training quantization"
    if st.button(
        label,
        key=f"ptq-{run_id}",
        disabled=not allowed,
        help=common.LOCKED_HELP if not allowed else "A worker evaluates it on the test split.",
    ):
        try:
            launcher.request_post_training(store, run_id)
        except StoreError as e:
            st.error(str(e))
            return
        st.rerun()


def detail(store, comparison, comparisons):
    runs = comparison["runs"]
    st.caption(f"Settings: {common.fmt_settings(comparison['config'])}")
    if kept := records.kept_in_bf16_words(comparison["config"]):
        st.caption(kept)
    if comparison.get("group_id"):
        repeats_summary(store, comparison)
    found = comparison_verdicts(comparisons, comparison, verdict_tolerance())
    accuracy_metrics(runs, found)
    verdict_panel(store, comparison, comparisons, found)
    fallback_section(store, comparison, comparisons)
    st.dataframe(
        run_rows(runs),
        hide_index=True,
        width="stretch",
        column_config={
            "test accuracy": st.column_config.NumberColumn(format="percent"),
            "fit time (s)": st.column_config.NumberColumn(format="%.1f"),
            "steps/s": st.column_config.NumberColumn(format="%.1f"),
            "samples/s": st.column_config.NumberColumn(format="%.0f"),
            "weights (KB)": st.column_config.NumberColumn(format="%.0f"),
        },
    )
    post_training_section(store, comparison)
    phases = phase_table(runs)
    if len(phases):
        with st.expander("Where the time went (seconds per phase)"):
            st.dataframe(
                phases,
                hide_index=True,
                width="stretch",
                column_config={
                    r["precision"]: st.column_config.NumberColumn(format="%.1f") for r in runs
                },
            )
            st.caption(
                "The data phases are near zero when the vocabulary and tokens come from "
                "the cache; the first training step includes XLA's compilation."
            )
    smoothing = st.slider("Smoothing", 0.0, 0.99, 0.8, 0.01, key="results_smoothing")
    metrics = common.run_metrics(store, runs)
    left, right = st.columns(2)
    with left:
        common.plot(curves(metrics, runs, "loss", smoothing), key="results-loss")
    with right:
        common.plot(curves(metrics, runs, "accuracy", smoothing), key="results-acc")
    fp8 = next((r for r in runs if r["precision"] == "fp8"), None)
    if fp8 is not None:
        with st.expander("Float8 layers and variables", expanded=True):
            fp8_details(fp8)
    recipe_runs = [r for r in runs if r["precision"] in RECIPE_PRECISIONS]
    if recipe_runs:
        with st.expander("Scaling recipes: how each run's matmuls ran", expanded=True):
            recipe_verdicts(recipe_runs)
    st.markdown("**Downloads**")
    downloads(store, comparison)
    delete_button(store, comparison)


def delete_button(store, comparison):
    """Delete a finished comparison with its metrics and models (protected like launching)."""
    active = common.is_active(comparison)
    allowed = common.can_control()
    if st.button(
        "Delete this comparison",
        key="delete",
        disabled=active or not allowed,
        help=common.LOCKED_HELP
        if not allowed
        else "Stop its runs first."
        if active
        else "Removes its runs, metrics and models.",
    ):
        try:
            store.delete_comparison(comparison["id"])
        except StoreError as e:
            st.error(str(e))
            return
        st.toast(f"Comparison #{comparison['id']} deleted.")
        st.rerun()


def side_by_side(store, comparisons):
    if len(comparisons) < 2:
        st.caption("Two comparisons are needed; launch another one on the Train page.")
        return
    c = st.columns(2)
    with c[0]:
        a = common.pick_comparison(comparisons, key="compare_a", label="A")
    with c[1]:
        b = common.pick_comparison(
            comparisons, key="compare_b", label="B", preferred=comparisons[1]["id"]
        )
    by_id = {x["id"]: x for x in comparisons}
    chosen = [by_id[a], by_id[b]]
    table = {}
    for name in TrainConfig.__dataclass_fields__:
        table[name] = [_cell(getattr(x["config"], name)) for x in chosen]
    for x in chosen:
        for r in x["runs"]:
            key = f"{r['precision']} test accuracy"
            table.setdefault(key, ["–", "–"])
            table[key][chosen.index(x)] = common.fmt_pct(r["test_accuracy"])
    frame = pd.DataFrame(table, index=[f"A: #{a}", f"B: #{b}"]).T
    frame["differs"] = frame.iloc[:, 0] != frame.iloc[:, 1]
    st.dataframe(frame, width="stretch")
    runs, labels, dashes = [], [], []
    for i, x in enumerate(chosen):
        for r in x["runs"]:
            runs.append(r)
            labels.append(f"{'AB'[i]} #{x['id']} {r['precision']}")
            dashes.append(charts.DASHES[i])
    st.caption("Colour is the precision; solid lines are A, dashed lines B.")
    metrics = common.run_metrics(store, runs)
    left, right = st.columns(2)
    with left:
        common.plot(curves(metrics, runs, "loss", 0.8, labels, dashes), key="compare-loss")
    with right:
        common.plot(curves(metrics, runs, "accuracy", 0.8, labels, dashes), key="compare-acc")


def _cell(value) -> str:
    return ", ".join(value) if isinstance(value, (list, tuple)) else str(value)


# -- the page -----------------------------------------------------------------------------

store = common.page_store()
st.title("Results")
comparisons = store.comparisons()
if not comparisons:
    common.next_step(
        f"No runs yet: launch a comparison on Train ({common.QUICK_DEMO_HINT}); its "
        "accuracy, curves and downloads appear here."
    )
    st.stop()

st.dataframe(
    comparisons_table(comparisons),
    hide_index=True,
    width="stretch",
    column_config={
        k: st.column_config.NumberColumn(format="percent")
        for k in ("bf16 test acc", "fp8 test acc", "float32 test acc")
    },
)
cid = common.pick_comparison(comparisons, key="result", preferred=common.query_int("comparison"))
detail(store, next(c for c in comparisons if c["id"] == cid), comparisons)

st.divider()
st.subheader("Compare two comparisons")
side_by_side(store, comparisons)
