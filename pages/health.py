"""FP8 health: is each float8 tensor's delayed scale keeping up with its values?

For every float8 layer and role (inputs, kernel, output gradient): headroom over time,
overflow events (steps whose amax exceeded what the delayed scale could represent, marked
on the amax heatmap) and a summary table flagging the tensors at risk. Computed from the
per-step amaxes in the run store, so it works live and for finished runs alike.
"""

import pandas as pd
import streamlit as st

from fp8demo import charts, fp8
from fp8demo.store import ROLES
from pages import common

REFRESH_SECONDS = 2.0


def health_view(store, run, refreshing):
    run = store.run(run["id"])
    if refreshing and run["status"] not in ("queued", "running"):
        st.rerun()
    layers = [layer["name"] for layer in run["summary"].get("fp8_layers", [])]
    steps, amax = store.fp8_amax(run["id"])
    if not layers or not len(steps):
        st.info("The statistics appear once the fp8 run has trained a few steps.")
        return
    history_length = run["config"].amax_history_length
    result = fp8.health(amax, history_length=history_length)
    rows = fp8.health_summary(amax, layers, history_length)
    at_risk = [r for r in rows if r["at risk"]]
    st.caption(f"{run['status']} · step {run['step']:,} · {len(layers)} float8 layers · "
               f"{len(at_risk)} of {len(rows)} tensors at risk")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                 column_config={"min headroom": st.column_config.NumberColumn(format="%.2f"),
                                "median headroom": st.column_config.NumberColumn(format="%.2f")})
    with st.expander("What the statistics mean", expanded=False):
        for name, text in fp8.HEALTH_HELP.items():
            st.markdown(f"- **{name}**: {text}.")
        st.markdown("- The scale in use at step t comes from the largest amax of steps up to t−2 "
                    f"(a window of {history_length} steps); the first two steps use 1.0.")
    tabs = st.tabs([charts.ROLE_TITLES[r] for r in ROLES])
    for j, role in enumerate(ROLES):
        with tabs[j]:
            common.plot(charts.headroom_figure(steps, result["headroom"][:, :, j], layers, role),
                        key=f"headroom-{role}")
            heatmap = charts.amax_heatmap(steps, amax[:, :, j], layers, role)
            common.plot(charts.mark_overflows(heatmap, steps, result["overflow"][:, :, j], layers),
                        key=f"health-amax-{role}")


store = common.page_store()
st.title("FP8 health")
st.caption("Delayed scaling uses past amaxes to pick each tensor's scale. When a tensor grows "
           "faster than its history, values beyond fmax × scale are clipped (overflow); when "
           "the headroom is very large, small values may underflow to zero.")
comparisons = [c for c in store.comparisons() if any(r["precision"] == "fp8" for r in c["runs"])]
if not comparisons:
    st.info("No comparison with an fp8 run yet. Launch one on the Train page.")
    st.stop()
cid = common.pick_comparison(comparisons, key="health_comparison",
                             preferred=common.query_int("comparison"))
comparison = next(c for c in comparisons if c["id"] == cid)
run = next(r for r in comparison["runs"] if r["precision"] == "fp8")
active = run["status"] in ("queued", "running")
paused = st.toggle("Pause", key="health_pause", disabled=not active)
refreshing = active and not paused
st.fragment(run_every=REFRESH_SECONDS if refreshing else None)(health_view)(store, run, refreshing)
