"""A user's own model in a real browser: a script of its own (not the engine, not the Keras
example's model) trains a tiny Dense/EinsumDense classifier with FP8Monitor, first in bf16
and then in float8; the dashboard shows the fp8 fit live on Live and FP8 health while it
trains, then the two fits paired on Results.
"""

import os
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import ROOT, wait_for
from test_browser import (  # noqa: F401  (browser: the fixture)
    browser,
    heatmap_columns,
    idle,
    shot,
    shows,
    start_server,
    wait_for_heatmap,
)

from fp8demo.store import Store

pytestmark = pytest.mark.e2e  # a real server, browser and training script

SCRIPT = """
import os, sys, time
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
import keras
from test_monitor import BATCH, random_data, tiny_model
from fp8demo import FP8Monitor

class Slow(keras.callbacks.Callback):  # a tiny model trains in no time: until the test is done
    def on_train_batch_end(self, batch, logs=None):
        time.sleep({sleep})
        self.model.stop_training = os.path.exists({stop!r})

x, y = random_data(256)
probe = (x[:BATCH], y[:BATCH])
for float8, epochs, callbacks in [(False, 1, []), (True, 1000, [Slow()])]:
    model = tiny_model(float8, dtype=None if float8 else "mixed_bfloat16")
    monitor = FP8Monitor(comparison="my-mlp", probe_data=probe, probe_every=8)
    model.fit(x, y, batch_size=BATCH, epochs=epochs, validation_data=(x[:64], y[:64]),
              callbacks=[monitor, *callbacks], verbose=0)
"""


def start_script(home, sleep: float, stop) -> subprocess.Popen:
    """The user's script: a bf16 fit, then an fp8 fit that trains until `stop` exists."""
    script = home.parent / "train_my_mlp.py"
    script.write_text(
        textwrap.dedent(
            SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), sleep=sleep, stop=str(stop))
        )
    )
    env = {**os.environ, "FP8DEMO_HOME": str(home)}
    env.pop("FP8DEMO_STORE", None)
    return subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def grows(page, what: str, timeout: float, running) -> int:
    """Wait until the page's heatmaps gain columns while `running()` holds; the new width."""
    wait_for_heatmap(page, timeout=int(timeout * 1000))
    first = heatmap_columns(page)
    deadline = time.time() + timeout
    while (now := heatmap_columns(page)) <= first:
        assert time.time() < deadline, f"{what}: the heatmaps stayed at {first} steps"
        time.sleep(0.3)
    assert running(), f"{what}: the run ended before its heatmaps grew"
    return now


def test_a_users_own_script_shows_live_then_paired(tmp_path, browser):  # noqa: F811
    home = tmp_path / "home"
    home.mkdir()
    server, url = start_server(home, tmp_path / "no-imdb")  # the script brings its own data
    stop = tmp_path / "stop"
    script = start_script(home, sleep=0.1, stop=stop)
    page = browser.new_context(viewport={"width": 1500, "height": 1100}).new_page()
    try:
        store = Store(home)
        fp8_run = wait_for(
            lambda: next(
                (r for r in store.runs() if r["precision"] == "fp8" and r["step"] >= 2), None
            ),
            120,
            "the script's fp8 fit training",
        )
        cid = fp8_run["comparison_id"]

        def running():
            return store.run(fp8_run["id"])["status"] == "running"

        page.goto(f"{url}/live?comparison={cid}")
        grows(page, "Live", 60, running)
        assert "fp8" in page.locator('[data-testid="stMain"]').inner_text()
        shot(page, "monitor-1-live")

        page.goto(f"{url}/health?comparison={cid}")
        grows(page, "FP8 health", 60, running)
        shot(page, "monitor-2-health")
        stop.touch()  # the script's fp8 fit ends at its next step, then validates

        output = script.communicate(timeout=180)[0].decode()
        assert script.returncode == 0, output[-3000:]
        runs = {r["precision"]: r for r in store.comparison(cid)["runs"]}
        assert {p: r["status"] for p, r in runs.items()} == {"bf16": "finished", "fp8": "finished"}

        page.goto(f"{url}/results?comparison={cid}")
        shows(page, [f"{p} test accuracy" for p in runs], timeout=120_000)
        shows(page, [f"{run['test_accuracy'] * 100:.2f}%" for run in runs.values()])
        shows(page, ["pp vs bf16"])  # paired: fp8's difference to its bf16 twin
        shot(page, "monitor-3-results")
    finally:
        page.context.close()
        if script.poll() is None:
            script.kill()
            script.wait()
        server.terminate()
        server.wait(20)
