"""End to end in a real browser: Debian's chromium driven by Playwright, a real
`streamlit run app.py`, a real training process and the real IMDB data (a subset).

Screenshots of every page are saved to $TEST_ARTIFACTS (default test-artifacts/).
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, copy_home, wait_for

from fp8demo.store import Store

pytestmark = pytest.mark.e2e  # a real server, browser and training processes

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", ROOT / "test-artifacts"))
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home, imdb_folder, store_url=None):
    """`streamlit run app.py` on a free port, on the store at `store_url` (default: the home's
    SQLite file); returns (process, url) once it is healthy."""
    port = free_port()
    env = dict(os.environ, FP8DEMO_HOME=str(home), FP8DEMO_IMDB=str(imdb_folder))
    env.pop("FP8DEMO_STORE", None)
    if store_url:
        env["FP8DEMO_STORE"] = store_url
    log = open(home / "streamlit.log", "ab")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
            "--server.fileWatcherType",
            "none",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            pass
        assert process.poll() is None, (home / "streamlit.log").read_text()
        assert time.time() < deadline, "streamlit did not start"
        time.sleep(0.5)
    return process, url


@pytest.fixture(scope="module")
def server(tmp_path_factory, imdb_folder):
    """A fresh dashboard on an empty SQLite store (the pages read PostgreSQL through the same
    Store, whose SQL test_store runs on both; the CLI's end to end runs on PostgreSQL)."""
    home = tmp_path_factory.mktemp("browser-home")
    process, url = start_server(home, imdb_folder)
    store = Store(home)
    yield url, home, store
    process.terminate()
    process.wait(20)
    for run in store.queue():
        store.request_cancel(run["id"])


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    page = context.new_page()
    yield page
    context.close()


def idle(page, timeout=60_000):
    page.wait_for_selector(IDLE, timeout=timeout)


def shows(page, texts, timeout=30_000):
    """Wait until the page's main area holds each text. The page draws its elements as its
    script runs (and may run again), so a snapshot taken once the first element is there
    can miss the rest."""
    from playwright.sync_api import expect

    main = page.locator('[data-testid="stMain"]')
    for text in texts:
        expect(main).to_contain_text(text, timeout=timeout)


def shot(page, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def set_number(page, key, value):
    """Type a number and commit it; retried because a rerun still in flight can drop it."""
    box = page.locator(f".st-key-{key} input")
    for _ in range(4):
        box.fill(str(value))
        box.press("Enter")
        page.wait_for_timeout(700)
        idle(page)
        if box.input_value() == str(value):
            return
    raise AssertionError(f"{key} did not take the value {value}: {box.input_value()}")


# Width of a trace: Plotly ships numpy arrays as {dtype, bdata, shape} objects.
TRACE_WIDTH_JS = """(t) => {
    const z = t.z, x = t.x;
    if (z && z.shape) return Number(String(z.shape).split(',').pop());
    if (Array.isArray(z)) return z.length && z[0] ? z[0].length : 0;
    const bytes = {f8: 8, f4: 4, i8: 8, i4: 4, u4: 4, i2: 2};
    if (x && x.bdata) return atob(x.bdata).length / (bytes[x.dtype] || 1);
    return x && x.length ? x.length : 0;
}"""


def plot_traces(page) -> list:
    """[(trace type, width)] of every Plotly chart on the page, read from the live figure."""
    return page.evaluate(f"""() => {{ const width = {TRACE_WIDTH_JS};
        return Array.from(document.querySelectorAll('.js-plotly-plot'))
            .map(el => (el.data || []).map(t => [t.type || '', width(t)])); }}""")


def wait_for_heatmap(page, timeout=30_000):
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('.js-plotly-plot'))"
        ".some(el => (el.data || []).some(t => t.type === 'heatmap'))",
        timeout=timeout,
    )


RECIPE_HEATMAP = "What-if: SNR"  # the title of the scaling recipes' heatmap on FP8 health


