"""Saturation and underflow of the actual float8 tensor values, probed on a fixed batch.

The amax history tells how large each tensor's largest value was; it cannot tell how many
values were clipped or flushed to zero. Every N training steps the recorder runs the model
in inference mode (no dropout) on a fixed validation batch of the training batch size
(gradient magnitudes depend on it) and counts, per float8 layer and role, under the scales
the next training step will use:

    saturation  share of the values clipped to ±fmax by more than rounding would move them
                (beyond (fmax + half the top step) × scale; see fp8.SATURATION_LIMIT)
    underflow   share of the nonzero values that quantize to zero; NaN when the tensor
                holds no nonzero value at all (dead: fp8.dead_since)

for the layer inputs and kernels (E4M3) and the output gradients (E5M2). The output
gradient is taken where Keras quantizes it: at the matmul's output (the gradient there
equals the gradient after the bias, before the activation), flowing back through the
other layers' float8 backward passes as in training. These are the statistics Transformer
Engine's FP8 debug tools log for PyTorch; one compiled function computes them all.

The same function also asks what-if: the same tensors quantized under every scaling recipe
of recipes.py (Transformer Engine's `mxfp8_underflows%` and friends), giving underflow %,
saturation % and SNR (dB) per tensor and recipe. Block recipes group values along the axes
the layer's matmul contracts, read from its einsum equation (see `contraction_layout`).
For the block recipes it also gives each tensor's block scales in both its GEMMs: their
spread, the share at the format's limit, the worst blocks (block_scales.py).
"""

import contextlib
import math

import numpy as np

from fp8demo import block_scales, fp8, gemms
from fp8demo import recipes as recipes_lib
from fp8demo.fp8 import ROLES

STATISTICS = ("saturation", "underflow")
RECIPE_STATISTICS = recipes_lib.STATISTICS  # underflow_pct, saturation_pct, snr_db


def tensor_stats(values, scale, role):
    """(saturation, underflow) fractions of `values` quantize-dequantized with `scale`;
    underflow is NaN when `values` has no nonzero value at all (fp8.dead_since reads it).

    Quantization is Keras': x / scale, clipped to ±fmax, cast to E4M3 (inputs, kernel) or
    E5M2 (output gradients). Works on numpy arrays and inside jax.jit.
    """
    import jax.numpy as jnp  # lazy: jax loads in ~3 s

    fmax = fp8.FORMAT_MAX[role]
    float8 = {"E4M3": jnp.float8_e4m3fn, "E5M2": jnp.float8_e5m2}[fp8.FORMATS[role]]
    x = jnp.asarray(values, jnp.float32)
    scaled = x / jnp.asarray(scale, jnp.float32)
    # Clipping within half a step of the top value costs no more than rounding does.
    saturation = jnp.mean(jnp.abs(scaled) > fp8.SATURATION_LIMIT[role])
    quantized = jnp.clip(scaled, -fmax, fmax).astype(float8).astype(jnp.float32)
    nonzero = x != 0
    flushed = jnp.sum(nonzero & (quantized == 0))
    count = jnp.sum(nonzero)
    # No nonzero value, no share of them: NaN marks the tensor as all zero (a dead tensor).
    underflow = jnp.where(count > 0, flushed / jnp.maximum(count, 1), jnp.nan)
    return saturation, underflow


# -- where each tensor's blocks lie ----------------------------------------------------------


def contraction_layout(layer) -> dict:
    """{role: (axis letters, letters a block runs along, blocks lead)} for one float8 layer:
    gemms.operand_axes, with kernels blocked along their leading (K) axes."""
    return {
        role: (letters, blocked, role == "kernel")
        for role, (letters, blocked) in gemms.operand_axes(layer).items()
    }


def second_gemm_layout(layer, inputs_rank: int) -> dict:
    """{role: (axis letters, letters a block runs along, blocks lead)} of each tensor in the
    other GEMM that uses it (recipes.ROLE_GEMMS): inputs and output gradients in wgrad,
    blocked along the tokens M; the kernel in dgrad, blocked along N."""
    layout = gemms.gemm_layout(getattr(layer, "equation", None), inputs_rank)
    return {
        role: (*layout[gemms[1]][1][role], role == "kernel")
        for role, gemms in recipes_lib.ROLE_GEMMS.items()
    }


