"""fp8.py on a freshly quantized model: layer discovery, history order, summaries."""

import numpy as np

from fp8demo import fp8
from fp8demo import model as model_lib
from fp8demo.config import TrainConfig
from fp8demo.store import Store

SMALL = TrainConfig(vocab_size=300, seq_len=16, hidden_dim=8, intermediate_dim=8)


def test_float8_layers_and_policies():
    model = model_lib.build(SMALL, "fp8")
    names = [layer["name"] for layer in fp8.describe_layers(model)]
    assert len(names) == 8 and names[-1] == "classifier"
    assert fp8.float8_layers(model_lib.build(SMALL, "bf16")) == []
    headless = model_lib.build(TrainConfig(**{**SMALL.to_dict(), "quantize_head": False}), "fp8")
    assert "classifier" not in [layer.path for layer in fp8.float8_layers(headless)]


def test_history_is_read_oldest_to_newest():
    model = model_lib.build(SMALL, "fp8")
    layer = fp8.float8_layers(model)[0]
    # Keras' update: roll left, newest amax written at index 0.
    history = np.zeros(1024, np.float32)
    for amax in (1.0, 2.0, 3.0):
        history = np.roll(history, -1)
        history[0] = amax
    layer.inputs_amax_history.assign(history)
    histories, scales = fp8.read_state([layer])
    assert list(histories[0, 0, -3:]) == [1.0, 2.0, 3.0]
    assert (histories[0, 0, :-3] == 0).all()
    np.testing.assert_array_equal(fp8.newest_amax(histories, 2)[:, 0, 0], [2.0, 3.0])
    assert scales.shape == (1, 3) and (scales == 1.0).all()
    summary = fp8.variables_summary([layer])[layer.path]["inputs"]
    assert summary["history_head"][:3] == [3.0, 2.0, 1.0] and summary["amax_nonzero"] == 3


def test_model_summary_marks_float8_layers():
    rows = model_lib.summarize(TrainConfig(), "fp8")
    by_name = {r["name"]: r for r in rows}
    assert by_name["embedding"]["float8"] is False
    assert by_name["decoder/self_attention/query"]["float8"] is True
    assert sum(r["float8"] for r in rows) == 8
    # The example model: 20,000 × 32 token embedding + 200 × 32 positions, ...
    assert by_name["embedding"]["params"] == 20000 * 32 + 200 * 32
    assert model_lib.count_params(model_lib.build(TrainConfig(), "bf16")) == model_lib.count_params(
        model_lib.build(TrainConfig(), "fp8")
    )


def test_trailing_max_matches_a_plain_loop():
    rng = np.random.default_rng(0)
    values = rng.random((300, 2, 3)).astype(np.float32)
    for window in (1, 2, 5, 64, 100, 1024):
        expected = np.stack(
            [values[max(0, i - window + 1) : i + 1].max(axis=0) for i in range(300)]
        )
        np.testing.assert_array_equal(fp8.trailing_max(values, window), expected)


def test_health_finds_overflow_of_the_delayed_scale():
    # One layer, three roles; amax steady at 1.0, then a spike of 4.0 at step index 5.
    amax = np.ones((8, 1, 3), np.float32)
    amax[5] = 4.0
    result = fp8.health(amax, history_length=4)
    scales = result["scales"][:, 0, 0]
    # Steps 0 and 1 use the initial scale 1.0; later steps use max(amax up to t-2) / 448.
    assert list(scales[:2]) == [1.0, 1.0]
    np.testing.assert_allclose(scales[2:7], 1.0 / 448)
    np.testing.assert_allclose(scales[7], 4.0 / 448)  # the spike reaches the scale two steps later
    overflow = result["overflow"][:, 0, 0]
    assert list(np.flatnonzero(overflow)) == [5]  # the spike exceeded 448 × (1/448)
    assert result["overflow_count"][0, 0] == 1
    np.testing.assert_allclose(result["headroom"][5, 0, 0], np.log2(1.0 / 4.0))
    np.testing.assert_allclose(result["headroom"][6, 0, 0], 0.0, atol=1e-6)
    # Gradients use E5M2: the same spike is judged against 57344 × scale.
    np.testing.assert_allclose(result["representable"][7, 0, 2], 4.0)


def test_replaying_other_history_lengths():
    # One layer: a spike of 8 at step 10, else 1.0. A long window keeps the spike's scale
    # (headroom log2(8) = 3 afterwards); a window of 1 follows the tensor (headroom 0).
    amax = np.ones((40, 1, 3), np.float32)
    amax[10] = 8.0
    rows = {
        (r["history length"], r["role"]): r
        for r in fp8.history_length_effect(amax, lengths=(1, 64))
    }
    assert rows[(1, "inputs")]["overflows"] == 1 and rows[(64, "inputs")]["overflows"] == 1
    # (the first two steps use scale 1.0: 448 / amax 1.0)
    np.testing.assert_allclose(rows[(64, "inputs")]["max headroom"], np.log2(448), rtol=1e-6)
    assert rows[(1, "inputs")]["median headroom"] == 0.0
    assert rows[(64, "inputs")]["median headroom"] == 3.0
    # A second spike 20 steps later: the long window still covers it; the short one clips.
    amax[30] = 8.0
    rows = {
        (r["history length"], r["role"]): r
        for r in fp8.history_length_effect(amax, lengths=(1, 64))
    }
    assert rows[(1, "inputs")]["overflows"] == 2 and rows[(64, "inputs")]["overflows"] == 1


def test_a_gradient_whose_training_amax_stays_zero_is_dead(tmp_path):
    store = Store(tmp_path)
    names = ["a", "b"]

    def dead_since(amax):
        """dead_since of a run whose recorder wrote `amax` (steps from 1) to the store."""
        _, (run_id,) = store.create_comparison(TrainConfig(precisions=("fp8",)))
        store.merge_summary(run_id, fp8_layers=[{"name": name} for name in names])
        store.add_fp8_amax(run_id, 1, amax)
        steps, stored = store.fp8_amax(run_id)
        rows = fp8.health_summary(stored, names, amax_steps=steps)
        return {(r["layer"], r["role"]): r["dead since"] for r in rows if r["dead since"]}

    amax = np.ones((100, 2, 3), np.float32)
    assert dead_since(amax) == {}
    amax[:2] = 0  # the scale-1.0 start flushed everything: left out
    amax[60:80, 1, 2] = 0  # a gap that ended
    amax[100 - fp8.DEAD_STEPS + 1 :, 0, 2] = 0  # one step short of dead
    assert dead_since(amax) == {}
    amax[100 - fp8.DEAD_STEPS :, 0, 2] = 0
    assert dead_since(amax) == {("a", "outputs_grad"): 101 - fp8.DEAD_STEPS}
    amax[70:, 1, 0] = 0  # b's inputs: zero since the 71st step
    assert dead_since(amax)[("b", "inputs")] == 71