def wait_for_recipe_heatmap(page, timeout=30_000):
    """Until the recipe heatmap is drawn: a heatmap trace and its painted cells."""
    page.wait_for_function(
        "(title) => Array.from(document.querySelectorAll('.js-plotly-plot')).some(el => "
        "((el.layout || {}).title || {}).text?.includes(title) "
        "&& (el.data || []).some(t => t.type === 'heatmap') "
        "&& el.querySelector('.heatmaplayer image'))",
        arg=RECIPE_HEATMAP,
        timeout=timeout,
    )


def type_review(page, text):
    """Type a review on the Predict page and submit it (Ctrl+Enter, as a user would)."""
    review = page.locator(".st-key-review textarea")
    review.fill(text)
    review.press("Control+Enter")


def heatmap_columns(page) -> int:
    widths = [w for chart in plot_traces(page) for kind, w in chart if kind == "heatmap"]
    return max(widths, default=0)


def test_the_audience_sees_no_deploy_button_and_an_empty_store_says_what_next(server, page):
    """Viewer toolbar (.streamlit/config.toml): no Deploy button. A fresh server's first
    page, here Live on an empty store, points at Train, and the link goes there."""
    from playwright.sync_api import expect

    url, _, _ = server
    page.goto(url + "/live")
    idle(page)
    main = page.locator('[data-testid="stMain"]')
    expect(main).to_contain_text("No runs yet: launch a comparison on Train", timeout=30_000)
    assert page.locator('[data-testid="stAppDeployButton"]').count() == 0
    assert page.get_by_role("button", name="Deploy").count() == 0
    page.get_by_role("link", name="Go to Train").click()
    expect(page.locator(".st-key-epochs input")).to_have_value("3", timeout=30_000)
    assert not page.locator('[data-testid="stException"]').count()


# The Quick demo on 6,000 reviews per split: both precisions reached test accuracies of
# 0.73-0.78 over seeds 42-45 (chance is 0.5; on 4,000, 0.66-0.76: the loss leaves its
# plateau late), and the fp8 run trains for 15-50 s, long enough to watch its heatmaps grow.
REVIEWS, LEARNED = 6000, 0.65


