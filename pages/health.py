"""FP8 health: is each float8 tensor's delayed scale keeping up with its values?

For every float8 layer and role (inputs, kernel, output gradient): headroom over time,
overflow events (steps whose amax exceeded what the delayed scale could represent, marked
on the amax heatmap), saturation and underflow % of the actual values on a fixed probe
batch, and a summary table flagging the tensors at risk; then what the same probe tensors
would lose under other scaling recipes (recipes.py). Computed from the run store, so it
works live and for finished runs alike.

Every float8 run of a comparison can be looked at: fp8 (Keras' delayed scaling) and the
recipe precisions (fp8-current, mxfp8, ...). A recipe run keeps Keras' delayed-scaling
bookkeeping running beside its own recipe, so its page shows what delayed scaling would have
done to that run's tensors, and the recipe heatmap's column of its own recipe what it did.
"""

import dataclasses

import pandas as pd
import streamlit as st

from fp8demo import (
    block_scales,
    charts,
    fp8,
    fp8_charts,
    launcher,
    prescription,
    probe,
    recipes,
    records,
)
from fp8demo.config import FLOAT8_PRECISIONS, RECIPE_PRECISIONS, ConfigError
from fp8demo.fp8 import ROLES
from fp8demo.store import StoreError
from pages import common

REFRESH_SECONDS = 2.0


def health_view(store, run, refreshing):
    run = store.run(run["id"])
    if refreshing and run["status"] not in ("queued", "running"):
        st.rerun()
    health = records.health(store, run)
    if not health.layers or not len(health.amax_steps):
        st.info(f"The statistics appear once the {run['precision']} run has trained a few steps.")
        return
    summary_table(run, health)
    tensor_figures(health)
    recipe_section(store, run, health.layers)
    block_section(store, run, health.layers)
    bands_section(store, run, health)


def summary_table(run, health: records.Health):
    """One row per float8 tensor flagging those at risk, the dead ones in words, the probe."""
    rows = health.rows
    at_risk = [r for r in rows if r["at risk"]]
    kept = f" · kept in bf16: {', '.join(health.bf16_layers)}" if health.bf16_layers else ""
    st.caption(
        f"{run['status']} · step {run['step']:,} · {len(health.layers)} float8 layers · "
        f"{len(at_risk)} of {len(rows)} tensors at risk{kept}"
    )
    for sentence in fp8.dead_summary(rows):
        st.warning(sentence)
    percent = st.column_config.NumberColumn(format="%.3g")
    st.dataframe(
        pd.DataFrame(records.table_rows(health)),
        hide_index=True,
        width="stretch",
        placeholder="",  # a bf16 row has no float8 numbers: empty cells, not "None"
        column_config={
            "min headroom": st.column_config.NumberColumn(format="%.2f"),
            "median headroom": st.column_config.NumberColumn(format="%.2f"),
            "dead since": st.column_config.NumberColumn(format="%d"),
            **{f"{p}{s} %": percent for p in ("", "peak ") for s in ("saturation", "underflow")},
        },
    )
    probe_steps = health.probe_steps
    if len(probe_steps):
        st.caption(
            f"Probe: {len(probe_steps)} measurements on a fixed validation batch of "
            f"{run['config'].batch_size} reviews, every {run['config'].probe_every} steps "
            f"(latest at step {int(probe_steps[-1]):,})."
        )
    elif run["config"].probe_every == 0:
        st.caption("Saturation and underflow were not probed (probe every 0 steps).")
    if run["summary"].get("probe_error"):
        st.warning(f"The probe stopped (training went on): {run['summary']['probe_error']}")
    with st.expander("What the statistics mean", expanded=False):
        for name, text in fp8.HEALTH_HELP.items():
            st.markdown(f"- **{name}**: {text}.")
        st.markdown(
            "- The scale in use at step t comes from the largest amax of steps up to t−2 "
            f"(a window of {run['config'].amax_history_length} steps); the first two steps "
            "use 1.0."
        )