def blocked_matrix(x, letters: str, blocked: str, leading: bool):
    """x as a matrix whose blocked dimension (the `blocked` axes, flattened in that order)
    is the last axis, or the first when `leading` (kernels: K x N)."""
    import jax.numpy as jnp  # lazy: jax loads in ~3 s

    explicit = letters.replace("...", "")
    offset = x.ndim - len(explicit)  # axes the ellipsis stands for
    block_axes = [offset + explicit.index(c) for c in blocked]
    others = [a for a in range(x.ndim) if a not in block_axes]
    order = block_axes + others if leading else others + block_axes
    if order != list(range(x.ndim)):
        x = jnp.transpose(x, order)
    k = math.prod(x.shape[: len(block_axes)] if leading else x.shape[len(others) :])
    return x.reshape((k, -1) if leading else (-1, k))


def same_shape_groups(matrices) -> list[list[int]]:
    """Indices of the matrices grouped by shape, for stacking each group without padding."""
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(matrices):
        groups.setdefault(tuple(m.shape), []).append(i)
    return list(groups.values())


def recipe_table(matrices, scales, role: str, recipes):
    """[tensors, recipes, (underflow_pct, saturation_pct, snr_db)] of one role's matrices.

    Matrices of one shape are stacked and vmapped, so each recipe compiles once per shape,
    not once per layer. Padding every matrix to the largest shape would cost memory in
    proportion to (tensors x largest matrix): a language model's vocabulary-wide head made
    that tens of GB. "delayed" uses `scales`, the scale the run itself applies to each tensor.
    """
    import jax  # lazy: jax loads in ~3 s
    import jax.numpy as jnp

    def statistics(recipe, stacked, stacked_scales):
        def one_tensor(x, scale):
            out = recipes_lib.what_if(x, recipe, role, scale, 1)
            return jnp.stack([out[name] for name in RECIPE_STATISTICS])

        return jax.vmap(one_tensor)(stacked, stacked_scales)

    rows = [None] * len(matrices)
    for indices in same_shape_groups(matrices):
        stacked = jnp.stack([jnp.asarray(matrices[i], jnp.float32) for i in indices])
        stacked_scales = jnp.stack([jnp.asarray(scales[i], jnp.float32) for i in indices])
        table = jnp.stack([statistics(r, stacked, stacked_scales) for r in recipes], axis=1)
        for k, i in enumerate(indices):
            rows[i] = table[k]
    return jnp.stack(rows)


BLOCK_PARTS = ("stats", "worst", "histogram")  # block_scales.block_statistics' outputs kept


def block_table(matrices, role: str, recipes):
    """(stats [tensors, recipes, 5], worst [tensors, recipes, 5, 3], histogram [tensors,
    recipes, bins]) of one role's matrices under each block recipe (block_scales.py).

    Grouped by shape and vmapped as in `recipe_table`: one compilation per shape and recipe.
    """
    import jax  # lazy: jax loads in ~3 s
    import jax.numpy as jnp

    per_tensor = [None] * len(matrices)
    for indices in same_shape_groups(matrices):
        stacked = jnp.stack([jnp.asarray(matrices[i], jnp.float32) for i in indices])
        parts = [
            jax.vmap(lambda x, r=recipe: block_scales.block_statistics(x, r, role))(stacked)
            for recipe in recipes
        ]
        for k, i in enumerate(indices):
            per_tensor[i] = [jnp.stack([part[name][k] for part in parts]) for name in BLOCK_PARTS]
    return tuple(jnp.stack([t[n] for t in per_tensor]) for n in range(len(BLOCK_PARTS)))


# -- the probe --------------------------------------------------------------------------------


@contextlib.contextmanager
def _tapped(layers, captured, taps):
    """Record each float8 layer's inputs and kernel; add taps[i] before its activation.

    Patches instance attributes only, restored on exit (tracing happens inside).
    """
    saved = []
    for i, layer in enumerate(layers):
        saved.append((layer, layer.__dict__.get("quantized_call"), layer.activation))

        def quantized_call(inputs, *args, _layer=layer, _i=i, _call=layer.quantized_call, **kwargs):
            from keras import ops  # lazy: keras loads in ~3 s

            captured[f"inputs{_i}"] = inputs
            captured[f"kernel{_i}"] = ops.convert_to_tensor(_layer._kernel)
            return _call(inputs, *args, **kwargs)

        def activation(z, _i=i, _activation=layer.activation):
            captured[f"z{_i}"] = z  # shape and dtype for the taps
            return _activation(z if taps is None else z + taps[_i])

        layer.quantized_call = quantized_call
        layer.activation = activation
    try:
        yield
    finally:
        for layer, call, activation in saved:
            if call is None:
                del layer.quantized_call
            else:
                layer.quantized_call = call
            layer.activation = activation


