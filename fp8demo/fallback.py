"""Fallback while training: move a float8 layer to bf16 when a probe says its tensors suffer.

`train --fallback "underflow>5%,mse>1e-4"` gives the thresholds. At every probe the recorder
hands the probe's numbers to a Fallback, which compares each float8 tensor (inputs, kernel,
output gradient of every layer) with them, under the scaling the run trains with:

    underflow>X    share of the nonzero values that quantize to zero     (X: 5% or 0.05)
    saturation>X   share of the values clipped at the format's max        (X: 0.1% or 0.001)
    mse>X          mean squared quantization error, in the tensor's units (Transformer
                   Engine's mse: mean((x - q(x))^2))
    snr<X          signal-to-noise ratio of the quantized tensor, in dB   (X: 20 or 20dB)

The probe before the first step counts too: Keras' delayed scaling starts at scale 1.0, which
flushes small output gradients to zero, so an underflow threshold may move layers at step 0,
before anything is compiled (no recompilation at all).

A layer one of whose tensors crosses a threshold computes in bf16 for the rest of the run,
without a restart: its float8 call becomes a plain bf16 matmul (`use_bf16`), and the model's
compiled train/test/predict steps are dropped so that the next step traces the new graph once
(`retrace`: one recompilation per probe that moved layers, however many it moved). The
layer's float8 variables stay (JAX's fit holds every variable in its state and a variable
cannot leave mid-fit); the bf16 call hands their values back unchanged, so its scales and amax
histories freeze at their last float8 step, and the recorder stores no amax for it after the
event (NaN: a gap in the heatmaps, not a dead tensor in FP8 health). The probe's compiled
function is not retraced: for a moved layer it goes on measuring what float8 would do to its
tensors.

Each move is an event {step, layer, role, reason, value}: the probe's step, the layer's path,
the tensor that crossed, the threshold's text and the value seen. The run's summary keeps the
list (`fallback_events`) and the layers that ended in bf16 (`fallback_layers`); a saved model
remembers them in its config.json, and `apply_saved` moves the same layers of a rebuilt model.
"""

import functools
import math
import re
from typing import NamedTuple

import numpy as np

from fp8demo import fp8
from fp8demo.fp8 import ROLES

STATISTICS = ("underflow", "saturation", "mse", "snr")
# The direction each statistic is bad in: > for losses and errors, < for the SNR.
BAD_WHEN = {"underflow": ">", "saturation": ">", "mse": ">", "snr": "<"}
SHARES = ("underflow", "saturation")  # a percentage or a fraction in [0, 1]
EXAMPLE = "underflow>5%,mse>1e-4"


class Threshold(NamedTuple):
    statistic: str  # one of STATISTICS
    limit: float  # shares as fractions, mse in the tensor's units squared, snr in dB
    text: str  # as the user wrote it, tidied: "underflow>5%"

    def crossed(self, value: float) -> bool:
        if not math.isfinite(value):
            return False  # an all-zero tensor has no share to lose, and NaN says nothing
        return value < self.limit if BAD_WHEN[self.statistic] == "<" else value > self.limit


class Event(NamedTuple):
    step: int
    layer: str
    role: str
    reason: str  # the threshold crossed, e.g. "underflow>5%"
    value: float  # the statistic's value: shares as fractions, snr in dB


# -- the thresholds ---------------------------------------------------------------------------

_ITEM = re.compile(r"^\s*([a-z_]+)\s*([<>])\s*([^<>]*?)\s*$")


def parse(text: str) -> tuple[Threshold, ...]:
    """The thresholds of a --fallback text ("" : none). Raises ValueError with a one-line
    message for text that is not a comma-separated list of thresholds."""
    if not isinstance(text, str):
        raise ValueError(f"fallback must be text such as {EXAMPLE!r}, got {text!r}.")
    if not text.strip():
        return ()
    thresholds = []
    for item in text.split(","):
        threshold = _parse_item(item)
        if any(t.statistic == threshold.statistic for t in thresholds):
            raise ValueError(f"fallback names {threshold.statistic} twice; give each once.")
        thresholds.append(threshold)
    return tuple(thresholds)


