"""Comparison reports on real stores (SQLite and PostgreSQL): paired differences, seed
statistics, CSV export."""

import csv
import io
import math

import numpy as np
import pandas as pd
import pytest

from fp8demo import report
from fp8demo.config import TrainConfig
from fp8demo.store import Store

THREE = ("bf16", "fp8", "float32")


def finished_comparison(store, accuracies: dict, seed=42, group_id=None, **fields) -> int:
    """A comparison whose runs finished with the given test accuracies (None: left queued)."""
    config = TrainConfig(precisions=tuple(accuracies), seed=seed)
    cid, run_ids = store.create_comparison(config, group_id=group_id)
    for run_id, accuracy in zip(run_ids, accuracies.values(), strict=True):
        if accuracy is not None:
            store.end_run(run_id, "finished", test_accuracy=accuracy, **fields)
    return cid


def test_paired_differences_subtract_the_bf16_run_of_the_same_comparison(tmp_path):
    store = Store(tmp_path)
    cid = finished_comparison(store, {"bf16": 0.80, "fp8": 0.8125, "float32": 0.79}, test_loss=0.5)
    runs = store.comparison(cid)["runs"]
    assert report.paired_differences(runs) == pytest.approx({"fp8": 0.0125, "float32": -0.01})
    assert report.paired_differences(runs, "test_loss") == {"fp8": 0.0, "float32": 0.0}
    assert report.difference_name("fp8") == "fp8 − bf16"
    # Any precision can be the baseline.
    assert report.paired_differences(runs, baseline="fp8") == pytest.approx(
        {"bf16": -0.0125, "float32": -0.0225}
    )


def test_paired_differences_leave_out_runs_without_a_value(tmp_path):
    store = Store(tmp_path)
    fp8_pending = store.comparison(finished_comparison(store, {"bf16": 0.8, "fp8": None}))
    assert report.paired_differences(fp8_pending["runs"]) == {}
    bf16_pending = store.comparison(finished_comparison(store, {"bf16": None, "fp8": 0.8}))
    assert report.paired_differences(bf16_pending["runs"]) == {}


def test_paired_ratios_compare_speeds(tmp_path):
    store = Store(tmp_path)
    cid = finished_comparison(store, {"bf16": 0.8, "fp8": 0.8, "float32": 0.8})
    bf16, fp8, float32 = store.comparison(cid)["runs"]
    store.update_run(bf16["id"], steps_per_sec=4.0)
    store.update_run(fp8["id"], steps_per_sec=5.0)  # float32 has no speed yet
    assert report.paired_ratios(store.comparison(cid)["runs"]) == {"fp8": 1.25}


def test_mean_and_std_use_n_minus_one():
    assert report.mean_and_std([0.80, 0.82, 0.87]) == pytest.approx(
        {"n": 3, "mean": np.mean([0.80, 0.82, 0.87]), "std": np.std([0.80, 0.82, 0.87], ddof=1)}
    )
    assert report.mean_and_std([0.8]) == {"n": 1, "mean": 0.8, "std": 0.0}


