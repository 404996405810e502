"""Sweep: search training settings with Optuna, every trial one paired bf16-vs-fp8 comparison.

Build the search space with widgets (a range or choices per setting), launch, and watch the
trials arrive: the table refreshes itself while the sweep runs, and the figures are drawn
again whenever a trial reports an epoch or ends. fp8demo.sweep runs the study (the training
processes and the supervisor ask and tell its trials); fp8demo.sweep_charts draws it. The chosen
sweep lives in the URL (?sweep=ID); every trial links to its comparison on the other pages.
"""

import dataclasses

import streamlit as st

from fp8demo import records, sweep, sweep_charts, verdicts
from fp8demo.charts import PLOTLY_CONFIG
from fp8demo.config import (
    EXAMPLE,
    PRECISIONS,
    PRESETS,
    ConfigError,
    TrainConfig,
    preset,
    to_text,
)
from fp8demo.store import StoreError
from pages import common

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
SWEEPABLE = [name for name in FIELDS if name not in sweep.FIXED]
REFRESH_SECONDS = 2.0
# A first range or list of choices for a setting picked to sweep (the user edits it).
SUGGESTED = {
    "lr": "1e-4:1e-2:log",
    "batch_size": "16,32,64",
    "epochs": "1,2,3",
    "vocab_size": "1000:20000:log",
    "seq_len": "64,128,200",
    "hidden_dim": "16,32,64,128",
    "heads": "1,2,4",
    "intermediate_dim": "32:256",
    "dropout": "0:0.5",
    "amax_history_length": "1:1024:log",
    "early_stopping": "0,1,2",
    "bf16_layers": "none,classifier,last:2",  # a list setting: choices of A+B lists
}
FLOAT_FORMATS = {"lr": "%.1e", "dropout": "%.2f"}
TRAIN_SETTINGS = "The Train page's settings"
START = "Quick demo"  # a sweep trains many comparisons: start small
TRIAL_PAGES = [
    ("pages/live.py", "Live", ":material/monitoring:"),
    ("pages/results.py", "Results", ":material/table_chart:"),
    ("pages/health.py", "FP8 health", ":material/health_and_safety:"),
    ("pages/predict.py", "Predict", ":material/chat:"),
]
STATE_ICONS = {
    "running": ":material/play_circle:",
    "complete": ":material/check_circle:",
    "cancelled": ":material/stop_circle:",
    "failed": ":material/error:",
    "queued": ":material/schedule:",
    "pruned": ":material/content_cut:",
}
FORM = "sw_"  # every widget of the new-sweep form has a key starting with this
FORM_DEFAULTS = dict(
    start=START,
    params=["lr"],
    objective="fp8_minus_bf16",
    direction="maximize",
    sampler="tpe",
    trials=4,
    prune=True,
    label="",
)


# -- the new-sweep form: its widgets' state survives page switches ----------------------


def restore_form():
    """Put back the form's last values: Streamlit drops a widget's state when its page is left
    (and when a fresh server switches to app.py's navigation, which changes the widgets' ids).
    Assigning each value makes it the widget's again, as Streamlit's docs advise."""
    saved = st.session_state.setdefault("sweep_form", {})
    if not saved:  # a first visit: the defaults, set here so no widget passes its own
        fill_fixed(start_config(START))
        saved.update({f"{FORM}{key}": value for key, value in FORM_DEFAULTS.items()})
    for key, value in saved.items():
        st.session_state[key] = st.session_state.get(key, value)


def keep(key: str, options):
    """Keep a view widget's choice through a page switch (as restore_form), while valid."""
    if st.session_state.get(key) in options:
        st.session_state[key] = st.session_state[key]


def save_form():
    st.session_state["sweep_form"] = {
        k: v for k, v in st.session_state.items() if isinstance(k, str) and k.startswith(FORM)
    }


def start_config(name: str) -> TrainConfig:
    """A preset's settings, or the Train page's last ones (this browser tab's)."""
    if name == TRAIN_SETTINGS:
        return st.session_state.get("train_config", EXAMPLE)
    return preset(name)


