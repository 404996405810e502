"""A sweep's search space: NAME=SPEC per setting, parsed into Params, and the grid the grid
sampler walks.

Choices `heads=1,2,4`; ranges `lr=1e-4:1e-2:log`, `hidden_dim=32:256` (a whole-number setting
suggests whole numbers). A list setting takes choices only, each a list written with `+`:
`bf16_layers=none,classifier,dense+classifier,last:2` (`none`: the empty list). Every
TrainConfig setting is sweepable except those in FIXED. A value invalid on its own (dropout
1.5) is refused before launch; settings that are invalid only together (heads=3 with hidden_dim
32) fail their trial (sweep.py).
"""

import dataclasses
import difflib
import math
from typing import NamedTuple

import numpy as np

from fp8demo.config import ConfigError, TrainConfig, _problems_alone

# Settings every trial shares, and why they are not searched.
FIXED = {
    "data": "every trial trains on the same data",
    "subset": "every trial trains on the same data",
    "seed": "every trial and precision starts from the same seed, so differences are paired",
    "precisions": "the comparison's precisions are what the objective compares",
    "data_parallel": "it changes where a run trains, not what it learns",
    "side_by_side": "it changes where a run trains, not what it learns",
    "ptq": "post-training quantization is evaluated after the sweep's objective",
    "probe_every": "the probe measures training without changing it",
}

# -- parsing --------------------------------------------------------------------


class Param(NamedTuple):
    """One searched setting: a list of choices, or a range from low to high (log-scaled)."""

    name: str
    spec: str  # as the user wrote it
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    whole: bool = False  # a whole-number setting: suggest_int
    listed: bool = False  # a list setting: its choices are text, A+B (see list_value)

    def suggest(self, trial):
        """This setting's value for an Optuna trial."""
        if self.choices:
            # Optuna keeps choices of plain types: a list setting's are its text.
            choice = trial.suggest_categorical(self.name, list(self.choices))
            return list_value(choice) if self.listed else choice
        if self.whole:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def grid_points(self, k: int) -> list:
        """The choices, or k points spanning the range (log-spaced for a log range), ends
        included; a whole-number range keeps its distinct whole numbers."""
        if self.choices:
            return list(self.choices)
        spread = np.geomspace if self.log else np.linspace
        points = spread(self.low, self.high, k)
        if self.whole:
            return sorted({int(round(p)) for p in points})
        # Six significant digits read well and stay inside the range.
        return [min(max(float(f"{p:.6g}"), self.low), self.high) for p in points]


def parse_space(specs: dict | list) -> dict[str, Param]:
    """The search space from {name: spec} or ["name=spec", ...] (the CLI's --param).

    ConfigError with a sentence per problem: unknown or fixed setting, a value that does not
    parse or is invalid on its own, a range whose low is not below its high, a log range
    that does not start above 0.
    """
    problems, pairs = [], []
    if isinstance(specs, dict):
        pairs = [(str(name).strip(), str(spec).strip()) for name, spec in specs.items()]
    else:
        for text in specs:
            name, equals, spec = str(text).partition("=")
            if not equals:
                problems.append(f"A parameter is NAME=SPEC (lr=1e-4:1e-2:log), got {text!r}.")
                continue
            pairs.append((name.strip(), spec.strip()))
    space = {}
    for name, spec in pairs:
        if name in space:
            problems.append(f"{name} is searched twice: give each setting once.")
            continue
        try:
            space[name] = _parse_param(name, spec)
        except ConfigError as e:
            problems.append(str(e))
    if not space and not problems:
        problems.append("Give at least one setting to search, e.g. lr=1e-4:1e-2:log.")
    if problems:
        raise ConfigError(" ".join(problems))
    return space


def _parse_param(name: str, spec: str) -> Param:
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    if name in FIXED:
        raise ConfigError(f"{name} cannot be searched: {FIXED[name]}.")
    if name not in fields:
        close = difflib.get_close_matches(name, [n for n in fields if n not in FIXED], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"Unknown setting {name!r}{hint}.")
    kind = type(fields[name].default)
    if kind is tuple:
        return _parse_list_choices(name, spec)
    if not spec:
        raise ConfigError(
            f"{name} needs values: choices ({name}=A,B,C) or a range ({name}=LOW:HIGH)."
        )
    if ":" not in spec:
        choices = tuple(_value(name, text) for text in spec.split(","))
        repeated = sorted({str(v) for v in choices if choices.count(v) > 1})
        if repeated:
            raise ConfigError(f"{name} lists {', '.join(repeated)} more than once.")
        return Param(name, spec, choices=choices)
    if kind not in (int, float):
        choices = ",".join(fields[name].metadata["choices"]) or "true,false"
        raise ConfigError(f"{name} takes choices ({name}={choices}), not a range.")
    parts = [p.strip() for p in spec.split(":")]
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2].lower() != "log"):
        raise ConfigError(f"The range {name}={spec} is not LOW:HIGH or LOW:HIGH:log (log-spaced).")
    low, high = _value(name, parts[0]), _value(name, parts[1])
    log = len(parts) == 3
    if low >= high:
        raise ConfigError(
            f"The range of {name} must go from low to high: {low} is not below {high}."
        )
    if log and low <= 0:
        raise ConfigError(f"A log range needs a low above 0: {name} starts at {low}.")
    return Param(name, spec, low=low, high=high, log=log, whole=kind is int)


NO_ITEMS = "none"  # the empty list, as a list setting's choice


def list_value(choice: str) -> tuple:
    """A list setting's value from its choice text: "dense+classifier" → ("dense",
    "classifier"), "none" → ()."""
    return () if choice == NO_ITEMS else tuple(p.strip() for p in choice.split("+") if p.strip())


def _parse_list_choices(name: str, spec: str) -> Param:
    """A list setting's choices, separated by commas, each a list written with "+" (the
    colons of first:N / last:N are no range here)."""
    texts = tuple(text.strip() for text in spec.split(",") if text.strip())
    if not texts:
        raise ConfigError(
            f"{name} needs choices, each a list written with +: {name}={NO_ITEMS},A,A+B."
        )
    for text in texts:
        _value(name, ",".join(list_value(text)))
    repeated = sorted({t for t in texts if texts.count(t) > 1})
    if repeated:
        raise ConfigError(f"{name} lists {', '.join(repeated)} more than once.")
    return Param(name, spec, choices=texts, listed=True)


def _value(name: str, text: str):
    """One value of a setting, typed as the setting is; ConfigError when it does not parse or
    is invalid on its own (settings invalid only together fail their trial instead)."""
    value = getattr(TrainConfig.from_strings({name: text}), name)
    problems = _problems_alone(name, value)
    if problems:
        raise ConfigError(" ".join(problems))
    return value


def grid_space(space: dict[str, Param], trials: int) -> dict[str, list]:
    """The grid the grid sampler walks: every choice, and each range cut into k points.

    k is the smallest number (at least 2, so both ends are tried) for which the grid holds at
    least `trials` points; a whole-number range stops growing once it holds every whole
    number in it. Choices alone make a grid of their product, whatever `trials` is.
    """
    k = 2
    while True:
        grid = {name: param.grid_points(k) for name, param in space.items()}
        if grid_size(grid) >= trials or k >= max(trials, 2):
            return grid
        k += 1


def grid_size(grid: dict[str, list]) -> int:
    return math.prod(len(values) for values in grid.values())