def tensor_figures(health: records.Health):
    """Per role: headroom lines, the probe's saturation and underflow, the amax heatmap with
    its overflows marked."""
    steps, layers, result = health.amax_steps, health.layers, health.result
    fixed_scale = common.fixed_scale_toggle("health_amax_fixed_scale")
    tabs = st.tabs([charts.ROLE_TITLES[r] for r in ROLES])
    for j, role in enumerate(ROLES):
        with tabs[j]:
            common.plot(
                fp8_charts.headroom_figure(steps, result["headroom"][:, :, j], layers, role),
                key=f"headroom-{role}",
            )
            if len(health.probe_steps):
                common.plot(
                    fp8_charts.probe_figure(
                        health.probe_steps, health.probe_stats[:, :, j], layers, role
                    ),
                    key=f"probe-{role}",
                )
            heatmap = charts.amax_heatmap(
                steps, health.amax[:, :, j], layers, role, fixed_scale=fixed_scale
            )
            common.plot(
                fp8_charts.mark_overflows(heatmap, steps, result["overflow"][:, :, j], layers),
                key=f"health-amax-{role}",
            )


def bands_section(store, run, health: records.Health):
    """Underflow bands over the probes, the five worst tensors boxed, and the suggested
    policy: the layers to keep in bf16, why, and a button comparing it with bf16 and fp8."""
    st.subheader("Underflow bands and a suggested policy")
    if not len(health.probe_steps):
        st.caption("The bands and the suggestion read the probe: they appear at its first step.")
        return
    text = st.text_input(
        "Band edges (% underflow)",
        ",".join(f"{edge:g}" for edge in prescription.BANDS),
        key="health_bands",
        help="Three increasing percentages: excellent below the first, warning up to the "
        "second, critical up to the third, severe above it (bionemo's bands by default).",
    )
    try:
        bands = prescription.parse_bands(text)
    except ConfigError as e:
        st.error(str(e))
        bands = prescription.BANDS
    worst = prescription.worst_tensors(
        health.layers, health.probe_steps, health.probe_stats, health.rows
    )
    st.caption(f"Bands: {prescription.band_words(bands)}; boxed: the {len(worst)} worst tensors.")
    common.plot(
        fp8_charts.underflow_bands_heatmap(
            health.probe_steps, health.probe_stats, health.layers, bands, worst
        ),
        key="underflow-bands",
    )
    suggestions = prescription.suggest(
        health.layers, health.probe_steps, health.probe_stats, health.rows, bands
    )
    for sentence in prescription.suggestion_words(suggestions, bands):
        st.markdown(f"- {sentence}")
    if suggestions:
        suggest_button(store, run, [s["layer"] for s in suggestions])
    st.caption(
        f"The rule: a layer stays in bf16 when one of its float8 tensors is dead, or severe at "
        f"each of its last {prescription.LAST_PROBES} probes (after the first two steps)."
    )


def suggest_button(store, run, layers):
    """Queue bf16 / the run's precision / that precision with `layers` in bf16."""
    precision = run["precision"]
    try:
        prescription.suggested_configs(run["config"], precision, layers)
    except ConfigError as e:
        st.info(f"Nothing to compare: {e}")
        return
    allowed = common.can_control()
    if st.button(
        f"Compare bf16 / {precision} / {precision} with these {len(layers)} layers in bf16",
        key="health_suggest",
        disabled=not allowed,
        help=common.LOCKED_HELP
        if not allowed
        else "Queue two comparisons over this run's settings under one label: bf16 and "
        f"{precision}, and {precision} with the suggested layers in bf16.",
    ):
        try:
            ids = prescription.launch_suggested(store, run, layers)
        except (ConfigError, StoreError) as e:
            st.error(str(e))
        else:
            # Kept for the refreshes of a live run, which redraw this part every 2 s.
            st.session_state[f"health_suggested_{run['id']}"] = ids
    if ids := st.session_state.get(f"health_suggested_{run['id']}"):
        st.success(
            f"Queued comparisons #{ids[0]} and #{ids[1]} as "
            f"“{prescription.launch_label(run)}”: Results lists them together."
        )


