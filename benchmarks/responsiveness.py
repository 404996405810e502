"""How quickly the dashboard answers.

1. Prediction: one typed review through a loaded model (predict.load_run(...).predict),
   median over 50 calls, per precision. Target ≤ 50 ms.
2. First paint of each page: streamlit.testing.v1.AppTest.from_file(page).run(), against a
   store holding one finished subset comparison (trained first by `python -m fp8demo train`
   in a subprocess, so this process starts like a dashboard server: streamlit, plotly and
   pandas imported, keras not yet). "fresh" = empty Streamlit caches (the first visitor
   after a server start), "repeat" = a second visit (caches warm).
3. Live page figures: the fp8demo.charts calls pages/live.py makes (loss and accuracy
   curves of two runs, three amax heatmaps, the scales figure) plus their JSON
   serialization, from a store holding a full 1,024-step history for 8 float8 layers ×
   3 roles. Target: well under 1 s.
4. CLI commands: the wall time of `python -m fp8demo runs --json` and `show RUN --json` in a
   new process (what a user typing them waits for, start-up included), median of 5.

    .venv/bin/python benchmarks/responsiveness.py [--store HOME_WITH_A_FINISHED_COMPARISON]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

PREDICT_TARGET_MS = 50
FIGURES_TARGET_S = 1.0
PAGES = ("pages/train.py", "pages/live.py", "pages/results.py", "pages/predict.py")
REVIEW = "I expected little, but the acting is superb and the ending moved me. Recommended!"


def train_store(home: Path, subset: int, epochs: int):
    """One finished bf16 + fp8 comparison, trained by the CLI in its own process."""
    env = dict(os.environ, FP8DEMO_HOME=str(home), PYTHONPATH=str(_common.ROOT))
    command = [
        sys.executable,
        "-m",
        "fp8demo",
        "train",
        "--subset",
        str(subset),
        "--epochs",
        str(epochs),
        "--vocab-method",
        "fast",
    ]
    print("training the store:", " ".join(command[1:]), flush=True)
    started = time.perf_counter()
    subprocess.run(command, env=env, cwd=_common.ROOT, check=True, stdout=subprocess.DEVNULL)
    print(f"  trained in {time.perf_counter() - started:.0f} s", flush=True)


def page_paints(home: Path) -> list[dict]:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["FP8DEMO_HOME"] = str(home)
    rows = []
    for visit in ("fresh", "repeat"):
        for page in PAGES:
            if visit == "fresh":
                st.cache_resource.clear()
                st.cache_data.clear()
            at = AppTest.from_file(str(_common.ROOT / page), default_timeout=300)
            started = time.perf_counter()
            at.run()
            seconds = time.perf_counter() - started
            errors = [e.value for e in at.exception] if at.exception else []
            rows.append({"page": page, "visit": visit, "seconds": seconds, "errors": errors})
            print(
                f"  {page:18} {visit:6} {seconds * 1000:8.0f} ms"
                + (f"  EXCEPTION: {errors[0][:120]}" if errors else ""),
                flush=True,
            )
    return rows


def predict_latency(home: Path, n: int = 50) -> dict:
    from fp8demo import predict
    from fp8demo.store import Store

    store = Store(home)
    comparison = store.comparison(store.latest_comparison_id())
    out = {}
    for run in comparison["runs"]:
        started = time.perf_counter()
        loaded = predict.load_run(store, run["id"])
        load_s = time.perf_counter() - started
        times = []
        for _ in range(n):
            t = time.perf_counter()
            loaded.predict([REVIEW])
            times.append(time.perf_counter() - t)
        out[run["precision"]] = {
            "load_seconds": load_s,
            "median_ms": statistics.median(times) * 1000,
            "p90_ms": sorted(times)[int(0.9 * n) - 1] * 1000,
        }
        print(
            f"  {run['precision']}: load {load_s:.1f} s, predict median "
            f"{out[run['precision']]['median_ms']:.1f} ms, "
            f"p90 {out[run['precision']]['p90_ms']:.1f} ms",
            flush=True,
        )
    return out


def fill_live_store(home: Path, steps: int = 1024, n_layers: int = 8, seed: int = 0):
    """A comparison as the training process writes it: bf16 finished, fp8 running at step 1024."""
    import numpy as np

    from fp8demo.config import TrainConfig
    from fp8demo.store import Store

    rng = np.random.default_rng(seed)
    store = Store(home)
    cid, run_ids = store.create_comparison(TrainConfig())
    layers = [f"decoder/layer_{i}" for i in range(n_layers)]
    for run_id in run_ids:
        run = store.run(run_id)
        store.update_run(
            run_id,
            status="running",
            phase="training",
            steps_per_epoch=steps // 2,
            total_steps=steps,
            step=steps,
            epoch=2,
        )
        loss = np.linspace(0.7, 0.3, steps) + rng.normal(0, 0.05, steps)
        store.add_steps(
            run_id,
            [
                (s + 1, s // (steps // 2), 0.06 * (s + 1), loss[s], 1 - loss[s])
                for s in range(steps)
            ],
        )
        store.add_epoch(run_id, 0, steps // 2, 0.5, 0.75, 0.45, 0.78)
        store.add_epoch(run_id, 1, steps, 0.35, 0.85, 0.33, 0.86)
        if run["precision"] == "fp8":
            store.merge_summary(
                run_id,
                fp8_layers=[
                    {"name": n, "class": "Dense", "policy": "float8_from_mixed_bfloat16"}
                    for n in layers
                ],
            )
            amax = np.exp(rng.normal(0, 2, (steps, n_layers, 3))).astype(np.float32)
            store.add_fp8_amax(run_id, 1, amax)
            for s in range(8, steps + 1, 8):  # a snapshot every ~0.5 s ≈ every 8 steps
                store.add_fp8_scales(run_id, s, amax[s - 1] / 448.0)
        else:
            store.end_run(run_id, "finished", test_loss=0.33, test_accuracy=0.86)
    return store, cid


def visit_seconds(pages: list[dict], page: str, visit: str) -> float:
    return next(r["seconds"] for r in pages if r["page"] == page and r["visit"] == visit)


def live_figures(home: Path, repeats: int = 10) -> dict:
    """Time what one refresh of pages/live.py computes (store reads + charts + JSON)."""
    from fp8demo import charts
    from fp8demo.fp8 import ROLES

    store, cid = fill_live_store(home)

    def refresh(serialize: bool):
        figures = []
        comparison = store.comparison(cid)
        runs = comparison["runs"]
        for metric in ("loss", "accuracy"):  # live.metric_curves
            curves = [
                charts.curve_from_store(
                    r["precision"],
                    r["precision"],
                    store.step_metrics(r["id"]),
                    store.epoch_metrics(r["id"]),
                    metric,
                )
                for r in runs
            ]
            figures.append(
                charts.metric_figure(curves, metric, smoothing=0.6, log_y=False, x_axis="step")
            )
        fp8_run = next(r for r in runs if r["precision"] == "fp8")  # live.fp8_panel
        layers = [layer["name"] for layer in fp8_run["summary"]["fp8_layers"]]
        steps, amax = store.fp8_amax(fp8_run["id"])
        for j, role in enumerate(ROLES):
            figures.append(charts.amax_heatmap(steps, amax[:, :, j], layers, role))
        s_steps, scales = store.fp8_scales(fp8_run["id"])
        figures.append(charts.scales_figure(s_steps, scales, layers))
        if serialize:  # st.plotly_chart sends each figure as JSON
            for fig in figures:
                fig.to_json()
        return len(steps)

    refresh(True)  # warm-up: first plotly validator imports
    out = {}
    for serialize in (False, True):
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            n = refresh(serialize)
            times.append(time.perf_counter() - t)
        key = "build_and_json" if serialize else "build"
        out[key] = statistics.median(times)
        print(
            f"  live refresh ({n} steps × 8 layers × 3 roles, 7 figures), "
            f"{'figures + JSON' if serialize else 'figures only'}: median {out[key] * 1000:.0f} ms",
            flush=True,
        )
    return out


CLI_COMMANDS = (("runs", "--json"), ("show", "1", "--json"))


def cli_seconds(home: Path, repeats: int = 5) -> dict:
    """{command: median wall seconds} of CLI commands, each in a new process."""
    env = dict(os.environ, FP8DEMO_HOME=str(home))
    medians = {}
    for command in CLI_COMMANDS:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "fp8demo", *command],
                env=env,
                check=True,
                capture_output=True,
            )
            times.append(time.perf_counter() - started)
        medians[" ".join(command)] = statistics.median(times)
    return medians


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--store",
        default="",
        help="a home with a finished comparison (default: train one into a temp folder)",
    )
    parser.add_argument("--subset", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=50, help="predictions to time")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)

    scratch = _common.setup_env()
    home = Path(args.store) if args.store else scratch / "trained"
    live_home = scratch / "live"
    try:
        # Like a server process: the dashboard's own imports, not keras.
        import pandas  # noqa: F401
        import plotly.graph_objects  # noqa: F401
        import streamlit  # noqa: F401

        if not args.store:
            train_store(home, args.subset, args.epochs)
        print("== first paint of each page (AppTest, first .run())")
        pages = page_paints(home)
        print("== live page figures")
        figures = live_figures(live_home)
        print(f"== prediction latency (median of {args.repeats})")
        latency = predict_latency(home, args.repeats)
        print("== CLI commands (median of 5)")
        commands = cli_seconds(home)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(
        "\n"
        + _common.table(
            ["page", "fresh caches ms", "repeat visit ms"],
            [
                (
                    p,
                    f"{visit_seconds(pages, p, 'fresh') * 1000:.0f}",
                    f"{visit_seconds(pages, p, 'repeat') * 1000:.0f}",
                )
                for p in PAGES
            ],
        )
    )
    worst = max(v["median_ms"] for v in latency.values())
    print(
        "\nprediction, one review: "
        + ", ".join(f"{k} {v['median_ms']:.1f} ms" for k, v in latency.items())
        + f" (target ≤ {PREDICT_TARGET_MS} ms): {_common.met(worst <= PREDICT_TARGET_MS)}"
    )
    print(
        f"live page figures: {figures['build'] * 1000:.0f} ms to build, "
        f"{figures['build_and_json'] * 1000:.0f} ms with JSON (target well under "
        f"{FIGURES_TARGET_S:.0f} s): "
        f"{_common.met(figures['build_and_json'] <= FIGURES_TARGET_S / 2)}"
    )
    print("CLI: " + ", ".join(f"{k} {v:.2f} s" for k, v in commands.items()))
    if any(r["errors"] for r in pages):
        print("page exceptions:", [(r["page"], r["errors"][0][:200]) for r in pages if r["errors"]])
    _common.write_json(
        args.json,
        {"pages": pages, "predict": latency, "live_figures": figures, "cli": commands},
    )


if __name__ == "__main__":
    main()
