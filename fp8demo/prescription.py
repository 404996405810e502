"""From FP8 health to a policy: underflow bands, the worst tensors, the layers to keep in bf16.

Bands grade the probe's underflow (% of a tensor's nonzero values flushed to zero) as NVIDIA
bionemo's analyzer grades gradient underflow: below 0.5 % excellent, 0.5–2 warning, 2–4
critical, above 4 severe; a value on an edge counts in the band above. The edges are a
setting (parse_bands).

The suggested policy keeps a layer in bf16 when one of its float8 tensors
  - is in the severe band at each of its last LAST_PROBES settled probes (one noisy batch
    does not move a layer; a tensor that stays severe loses values at every step), or
  - is dead (fp8.dead_since: all zero at the latest probe, or for DEAD_STEPS training steps).
Each suggested layer comes with these reasons in words. launch_suggested queues what shows
whether the policy pays: bf16 and the run's float8 precision over the run's settings, and that
precision with the suggested layers kept in bf16, under one label.

Everything but launch_suggested is a pure function of FP8 health's arrays and rows
(records.Health), so the page, the CLI and the tests read the same answer.
"""

import dataclasses

import numpy as np

from fp8demo import launcher
from fp8demo.config import MODEL_LAYERS, ConfigError, TrainConfig
from fp8demo.fp8 import ROLES
from fp8demo.store import Store

BANDS = (0.5, 2.0, 4.0)  # upper edges of excellent, warning and critical, in % underflow
BAND_NAMES = ("excellent", "warning", "critical", "severe")
LAST_PROBES = 3  # a tensor severe at each of the last this many settled probes qualifies
WORST = 5  # the tensors boxed on the bands heatmap
# Probes before this step measure delayed scaling's start at scale 1.0, not the run: a fresh
# run's first probe (step 0) can flush whole gradients (fp8.dead_since leaves them out too).
SETTLED_STEP = 2
ROLE_WORDS = dict(zip(ROLES, ("inputs", "kernel", "output gradient")))


# -- bands ------------------------------------------------------------------------------------


def parse_bands(text: str) -> tuple[float, float, float]:
    """Band edges from text, "0.5,2,4": three increasing percentages above 0 (ConfigError)."""
    try:
        edges = tuple(float(p) for p in str(text).split(","))
    except ValueError:
        edges = ()
    if len(edges) != 3 or not all(0 < e < 100 for e in edges) or not edges[0] < edges[1] < edges[2]:
        raise ConfigError(
            f"Bands are three increasing percentages between 0 and 100, e.g. 0.5,2,4 "
            f"(excellent below the first, severe above the last), got {str(text)[:40]!r}."
        )
    return edges


def band_index(underflow_pct, bands=BANDS) -> np.ndarray:
    """The band (0 excellent … 3 severe) of each underflow %; NaN (an all-zero tensor, nothing
    to lose) counts as excellent."""
    values = np.nan_to_num(np.asarray(underflow_pct, np.float64), nan=0.0)
    return np.searchsorted(np.asarray(bands, np.float64), values, side="right")


def band_words(bands=BANDS) -> str:
    """The bands in words: "excellent < 0.5 %, warning 0.5–2 %, critical 2–4 %, severe > 4 %"."""
    a, b, c = (f"{e:g}" for e in bands)
    return f"excellent < {a} %, warning {a}–{b} %, critical {b}–{c} %, severe > {c} %"


def underflow_pct(probe_stats) -> np.ndarray:
    """[probes, layers, roles] underflow in % from the store's probe series [..., 2]; NaN
    where a tensor had no nonzero value."""
    stats = np.asarray(probe_stats, np.float64)
    return stats[..., 1] * 100 if stats.size else np.zeros(stats.shape[:-1])


def settled(probe_steps) -> np.ndarray:
    """Which probes measure the run rather than delayed scaling's start."""
    return np.asarray(probe_steps) >= SETTLED_STEP


# -- the worst tensors and the suggestion -----------------------------------------------------