def fill_fixed(config: TrainConfig):
    for name in FIELDS:
        st.session_state[f"{FORM}fixed_{name}"] = common.widget_value(name, getattr(config, name))


def apply_start():
    fill_fixed(start_config(st.session_state[f"{FORM}start"]))


def fixed_config() -> TrainConfig:
    """The fixed settings as the form holds them (a swept setting's fixed value is unused)."""
    values = {}
    for name in FIELDS:
        value = st.session_state.get(f"{FORM}fixed_{name}", getattr(EXAMPLE, name))
        values[name] = tuple(value) if name == "precisions" else value
    return TrainConfig(**values)


def setting_widget(name: str, key: str, label: str | None = None):
    """One TrainConfig setting as a widget of its type, with the setting's help text."""
    field, label = FIELDS[name], label or name
    default, text = field.default, field.metadata["help"]
    if isinstance(default, bool):
        st.checkbox(label, key=key, help=text)
    elif field.metadata["choices"]:
        st.selectbox(label, field.metadata["choices"], key=key, help=text)
    elif isinstance(default, tuple):
        st.multiselect(label, PRECISIONS, key=key, help=text)
    elif isinstance(default, int):
        st.number_input(label, step=1, key=key, help=text)
    elif isinstance(default, float):
        st.number_input(label, format=FLOAT_FORMATS.get(name, "%g"), key=key, help=text)
    else:
        st.text_input(label, key=key, help=text)


def choices_only(name: str) -> bool:
    """Settings that take choices, never a range: booleans and named choices."""
    return isinstance(FIELDS[name].default, bool) or bool(FIELDS[name].metadata["choices"])


def options_of(name: str) -> list[str]:
    return ["true", "false"] if isinstance(FIELDS[name].default, bool) else []


def suggested_spec(name: str) -> str:
    """A first search range or choices for a setting: SUGGESTED, else around its default."""
    default = FIELDS[name].default
    if name in SUGGESTED:
        return SUGGESTED[name]
    if isinstance(default, bool):
        return "true,false"
    if FIELDS[name].metadata["choices"]:
        return ",".join(FIELDS[name].metadata["choices"])
    if isinstance(default, int):
        return f"{max(default // 2, 1)}:{max(default * 2, 2)}"
    return f"{default / 2:g}:{default * 2:g}"


def init_param(name: str):
    """The widgets of a setting just picked to sweep start from suggested_spec."""
    if f"{FORM}kind_{name}" in st.session_state:
        return
    spec = suggested_spec(name)
    if isinstance(FIELDS[name].default, tuple):  # choices only, typed (first:N has a colon)
        st.session_state[f"{FORM}kind_{name}"] = "choices"
        st.session_state[f"{FORM}choices_{name}"] = spec
        return
    if choices_only(name):
        st.session_state[f"{FORM}picks_{name}"] = spec.split(",")
        st.session_state[f"{FORM}kind_{name}"] = "choices"
        return
    parts = spec.split(":")
    st.session_state[f"{FORM}kind_{name}"] = "range" if len(parts) > 1 else "choices"
    st.session_state[f"{FORM}choices_{name}"] = spec if len(parts) == 1 else ""
    st.session_state[f"{FORM}low_{name}"] = parts[0] if len(parts) > 1 else ""
    st.session_state[f"{FORM}high_{name}"] = parts[1] if len(parts) > 1 else ""
    st.session_state[f"{FORM}log_{name}"] = len(parts) == 3


def param_row(name: str):
    """How one setting is searched: a range (low, high, log-spaced) or a list of choices."""
    init_param(name)
    c = st.columns([2, 2, 2, 2, 1], vertical_alignment="bottom")
    c[0].markdown(f"**{name}**", help=FIELDS[name].metadata["help"])
    if choices_only(name):
        options = options_of(name) or list(FIELDS[name].metadata["choices"])
        c[1].multiselect("Choices", options, key=f"{FORM}picks_{name}")
        return
    ranges = not isinstance(FIELDS[name].default, tuple)  # a list setting takes choices
    kind = c[1].segmented_control(
        "Search",
        ["range", "choices"] if ranges else ["choices"],
        key=f"{FORM}kind_{name}",
        required=True,
    )
    if kind == "choices":
        c[2].text_input("Choices", key=f"{FORM}choices_{name}", placeholder="e.g. 1,2,4")
        return
    c[2].text_input("Low", key=f"{FORM}low_{name}")
    c[3].text_input("High", key=f"{FORM}high_{name}")
    c[4].checkbox("log", key=f"{FORM}log_{name}", help="Log-spaced: for ranges over decades.")