def what_this_run_records(run) -> str | None:
    """For a recipe run, what the page's numbers are (they are not what it scaled with)."""
    recipe = RECIPE_PRECISIONS.get(run["precision"])
    if recipe is None:
        return None
    return (
        f"This {run['precision']} run trained with the `{recipe}` recipe: "
        f"{recipes.RECIPE_HELP[recipe]}. It has no delayed scaling of its own, but Keras' "
        "delayed-scaling bookkeeping kept running beside the recipe, unused. So the amaxes "
        "(heatmaps, history) are this run's own tensors, while the scales, headroom, overflows, "
        "the probe's saturation and underflow and the at-risk flags below are what delayed "
        "scaling *would have* done to them. What this run applied is the "
        f"`{recipe}` column of the scaling recipes' heatmap further down."
    )


FIRST_GEMM = "each tensor's first GEMM"


def recipe_gemm_heatmap(store, run, layers, steps, names, stats):
    """The latest probe's recipe heatmap: every tensor in the first GEMM that uses it, or the
    two tensors of one chosen GEMM as that GEMM quantizes them (its own blocking axis)."""
    gemm = st.radio(
        "GEMM",
        (FIRST_GEMM, *recipes.GEMMS),
        horizontal=True,
        key="recipe_gemm",
        help="A linear layer runs three GEMMs: fprop X·W, dgrad dY·Wᵀ, wgrad Xᵀ·dY. Block "
        "recipes scale each operand along the axis its GEMM contracts, so a tensor's numbers "
        "differ between the two GEMMs that use it; per-tensor recipes quantize it the same.",
    )
    if gemm == FIRST_GEMM:
        figure = fp8_charts.recipe_heatmap(stats[-1], layers, names, steps[-1])
    else:
        second = store.fp8_recipes_second(run["id"], steps[-1:], names)
        if second is None:
            st.caption(
                "This run was recorded before the store kept each tensor's second GEMM: "
                "block recipes show only the tensors' first GEMM (blank cells)."
            )
        latest, roles = fp8_charts.gemm_operands(
            stats[-1], None if second is None else second[-1], names, gemm
        )
        figure = fp8_charts.recipe_heatmap(latest, layers, names, steps[-1], roles=roles, gemm=gemm)
    common.plot(figure, key="recipe-heatmap")


def recipe_section(store, run, layers):
    """The probe's tensors quantized under every scaling recipe: words, heatmap, lines."""
    st.subheader("Scaling recipes")
    steps, names, stats = store.fp8_recipes(run["id"])
    if not len(steps):
        st.caption(
            "No recipe statistics for this run: they are measured at each probe"
            + (" (the probe is off)." if run["config"].probe_every == 0 else ".")
        )
        return
    recipe = RECIPE_PRECISIONS.get(run["precision"])
    own = (
        f"delayed: the scales delayed scaling would have used; {recipe}: what this run applied"
        if recipe
        else "delayed: the run's own scales"
    )
    st.caption(
        f"The same probe tensors quantized as each recipe would ({own}). "
        "Colour: SNR in dB, higher is better; hover a cell for underflow and saturation."
    )
    for sentence in probe.recipe_summary(names, stats[-1], layers):
        st.markdown(f"- {sentence}")
    recipe_gemm_heatmap(store, run, layers, steps, names, stats)
    tensors = [(i, j) for i in range(len(layers)) for j in range(len(ROLES))]
    i, j = st.selectbox(
        "Tensor",
        tensors,
        format_func=lambda t: f"{layers[t[0]]} · {charts.ROLE_TITLES[ROLES[t[1]]]}",
        key="recipe_tensor",
    )
    tensor = f"{layers[i]} · {charts.ROLE_TITLES[ROLES[j]]}"
    common.plot(
        fp8_charts.recipe_probe_figure(steps, stats[:, i, j], names, tensor), key="recipe-lines"
    )
    with st.expander("The recipes and the statistics", expanded=False):
        for name in names:
            st.markdown(f"- **{name}**: {recipes.RECIPE_HELP.get(name, '')}.")
        for name, text in recipes.STATISTICS_HELP.items():
            st.markdown(f"- **{name}**: {text}.")


