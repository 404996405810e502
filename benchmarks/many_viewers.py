"""Many viewers: does watching a live run slow the training or the page?

One training run, one Streamlit server. The run trains for a while with no viewer, then with
N viewers on its Live page; steps/s in the two windows come from the run's own progress
writes (side by side in one run, so machine drift cancels out), and each viewer's refresh
cadence from when its refreshes arrive.

    .venv/bin/python benchmarks/many_viewers.py [--viewers 10] [--seconds 60]
        [--clients websocket|browser] [--browser-nice 19]

--clients websocket (default): headless clients that speak the browser's websocket protocol
(`ws_viewers.py`: they ask for the page, rerun its fragments when the server says so, and
render nothing), as viewers on other machines would load this server. --clients browser: N
headless chromium pages on this machine, which also pay for rendering on the cores that
train; --browser-nice runs them at that CPU niceness.

Targets: refresh about once a second; training throughput drops < 10 %.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from fp8demo import launcher  # noqa: E402
from fp8demo.config import TrainConfig  # noqa: E402
from fp8demo.store import Store  # noqa: E402


def step_mark(store, run_id) -> tuple[float, int]:
    """(wall time, steps done) just after the worker's next progress write (every 0.5 s)."""
    before = store.run(run_id)["step"]
    while (step := store.run(run_id)["step"]) == before:
        time.sleep(0.02)
    return time.time(), step


def steps_per_second(first, last) -> float:
    return (last[1] - first[1]) / (last[0] - first[0])


# Runs inside each viewer's page: timestamps of changes of the progress text and of the
# charts' data (a fingerprint of each trace's encoded values), sampled every 100 ms.
RECORDER_JS = """() => {
    window.__progress = []; window.__charts = [];
    let progress = null, charts = null;
    const fingerprint = () => Array.from(document.querySelectorAll('.js-plotly-plot')).map(el =>
        (el.data || []).map(t => { const v = t.z || t.y;
            return v ? (v.bdata ? v.bdata.length + v.bdata.slice(-24) : String(v.length)) : ''; })
        .join('|')).join('#');
    setInterval(() => {
        const bar = document.querySelector('[data-testid="stProgress"]');
        const text = bar ? bar.innerText : null;
        if (text !== progress) { window.__progress.push(performance.now()); progress = text; }
        const now = fingerprint();
        if (now !== charts) { window.__charts.push(performance.now()); charts = now; }
    }, 100);
}"""


def cpu_seconds(pids) -> float:
    """User + system CPU time so far of these processes (Linux /proc)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rss_mb(pid) -> float:
    """Resident memory of a process (Linux /proc), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def browser_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"chromium" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def median_and_p90(gaps):
    gaps = sorted(gaps)
    return (
        (statistics.median(gaps), gaps[int(0.9 * len(gaps))])
        if gaps
        else (float("inf"), float("inf"))
    )


def watch_with_websockets(url, comparison, args, store, run_id, server) -> dict:
    import asyncio

    import ws_viewers

    window = {}

    def on_window(edge):  # "start" or "end"
        window[edge] = {
            "mark": step_mark(store, run_id),
            "wall": time.time(),
            "server": cpu_seconds([server.pid]),
            "rss": rss_mb(server.pid),
            "clients": cpu_seconds([os.getpid()]),
        }

    clients = asyncio.run(
        ws_viewers.watch(
            url, "live", f"comparison={comparison}", args.viewers, args.seconds, on_window
        )
    )
    start, end = window["start"], window["end"]

    def gaps(element):
        return ws_viewers.refresh_intervals(clients, start["wall"], end["wall"], element)

    return {
        "first": start["mark"],
        "last": end["mark"],
        "server_cpu": end["server"] - start["server"],
        "clients_cpu": end["clients"] - start["clients"],
        "progress": median_and_p90(gaps("progress")),
        "charts": median_and_p90(gaps("plotly_chart")),
        "megabytes": sum(c.bytes_received for c in clients) / 1e6,
        "server_rss": (start["rss"], end["rss"]),
    }


