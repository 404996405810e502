"""Many viewers: does watching a live run in N browsers slow the training or the page?

One training run, one Streamlit server, Debian's chromium. The run trains for a while with
no viewer, then with N browser sessions on its Live page; steps/s in the two windows come
from the run's own per-step timestamps (side by side in one run, so machine drift cancels
out), and each viewer's refresh cadence from how often its progress text changes.

    .venv/bin/python benchmarks/many_viewers.py [--viewers 10] [--seconds 60]

Targets (issue): refresh about once a second; training throughput drops < 10 %.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fp8demo import worker  # noqa: E402
from fp8demo.config import TrainConfig  # noqa: E402
from fp8demo.store import Store  # noqa: E402


def steps_per_second(store, run_id, t0, t1) -> float:
    metrics = store.step_metrics(run_id)
    inside = (metrics["time"] >= t0) & (metrics["time"] < t1)
    return inside.sum() / (t1 - t0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--viewers", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--imdb", default=os.environ.get(
        "FP8DEMO_IMDB", str(ROOT.parent / "shared" / "data" / "aclImdb_v1.tar.gz")))
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright
    from test_browser import CHROMIUM, start_server

    home = Path(tempfile.mkdtemp(prefix="fp8demo-viewers-"))
    os.environ["FP8DEMO_HOME"], os.environ["FP8DEMO_IMDB"] = str(home), args.imdb
    store = Store(home)
    # Long enough for both windows: ~2.5 × seconds of training on these machines.
    config = TrainConfig(subset=8000, vocab_size=5000, vocab_method="fast", seq_len=128, epochs=20,
                         precisions=("fp8",), ptq=False)
    comparison = worker.launch(config, store)
    run_id = store.runs(comparison)[0]["id"]
    server, url = start_server(home, args.imdb)
    try:
        while store.run(run_id)["phase"] != "training" or store.run(run_id)["step"] < 50:
            worker.supervise(store)
            time.sleep(1)
        started = store.run(run_id)["started_at"]
        # Window 1: nobody watching.
        t0 = time.time() - started
        time.sleep(args.seconds)
        t1 = time.time() - started
        alone = steps_per_second(store, run_id, t0, t1)

        # Window 2: N viewers on the Live page.
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
            pages = []
            for _ in range(args.viewers):
                page = browser.new_context().new_page()
                page.goto(f"{url}/live?comparison={comparison}")
                pages.append(page)
            for page in pages:
                page.wait_for_selector('[data-testid="stProgress"]', timeout=240_000)
            changes = {i: [] for i in range(len(pages))}
            last = {i: None for i in range(len(pages))}
            t2 = time.time() - started
            end = time.time() + args.seconds
            while time.time() < end:
                for i, page in enumerate(pages):
                    text = page.locator('[data-testid="stProgress"]').first.inner_text()
                    if text != last[i]:
                        changes[i].append(time.time())
                        last[i] = text
                time.sleep(0.05)
            t3 = time.time() - started
            browser.close()
        watched = steps_per_second(store, run_id, t2, t3)
        intervals = [b - a for c in changes.values() for a, b in zip(c, c[1:])]
        refresh = statistics.median(intervals) if intervals else float("inf")
        drop = 1 - watched / alone
        print(f"viewers: {args.viewers}, window: {args.seconds:.0f} s each")
        print(f"steps/s alone {alone:.2f}, with viewers {watched:.2f}: drop {drop * 100:.1f} % "
              f"(target < 10 %: {'met' if drop < 0.10 else 'NOT met'})")
        print(f"median page refresh interval {refresh:.2f} s, p90 "
              f"{sorted(intervals)[int(0.9 * len(intervals))] if intervals else float('inf'):.2f} s "
              f"(target about 1 s: {'met' if refresh < 1.5 else 'NOT met'})")
    finally:
        store.cancel_comparison(comparison)
        server.terminate()
        server.wait(20)


if __name__ == "__main__":
    main()
