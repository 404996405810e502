"""FP8 (and 4-bit) scaling recipes as pure quantize-dequantize functions, and what-if statistics.

Keras trains with one recipe, delayed per-tensor scaling. This module answers "what would
the same tensor have looked like under another recipe?": each function takes a float array
and returns the array after quantizing to the recipe's format and back (float32, same shape).
They are jax functions, compiled with jax.jit per input shape on first use: they take numpy
arrays and can be called inside another jitted function (the probe's). `rowwise_values` and
`block_scaled_values` stop before dequantizing: the low-precision values and scales a real
FP8 (or FP4) GEMM takes (model.py).

    recipe       format                 one scale per                     scale
    delayed      E4M3 fwd, E5M2 grads   tensor                            the run's (Keras)
    current      E4M3 fwd, E5M2 grads   tensor                            amax / fmax
    rowwise      E4M3                   row (kernel: output channel)      power of two, up
    block128     E4M3                   1x128 tile (kernel: 128x128)      power of two, up
    mxfp8        E4M3                   32 values, E8M0 scale             power of two, up
    mxfp8-floor  E4M3                   32 values, E8M0 scale             power of two, down
    nvfp4        E2M1                   16 values (E4M3), tensor (FP32)   two levels

Training also knows "rowwise-gw-hp" (torchao `rowwise_with_gw_hp`, see `quantize`'s `gemm`):
E4M3 with plain amax / fmax scales, the kernel per tensor in the input-gradient GEMM and the
weight-gradient GEMM unquantized. Trained "nvfp4" adds NVIDIA's switchable parts (NVFP4Parts):
16x16 kernel blocks, a random Hadamard transform on the wgrad operands, stochastic rounding of
output gradients.

Scales follow Keras' convention: a divisor, `quantized = cast(clip(x / scale, ±fmax)) * scale`
(Transformer Engine stores the reciprocal as "scale" and this one as "scale_inv").

Layout. Block recipes group values along the dimension a matmul contracts, as the hardware
does: the last axis of inputs (..., K); axis 0 of kernels (K, N); the last axis of output
gradients (..., N), which the input-gradient matmul contracts. `block_dims` says how many
axes form that dimension (an EinsumDense may contract over two). A shape that the block does
not divide gets a partial last block whose scale comes from its own values (zero padding).
A layer runs three GEMMs (fprop X·W, dgrad dY·Wᵀ, wgrad Xᵀ·dY) and each quantizes its
operands along its own contraction axes, so the caller moves those axes where these
functions block: `gemms.gemm_layout` names them for a layer's einsum (the kernel along N in
dgrad, inputs and output gradients along the tokens M in wgrad); a 128x128 kernel tile is the
same tile either way round.

Non-finite input. Scales come from the finite values only, so one inf or NaN does not change
how the rest of its block is quantized. NaN stays NaN; ±inf saturates to ±fmax x scale and
counts as saturated. (Implementations of the OCP MX spec may instead turn a whole block
holding a NaN into NaN.)

Float32 subnormals are flushed by XLA on CPU, so power-of-two scales stop at 2^-126, one
binade short of E8M0's 2^-127; that only touches blocks whose amax is below about 2^-117.
"""

import functools
import math
from dataclasses import dataclass

import numpy as np

from fp8demo import fp8
from fp8demo.fp8 import ROLES


@dataclass(frozen=True)
class Format:
    """An element format: its jax dtype name, largest finite value and saturation limit.

    saturation_limit: fmax plus half the top step (the spacing of the two largest values);
    clipping a value below it costs no more than rounding does, so only values beyond it
    count as saturated.
    """

    name: str
    dtype: str
    max: float
    saturation_limit: float


E4M3 = Format("E4M3", "float8_e4m3fn", fp8.E4M3_MAX, fp8.SATURATION_LIMIT["inputs"])
E5M2 = Format("E5M2", "float8_e5m2", fp8.E5M2_MAX, fp8.SATURATION_LIMIT["outputs_grad"])
# E2M1 values: 0, 0.5, 1, 1.5, 2, 3, 4, 6; the top step 4 -> 6 is 2, half of it 1.
E2M1 = Format("E2M1", "float4_e2m1fn", 6.0, 6.0 + 1.0)