def test_quick_demo_from_launch_to_prediction(server, page):
    """The Quick demo preset, on half of its reviews, launched from a fresh server's Train
    page: Live shows progress and heatmaps that grow while the fp8 run trains, to a second
    viewer too; both precisions learn (the preset's own 78 % on 12,000 reviews is
    benchmarks/quick_demo.py's, a run twice as long); Results, FP8 health and Predict
    show them, Predict with the bf16 model's post-training int8 quantization too."""
    from playwright.sync_api import expect

    from fp8demo.config import preset

    url, home, store = server
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # Train: the Quick demo preset, as a visitor picks it.
    page.goto(url)
    idle(page)
    # The example's default (waited for: the first paint may still show placeholders).
    expect(page.locator(".st-key-epochs input")).to_have_value("3", timeout=30_000)
    page.locator(".st-key-preset").click()
    page.get_by_role("option", name="Quick demo").click()
    subset = preset("Quick demo").subset
    expect(page.locator(".st-key-subset input")).to_have_value(str(subset), timeout=15_000)
    expect(page.locator(".st-key-vocab_size input")).to_have_value("5000", timeout=15_000)
    idle(page)
    subset = REVIEWS
    set_number(page, "subset", subset)  # the rest of the preset stays as it set it
    expect(page.locator(".st-key-vocab_size input")).to_have_value("5000")
    shot(page, "1-train")
    page.get_by_role("button", name="Launch").click()

    # Live: progress, curves, and heatmaps that grow while the fp8 run trains.
    page.wait_for_url("**/live**", timeout=30_000)
    page.wait_for_selector('[data-testid="stProgress"]', timeout=180_000)
    page.wait_for_selector('[data-testid="stPlotlyChart"]', timeout=180_000)
    comparison = store.comparisons()[0]
    fp8_run = next(r for r in comparison["runs"] if r["precision"] == "fp8")
    deadline = time.time() + 300
    while store.run(fp8_run["id"])["step"] < 5:
        assert time.time() < deadline, "the fp8 run did not start training"
        time.sleep(0.5)
    wait_for_heatmap(page)
    first = heatmap_columns(page)
    shot(page, "2-live-training")
    deadline = time.time() + 60
    while heatmap_columns(page) <= first:  # the heatmaps grow while the fp8 run trains
        assert time.time() < deadline, f"the heatmaps stayed at {first} steps"
        time.sleep(0.5)
    assert store.run(fp8_run["id"])["status"] in ("running", "finished")
    page.get_by_text("Inside the fp8 run").scroll_into_view_if_needed()
    shot(page, "2b-live-heatmaps")

    # A second browser (another viewer, or a reload) sees the same live state.
    other = page.context.browser.new_context(viewport={"width": 1500, "height": 1100}).new_page()
    other.goto(url + f"/live?comparison={comparison['id']}")
    idle(other)
    wait_for_heatmap(other)
    assert heatmap_columns(other) >= first
    other.context.close()

    deadline = time.time() + 600
    while any(r["status"] in ("queued", "running") for r in store.runs(comparison["id"])):
        assert time.time() < deadline, "the comparison did not finish"
        time.sleep(1)
    runs = store.runs(comparison["id"])
    assert [r["status"] for r in runs] == ["finished", "finished"], [r["error"] for r in runs]
    idle(page)
    shot(page, "3-live-finished")

    # Results: both precisions' test accuracy as the store has them, and what the preset
    # promises; the bf16 model's post-training quantization is evaluated by a worker.
    page.goto(url + "/results")
    shows(page, [f"{run['precision']} test accuracy" for run in runs], timeout=180_000)
    shows(page, [f"{run['test_accuracy'] * 100:.2f}%" for run in runs])
    shot(page, "4-results")
    for run in runs:
        assert run["summary"]["data"]["sizes"]["test"] == subset
        assert run["test_accuracy"] >= LEARNED, (run["precision"], run["test_accuracy"])
    bf16 = next(r for r in runs if r["precision"] == "bf16")
    wait_for(
        lambda: set(store.run(bf16["id"])["summary"].get("ptq") or {}) == {"int8", "int4"},
        180,
        "the bf16 model's post-training quantization (int8 and int4)",
    )

    # FP8 health: the at-risk table, the probe's saturation/underflow and headroom charts.
    page.goto(url + "/health")
    idle(page)
    page.wait_for_selector('[data-testid="stDataFrame"]', timeout=30_000)
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('.js-plotly-plot')).some(el => "
        "((el.layout || {}).title || {}).text?.includes('Probe batch'))",
        timeout=30_000,
    )
    shows(page, ["tensors at risk"])
    wait_for_recipe_heatmap(page)
    shot(page, "4b-health")

    # Predict: a typed review gets a probability from each model.
    page.goto(url + "/predict")
    idle(page)
    type_review(page, "An absolutely wonderful film, moving and funny. I loved it.")
    idle(page)
    # bf16, fp8 and the bf16 model's post-training int8 each give a probability.
    try:
        page.wait_for_function(
            "() => document.querySelectorAll('[data-testid=\"stMetric\"]').length >= 3",
            timeout=60_000,
        )
    finally:
        shot(page, "5-predict")
    metrics = page.locator('[data-testid="stMetric"]').all_inner_texts()
    for name in ("bf16", "fp8", "int8"):
        assert any(m.startswith(name) and "%" in m for m in metrics), metrics
    assert not page.locator('[data-testid="stException"]').count()
    assert not errors, errors