def spec_of(name: str) -> str:
    """The setting's search as sweep.parse_space reads it: "A,B,C" or "LOW:HIGH[:log]"."""
    state = st.session_state
    if choices_only(name):
        return ",".join(state.get(f"{FORM}picks_{name}", []))
    if state.get(f"{FORM}kind_{name}") == "choices":
        return state.get(f"{FORM}choices_{name}", "").strip()
    low, high = state.get(f"{FORM}low_{name}", ""), state.get(f"{FORM}high_{name}", "")
    return f"{low.strip()}:{high.strip()}" + (":log" if state.get(f"{FORM}log_{name}") else "")


def fixed_settings_form(swept: list[str]):
    """Every setting the trials share, as on Train; the swept ones are left out."""
    st.selectbox(
        "Start from",
        [*PRESETS, TRAIN_SETTINGS],
        key=f"{FORM}start",
        on_change=apply_start,
        help="Fills the fixed settings below; edit any of them.",
    )
    shown = [name for name in FIELDS if name not in swept]
    columns = st.columns(4)
    for i, name in enumerate(shown):
        with columns[i % 4]:
            setting_widget(name, f"{FORM}fixed_{name}")
    st.caption(
        "Fixed for every trial whatever it searches: "
        + "; ".join(f"{name} ({why})" for name, why in sweep.FIXED.items() if name in FIELDS)
        + "."
    )


def new_sweep_form(store):
    """The search space, the objective and the fixed settings; Launch when they are valid."""
    restore_form()
    swept = st.multiselect(
        "Settings to search",
        SWEEPABLE,
        key=f"{FORM}params",
        help="Each trial trains one comparison with its own value of each of these.",
    )
    for name in swept:
        param_row(name)
    c = st.columns(4)
    objective = c[0].selectbox(
        "Objective",
        sweep.OBJECTIVES,
        key=f"{FORM}objective",
        format_func=sweep_charts.objective_title,
        help="Read from the final epoch's validation accuracy; fp8 − bf16 is each trial's "
        "paired difference, |fp8 − bf16| with maximize finds where the two diverge.",
    )
    direction = c[1].segmented_control(
        "Direction", sweep.DIRECTIONS, key=f"{FORM}direction", required=True
    )
    sampler = c[2].selectbox(
        "Sampler",
        sweep.SAMPLERS,
        key=f"{FORM}sampler",
        help="grid: every choice, ranges cut into points; random; tpe: Optuna's Bayesian "
        "sampler, random for its first trials.",
    )
    trials = c[3].number_input(
        "Trials", min_value=1, max_value=sweep.MAX_TRIALS, step=1, key=f"{FORM}trials"
    )
    prune = st.checkbox(
        "Prune hopeless trials",
        key=f"{FORM}prune",
        help="Optuna's median pruner: after each epoch, a trial worse than the median of the "
        "completed trials at that epoch is stopped (its runs are cancelled, the reason kept).",
    )
    with st.expander("Fixed settings (every trial)", expanded=False):
        fixed_settings_form(swept)
    space = {name: spec_of(name) for name in swept}
    label = st.text_input("Label (optional)", key=f"{FORM}label", placeholder="e.g. lr scan")
    save_form()
    request = sweep.SweepRequest(
        fixed_config(), space, int(trials), objective, direction, sampler, prune, label
    )
    problems = sweep.sweep_problems(request, store.home)
    for problem in problems:
        st.error(problem)
    if common.launch_button("Launch sweep", "launch_sweep", problems, "Queue the first trial(s)."):
        try:
            with st.spinner("Creating the study and queueing the first trial…"):
                sweep_id = sweep.create_sweep(store, request)
        except (ConfigError, StoreError) as e:
            st.error(str(e))
            return
        st.session_state["sweep_chosen"] = sweep_id
        st.rerun()


