"""Block scales: the scale each block recipe gives every block of a tensor, and how they fit.

A block recipe (recipes.py) gives each block of values its own scale, along the axis the
GEMM contracts. What Transformer Engine users ask of such recipes is how those scales spread
and which blocks fare worst. For block128, MXFP8 (both roundings) and NVFP4 this module
computes, per tensor and GEMM:

    scale_log2_min/max/std  log2 of the blocks' scales (the divisor of each value: for NVFP4
                            E4M3 block scale x FP32 tensor scale), over the blocks holding a
                            nonzero finite value and a nonzero scale
    limit_share             the share of those blocks whose scale sits at the format's limit
                            (LIMIT_HELP says per recipe what that means)
    worst_block_snr_db      the lowest per-block SNR, 10 log10(sum x^2 / sum (x - q(x))^2)
                            over the block's finite values, and which block it is
    histogram               counts of the blocks' scales in integer log2 bins, floor(log2)

Layout. `x` comes as recipes.what_if takes it: a matrix blocked along its last axis (inputs,
output gradients: rows x K) or, for kernels, along its first (K x N). Blocks are numbered on
that layout's grid: block (i, j) holds rows i*r .. i*r+r-1 and columns j*c .. j*c+c-1 of the
matrix with the blocked axis last (kernels transposed), r x c the recipe's block shape.
The scales come from recipes.py's own rules (`power_of_two_scale`, `nvfp4_scales`) and the
values from its quantize-dequantize step, so these statistics describe what the what-if does
(tests/test_block_scales.py checks both against a plain numpy reference).
"""

import json
import math

import numpy as np

from fp8demo import recipes
from fp8demo.fp8 import ROLES

BLOCK_RECIPES = ("block128", "mxfp8", "mxfp8-floor", "nvfp4")
STATISTICS = (
    "scale_log2_min",
    "scale_log2_max",
    "scale_log2_std",
    "limit_share",
    "worst_block_snr_db",
)
WORST_BLOCKS = 5  # blocks named per tensor, worst first
# Integer log2 bins [-150, 130): every power-of-two scale (2^-126 .. 2^127 can occur only up
# to about 2^120) and NVFP4's products of an E4M3 and an FP32 scale; the end bins catch the rest.
HISTOGRAM_LOW, HISTOGRAM_HIGH = -150, 130
# E4M3's smallest normal: an NVFP4 block scale below it keeps fewer than 3 mantissa bits.
E4M3_MIN_NORMAL = 2.0**-6
POWER_OF_TWO_RANGE = (-126, 127)  # recipes.power_of_two_scale's clamp of the exponent

LIMIT_HELP = {
    "block128": "a scale at the end of its float32 power-of-two range, 2^-126 (a block "
    "whose amax is below about 2^-117, too small to scale up further) or 2^127",
    "mxfp8": "a scale at the end of E8M0's range as computed here, 2^-126 (amax below "
    "about 2^-117) or 2^127",
    "mxfp8-floor": "as mxfp8: a scale at 2^-126 or 2^127",
    "nvfp4": "an E4M3 block scale below E4M3's smallest normal 2^-6, or rounded to 0 (the "
    "block flushes to zero): blocks about 2^14.8 times smaller than the tensor's largest",
}
STATISTICS_HELP = {
    "scale_log2_min": "log2 of the smallest block scale (the divisor of the block's values)",
    "scale_log2_max": "log2 of the largest block scale",
    "scale_log2_std": "standard deviation of the blocks' log2 scales: their spread",
    "limit_share": "share of the blocks whose scale hits the format's limit (see the recipe)",
    "worst_block_snr_db": "the lowest SNR of one block, in dB; null when every block is exact",
}


