"""Read models: a run and its fp8 health as plain values, for the CLI and the pages alike.

Everything here reads the store and returns dicts, lists and arrays (JSON-ready where the CLI
prints them): `show --json` and the Results and Health pages build on the same records.
"""

import dataclasses

import numpy as np

from fp8demo import compiled, fp8, report, verdicts
from fp8demo.config import FLOAT8_PRECISIONS, MODEL_LAYERS
from fp8demo.store import Store

RUN_FIELDS = (
    "id",
    "comparison_id",
    "precision",
    "status",
    "phase",
    "worker_pid",
    "host",
    "slot",
    "epoch",
    "step",
    "total_steps",
    "test_accuracy",
    "test_loss",
    "fit_seconds",
    "steps_per_sec",
    "samples_per_sec",
    "params",
    "device",
    "error",
)


def run_json(run) -> dict:
    """A run's row fields (`runs --json`, the head of `show --json`)."""
    return {k: run[k] for k in RUN_FIELDS}


def float8_layer_names(run) -> list[str]:
    """The names of a run's float8 layers (none for bf16, or before the model is built)."""
    return [layer["name"] for layer in run["summary"].get("fp8_layers", [])]


# -- fp8 health -------------------------------------------------------------------------------


@dataclasses.dataclass
class Health:
    """A float8 run's stored numerics and their summary: the series the Health page charts
    and the rows its table and `python -m fp8demo health` show."""

    layers: list[str]
    amax_steps: np.ndarray  # [steps]
    amax: np.ndarray  # [steps, layers, roles]
    probe_steps: np.ndarray  # [probes]
    probe_stats: np.ndarray  # [probes, layers, roles, 2]: saturation, underflow fractions
    result: dict | None  # fp8.health(amax): headroom, overflows …; None without float8 layers
    rows: list[dict]  # fp8.health_summary: one per float8 layer and role
    bf16_layers: list[str] = dataclasses.field(default_factory=list)  # kept in bf16 by config
    # {layer: step} of the layers a fallback moved to bf16 while training (fallback.py)
    fallback_steps: dict[str, int] = dataclasses.field(default_factory=dict)


def bf16_layer_names(run) -> list[str]:
    """The float8-capable layers a float8 run kept in bf16 by its settings (bf16_layers, the
    head when quantize_head is off), in model order; none for other precisions."""
    if run["precision"] not in FLOAT8_PRECISIONS:
        return []
    return list(run["config"].bf16_layer_names())


def kept_in_bf16_words(config) -> str | None:
    """The layers a comparison's float8 runs keep in bf16, in words for Live and Results
    ("Kept in bf16 in the float8 runs: dense, classifier."); None when they keep none."""
    names = config.bf16_layer_names()
    if not names or not set(config.precisions) & set(FLOAT8_PRECISIONS):
        return None
    return f"Kept in bf16 in the float8 runs: {', '.join(names)}."


def fallback_steps(run) -> dict[str, int]:
    """{layer: step} of the layers a fallback moved to bf16 while training, from the run's
    summary (fallback_events: a layer moves once; the first event counts)."""
    steps = {}
    for event in run["summary"].get("fallback_events") or []:
        steps.setdefault(event["layer"], int(event["step"]))
    return steps


def health(store: Store, run: dict) -> Health:
    """Read a run's amax and probe series and summarise them under its amax history length."""
    layers = float8_layer_names(run)
    amax_steps, amax = store.fp8_amax(run["id"])
    probe_steps, probe_stats = store.fp8_probe(run["id"])
    kept, moved = bf16_layer_names(run), fallback_steps(run)
    if not layers:
        return Health(layers, amax_steps, amax, probe_steps, probe_stats, None, [], kept, moved)
    history_length = run["config"].amax_history_length
    result = fp8.health(amax, history_length=history_length)
    rows = fp8.health_summary(
        amax, layers, history_length, probe_steps, probe_stats, result, amax_steps=amax_steps
    )
    return Health(layers, amax_steps, amax, probe_steps, probe_stats, result, rows, kept, moved)


def bf16_row(layer: str) -> dict:
    """A health table row for a layer kept in bf16: no float8 tensor, nothing to flag (its
    number cells are None: JSON null, an empty cell on the page)."""
    return {
        "layer": layer,
        "role": "all",
        "format": "bf16",
        "overflows": None,
        "min headroom": None,
        "median headroom": None,
        "dead since": None,
        "at risk": False,
    }


