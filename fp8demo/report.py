"""Comparison reports: paired differences, statistics over seeds, and the metrics export.

Plain data in (the store's comparison and run dicts), plain data out. The CLI, the pages and
the worker all report through these functions, so "fp8 − bf16" means the same number in a
terminal, on the Results page and in a JSON file.
"""

import math

from fp8demo import verdicts
from fp8demo.config import FLOAT8_PRECISIONS

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


# -- verdicts over the seeds that exist -------------------------------------------------------

# Settings that change no trained number: where and in what order runs train, which
# precisions one launch holds, the evaluation after training. Comparisons that differ only
# in these (and the seed) are repeats of the same settings.
NOT_SETTINGS = ("seed", "precisions", "side_by_side", "ptq")


def settings_key(config) -> str:
    """A comparison's settings but the seed (and NOT_SETTINGS), as comparable text."""
    values = {k: v for k, v in config.to_dict().items() if k not in NOT_SETTINGS}
    return repr(sorted(values.items()))


MONITOR_SOURCE = "monitor"  # monitor.SOURCE, spelled here: importing monitor loads Keras


def recorded_by_monitor(comparison) -> bool:
    """Whether a user's own script recorded the comparison's runs (FP8Monitor): the engine
    cannot train its model again, so it has no repeats, twins or other engine-only actions."""
    return any(r["summary"].get("source") == MONITOR_SOURCE for r in comparison["runs"])


def experiment_key(comparison) -> str:
    """What repeats of one experiment share: the settings but the seed; for a user's own model
    (FP8Monitor), which the settings do not describe, also the comparison's label."""
    key = settings_key(comparison["config"])
    if recorded_by_monitor(comparison):
        return f"{key} label={comparison.get('label') or ''!r}"
    return key


def seed_of(comparison):
    """The comparison's seed; one a user's script did not say (FP8Monitor without seed=)
    counts as a seed of its own."""
    if any(r["summary"].get("seed_unknown") for r in comparison["runs"]):
        return f"comparison {comparison['id']}"
    return comparison["config"].seed


def seed_differences(comparisons, precision: str, baseline: str = BASELINE) -> dict:
    """{seed: `precision` − baseline test accuracy in points} over these comparisons: the
    first comparison with both runs finished counts for each seed (a repeat of one seed is
    no new evidence)."""
    differences = {}
    for c in sorted(comparisons, key=lambda c: c["id"]):
        finished = [r for r in c["runs"] if r["status"] == "finished"]
        difference = paired_differences(finished, baseline=baseline).get(precision)
        if difference is not None:
            differences.setdefault(seed_of(c), difference * 100)
    return differences


def repeats_of(comparisons, comparison) -> list:
    """The comparisons of `comparison`'s experiment, any seed (itself included): its repeats
    group and every other launch or sweep trial that happened to use the same settings."""
    key = experiment_key(comparison)
    return [c for c in comparisons if experiment_key(c) == key]


def comparison_verdict(
    comparisons,
    comparison,
    precision: str = "fp8",
    tolerance: float = verdicts.TOLERANCE_POINTS,
    baseline: str = BASELINE,
) -> dict | None:
    """verdicts.paired_verdict of `precision` − baseline over the seeds of `comparison`'s
    settings (`comparisons`: every comparison of the store), or None when no seed has both
    runs finished or `precision` is no float8 one. The comparison's own seed counts with its
    own runs."""
    if precision not in FLOAT8_PRECISIONS:
        return None
    repeats = [comparison] + [
        c for c in repeats_of(comparisons, comparison) if c["id"] != comparison["id"]
    ]
    differences = seed_differences(repeats[:1], precision, baseline)
    for seed, difference in seed_differences(repeats[1:], precision, baseline).items():
        differences.setdefault(seed, difference)
    return verdicts.paired_verdict(list(differences.values()), tolerance)


def next_seed(comparisons, comparison) -> int:
    """The first seed after every seed `comparison`'s settings were trained with."""
    return max(c["config"].seed for c in repeats_of(comparisons, comparison) + [comparison]) + 1


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
