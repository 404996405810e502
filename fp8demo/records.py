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


def health(store: Store, run: dict) -> Health:
    """Read a run's amax and probe series and summarise them under its amax history length."""
    layers = float8_layer_names(run)
    amax_steps, amax = store.fp8_amax(run["id"])
    probe_steps, probe_stats = store.fp8_probe(run["id"])
    kept = bf16_layer_names(run)
    if not layers:
        return Health(layers, amax_steps, amax, probe_steps, probe_stats, None, [], kept)
    history_length = run["config"].amax_history_length
    result = fp8.health(amax, history_length=history_length)
    rows = fp8.health_summary(
        amax, layers, history_length, probe_steps, probe_stats, result, amax_steps=amax_steps
    )
    return Health(layers, amax_steps, amax, probe_steps, probe_stats, result, rows, kept)


def bf16_row(layer: str) -> dict:
    """A health table row for a layer kept in bf16: no float8 tensor, nothing to flag."""
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


def table_rows(summary: Health) -> list[dict]:
    """The health rows with a "bf16" row for each layer kept in bf16, in model order (the
    float8 rows of a model other than the example's keep theirs, the bf16 rows after them)."""
    rows = summary.rows + [bf16_row(layer) for layer in summary.bf16_layers]
    order = {name: k for k, name in enumerate(MODEL_LAYERS)}
    return sorted(rows, key=lambda r: order.get(r["layer"], len(order)))


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