class Probe:
    """Saturation and underflow of every float8 tensor on one fixed batch, and the same
    tensors' what-if statistics under each of `recipes` (() for none).

        probe = Probe(model, x_val[:32], y_val[:32])
        stats, by_recipe = probe.measure()
        # stats:     [layers, roles, (saturation, underflow)], fractions in [0, 1]
        # by_recipe: [layers, roles, recipes, (underflow_pct, saturation_pct, snr_db)]
        #            each tensor blocked for its first GEMM (recipes.ROLE_GEMMS)
        probe.second_gemm  # by_recipe for the other GEMM of each tensor, same measure
        probe.block_records(step)  # blocks=True: block recipes' block scales, both GEMMs
        stats = probe()  # stats alone

    Call it between training steps (in a callback, after `self.model` synced the state).
    loss: (y, outputs) -> the loss, per sample or scalar, whose gradients the probe measures;
    None: binary cross-entropy, the engine's classifier (y as given is then a column).
    """

    def __init__(self, model, x, y, recipes=recipes_lib.RECIPES, loss=None, blocks=False):
        self.model = model
        self.layers = fp8.float8_layers(model)
        self.x = np.asarray(x)
        self.loss = loss
        self.y = np.asarray(y, np.float32).reshape(len(self.x), -1) if loss is None else y
        self.recipes = tuple(recipes)
        for recipe in self.recipes:
            recipes_lib.recipe_format(recipe, ROLES[0])  # refuses an unknown recipe now
        # The block recipes among them, whose block scales each measure computes when asked
        # (blocks=True): it doubles the probe's compilation.
        self.block_recipes = tuple(
            r for r in self.recipes if blocks and r in block_scales.BLOCK_RECIPES
        )
        self.blocks = ()  # of the latest measure: see block_records
        self._compiled = None
        self.mean_square = np.zeros((len(self.layers), len(ROLES)), np.float32)  # [layers, roles]
        # by_recipe of the latest measure with each tensor blocked for the other GEMM that uses
        # it (second_gemm_layout): [layers, roles, recipes, 3].
        self.second_gemm = np.zeros(
            (len(self.layers), len(ROLES), len(self.recipes), len(RECIPE_STATISTICS)), np.float32
        )

    def _scale_positions(self):
        """Where each layer's scale variables sit in the model's variable lists."""
        trainable = {id(v): i for i, v in enumerate(self.model.trainable_variables)}
        non_trainable = {id(v): i for i, v in enumerate(self.model.non_trainable_variables)}
        positions = []
        for layer in self.layers:
            row = []
            for role in ROLES:
                variable = getattr(layer, f"{role}_scale")
                row.append(
                    (True, trainable[id(variable)])
                    if id(variable) in trainable
                    else (False, non_trainable[id(variable)])
                )
            positions.append(row)
        return positions

    def _build(self):
        import jax  # lazy: jax loads in ~3 s
        import jax.numpy as jnp
        import keras  # lazy: keras loads JAX (seconds)

        model, layers, recipes = self.model, self.layers, self.recipes
        loss_of = self.loss or keras.losses.binary_crossentropy
        positions = self._scale_positions()
        layouts = [contraction_layout(layer) for layer in layers]

        def loss(taps, trainable, non_trainable, x, y):
            captured = {}
            with _tapped(layers, captured, taps):
                outputs, _ = model.stateless_call(trainable, non_trainable, x, training=False)
            value = jnp.mean(loss_of(y, outputs))
            return value, captured

        def probe(trainable, non_trainable, x, y):
            shapes = jax.eval_shape(lambda: loss(None, trainable, non_trainable, x, y)[1])
            taps = [
                jnp.zeros(shapes[f"z{i}"].shape, shapes[f"z{i}"].dtype) for i in range(len(layers))
            ]
            grads, captured = jax.grad(loss, has_aux=True)(taps, trainable, non_trainable, x, y)
            tensors = {
                "inputs": [captured[f"inputs{i}"] for i in range(len(layers))],
                "kernel": [captured[f"kernel{i}"] for i in range(len(layers))],
                "outputs_grad": grads,
            }

            def scale(i, j):  # the scale layer i applies to role j
                is_trainable, k = positions[i][j]
                return (trainable if is_trainable else non_trainable)[k]

            stats = jnp.stack(
                [
                    jnp.stack(
                        [
                            jnp.stack(tensor_stats(tensors[role][i], scale(i, j), role))
                            for j, role in enumerate(ROLES)
                        ]
                    )
                    for i in range(len(layers))
                ]
            )
            # Mean square per tensor: with the SNR it gives the quantization MSE (fallback.py).
            mean_square = jnp.stack(
                [
                    jnp.stack(
                        [
                            jnp.mean(jnp.square(tensors[role][i].astype(jnp.float32)))
                            for role in ROLES
                        ]
                    )
                    for i in range(len(layers))
                ]
            )
            if not recipes:
                empty = jnp.zeros((len(layers), len(ROLES), 0, len(RECIPE_STATISTICS)))
                return stats, empty, mean_square, empty, ()

            def table(layouts):  # [layers, roles, recipes, 3], each tensor blocked as laid out
                by_role = []
                for j, role in enumerate(ROLES):
                    matrices = [
                        blocked_matrix(jnp.asarray(t, jnp.float32), *layouts[i][role])
                        for i, t in enumerate(tensors[role])
                    ]
                    scales = [scale(i, j) for i in range(len(layers))]
                    by_role.append(recipe_table(matrices, scales, role, recipes))
                return jnp.stack(by_role, axis=1)

            second = [
                second_gemm_layout(layer, tensors["inputs"][i].ndim)
                for i, layer in enumerate(layers)
            ]
            blocks = self._block_tables(tensors, (layouts, second))
            return stats, table(layouts), mean_square, table(second), blocks

        return jax.jit(probe)

    def _block_tables(self, tensors, layouts_per_gemm) -> tuple:
        """Traced inside the probe: for each tensor's first GEMM and its second, (stats,
        worst, histogram) shaped [layers, roles, block recipes, ...] (probe.block_table)."""
        import jax.numpy as jnp  # lazy: jax loads in ~3 s

        if not self.block_recipes:
            return ()
        gemms = []
        for layouts in layouts_per_gemm:
            by_role = [
                block_table(
                    [
                        blocked_matrix(jnp.asarray(t, jnp.float32), *layouts[i][role])
                        for i, t in enumerate(tensors[role])
                    ],
                    role,
                    self.block_recipes,
                )
                for role in ROLES
            ]
            gemms.append(tuple(jnp.stack(parts, axis=1) for parts in zip(*by_role)))
        return tuple(gemms)

    def block_records(self, step: int) -> list[dict]:
        """The latest measure's block scales as the store's rows (block_scales.block_records):
        every float8 tensor in both GEMMs that use it, under each of `block_recipes`."""
        names = [layer.path for layer in self.layers]
        return block_scales.block_records(step, names, self.block_recipes, self.blocks)

    def measure(self) -> tuple[np.ndarray, np.ndarray]:
        """(stats, by_recipe) of the model's current weights and scales, in one dispatch."""
        if not self.layers:
            return (
                np.zeros((0, len(ROLES), len(STATISTICS)), np.float32),
                np.zeros((0, len(ROLES), len(self.recipes), len(RECIPE_STATISTICS)), np.float32),
            )
        if self._compiled is None:
            self._compiled = self._build()
        trainable = [v.value for v in self.model.trainable_variables]
        non_trainable = [v.value for v in self.model.non_trainable_variables]
        stats, by_recipe, mean_square, second, blocks = self._compiled(
            trainable, non_trainable, self.x, self.y
        )
        self.blocks = tuple(tuple(np.asarray(part) for part in gemm) for gemm in blocks)
        self.mean_square = np.asarray(mean_square, np.float32)
        self.second_gemm = np.asarray(second, np.float32)
        return np.asarray(stats, np.float32), np.asarray(by_recipe, np.float32)

    def __call__(self) -> np.ndarray:
        return self.measure()[0]


