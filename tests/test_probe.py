"""probe.py: saturation and underflow of float8 tensors, on known values and on a model."""

import numpy as np

from fp8demo import fp8
from fp8demo import model as model_lib
from fp8demo import probe as probe_lib
from fp8demo.config import TrainConfig
from fp8demo.fp8 import ROLES
from fp8demo.store import Store

SMALL = TrainConfig(vocab_size=300, seq_len=16, hidden_dim=8, intermediate_dim=8)


def test_saturation_counts_values_beyond_fmax_times_scale():
    scale = 0.5  # E4M3 represents up to 448 × 0.5 = 224; up to 224 × 17/16 = 238 rounds to it
    values = np.concatenate(
        [np.full(88, 100.0), np.full(2, 230.0), np.full(7, 300.0), np.full(3, -240.0)]
    )
    saturation, underflow = probe_lib.tensor_stats(values, scale, "inputs")
    np.testing.assert_allclose(saturation, 0.10)
    assert float(underflow) == 0.0
    # E5M2 gradients go up to 57344 × scale: none of these clip.
    assert float(probe_lib.tensor_stats(values, scale, "outputs_grad")[0]) == 0.0


def test_underflow_counts_nonzero_values_that_quantize_to_zero():
    # E4M3's smallest subnormal is 2^-9: values below half of it × scale round to zero.
    scale = 4.0
    tiny, kept = 2.0**-11 * scale, 2.0**-9 * scale
    values = np.array([tiny] * 3 + [-tiny] + [kept] * 4 + [0.0] * 12, np.float32)
    saturation, underflow = probe_lib.tensor_stats(values, scale, "kernel")
    np.testing.assert_allclose(underflow, 4 / 8)  # exact zeros are not counted
    assert float(saturation) == 0.0
    # E5M2 reaches down to 2^-16 × scale: the same values survive as gradients.
    assert float(probe_lib.tensor_stats(values, scale, "outputs_grad")[1]) == 0.0
    assert float(probe_lib.tensor_stats(np.zeros(5), 1.0, "inputs")[1]) == 0.0


def test_probe_reads_each_layer_and_role_under_its_own_scale():
    model = model_lib.compile(model_lib.build(SMALL, "fp8"), SMALL)
    rng = np.random.default_rng(0)
    x = rng.integers(2, SMALL.vocab_size, size=(32, SMALL.seq_len), dtype=np.int32)
    y = rng.integers(0, 2, size=(32, 1)).astype(np.float32)
    layers = fp8.float8_layers(model)
    for layer in layers:  # reasonable scales everywhere: nothing clips, little underflows
        layer.inputs_scale.assign(8.0 / 448)
        layer.kernel_scale.assign(1.0 / 448)
        layer.outputs_grad_scale.assign(1.0 / 57344)
    query, classifier = layers[0], layers[-1]
    probe = probe_lib.Probe(model, x, y)
    baseline = probe()
    query.inputs_scale.assign(1e-6)  # inputs × 448e-6: almost every input clips
    query.kernel_scale.assign(1e6)  # every kernel value flushes to zero
    before = [np.array(v.value) for v in model.variables]

    stats = probe()

    assert stats.shape == (len(layers), len(ROLES), 2)
    assert stats[0, 0, 0] > 0.9 and stats[0, 1, 1] == 1.0
    others = np.ones_like(stats, bool)
    others[0, 0, 0] = others[0, 1, 1] = False
    assert stats[others].max() < 0.05
    # The loss gradient clips at the head; what flows back is so small that it underflows.
    query.inputs_scale.assign(8.0 / 448)
    query.kernel_scale.assign(1.0 / 448)
    classifier.outputs_grad_scale.assign(1e-12)
    stats = probe()
    assert stats[-1, 2, 0] == 1.0 and stats[:-1, :, 0].max() == 0.0
    assert (stats[:-1, 2, 1] >= baseline[:-1, 2, 1]).all()
    assert stats[:-1, 2, 1].mean() > baseline[:-1, 2, 1].mean() + 0.3
    # Probing reads the model; it changes no variable (amax histories included).
    for old, variable in zip(before, model.variables):
        if variable.path.endswith("scale"):
            continue  # set by this test after `before`
        np.testing.assert_array_equal(old, np.array(variable.value))
    assert probe_lib.Probe(model_lib.build(SMALL, "bf16"), x, y)().shape == (0, 3, 2)


def test_training_records_probes_for_the_fp8_run(trained):
    store = Store(trained["home"])
    fp8_run = store.run(trained["run_ids"]["fp8"])
    steps, stats = store.fp8_probe(fp8_run["id"])
    every = trained["config"].probe_every
    assert list(steps) == list(range(0, fp8_run["step"] + 1, every))
    assert stats.shape == (len(steps), len(fp8_run["summary"]["fp8_layers"]), 3, 2)
    assert ((stats >= 0) & (stats <= 1)).all()
    # Before the first step every scale is 1.0: gradients (around 1e-3 and below) lose
    # many values to underflow; once scaled, far fewer.
    assert stats[0, :, 2, 1].max() > 0.5
    assert stats[-1, :, 2, 1].max() < stats[0, :, 2, 1].max()
    assert len(store.fp8_probe(trained["run_ids"]["bf16"])[0]) == 0
    rows = fp8.health_summary(
        store.fp8_amax(fp8_run["id"])[1],
        [layer["name"] for layer in fp8_run["summary"]["fp8_layers"]],
        fp8_run["config"].amax_history_length,
        steps,
        stats,
    )
    assert {"saturation %", "underflow %", "peak saturation %"} <= set(rows[0])
    np.testing.assert_allclose(rows[0]["underflow %"], stats[-1, 0, 0, 1] * 100, rtol=1e-6)
