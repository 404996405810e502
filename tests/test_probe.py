"""probe.py: saturation and underflow of float8 tensors, on known values and on a model."""

import json

import jax
import numpy as np
import pytest

from fp8demo import fp8, recipes, records
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


def test_saturation_and_overflows_count_beyond_half_the_top_step():
    """The half-step rule: E4M3 clips beyond (448 + 16) x scale, E5M2 beyond (57344 + 4096) x
    scale, in the probe's saturation and in FP8 health's overflow counts alike."""
    values = np.array([470.0, 460.0, 100.0, -466.0])
    np.testing.assert_allclose(probe_lib.tensor_stats(values, 1.0, "inputs")[0], 0.5)
    gradients = np.array([62000.0, 61000.0, 5.0, 1.0])
    np.testing.assert_allclose(probe_lib.tensor_stats(gradients, 1.0, "outputs_grad")[0], 0.25)
    # Health: amax 448 / 448 / 57344 for four steps (scale 1 from step 2 on), then one step
    # with amaxes just beyond half the top step, and one just within it.
    amax = np.tile(np.array([448.0, 448.0, 57344.0], np.float32), (6, 1, 1))
    amax[4, 0] = [470.0, 465.0, 62000.0]
    amax[5, 0] = [463.0, 460.0, 61000.0]
    overflow = fp8.health(amax)["overflow"]
    assert overflow[4, 0].tolist() == [True, True, True]
    assert not overflow[5].any() and not overflow[:4].any()


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
    # No nonzero value at all: no share of them, NaN (health reads the tensor as dead).
    saturation, underflow = probe_lib.tensor_stats(np.zeros(5), 1.0, "inputs")
    assert float(saturation) == 0.0 and np.isnan(float(underflow))


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
    # query outputs 0: scores q·k no longer depend on `key`, whose output gradient is all zero.
    assert np.argwhere(np.isnan(stats)).tolist() == [[1, 2, 1]]
    assert np.nan_to_num(stats[others]).max() < 0.05
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
    underflow = np.nan_to_num(stats[..., 1], nan=0.0)  # NaN: an all-zero tensor
    assert ((stats[..., 0] >= 0) & (stats[..., 0] <= 1)).all()
    assert ((underflow >= 0) & (underflow <= 1)).all()
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


# -- dead tensors: no nonzero value at all ---------------------------------------------------


