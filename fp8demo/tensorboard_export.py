"""Write a finished (or running) run's records as TensorBoard event files.

Users who track their experiments in TensorBoard bring fp8demo runs there: one TensorBoard
run per fp8demo run (`<dir>/run<id>-<precision>`), written with `tf.summary` from what the
run store holds:

    train/loss, train/accuracy            per training step (the true per-batch values)
    epoch/{loss,accuracy,val_loss,val_accuracy}   per epoch, at the epoch's last step
    test/loss, test/accuracy              once, at the last step
    fp8_scale/<layer>/<role>              each recorded scale
    fp8_amax/<layer>/<role>               each step's amax (the history, unrolled)
    fp8_amax_history/<layer>/<role>       histogram of the amax window behind the scale,
                                          at up to HISTOGRAM_STEPS evenly spaced steps
    config                                the run's settings, as text
"""

import io
import json
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

import fp8demo.env  # noqa: F401  (before TensorFlow)
from fp8demo.fp8 import ROLES
from fp8demo.store import Store

HISTOGRAM_STEPS = 50  # enough to see the distribution move, small enough to load fast


def run_folder_name(run: dict) -> str:
    return f"run{run['id']}-{run['precision']}"


def export_run(store: Store, run_id, folder) -> Path:
    """Write run `run_id` into `folder/run<id>-<precision>`; returns that folder.

    Rewrites the run's folder from scratch, so exporting twice gives one copy, not two.
    """
    import tensorflow as tf  # lazy: TensorFlow loads in ~5 s

    run = store.run(run_id)
    target = Path(folder) / run_folder_name(run)
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    writer = tf.summary.create_file_writer(str(target))
    with writer.as_default():
        tf.summary.text("config", _config_markdown(run), step=0)
        last_step = _write_metrics(store, run)
        _write_fp8(store, run)
        test = run["summary"].get("test") or {}
        for name in ("loss", "accuracy"):
            if test.get(name) is not None:
                tf.summary.scalar(f"test/{name}", test[name], step=last_step)
    writer.close()
    return target


def _config_markdown(run: dict) -> str:
    """The settings as a two-column markdown table (TensorBoard's text plugin renders it)."""
    settings = {"precision": run["precision"], **run["config"].to_dict()}
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {name} | {json.dumps(value)} |" for name, value in settings.items()]
    return "\n".join(lines)


def _write_metrics(store: Store, run: dict) -> int:
    """Per-step and per-epoch metrics; returns the last step written (0 when none)."""
    import tensorflow as tf  # lazy: TensorFlow loads in ~5 s

    steps = store.step_metrics(run["id"])
    for step, loss, accuracy in zip(steps["step"], steps["loss"], steps["accuracy"]):
        for name, value in (("loss", loss), ("accuracy", accuracy)):
            if np.isfinite(value):
                tf.summary.scalar(f"train/{name}", float(value), step=int(step))
    last_step = int(steps["step"][-1]) if len(steps["step"]) else 0
    for epoch in store.epoch_metrics(run["id"]):
        for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
            if epoch.get(name) is not None:
                tf.summary.scalar(f"epoch/{name}", epoch[name], step=int(epoch["step"]))
        last_step = max(last_step, int(epoch["step"]))
    return last_step


def _write_fp8(store: Store, run: dict) -> None:
    """Scales, per-step amaxes and amax-history histograms of every float8 tensor."""
    import tensorflow as tf  # lazy: TensorFlow loads in ~5 s

    layers = [layer["name"] for layer in run["summary"].get("fp8_layers", [])]
    if not layers:
        return
    history_length = run["config"].amax_history_length
    scale_steps, scales = store.fp8_scales(run["id"])
    amax_steps, amax = store.fp8_amax(run["id"])
    histogram_at = set(
        np.linspace(0, len(amax_steps) - 1, HISTOGRAM_STEPS).astype(int).tolist()
        if len(amax_steps)
        else []
    )
    for i, layer in enumerate(layers):
        for j, role in enumerate(ROLES):
            tag = f"{layer}/{role}"
            for step, scale in zip(scale_steps, scales[:, i, j]):
                tf.summary.scalar(f"fp8_scale/{tag}", float(scale), step=int(step))
            for k, step in enumerate(amax_steps):
                tf.summary.scalar(f"fp8_amax/{tag}", float(amax[k, i, j]), step=int(step))
                if k in histogram_at:
                    window = amax[max(0, k + 1 - history_length) : k + 1, i, j]
                    tf.summary.histogram(f"fp8_amax_history/{tag}", window, step=int(step))


def export_zip(store: Store, run_ids) -> bytes:
    """The runs' event files as a zip (one folder per run), for a browser download."""
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as folder, zipfile.ZipFile(buffer, "w") as archive:
        for run_id in run_ids:
            target = export_run(store, run_id, folder)
            for path in sorted(target.iterdir()):
                archive.write(path, f"{target.name}/{path.name}")
    return buffer.getvalue()