def fallback_format(step: int) -> str:
    """The format cell of a tensor whose layer a fallback moved to bf16: "bf16 (from step 12)"."""
    return f"bf16 (from step {step})"


def table_rows(summary: Health) -> list[dict]:
    """The health rows with a "bf16" row for each layer kept in bf16, in model order (the
    float8 rows of a model other than the example's keep theirs, the bf16 rows after them).
    The rows of a layer a fallback moved keep their float8 numbers (measured before the move
    and, by the probe, after it) and say in their format where the layer ended."""
    moved = summary.fallback_steps
    rows = [
        {**r, "format": fallback_format(moved[r["layer"]])} if r["layer"] in moved else r
        for r in summary.rows
    ]
    rows += [bf16_row(layer) for layer in summary.bf16_layers]
    order = {name: k for k, name in enumerate(MODEL_LAYERS)}
    return sorted(rows, key=lambda r: order.get(r["layer"], len(order)))


def table_json(summary: Health) -> list[dict]:
    """table_rows for `health RUN --json`: each row also says since which step its layer
    computes in bf16 after a fallback (fallback_step; None for the others)."""
    moved = summary.fallback_steps
    return [{**r, "fallback_step": moved.get(r["layer"])} for r in table_rows(summary)]


def health_summary(store: Store, run: dict) -> list[dict]:
    """One row per float8 layer and role, flagging the tensors at risk (fp8.health_summary),
    and one saying "bf16" per layer the run kept in bf16."""
    return table_rows(health(store, run))


def health_record(store: Store, run: dict) -> dict:
    """FP8 health in brief: overflows per tensor, the tensors at risk, the dead tensors (in
    words too), the latest probe."""
    summary = health(store, run)
    tensors = [
        {
            "layer": r["layer"],
            "role": r["role"],
            "overflows": r["overflows"],
            "saturation_pct": r.get("saturation %"),
            "underflow_pct": r.get("underflow %"),
            "at_risk": r["at risk"],
            "dead_since": r["dead since"],
            "fallback_step": summary.fallback_steps.get(r["layer"]),
        }
        for r in summary.rows
    ]
    return {
        "overflows": sum(t["overflows"] for t in tensors),
        "tensors_at_risk": [
            {"layer": t["layer"], "role": t["role"]} for t in tensors if t["at_risk"]
        ],
        "dead_tensors": [
            {"layer": t["layer"], "role": t["role"], "since": t["dead_since"]}
            for t in tensors
            if t["dead_since"] is not None
        ],
        "dead_summary": fp8.dead_summary(summary.rows),
        "bf16_layers": summary.bf16_layers,
        "latest_probe_step": int(summary.probe_steps[-1]) if len(summary.probe_steps) else None,
        "tensors": tensors,
    }


# -- one run ----------------------------------------------------------------------------------


def run_record(store: Store, run: dict, tolerance: float = verdicts.TOLERANCE_POINTS) -> dict:
    """Everything Results shows for one run, as JSON-ready values (`show --json`); a float8
    run's paired verdict against bf16 uses `tolerance` (± points of test accuracy)."""
    summary = run["summary"]
    layers = summary.get("fp8_layers", [])
    after = summary.get("fp8_after") or summary.get("fp8_before") or {}
    return {
        **run_json(run),
        "config": run["config"].to_dict(),
        "epochs": store.epoch_metrics(run["id"]),
        "phase_seconds": summary.get("phase_seconds") or {},
        "compiled_step": summary.get("compiled_step"),
        "compiled_step_verdict": (
            compiled.verdict(summary["compiled_step"]) if summary.get("compiled_step") else None
        ),
        "best_epoch": best_epoch_record(summary),
        "post_training": post_training_records(summary),
        "fp8_health": health_record(store, run) if layers else None,
        "paired_verdict": paired_verdict(store, run, tolerance),
        "without_fallback": without_fallback_record(store, run),
        "float8_layers": [
            {
                **layer,
                "scales": {role: v["scale"] for role, v in after.get(layer["name"], {}).items()},
            }
            for layer in layers
        ],
    }


def paired_verdict(
    store: Store, run: dict, tolerance: float = verdicts.TOLERANCE_POINTS
) -> dict | None:
    """A float8 run's fp8 − bf16 test accuracy (points) over the seeds its settings were
    trained with, with the 95 % interval and the verdict (report.comparison_verdict):
    {difference, ci_low, ci_high, seeds, tolerance, verdict[, more_seeds]}; None for other
    precisions or before a seed has both runs finished."""
    if run["precision"] not in FLOAT8_PRECISIONS:
        return None
    comparison = store.comparison(run["comparison_id"])
    return report.comparison_verdict(store.comparisons(), comparison, run["precision"], tolerance)