def worst_tensors(layers, probe_steps, probe_stats, rows, n: int = WORST) -> list[tuple]:
    """The `n` tensors that lose the most, worst first: (layer, role) of the dead ones (by
    health rows' "dead since"), then by underflow % at the latest settled probe; tensors that
    lose nothing are left out."""
    dead = {(r["layer"], r["role"]) for r in rows if r.get("dead since") is not None}
    scores = {key: np.inf for key in dead}
    keep = settled(probe_steps)
    if keep.any():
        latest = np.nan_to_num(underflow_pct(probe_stats)[keep][-1], nan=0.0)
        for i, layer in enumerate(layers):
            for j, role in enumerate(ROLES):
                scores.setdefault((layer, role), float(latest[i, j]))
    order = [(layer, role) for layer in layers for role in ROLES]
    losing = [key for key in order if scores.get(key, 0) > 0]
    return sorted(losing, key=lambda key: -scores[key])[:n]  # stable: model order on ties


def suggest(
    layers, probe_steps, probe_stats, rows, bands=BANDS, last: int = LAST_PROBES
) -> list[dict]:
    """The float8 layers to keep in bf16, in model order, each as {"layer", "reasons"}: the
    module's rule (dead, or severe at each of the last `last` settled probes) in words."""
    dead = {
        (r["layer"], r["role"]): r["dead since"] for r in rows if r.get("dead since") is not None
    }
    keep = settled(probe_steps)
    recent = underflow_pct(probe_stats)[keep][-last:] if keep.any() else None
    suggestions = []
    for i, layer in enumerate(layers):
        reasons = []
        for j, role in enumerate(ROLES):
            if (layer, role) in dead:
                reasons.append(
                    f"its {ROLE_WORDS[role]} is all zero since step {dead[layer, role]} (dead)"
                )
            elif recent is not None and (band_index(recent[:, i, j], bands) == 3).all():
                lowest = float(np.nanmin(recent[:, i, j]))
                probes = "probe" if len(recent) == 1 else f"{len(recent)} probes"
                reasons.append(
                    f"its {ROLE_WORDS[role]} loses {lowest:.3g} % or more of its values to "
                    f"underflow at its last {probes} (severe: above {bands[-1]:g} %)"
                )
        if reasons:
            suggestions.append({"layer": layer, "reasons": reasons})
    return suggestions


def suggestion_words(suggestions: list[dict], bands=BANDS) -> list[str]:
    """The suggestion as sentences: one per layer, or one saying plainly there is none."""
    if not suggestions:
        return [
            "No layer needs to stay in bf16: no float8 tensor is dead, and none is in the "
            f"severe band (underflow above {bands[-1]:g} %) at each of its last "
            f"{LAST_PROBES} probes."
        ]
    return [f"Keep `{s['layer']}` in bf16: {'; '.join(s['reasons'])}." for s in suggestions]


# -- launching the comparison -----------------------------------------------------------------


def suggested_configs(config: TrainConfig, precision: str, layers) -> tuple:
    """(bf16 and `precision` over `config`'s settings, `precision` alone with `layers` kept
    in bf16 as well as those the config keeps already), both validated (ConfigError)."""
    kept = set(config.bf16_layer_names()) | set(layers)
    baseline = dataclasses.replace(config, precisions=("bf16", precision))
    policy = dataclasses.replace(
        config,
        precisions=(precision,),
        bf16_layers=tuple(name for name in MODEL_LAYERS if name in kept),
    )
    return baseline.validate(), policy.validate()


def launch_label(run: dict) -> str:
    return f"suggested bf16 layers of run #{run['id']}"


def launch_suggested(store: Store, run: dict, layers) -> list[int]:
    """Queue "bf16 / fp8 / fp8 with `layers` in bf16" over `run`'s settings (its float8
    precision in place of fp8): two comparisons under one label, so Results lists them
    together and compares them side by side. Not one repeats group: a group's summary pools
    each precision over its comparisons, which would mix the two fp8 policies. Their ids;
    ConfigError when there is nothing to launch or the settings cannot be trained."""
    if not layers:
        raise ConfigError("No layer is suggested to stay in bf16: there is nothing to compare.")
    baseline, policy = suggested_configs(run["config"], run["precision"], layers)
    label = launch_label(run)
    return [launcher.launch(baseline, store, label), launcher.launch(policy, store, label)]