# -- one sweep -------------------------------------------------------------------------


def sweep_label(listed: dict) -> str:
    label = f" “{listed['label']}”" if listed.get("label") else ""
    return (
        f"#{listed['id']}{label} · {sweep_charts.objective_title(listed['objective'])} "
        f"({listed['direction']}) · {listed['state']} · "
        f"{listed['trials_done']}/{listed['trials']} trials"
    )


def pick_sweep(listed: list[dict]) -> int:
    """The sweep to show: the one just launched, the URL's, or the one picked last."""
    ids = [s["id"] for s in listed]
    launched, linked = st.session_state.pop("sweep_chosen", None), common.query_int("sweep")
    if launched in ids:
        st.session_state["sweep_pick"] = launched
    elif linked in ids and "sweep_pick" not in st.session_state:
        st.session_state["sweep_pick"] = linked
    keep("sweep_pick", ids)
    by_id = {s["id"]: s for s in listed}
    sweep_id = st.selectbox(
        "Sweep", ids, key="sweep_pick", format_func=lambda i: sweep_label(by_id[i])
    )
    if common.query_int("sweep") != sweep_id:
        st.query_params["sweep"] = str(sweep_id)
    return sweep_id


def verdict_cell(verdict: dict | None) -> str:
    """A trial's verdict in words, plain text (a one-seed trial is "inconclusive — run N more
    seeds", never coloured); empty before its pair finished."""
    return verdicts.verdict_words(verdict) if verdict else ""


def trials_table(rows: list[dict], params: list[str], found: dict):
    """One row per trial; `found`: {trial number: its verdict} (records.trial_verdicts)."""
    table = [
        {
            "trial": r["number"],
            "state": r["state"],
            **{name: r["params"].get(name) for name in params},
            "objective": r["value"],
            "bf16 val": r["bf16_val_accuracy"],
            "fp8 val": r["fp8_val_accuracy"],
            "fp8 − bf16": r["fp8_minus_bf16"],
            "bf16 test": r["bf16_test_accuracy"],
            "fp8 test": r["fp8_test_accuracy"],
            "verdict (test, over seeds)": verdict_cell(found.get(r["number"])),
            "comparison": r["comparison_id"],
            "why": r["reason"] or "",
        }
        for r in rows
    ]
    percent = st.column_config.NumberColumn(format="percent")
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={
            "bf16 val": percent,
            "fp8 val": percent,
            "fp8 − bf16": percent,
            "bf16 test": percent,
            "fp8 test": percent,
            "objective": st.column_config.NumberColumn(format="%.4f"),
            "comparison": st.column_config.NumberColumn(format="#%d"),
        },
    )


def signature(rows) -> tuple:
    """What the figures show: each trial's state and validation accuracies."""
    return tuple(
        (r["number"], r["state"], r["bf16_val_accuracy"], r["fp8_val_accuracy"]) for r in rows
    )


def trials_view(store, sweep_id: int, params: list[str], refreshing: bool):
    """The trials table and the runs training now; redraws the page when the figures would
    change (a trial reported an epoch, ended or was asked) or the sweep ended."""
    rows = sweep.trial_rows(store, sweep_id)
    state = store.sweep(sweep_id)["state"]
    if refreshing and (
        signature(rows) != st.session_state.get("sweep_signature") or state != "running"
    ):
        st.rerun()
    trials_table(rows, params, records.trial_verdicts(store, rows))
    for run in sweep.active_runs(store, sweep_id):
        what = common.progress_text(run) if run["status"] == "running" else "waiting"
        st.caption(
            f"{common.STATUS_ICONS.get(run['status'], '')} #{run['comparison_id']} "
            f"**{run['precision']}** — {what}"
        )


@st.cache_resource(max_entries=64, show_spinner=False, ttl=600)
def optuna_figures(_store, home: str, sweep_id: int, told: tuple, objective: str) -> dict:
    """Optuna's figures of the sweep, built once per set of told trials and shared by every
    session (fANOVA importances take a moment): {kind: (figure or None, reason)}."""
    study = sweep.study(_store, sweep_id)
    title = sweep_charts.objective_title(objective)
    return {
        kind: sweep_charts.optuna_figure(study, kind, title) for kind in sweep_charts.OPTUNA_FIGURES
    }


