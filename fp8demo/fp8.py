"""Float8 layers, their scales and amax histories, as numpy.

After model.quantize("float8") each Dense/EinsumDense layer holds, per tensor role
(inputs, kernel, outputs_grad), a scalar `<role>_scale` and a `<role>_amax_history`
(length 1024; index 0 newest, then h[-1], h[-2], ... back in time; unfilled slots 0).
Keras updates them through the optimizer ("gradient" = new value). scale = amax / fmax,
with fmax 448 (E4M3, forward) and 57344 (E5M2, gradients).

Reading during `fit` on JAX: call this with the callback's `self.model` (the property
writes the training state back into the variables) and copy to numpy at once; device
arrays are donated to the next step.
"""

import numpy as np

# The three tensors each float8 layer scales, in the order of every fp8 array here and in
# the store: [..., role, ...].
ROLES = ("inputs", "kernel", "outputs_grad")
# Each role's float8 format: E4M3 (more precision) forward, E5M2 (more range) for gradients.
FORMATS = {"inputs": "E4M3", "kernel": "E4M3", "outputs_grad": "E5M2"}
E4M3_MAX = 448.0
E5M2_MAX = 57344.0
FORMAT_MAX = {"inputs": E4M3_MAX, "kernel": E4M3_MAX, "outputs_grad": E5M2_MAX}
# Saturation: a value counts as clipped when it lies beyond fmax by more than half the top
# step (the spacing of the two largest values: E4M3 448 - 416 = 32, E5M2 57344 - 49152 = 8192);
# nearer values lose no more to clipping than rounding would take.
SATURATION_LIMIT = {
    "inputs": E4M3_MAX + 16,
    "kernel": E4M3_MAX + 16,
    "outputs_grad": E5M2_MAX + 4096,
}
# Headroom beyond which small values start to fall below the format's smallest normals.
UNDERFLOW_HEADROOM = 8.0
# Probe (probe.py) thresholds, in % of the values of the latest probe: flag a tensor whose
# clipped share or whose share of nonzero values flushed to zero reaches these.
SATURATION_AT_RISK = 0.1
UNDERFLOW_AT_RISK = 5.0
# Training steps in a row whose amax was 0 that make a tensor dead (see dead_since).
DEAD_STEPS = 16


def all_layers(model) -> list:
    """Every layer inside a Keras 3 model, depth-first, each once: nested layers (keras_hub
    blocks, sub-models) included, and a layer shared by several parents once."""
    found, seen = [], set()

    def walk(layer):
        for child in getattr(layer, "_layers", []) or []:
            if id(child) not in seen:
                seen.add(id(child))
                found.append(child)
                walk(child)

    walk(model)
    return found


def float8_layers(model) -> list:
    """Every layer that computes in float8 (Dense and EinsumDense after quantize("float8")),
    in a stable (depth-first) order."""
    return [layer for layer in all_layers(model) if _is_float8(layer)]


def _is_float8(layer) -> bool:
    return getattr(layer, "quantization_mode", None) == "float8"


def describe_layers(model) -> list[dict]:
    return [
        {"name": layer.path, "class": type(layer).__name__, "policy": layer.dtype_policy.name}
        for layer in float8_layers(model)
    ]


def read_state(layers) -> tuple[np.ndarray, np.ndarray]:
    """(amax histories [layers, roles, history] oldest → newest, scales [layers, roles])."""
    histories = (
        np.stack(
            [
                np.stack(
                    [
                        np.asarray(getattr(layer, f"{role}_amax_history").value, dtype=np.float32)
                        for role in ROLES
                    ]
                )
                for layer in layers
            ]
        )
        if layers
        else np.zeros((0, len(ROLES), 0), np.float32)
    )
    scales = np.array(
        [
            [float(np.asarray(getattr(layer, f"{role}_scale").value)) for role in ROLES]
            for layer in layers
        ],
        dtype=np.float32,
    ).reshape(len(layers), len(ROLES))
    # Keras rolls the history left and writes the newest amax at index 0, so the order
    # oldest → newest is h[1], ..., h[-1], h[0].
    return np.roll(histories, -1, axis=-1), scales


def newest_amax(histories: np.ndarray, n_new: int) -> np.ndarray:
    """The amax of the last `n_new` steps, as [steps, layers, roles] in time order."""
    n_new = min(n_new, histories.shape[-1])
    if n_new <= 0:
        return np.zeros((0, histories.shape[0], histories.shape[1]), np.float32)
    return np.moveaxis(histories[..., -n_new:], -1, 0).astype(np.float32)


