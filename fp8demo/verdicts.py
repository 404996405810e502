"""Verdicts with confidence: is fp8 equivalent to bf16, better, worse, or not known yet?

One seed of this model moves test accuracy by about a point, so a single fp8 − bf16
difference says little. Here the differences of several seeds (each a pair of runs trained
with identical settings and the same seed) become a mean, a paired 95 % Student-t interval
and a verdict against a tolerance chosen before looking (default ±0.5 points).

Everything is in points of test accuracy (0.5 = half a percentage point). Pure Python: no
scipy, the t quantile comes from the regularized incomplete beta function below.
"""

import functools
import math

TOLERANCE_POINTS = 0.5  # the default equivalence margin, ± points of test accuracy
CONFIDENCE = 0.95  # two-sided: the interval holds the true mean difference 95 % of the time
# With one seed there is no spread to learn from: the seed-to-seed standard deviation of
# fp8 − bf16 this model shows (about a point) stands in for it when estimating more seeds.
ASSUMED_STD_POINTS = 1.0
MAX_SEEDS = 1000  # "run N more seeds" looks no further
VERDICTS = ("equivalent", "better", "worse", "inconclusive")


# -- Student's t quantile ---------------------------------------------------------------------


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for x in [0, 1]."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    # The fraction converges fast on this side of the mean; the symmetry covers the other.
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def t_tail(t: float, df: float) -> float:
    """P(|T| > t) for Student's t with `df` degrees of freedom, t ≥ 0."""
    return incomplete_beta(df / 2, 0.5, df / (df + t * t))


@functools.lru_cache(maxsize=4096)  # seeds_needed asks for the same few again and again
def t_quantile(p: float, df: float) -> float:
    """Student's t quantile: the t with P(T ≤ t) = p, for p in (0.5, 1) and df > 0.

    Bisection on the two-sided tail, which falls monotonically in t (60 halvings of a bracket
    found by doubling: far below the table values' precision). t(0.975, 1) = 12.706.
    """
    if not 0.5 < p < 1 or df <= 0:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df > 0, got p={p}, df={df}.")
    tail = 2 * (1 - p)
    high = 1.0
    while t_tail(high, df) > tail:
        high *= 2
    low = 0.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if t_tail(middle, df) > tail else (low, middle)
    return (low + high) / 2


def half_width(std: float, seeds: int) -> float:
    """The half-width of the paired 95 % interval of a mean over `seeds` differences."""
    return t_quantile(0.5 + CONFIDENCE / 2, seeds - 1) * std / math.sqrt(seeds)


# -- the verdict --------------------------------------------------------------------------------


def verdict_of(low: float, high: float, tolerance: float) -> str:
    """The rule (two one-sided tests read off one 95 % interval, equivalence first):

    equivalent    the whole interval lies within ±tolerance (low ≥ −tol and high ≤ +tol);
    better        otherwise, when the whole interval is above zero (low > 0): fp8 is higher
                  beyond chance, by an amount that may or may not exceed the tolerance;
    worse         otherwise, when the whole interval is below zero (high < 0);
    inconclusive  the interval holds zero and reaches past a tolerance bound.
    """
    if low >= -tolerance and high <= tolerance:
        return "equivalent"
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "inconclusive"


def seeds_needed(mean: float, std: float, tolerance: float) -> int | None:
    """The number of seeds at which an interval of this spread around this mean would reach
    a verdict: its half-width below the distance needed, which is the larger of the room to
    the tolerance bounds (tol − |mean|, for equivalent) and the distance to zero (|mean|, for
    better or worse). None when no count up to MAX_SEEDS does (a zero target)."""
    target = max(tolerance - abs(mean), abs(mean))
    if std <= 0:
        return 2
    if half_width(std, MAX_SEEDS) >= target:
        return None
    # The half-width falls as seeds grow (both t and 1/√n do): bisect for the first below.
    low, high = 1, MAX_SEEDS  # half_width(low) ≥ target (none at 1), half_width(high) < target
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if half_width(std, middle) >= target else (low, middle)
    return high


def paired_verdict(differences, tolerance: float = TOLERANCE_POINTS) -> dict | None:
    """The verdict on per-seed fp8 − bf16 differences (points), or None with no seed.

    {"difference": mean, "ci_low", "ci_high" (None with one seed), "seeds", "tolerance",
    "verdict": one of VERDICTS, and "more_seeds" when inconclusive: how many more seeds the
    observed spread (ASSUMED_STD_POINTS with one seed) says a verdict needs, None when more
    than MAX_SEEDS}. One seed is always inconclusive: it has no interval.
    """
    if tolerance < 0:
        raise ValueError(f"The tolerance is a margin in points, ≥ 0; got {tolerance}.")
    values = [float(d) for d in differences]
    seeds = len(values)
    if not seeds:
        return None
    mean = sum(values) / seeds
    result = {"difference": mean, "ci_low": None, "ci_high": None, "seeds": seeds}
    result["tolerance"] = float(tolerance)
    if seeds == 1:
        std, verdict = ASSUMED_STD_POINTS, "inconclusive"
    else:
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (seeds - 1))
        half = half_width(std, seeds)
        result["ci_low"], result["ci_high"] = mean - half, mean + half
        verdict = verdict_of(mean - half, mean + half, tolerance)
    result["verdict"] = verdict
    if verdict == "inconclusive":
        needed = seeds_needed(mean, std, tolerance)
        result["more_seeds"] = None if needed is None else max(needed - seeds, 1)
    return result


def verdict_words(verdict: dict) -> str:
    """The verdict as a phrase: "equivalent", "inconclusive — run 3 more seeds"."""
    if verdict["verdict"] != "inconclusive":
        return verdict["verdict"]
    more = verdict.get("more_seeds")
    if more is None:
        return f"inconclusive — more than {MAX_SEEDS} seeds would be needed"
    return f"inconclusive — run {more} more seed{'s' if more != 1 else ''}"


def verdict_line(verdict: dict, name: str = "fp8 − bf16") -> str:
    """One line: "fp8 − bf16 −0.15 points, 95 % interval [−0.90, +0.60] over 3 seeds
    (tolerance ±0.5): inconclusive — run 4 more seeds"."""
    seeds = verdict["seeds"]
    interval = (
        f"95 % interval [{verdict['ci_low']:+.2f}, {verdict['ci_high']:+.2f}]"
        if verdict["ci_low"] is not None
        else "no interval"
    )
    return (
        f"{name} {verdict['difference']:+.2f} points, {interval} over {seeds} "
        f"seed{'s' if seeds != 1 else ''} (tolerance ±{verdict['tolerance']:g}): "
        f"{verdict_words(verdict)}"
    )