def paired_section(rows, space: dict):
    """The paired figure against one swept setting; a click on a marker picks its trial."""
    names = list(space)
    param = names[0]
    if len(names) > 1:
        keep("sweep_paired_param", names)
        param = st.selectbox("Against", names, key="sweep_paired_param")
    fig = sweep_charts.paired_figure(rows, param, log_x=space[param].log)
    event = st.plotly_chart(
        fig,
        key="sweep-paired",
        config=PLOTLY_CONFIG,
        width="stretch",
        on_select="rerun",
        selection_mode="points",
    )
    points = (event or {}).get("selection", {}).get("points", [])
    clicked = next((p["customdata"] for p in points if p.get("customdata") is not None), None)
    if clicked is not None and clicked != st.session_state.get("_sweep_clicked"):
        st.session_state["_sweep_clicked"] = clicked
        st.session_state["sweep_trial"] = clicked  # the trial picker below follows the click


def heatmap_section(rows, space: dict):
    names = list(space)
    if len(names) < 2:
        st.caption("The fp8 − bf16 heatmap needs a sweep over two settings or more.")
        return
    for key, first in (("sweep_heat_x", names[0]), ("sweep_heat_y", names[1])):
        if st.session_state.get(key) not in names:
            st.session_state[key] = first
        keep(key, names)
    c = st.columns(2)
    x = c[0].selectbox("Heatmap x", names, key="sweep_heat_x")
    y = c[1].selectbox("Heatmap y", names, key="sweep_heat_y")
    if x == y:
        st.caption("Choose two different settings for the heatmap.")
        return
    fig = sweep_charts.difference_heatmap(rows, x, y, x_log=space[x].log, y_log=space[y].log)
    common.plot(fig, key="sweep-heatmap")


def optuna_section(store, record: dict, rows):
    told = tuple(
        (r["number"], r["state"], r["value"])
        for r in rows
        if r["state"] in ("complete", "pruned", "failed")
    )
    figures = optuna_figures(store, str(store.home), record["id"], told, record["objective"])
    tabs = st.tabs([title for title, _ in sweep_charts.OPTUNA_FIGURES.values()])
    for tab, (kind, (fig, reason)) in zip(tabs, figures.items()):
        with tab:
            if fig is None:
                st.caption(f"{sweep_charts.OPTUNA_FIGURES[kind][0]}: {reason}")
            else:
                common.plot(fig, key=f"sweep-optuna-{kind}")


def trial_links(rows, best: int | None):
    """Pick a trial (or click it in the paired figure): links to its comparison's pages."""
    trials = [r for r in rows if r["comparison_id"] is not None]
    if not trials:
        st.caption("No trial has a comparison yet.")
        return
    by_number = {r["number"]: r for r in trials}
    numbers = list(by_number)
    if st.session_state.get("sweep_trial") not in numbers:
        st.session_state["sweep_trial"] = best if best in numbers else numbers[-1]
    keep("sweep_trial", numbers)
    c = st.columns([2, 1, 1, 1, 1], vertical_alignment="bottom")
    number = c[0].selectbox(
        "Trial",
        numbers,
        key="sweep_trial",
        format_func=lambda n: (
            f"trial {n} · {by_number[n]['state']} · comparison #{by_number[n]['comparison_id']}"
        ),
    )
    cid = str(by_number[number]["comparison_id"])
    for col, (path, title, icon) in zip(c[1:], TRIAL_PAGES):
        col.page_link(path, label=title, icon=icon, query_params={"comparison": cid})


def best_verdict(store, row: dict):
    """The best trial's fp8 − bf16 verdict over the seeds its settings have, and what a
    decision needs: one trial is one seed, so a sweep's best is a lead, not a finding."""
    verdict = records.trial_verdicts(store, [row])[row["number"]]
    if verdict is None:
        return
    line = verdicts.verdict_line(verdict)
    st.markdown(f"{common.VERDICT_ICONS[verdict['verdict']]} Its verdict on the test split: {line}")
    if verdict["verdict"] == "inconclusive":
        more = verdict.get("more_seeds")
        need = f"about {more} more seed{'s' if more != 1 else ''}" if more else "many more seeds"
        st.caption(
            f"A decision needs {need} of these settings (estimated from the spread seen): "
            "pick the trial below, open Results and repeat it over more seeds."
        )