def block_section(store, run, layers):
    """The block recipes' block scales at the latest probe: the histogram of one tensor's
    scales in one GEMM under one recipe, its worst blocks, and the worst block of every tensor."""
    st.subheader("Block scales")
    rows = store.fp8_blocks(run["id"])
    if not rows:
        st.caption(
            "No block scales for this run: they are measured at each probe"
            + (
                " (the probe is off)."
                if run["config"].probe_every == 0
                else " of runs with block scales on (Train › Advanced; auto, the default, "
                "measures them in fp8-block128, mxfp8 and nvfp4 runs)."
            )
        )
        return
    st.caption(
        "Block recipes give every block of values its own scale along the axis the GEMM "
        "contracts. The spread of those scales and the blocks that lose most (lowest SNR) "
        "show where a block recipe struggles."
    )
    c = st.columns(3)
    layer, role = c[0].selectbox(
        "Tensor",
        [(name, role) for name in layers for role in ROLES],
        format_func=lambda t: f"{t[0]} · {charts.ROLE_TITLES[t[1]]}",
        key="block_tensor",
    )
    gemms = recipes.ROLE_GEMMS[role]
    chosen = st.session_state.get("recipe_gemm")  # the what-if's GEMM, when this tensor feeds it
    follow = chosen if chosen in gemms else "first"
    gemm = c[1].radio(
        "GEMM",
        gemms,
        index=gemms.index(chosen) if chosen in gemms else 0,
        horizontal=True,
        # Keyed by the what-if's GEMM too: a widget keeps its first index, and this one
        # follows the what-if's choice whenever that changes.
        key=f"block_gemm_{role}_{follow}",
        help="The two GEMMs this tensor feeds; each blocks it along its own contraction axis.",
    )
    names = [n for n in block_scales.BLOCK_RECIPES if any(r["recipe"] == n for r in rows)]
    own = RECIPE_PRECISIONS.get(run["precision"])  # the run's own recipe first, if it has blocks
    recipe = c[2].selectbox(
        "Recipe", names, index=names.index(own) if own in names else 0, key="block_recipe"
    )
    st.caption(f"At the limit, for {recipe}: {block_scales.LIMIT_HELP[recipe]}.")
    tensor = f"{layer} · {charts.ROLE_TITLES[role]}"
    row = next(
        (
            r
            for r in rows
            if (r["layer"], r["role"], r["gemm"], r["recipe"]) == (layer, role, gemm, recipe)
        ),
        None,
    )
    if row is None:
        st.caption(f"No block scales of {tensor} in {gemm} under {recipe} at this probe.")
    else:
        common.plot(
            fp8_charts.block_scale_histogram(
                row["details"]["histogram"], recipe, tensor, row["step"]
            ),
            key="block-scales",
        )
        if row["details"]["worst"]:
            st.markdown(f"**Worst blocks of {tensor} in {gemm}**")
            st.table(pd.DataFrame(worst_block_rows([row])))
        else:
            st.caption(f"Every block of {tensor} in {gemm} quantizes exactly under {recipe}.")
    with st.expander(f"The worst block of every tensor under {recipe}", expanded=False):
        same = [r for r in rows if r["recipe"] == recipe and r["details"]["worst"]]
        same.sort(key=lambda r: r["details"]["worst"][0][2])
        st.table(pd.DataFrame(worst_block_rows(same, first_only=True)))