RECIPES = ("delayed", "current", "rowwise", "block128", "mxfp8", "mxfp8-floor", "nvfp4")
# Recipes only training uses: their operands differ per GEMM beyond where the blocks lie.
TRAINING_ONLY = ("rowwise-gw-hp",)
# The three GEMMs of a linear layer and the two tensors each multiplies: forward Y = X·W,
# input gradient dX = dY·Wᵀ, weight gradient dW = Xᵀ·dY.
GEMMS = ("fprop", "dgrad", "wgrad")
GEMM_OPERANDS = {
    "fprop": ("inputs", "kernel"),
    "dgrad": ("outputs_grad", "kernel"),
    "wgrad": ("inputs", "outputs_grad"),
}
# The two GEMMs each tensor feeds; `gemms.operand_axes` blocks it as the first does.
ROLE_GEMMS = {
    "inputs": ("fprop", "wgrad"),
    "kernel": ("fprop", "dgrad"),
    "outputs_grad": ("dgrad", "wgrad"),
}
# What-if recipes with one scale per tensor: a tensor quantizes the same in both its GEMMs.
PER_TENSOR = ("delayed", "current")
STATISTICS = ("underflow_pct", "saturation_pct", "snr_db")

RECIPE_HELP = {
    "delayed": "the scale the run used: amax history of earlier steps / fmax, per tensor (Keras)",
    "current": "per tensor, from this tensor's own amax (TE Float8CurrentScaling)",
    "rowwise": "one power-of-two scale per row along what the GEMM contracts, E4M3 for "
    "gradients too (torchao rowwise)",
    "rowwise-gw-hp": "torchao rowwise_with_gw_hp: one amax / fmax scale per row, the kernel "
    "per tensor in the input-gradient GEMM, the weight-gradient GEMM in bf16",
    "block128": "1x128 tiles, 128x128 for kernels, power-of-two scales (TE Float8BlockScaling)",
    "mxfp8": "32-value blocks, E8M0 scale rounded up (TE MXFP8BlockScaling, arXiv 2506.08027)",
    "mxfp8-floor": "32-value blocks, E8M0 scale rounded down as the OCP MX v1.0 spec suggests",
    "nvfp4": "4-bit E2M1, 16-value blocks with E4M3 scales and a per-tensor FP32 scale "
    "(TE NVFP4BlockScaling without Hadamard transforms or stochastic rounding)",
}
STATISTICS_HELP = {
    "underflow_pct": "% of the finite nonzero values that quantize to zero",
    "saturation_pct": "% of the values (NaN aside) clipped at the format's max by more than "
    "half a step, ±inf included",
    "snr_db": "10 log10(sum x^2 / sum (x - q(x))^2) over the finite values; higher is "
    "better, +inf when quantization is exact",
}


def recipe_format(recipe: str, role: str) -> Format:
    """The element format a recipe quantizes a tensor role to (TE's defaults).

    Per-tensor recipes use the hybrid format (E4M3 forward, E5M2 for gradients); torchao's
    rowwise and the block recipes use E4M3 both ways, their finer scales leave E5M2's range
    unneeded.
    """
    _check(recipe, role)
    if recipe == "nvfp4":
        return E2M1
    if recipe in ("delayed", "current"):
        return E5M2 if role == "outputs_grad" else E4M3
    return E4M3


def _check(recipe, role):
    if recipe not in RECIPES + TRAINING_ONLY:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    if role not in ROLES:
        raise ValueError(f"unknown tensor role {role!r}; choose one of {', '.join(ROLES)}")


# -- the quantize-dequantize step every recipe shares ----------------------------------------


def _qdq(x, scale, fmt: Format, noise=None):
    """(dequantized, saturated) of float32 `x` with per-element divisor `scale`.

    Rounding is the dtype cast: round to nearest, ties to even, subnormals included; with
    `noise` (uniform [0, 1) values in x's shape, E2M1 only) stochastic rounding instead. A
    zero scale (an NVFP4 block scale below E4M3's smallest subnormal) flushes its values to
    zero.
    """
    import jax.numpy as jnp  # lazy: jax loads in ~3 s

    usable = scale > 0
    safe_scale = jnp.where(usable, scale, 1.0)
    scaled = x / safe_scale
    dequantized = _values(scaled, fmt, noise).astype(jnp.float32) * safe_scale
    # E2M1 has no NaN (the cast would give 0): keep NaN visible in every format.
    dequantized = jnp.where(jnp.isnan(x), jnp.nan, jnp.where(usable, dequantized, 0.0))
    saturated = usable & (jnp.abs(scaled) > fmt.saturation_limit)
    return dequantized, saturated


