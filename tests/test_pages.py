"""The dashboard pages, run in-process with Streamlit's AppTest.

Two kinds of store: one written by the engine itself (the session's `trained` fixture: a
finished bf16 + fp8 subset comparison with real weights), and hand-filled stores written
through the same Store methods the training process uses, for states that are slow or
awkward to reach for real (a run in flight, a failed run, several comparisons).
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from conftest import backend, copy_home
from streamlit.testing.v1 import AppTest

from fp8demo import charts, compiled
from fp8demo.config import PRESETS, TrainConfig, preset
from fp8demo.store import Store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = list(TrainConfig.__dataclass_fields__)
FP8_LAYERS = [
    "decoder/self_attention/query",
    "decoder/self_attention/key",
    "decoder/feedforward_output_dense",
    "classifier",
]


def page(name, **query) -> AppTest:
    at = AppTest.from_file(os.path.join(ROOT, name), default_timeout=60)
    for k, v in query.items():
        at.query_params[k] = v
    return at


@pytest.fixture(autouse=True)
def clear_streamlit_caches():
    st.cache_resource.clear()
    st.cache_data.clear()
    yield
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture(autouse=True)
def supervisor_asked(monkeypatch) -> list:
    """Pages ask for the home's supervisor on every run (launcher.ensure_supervisor); here the
    homes of those calls are recorded and no process starts: a real supervisor would outlive
    the test and, once this session's worker lock is gone, train the stores' queued runs."""
    from fp8demo import launcher

    asked = []
    monkeypatch.setattr(launcher, "ensure_supervisor", lambda store, **_: asked.append(store.home))
    return asked


@pytest.fixture
def store_home(tmp_path, monkeypatch):
    """An empty run store in a temp FP8DEMO_HOME (its SQLite file: pages read PostgreSQL
    through the same Store, whose SQL test_store runs on both). Pages open it by Store()."""
    home = tmp_path / "home"
    monkeypatch.setenv("FP8DEMO_HOME", str(home))
    monkeypatch.delenv("FP8DEMO_STORE", raising=False)
    return home


def _train(store, run_id, steps=40, finish=True, seed=0):
    """Write what a training run writes: per-step and per-epoch metrics, fp8 state."""
    rng = np.random.default_rng(seed)
    run = store.run(run_id)
    store.update_run(
        run_id,
        phase="training",
        steps_per_epoch=steps // 2,
        total_steps=steps,
        device="CPU",
        params=123_456,
    )
    loss = np.linspace(0.7, 0.3, steps) + rng.normal(0, 0.02, steps)
    store.add_steps(
        run_id,
        [
            (s + 1, s // (steps // 2), 0.05 * (s + 1), loss[s], 1 - loss[s])
            for s in range(steps if finish else steps // 2)
        ],
    )
    store.add_epoch(run_id, 0, steps // 2, 0.6, 0.6, 0.55, 0.7)
    if run["precision"] == "fp8":
        layers = [
            {"name": n, "class": "Dense", "policy": "float8_from_mixed_bfloat16"}
            for n in FP8_LAYERS
        ]
        state = {
            n: {
                role: {"scale": 1.0, "amax_max": 0.0, "amax_nonzero": 0, "history_head": [0.0] * 8}
                for role in ("inputs", "kernel", "outputs_grad")
            }
            for n in FP8_LAYERS
        }
        store.merge_summary(run_id, fp8_layers=layers, fp8_before=state)
        amax = np.abs(rng.normal(1, 0.5, (steps // 2, len(FP8_LAYERS), 3))).astype(np.float32)
        amax[0] = 0.0  # the first step's history is still empty
        store.add_fp8_amax(run_id, 1, amax)
        for s in (1, 10, 20):
            store.add_fp8_scales(run_id, s, amax[min(s, len(amax) - 1)] / 448.0)
    if finish:
        store.add_epoch(run_id, 1, steps, 0.4, 0.8, 0.45, 0.78)
        if run["precision"] == "fp8":
            after = {
                n: {
                    role: {
                        "scale": 0.01,
                        "amax_max": 4.48,
                        "amax_nonzero": steps,
                        "history_head": [4.4, 4.48],
                    }
                    for role in ("inputs", "kernel", "outputs_grad")
                }
                for n in FP8_LAYERS
            }
            store.merge_summary(run_id, fp8_after=after)
        acc = 0.80 + 0.01 * seed
        store.end_run(
            run_id,
            "finished",
            test_loss=0.45,
            test_accuracy=acc,
            fit_seconds=12.5,
            steps_per_sec=3.2,
            samples_per_sec=102.4,
            step=steps,
            epoch=1,
        )
    else:
        store.update_run(
            run_id,
            step=steps // 2,
            epoch=0,
            steps_per_sec=3.0,
            samples_per_sec=96.0,
            elapsed=6.0,
            eta=7.0,
        )


_worker_locks = []  # held for the test session: this process is the stores' "worker"


def act_as_worker(home):
    """Hold the store's worker lock, as the worker of a "running" run does, so pages see a
    live worker and start none (a real one would claim the queued run under the test)."""
    from fp8demo import launcher, paths

    handle = paths.try_lock(Path(home) / launcher.LOCK_NAME)
    handle.write(str(os.getpid()))
    handle.flush()
    _worker_locks.append(handle)


def fill_store(home) -> dict:
    """Three comparisons: #1 finished (bf16+fp8), #2 with a failed run, #3 in flight."""
    store = Store(home)
    act_as_worker(home)
    pid = os.getpid()  # a live pid, so reap() leaves the "running" run alone
    done, (bf, fp) = store.create_comparison(preset("Quick demo"), label="done")
    for run_id, seed in ((bf, 0), (fp, 1)):
        store.claim_next_run(pid)
        _train(store, run_id, seed=seed)
    failed, (f1, f2) = store.create_comparison(preset("Quick demo", epochs=2))
    store.claim_next_run(pid)
    store.end_run(f1, "failed", error="Out of memory while compiling: try a smaller batch size.")
    store.request_cancel(f2)
    live, (l1, l2) = store.create_comparison(preset("Quick demo", hidden_dim=64))
    store.claim_next_run(pid)
    _train(store, l1, finish=False)
    return dict(
        store=store, done=done, failed=failed, live=live, running=l1, queued=l2, bf16=bf, fp8=fp
    )


