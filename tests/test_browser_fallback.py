"""In a real browser: a fallback that fires at the first probe is marked on Live's curves
and heatmaps (Plotly's figure data, read through the page as test_browser.py does)."""

import time

import pytest
from conftest import TINY
from test_browser import browser, start_server  # noqa: F401  (the browser fixture)

from fp8demo.store import Store

pytestmark = pytest.mark.e2e  # a real server, browser and training process

# Every trace named "... fallback to bf16": name, x, y and hover text. Plotly ships numpy
# arrays as {dtype, bdata} objects (decoded as test_browser.line_ends does).
FALLBACK_TRACES = """() => {
    const types = {f8: Float64Array, f4: Float32Array, i8: BigInt64Array, i4: Int32Array};
    const values = (x) => {
        if (!x || !x.bdata) return Array.from(x || []);
        const bytes = Uint8Array.from(atob(x.bdata), c => c.charCodeAt(0));
        return Array.from(new (types[x.dtype] || Float64Array)(bytes.buffer), Number);
    };
    return Array.from(document.querySelectorAll('.js-plotly-plot'))
        .flatMap(el => (el.data || []).filter(t => (t.name || '').includes('fallback to bf16'))
        .map(t => ({name: t.name, x: values(t.x), y: values(t.y), text: values(t.text)}))); }"""


def test_live_marks_where_layers_fell_back_to_bf16(tmp_path, imdb_folder, browser):  # noqa: F811
    from fp8demo import launcher
    from fp8demo.config import TrainConfig

    home = tmp_path / "home"
    home.mkdir()
    process, url = start_server(home, imdb_folder)
    try:
        store = Store(home)
        config = TrainConfig(
            **TINY,
            precisions=("fp8",),
            probe_every=2,
            fallback="underflow>5%",
            ptq=False,
            data=str(imdb_folder),
        )
        comparison_id = launcher.launch(config, store)
        (run,) = store.comparison(comparison_id)["runs"]
        deadline = time.time() + 600
        while store.run(run["id"])["status"] in ("queued", "running"):
            assert time.time() < deadline, store.run(run["id"])["phase"]
            time.sleep(1)
        events = store.run(run["id"])["summary"]["fallback_events"]
        assert events and {e["step"] for e in events} == {0}

        page = browser.new_context(viewport={"width": 1500, "height": 1100}).new_page()
        page.goto(f"{url}/live?comparison={comparison_id}")
        page.wait_for_selector('[data-testid="stPlotlyChart"]', timeout=60_000)
        deadline = time.time() + 60
        while len(traces := page.evaluate(FALLBACK_TRACES)) < 2:
            assert time.time() < deadline, traces
            time.sleep(0.5)
        curves = [t for t in traces if t["name"] == "fp8: fallback to bf16"]
        heatmaps = [t for t in traces if t["name"] == "fallback to bf16"]
        assert len(curves) == 2  # loss and accuracy
        assert all(t["x"] == [0] and "→ bf16" in t["text"][0] for t in curves), curves
        assert heatmaps and all(
            sorted(t["y"]) == sorted(e["layer"] for e in events) for t in heatmaps
        )
        assert page.get_by_text("float8 layers ended in bf16 (fallback)").count() >= 1
        page.screenshot(path=str(tmp_path / "live-fallback.png"), full_page=True)
    finally:
        process.terminate()
        process.wait(20)