def _values(scaled, fmt: Format, noise=None):
    """Values already divided by their scale, clipped to ±fmax (±inf saturates) and rounded
    to fmt's dtype: what a low-precision GEMM multiplies. NaN stays NaN in the float8 formats."""
    import jax.numpy as jnp  # lazy: jax loads in ~3 s

    clipped = jnp.clip(scaled, -fmt.max, fmt.max)
    if noise is not None:
        clipped = _round_e2m1_stochastically(clipped, noise)
    return clipped.astype(getattr(jnp, fmt.dtype))


def _tile_amax(m, rows: int | None, cols: int | None):
    """Each element's tile amax over the finite values of matrix `m`, in `m`'s shape.

    Tiles are rows x cols (None: the whole extent); the last tile along an axis the tile
    size does not divide is partial, padded with zeros, which leave its amax unchanged.
    """
    import jax.numpy as jnp  # lazy: jax loads in ~3 s

    n_rows, n_cols = m.shape
    rows = max(1, min(rows or n_rows, n_rows))
    cols = max(1, min(cols or n_cols, n_cols))
    amax = _tile_grid_amax(m, rows, cols)
    amax = jnp.repeat(jnp.repeat(amax, rows, axis=0), cols, axis=1)
    return amax[:n_rows, :n_cols]