def _plotly_specs(at):
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


# -- Train --------------------------------------------------------------------------------


def test_train_defaults_are_the_keras_example(store_home):
    at = page("pages/train.py").run()
    assert not at.exception
    example = TrainConfig()
    for name in (
        "epochs",
        "batch_size",
        "vocab_size",
        "seq_len",
        "hidden_dim",
        "heads",
        "intermediate_dim",
        "dropout",
        "lr",
        "seed",
        "subset",
    ):
        assert at.number_input(name).value == getattr(example, name), name
    assert at.multiselect("precisions").value == list(example.precisions)
    assert at.selectbox("vocab_method").value == example.vocab_method
    assert at.checkbox("quantize_head").value is example.quantize_head
    assert at.text_input("data").value == example.data
    assert at.selectbox("preset").value == "Keras example"
    assert not at.error
    assert not at.button("launch").disabled
    assert dict(at.query_params) == {}  # defaults keep the URL clean


def test_train_explains_invalid_settings_and_disables_launch(store_home):
    at = page("pages/train.py").run()
    at.number_input("heads").set_value(3).run()
    assert not at.exception
    messages = [e.value for e in at.error]
    assert any("divisible by heads" in m for m in messages)
    assert at.button("launch").disabled
    at.multiselect("precisions").set_value([]).run()
    assert any("at least one precision" in e.value for e in at.error)
    at.number_input("heads").set_value(4).run()
    at.multiselect("precisions").set_value(["fp8"]).run()
    assert not at.error and not at.button("launch").disabled


def test_train_says_before_launch_when_the_disk_is_too_full(store_home, monkeypatch):
    import shutil

    store_home.mkdir(parents=True)
    free_mb = shutil.disk_usage(store_home).free / 2**20
    monkeypatch.setenv("FP8DEMO_MIN_FREE_MB", str(free_mb + 1024))
    at = page("pages/train.py").run()
    assert not at.exception
    assert any(e.value.startswith("Not enough disk space in ") for e in at.error)
    assert at.button("launch").disabled


def test_train_refuses_a_data_path_that_does_not_exist(store_home, tmp_path):
    at = page("pages/train.py").run()
    missing = tmp_path / "aclImdb_v1.tar.gz"
    at.text_input("data").set_value(str(missing)).run()
    assert not at.exception
    # The message a launch from the CLI gets too (python -m fp8demo train --data …).
    assert [e.value for e in at.error] == [
        f"The IMDB path {missing} does not exist. Name the aclImdb_v1.tar.gz archive or the "
        "folder it was extracted to."
    ]
    assert at.button("launch").disabled
    missing.mkdir()  # now it is there: only its existence is checked before the launch
    at.text_input("data").set_value(str(missing)).run()
    assert not at.error and not at.button("launch").disabled


def test_train_data_field_says_what_an_empty_value_uses(store_home, tmp_path, monkeypatch):
    monkeypatch.delenv("FP8DEMO_IMDB", raising=False)
    at = page("pages/train.py").run()
    assert not at.exception
    field = at.text_input("data")
    data_folder = store_home / "data"
    assert field.placeholder == f"empty: the IMDB archive, downloaded once into {data_folder}"
    assert field.help.startswith(
        f"Empty uses the IMDB archive, downloaded once into {data_folder}."
    )
    # An extraction already in the cache is what an empty field uses next.
    (data_folder / "0123abcd" / "aclImdb").mkdir(parents=True)
    (data_folder / "0123abcd" / "aclImdb" / ".complete").touch()
    at = page("pages/train.py").run()
    assert at.text_input("data").placeholder == (
        f"empty: the IMDB reviews already extracted in {data_folder}"
    )
    # FP8DEMO_IMDB, when set, comes first.
    folder = tmp_path / "my-imdb"
    folder.mkdir()
    monkeypatch.setenv("FP8DEMO_IMDB", str(folder))
    at = page("pages/train.py").run()
    assert not at.exception
    assert at.text_input("data").placeholder == f"empty: FP8DEMO_IMDB = {folder}"
    assert at.text_input("data").help.startswith(f"Empty uses FP8DEMO_IMDB = {folder}.")
    folder.rmdir()
    at = page("pages/train.py").run()
    assert at.text_input("data").placeholder == (
        f"empty: FP8DEMO_IMDB = {folder} (which does not exist)"
    )