def test_health_draws_the_recipe_heatmap_with_all_three_numbers_on_hover(
    trained, tmp_path, imdb_folder, browser
):
    """FP8 health of a finished fp8 run: the scaling recipes' summary, the SNR heatmap drawn
    by Plotly, a hover that shows underflow, saturation and SNR, and no browser error."""

    home = tmp_path / "home"
    copy_home(trained["home"], home)
    process, url = start_server(home, imdb_folder)
    try:
        page = browser.new_context(viewport={"width": 1500, "height": 1100}).new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/health")
        idle(page)
        wait_for_recipe_heatmap(page)
        shows(page, ["Scaling recipes", "Median SNR over the 24 tensors"])
        chart = page.locator(".js-plotly-plot").filter(has=page.locator(f"text={RECIPE_HEATMAP}"))
        chart.scroll_into_view_if_needed()
        box = chart.locator(".nsewdrag").first.bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.2)
        hover = chart.locator(".hoverlayer .hovertext")
        hover.wait_for(timeout=10_000)
        text = hover.text_content()
        assert "SNR" in text and "underflow" in text and "saturation" in text, text
        shot(page, "4c-health-recipes")
        assert not page.locator('[data-testid="stException"]').count()
        assert not errors, errors
        page.context.close()
    finally:
        process.terminate()
        process.wait(20)


def test_a_server_restart_loses_nothing(tmp_path, imdb_folder, browser):
    """Restart the dashboard while a run trains: the run keeps training in its own process,
    the new server shows it live, and finished models still answer on Predict."""
    from fp8demo import launcher
    from fp8demo.config import TrainConfig

    home = tmp_path / "home"
    home.mkdir()
    store = Store(home)
    os.environ["FP8DEMO_IMDB"] = str(imdb_folder)
    try:
        quick = launcher.launch(
            TrainConfig(
                subset=128, vocab_size=800, seq_len=32, epochs=1, precisions=("bf16",), ptq=False
            ),
            store,
        )
        slow = launcher.launch(
            TrainConfig(
                subset=2000,
                vocab_size=800,
                seq_len=64,
                epochs=60,  # cancelled at the end
                precisions=("bf16",),
                ptq=False,
            ),
            store,
        )
    finally:
        del os.environ["FP8DEMO_IMDB"]
    process, url = start_server(home, imdb_folder)
    slow_run = store.runs(slow)[0]["id"]
    deadline = time.time() + 240
    while store.run(slow_run)["step"] < 10:  # the supervisor keeps a worker on the queue
        assert time.time() < deadline, "the slow run did not start"
        time.sleep(0.5)
    process.terminate()  # the dashboard goes away mid-training ...
    process.wait(20)
    step_at_restart = store.run(slow_run)["step"]
    process, url = start_server(home, imdb_folder)  # ... and comes back
    try:
        page = browser.new_context(viewport={"width": 1500, "height": 1100}).new_page()
        page.goto(url + f"/live?comparison={slow}")
        idle(page)
        page.wait_for_selector('[data-testid="stProgress"]', timeout=30_000)
        assert store.run(slow_run)["status"] == "running"  # still training in its own process
        deadline = time.time() + 60
        while store.run(slow_run)["step"] <= step_at_restart:
            assert time.time() < deadline, "training stopped with the server"
            time.sleep(0.5)
        shot(page, "6-live-after-restart")
        page.goto(url + "/predict")
        idle(page)
        type_review(page, "A wonderful film.")
        page.wait_for_selector('[data-testid="stMetric"]', timeout=60_000)
        assert "bf16" in page.locator('[data-testid="stMetric"]').first.inner_text()
        assert store.run(store.runs(quick)[0]["id"])["status"] == "finished"
        page.context.close()
    finally:
        process.terminate()
        process.wait(20)
        store.cancel_comparison(slow)