def test_gradients_that_die_are_flagged_from_the_first_all_zero_probe(tmp_path):
    model = model_lib.compile(model_lib.build(SMALL, "fp8"), SMALL)
    rng = np.random.default_rng(0)
    x = rng.integers(2, SMALL.vocab_size, size=(32, SMALL.seq_len), dtype=np.int32)
    y = rng.integers(0, 2, size=(32, 1)).astype(np.float32)
    layers = fp8.float8_layers(model)
    names = [layer.path for layer in layers]
    for layer in layers:  # scales that fit: nothing but a dead tensor stands out
        layer.inputs_scale.assign(8.0 / 448)
        layer.kernel_scale.assign(1.0 / 448)
        layer.outputs_grad_scale.assign(1.0 / 57344)
    probe = probe_lib.Probe(model, x, y, recipes=())
    alive = probe()
    # The ReLU `dense` layer before the head dies, as in a stalled run: every unit off for
    # every review, so nothing reaches the head and no gradient flows back behind it.
    dense = layers[names.index("dense")]
    bias = np.array(dense.bias.value)
    dense.bias.assign(np.full_like(bias, -1e4))
    dead = probe()
    dense.bias.assign(bias)
    assert not np.isnan(alive).any()
    assert np.isnan(dead[:-1, 2, 1]).all() and np.isnan(dead[-1, 0, 1])
    assert np.isfinite(dead[-1, 2, 1])  # the loss gradient still reaches the head
    store = Store(tmp_path)

    def health(probes):
        """health_summary rows of a run whose probe rows the recorder wrote as `probes`."""
        _, (run_id,) = store.create_comparison(TrainConfig(precisions=("fp8",)))
        store.merge_summary(run_id, fp8_layers=fp8.describe_layers(model))
        steps = max(probes[-1][0], 1)  # training amaxes alive throughout, as with dropout
        store.add_fp8_amax(run_id, 1, np.ones((steps, len(layers), 3), np.float32))
        store.add_fp8_probe(run_id, probes)
        amax_steps, amax = store.fp8_amax(run_id)
        probe_steps, probe_stats = store.fp8_probe(run_id)
        rows = fp8.health_summary(
            amax, names, 1024, probe_steps, probe_stats, amax_steps=amax_steps
        )
        json.dumps(rows, allow_nan=False)  # valid JSON: an all-zero tensor underflows 0 %
        return run_id, rows

    run_id, rows = health([(0, alive), (25, alive), (50, dead), (75, dead)])
    flagged = {(r["layer"], r["role"]): r["dead since"] for r in rows if r["dead since"]}
    expected = {(name, "outputs_grad"): 50 for name in names[:-1]} | {(names[-1], "inputs"): 50}
    assert flagged == expected
    assert all(r["at risk"] for r in rows if r["dead since"])
    assert fp8.dead_summary(rows) == [
        "The output gradients of 7 of 8 float8 layers are all zero since step 50: "
        "those layers no longer learn.",
        "The inputs of `classifier` (1 of 8 float8 layers) are all zero since step 50: "
        "that layer passes on its bias alone and its kernel no longer learns.",
    ]
    record = records.health_record(store, store.run(run_id))
    assert {(t["layer"], t["role"]): t["since"] for t in record["dead_tensors"]} == expected
    assert record["dead_summary"] == fp8.dead_summary(rows)
    # A healthy run, a fresh run's all-zero probe at step 0 (scale 1.0) alone or followed
    # by live ones, and a layer alive again at the latest probe: none is dead.
    for probes in (
        [(0, alive), (25, alive), (50, alive)],
        [(0, dead)],
        [(0, dead), (25, alive), (50, alive)],
        [(0, alive), (25, dead), (50, alive)],
    ):
        _, rows = health(probes)
        assert [r for r in rows if r["dead since"] is not None] == [], probes
        assert fp8.dead_summary(rows) == []


# -- what-if statistics under every scaling recipe ------------------------------------------


def test_blocks_run_along_the_contracted_axes_of_each_layer():
    layers = {
        layer.path.rsplit("/", 1)[-1]: layer
        for layer in fp8.float8_layers(model_lib.build(SMALL, "fp8"))
    }
    query = probe_lib.contraction_layout(layers["query"])  # abc,cde->abde
    assert query == {
        "inputs": ("abc", "c", False),
        "kernel": ("cde", "c", True),
        "outputs_grad": ("abde", "de", False),
    }
    output = probe_lib.contraction_layout(layers["attention_output"])  # abcd,cde->abe
    assert output["inputs"][1] == output["kernel"][1] == "cd" and output["outputs_grad"][1] == "e"
    assert probe_lib.contraction_layout(layers["classifier"])["kernel"] == ("ab", "a", True)
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    # Inputs of attention_output: heads x head_dim is K, flattened in that order.
    np.testing.assert_array_equal(probe_lib.blocked_matrix(x, *output["inputs"]), x.reshape(6, 20))
    # A contracted axis that is not trailing is moved last: "bca,cd->bad" contracts c.
    moved = probe_lib.blocked_matrix(x[0], "bca", "c", False)
    np.testing.assert_array_equal(moved, x[0].transpose(0, 2, 1).reshape(15, 4))
    kernel = x[0, 0]  # (K, N) = (4, 5): K leads
    np.testing.assert_array_equal(probe_lib.blocked_matrix(kernel, "ab", "a", True), kernel)