def test_train_writes_settings_to_the_url_and_reads_them_back(store_home):
    at = page("pages/train.py").run()
    at.number_input("epochs").set_value(5).run()
    at.multiselect("precisions").set_value(["bf16", "fp8", "float32"]).run()
    assert at.query_params["epochs"] == ["5"] or at.query_params["epochs"] == "5"
    shared = {k: (v[0] if isinstance(v, list) else v) for k, v in at.query_params.items()}
    again = page("pages/train.py", **shared).run()
    assert not again.warning
    assert again.number_input("epochs").value == 5
    assert again.multiselect("precisions").value == ["bf16", "fp8", "float32"]
    assert again.selectbox("preset").value == "Custom"


def test_train_tampered_url_warns_and_falls_back(store_home):
    at = page(
        "pages/train.py",
        heads="abc",
        epochs="-3",
        lr="nan",
        hidden_dim="48",
        precisions="bf16,int3",
        bogus="1",
    ).run()
    assert not at.exception
    warning = " ".join(w.value for w in at.warning)
    for needle in ("heads", "epochs", "lr", "int3", "bogus"):
        assert needle in warning, needle
    assert at.number_input("heads").value == TrainConfig().heads
    assert at.number_input("epochs").value == TrainConfig().epochs
    assert at.number_input("lr").value == TrainConfig().lr
    assert at.multiselect("precisions").value == list(TrainConfig().precisions)
    assert at.number_input("hidden_dim").value == 48  # the valid one is kept
    assert "bogus" not in at.query_params  # the URL is rewritten from the widgets


def test_large_presets_say_where_fp8_can_be_faster(store_home):
    at = page("pages/train.py").run()
    assert not any("FP8 GEMMs" in i.value for i in at.info)  # the example's size: no promise
    at.selectbox("preset").set_value("Large (hidden 1024)").run()
    hint = next(i.value for i in at.info if "FP8 GEMMs" in i.value)
    assert "compares the training speed of fp8 with bf16" in hint
    # Only where there is no GPU does the hint say that fp8 cannot be faster here.
    assert ("On this CPU fp8 is simulated" in hint) == (backend() != "gpu")
    at.multiselect("precisions").set_value(["bf16"]).run()
    assert not any("FP8 GEMMs" in i.value for i in at.info)


@pytest.mark.parametrize("name", ["Quick demo", "Keras example, fast"])
def test_train_preset_fills_widgets_but_keeps_precisions(store_home, name):
    at = page("pages/train.py").run()
    at.multiselect("precisions").set_value(["fp8", "float32"]).run()
    at.selectbox("preset").set_value(name).run()
    chosen = preset(name)
    for field, value in PRESETS[name].items():
        widget = (
            at.selectbox(field)
            if field in ("vocab_method", "dropout_masks")
            else at.number_input(field)
        )
        assert widget.value == value, field
    assert at.number_input("hidden_dim").value == chosen.hidden_dim
    assert at.number_input("epochs").value == chosen.epochs
    assert at.multiselect("precisions").value == ["fp8", "float32"]
    assert at.selectbox("preset").value == name
    at.number_input("seed").set_value(7).run()
    assert at.selectbox("preset").value == "Custom"


def test_a_preset_about_precisions_sets_them(store_home):
    """Where delayed scaling breaks is an experiment on four precisions: picking it sets them
    (the data source stays the user's), and the page then names that preset."""
    name = "Where delayed scaling breaks"
    at = page("pages/train.py").run()
    at.multiselect("precisions").set_value(["fp8", "float32"]).run()
    at.selectbox("preset").set_value(name).run()
    assert not at.exception, at.exception
    assert at.multiselect("precisions").value == list(PRESETS[name]["precisions"])
    assert at.number_input("lr").value == PRESETS[name]["lr"]
    at.run()
    assert at.selectbox("preset").value == name


@pytest.mark.e2e  # the launch starts a worker
def test_train_launch_queues_and_switches_to_live(store_home, monkeypatch):
    switched = []

    def record_switch_page(page, query_params=None):
        switched.append((page, dict(query_params or {})))
        st.stop()

    # AppTest cannot switch pages from a page run on its own (and an AppTest of app.py
    # re-enters Streamlit's pages/ folder mode on every run), so record the switch instead.
    # The launch itself is real: it queues the runs in the store and starts a worker.
    monkeypatch.setattr(st, "switch_page", record_switch_page)
    at = page("pages/train.py").run()
    at.selectbox("preset").set_value("Quick demo").run()
    at.number_input("subset").set_value(64).run()
    at.text_input("label").input("smoke")
    at.button("launch").click().run()
    assert not at.exception
    store = Store(store_home)
    comparison = store.comparison(1)
    store.cancel_comparison(1)  # don't train it: this test is about launching
    assert comparison["config"] == preset("Quick demo", subset=64)
    assert comparison["label"] == "smoke"
    assert [r["precision"] for r in comparison["runs"]] == ["bf16", "fp8"]
    assert switched == [("pages/live.py", {"comparison": "1"})]
    assert at.session_state["live_comparison"] == 1


def test_live_selects_the_comparison_just_launched(store_home):
    ids = fill_store(store_home)
    at = page("pages/live.py")
    at.session_state["live_comparison"] = ids["done"]
    at.run()
    assert not at.exception
    assert at.selectbox("comparison").value == ids["done"]