def _parse_item(item: str) -> Threshold:
    where = f"fallback {item.strip()!r}"
    if not item.strip():
        raise ValueError(
            f"fallback has an empty item: separate thresholds by single commas, e.g. {EXAMPLE!r}."
        )
    match = _ITEM.match(item.lower())
    if match is None:
        raise ValueError(f"{where}: write a statistic, > or <, and a number, e.g. {EXAMPLE!r}.")
    name, sign, number = match.groups()
    if name not in STATISTICS:
        raise ValueError(f"{where}: no statistic {name!r}; choose from {', '.join(STATISTICS)}.")
    if sign != BAD_WHEN[name]:
        raise ValueError(
            f"{where}: {name} is bad when it is {'low' if BAD_WHEN[name] == '<' else 'high'}; "
            f"write {name}{BAD_WHEN[name]}{number or '…'}."
        )
    percent = number.endswith("%")
    number = number.removesuffix("%").removesuffix("db").strip()
    try:
        limit = float(number)
    except ValueError:
        raise ValueError(f"{where}: {number!r} is not a number.") from None
    if not math.isfinite(limit):
        raise ValueError(f"{where}: the limit must be a finite number.")
    if name in SHARES:
        if percent:
            limit /= 100
        if not 0 <= limit <= 1:
            raise ValueError(
                f"{where}: a share is a percentage (5%) or a fraction between 0 and 1 (0.05)."
            )
        shown = f"{limit * 100:g}%"
    else:
        if percent:
            raise ValueError(f"{where}: {name} is not a share; give a number without %.")
        if name == "mse" and limit < 0:
            raise ValueError(f"{where}: a mean squared error is never negative.")
        shown = f"{limit:g}"
    return Threshold(name, limit, f"{name}{sign}{shown}")


# -- the decision -----------------------------------------------------------------------------


def tensor_statistics(stats, by_recipe, recipes, recipe: str, mean_square) -> dict:
    """{statistic: [layers, roles]} of one probe under `recipe`, the scaling the run trains
    with: underflow and saturation as fractions, snr in dB, mse = mean square × 10^(−snr/10).

    stats: [layers, roles, (saturation, underflow)] and by_recipe: [layers, roles, recipes,
    (underflow_pct, saturation_pct, snr_db)], as probe.Probe.measure returns them;
    mean_square: [layers, roles], the probe's mean of x². Without `recipe` among `recipes`
    only the delayed scale's saturation and underflow (stats) are known; snr and mse are NaN,
    which never crosses a threshold.
    """
    stats = np.asarray(stats, np.float64)
    if recipe not in recipes:
        unknown = np.full(stats.shape[:2], np.nan)
        return {
            "underflow": stats[..., 1],
            "saturation": stats[..., 0],
            "snr": unknown,
            "mse": unknown,
        }
    table = np.asarray(by_recipe, np.float64)[:, :, list(recipes).index(recipe)]
    snr = table[..., 2]
    with np.errstate(over="ignore", invalid="ignore"):
        mse = np.asarray(mean_square, np.float64) * np.power(10.0, -snr / 10)
    return {
        "underflow": table[..., 0] / 100,
        "saturation": table[..., 1] / 100,
        "snr": snr,
        "mse": np.where(np.isposinf(snr), 0.0, mse),  # an exact quantization has no error
    }


class Fallback:
    """Which float8 layers to move to bf16, probe after probe.

        fallback = Fallback(parse("underflow>5%"), layer_names)
        events = fallback.check(step, statistics)  # new events, at most one per layer

    A layer moves once: after its event it is left out of later checks. `moved` holds the
    moved layers' indexes, `events` every event so far.
    """

    def __init__(self, thresholds, layer_names):
        self.thresholds = tuple(thresholds)
        self.layer_names = list(layer_names)
        self.moved: list[int] = []
        self.events: list[Event] = []

    def check(self, step: int, statistics: dict) -> list[Event]:
        """The layers whose tensors cross a threshold at this probe, each once, with the
        first crossing in the order thresholds, then roles (inputs, kernel, output gradient)."""
        new = []
        for i, name in enumerate(self.layer_names):
            if i in self.moved:
                continue
            event = self._first_crossing(step, i, name, statistics)
            if event is not None:
                self.moved.append(i)
                new.append(event)
        self.events.extend(new)
        return new

    def _first_crossing(self, step, i, name, statistics) -> Event | None:
        for threshold in self.thresholds:
            for j, role in enumerate(ROLES):
                value = float(statistics[threshold.statistic][i, j])
                if threshold.crossed(value):
                    return Event(int(step), name, role, threshold.text, value)
        return None


