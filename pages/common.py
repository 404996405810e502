"""Helpers every dashboard page shares: the cached store, the device, formatting, the shell.

Not a page itself: app.py lists the pages explicitly with st.navigation, so Streamlit does
not pick files in pages/ up on its own. Heavy modules (keras, jax) are only imported inside
cached functions, so a page's first paint stays fast.
"""

import collections
import hmac
import importlib.metadata
import os
import time

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager
from streamlit.runtime.scriptrunner import get_script_run_ctx

import fp8demo
from fp8demo import access, device, launcher
from fp8demo.paths import default_home, host_name
from fp8demo.store import ACTIVE, Store, StoreError

# Material icons render in markdown everywhere (emoji fonts are not everywhere).
STATUS_ICONS = {
    "queued": ":material/schedule:",
    "running": ":material/play_circle:",
    "finished": ":material/check_circle:",
    "failed": ":material/error:",
    "cancelled": ":material/stop_circle:",
    "interrupted": ":material/warning:",
}
# fp8 vs bf16 verdicts (fp8demo.verdicts), on Results and Sweep: neutral icons, a verdict is
# never drawn red or green.
VERDICT_ICONS = {
    "equivalent": ":material/check_circle:",
    "better": ":material/arrow_upward:",
    "worse": ":material/arrow_downward:",
    "inconclusive": ":material/help:",
}


# -- page setup ---------------------------------------------------------------------------


PAGES = [  # (script, title, icon); the first is the default page
    ("pages/train.py", "Train", ":material/rocket_launch:"),
    ("pages/live.py", "Live", ":material/monitoring:"),
    ("pages/results.py", "Results", ":material/table_chart:"),
    ("pages/health.py", "FP8 health", ":material/health_and_safety:"),
    ("pages/predict.py", "Predict", ":material/chat:"),
    ("pages/sweep.py", "Sweep", ":material/tune:"),
]


def start_app():
    """What app.py does on every run: page config, navigation, sidebar shell.

    Returns the st.Page the user asked for; the caller runs it.
    """
    st.set_page_config(page_title="FP8 training, live", page_icon=":material/speed:", layout="wide")
    page = st.navigation(
        [
            st.Page(path, title=title, icon=icon, default=(i == 0))
            for i, (path, title, icon) in enumerate(PAGES)
        ]
    )
    sidebar_shell(get_store())
    return page


def require_navigation():
    """Call first on every page: make sure app.py's navigation and sidebar shell are there.

    Streamlit 1.67 decides per server process whether an app uses the old pages/ folder
    mode, until some script calls st.navigation: a fresh server's first request for /live
    runs pages/live.py directly, listing every file of pages/ as a page and skipping
    app.py. Here the page then sets up app.py's navigation itself (which switches the
    process over for good) and carries on; a rerun instead would drop a pending click.
    """
    if PagesManager.uses_pages_directory:
        start_app()


def page_store() -> Store:
    """What every page does first: navigation in charge, the store, its supervisor asked for
    (it reaps dead runs, advances sweeps and restarts workers; a page never does)."""
    require_navigation()
    store = get_store()
    launcher.ensure_supervisor(store)
    return store


def run_metrics(store: Store, runs) -> dict:
    """{run id: (step metrics, epoch metrics)}, read once for all the charts of a refresh."""
    return {r["id"]: (store.step_metrics(r["id"]), store.epoch_metrics(r["id"])) for r in runs}


# -- shared resources ---------------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def _open_store(home: str) -> Store:
    """One Store per home folder, shared by every session of this server."""
    return Store(home)


def get_store() -> Store:
    """The run store under FP8DEMO_HOME (one handle per home per server process)."""
    try:
        return _open_store(str(default_home()))
    except StoreError as e:
        st.error(str(e))
        st.stop()


@st.cache_resource(show_spinner=False)
def _live_sessions() -> dict:
    """Session id → when it last refreshed a live view (shared by the server's sessions)."""
    return {}


def count_viewers(window: float = 10.0) -> int:
    """Sessions that refreshed a live view in the last `window` seconds, this one included."""
    ctx, now, seen = get_script_run_ctx(), time.time(), _live_sessions()
    if ctx is not None:
        seen[ctx.session_id] = now
    for session, last in list(seen.items()):
        if now - last > window:
            seen.pop(session, None)
    return max(len(seen), 1)


@st.cache_resource(show_spinner="Looking for an accelerator…")
def device_info() -> dict:
    """fp8demo.device.describe(), once per server (it imports jax)."""
    try:
        return device.describe()
    except Exception as e:  # the dashboard must still open without a working jax
        return dict(
            platform="unknown",
            name="unknown",
            fp8_capable=False,
            label="unknown",
            text=f"Could not query the device: {e}",
        )