def _tile_grid_amax(m, rows: int, cols: int):
    """The amax over the finite values of each rows x cols tile of matrix `m`, one per tile
    (the last ones partial: zero padding leaves their amax unchanged)."""
    import jax.numpy as jnp  # lazy: jax loads in ~3 s

    n_rows, n_cols = m.shape
    magnitude = jnp.where(jnp.isfinite(m), jnp.abs(m), 0.0)
    magnitude = jnp.pad(magnitude, ((0, -n_rows % rows), (0, -n_cols % cols)))
    tiles = magnitude.reshape(-(-n_rows // rows), rows, -(-n_cols // cols), cols)
    return tiles.max(axis=(1, 3))


def _fitting_scale(amax, fmt: Format):
    """amax / fmax, the scale that maps the largest value onto the format's max (1 for 0)."""
    import jax.numpy as jnp  # lazy: jax loads in ~3 s

    return jnp.where(amax > 0, amax / fmt.max, 1.0)


def power_of_two_scale(amax, fmt: Format, rounding: str):
    """A power-of-two scale 2^e for each amax, e clamped to [-126, 127] (1 where amax is 0).

    rounding "up":    e = ceil(log2(amax / fmax)), the smallest that does not clip amax;
                      TE's `float_to_e8m0` (MXFP8) and its power-of-two block scales
                      (`compute_scale_from_amax`, which rounds the reciprocal down) do this.
    rounding "floor": e = floor(log2(amax)) - floor(log2(fmax)), the OCP MX v1.0 spec's
                      shared exponent (section 6.3); amax / 2^e lands in [256, 512) for E4M3,
                      so a block's top values above 448 are clipped.
    Exact: read from frexp's exponent and mantissa, not from a rounded log2.
    """
    import jax.numpy as jnp  # lazy: jax loads in ~3 s

    mantissa, exponent = jnp.frexp(amax)  # amax = mantissa * 2^exponent, mantissa in [0.5, 1)
    fmax_mantissa, fmax_exponent = math.frexp(fmt.max)
    e = exponent - fmax_exponent
    if rounding == "up":
        e = e + (mantissa > fmax_mantissa)
    elif rounding != "floor":
        raise ValueError(f"unknown rounding {rounding!r}; choose 'up' or 'floor'")
    e = jnp.clip(e, -126, 127)
    return jnp.where(amax > 0, jnp.ldexp(jnp.ones_like(amax), e), 1.0)


# -- the recipes, on matrices blocked along their last axis ----------------------------------
# Each takes a float32 matrix and returns (dequantized, saturated) of that shape.


def _delayed(m, scale, fmt):
    import jax.numpy as jnp  # lazy: jax loads in ~3 s

    return _qdq(m, jnp.asarray(scale, jnp.float32), fmt)


def _tiled(m, rows, cols, fmt, scale_rule):
    return _qdq(m, scale_rule(_tile_amax(m, rows, cols)), fmt)


def _current(m, fmt):
    return _tiled(m, None, None, fmt, lambda amax: _fitting_scale(amax, fmt))


def _rowwise_scale(m, fmt):
    # torchao: multiplier fmax / amax rounded down to a power of two (a divisor rounded up).
    return power_of_two_scale(_tile_amax(m, 1, None), fmt, "up")


def _rowwise(m, fmt):
    return _qdq(m, _rowwise_scale(m, fmt), fmt)


def _rowwise_gw_hp(m, fmt, role, gemm):
    """torchao rowwise_with_gw_hp: rows with amax / fmax scales; the kernel per tensor in
    dgrad; wgrad's operands unquantized (high precision)."""
    import jax.numpy as jnp  # lazy: jax loads in ~3 s

    if gemm == "wgrad":
        return m, jnp.zeros(m.shape, bool)
    if gemm == "dgrad" and role == "kernel":
        return _current(m, fmt)
    return _tiled(m, 1, None, fmt, lambda amax: _fitting_scale(amax, fmt))


def _block(m, tile, fmt):
    return _tiled(m, tile[0], tile[1], fmt, lambda amax: power_of_two_scale(amax, fmt, "up"))


def _mxfp8(m, rounding, fmt):
    return _tiled(m, 1, 32, fmt, lambda amax: power_of_two_scale(amax, fmt, rounding))


def nvfp4_scales(block_amax):
    """(E4M3 block scales, FP32 tensor scale) of NVFP4 for the blocks' amaxes (any shape; the
    tensor's amax is their max). A value's divisor is block scale x tensor scale."""
    import jax.numpy as jnp  # lazy: jax loads in ~3 s

    tensor_amax = jnp.max(block_amax, initial=0.0)
    # Per-tensor FP32 scale: maps the largest block scale onto E4M3's max.
    global_scale = jnp.where(tensor_amax > 0, tensor_amax / (E4M3.max * E2M1.max), 1.0)
    # Per-block E4M3 scale, in units of the global one; it may round to 0 for tiny blocks.
    block_scale = jnp.clip(block_amax / E2M1.max / global_scale, 0.0, E4M3.max)
    return block_scale.astype(jnp.float8_e4m3fn).astype(jnp.float32), global_scale


def _nvfp4(m, tile=(1, 16), noise=None):
    """NVFP4 on rows x cols tiles (1x16; 16x16 for 2D weight blocks), rounded to nearest
    even, or stochastically with `noise`."""
    block_scale, global_scale = nvfp4_scales(_tile_amax(m, *tile))
    return _qdq(m, block_scale * global_scale, E2M1, noise)


# -- NVFP4 as NVIDIA trains with it (arXiv 2509.25149) ---------------------------------------


@dataclass(frozen=True)
class NVFP4Parts:
    """The parts of NVIDIA's NVFP4 training recipe beyond the 1x16 quantizer, each switchable
    (all off: the what-if's plain NVFP4).

    two_d_weights:       kernels in 16x16 blocks, so W (fprop) and Wᵀ (dgrad) quantize alike;
    rht_signs:           the 16 random signs of the Hadamard transform applied to both wgrad
                         operands along the tokens M (None: no transform);
    stochastic_rounding: output gradients (dgrad and wgrad) rounded stochastically.
    """

    two_d_weights: bool = False
    rht_signs: tuple | None = None
    stochastic_rounding: bool = False


HADAMARD_SIZE = 16


def hadamard_signs(seed: int) -> tuple:
    """The Hadamard transform's 16 random signs (±1), fixed by the run's seed."""
    return tuple(int(s) for s in np.random.default_rng(seed).choice((-1, 1), HADAMARD_SIZE))


def hadamard_matrix(signs: tuple):
    """H·diag(signs)/4 with H the 16x16 Sylvester Hadamard matrix: orthogonal, R Rᵀ = I."""
    h = np.ones((1, 1))
    while h.shape[0] < HADAMARD_SIZE:
        h = np.block([[h, h], [h, -h]])
    return (h * np.asarray(signs, float)[None, :] / math.sqrt(HADAMARD_SIZE)).astype(np.float32)


def random_hadamard(m, signs: tuple):
    """Matrix `m` with each full run of 16 values along its last axis multiplied by the
    random Hadamard matrix; a partial last run stays as it is. Orthogonal and block-diagonal
    along the axis a GEMM contracts, so transforming both operands leaves the product
    unchanged while it spreads a block's outliers over its 16 values."""
    import jax  # lazy: jax loads in ~3 s
    import jax.numpy as jnp

    rows, length = m.shape
    full = length // HADAMARD_SIZE * HADAMARD_SIZE
    runs = m[:, :full].reshape(rows, -1, HADAMARD_SIZE)
    rotated = jnp.einsum(
        "rbi,ji->rbj", runs, hadamard_matrix(signs), precision=jax.lax.Precision.HIGHEST
    )
    return jnp.concatenate([rotated.reshape(rows, full), m[:, full:]], axis=1)


def _round_e2m1_stochastically(v, noise):
    """`v` (within ±6) rounded to one of its two neighbours on the E2M1 grid, the upper one
    with probability equal to the distance from the lower in units of the step: unbiased."""
    import jax.numpy as jnp  # lazy: jax loads in ~3 s

    magnitude = jnp.abs(v)
    step = jnp.where(magnitude < 2, 0.5, jnp.where(magnitude < 4, 1.0, 2.0))
    low = jnp.floor(magnitude / step) * step
    up = noise < (magnitude - low) / step
    return jnp.sign(v) * (low + step * up)


def _nvfp4_prepared(m, role, gemm, parts: NVFP4Parts, key):
    """(matrix, tile, noise) NVFP4 quantizes one GEMM operand (blocked along its last axis)
    with, under the recipe's parts: the Hadamard-transformed matrix for wgrad, 16x16 kernel
    tiles, the stochastic rounding's uniform noise for output gradients (else None)."""
    import jax  # lazy: jax loads in ~3 s

    if parts.two_d_weights and role == "kernel":
        return m, (HADAMARD_SIZE, HADAMARD_SIZE), None
    if parts.rht_signs is not None and gemm == "wgrad":
        m = random_hadamard(m, parts.rht_signs)
    if parts.stochastic_rounding and role == "outputs_grad":
        if key is None:
            raise ValueError("NVFP4 stochastic rounding needs a random key")
        noise = jax.random.uniform(jax.random.fold_in(key, GEMMS.index(gemm)), m.shape)
        return m, (1, 16), noise
    return m, (1, 16), None


def _nvfp4_operand(m, role, gemm, parts: NVFP4Parts, key):
    """NVFP4 of one GEMM operand (blocked along its last axis) with the recipe's parts."""
    m, tile, noise = _nvfp4_prepared(m, role, gemm, parts, key)
    return _nvfp4(m, tile, noise)


def _on_last_axis(recipe, x, *args):
    """`recipe` applied to x viewed as rows x last axis; the dequantized array in x's shape."""
    import jax.numpy as jnp  # lazy: jax loads in ~3 s

    x = jnp.asarray(x, jnp.float32)
    matrix = x.reshape(math.prod(x.shape[:-1]), x.shape[-1]) if x.ndim else x.reshape(1, 1)
    return recipe(matrix, *args)[0].reshape(x.shape)


def _compiled(*static):
    """Decorator: run the function through jax.jit, compiled once per input shape and value
    of the `static` (hashable) arguments. It may still be called inside another jit, where
    it is simply traced along; jax is imported on first use."""

    def wrap(function):
        jitted = None

        @functools.wraps(function)
        def call(*args, **kwargs):
            nonlocal jitted
            if jitted is None:
                import jax  # lazy: jax loads in ~3 s

                jitted = jax.jit(function, static_argnames=static)
            return jitted(*args, **kwargs)

        return call

    return wrap


# -- public per-recipe functions: blocks along the last axis --------------------------------


@_compiled("fmt")
def qdq_delayed(x, scale, fmt: Format = E4M3):
    """Keras' float8 quantize-dequantize with a given scalar `scale` (amax / fmax).

    The scale comes from earlier steps' amax history (`keras.src.quantizers.quantizers.
    compute_float8_scale`); this step's values beyond fmax x scale are clipped.
    """
    return _on_last_axis(_delayed, x, scale, fmt)


@_compiled("tile", "fmt")
def qdq_block(x, tile=(1, 128), fmt: Format = E4M3):
    """Block scaling over rows x cols tiles of x viewed as rows x last axis
    (TE `Float8BlockScaling`).

    TE: 1x128 tiles for activations and gradients, 128x128 for weights; per tile
    s = fmax / amax rounded down to a power of two, i.e. the divisor amax / fmax rounded up,
    so nothing clips (docs `features/low_precision_training/fp8_blockwise_scaling`).
    """
    return _on_last_axis(_block, x, tile, fmt)


@_compiled("round", "fmt")
def qdq_mxfp8(x, round: str = "up", fmt: Format = E4M3):
    """MXFP8: 32 consecutive values along the last axis share a power-of-two (E8M0) scale.

    round="up": TE `MXFP8BlockScaling` and the MXFP8 pre-training recipe (arXiv 2506.08027),
    scale 2^ceil(log2(amax / fmax)). round="floor": the OCP Microscaling Formats v1.0 spec,
    scale 2^(floor(log2 amax) - emax_elem) with emax_elem = 8 for E4M3, which clips a block's
    values between 448 and its amax (up to 512 x scale).
    """
    return _on_last_axis(_mxfp8, x, round, fmt)


@_compiled()
def qdq_nvfp4(x):
    """NVFP4: E2M1 values (max 6), 16-value blocks along the last axis, two-level scales.

    TE `NVFP4BlockScaling` (docs `features/low_precision_training/nvfp4`):
    s_global = amax(x) / (448 * 6) in FP32; s_block = E4M3(amax(block) / 6 / s_global);
    x ~ E2M1(x / (s_block * s_global)) * s_block * s_global. Round to nearest even; TE's
    stochastic rounding of gradients, Hadamard transforms and 16x16 weight blocks are not
    modelled here (training has them: `quantize`'s `nvfp4`).
    """
    return _on_last_axis(_nvfp4, x)


# -- by recipe and tensor role --------------------------------------------------------------


def _to_blocked(x, role: str, block_dims: int):
    """x as a matrix whose last axis is the blocked dimension, and the inverse reshape.

    inputs (..., K) and output gradients (..., N): the trailing `block_dims` axes;
    kernels (K, N): the leading `block_dims` axes, transposed to (N, K) so rows are the
    output channels.
    """
    import jax.numpy as jnp  # lazy: jax loads in ~3 s

    x = jnp.asarray(x, jnp.float32)
    shape = x.shape
    if not 1 <= block_dims <= max(len(shape), 1):
        raise ValueError(
            f"block_dims must be between 1 and the tensor's rank {len(shape)}, got {block_dims}"
        )
    if role == "kernel":
        k, n = math.prod(shape[:block_dims]), math.prod(shape[block_dims:])
        return x.reshape(k, n).T, lambda m: m.T.reshape(shape)
    split = len(shape) - block_dims
    matrix = x.reshape(math.prod(shape[:split]), math.prod(shape[split:]))
    return matrix, lambda m: m.reshape(shape)


def _apply(x, recipe, role, delayed_scale, block_dims, gemm="fprop", nvfp4=None, key=None):
    """(dequantized, saturated) of `x` under `recipe` as the given tensor role in `gemm`;
    `nvfp4` (NVFP4Parts) and `key` (a jax random key) only for "nvfp4"."""
    _check(recipe, role)
    if gemm not in GEMMS:
        raise ValueError(f"unknown GEMM {gemm!r}; choose one of {', '.join(GEMMS)}")
    fmt = recipe_format(recipe, role)
    if recipe == "delayed" and delayed_scale is None:
        raise ValueError("recipe 'delayed' needs delayed_scale (the scale the run used)")
    matrix, restore = _to_blocked(x, role, block_dims)
    if recipe == "delayed":
        result = _delayed(matrix, delayed_scale, fmt)
    elif recipe == "current":
        result = _current(matrix, fmt)
    elif recipe == "rowwise":
        result = _rowwise(matrix, fmt)
    elif recipe == "rowwise-gw-hp":
        result = _rowwise_gw_hp(matrix, fmt, role, gemm)
    elif recipe == "block128":
        result = _block(matrix, (128, 128) if role == "kernel" else (1, 128), fmt)
    elif recipe in ("mxfp8", "mxfp8-floor"):
        result = _mxfp8(matrix, "floor" if recipe == "mxfp8-floor" else "up", fmt)
    else:
        result = _nvfp4_operand(matrix, role, gemm, nvfp4 or NVFP4Parts(), key)
    dequantized, saturated = result
    return restore(dequantized), restore(saturated)


@_compiled("recipe", "role", "block_dims", "gemm", "nvfp4")
def quantize(
    x,
    recipe: str,
    role: str,
    delayed_scale=None,
    block_dims: int = 1,
    gemm="fprop",
    nvfp4: NVFP4Parts | None = None,
    key=None,
):
    """`x` quantized under `recipe` as an "inputs", "kernel" or "outputs_grad" tensor, and
    dequantized back (float32, x's shape). `delayed_scale` is needed by "delayed" only;
    `block_dims`: how many axes form the blocked dimension (see the module docstring);
    `gemm`: the GEMM the operand feeds, which "rowwise-gw-hp" and "nvfp4" tell apart (the
    blocked axes say the rest: a kernel blocked along N for dgrad, inputs along M for wgrad).
    `nvfp4`: the NVFP4Parts of a trained "nvfp4" (default: none); `key`: the jax random key
    its stochastic rounding draws from. With the Hadamard transform a wgrad operand comes
    back transformed along M: only the product of the two wgrad operands means anything."""
    return _apply(x, recipe, role, delayed_scale, block_dims, gemm, nvfp4, key)[0]


@_compiled("role", "block_dims")
def rowwise_values(x, role: str, block_dims: int = 1):
    """`quantize(x, "rowwise", role, block_dims=block_dims)` before dequantizing: (values,
    scale), float8_e4m3fn values in x's shape and float32 power-of-two scales in x's shape
    with size 1 along the blocked axes, whose product is that quantize's result. A GEMM
    contracting the blocked axes can multiply the values in FP8 and scale its output
    afterwards: the scales are constant along what it sums."""
    import jax.numpy as jnp  # lazy: jax loads in ~3 s

    fmt = recipe_format("rowwise", role)
    matrix, restore = _to_blocked(x, role, block_dims)
    scale = _rowwise_scale(matrix, fmt)
    values = restore(_values(matrix / scale, fmt))
    rank = jnp.ndim(x)
    blocked = range(block_dims) if role == "kernel" else range(rank - block_dims, rank)
    one_per_row = tuple(slice(0, 1) if axis in blocked else slice(None) for axis in range(rank))
    return values, restore(scale)[one_per_row]


# Recipes a block-scaled GEMM takes (jax.nn.scaled_matmul): {recipe: values per scale}.
BLOCK_SCALED = {"mxfp8": 32, "mxfp8-floor": 32, "nvfp4": 16}


@_compiled("recipe", "role", "block_dims", "gemm", "nvfp4")
def block_scaled_values(
    x, recipe: str, role: str, block_dims: int = 1, gemm="fprop", nvfp4=None, key=None
):
    """`quantize(x, recipe, role, ...)` of a BLOCK_SCALED recipe before dequantizing, laid
    out as a block-scaled GEMM takes an operand: (values, block_scales, tensor_scale).

    values:       (rows, K) in the element format (E4M3; E2M1 for nvfp4), rows being x's
                  other axes and K its blocked ones as `_to_blocked` orders them (a kernel's
                  rows are its output channels), K zero-padded to a whole number of blocks;
    block_scales: (rows, K / block) float32, one per block of each row (a 16x16 kernel tile's
                  scale repeated on its 16 rows): powers of two for mxfp8 (E8M0), E4M3
                  values for nvfp4 (NaN for a block holding a NaN: E2M1 has none);
    tensor_scale: float32 scalar, NVFP4's per-tensor scale (1 for mxfp8).

    Their product is that quantize's matrix (nvfp4: up to float32 rounding).
    """
    import jax.numpy as jnp  # lazy: jax loads in ~3 s

    if recipe not in BLOCK_SCALED:
        raise ValueError(f"{recipe!r} is not a block recipe; choose from {', '.join(BLOCK_SCALED)}")
    _check(recipe, role)
    matrix, _ = _to_blocked(x, role, block_dims)
    fmt, block = recipe_format(recipe, role), BLOCK_SCALED[recipe]
    tile, noise, tensor_scale = (1, block), None, jnp.float32(1.0)
    if recipe == "nvfp4":
        matrix, tile, noise = _nvfp4_prepared(matrix, role, gemm, nvfp4 or NVFP4Parts(), key)
    # The scales are computed per tile, not per value as quantize does: the same numbers, a
    # block's worth fewer of them.
    amax = _tile_grid_amax(matrix, *tile)
    if recipe == "nvfp4":
        block_scale, tensor_scale = nvfp4_scales(amax)
    else:
        rounding = "floor" if recipe == "mxfp8-floor" else "up"
        block_scale = power_of_two_scale(amax, fmt, rounding)
    divisor = block_scale * tensor_scale  # what quantize divides by: the same values

    def per_row(scales):  # a 16x16 tile's scale on each of its 16 rows
        return jnp.repeat(scales, tile[0], axis=0)[: matrix.shape[0]]

    block_scale, divisor = per_row(block_scale), per_row(divisor)
    divisor_per_value = jnp.repeat(divisor, block, axis=1)  # K padded to whole blocks
    pad = ((0, 0), (0, -matrix.shape[1] % block))  # zero values add nothing to a GEMM's sum
    if noise is not None:
        noise = jnp.pad(noise, pad)
    usable = divisor_per_value > 0
    scaled = jnp.pad(matrix, pad) / jnp.where(usable, divisor_per_value, 1.0)
    values = jnp.where(usable, _values(scaled, fmt, noise), jnp.zeros((), fmt.dtype))
    if recipe == "nvfp4":  # E2M1 has no NaN: a NaN scale carries a block's NaN to the GEMM
        holds_nan = _tile_grid_amax(jnp.isnan(matrix).astype(jnp.float32), *tile) > 0
        block_scale = jnp.where(per_row(holds_nan), jnp.nan, block_scale)
    return values, block_scale, tensor_scale


@_compiled("recipe", "role", "block_dims")
def what_if(x, recipe: str, role: str, delayed_scale=None, block_dims: int = 1) -> dict:
    """{"underflow_pct", "saturation_pct", "snr_db"} of `x` quantized under `recipe`.

    underflow_pct:  % of the finite nonzero values that quantize to zero;
    saturation_pct: % of the non-NaN values beyond fmax x scale by more than half a step
                    (±inf included);
    snr_db:         10 log10(sum x^2 / sum (x - q(x))^2) over the finite values, +inf when
                    quantization is exact (an all-zero tensor, for one).
    Values are float32 scalars (jax arrays), so this works inside jax.jit.
    """
    import jax.numpy as jnp  # lazy: jax loads in ~3 s

    x = jnp.asarray(x, jnp.float32)
    dequantized, saturated = _apply(x, recipe, role, delayed_scale, block_dims)
    finite = jnp.isfinite(x)
    nonzero = finite & (x != 0)
    underflow = jnp.sum(nonzero & (dequantized == 0)) / jnp.maximum(jnp.sum(nonzero), 1)
    saturation = jnp.sum(saturated) / jnp.maximum(jnp.sum(~jnp.isnan(x)), 1)
    # Normalized by the amax so that squares neither overflow nor underflow float32.
    amax = jnp.max(jnp.where(finite, jnp.abs(x), 0.0), initial=0.0)
    norm = jnp.where(amax > 0, amax, 1.0)
    signal = jnp.sum(jnp.where(finite, x / norm, 0.0) ** 2)
    noise = jnp.sum(jnp.where(finite, (x - dequantized) / norm, 0.0) ** 2)
    snr = jnp.where(noise > 0, 10 * jnp.log10(signal / jnp.where(noise > 0, noise, 1.0)), jnp.inf)
    return {
        "underflow_pct": (100 * underflow).astype(jnp.float32),
        "saturation_pct": (100 * saturation).astype(jnp.float32),
        "snr_db": snr.astype(jnp.float32),
    }