# -- recipe statistics as rows and words ----------------------------------------------------

NOTABLE_PCT = 0.01  # % of a tensor's values below which the summary calls a loss negligible
ROLE_PHRASES = {  # "the output gradients of `query` lose 9 % of their values"
    "inputs": ("the inputs of", "lose", "their"),
    "kernel": ("the kernel of", "loses", "its"),
    "outputs_grad": ("the output gradients of", "lose", "their"),
}


def recipe_records(
    steps, recipes, stats, layer_names, all_probes: bool = False, second=None
) -> list[dict]:
    """One dict per probe (the latest only, unless `all_probes`), float8 tensor, GEMM that
    uses it (recipes.ROLE_GEMMS) and recipe: layer, role, gemm, recipe, step, underflow_pct,
    saturation_pct, snr_db.

    stats: [probes, layers, roles, recipes, 3] as Store.fp8_recipes returns it, each tensor
    blocked for its first GEMM; second: the same for its other GEMM (Probe.second_gemm), or
    None where that was not recorded: a per-tensor recipe then repeats the first GEMM's row
    (it quantizes a tensor the same in both), the others have no row for the second GEMM.
    A value that is not finite becomes None (snr_db is +inf where quantization is exact), so
    the rows are valid JSON.
    """
    stats = np.asarray(stats, np.float32)
    second = None if second is None else np.asarray(second, np.float32)
    picked = range(len(steps)) if all_probes else range(len(steps))[-1:]
    rows = []
    for p in picked:
        for i, layer in enumerate(layer_names):
            for j, role in enumerate(ROLES):
                for g, gemm in enumerate(recipes_lib.ROLE_GEMMS[role]):
                    for k, recipe in enumerate(recipes):
                        source = stats if g == 0 else second
                        if source is None and recipe in recipes_lib.PER_TENSOR:
                            source = stats
                        if source is None:
                            continue
                        values = source[p, i, j, k]
                        rows.append(
                            {
                                "layer": layer,
                                "role": role,
                                "gemm": gemm,
                                "recipe": recipe,
                                "step": int(steps[p]),
                                **{n: _finite(values[m]) for m, n in enumerate(RECIPE_STATISTICS)},
                            }
                        )
    return rows


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _percent(value: float) -> str:
    if value == 0:
        return "none"
    if value < NOTABLE_PCT:
        return f"under {NOTABLE_PCT} %"
    return f"{value:.2g} %" if value < 10 else f"{value:.0f} %"