def variables_summary(layers) -> dict:
    """Per layer and role: scale, largest and count of recorded amaxes, newest 8 entries.

    This is what the example prints before and after training.
    """
    histories, scales = read_state(layers)
    summary = {}
    for i, layer in enumerate(layers):
        summary[layer.path] = {}
        for j, role in enumerate(ROLES):
            history = histories[i, j]
            summary[layer.path][role] = {
                "scale": float(scales[i, j]),
                "amax_max": float(history.max()) if history.size else 0.0,
                "amax_nonzero": int(np.count_nonzero(history)),
                "history_head": [float(v) for v in history[::-1][:8]],
                "history_length": int(history.size),
            }
    return summary


# -- numerics health ----------------------------------------------------------------------


def _shift(values: np.ndarray, k: int) -> np.ndarray:
    """values[i - k] at index i (-inf before the start)."""
    out = np.full_like(values, -np.inf)
    if k < len(values):
        out[k:] = values[: len(values) - k]
    return out


def trailing_max(values: np.ndarray, window: int) -> np.ndarray:
    """out[i] = max(values[i-window+1 .. i]) along axis 0, in O(n log window)."""
    out, covered = values.astype(np.float32), 1
    while covered * 2 <= window:  # doubling: out[i] covers `covered` steps
        out = np.maximum(out, _shift(out, covered))
        covered *= 2
    if window > covered:  # two overlapping power-of-two windows make any length
        out = np.maximum(out, _shift(out, window - covered))
    return out


def scales_in_use(amax: np.ndarray, roles=ROLES, history_length: int = 1024) -> np.ndarray:
    """The scale each step used, reconstructed from the per-step amax [steps, layers, roles].

    Keras computes step t's scale at step t-1 from the history as it was then, i.e. from the
    amaxes of steps t-1-history_length .. t-2; before any amax exists the scale stays 1.0.
    """
    steps = len(amax)
    fmax = np.array([FORMAT_MAX[r] for r in roles], np.float32)
    scales = np.ones_like(amax, dtype=np.float32)
    if steps <= 2:
        return scales
    window_max = trailing_max(amax, history_length)
    previous = window_max[:-2]  # step t (index t) uses the window ending at index t-2
    with np.errstate(divide="ignore", invalid="ignore"):
        scales[2:] = np.where(previous > 0, previous / fmax, 1.0)
    return scales


def health(amax: np.ndarray, roles=ROLES, history_length: int = 1024) -> dict:
    """Per step, layer and role: headroom (log2 of representable max / amax) and overflows.

    headroom > 0: the tensor's largest value fits with that many binary orders to spare;
    headroom < 0: values beyond fmax × scale were clipped (saturated) at that step.
    """
    amax = np.asarray(amax, np.float32)
    scales = scales_in_use(amax, roles, history_length)
    fmax = np.array([FORMAT_MAX[r] for r in roles], np.float32)
    representable = scales * fmax
    with np.errstate(divide="ignore", invalid="ignore"):
        headroom = np.where(amax > 0, np.log2(representable / amax), np.nan)
    # With margin 0 a tensor that grows a little every step (kernels do) always exceeds its
    # delayed scale by a hair; clipping within half the top step (SATURATION_LIMIT) costs no
    # more than rounding does, so only larger excursions count as overflows.
    limit = np.array([SATURATION_LIMIT[r] for r in roles], np.float32)
    overflow = amax > scales * limit
    return {
        "scales": scales,
        "representable": representable,
        "headroom": headroom,
        "overflow": overflow,
        "overflow_count": overflow.sum(axis=0),
    }


# What each statistic means, in one line (shown by the dashboard and the CLI).
HEALTH_HELP = {
    "overflows": "steps whose amax exceeded what the delayed scale could represent "
    "(fmax × scale from amaxes up to two steps earlier) by more than half a "
    "floating-point step: those values were clipped",
    "min headroom": "smallest log2(fmax × scale / amax) over the run: binary orders of "
    "magnitude to spare before clipping (negative = clipped)",
    "median headroom": "typical headroom; large values mean small values may underflow to zero",
    "saturation %": "share of the tensor's values clipped to ±fmax (beyond fmax × scale by "
    "more than half a floating-point step) on the fixed probe batch at the "
    "latest probe (peak: largest after the first two steps, which use scale 1.0)",
    "underflow %": "share of the tensor's nonzero values that quantize to zero (below half "
    "the smallest subnormal × scale) on the probe batch at the latest probe",
    "dead since": "the step since which the tensor holds no nonzero value at all: on the "
    "probe batch at every probe since then up to the latest, or in training on each of "
    f"the latest {DEAD_STEPS} steps or more (the first two steps, at scale 1.0, left out). "
    "A dead output gradient means the layer no longer learns",
    "at risk": f"overflowed in more than 1 % of the steps, a median headroom above "
    f"{UNDERFLOW_HEADROOM:g} binary orders, at the latest probe at least "
    f"{SATURATION_AT_RISK:g} % of the values saturated or {UNDERFLOW_AT_RISK:g} % "
    f"underflowed, or dead",
}


