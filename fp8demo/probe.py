"""Saturation and underflow of the actual float8 tensor values, probed on a fixed batch.

The amax history tells how large each tensor's largest value was; it cannot tell how many
values were clipped or flushed to zero. Every N training steps the recorder runs the model
in inference mode (no dropout) on a fixed validation batch of the training batch size
(gradient magnitudes depend on it) and counts, per float8 layer and role, under the scales
the next training step will use:

    saturation  share of the values clipped to ±fmax by more than rounding would move them
                (beyond fmax × scale × (1 + half the top step); see fp8.ROUNDING_TOLERANCE)
    underflow   share of the nonzero values that quantize to zero

for the layer inputs and kernels (E4M3) and the output gradients (E5M2). The output
gradient is taken where Keras quantizes it: at the matmul's output (the gradient there
equals the gradient after the bias, before the activation), flowing back through the
other layers' float8 backward passes as in training. These are the statistics Transformer
Engine's FP8 debug tools log for PyTorch; one compiled function computes them all.
"""

import contextlib

import numpy as np

from fp8demo import fp8
from fp8demo.fp8 import ROLES

STATISTICS = ("saturation", "underflow")


def tensor_stats(values, scale, role):
    """(saturation, underflow) fractions of `values` quantize-dequantized with `scale`.

    Quantization is Keras': x / scale, clipped to ±fmax, cast to E4M3 (inputs, kernel) or
    E5M2 (output gradients). Works on numpy arrays and inside jax.jit.
    """
    import jax.numpy as jnp

    fmax = fp8.FORMAT_MAX[role]
    float8 = {"E4M3": jnp.float8_e4m3fn, "E5M2": jnp.float8_e5m2}[fp8.FORMATS[role]]
    x = jnp.asarray(values, jnp.float32)
    scaled = x / jnp.asarray(scale, jnp.float32)
    # Clipping within half a step of the top value costs no more than rounding does.
    saturation = jnp.mean(jnp.abs(scaled) > fmax * (1 + fp8.ROUNDING_TOLERANCE[role]))
    quantized = jnp.clip(scaled, -fmax, fmax).astype(float8).astype(jnp.float32)
    nonzero = x != 0
    flushed = jnp.sum(nonzero & (quantized == 0))
    underflow = flushed / jnp.maximum(jnp.sum(nonzero), 1)
    return saturation, underflow


@contextlib.contextmanager
def _tapped(layers, captured, taps):
    """Record each float8 layer's inputs and kernel; add taps[i] before its activation.

    Patches instance attributes only, restored on exit (tracing happens inside).
    """
    saved = []
    for i, layer in enumerate(layers):
        saved.append((layer, layer.__dict__.get("quantized_call"), layer.activation))

        def quantized_call(inputs, *args, _layer=layer, _i=i, _call=layer.quantized_call, **kwargs):
            from keras import ops

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
    """Saturation and underflow of every float8 tensor on one fixed batch.

        probe = Probe(model, x_val[:32], y_val[:32])
        stats = probe()  # [layers, roles, (saturation, underflow)], fractions in [0, 1]

    Call it between training steps (in a callback, after `self.model` synced the state).
    """

    def __init__(self, model, x, y):
        self.model = model
        self.layers = fp8.float8_layers(model)
        self.x = np.asarray(x)
        self.y = np.asarray(y, np.float32).reshape(len(self.x), -1)
        self._compiled = None

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
        import jax
        import jax.numpy as jnp
        import keras

        model, layers = self.model, self.layers
        positions = self._scale_positions()

        def loss(taps, trainable, non_trainable, x, y):
            captured = {}
            with _tapped(layers, captured, taps):
                outputs, _ = model.stateless_call(trainable, non_trainable, x, training=False)
            value = jnp.mean(keras.losses.binary_crossentropy(y, outputs))
            return value, captured

        def probe(trainable, non_trainable, x, y):
            shapes = jax.eval_shape(lambda: loss(None, trainable, non_trainable, x, y)[1])
            taps = [
                jnp.zeros(shapes[f"z{i}"].shape, shapes[f"z{i}"].dtype) for i in range(len(layers))
            ]
            grads, captured = jax.grad(loss, has_aux=True)(taps, trainable, non_trainable, x, y)
            rows = []
            for i in range(len(layers)):
                tensors = {
                    "inputs": captured[f"inputs{i}"],
                    "kernel": captured[f"kernel{i}"],
                    "outputs_grad": grads[i],
                }
                row = []
                for j, role in enumerate(ROLES):
                    is_trainable, k = positions[i][j]
                    scale = (trainable if is_trainable else non_trainable)[k]
                    row.append(jnp.stack(tensor_stats(tensors[role], scale, role)))
                rows.append(jnp.stack(row))
            return jnp.stack(rows)

        return jax.jit(probe)

    def __call__(self) -> np.ndarray:
        if not self.layers:
            return np.zeros((0, len(ROLES), len(STATISTICS)), np.float32)
        if self._compiled is None:
            self._compiled = self._build()
        trainable = [v.value for v in self.model.trainable_variables]
        non_trainable = [v.value for v in self.model.non_trainable_variables]
        return np.asarray(self._compiled(trainable, non_trainable, self.x, self.y), np.float32)