def worst_block_rows(rows, first_only: bool = False) -> list[dict]:
    """Table rows naming the worst blocks of stored block rows: tensor, GEMM, block, SNR."""
    table = []
    for r in rows:
        for block_row, block_column, snr in r["details"]["worst"][: 1 if first_only else None]:
            table.append(
                {
                    "tensor": f"{r['layer']} · {charts.ROLE_TITLES[r['role']]}",
                    "GEMM": r["gemm"],
                    "block": block_scales.block_words(
                        r["recipe"], r["role"], (block_row, block_column)
                    ),
                    "SNR dB": round(snr, 1),
                    "limit %": None if r["limit_share"] is None else 100 * r["limit_share"],
                }
            )
    return table


def same_but_history(a, b) -> bool:
    """Configs that differ at most in the history length (and which precisions ran)."""
    return set(a.differences(b)) <= {"amax_history_length", "precisions", "probe_every"}


def history_section(store, run):
    """What the delayed-scaling window does: replayed on this run, and measured on others."""
    st.subheader("Amax history length")
    if run["precision"] in RECIPE_PRECISIONS:
        st.caption(
            f"The history length matters to delayed scaling only: this {run['precision']} "
            "run's recipe scales every tensor from its current values. Pick the comparison's "
            "fp8 run (or train one) to see what the window does."
        )
        return
    layers = records.float8_layer_names(run)
    steps, amax = store.fp8_amax(run["id"])
    if not layers or not len(steps):
        return
    role = st.radio(
        "Tensor", ROLES, format_func=charts.ROLE_TITLES.get, horizontal=True, key="history_role"
    )
    replayed(run, steps, amax, layers, role)
    measured(store, run, layers, role)
    train_again(store, run)


def replayed(run, steps, amax, layers, role):
    """This run's amaxes under other windows: a table, and its headroom recorded and replayed."""
    own = run["config"].amax_history_length
    j = ROLES.index(role)
    lengths = sorted(set(fp8.HISTORY_LENGTHS) | {own})
    st.markdown(
        f"**Replayed** — this run's amaxes under other windows (it trained with "
        f"{own}). The amaxes barely depend on the window, so this shows at once what "
        "another length does to the scales: short windows follow each tensor closely "
        "and clip when it grows; long windows remember old peaks, so small values "
        "underflow sooner."
    )
    rows = [
        {**r, "this run": r["history length"] == own}
        for r in fp8.history_length_effect(amax, lengths, roles=ROLES)
        if r["role"] == role
    ]
    st.dataframe(
        pd.DataFrame(rows).drop(columns="role"),
        hide_index=True,
        width="stretch",
        column_config={
            "overflow %": st.column_config.NumberColumn(format="%.3f"),
            "median headroom": st.column_config.NumberColumn(format="%.2f"),
            "max headroom": st.column_config.NumberColumn(format="%.2f"),
        },
    )
    other = st.select_slider(
        "Replay with history length",
        [n for n in lengths if n != own],
        value=16 if own != 16 else 1024,
        key="history_replay",
    )
    for length, kind in ((own, "recorded"), (other, "replayed")):
        headroom = fp8.health(amax, history_length=length)["headroom"][:, :, j]
        common.plot(
            fp8_charts.headroom_heatmap(
                steps,
                headroom,
                layers,
                f"Headroom of {charts.ROLE_TITLES[role]}, window {length} ({kind})",
                uirevision=f"history-{kind}-{role}",
            ),
            key=f"history-{kind}-{role}",
        )