def test_train_expanders_explain_a_missing_vocabulary(store_home):
    at = page("pages/train.py").run()
    at.session_state["preview_expander"] = True
    at.run()
    assert not at.exception
    text = " ".join(m.value for m in at.info)
    assert "vocabulary for these settings has been built" in text


def test_train_expanders_show_real_preview_and_summary(trained, monkeypatch):
    from conftest import TINY

    monkeypatch.setenv("FP8DEMO_HOME", str(trained["home"]))
    at = page("pages/train.py", **{k: str(v) for k, v in TINY.items()})
    at.run()
    at.session_state["preview_expander"] = True
    at.session_state["summary_expander"] = True
    at.run()
    assert not at.exception, at.exception
    text = " ".join(m.value or "" for m in at.markdown) + " ".join(str(c.value) for c in at.code)
    assert "vocabulary for these settings has been built" not in text
    from fp8demo import model

    rows = model.summarize(trained["config"], "fp8")
    total = sum(r["params"] for r in rows if "/" not in r["name"])
    assert f"{total:,} parameters" in text
    assert "**8** of them compute in float8" in text


# -- the shell ----------------------------------------------------------------------------


def test_app_shell_shows_device_versions_and_queue(store_home):
    from fp8demo import device

    fill_store(store_home)
    at = page("app.py").run()
    assert not at.exception
    sidebar = " ".join(str(getattr(e, "value", "")) for e in at.sidebar)
    sidebar += " ".join(e.value for e in at.sidebar.caption)
    assert device.describe()["text"] in " ".join(e.value for e in at.sidebar.info)
    assert "keras" in sidebar and "jax" in sidebar and "fp8demo" in sidebar
    assert "#3" in sidebar and "training" in sidebar and "waiting" in sidebar
    assert at.title[0].value == "Train"


def test_app_shell_names_the_workers_of_other_hosts(store_home, monkeypatch):
    """A shared store: the sidebar lists the live workers of other hosts (their heartbeats)
    and says on which host a run trains; a silent host's workers are not listed."""
    import time

    from fp8demo.store import HEARTBEAT_TIMEOUT_SECONDS

    monkeypatch.setenv("FP8DEMO_HOST", "dashboard")
    store = Store(store_home)
    _, (run_id,) = store.create_comparison(TrainConfig(subset=64, precisions=("bf16",)))
    assert store.claim_next_run(os.getpid(), host="gpu-1")["id"] == run_id
    for slot in (0, 1):
        store.worker_alive("gpu-1", slot, 1000 + slot)
    store.worker_alive("gpu-2", 0, 2000)
    store._write(
        "UPDATE workers SET heartbeat_at=? WHERE host='gpu-2'",
        (time.time() - 2 * HEARTBEAT_TIMEOUT_SECONDS,),
    )
    at = page("app.py").run()
    assert not at.exception
    captions = " ".join(e.value for e in at.sidebar.caption)
    assert "Workers on other hosts: gpu-1 ×2" in captions and "gpu-2" not in captions
    assert "(on gpu-1)" in captions


# -- Live ---------------------------------------------------------------------------------


def in_app(name, **query) -> AppTest:
    """A page run through app.py's navigation, which its links to other pages need."""
    at = page("app.py", **query)
    at.switch_page(f"pages/{name}.py")
    return at


def _page_links(at) -> list:
    """(label, URL path) of each page link; the default page, Train, has the path ""."""
    return [(link.proto.label, link.proto.page) for link in at.get("page_link")]


@pytest.mark.parametrize(
    "name, message",
    [
        ("live", "No runs yet: launch a comparison on Train (the “Quick demo” preset takes"),
        ("results", "No runs yet: launch a comparison on Train (the “Quick demo” preset takes"),
        ("predict", "No finished runs yet: launch a comparison on Train (the “Quick demo”"),
        ("health", "No fp8 run yet: launch a comparison on Train with fp8 among its precisions"),
    ],
)
def test_pages_with_an_empty_store_say_what_to_do_next(store_home, name, message):
    at = in_app(name).run()
    assert not at.exception
    assert at.main.info[0].value.startswith(message)
    assert _page_links(at) == [("Go to Train", "")]


def test_predict_with_nothing_finished_points_to_the_training_comparison(store_home):
    store = Store(store_home)
    # One run, claimed by a live pid: nothing queued, so no training process is started.
    cid, (bf16,) = store.create_comparison(preset("Quick demo", precisions=("bf16",)))
    store.claim_next_run(os.getpid())
    _train(store, bf16, finish=False)
    at = in_app("predict").run()
    assert not at.exception
    assert at.main.info[0].value.startswith(f"No finished runs yet: comparison #{cid} is training.")
    assert _page_links(at) == [("Go to Live", "live")]


def test_health_without_an_fp8_run_says_how_to_get_one(store_home):
    store = Store(store_home)
    _, (bf16,) = store.create_comparison(preset("Quick demo", precisions=("bf16",)))
    store.claim_next_run(os.getpid())
    _train(store, bf16)
    at = in_app("health").run()
    assert not at.exception
    assert at.main.info[0].value.startswith("No fp8 run yet")
    assert _page_links(at) == [("Go to Train", "")]