@pytest.mark.parametrize("role", ROLES)
def test_recipe_table_gives_each_tensors_own_statistics_in_order(role):
    rng = np.random.default_rng(1)
    # Different shapes (partial blocks of every size), tiny and huge values, one inf; two
    # tensors of one shape (stacked together) around one of another.
    big = rng.normal(size=(70, 200)).astype(np.float32) * 10.0 ** rng.integers(-9, 3, (70, 1))
    small = rng.normal(size=(9, 45)).astype(np.float32) * 1e-4
    small[3, 7] = np.inf
    twin = rng.normal(size=(70, 200)).astype(np.float32) * 3e-3
    scales = [np.float32(0.002), np.float32(1e-6), np.float32(0.5)]
    table = np.asarray(
        jax.jit(lambda a, b, c: probe_lib.recipe_table([a, b, c], scales, role, recipes.RECIPES))(
            big, small, twin
        )
    )
    assert table.shape == (3, len(recipes.RECIPES), 3)
    for t, (x, scale) in enumerate(zip((big, small, twin), scales)):
        for k, recipe in enumerate(recipes.RECIPES):
            expected = recipes.what_if(x, recipe, role, scale)
            np.testing.assert_allclose(
                table[t, k],
                [float(expected[name]) for name in recipes.STATISTICS],
                rtol=1e-5,
                err_msg=f"{recipe}, tensor {t}",
            )
    assert table[:, :, 0].max() > 1  # the tiny values do underflow somewhere


def test_probe_measures_the_recipes_in_the_same_call():
    model = model_lib.compile(model_lib.build(SMALL, "fp8"), SMALL)
    rng = np.random.default_rng(0)
    x = rng.integers(2, SMALL.vocab_size, size=(16, SMALL.seq_len), dtype=np.int32)
    y = rng.integers(0, 2, size=(16, 1)).astype(np.float32)
    layers = fp8.float8_layers(model)
    for layer in layers:
        layer.inputs_scale.assign(8.0 / 448)
        layer.kernel_scale.assign(0.05 / 448)  # clips the larger kernel values
        layer.outputs_grad_scale.assign(1e-3 / 57344)
    probe = probe_lib.Probe(model, x, y)
    stats, by_recipe = probe.measure()
    assert by_recipe.shape == (len(layers), 3, len(recipes.RECIPES), 3)
    np.testing.assert_array_equal(stats, probe())
    # "delayed" is the probe's own saturation and underflow, in %.
    delayed = by_recipe[:, :, recipes.RECIPES.index("delayed")]
    np.testing.assert_allclose(delayed[..., 1], stats[..., 0] * 100, atol=1e-4)
    np.testing.assert_allclose(delayed[..., 0], stats[..., 1] * 100, atol=1e-4)
    assert delayed[:, 1, 1].max() > 1  # the kernels do clip
    # Kernels are at hand: each row matches what_if on the kernel as the layer computes with
    # it (cast to its compute dtype), blocked along K (two axes for attention_output).
    for i, layer in enumerate(layers):
        _, contracted, _ = probe_lib.contraction_layout(layer)["kernel"]
        kernel = np.asarray(jax.numpy.asarray(layer._kernel.value, layer.compute_dtype), np.float32)
        for k, recipe in enumerate(recipes.RECIPES):
            expected = recipes.what_if(kernel, recipe, "kernel", 0.05 / 448, len(contracted))
            expected = [float(expected[name]) for name in recipes.STATISTICS]
            np.testing.assert_allclose(
                by_recipe[i, 1, k], expected, rtol=1e-5, err_msg=f"{layer.path} {recipe}"
            )
    # The other GEMM of each tensor (inputs and output gradients in wgrad, along the tokens;
    # the kernel in dgrad, along N): the kernels match what_if with N where blocks run.
    second = probe.second_gemm
    assert second.shape == by_recipe.shape
    for i, layer in enumerate(layers):
        equation = getattr(layer, "equation", None)
        rank = len(equation.split(",")[0]) if equation else 2
        letters, along, _ = probe_lib.second_gemm_layout(layer, rank)["kernel"]
        order = [letters.index(c) for c in along]
        order += [a for a in range(len(letters)) if a not in order]
        kernel = np.asarray(jax.numpy.asarray(layer._kernel.value, layer.compute_dtype), np.float32)
        for k, recipe in enumerate(recipes.RECIPES):
            expected = recipes.what_if(
                kernel.transpose(order), recipe, "kernel", 0.05 / 448, len(along)
            )
            np.testing.assert_allclose(
                second[i, 1, k],
                [float(expected[name]) for name in recipes.STATISTICS],
                rtol=1e-5,
                err_msg=f"{layer.path} {recipe} dgrad",
            )
    # Per-tensor recipes quantize a tensor the same in both its GEMMs; blocks do not.
    for recipe in recipes.PER_TENSOR:
        k = recipes.RECIPES.index(recipe)
        np.testing.assert_allclose(second[:, :, k], by_recipe[:, :, k], rtol=1e-4, err_msg=recipe)
    # (Power-of-two scales round each value the same wherever its block runs unless it
    # underflows; NVFP4's E4M3 block scales do not.)
    nvfp4 = recipes.RECIPES.index("nvfp4")
    assert (second[:, 0, nvfp4, 2] != by_recipe[:, 0, nvfp4, 2]).all()  # inputs along M
    assert probe_lib.Probe(model, x, y, recipes=()).measure()[1].shape == (len(layers), 3, 0, 3)
    with pytest.raises(ValueError, match="unknown recipe 'fp16'"):
        probe_lib.Probe(model, x, y, recipes=("fp16",))


