"""Will a launch run here? Memory, disk and data, checked before anything is queued.

The estimates are rough upper bounds from the configuration alone (nothing is built), so the
dashboard can say why a launch is refused while the settings are still being chosen, and the
CLI refuses the same launches with the same messages.
"""

import math
import os

from fp8demo.config import TrainConfig
from fp8demo.data import missing_path
from fp8demo.paths import free_megabytes

MIN_FREE_MB = 100  # FP8DEMO_MIN_FREE_MB: disk space a launch must leave free (default)


def launch_problems(config: TrainConfig, home, repeats: int = 1) -> list[str]:
    """Every reason this machine cannot run the launch (empty when it can)."""
    return resource_problems(config) + disk_problems(config, home, repeats) + data_problems(config)


# -- memory -----------------------------------------------------------------------------------


def _params(config: TrainConfig) -> int:
    """About how many weights the model has (embeddings, attention, feed-forward, head)."""
    h, i, v, s = config.hidden_dim, config.intermediate_dim, config.vocab_size, config.seq_len
    return v * h + s * h + 4 * h * h + 2 * h * i + h * i + i + 10 * h


def estimate_memory_bytes(config: TrainConfig) -> int:
    """A rough upper estimate of one run's memory: weights + Adam state, activations, data."""
    h, i, s, b = config.hidden_dim, config.intermediate_dim, config.seq_len, config.batch_size
    weights = _params(config) * 16  # float32 weights, gradients and Adam's two moments
    # Per example: hidden-sized and intermediate-sized float32 tensors per position kept for
    # the backward pass, plus the attention scores (heads × seq × seq, a few copies).
    activations = b * s * (24 * h + 4 * i) * 4 + b * config.heads * s * s * 4 * 3
    data = 50_000 * s * 4  # the tokenized splits
    return int(weights + activations + data)


def memory_limit_bytes() -> int:
    """FP8DEMO_MAX_MEMORY_GB, else 80 % of this machine's RAM."""
    if os.environ.get("FP8DEMO_MAX_MEMORY_GB"):
        return int(float(os.environ["FP8DEMO_MAX_MEMORY_GB"]) * 2**30)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.8)
    except (ValueError, OSError, AttributeError):
        return 2**62


def resource_problems(config: TrainConfig) -> list[str]:
    """A launch that clearly would not fit in memory, with the estimate (empty when it fits)."""
    needed, limit = estimate_memory_bytes(config), memory_limit_bytes()
    if needed <= limit:
        return []
    return [
        f"This configuration needs about {needed / 2**30:,.1f} GiB of memory (weights, Adam "
        f"state and activations of one batch), more than the {limit / 2**30:,.1f} GiB "
        "allowed here. Use a smaller vocabulary, hidden size, sequence length or batch size "
        "(the limit is FP8DEMO_MAX_MEMORY_GB)."
    ]


# -- disk -------------------------------------------------------------------------------------


def estimate_disk_bytes(config: TrainConfig) -> int:
    """A rough upper estimate of what one comparison writes: weights, metrics, caches."""
    s = config.seq_len
    weights = _params(config) * 4 * 4  # float32 weights; save_weights keeps the optimizer's too
    examples = config.subset * 3 if config.subset else 75_000
    steps = math.ceil((config.subset or 20_000) / config.batch_size) * config.epochs
    metrics = steps * (64 + 8 * 3 * 4 * 2)  # step rows + per-step amax of 8 layers (+ index)
    caches = examples * s * 4 + 300 * 2**20 * (not config.data)  # tokens; IMDB extraction
    return int(weights * len(config.precisions) + metrics * len(config.precisions) + caches)


def min_free_bytes() -> int:
    """Disk space every write must leave free: FP8DEMO_MIN_FREE_MB, else MIN_FREE_MB."""
    try:
        return int(float(os.environ.get("FP8DEMO_MIN_FREE_MB") or MIN_FREE_MB) * 2**20)
    except ValueError:
        return MIN_FREE_MB * 2**20


def disk_problems(config: TrainConfig, home, repeats: int = 1) -> list[str]:
    """A launch that would fill the disk holding the run store (empty when it fits)."""
    free_mb = free_megabytes(home)
    if free_mb is None:
        return []  # the store reports an unusable home itself
    free = free_mb * 2**20
    needed, keep = estimate_disk_bytes(config) * repeats, min_free_bytes()
    if needed + keep <= free:
        return []
    return [
        f"Not enough disk space in {home}: this launch writes up to about "
        f"{needed / 2**20:,.0f} MB (weights, metrics, data caches) and {free / 2**20:,.0f} MB "
        f"are free, of which {keep / 2**20:,.0f} MB must stay free (FP8DEMO_MIN_FREE_MB). "
        "Delete old comparisons on Results, free some space, or set FP8DEMO_HOME to "
        "another disk."
    ]


# -- data -------------------------------------------------------------------------------------


def data_problems(config: TrainConfig) -> list[str]:
    """A data path that is not there: refused now rather than failing every run in the worker.

    Only the named path is checked; the default source is found or downloaded by the run.
    """
    if not config.data:
        return []
    problem = missing_path(config.data)
    return [problem] if problem else []