def test_live_follows_the_running_comparison(store_home):
    ids = fill_store(store_home)
    at = page("pages/live.py").run()
    assert not at.exception
    assert at.selectbox("comparison").value == ids["live"]
    assert at.query_params["comparison"] in (str(ids["live"]), [str(ids["live"])])
    progress = at.get("progress")
    assert (
        progress and "training" in progress[0].proto.text and "step 20/40" in progress[0].proto.text
    )
    specs = _plotly_specs(at)
    titles = [s["layout"]["title"]["text"] for s in specs]
    assert any("Loss" in t for t in titles) and any("Accuracy" in t for t in titles)
    assert not at.button("stop").disabled and not at.toggle("pause").disabled


def test_live_charts_slow_down_for_many_viewers(store_home):
    import time

    from pages import common

    ids = fill_store(store_home)
    first = page("pages/live.py").run()
    assert not first.exception
    assert not any("viewers: charts refresh" in c.value for c in first.caption)  # alone: 1 s
    # Nine other sessions watched a live page within the last seconds.
    common._live_sessions().update({f"viewer-{i}": time.time() for i in range(9)})
    at = page("pages/live.py").run()
    assert not at.exception
    assert any(c.value == "10 viewers: charts refresh every 5 s." for c in at.caption)
    assert _plotly_specs(at) == _plotly_specs(first)  # the same charts, less often
    assert at.query_params["comparison"] in (str(ids["live"]), [str(ids["live"])])


def test_live_fp8_heatmaps_and_finished_runs(store_home):
    ids = fill_store(store_home)
    at = page("pages/live.py", comparison=str(ids["done"])).run()
    assert not at.exception
    assert at.selectbox("comparison").value == ids["done"]
    assert len(at.success) == 2  # both runs finished, with their test accuracy
    specs = _plotly_specs(at)
    heatmaps = [s for s in specs if s["data"] and s["data"][0]["type"] == "heatmap"]
    assert len(heatmaps) == 3
    assert heatmaps[0]["data"][0]["y"] == FP8_LAYERS
    # Each role's colours span its own amaxes (|N(1, 0.5)|: a few orders around 2^0) ...
    amax = ids["store"].fp8_amax(ids["fp8"])[1]
    for j, heatmap in enumerate(heatmaps):
        wanted = charts.amax_color_range(amax[:, :, j])
        assert (heatmap["data"][0]["zmin"], heatmap["data"][0]["zmax"]) == wanted
        assert -6 <= wanted[0] < wanted[1] <= 2
    # ... or, for comparing runs, the fixed -16 .. 16.
    at.toggle("amax_fixed_scale").set_value(True).run()
    assert not at.exception
    heatmaps = [s for s in _plotly_specs(at) if s["data"] and s["data"][0]["type"] == "heatmap"]
    assert len(heatmaps) == 3
    assert all((h["data"][0]["zmin"], h["data"][0]["zmax"]) == (-16, 16) for h in heatmaps)
    assert any("scales" in s["layout"]["title"]["text"] for s in specs)
    assert at.button("stop").disabled  # nothing left to stop


def test_live_shows_errors_and_smoothing_controls(store_home):
    ids = fill_store(store_home)
    at = page("pages/live.py", comparison=str(ids["failed"])).run()
    assert not at.exception
    assert "Out of memory" in at.error[0].value
    at.slider("smoothing").set_value(0.9).run()
    at.radio("x_axis").set_value("time").run()
    at.toggle("log_y").set_value(True).run()
    assert not at.exception


def test_live_stop_cancels_the_comparison(store_home):
    ids = fill_store(store_home)
    at = page("pages/live.py").run()
    at.button("stop").click().run()
    assert not at.exception
    store = ids["store"]
    assert store.run(ids["queued"])["status"] == "cancelled"
    assert store.cancel_requested(ids["running"])


def test_live_survives_a_dead_training_process(store_home, supervisor_asked):
    from fp8demo import supervisor

    ids = fill_store(store_home)
    ids["store"].update_run(ids["running"], worker_pid=2**22 + 12345)  # no such process
    at = page("pages/live.py").run()
    assert not at.exception
    # The page reaps nothing itself: it asks for the supervisor, whose round reaps the run.
    assert supervisor_asked and ids["store"].run(ids["running"])["status"] == "running"
    supervisor.supervise_once(ids["store"])
    assert ids["store"].run(ids["running"])["status"] == "interrupted"
    at.run()
    assert not at.exception
    assert any("stopped during" in e.value for e in at.error)


# -- Results ------------------------------------------------------------------------------


def test_results_detail_of_a_finished_comparison(store_home):
    ids = fill_store(store_home)
    at = page("pages/results.py").run()
    at.selectbox("result").set_value(ids["done"]).run()
    assert not at.exception
    metrics = {m.label: m for m in at.metric}
    assert metrics["bf16 test accuracy"].value == "80.00%"
    assert metrics["fp8 test accuracy"].value == "81.00%"
    assert metrics["fp8 test accuracy"].delta == "+1.00 pp vs bf16"
    assert metrics["fp8 test loss"].delta == "+0.0000 vs bf16"
    frames = [df.value for df in at.dataframe]
    fp8_state = next(f for f in frames if "scale after" in f.columns)
    assert len(fp8_state) == len(FP8_LAYERS) * 3
    assert fp8_state["scale before"].iloc[0] == 1.0 and fp8_state["scale after"].iloc[
        0
    ] == pytest.approx(0.01)
    layers = next(f for f in frames if "policy" in f.columns)
    assert list(layers["name"]) == FP8_LAYERS
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Metrics CSV" in labels and "Config JSON" in labels
    assert any("No bf16 weights file" in c.value for c in at.caption)