def _headroom_stats(headroom: np.ndarray) -> dict:
    """Min, median and max of the steps that had an amax (None when none had)."""
    valid = headroom[np.isfinite(headroom)]
    if not valid.size:
        return {"min": None, "median": None, "max": None}
    return {"min": float(valid.min()), "median": float(np.median(valid)), "max": float(valid.max())}


def _zero_since(zero: np.ndarray, steps: np.ndarray, at_least: int) -> np.ndarray:
    """[...]: the step that starts the run of True values of `zero` [times, ...] reaching to
    its last time, where that run is `at_least` (>= 1) long or longer; -1 elsewhere."""
    if not len(zero):
        return np.full(zero.shape[1:], -1, np.int64)
    last_nonzero = np.where(~zero, np.arange(len(zero)).reshape(-1, *[1] * (zero.ndim - 1)), -1)
    first = last_nonzero.max(axis=0) + 1  # the first time of the trailing run of zeros
    long_enough = len(zero) - first >= at_least
    return np.where(long_enough, steps[np.minimum(first, len(zero) - 1)], -1)


def dead_since(amax, probe_steps=(), probe_stats=None, amax_steps=None) -> np.ndarray:
    """[layers, roles]: the step since which each tensor holds only zeros, -1 where it
    does not (a live tensor). An all-zero tensor neither saturates nor underflows, so the
    other flags never see it; yet a layer whose output gradient is all zero learns nothing.

    Either reading makes a tensor dead, and the earlier start counts:
      probe     no nonzero value on the probe batch at the latest probe (underflow NaN,
                probe.tensor_stats); dead since the first of the all-zero probes that lead
                up to it. A tensor alive again at the latest probe is not dead.
      training  amax 0 on each of the latest DEAD_STEPS training steps or more (one
                batch with an all-zero gradient can happen; many in a row cannot).
    The probe sees a dying layer first: it runs without dropout, which in training keeps
    a trickle of gradient flowing through a layer that is dead on real inputs.
    Both leave out the first two steps: delayed scaling starts at scale 1.0, which can
    flush a whole gradient to zero at a fresh run's first probe (step 0).

    amax: [steps, layers, roles] of training; amax_steps: their step numbers (default 1, 2,
    ...: the recorder counts steps from 1). probe_stats: [probes, layers, roles, 2].
    """
    amax = np.asarray(amax, np.float32)
    steps = np.arange(1, len(amax) + 1) if amax_steps is None else np.asarray(amax_steps)
    since = _zero_since(amax[2:] == 0, steps[2:], DEAD_STEPS)
    if probe_stats is not None and len(probe_steps):
        probe_steps = np.asarray(probe_steps)
        settled = probe_steps >= 2
        zero = np.isnan(np.asarray(probe_stats, np.float32)[settled][..., 1])
        by_probe = _zero_since(zero, probe_steps[settled], 1)
        if settled[-1]:  # a probe of the scale-1.0 start says nothing, either way
            since = np.where((by_probe >= 0) & ((since < 0) | (by_probe < since)), by_probe, since)
    return since