def event_rows(events) -> list[dict]:
    """Events as JSON-ready dicts (the summary's and `show --json`'s fallback_events)."""
    return [dict(event._asdict()) for event in events]


def layers_summary(moved_layers, float8_layers: int) -> str:
    """How many float8 layers ended in bf16, in words ("" when none did)."""
    if not moved_layers:
        return ""
    return f"{len(moved_layers)} of {float8_layers} float8 layers ended in bf16 (fallback)"


# -- the switch -------------------------------------------------------------------------------


def use_bf16(layer):
    """Make a float8 layer compute in bf16 from its next trace on (see bf16_call)."""
    layer._float8_call = functools.partial(bf16_call, layer)
    layer.fell_back = True


def bf16_call(layer, inputs, training=None):
    """A float8 Dense/EinsumDense layer's call as its bf16 original: matmul (or einsum), bias,
    activation, in the layer's compute dtype. Its scales and amax histories receive their own
    values as Keras' "gradient" (the new value it assigns), so they stay as they were."""
    from keras import ops  # lazy: keras loads in ~3 s

    kernel = ops.cast(layer._kernel, layer.compute_dtype)
    inputs = ops.cast(inputs, layer.compute_dtype)
    equation = getattr(layer, "equation", None)
    x = ops.einsum(equation, inputs, kernel) if equation else ops.matmul(inputs, kernel)
    if training:
        x = _keep_float8_state(layer)(x, *_float8_state(layer))
    if layer.bias is not None:
        x = ops.add(x, ops.cast(layer.bias, x.dtype))
    if layer.activation is not None:
        x = layer.activation(x)
    return x


def _float8_state(layer) -> list:
    from keras import ops  # lazy: keras loads in ~3 s

    return [
        ops.convert_to_tensor(getattr(layer, f"{role}_{kind}"))
        for role in ROLES
        for kind in ("scale", "amax_history")
    ]


def _keep_float8_state(layer):
    """Identity on x whose gradient for each float8 variable is the variable's value."""
    from keras import ops  # lazy: keras loads in ~3 s

    @ops.custom_gradient
    def keep(x, *state):
        def grad(*args, upstream=None, variables=None):
            if upstream is None:
                (upstream,) = args
            return (upstream, *state)

        return x, grad

    return keep


def moved_layers(model) -> list[str]:
    """The paths of `model`'s float8 layers that compute in bf16 (use_bf16), in model order."""
    return [layer.path for layer in fp8.float8_layers(model) if getattr(layer, "fell_back", False)]


def retrace(model):
    """Drop the model's compiled steps so the next one traces the layers' new calls.

    Keras' JAX fit calls `model.train_function` every step and builds it once before the
    first; a new one from make_train_function(force=True) is a new jax.jit, compiled on its
    first call. Evaluate and predict rebuild theirs when they find None.
    """
    model.make_train_function(force=True)
    model.test_function = None
    model.predict_function = None


def apply_saved(model, layer_paths) -> list:
    """Move the float8 layers named in `layer_paths` (a saved run's fallback_layers) of a
    rebuilt model to bf16, as training left them; returns those layers. Unknown names raise
    ValueError."""
    by_path = {layer.path: layer for layer in fp8.float8_layers(model)}
    missing = [path for path in layer_paths if path not in by_path]
    if missing:
        raise ValueError(f"the model has no float8 layer {', '.join(missing)}")
    for path in layer_paths:
        use_bf16(by_path[path])
    # Steps compiled before are float8 ones; each is rebuilt on its next use.
    model.train_function = model.test_function = model.predict_function = None
    return [by_path[path] for path in layer_paths]