def test_results_weights_download_when_the_file_exists(store_home):
    ids = fill_store(store_home)
    path = ids["store"].run_dir(ids["fp8"]) / "model.weights.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89HDF\r\n")
    at = page("pages/results.py").run()
    at.selectbox("result").set_value(ids["done"]).run()
    assert not at.exception
    assert "fp8 weights" in [b.proto.label for b in at.get("download_button")]


def test_results_metrics_csv_has_every_step_and_validation():
    """The Results page's "Metrics CSV" download (report.metrics_csv) of a finished comparison."""
    import tempfile

    from fp8demo import report

    with tempfile.TemporaryDirectory() as home:
        ids = fill_store(home)
        runs = ids["store"].comparison(ids["done"])["runs"]
        csv = report.metrics_csv(ids["store"], runs)
    lines = csv.strip().splitlines()
    assert lines[0] == "run_id,precision,step,epoch,time,loss,accuracy,val_loss,val_accuracy"
    assert len(lines) == 1 + 2 * 40
    assert lines[20].endswith(",0.55,0.7")  # step 20 closes epoch 0


def test_results_side_by_side(store_home):
    ids = fill_store(store_home)
    at = page("pages/results.py").run()
    at.selectbox("compare_a").set_value(ids["done"]).run()
    at.selectbox("compare_b").set_value(ids["live"]).run()
    assert not at.exception
    table = next(df.value for df in at.dataframe if "differs" in df.value.columns)
    assert table.loc["hidden_dim", "differs"] and not table.loc["epochs", "differs"]
    assert table.loc["fp8 test accuracy"].iloc[0] == "81.00%"
    names = [t["name"] for s in _plotly_specs(at) for t in s["data"]]
    assert f"A #{ids['done']} fp8" in names and f"B #{ids['live']} bf16" in names


# -- Predict ------------------------------------------------------------------------------


def test_predict_with_missing_model_files_explains(store_home):
    fill_store(store_home)  # finished runs, but no weights were saved
    at = page("pages/predict.py").run()
    assert not at.exception
    assert any("missing" in e.value for e in at.error)


def test_predict_with_real_models(trained, monkeypatch):
    from fp8demo.predict import load_run

    monkeypatch.setenv("FP8DEMO_HOME", str(trained["home"]))
    store = Store(trained["home"])
    models = {p: load_run(store, run_id) for p, run_id in trained["run_ids"].items()}
    at = page("pages/predict.py").run()
    assert not at.exception
    assert "Type a review" in at.info[0].value
    at.text_area("review").input("   \n ").run()
    assert "Type a review" in at.info[0].value and not at.metric
    at.selectbox("example").set_value("Positive").run()
    assert at.text_area("review").value.startswith("One of the best")
    review = "a good film"
    at.text_area("review").input(review).run()
    assert not at.exception
    expected = {p: float(m.predict([review])[0]) for p, m in models.items()}
    shown = {m.label: m.value for m in at.metric}
    for precision, probability in expected.items():
        assert any(
            precision in label and value == f"{probability * 100:.1f}%"
            for label, value in shown.items()
        ), (precision, probability, shown)
    labels = {p: "positive" if v >= 0.5 else "negative" for p, v in expected.items()}
    if len(set(labels.values())) == 1:
        assert f"agree: {labels['bf16']}" in at.success[0].value
    else:
        assert "disagree" in at.warning[0].value
    tokens = " ".join(m.value for m in at.markdown)
    assert "`good`" in tokens
    at.text_area("batch").input("a good film\n\nso boring\n").run()
    table = at.dataframe[-1].value
    assert list(table["review"]) == ["a good film", "so boring"]
    for precision, model in models.items():
        probabilities = model.predict(["a good film", "so boring"])
        np.testing.assert_allclose(
            table[f"{precision} P(positive)"].to_numpy(dtype=float), probabilities, atol=1e-6
        )
    # The bf16 run's post-training int8 model answers too.
    assert "int8 (PTQ) P(positive)" in table.columns