def test_a_tiny_sweep_from_the_sweep_page_to_a_trials_comparison(tmp_path, imdb_folder, browser):
    """Sweep page: a bad range is explained and blocks the launch; a two-trial sweep over lr
    on tiny settings is launched from the form, its trials finish, the paired bf16/fp8 figure
    is drawn, and a trial's Live link opens that trial's comparison."""
    import re

    from playwright.sync_api import expect

    from fp8demo import sweep

    home = tmp_path / "home"
    home.mkdir()
    store = Store(home)
    process, url = start_server(home, imdb_folder)
    page = browser.new_context(viewport={"width": 1500, "height": 1100}).new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(url + "/sweep")
        idle(page)
        main = page.locator('[data-testid="stMain"]')
        expect(main).to_contain_text("No sweeps yet", timeout=30_000)
        launch = page.get_by_role("button", name="Launch sweep")
        # A range from high to low is explained in words, and nothing can be launched.
        page.locator(".st-key-sw_low_lr input").fill("1e-2")
        page.locator(".st-key-sw_high_lr input").fill("1e-4")
        page.locator(".st-key-sw_high_lr input").press("Enter")
        expect(main).to_contain_text("The range of lr must go from low to high", timeout=30_000)
        expect(launch).to_be_disabled()
        page.locator(".st-key-sw_low_lr input").fill("1e-3")
        page.locator(".st-key-sw_high_lr input").fill("1e-2")
        page.locator(".st-key-sw_high_lr input").press("Enter")
        expect(launch).to_be_enabled(timeout=30_000)
        idle(page)
        # Tiny fixed settings on top of the Quick demo preset, and two trials (no probe:
        # nothing here reads it, and its compilation is most of a tiny run).
        set_number(page, "sw_trials", 2)
        page.get_by_text("Fixed settings (every trial)").click()
        for key, value in (
            ("subset", 128),
            ("vocab_size", 800),
            ("seq_len", 32),
            ("probe_every", 0),
        ):
            set_number(page, f"sw_fixed_{key}", value)
        shot(page, "9-sweep-form")
        launch.click()

        # The trials train one after another; the page follows them.
        deadline = time.time() + 600
        while not store.sweeps() or sweep.sweeps(store)[0]["state"] == "running":
            assert time.time() < deadline, "the sweep did not finish"
            time.sleep(2)
        sweep_id = store.sweeps()[0]["id"]
        record = sweep.sweep_record(store, sweep_id)
        assert record["state"] == "complete", record
        states = [t["state"] for t in record["trials"]]
        assert len(states) == 2 and "complete" in states, record
        # The page redraws itself once the sweep ends: the paired figure with both precisions.
        expect(main).to_contain_text("complete · searching lr=", timeout=60_000)
        page.wait_for_function(
            "() => Array.from(document.querySelectorAll('.js-plotly-plot')).some(el => "
            "(el.data || []).some(t => t.name === 'fp8 · complete') "
            "&& (el.data || []).some(t => t.name === 'bf16 · complete'))",
            timeout=60_000,
        )
        idle(page)
        expect(main).to_contain_text("Best trial so far", timeout=30_000)
        assert f"sweep={sweep_id}" in page.url
        shot(page, "10-sweep-trials")
        page.locator(".st-key-sweep-paired").scroll_into_view_if_needed()
        shot(page, "10b-sweep-paired-figure")

        # The trial picker's Live link opens that trial's comparison.
        best = next(t for t in record["trials"] if t["number"] == record["best_trial"])
        page.locator('[data-testid="stPageLink"]').filter(has_text="Live").last.click()
        page.wait_for_url(f"**/live?comparison={best['comparison_id']}", timeout=30_000)
        idle(page)
        expect(page.locator(".st-key-comparison input")).to_have_value(
            re.compile(f"^#{best['comparison_id']} “sweep {sweep_id} · trial {best['number']}”"),
            timeout=30_000,
        )
        shot(page, "11-sweep-trial-live")
        assert not page.locator('[data-testid="stException"]').count()
        assert not errors, errors
    finally:
        page.context.close()
        process.terminate()
        process.wait(20)
        for listed in sweep.sweeps(store):
            if listed["state"] == "running":
                sweep.cancel_sweep(store, listed["id"])


