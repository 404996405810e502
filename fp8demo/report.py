"""Comparison reports: paired differences, statistics over seeds, and the metrics export.

Plain data in (the store's comparison and run dicts), plain data out. The CLI, the pages and
the worker all report through these functions, so "fp8 − bf16" means the same number in a
terminal, on the Results page and in a JSON file.
"""

import math

BASELINE = "bf16"  # the precision the others are measured against, as in the Keras example


def difference_name(precision: str, baseline: str = BASELINE) -> str:
    """How a paired difference is labelled everywhere: "fp8 − bf16"."""
    return f"{precision} − {baseline}"


def paired_differences(runs, metric: str = "test_accuracy", baseline: str = BASELINE) -> dict:
    """{precision: its `metric` minus the baseline run's} for one comparison's runs.

    Runs without a value for `metric` are left out; with no baseline value the result is empty.
    Pairing within one comparison keeps the data, seed and settings identical on both sides.
    """
    values = {r["precision"]: r[metric] for r in runs if r.get(metric) is not None}
    if baseline not in values:
        return {}
    return {p: v - values[baseline] for p, v in values.items() if p != baseline}


def paired_ratios(runs, metric: str = "steps_per_sec", baseline: str = BASELINE) -> dict:
    """{precision: its `metric` divided by the baseline run's}, for rates such as speed."""
    values = {r["precision"]: r[metric] for r in runs if r.get(metric)}
    if baseline not in values:
        return {}
    return {p: v / values[baseline] for p, v in values.items() if p != baseline}


def mean_and_std(values) -> dict:
    """{"n", "mean", "std"} of a list of numbers; std uses n − 1 (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"n": n, "mean": float(mean), "std": float(std)}


def repeat_statistics(comparisons, baseline: str = BASELINE) -> dict:
    """Test accuracy over repeats of one comparison with different seeds.

    {name: {"n", "mean", "std"}} for every precision, every post-training quantization
    ("int8 PTQ") and every paired difference to the baseline ("fp8 − bf16"). Only finished
    runs count; a difference counts the seeds where both of its runs finished.
    """
    values: dict[str, list] = {}
    for c in comparisons:
        finished = [r for r in c["runs"] if r["status"] == "finished"]
        for run in finished:
            values.setdefault(run["precision"], []).append(run["test_accuracy"])
            for mode, result in (run["summary"].get("ptq") or {}).items():
                values.setdefault(f"{mode} PTQ", []).append(result["test_accuracy"])
        for precision, difference in paired_differences(finished, baseline=baseline).items():
            values.setdefault(difference_name(precision, baseline), []).append(difference)
    return {name: mean_and_std(v) for name, v in values.items()}


def metrics_frame(store, runs):
    """Per-step metrics of every run as one pandas DataFrame, with each epoch's validation
    loss and accuracy on that epoch's last step (empty elsewhere)."""
    import pandas as pd  # lazy: pandas loads in ~1 s

    frames = []
    for r in runs:
        # The store hands steps back as floats; they are whole numbers in the file.
        steps = pd.DataFrame(store.step_metrics(r["id"])).astype({"step": int, "epoch": int})
        steps.insert(0, "precision", r["precision"])
        steps.insert(0, "run_id", r["id"])
        epochs = pd.DataFrame(
            store.epoch_metrics(r["id"]), columns=["step", "val_loss", "val_accuracy"]
        )
        frames.append(steps.merge(epochs, on="step", how="left") if len(steps) else steps)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def metrics_csv(store, runs) -> str:
    """metrics_frame as CSV text: the Results page's download and `python -m fp8demo export`."""
    return metrics_frame(store, runs).to_csv(index=False)