def test_results_of_a_real_finished_comparison(trained, monkeypatch):
    monkeypatch.setenv("FP8DEMO_HOME", str(trained["home"]))
    store = Store(trained["home"])
    at = page("pages/results.py").run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    for precision, run_id in trained["run_ids"].items():
        run = store.run(run_id)
        assert metrics[f"{precision} test accuracy"] == f"{run['test_accuracy'] * 100:.2f}%"
        assert metrics[f"{precision} training speed"] == f"{run['steps_per_sec']:.1f} steps/s"
    bf16, fp8_run = (store.run(trained["run_ids"][p]) for p in ("bf16", "fp8"))
    speed = next(m for m in at.metric if m.label == "fp8 training speed")
    assert (
        speed.delta
        == f"{(fp8_run['steps_per_sec'] / bf16['steps_per_sec'] - 1) * 100:+.0f}% vs bf16"
    )
    labels = [b.proto.label for b in at.get("download_button")]
    assert "bf16 weights" in labels and "fp8 weights" in labels
    frames = [df.value for df in at.dataframe]
    fp8_state = next(f for f in frames if "scale after" in f.columns)
    assert len(fp8_state) == 8 * 3 and (fp8_state["scale before"] == 1.0).all()
    assert (fp8_state["scale after"] != 1.0).all()
    runs_table = next(f for f in frames if "weights (KB)" in f.columns)
    ptq = store.run(trained["run_ids"]["bf16"])["summary"]["ptq"]
    int8_row = runs_table[runs_table["precision"] == "int8 PTQ of bf16"].iloc[0]
    assert int8_row["test accuracy"] == ptq["int8"]["test_accuracy"]
    phases = next(f for f in frames if "phase" in f.columns).set_index("phase")
    for precision, run_id in trained["run_ids"].items():
        recorded = store.run(run_id)["summary"]["phase_seconds"]
        assert phases.loc["saving", precision] == recorded["saving"]
    # Evaluated after training by a worker (queued work), apart from the training's phases.
    assert (
        phases.loc["evaluating int8 post-training quantization (after training)", "bf16"]
        == (ptq["int8"]["seconds"])
    )
    bf16_phases = store.run(trained["run_ids"]["bf16"])["summary"]["phase_seconds"]
    assert not any("post-training" in phase for phase in bf16_phases)
    # Whether fp8 ran as FP8 GEMMs, read from the run's compiled step (none on a CPU).
    found = store.run(trained["run_ids"]["fp8"])["summary"]["compiled_step"]
    assert found["backend"] == backend()
    assert compiled.verdict(found) in [i.value for i in at.info]
    live = page("pages/live.py").run()
    assert not live.exception
    assert compiled.headline(found) in [c.value for c in live.caption]


def test_health_page_of_a_real_fp8_run(trained, monkeypatch, tmp_path):

    from fp8demo import fp8

    home = tmp_path / "home"  # a copy: this test launches a run
    copy_home(trained["home"], home)
    monkeypatch.setenv("FP8DEMO_HOME", str(home))
    store = Store(home)
    run = store.run(trained["run_ids"]["fp8"])
    at = page("pages/health.py").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert len(table) == 8 * 3
    _, amax = store.fp8_amax(run["id"])
    probe_steps, probe_stats = store.fp8_probe(run["id"])
    expected = fp8.health_summary(
        amax,
        [layer["name"] for layer in run["summary"]["fp8_layers"]],
        run["config"].amax_history_length,
        probe_steps,
        probe_stats,
    )
    assert list(table["overflows"]) == [r["overflows"] for r in expected]
    assert list(table["at risk"]) == [r["at risk"] for r in expected]
    np.testing.assert_allclose(table["underflow %"], [r["underflow %"] for r in expected])
    specs = _plotly_specs(at)
    names = {t.get("name") for spec in specs for t in spec["data"]}
    assert "decoder/self_attention/query" in names  # headroom lines per layer
    titles = [spec["layout"]["title"]["text"] for spec in specs]
    assert any(t.startswith("Probe batch: inputs") for t in titles)
    # Scaling recipes: the latest probe in words and as a heatmap, one tensor's lines.
    recipe_steps, names, _ = store.fp8_recipes(run["id"])
    heatmap = next(s for s in specs if s["layout"]["title"]["text"].startswith("What-if: SNR"))
    assert heatmap["data"][0]["x"] == list(names) and len(heatmap["data"][0]["y"]) == 8 * 3
    assert f"step {int(recipe_steps[-1]):,}" in heatmap["layout"]["title"]["text"]
    assert any(m.value.startswith("- Median SNR over the 24 tensors") for m in at.markdown)
    at.selectbox(key="recipe_tensor").set_value((4, 2)).run()
    assert not at.exception
    lines = [s["layout"]["title"]["text"] for s in _plotly_specs(at)]
    assert "decoder/feedforward_intermediate_dense · output gradient over the probes" in " ".join(
        lines
    )
    # The history length section: replayed windows (the run's own marked), two heatmaps.
    replay = at.dataframe[1].value
    assert 1024 in list(replay["history length"]) and 1 in list(replay["history length"])
    assert list(replay[replay["this run"]]["history length"]) == [run["config"].amax_history_length]
    assert any("window 16 (replayed)" in t for t in titles)
    assert any("(recorded)" in t for t in titles)
    # ...and a measured fp8 run with another window, queued from here.
    at.number_input(key="history_train_length").set_value(64)
    at.button(key="history_train").click().run()
    assert not at.exception
    queued = store.comparisons()[0]
    store.cancel_comparison(queued["id"])
    assert queued["label"] == "amax history 64"
    assert queued["config"].precisions == ("fp8",)
    changed = queued["config"].differences(run["config"])
    changed.pop("data", None)  # the launch records the data source it sees
    assert changed == {"amax_history_length": 64, "precisions": ["fp8"]}


def test_health_amax_heatmaps_on_their_own_range_or_the_fixed_one(store_home):
    ids = fill_store(store_home)
    at = page("pages/health.py", comparison=str(ids["done"])).run()
    assert not at.exception

    def amax_heatmaps():
        specs = _plotly_specs(at)
        return [s["data"][0] for s in specs if s["layout"]["title"]["text"].startswith("amax")]

    amax = ids["store"].fp8_amax(ids["fp8"])[1]
    ranges = [(h["zmin"], h["zmax"]) for h in amax_heatmaps()]
    assert ranges == [charts.amax_color_range(amax[:, :, j]) for j in range(3)]
    at.toggle("health_amax_fixed_scale").set_value(True).run()
    assert not at.exception
    assert [(h["zmin"], h["zmax"]) for h in amax_heatmaps()] == [(-16, 16)] * 3