# -- with and without fallback ----------------------------------------------------------------


def fallback_twin(comparisons, comparison) -> dict | None:
    """The comparison that trained `comparison`'s settings and seed without fallback (one
    whose runs all finished first, else the earliest), None when there is none or
    `comparison` has no fallback. Everything else equal: report.settings_key and the seed."""
    config = comparison["config"]
    if not config.fallback:
        return None
    key = report.settings_key(dataclasses.replace(config, fallback=""))
    twins = [
        c
        for c in comparisons
        if not c["config"].fallback
        and c["config"].seed == config.seed
        and report.settings_key(c["config"]) == key
    ]
    finished = [c for c in twins if all(r["status"] == "finished" for r in c["runs"])]
    return min(finished or twins, key=lambda c: c["id"], default=None)


def without_fallback(comparisons, comparison, precision: str) -> dict | None:
    """What fallback bought `precision` in `comparison`: {comparison_id (the twin trained
    without fallback), test_accuracy (its `precision` run's, None until it finished),
    difference (with − without, points of test accuracy; None until both finished)}; None
    without a twin or for a precision that is no float8 one."""
    twin = fallback_twin(comparisons, comparison)
    if twin is None or precision not in FLOAT8_PRECISIONS:
        return None
    accuracy_with = finished_accuracy(comparison, precision)
    accuracy_without = finished_accuracy(twin, precision)
    both = accuracy_with is not None and accuracy_without is not None
    return {
        "comparison_id": twin["id"],
        "test_accuracy": accuracy_without,
        "difference": (accuracy_with - accuracy_without) * 100 if both else None,
    }


def finished_accuracy(comparison, precision: str) -> float | None:
    """The test accuracy of the comparison's `precision` run once it finished, else None."""
    run = next((r for r in comparison["runs"] if r["precision"] == precision), None)
    return run["test_accuracy"] if run and run["status"] == "finished" else None


def without_fallback_record(store: Store, run: dict) -> dict | None:
    """without_fallback of a float8 run trained with fallback (`show --json`), else None."""
    if not run["config"].fallback or run["precision"] not in FLOAT8_PRECISIONS:
        return None
    comparisons = store.comparisons()
    comparison = next(c for c in comparisons if c["id"] == run["comparison_id"])
    return without_fallback(comparisons, comparison, run["precision"])


def twin_config(config):
    """The settings of a fallback comparison's twin: the same, seed included, without it."""
    return dataclasses.replace(config, fallback="")


# -- sweeps and runs a user's script recorded -------------------------------------------------


def trial_verdicts(
    store: Store, trials, tolerance: float = verdicts.TOLERANCE_POINTS
) -> dict[int, dict | None]:
    """{trial number: the fp8 − bf16 paired verdict of its comparison's settings} for sweep
    trials ({"number", "comparison_id"}, as sweep.trial_rows gives them): over every seed
    those settings were trained with, so one trial alone is "inconclusive"; None for a trial
    without a finished pair."""
    comparisons = store.comparisons()
    by_id = {c["id"]: c for c in comparisons}
    return {
        t["number"]: (
            report.comparison_verdict(comparisons, by_id[t["comparison_id"]], "fp8", tolerance)
            if t["comparison_id"] in by_id
            else None
        )
        for t in trials
    }


def best_epoch_record(summary: dict) -> dict | None:
    """The best-validation epoch and the test accuracy of its weights (Results' "Best epoch")."""
    best = summary.get("best")
    if not best:
        return None
    return {
        "epoch": best["epoch"],
        "val_accuracy": best["val_accuracy"],
        "test_accuracy": best.get("test_accuracy"),
        "test_loss": best.get("test_loss"),
        "restored": bool(summary.get("restored_best")),
    }


def post_training_records(summary: dict) -> list[dict]:
    """The int8/int4 post-training quantization results of a bf16 run, once evaluated."""
    return [
        {
            "mode": mode,
            "test_accuracy": r["test_accuracy"],
            "test_loss": r["test_loss"],
            "weights_bytes": r.get("weights_bytes"),
        }
        for mode, r in (summary.get("ptq") or {}).items()
    ]