def watch_with_browsers(url, comparison, args, store, run_id, server, home) -> dict:
    from playwright.sync_api import sync_playwright
    from test_browser import CHROMIUM

    executable = CHROMIUM
    if args.browser_nice:
        executable = str(home / "chromium-niced")
        Path(executable).write_text(
            f'#!/bin/sh\nexec nice -n {args.browser_nice} {CHROMIUM} "$@"\n'
        )
        os.chmod(executable, 0o755)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        pages = []
        for _ in range(args.viewers):
            page = browser.new_context().new_page()
            page.goto(f"{url}/live?comparison={comparison}")
            pages.append(page)
        for page in pages:
            page.wait_for_selector('[data-testid="stProgress"]', timeout=240_000)
        # Each page records, by itself (no polling from here, which would cost CPU
        # too), when its progress text and when its charts' data last changed.
        for page in pages:
            page.evaluate(RECORDER_JS)
        browsers = browser_pids()
        server_cpu, browsers_cpu = cpu_seconds([server.pid]), cpu_seconds(browsers)
        first = step_mark(store, run_id)
        time.sleep(args.seconds)
        last = step_mark(store, run_id)
        server_cpu = cpu_seconds([server.pid]) - server_cpu
        browsers_cpu = cpu_seconds(browsers) - browsers_cpu
        records = [page.evaluate("() => [window.__progress, window.__charts]") for page in pages]
        browser.close()

    def gaps(series):  # the first change is the recorder's own start
        return [(b - a) / 1000 for times in series for a, b in zip(times[1:], times[2:])]

    return {
        "first": first,
        "last": last,
        "server_cpu": server_cpu,
        "clients_cpu": browsers_cpu,
        "progress": median_and_p90(gaps([r[0] for r in records])),
        "charts": median_and_p90(gaps([r[1] for r in records])),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--viewers", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", choices=["websocket", "browser"], default="websocket")
    parser.add_argument(
        "--browser-nice",
        type=int,
        default=0,
        help="niceness of the browsers (19 ≈ viewers on other machines)",
    )
    parser.add_argument(
        "--imdb",
        default=os.environ.get(
            "FP8DEMO_IMDB", str(ROOT.parent / "shared" / "data" / "aclImdb_v1.tar.gz")
        ),
    )
    args = parser.parse_args()

    from test_browser import start_server

    home = Path(tempfile.mkdtemp(prefix="fp8demo-viewers-"))
    os.environ["FP8DEMO_HOME"], os.environ["FP8DEMO_IMDB"] = str(home), args.imdb
    store = Store(home)
    # Far longer than both windows (it is cancelled at the end): 250 steps an epoch.
    config = TrainConfig(
        subset=8000,
        vocab_size=5000,
        vocab_method="fast",
        seq_len=128,
        epochs=1000,
        precisions=("fp8",),
        ptq=False,
    )
    comparison = launcher.launch(config, store)
    run_id = store.runs(comparison)[0]["id"]
    server, url = start_server(home, args.imdb)
    try:
        while store.run(run_id)["phase"] != "training" or store.run(run_id)["step"] < 50:
            time.sleep(1)
        # Window 1: nobody watching.
        first = step_mark(store, run_id)
        time.sleep(args.seconds)
        alone = steps_per_second(first, step_mark(store, run_id))

        # Window 2: N viewers on the Live page.
        if args.clients == "websocket":
            window = watch_with_websockets(url, comparison, args, store, run_id, server)
        else:
            window = watch_with_browsers(url, comparison, args, store, run_id, server, home)
        watched = steps_per_second(window["first"], window["last"])
        drop = 1 - watched / alone

        print(
            f"viewers: {args.viewers} ({args.clients}), window: {args.seconds:.0f} s each"
            + (f", browser niceness {args.browser_nice}" if args.clients == "browser" else "")
        )
        print(
            f"steps/s alone {alone:.2f}, with viewers {watched:.2f}: drop {drop * 100:.1f} % "
            f"(target < 10 %: {'met' if drop < 0.10 else 'NOT met'})"
        )
        cores = os.cpu_count()
        print(
            f"CPU while watched: dashboard server {window['server_cpu'] / args.seconds:.2f} "
            f"cores ({window['server_cpu'] / args.seconds / cores * 100:.1f} % of this "
            f"machine's {cores}), {args.clients} clients "
            f"{window['clients_cpu'] / args.seconds:.2f} cores"
        )
        progress, p90 = window["progress"]
        charts_every, c90 = window["charts"]
        print(
            f"progress refresh: median {progress:.2f} s, p90 {p90:.2f} s (target about 1 s: "
            f"{'met' if progress < 1.5 else 'NOT met'}); charts: median {charts_every:.2f} s, "
            f"p90 {c90:.2f} s"
        )
        if "server_rss" in window:
            print(
                f"server memory (RSS): {window['server_rss'][0]:.0f} MB at the window's start, "
                f"{window['server_rss'][1]:.0f} MB at its end"
            )
        if "megabytes" in window:
            print(
                f"sent to the viewers: {window['megabytes']:.1f} MB "
                f"({window['megabytes'] / args.seconds / args.viewers * 1000:.0f} kB/s each)"
            )
    finally:
        store.cancel_comparison(comparison)
        server.terminate()
        server.wait(20)


if __name__ == "__main__":
    main()