def test_training_records_recipe_statistics_at_every_probe(trained):
    store = Store(trained["home"])
    run = store.run(trained["run_ids"]["fp8"])
    layers = [layer["name"] for layer in run["summary"]["fp8_layers"]]
    steps, names, stats = store.fp8_recipes(run["id"])
    probe_steps, probe_stats = store.fp8_probe(run["id"])
    assert list(steps) == list(probe_steps) and names == recipes.RECIPES
    assert stats.shape == (len(steps), len(layers), 3, len(names), 3)
    assert ((stats[..., :2] >= 0) & (stats[..., :2] <= 100)).all()
    snr = stats[..., 2]
    # Rounding keeps signs and clipping shrinks: the error never exceeds the signal.
    assert not np.isnan(snr).any() and (snr >= 0).all()
    np.testing.assert_allclose(snr[stats[..., 0] == 100], 0, atol=1e-6)  # all lost: 0 dB
    # The run's own recipe agrees with the probe on the same tensors.
    delayed = stats[:, :, :, names.index("delayed")]
    underflow = np.nan_to_num(probe_stats[..., 1], nan=0.0)  # an all-zero tensor: 0 %
    np.testing.assert_allclose(delayed[..., 0], underflow * 100, atol=1e-4)
    np.testing.assert_allclose(delayed[..., 1], probe_stats[..., 0] * 100, atol=1e-4)
    # 8-bit recipes keep more signal than the 4-bit one on almost every tensor.
    mxfp8, nvfp4 = names.index("mxfp8"), names.index("nvfp4")
    assert np.mean(snr[-1, :, :, mxfp8] > snr[-1, :, :, nvfp4]) > 0.9
    assert len(store.fp8_recipes(trained["run_ids"]["bf16"])[0]) == 0

    latest = probe_lib.recipe_records(steps, names, stats, layers)
    every = probe_lib.recipe_records(steps, names, stats, layers, all_probes=True)
    # Each tensor under its first GEMM, and under its second for the per-tensor recipes.
    per_tensor = len(set(names) & set(recipes.PER_TENSOR))
    assert len(latest) == len(layers) * 3 * (len(names) + per_tensor)
    assert len(every) == len(steps) * len(latest)
    assert {r["step"] for r in latest} == {int(steps[-1])}
    summary = probe_lib.recipe_summary(names, stats[-1], layers)
    assert summary[-1].startswith(f"Median SNR over the {len(layers) * 3} tensors")