def snr_words(value) -> str:
    """An SNR for people: "25.5 dB", "exact" (+inf), "-" (not measured)."""
    if np.isnan(value) or value == -np.inf:
        return "-"
    return "exact" if value == np.inf else f"{value:.1f} dB"


def recipe_summary(recipes, latest, layer_names) -> list[str]:
    """Plain-words sentences about one probe's recipe statistics (latest: [layers, roles,
    recipes, 3]): for underflow and for saturation, the tensor delayed scaling loses most
    values of and the recipe that loses fewest of them; then each recipe's median SNR."""
    latest = np.asarray(latest, np.float32)
    recipes = list(recipes)
    if not recipes or latest.size == 0:
        return []
    base = "delayed" if "delayed" in recipes else recipes[0]
    b = recipes.index(base)
    snr = np.nan_to_num(latest[..., 2], nan=-np.inf)  # [layers, roles, recipes]
    sentences, quiet = [], []
    for n, loss in enumerate(("underflow", "saturation")):
        values = np.nan_to_num(latest[..., n], nan=0.0)
        i, j = np.unravel_index(np.argmax(values[:, :, b]), values.shape[:2])
        worst = float(values[i, j, b])
        if worst < NOTABLE_PCT:
            quiet.append(loss)
            continue
        what, verb, their = ROLE_PHRASES[ROLES[j]]
        name = layer_names[i].rsplit("/", 1)[-1]
        sentence = f"{what} `{name}` {verb} {_percent(worst)} of {their} values to {loss}"
        sentence = sentence[0].upper() + sentence[1:] + f" under {base} scaling"
        others = [k for k in range(len(recipes)) if k != b]
        if others:  # the fewest lost; of equals, the best SNR
            best = min(others, key=lambda k: (values[i, j, k], -snr[i, j, k]))
            sentence += f"; `{recipes[best]}` loses {_percent(float(values[i, j, best]))}"
        sentences.append(sentence + ".")
    if quiet:
        sentences.insert(
            0,
            f"Under {base} scaling no tensor loses {NOTABLE_PCT} % of its values or more "
            f"to {' or '.join(quiet)}.",
        )
    median = np.median(snr, axis=(0, 1))
    ranked = sorted(range(len(recipes)), key=lambda k: -median[k])
    listed = ", ".join(f"`{recipes[k]}` {snr_words(median[k])}" for k in ranked)
    tensors = latest.shape[0] * latest.shape[1]
    sentences.append(f"Median SNR over the {tensors} tensors, best first: {listed}.")
    return sentences