def measured(store, run, layers, role):
    """The headroom of fp8 runs with the same settings but another window (the last three)."""
    j = ROLES.index(role)
    siblings = [
        r
        for r in store.runs()
        if r["precision"] == "fp8"
        and r["id"] != run["id"]
        and r["status"] != "queued"
        and same_but_history(r["config"], run["config"])
    ]
    st.markdown("**Measured** — fp8 runs with the same settings but another history length.")
    for sibling in siblings[-3:]:
        s_steps, s_amax = store.fp8_amax(sibling["id"])
        if not len(s_steps):
            continue
        length = sibling["config"].amax_history_length
        result = fp8.health(s_amax, history_length=length)
        st.caption(
            f"Run #{sibling['id']} ({sibling['status']}): window {length}, "
            f"{int(result['overflow_count'][:, j].sum())} overflows of "
            f"{charts.ROLE_TITLES[role]}"
        )
        common.plot(
            fp8_charts.headroom_heatmap(
                s_steps,
                result["headroom"][:, :, j],
                layers,
                f"Headroom of {charts.ROLE_TITLES[role]}, window {length} (run #{sibling['id']})",
                uirevision=f"history-run-{sibling['id']}-{role}",
            ),
            key=f"history-run-{sibling['id']}",
        )
    if not siblings:
        st.caption("None yet.")


def train_again(store, run):
    """Queue the run's fp8 side again under another window (no bf16 run)."""
    own = run["config"].amax_history_length
    allowed = common.can_control()
    c = st.columns([1, 2])
    length = c[0].number_input(
        "History length", min_value=1, max_value=65536, value=16, key="history_train_length"
    )
    c[1].write("")
    if c[1].button(
        f"Train fp8 again with history length {length}",
        key="history_train",
        disabled=not allowed or length == own,
        help=common.LOCKED_HELP
        if not allowed
        else "Queue an fp8 run with these settings and this window (no bf16 run).",
    ):
        config = dataclasses.replace(
            run["config"], amax_history_length=int(length), precisions=("fp8",)
        )
        try:
            cid = launcher.launch(config, store=store, label=f"amax history {length}")
        except (ConfigError, StoreError) as e:
            st.error(str(e))
        else:
            st.success(f"Queued as comparison #{cid}; it appears here once it trains.")


store = common.page_store()
st.title("FP8 health")
st.caption(
    "Delayed scaling uses past amaxes to pick each tensor's scale. When a tensor grows "
    "faster than its history, values beyond fmax × scale are clipped (overflow); when "
    "the headroom is very large, small values may underflow to zero."
)
comparisons = [
    c for c in store.comparisons() if any(r["precision"] in FLOAT8_PRECISIONS for r in c["runs"])
]
if not comparisons:
    common.next_step(
        "No fp8 run yet: launch a comparison on Train with fp8 among its precisions (it is "
        f"by default; {common.QUICK_DEMO_HINT}). Its float8 statistics appear here as it "
        "trains."
    )
    st.stop()
cid = common.pick_comparison(
    comparisons, key="health_comparison", preferred=common.query_int("comparison")
)
comparison = next(c for c in comparisons if c["id"] == cid)
candidates = [r for r in comparison["runs"] if r["precision"] in FLOAT8_PRECISIONS]
default = next((k for k, r in enumerate(candidates) if r["precision"] == "fp8"), 0)
if len(candidates) > 1:
    precision = st.radio(
        "float8 run",
        [r["precision"] for r in candidates],
        index=default,
        horizontal=True,
        key="health_run",
        help="Every float8 run of the comparison: fp8 (Keras' delayed scaling) and the "
        "scaling recipes it trained with.",
    )
    run = next(r for r in candidates if r["precision"] == precision)
else:
    run = candidates[default]
note = what_this_run_records(run)
if note:
    st.info(note)
active = run["status"] in ("queued", "running")
paused = st.toggle("Pause", key="health_pause", disabled=not active)
refreshing = active and not paused
st.fragment(run_every=REFRESH_SECONDS if refreshing else None)(health_view)(store, run, refreshing)
history_section(store, store.run(run["id"]))