def test_repeat_statistics_over_seeds(tmp_path):
    store = Store(tmp_path)
    seeds = [
        {"bf16": 0.80, "fp8": 0.81, "float32": 0.82},
        {"bf16": 0.84, "fp8": 0.82, "float32": 0.83},
        {"bf16": 0.76, "fp8": 0.80, "float32": None},
    ]  # float32 of the last seed unfinished
    first = finished_comparison(store, seeds[0], seed=1, group_id="self")
    for k, accuracies in enumerate(seeds[1:], start=2):
        finished_comparison(store, accuracies, seed=k, group_id=first)
    # The bf16 model's post-training int8 of the first seed.
    bf16_run = store.comparison(first)["runs"][0]["id"]
    store.merge_summary(bf16_run, ptq={"int8": {"test_accuracy": 0.79, "test_loss": 0.5}})

    stats = report.repeat_statistics(store.group(first))
    assert list(stats) == ["bf16", "int8 PTQ", "fp8", "float32", "fp8 − bf16", "float32 − bf16"]
    assert stats["bf16"]["n"] == 3
    assert stats["bf16"]["mean"] == pytest.approx(0.80)
    assert stats["bf16"]["std"] == pytest.approx(0.04)  # deviations 0, 0.04, -0.04
    assert stats["int8 PTQ"] == {"n": 1, "mean": 0.79, "std": 0.0}
    assert stats["float32"]["n"] == 2  # unfinished runs do not count
    assert stats["fp8 − bf16"]["mean"] == pytest.approx((0.01 - 0.02 + 0.04) / 3)
    assert stats["fp8 − bf16"]["std"] == pytest.approx(np.std([0.01, -0.02, 0.04], ddof=1))
    assert stats["float32 − bf16"]["n"] == 2
    assert stats["float32 − bf16"]["mean"] == pytest.approx((0.02 - 0.01) / 2)


def filled_store(home):
    """A bf16 + fp8 comparison with 6 recorded steps each over two epochs."""
    store = Store(home)
    cid, run_ids = store.create_comparison(TrainConfig(precisions=("bf16", "fp8")))
    for k, run_id in enumerate(run_ids):
        loss = [0.70, 0.66, math.nan, 0.55, 0.50, 0.48]  # a NaN loss is stored as a gap
        store.add_steps(
            run_id,
            [
                (s, (s - 1) // 3, 0.25 * s, loss[s - 1], 0.5 + 0.05 * s + k / 100)
                for s in range(1, 7)
            ],
        )
        store.add_epoch(run_id, 0, 3, 0.68, 0.6, 0.60, 0.70 + k / 100)
        store.add_epoch(run_id, 1, 6, 0.51, 0.7, 0.50, 0.80 + k / 100)
    return store, cid, run_ids


def test_metrics_csv_round_trips_through_pandas_and_csv(tmp_path):
    store, cid, (bf16, fp8) = filled_store(tmp_path)
    text = report.metrics_csv(store, store.comparison(cid)["runs"])

    frame = pd.read_csv(io.StringIO(text))
    assert list(frame.columns) == [
        "run_id",
        "precision",
        "step",
        "epoch",
        "time",
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
    ]
    assert frame["run_id"].tolist() == [bf16] * 6 + [fp8] * 6
    assert frame["precision"].tolist() == ["bf16"] * 6 + ["fp8"] * 6
    assert frame["step"].tolist() == [1, 2, 3, 4, 5, 6] * 2
    assert frame["epoch"].tolist() == [0, 0, 0, 1, 1, 1] * 2
    for run_id, rows in frame.groupby("run_id"):
        stored = store.step_metrics(run_id)
        for column in ("time", "loss", "accuracy"):
            np.testing.assert_array_equal(rows[column].to_numpy(), stored[column])
    # Validation sits on each epoch's last step only.
    fp8_rows = frame[frame["precision"] == "fp8"].set_index("step")
    assert fp8_rows["val_accuracy"].dropna().to_dict() == {3: 0.71, 6: 0.81}
    assert fp8_rows["val_loss"].dropna().to_dict() == {3: 0.60, 6: 0.50}

    # Plain csv sees whole-number steps and empty fields for the gaps.
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[2]["step"] == "3" and rows[2]["loss"] == "" and rows[2]["val_loss"] == "0.6"
    assert rows[0]["val_loss"] == rows[0]["val_accuracy"] == ""


def test_metrics_csv_of_runs_without_steps_has_no_rows(tmp_path):
    store = Store(tmp_path)
    cid, _ = store.create_comparison(TrainConfig(precisions=("bf16", "fp8")))
    frame = pd.read_csv(io.StringIO(report.metrics_csv(store, store.comparison(cid)["runs"])))
    assert len(frame) == 0 and {"step", "loss", "accuracy"} <= set(frame.columns)