def block_shape(recipe: str, role: str) -> tuple[int, int]:
    """(rows, columns) of one block of `recipe` for a tensor role, blocked axis last."""
    if recipe not in BLOCK_RECIPES:
        raise ValueError(
            f"{recipe!r} has no block scales; choose one of {', '.join(BLOCK_RECIPES)}"
        )
    if role not in ROLES:
        raise ValueError(f"unknown tensor role {role!r}; choose one of {', '.join(ROLES)}")
    if recipe == "block128":
        return (128, 128) if role == "kernel" else (1, 128)
    return (1, 16) if recipe == "nvfp4" else (1, 32)


def _tiles(m, shape):
    """Matrix m as [block rows, r, block columns, c], zero padded at the ends."""
    import jax.numpy as jnp  # lazy: jax loads in ~3 s

    (n_rows, n_cols), (r, c) = m.shape, shape
    padded = jnp.pad(m, ((0, -n_rows % r), (0, -n_cols % c)))
    return padded.reshape(padded.shape[0] // r, r, padded.shape[1] // c, c)


def _scales(amax, recipe: str):
    """(scale, log2 scale, at the limit) of each block from its amax, by recipes.py's rules."""
    import jax.numpy as jnp  # lazy: jax loads in ~3 s

    if recipe == "nvfp4":
        block, tensor = recipes.nvfp4_scales(amax)
        scale = block * tensor
        limited = block < E4M3_MIN_NORMAL
        log2 = jnp.where(scale > 0, jnp.log2(jnp.where(scale > 0, scale, 1.0)), -jnp.inf)
        return scale, log2, limited
    rounding = "floor" if recipe == "mxfp8-floor" else "up"
    scale = recipes.power_of_two_scale(amax, recipes.E4M3, rounding)
    _, exponent = jnp.frexp(scale)  # exact: scale = 0.5 * 2^exponent
    log2 = (exponent - 1).astype(jnp.float32)
    limited = (log2 <= POWER_OF_TWO_RANGE[0]) | (log2 >= POWER_OF_TWO_RANGE[1])
    return scale, log2, limited


def _quantized(tiles, scale, fmt):
    """Tiles [R, r, C, c] quantized and dequantized with their blocks' scales [R, C]: the
    quantize-dequantize step every recipe shares (recipes.qdq_delayed, one divisor per row of
    the tiles viewed as rows x c)."""
    import jax.numpy as jnp  # lazy: jax loads in ~3 s

    per_row = jnp.broadcast_to(scale[:, None, :, None], (*tiles.shape[:3], 1))
    return recipes.qdq_delayed(tiles, per_row.reshape(-1, 1), fmt)


def block_statistics(x, recipe: str, role: str) -> dict:
    """Block scales and their statistics of matrix `x` (the layout of the module docstring).

    Returns jax arrays (works inside jax.jit and jax.vmap): "scales" [R, C] (the divisor of
    each block, 1 for a block without a nonzero finite value), "used" [R, C], "stats" [5] in
    STATISTICS' order (NaN without a used block; worst SNR +inf when every block is exact),
    "worst" [WORST_BLOCKS, 3] rows of (block row, block column, SNR dB), worst first, padded
    with (-1, -1, +inf), and "histogram" [HISTOGRAM_HIGH - HISTOGRAM_LOW] int32 counts.
    """
    import jax.numpy as jnp  # lazy: jax loads in ~3 s

    x = jnp.asarray(x, jnp.float32)
    if role == "kernel":  # blocked along the first axis: put it last, as recipes.py does
        x = x.T
    shape = block_shape(recipe, role)
    values, finite = _tiles(x, shape), _tiles(jnp.isfinite(x), shape)
    amax = jnp.where(finite, jnp.abs(values), 0.0).max(axis=(1, 3))  # [R, C]
    used = amax > 0
    scale, log2, limited = _scales(amax, recipe)
    quantized = _quantized(values, scale, recipes.recipe_format(recipe, role))
    # Per-block SNR, normalized by the block's amax so squares neither overflow nor underflow.
    norm = jnp.where(used, amax, 1.0)[:, None, :, None]
    signal = jnp.sum(jnp.where(finite, values / norm, 0.0) ** 2, axis=(1, 3))
    errors = jnp.where(finite, (values - quantized) / norm, 0.0)
    noise = jnp.sum(errors**2, axis=(1, 3))
    snr = jnp.where(
        used & (noise > 0), 10 * jnp.log10(signal / jnp.where(noise > 0, noise, 1.0)), jnp.inf
    )
    counted = used & (scale > 0)
    n_used, n_counted = jnp.sum(used), jnp.sum(counted)
    mean = jnp.sum(jnp.where(counted, log2, 0.0)) / jnp.maximum(n_counted, 1)
    variance = jnp.sum(jnp.where(counted, (log2 - mean) ** 2, 0.0)) / jnp.maximum(n_counted, 1)
    nan = jnp.float32(jnp.nan)
    stats = jnp.stack(
        [
            jnp.where(n_counted > 0, jnp.min(jnp.where(counted, log2, jnp.inf)), nan),
            jnp.where(n_counted > 0, jnp.max(jnp.where(counted, log2, -jnp.inf)), nan),
            jnp.where(n_counted > 0, jnp.sqrt(variance), nan),
            jnp.where(n_used > 0, jnp.sum(used & limited) / jnp.maximum(n_used, 1), nan),
            jnp.where(n_used > 0, jnp.min(snr), nan),
        ]
    ).astype(jnp.float32)
    return {
        "scales": scale,
        "used": used,
        "stats": stats,
        "worst": _worst(snr),
        "histogram": _histogram(log2, counted),
    }


def _worst(snr):
    """[WORST_BLOCKS, 3] (block row, block column, SNR dB) of the lowest SNRs of grid `snr`,
    worst first; (-1, -1, +inf) for padding and exact blocks. Indices are float32, exact up
    to 2^24 blocks a row or column."""
    import jax  # lazy: jax loads in ~3 s
    import jax.numpy as jnp

    flat = snr.reshape(-1)
    k = min(WORST_BLOCKS, flat.size)
    lowest, index = jax.lax.top_k(-flat, k)
    columns = snr.shape[1]
    worst = jnp.stack([index // columns, index % columns, -lowest], axis=1).astype(jnp.float32)
    worst = jnp.where(jnp.isinf(worst[:, 2:]), jnp.array([-1.0, -1.0, jnp.inf]), worst)
    worst = jnp.pad(worst, ((0, WORST_BLOCKS - k), (0, 0)), constant_values=-1.0)
    return worst.at[k:, 2].set(jnp.inf)


def _histogram(log2, counted):
    """int32 counts of the counted blocks' floor(log2 scale) in the bins from HISTOGRAM_LOW
    to HISTOGRAM_HIGH (the end bins take what lies beyond)."""
    import jax.numpy as jnp  # lazy: jax loads in ~3 s

    bins = jnp.clip(jnp.floor(jnp.where(counted, log2, 0.0)), HISTOGRAM_LOW, HISTOGRAM_HIGH - 1)
    counts = jnp.zeros(HISTOGRAM_HIGH - HISTOGRAM_LOW, jnp.int32)
    return counts.at[(bins - HISTOGRAM_LOW).astype(jnp.int32)].add(counted.astype(jnp.int32))


def block_scales(x, recipe: str, role: str, gemm: str | None = None) -> dict:
    """The block scales of one 2D tensor under `recipe` in `gemm`, with their statistics.

    x: inputs (M, K), kernel (K, N) or output gradient (M, N) of a Dense layer. gemm: one of
    the two GEMMs the role feeds (recipes.ROLE_GEMMS; None: its first), which decides the axis
    the blocks run along: K in fprop, N in dgrad, M (the tokens) in wgrad.
    Returns numpy values: "scales" [R, C] (NaN for blocks without a nonzero finite value),
    the STATISTICS as floats, "worst_blocks" [(block row, block column, SNR dB)], worst
    first, and "histogram" (see `compact_histogram`).
    """
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise ValueError(f"block_scales takes a 2D tensor (a Dense layer's), got shape {x.shape}")
    gemms = recipes.ROLE_GEMMS.get(role)
    if gemms is None:
        raise ValueError(f"unknown tensor role {role!r}; choose one of {', '.join(ROLES)}")
    gemm = gemm or gemms[0]
    if gemm not in gemms:
        raise ValueError(f"the {role} tensor feeds {' and '.join(gemms)}, not {gemm!r}")
    if gemm != gemms[0]:  # the other GEMM contracts the other axis of this matrix
        x = x.T
    out = block_statistics(x, recipe, role)
    stats = np.asarray(out["stats"], np.float64)
    return {
        "scales": np.where(np.asarray(out["used"]), np.asarray(out["scales"]), np.nan),
        **{name: float(stats[n]) for n, name in enumerate(STATISTICS)},
        "worst_blocks": worst_blocks(out["worst"]),
        "histogram": compact_histogram(out["histogram"]),
    }


def worst_blocks(worst) -> list[tuple[int, int, float]]:
    """`block_statistics`' "worst" rows as (block row, block column, SNR dB), padding and
    exact blocks left out."""
    return [(int(r), int(c), float(s)) for r, c, s in np.asarray(worst) if math.isfinite(s)]


def compact_histogram(counts) -> dict:
    """{"first": the lowest nonempty integer log2 bin, "counts": counts from it to the highest
    nonempty one}; {"first": None, "counts": []} for no block."""
    counts = np.asarray(counts)
    nonempty = np.flatnonzero(counts)
    if not len(nonempty):
        return {"first": None, "counts": []}
    low, high = nonempty[0], nonempty[-1]
    return {"first": int(low) + HISTOGRAM_LOW, "counts": [int(n) for n in counts[low : high + 1]]}


def block_records(step: int, layer_names, recipe_names, gemm_stats) -> list[dict]:
    """The store's rows of one probe: one per float8 tensor, GEMM that uses it and recipe.

    gemm_stats: ((stats, worst, histogram) for each tensor's first GEMM, the same for its
    second), shaped [layers, roles, recipes, ...] as probe.Probe.blocks holds them.
    Each row: layer, role, gemm, recipe, step, the STATISTICS (None where not finite) and
    "details", JSON of {"histogram", "worst": [[block row, block column, SNR dB], ...]}.
    """
    rows = []
    for g, (stats, worst, histogram) in enumerate(gemm_stats):
        stats, worst, histogram = np.asarray(stats), np.asarray(worst), np.asarray(histogram)
        for i, layer in enumerate(layer_names):
            for j, role in enumerate(ROLES):
                for k, recipe in enumerate(recipe_names):
                    values = stats[i, j, k]
                    details = {
                        "histogram": compact_histogram(histogram[i, j, k]),
                        "worst": [list(b) for b in worst_blocks(worst[i, j, k])],
                    }
                    rows.append(
                        {
                            "layer": layer,
                            "role": role,
                            "gemm": recipes.ROLE_GEMMS[role][g],
                            "recipe": recipe,
                            "step": int(step),
                            **{n: _finite(values[m]) for m, n in enumerate(STATISTICS)},
                            "details": json.dumps(details),
                        }
                    )
    return rows


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


JSON_KEYS = ("layer", "role", "recipe", "gemm", "step", *STATISTICS, "worst_block")


def json_row(row: dict) -> dict:
    """A stored row (Store.fp8_blocks) as `health --blocks --json` prints it: JSON_KEYS, with
    worst_block the [block row, block column] of the worst block (None when all are exact)."""
    worst = row["details"]["worst"]
    return {
        **{key: row[key] for key in JSON_KEYS[:-1]},
        "worst_block": worst[0][:2] if worst else None,
    }


def block_words(recipe: str, role: str, block) -> str:
    """Where block (row, column) of the blocked matrix lies: "row 3, columns 32-63"."""
    (i, j), (r, c) = block, block_shape(recipe, role)
    rows = f"row {i}" if r == 1 else f"rows {i * r}-{i * r + r - 1}"
    return f"{rows}, columns {j * c}-{j * c + c - 1}"