def device_text(info: dict) -> str:
    """The device in plain words, with what it means for fp8."""
    if info.get("text"):
        return info["text"]
    if info.get("platform") == "gpu":
        return f"{info['name']} — " + (
            "has fp8 tensor cores"
            if info.get("fp8_capable")
            else "no fp8 tensor cores; fp8 is emulated"
        )
    return "CPU only — fp8 is emulated and slower; use a subset for a quick demo"


def versions() -> dict:
    """Installed versions, from package metadata (no heavy imports)."""
    out = {}
    for name in ("fp8demo", "keras", "jax"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = fp8demo.__version__ if name == "fp8demo" else "not installed"
    return out


# -- formatting ---------------------------------------------------------------------------


def widget_value(field: str, value):
    """A TrainConfig value as its settings widget holds it (precisions: a multiselect's list)."""
    return list(value) if field == "precisions" else value


def fmt_seconds(seconds) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def fmt_number(value, spec=",.0f", missing="–") -> str:
    return missing if value is None else format(value, spec)


def fmt_pct(value) -> str:
    return "–" if value is None else f"{value:.2%}"


def fmt_settings(config) -> str:
    """The settings that differ from the Keras example, e.g. 'epochs=1, subset=2000'."""
    diff = config.differences()
    if not diff:
        return "Keras example"
    return ", ".join(f"{k}={'+'.join(v) if isinstance(v, list) else v}" for k, v in diff.items())


def comparison_status(comparison) -> str:
    return ", ".join(f"{r['precision']} {r['status']}" for r in comparison["runs"])


def comparison_label(comparison, with_status: bool = True) -> str:
    when = time.strftime("%b %d %H:%M", time.localtime(comparison["created_at"]))
    label = f" “{comparison['label']}”" if comparison.get("label") else ""
    precisions = " vs ".join(r["precision"] for r in comparison["runs"])
    text = f"#{comparison['id']}{label} · {precisions} · {when}"
    return f"{text} · {comparison_status(comparison)}" if with_status else text


def is_active(comparison) -> bool:
    return any(r["status"] in ACTIVE for r in comparison["runs"])


def progress_text(run) -> str:
    """'epoch 2/3 · step 1,200/1,875 · 41.3 steps/s · ETA 16 s' for a run in flight."""
    config = run["config"]
    parts = [f"epoch {min(run['epoch'] + 1, config.epochs)}/{config.epochs}"]
    total = run.get("total_steps")
    parts.append(f"step {run['step']:,}/{total:,}" if total else f"step {run['step']:,}")
    if run.get("steps_per_sec"):
        parts.append(f"{run['steps_per_sec']:.1f} steps/s")
    if run.get("eta") is not None:
        parts.append(f"ETA {fmt_seconds(run['eta'])}")
    return " · ".join(parts)


def pick_comparison(comparisons, key, label="Comparison", preferred=None, with_status=True):
    """A selectbox over comparisons (newest first); returns the chosen comparison id.

    `preferred` (an id) is selected on first display, e.g. the comparison just launched.
    """
    ids = [c["id"] for c in comparisons]
    by_id = {c["id"]: c for c in comparisons}
    index = ids.index(preferred) if preferred in ids else 0
    return st.selectbox(
        label,
        ids,
        index=index,
        key=key,
        format_func=lambda cid: comparison_label(by_id[cid], with_status),
    )


def query_int(name):
    """An integer query parameter, or None when missing or not a number."""
    try:
        return int(st.query_params.get(name, ""))
    except ValueError:
        return None


QUICK_DEMO_HINT = "the “Quick demo” preset takes about a minute"


def next_step(text: str, page: str = "pages/train.py", query_params=None):
    """What a page with nothing to show yet says: the next step, and a link to take it."""
    st.info(text, icon=":material/arrow_forward:")
    path, title, icon = next(entry for entry in PAGES if entry[0] == page)
    st.page_link(path, label=f"Go to {title}", icon=icon, query_params=query_params)


def fixed_scale_toggle(key: str) -> bool:
    """The amax heatmaps' choice: each role's own colour range, or one fixed range for all."""
    return st.toggle(
        "Fixed amax scale (−16…16, for comparing runs)",
        key=key,
        help="Colour every amax heatmap on the same log2 range, 2^-16 to 2^16, so a colour "
        "means the same amax in every role and run. Off: each role's colours span its own "
        "values.",
    )


def plot(fig, key=None):
    """st.plotly_chart with the dashboard's modebar settings (PNG export kept)."""
    from fp8demo.charts import PLOTLY_CONFIG  # lazy: plotly loads in about a second

    st.plotly_chart(fig, key=key, config=PLOTLY_CONFIG, width="stretch")


# -- who may launch, stop and delete -----------------------------------------------------


def control_password() -> str:
    """The password protecting launch/stop/delete: FP8DEMO_PASSWORD or st.secrets; '' = none."""
    try:
        secret = st.secrets.get("FP8DEMO_PASSWORD", "")
    except Exception:  # no secrets.toml: the usual local case
        secret = ""
    return os.environ.get("FP8DEMO_PASSWORD") or secret or ""


LOCKED_HELP = (
    "This server is a shared demo: launching, stopping and deleting runs need the "
    "password (sidebar). Watching and predicting stay open."
)


def can_control() -> bool:
    """True when this viewer (browser tab) may launch, stop and delete runs."""
    return not control_password() or st.session_state.get("_unlocked", False)


def launch_button(label: str, key: str, problems: list[str], ready_help: str) -> bool:
    """A page's primary Launch button: True when clicked. Disabled while the settings have
    problems (shown by the page) or the controls are locked, and it says which."""
    allowed = can_control()
    if not allowed:
        st.info(LOCKED_HELP, icon=":material/lock:")
    return st.button(
        label,
        key=key,
        type="primary",
        disabled=bool(problems) or not allowed,
        help="Fix the settings above first."
        if problems
        else LOCKED_HELP
        if not allowed
        else ready_help,
    )


def password_box():
    """In the sidebar when a password is set: unlocks the controls for this viewer (browser tab).

    Each wrong password in a row is answered later than the last (fp8demo.access), so the
    password cannot be guessed quickly; only a newly typed one counts, not a rerun.
    """
    password = control_password()
    if not password:
        return
    if st.session_state.get("_unlocked"):
        st.caption(":material/lock_open: Controls unlocked in this browser tab.")
        return
    typed = st.text_input(
        "Password (to launch or stop runs)",
        type="password",
        key="password",
        on_change=lambda: st.session_state.update(_password_typed=True),
    )
    if not typed:
        return
    if hmac.compare_digest(typed.encode(), password.encode()):
        st.session_state["_unlocked"] = True
        st.session_state.pop("_password_failures", None)
        st.rerun()
    if st.session_state.pop("_password_typed", False):
        failures = st.session_state.get("_password_failures", 0) + 1
        st.session_state["_password_failures"] = failures
        address = st.context.ip_address  # None for localhost (and a stand-in under AppTest)
        delay = access.record_wrong_password(failures, address if isinstance(address, str) else "")
        with st.spinner("Checking the password …"):
            time.sleep(delay)
    st.error("Wrong password.")


# -- the shell every page shares -----------------------------------------------------------


def sidebar_shell(store: Store):
    """Title, device, versions and the training queue, in the sidebar."""
    with st.sidebar:
        st.markdown("### FP8 training, live")
        st.caption(
            "A small Transformer on IMDB reviews, trained in bf16 and fp8 side by side "
            "(after the Keras example *Float8 training and inference*)."
        )
        info = device_info()
        text = device_text(info)
        (st.success if info.get("fp8_capable") else st.info)(text, icon=":material/memory:")
        st.caption(" · ".join(f"{name} {version}" for name, version in versions().items()))
        password_box()
        st.markdown("**Queue**")
        _queue_fragment(store)


def queue_panel(store: Store):
    """What is training and what waits; refreshes itself every 2 s while anything is queued."""
    launcher.ensure_supervisor(store)  # a dead training process must not stay "running" here
    queue = store.queue()
    if not queue:
        st.caption("Nothing training or waiting.")
    here = host_name()
    for run in queue:
        icon = STATUS_ICONS.get(run["status"], "")
        detail = run["phase"] if run["status"] == "running" else "waiting"
        if run["status"] == "running" and run.get("host") not in (None, here):
            detail += f" (on {run['host']})"
        st.caption(f"{icon} #{run['comparison_id']} **{run['precision']}** — {detail}")
    pids = _worker_pids(store)
    if queue:
        alive = f"{len(pids)} training processes" if len(pids) > 1 else "training process"
        listed = ", ".join(str(pid) for pid in pids.values())
        st.caption(f"{alive} alive, pid {listed}" if pids else "Starting the training process…")
    # A shared store: the workers of the other hosts, as their heartbeats say.
    elsewhere = collections.Counter(w["host"] for w in _live_workers(store) if w["host"] != here)
    if elsewhere:
        listed = ", ".join(f"{host} ×{n}" for host, n in sorted(elsewhere.items()))
        st.caption(f":material/dns: Workers on other hosts: {listed}")
    if bool(queue) != st.session_state.get("_queue_refreshing", False):
        st.session_state["_queue_refreshing"] = bool(queue)
        st.rerun()  # switch the timer on or off


def _queue_fragment(store: Store):
    every = 2.0 if st.session_state.get("_queue_refreshing") else None
    st.fragment(run_every=every)(queue_panel)(store)


def _live_workers(store) -> list[dict]:
    try:
        return store.live_workers()
    except Exception:  # a store being migrated or busy: the sidebar shows the rest
        return []


def _worker_pids(store) -> dict:
    try:
        return launcher.worker_pids(store)
    except Exception:
        return {}