def cancel(store, sweep_id):
    try:
        sweep.cancel_sweep(store, sweep_id)
        st.toast("Sweep cancelled: its running trials stop at their next step.")
    except StoreError as e:
        st.toast(str(e))


def resume(store, sweep_id):
    try:
        sweep.resume_sweep(store, sweep_id)
        st.toast("Sweep resumed: new trials are asked until it has its number of trials.")
    except StoreError as e:
        st.toast(str(e))


def sweep_view(store, listed: dict):
    record = store.sweep(listed["id"])
    space = sweep.parse_space(record["space"])
    state = record["state"]
    st.markdown(
        f"{STATE_ICONS.get(state, '')} **{state}** · searching "
        + ", ".join(f"`{name}={param.spec}`" for name, param in space.items())
        + f" · {record['sampler']} sampler · pruning {'on' if record['prune'] else 'off'}"
    )
    fixed = {k: v for k, v in record["config"].differences().items() if k not in space}
    st.caption(
        "Fixed settings: "
        + (", ".join(f"{k}={to_text(v)}" for k, v in fixed.items()) or "Keras example")
    )
    if record["error"]:
        st.error(record["error"])
    allowed = common.can_control()
    c = st.columns([1, 1, 6])
    c[0].button(
        "Cancel sweep",
        key="cancel_sweep",
        on_click=cancel,
        args=(store, record["id"]),
        disabled=state != "running" or not allowed,
        help=common.LOCKED_HELP if not allowed else "Stop its trials; no new one is asked.",
    )
    c[1].button(
        "Resume sweep",
        key="resume_sweep",
        on_click=resume,
        args=(store, record["id"]),
        disabled=state in ("running", "complete") or not allowed,
        help=common.LOCKED_HELP
        if not allowed
        else "Go on asking trials until the sweep has its number of trials.",
    )
    rows = sweep.trial_rows(store, record["id"])
    best = listed["best_trial"]
    if best is not None:
        row = next(r for r in rows if r["number"] == best)
        settings = ", ".join(f"{k}={sweep_charts.fmt_value(v)}" for k, v in row["params"].items())
        st.success(
            f"Best trial so far: **{best}**, {sweep_charts.objective_title(record['objective'])} "
            f"{listed['best_value']:.4f} with {settings} (comparison #{row['comparison_id']}).",
            icon=":material/trophy:",
        )
        best_verdict(store, row)
    refreshing = state == "running"
    st.session_state["sweep_signature"] = signature(rows)
    st.subheader("Trials")
    st.fragment(run_every=REFRESH_SECONDS if refreshing else None)(trials_view)(
        store, record["id"], list(space), refreshing
    )
    if not rows:
        return
    st.subheader("bf16 and fp8, trial by trial")
    paired_section(rows, space)
    trial_links(rows, best)
    heatmap_section(rows, space)
    st.subheader("Optuna's figures")
    optuna_section(store, record, rows)


# -- the page --------------------------------------------------------------------------

store = common.page_store()
st.title("Sweep")
st.caption(
    "Search training settings with Optuna: every trial trains one comparison of the fixed "
    "settings plus its own values, bf16 and fp8 on the same data and seed, so each trial "
    "says where fp8 matches bf16 and where it stops."
)
listed = sweep.sweeps(store)
if not listed:
    st.info(
        "No sweeps yet: pick settings to search under New sweep (lr over 1e-4:1e-2:log with "
        "a few trials on the Quick demo settings is a good first one) and launch it; its "
        "trials appear here as they train.",
        icon=":material/arrow_forward:",
    )
with st.expander("New sweep", expanded=not listed, icon=":material/add:"):
    new_sweep_form(store)
if not listed:
    st.stop()
sweep_id = pick_sweep(listed)
sweep_view(store, next(s for s in listed if s["id"] == sweep_id))