def line_ends(page) -> dict:
    """{trace name: its last x} of every line chart on the page (the live figures; x is the
    step, or the time)."""
    return page.evaluate(
        """() => {
        const types = {f8: Float64Array, f4: Float32Array, i8: BigInt64Array, i4: Int32Array};
        const values = (x) => {
            if (!x || !x.bdata) return x || [];
            const bytes = Uint8Array.from(atob(x.bdata), c => c.charCodeAt(0));
            return new (types[x.dtype] || Float64Array)(bytes.buffer);
        };
        return Object.fromEntries(Array.from(document.querySelectorAll('.js-plotly-plot'))
            .flatMap(el => (el.data || [])
            .filter(t => (t.type || '').startsWith('scatter') && t.name)
            .map(t => [t.name, values(t.x)]).filter(([, x]) => x.length)
            .map(([name, x]) => [name, Number(x[x.length - 1])]))); }"""
    )


def test_side_by_side_precisions_grow_together_on_live(tmp_path, imdb_folder, browser):
    """A comparison launched side by side on this CPU: two workers train bf16 and fp8 at the
    same time, and Live's curves of both precisions grow while both run."""
    from fp8demo import launcher
    from fp8demo.config import TrainConfig

    home = tmp_path / "home"
    home.mkdir()
    process, url = start_server(home, imdb_folder)
    try:
        store = Store(home)
        config = TrainConfig(
            side_by_side="on",
            subset=2000,
            epochs=6,
            seq_len=128,
            vocab_size=2000,
            vocab_method="fast",
            dropout_masks="fast",
            ptq=False,
            probe_every=0,
            data=str(imdb_folder),
        )
        comparison_id = launcher.launch(config, store)
        runs = store.comparison(comparison_id)["runs"]
        deadline = time.time() + 300
        while not all(store.run(r["id"])["step"] >= 2 for r in runs):
            assert time.time() < deadline, [store.run(r["id"])["phase"] for r in runs]
            time.sleep(0.5)
        assert all(store.run(r["id"])["status"] == "running" for r in runs)

        page = browser.new_context(viewport={"width": 1500, "height": 1100}).new_page()
        page.goto(f"{url}/live?comparison={comparison_id}")
        page.wait_for_selector('[data-testid="stPlotlyChart"]', timeout=60_000)

        def points(precision):
            ends = line_ends(page)
            return max((x for name, x in ends.items() if precision in name.split()), default=0)

        deadline = time.time() + 30
        while not (points("bf16") and points("fp8")):
            assert time.time() < deadline, line_ends(page)
            time.sleep(0.5)
        first = {p: points(p) for p in ("bf16", "fp8")}
        shot(page, "12-live-side-by-side")
        deadline = time.time() + 60
        while not all(points(p) > first[p] for p in first):  # both curves grow
            assert time.time() < deadline, (first, line_ends(page))
            time.sleep(0.5)
        shot(page, "12b-live-side-by-side-later")

        # Seen racing: stop both (Live's Stop does the same), rather than train 6 epochs on.
        store.cancel_comparison(comparison_id)
        deadline = time.time() + 120
        while any(store.run(r["id"])["status"] in ("queued", "running") for r in runs):
            assert time.time() < deadline, "the side-by-side runs did not stop"
            time.sleep(1)
        ended = [store.run(r["id"]) for r in runs]
        assert [r["status"] for r in ended] == ["cancelled", "cancelled"], ended
        first_end = min(r["finished_at"] for r in ended)
        assert all(r["started_at"] < first_end for r in ended)  # they trained at the same time
        assert len({r["slot"] for r in ended}) == 2
    finally:
        process.terminate()
        process.wait(20)