def health_summary(
    amax: np.ndarray,
    layer_names,
    history_length: int = 1024,
    probe_steps=(),
    probe_stats=None,
    result=None,
    amax_steps=None,
) -> list[dict]:
    """One row per float8 layer and role, flagging the tensors at risk.

    probe_steps/probe_stats: the store's probe series (stats [probes, layers, roles, 2]).
    result: `health(amax, history_length=...)` when the caller has it already.
    amax_steps: the step of each amax row (dead_since's default when None).
    "dead since" is dead_since's step, None for a live tensor; a dead tensor is at risk.
    """
    result = result if result is not None else health(amax, history_length=history_length)
    dead = dead_since(amax, probe_steps, probe_stats, amax_steps)
    probed = probe_stats is not None and len(probe_steps) > 0
    if probed:
        # An all-zero tensor (NaN underflow) has no nonzero value to lose: 0 %.
        stats = np.nan_to_num(np.asarray(probe_stats, np.float32), nan=0.0)
        latest = stats[-1] * 100
        settled = np.asarray(probe_steps) >= 2
        peak = stats[settled].max(axis=0) * 100 if settled.any() else np.full_like(latest, np.nan)
    rows = []
    for i, name in enumerate(layer_names):
        for j, role in enumerate(ROLES):
            headroom = _headroom_stats(result["headroom"][:, i, j])
            overflows = int(result["overflow_count"][i, j])
            probe_columns = {}
            if probed:
                saturation, underflow = (float(v) for v in latest[i, j])
                probe_columns = {
                    "saturation %": saturation,
                    "peak saturation %": _finite(peak[i, j, 0]),
                    "underflow %": underflow,
                    "peak underflow %": _finite(peak[i, j, 1]),
                }
            rows.append(
                {
                    "layer": name,
                    "role": role,
                    "format": FORMATS[role],
                    "overflows": overflows,
                    "min headroom": headroom["min"],
                    "median headroom": headroom["median"],
                    **probe_columns,
                    "dead since": int(dead[i, j]) if dead[i, j] >= 0 else None,
                    "at risk": bool(
                        overflows > 0.01 * len(amax)
                        or (headroom["median"] or 0) > UNDERFLOW_HEADROOM
                        or probe_columns.get("saturation %", 0) >= SATURATION_AT_RISK
                        or probe_columns.get("underflow %", 0) >= UNDERFLOW_AT_RISK
                        or dead[i, j] >= 0
                    ),
                }
            )
    return rows


# What a dead tensor of each role means: (the tensor of one layer, of several, what that
# does to one layer, to several).
DEAD_PHRASES = {
    "outputs_grad": (
        "output gradient",
        "output gradients",
        "that layer no longer learns",
        "those layers no longer learn",
    ),
    "inputs": (
        "inputs",
        "inputs",
        "that layer passes on its bias alone and its kernel no longer learns",
        "those layers pass on their bias alone and their kernels no longer learn",
    ),
    "kernel": (
        "kernel",
        "kernels",
        "that layer passes on its bias alone",
        "those layers pass on their bias alone",
    ),
}


def dead_summary(rows) -> list[str]:
    """Plain-words sentences on the dead tensors of `health_summary` rows, one per role:
    "The output gradients of 7 of 8 float8 layers are all zero since step 100: those
    layers no longer learn." ([] when none is dead)."""
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    sentences = []
    for role, (one, several, one_effect, several_effect) in DEAD_PHRASES.items():
        dead = [r for r in rows if r["role"] == role and r.get("dead since") is not None]
        if not dead:
            continue
        names = ", ".join(f"`{r['layer'].rsplit('/', 1)[-1]}`" for r in dead)
        share = f"{len(dead)} of {len(layers)} float8 layers"
        noun, effect = (one, one_effect) if len(dead) == 1 else (several, several_effect)
        whose = f"{names} ({share})" if len(dead) <= 3 else share
        verb = "are" if noun.endswith("s") else "is"
        starts = sorted({r["dead since"] for r in dead})
        since = f"step {starts[0]}" if len(starts) == 1 else f"steps {starts[0]} to {starts[-1]}"
        sentences.append(f"The {noun} of {whose} {verb} all zero since {since}: {effect}.")
    return sentences


def _finite(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


# -- what the history length does ------------------------------------------------------------

HISTORY_LENGTHS = (1, 4, 16, 64, 256, 1024, 4096)


def history_length_effect(amax: np.ndarray, lengths=HISTORY_LENGTHS, roles=ROLES) -> list[dict]:
    """Replay recorded amaxes under other delayed-scaling windows, per role.

    The amaxes barely depend on the window (it changes only how values are rounded), so
    replaying them shows what another history length would have done to the scales: short
    windows follow the tensor closely (little headroom, overflows when it grows), long
    windows remember old peaks (more headroom, so small values underflow sooner).
    """
    rows = []
    for length in lengths:
        result = health(amax, roles, history_length=int(length))
        for j, role in enumerate(roles):
            headroom = _headroom_stats(result["headroom"][..., j])
            overflow = result["overflow"][..., j]
            rows.append(
                {
                    "history length": int(length),
                    "role": role,
                    "overflows": int(overflow.sum()),
                    "overflow %": float(overflow.mean() * 100) if overflow.size else 0.0,
                    "median headroom": headroom["median"],
                    "max headroom": headroom["max"],
                }
            )
    return rows