def test_recipe_records_list_each_tensor_under_both_gemms_that_use_it():
    steps, names, layers = [0, 10], ("delayed", "mxfp8"), ["dense"]
    first = np.arange(2 * 1 * 3 * 2 * 3, dtype=np.float32).reshape(2, 1, 3, 2, 3)
    second = first + 1000
    rows = probe_lib.recipe_records(steps, names, first, layers, second=second)
    assert [(r["role"], r["gemm"], r["recipe"]) for r in rows] == [
        (role, gemm, recipe)
        for role, gemms in recipes.ROLE_GEMMS.items()
        for gemm in gemms
        for recipe in names
    ]
    assert list(rows[0]) == [
        "layer", "role", "gemm", "recipe", "step", "underflow_pct", "saturation_pct", "snr_db"
    ]  # fmt: skip
    wgrad_inputs = [r for r in rows if r["role"] == "inputs" and r["gemm"] == "wgrad"]
    assert [r["underflow_pct"] for r in wgrad_inputs] == [
        second[1, 0, 0, 0, 0],
        second[1, 0, 0, 1, 0],
    ]
    assert {r["step"] for r in rows} == {10}
    # A run recorded without the second GEMM: per-tensor recipes repeat the first GEMM's
    # values there (the same quantization), block recipes have no row for it.
    rows = probe_lib.recipe_records(steps, names, first, layers, all_probes=True)
    assert len(rows) == 2 * 3 * (2 + 1)
    dgrad_kernel = [r for r in rows if r["role"] == "kernel" and r["gemm"] == "dgrad"]
    assert [(r["recipe"], r["step"]) for r in dgrad_kernel] == [("delayed", 0), ("delayed", 10)]
    assert dgrad_kernel[1]["snr_db"] == first[1, 0, 1, 0, 2]


def test_recipe_summary_names_the_worst_tensor_in_plain_words():
    names = ("delayed", "current", "mxfp8")
    latest = np.zeros((2, 3, 3, 3), np.float32)
    latest[..., 2] = 30.0
    latest[1, 2, :, 0] = [9.2, 4.0, 0.1]  # output gradients of `query`: underflow
    latest[0, 1, 0, 2] = np.inf  # an exact kernel
    summary = probe_lib.recipe_summary(names, latest, ["x/dense", "x/query"])
    assert (
        summary[0]
        == "Under delayed scaling no tensor loses 0.01 % of its values or more to saturation."
    )
    assert summary[1] == (
        "The output gradients of `query` lose 9.2 % of their values to underflow under "
        "delayed scaling; `mxfp8` loses 0.1 %."
    )
    assert summary[2] == (
        "Median SNR over the 6 tensors, best first: `delayed` 30.0 dB, `current` 30.0 dB, "
        "`mxfp8` 30.0 dB."
    )


def test_the_recipe_tables_memory_follows_its_tensors_not_layers_times_the_widest():
    """One wide tensor (a language model's vocabulary-wide head) among many narrow ones:
    the compiled table's scratch memory stays near that of the wide tensor alone, not the
    number of tensors times the widest (padding every tensor to it had taken tens of GB)."""

    def scratch_bytes(narrow: int) -> int:
        wide = jax.ShapeDtypeStruct((2048, 4096), np.float32)
        shapes = [jax.ShapeDtypeStruct((2048, 64), np.float32)] * narrow + [wide]
        scales = [np.float32(1.0)] * len(shapes)
        table = jax.jit(lambda *m: probe_lib.recipe_table(m, scales, "inputs", ("mxfp8",)))
        return table.lower(*shapes).compile().memory_analysis().temp_size_in_bytes

    one, many = scratch_bytes(1), scratch_bytes(12)
    assert many < 1.5 * one, (one, many)