def test_results_show_repeats_over_seeds(store_home):
    store = Store(store_home)
    ids = []
    for k, (bf, fp) in enumerate(((0.80, 0.81), (0.82, 0.80), (0.79, 0.80))):
        cid, (b, f) = store.create_comparison(
            preset("Quick demo", seed=42 + k), group_id=ids[0] if ids else "self"
        )
        ids.append(cid)
        for run_id, acc in ((b, bf), (f, fp)):
            store.claim_next_run(os.getpid())
            store.end_run(run_id, "finished", test_accuracy=acc, test_loss=0.5)
    at = page("pages/results.py").run()
    at.selectbox("result").set_value(ids[1]).run()
    assert not at.exception
    table = next(df.value for df in at.dataframe if "std (points)" in df.value.columns)
    rows = {r[""]: r for r in table.to_dict("records")}
    assert rows["bf16"]["mean test accuracy (%)"] == pytest.approx(80.333, abs=1e-3)
    assert rows["fp8 − bf16"]["mean test accuracy (%)"] == pytest.approx(0.0, abs=1e-9)
    assert rows["fp8"]["std (points)"] == pytest.approx(0.57735, abs=1e-4)


# -- a public demo: controls behind a password ------------------------------------------------


def test_without_a_password_configured_everything_is_allowed(store_home, monkeypatch):
    monkeypatch.delenv("FP8DEMO_PASSWORD", raising=False)
    at = page("app.py").run()
    assert not at.exception
    assert not any(t.label.startswith("Password") for t in at.sidebar.text_input)
    ids = fill_store(store_home)
    results = page("pages/results.py").run()
    results.selectbox("result").set_value(ids["done"]).run()
    assert not results.button("delete").disabled


def test_a_password_locks_launch_stop_and_delete_until_entered(store_home, monkeypatch):
    monkeypatch.setenv("FP8DEMO_PASSWORD", "s3cret")
    ids = fill_store(store_home)
    train = page("pages/train.py").run()
    assert train.button("launch").disabled
    assert "password" in train.info[-1].value
    live = page("pages/live.py")
    live.session_state["live_comparison"] = ids["live"]
    live.run()
    assert live.button("stop").disabled
    results = page("pages/results.py").run()
    results.selectbox("result").set_value(ids["done"]).run()
    assert results.button("delete").disabled

    # The sidebar (app.py) takes the password; a wrong one is refused.
    shell = page("app.py").run()
    box = next(t for t in shell.sidebar.text_input if t.label.startswith("Password"))
    box.input("wrong").run()
    assert "Wrong password." in [e.value for e in shell.sidebar.error]
    assert not shell.session_state["_unlocked"] if "_unlocked" in shell.session_state else True
    box = next(t for t in shell.sidebar.text_input if t.label.startswith("Password"))
    box.input("s3cret").run()
    assert shell.session_state["_unlocked"] is True

    unlocked = page("pages/train.py")
    unlocked.session_state["_unlocked"] = True
    unlocked.run()
    assert not unlocked.button("launch").disabled
    results = page("pages/results.py")
    results.session_state["_unlocked"] = True
    results.run()
    results.selectbox("result").set_value(ids["done"]).run()
    results.button("delete").click().run()
    assert not results.exception
    assert ids["done"] not in [c["id"] for c in Store(store_home).comparisons()]


def test_each_wrong_password_in_a_row_waits_twice_as_long_up_to_a_cap():
    from fp8demo.access import wrong_password_delay

    assert wrong_password_delay(0) == 0.0
    assert [wrong_password_delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert wrong_password_delay(10_000) == 8.0


def test_wrong_passwords_are_answered_ever_later_and_logged(store_home, monkeypatch, caplog):
    import time

    monkeypatch.setenv("FP8DEMO_PASSWORD", "s3cret")
    shell = page("app.py").run()
    seconds = []
    for guess in ("guess-one", "guess-two"):
        box = next(t for t in shell.sidebar.text_input if t.label.startswith("Password"))
        start = time.perf_counter()
        box.input(guess).run()
        seconds.append(time.perf_counter() - start)
        assert "Wrong password." in [e.value for e in shell.sidebar.error]
    # The answers wait 0.5 s, then 1 s (on top of the page's own time).
    assert seconds[0] >= 0.5 and seconds[1] >= 1.0, seconds
    shell.run()  # a rerun that types nothing new is not another guess
    assert shell.session_state["_password_failures"] == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "fp8demo.access"]
    assert lines == [
        f"Wrong dashboard password from an unknown address: {n} in a row from this viewer; "
        f"the answer waits {delay} s."
        for n, delay in ((1, "0.5"), (2, "1.0"))
    ]
    assert "guess" not in caplog.text  # what was typed is never logged

    box = next(t for t in shell.sidebar.text_input if t.label.startswith("Password"))
    box.input("s3cret").run()
    assert shell.session_state["_unlocked"] is True
    assert "_password_failures" not in shell.session_state
