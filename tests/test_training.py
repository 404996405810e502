"""bf16 and fp8 runs on a subset: metrics, fp8 state and saved models in the store."""

import numpy as np
import pytest
from conftest import backend, copy_home

from fp8demo import device
from fp8demo.fp8 import ROLES
from fp8demo.store import Store


def test_both_runs_finish_with_metrics_in_the_store(trained):
    store = Store(trained["home"])
    config = trained["config"]
    for run_id in trained["run_ids"].values():
        run = store.run(run_id)
        assert run["status"] == "finished", run["error"]
        assert 0.0 <= run["test_accuracy"] <= 1.0 and run["test_loss"] > 0
        steps = store.step_metrics(run_id)
        assert list(steps["step"]) == list(range(1, run["total_steps"] + 1))
        assert run["total_steps"] == int(np.ceil(config.subset / config.batch_size)) * config.epochs
        epochs = store.epoch_metrics(run_id)
        assert [e["epoch"] for e in epochs] == list(range(config.epochs))
        assert all(e["val_accuracy"] is not None for e in epochs)
        # The per-step values are true per-batch values: their sample-weighted mean is the
        # epoch's running mean that Keras reports (the last batch may be smaller).
        sizes = np.full(len(steps["loss"]), config.batch_size, float)
        sizes[-1] = config.subset - config.batch_size * (len(sizes) - 1)
        assert np.isclose(np.average(steps["loss"], weights=sizes), epochs[-1]["loss"], rtol=1e-4)
        assert np.isclose(
            np.average(steps["accuracy"], weights=sizes), epochs[-1]["accuracy"], rtol=1e-4
        )
        assert not np.allclose(steps["loss"], steps["loss"][0])
        assert run["steps_per_sec"] > 0
        # Its device by name and count ("CPU, 2 cores", "NVIDIA H200"), not the page's advice.
        assert run["device"] == device.describe()["label"]
        # Where the time went: every phase the run went through, the fit as recorded.
        phases = run["summary"]["phase_seconds"]
        assert {"loading data", "building model", "evaluating", "saving"} <= set(phases)
        assert phases["fit (compiling, training, validating)"] == pytest.approx(
            run["fit_seconds"], abs=0.5
        )
        assert all(seconds >= 0 for seconds in phases.values())
        assert sum(phases.values()) <= run["finished_at"] - run["started_at"] + 0.5


def test_fp8_run_records_amax_histories_and_moving_scales(trained):
    store = Store(trained["home"])
    run = store.run(trained["run_ids"]["fp8"])
    layers = [layer["name"] for layer in run["summary"]["fp8_layers"]]
    # Every Dense and EinsumDense of the example model, the sigmoid head included.
    assert layers == [
        "decoder/self_attention/query",
        "decoder/self_attention/key",
        "decoder/self_attention/value",
        "decoder/self_attention/attention_output",
        "decoder/feedforward_intermediate_dense",
        "decoder/feedforward_output_dense",
        "dense",
        "classifier",
    ]
    assert {layer["policy"] for layer in run["summary"]["fp8_layers"]} == {
        "float8_from_mixed_bfloat16"
    }
    before, after = run["summary"]["fp8_before"], run["summary"]["fp8_after"]
    for name in layers:
        for role in ROLES:
            assert before[name][role]["scale"] == 1.0 and before[name][role]["amax_nonzero"] == 0
            assert after[name][role]["amax_nonzero"] == run["total_steps"]
            assert after[name][role]["scale"] != 1.0
    steps, amax = store.fp8_amax(run["id"])
    assert list(steps) == list(range(1, run["total_steps"] + 1))  # one amax per step, none lost
    assert amax.shape == (run["total_steps"], len(layers), len(ROLES))
    assert (amax > 0).all()
    # The stored newest amax equals the history's newest entry at the end of training.
    for i, name in enumerate(layers):
        for j, role in enumerate(ROLES):
            assert np.isclose(amax[-1, i, j], after[name][role]["history_head"][0])
    scale_steps, scales = store.fp8_scales(run["id"])
    assert scale_steps[-1] == run["total_steps"] and (scales[-1] != 1.0).all()
    # Delayed scaling: the first steps still use the initial scale of 1.0.
    assert scale_steps[0] <= 2 and (scales[0] == 1.0).all()
    # The step fit compiled was read back: on a CPU, float8 rounding but no FP8 GEMM; on a GPU,
    # as many FP8 GEMMs as XLA made (tests/test_compiled.py checks the verdict on each).
    found = run["summary"]["compiled_step"]
    assert found["backend"] == backend() and "error" not in found
    if found["backend"] == "cpu":
        assert found["fp8_matmuls"] == 0
        assert found["float8_values"] >= len(layers) * len(ROLES) and found["matmuls"] >= 24
    else:
        assert found["float8_values"] > 0 and 0 <= found["fp8_matmuls"] <= found["matmuls"]
    assert "inspecting the compiled step" in run["summary"]["phase_seconds"]


def test_bf16_run_has_no_float8_variables(trained):
    from fp8demo.predict import load_run

    store = Store(trained["home"])
    run = store.run(trained["run_ids"]["bf16"])
    assert run["summary"]["fp8_layers"] == []
    assert "compiled_step" not in run["summary"]  # only float8 runs are inspected
    steps, amax = store.fp8_amax(run["id"])
    assert len(steps) == 0
    model = load_run(store, run["id"]).model
    assert not [v for v in model.weights if v.path.endswith(("_scale", "_amax_history"))]
    assert {v.dtype for v in model.trainable_weights} == {"float32"}  # mixed: float32 variables


def test_predictions_after_reload_equal_predictions_before_saving(trained):
    from fp8demo.predict import load_run

    store = Store(trained["home"])
    for run_id in trained["run_ids"].values():
        loaded = load_run(store, run_id)
        after = loaded.predict(trained["texts"])
        np.testing.assert_allclose(after, trained["predictions_before_save"][run_id], atol=1e-6)
        assert loaded.tokens("A great film")[:3] == ["a", "great", "film"]


def test_post_training_quantization_is_queued_work_evaluated_by_a_worker_and_kept(
    trained, tmp_path, monkeypatch, imdb_folder
):
    """Training ends without it; a request queues one evaluation, which a worker claims and
    runs: int8 and int4 on the run's test split, stored in the summary; later evaluations
    read them back."""

    from fp8demo import post_training, training, worker
    from fp8demo.predict import PredictError, load_run

    home = tmp_path / "home"  # a copy: other tests may already have asked for the results
    copy_home(trained["home"], home)
    monkeypatch.setenv("FP8DEMO_IMDB", str(imdb_folder))
    store = Store(home)
    bf16_id, fp8_id = trained["run_ids"]["bf16"], trained["run_ids"]["fp8"]
    # As training left it: the fixture's worker evaluated it already (a failed evaluation is
    # queued anew when asked again).
    store.merge_summary(bf16_id, ptq=None)
    store.end_evaluation(store.evaluation(bf16_id)["id"], "failed", "as if it had failed")
    bf16 = store.run(bf16_id)
    assert post_training.post_training_pending(bf16)
    assert not any("post-training" in phase for phase in bf16["summary"]["phase_seconds"])

    worker.queue_post_training(store, fp8_id)  # only a finished bf16 run with ptq asks
    assert store.evaluation(fp8_id) is None
    worker.queue_post_training(store, bf16_id)
    asked = store.request_evaluation(bf16_id)  # asked twice: still one evaluation
    assert asked["status"] == "queued" and store.queued_evaluations() == 1
    evaluation = store.claim_next_evaluation(4321)
    assert evaluation["id"] == asked["id"] and store.claim_next_evaluation(4321) is None
    worker.evaluate(store, evaluation)
    assert store.evaluation(bf16_id)["status"] == "finished"
    ptq = store.run(bf16_id)["summary"]["ptq"]
    assert set(ptq) == {"int8", "int4"}
    for result in ptq.values():
        assert 0.0 <= result["test_accuracy"] <= 1.0 and result["seconds"] > 0
        # int8 stores one byte per kernel weight, int4 half a byte: both smaller than float32.
        assert result["weights_bytes"] < bf16["summary"]["weights_bytes"]
    assert ptq["int4"]["weights_bytes"] < ptq["int8"]["weights_bytes"]
    assert not post_training.post_training_pending(store.run(bf16_id))
    # The int8 model evaluated again by hand gives the stored result. Same batch size: another
    # one compiles other matmul tilings, whose rounding can flip a prediction near 0.5.
    test = post_training.test_set_of(store, store.run(bf16_id))
    model = training.model_lib.compile(load_run(store, bf16_id, "int8").model, trained["config"])
    batch = training.eval_batch_size(trained["config"].seq_len)
    accuracy = training.evaluate(model, test, batch)["test_accuracy"]
    assert accuracy == pytest.approx(ptq["int8"]["test_accuracy"], abs=1e-6)
    # Kept: a second request reads the summary (a marked value comes back unchanged).
    store.merge_summary(bf16_id, ptq={**ptq, "int8": {**ptq["int8"], "test_accuracy": 0.5}})
    assert post_training.evaluate_run(store, bf16_id)["int8"]["test_accuracy"] == 0.5
    assert post_training.evaluate_run(store, fp8_id) == {}  # only bf16 runs have one
    int8 = load_run(store, bf16["id"], "int8")
    probabilities = int8.predict(trained["texts"])
    assert ((0 <= probabilities) & (probabilities <= 1)).all()
    assert int8.label == "int8 (post-training)"
    try:
        load_run(store, trained["run_ids"]["fp8"], "int8")
        raise AssertionError("int8 PTQ of an fp8 run must be refused")
    except PredictError as e:
        assert "applies to a bf16 run" in str(e)


def test_best_epoch_early_stopping_and_a_short_amax_history(home):
    """restore_best keeps the best validation epoch; a 16-step history loses no step's amax;
    the fast dropout masks train."""
    from fp8demo.config import TrainConfig
    from fp8demo.predict import load_run
    from fp8demo.worker import execute

    store = Store(home)
    config = TrainConfig(
        subset=256,
        vocab_size=800,
        seq_len=48,
        epochs=3,
        precisions=("fp8",),
        restore_best=True,
        early_stopping=1,
        amax_history_length=16,
        ptq=False,
        dropout_masks="fast",
        probe_every=0,  # nothing here reads the probe, whose compilation is most of a tiny run
    )
    _, (run_id,) = store.create_comparison(config)
    execute(store, store.claim_next_run(0))
    run = store.run(run_id)
    assert run["status"] == "finished", run["error"]
    summary = run["summary"]
    epochs = store.epoch_metrics(run_id)
    best_epoch = int(np.argmax([e["val_accuracy"] for e in epochs]))
    assert summary["best"]["epoch"] == best_epoch
    assert run["test_accuracy"] == summary["best"]["test_accuracy"]
    assert summary["final"]["epoch"] == len(epochs) - 1
    if summary["stopped_early_at"] is not None:  # patience 1: one epoch without improvement
        assert summary["stopped_early_at"] == best_epoch + 1 == len(epochs) - 1
    # The saved model is the best epoch's.
    loaded = load_run(store, run_id)
    layer = loaded.model.get_layer("classifier")
    assert layer.inputs_amax_history.shape == (16,)
    steps, amax = store.fp8_amax(run_id)
    assert list(steps) == list(range(1, epochs[-1]["step"] + 1))
    assert (amax > 0).all()


def test_an_evaluation_set_that_does_not_split_over_the_devices_is_padded_and_weighted():
    """Keras's mean loss (Σ weight·loss / rows) and weighted accuracy over the padded set equal
    the plain means over the real samples."""
    from fp8demo.training import EvaluationSet

    x, y = np.arange(10).reshape(5, 2), np.array([1, 0, 1, 1, 0])
    even = EvaluationSet.split_over(x, y, devices=5)
    assert even.x is x and even.y is y and even.sample_weight is None  # nothing to pad

    padded = EvaluationSet.split_over(x, y, devices=4)
    assert len(padded.y) == 8
    np.testing.assert_array_equal(padded.x, np.concatenate([x, x[:3]]))  # the first samples
    np.testing.assert_array_equal(padded.y, [1, 0, 1, 1, 0, 1, 0, 1])
    np.testing.assert_allclose(padded.sample_weight, [1.6] * 5 + [0] * 3)
    losses = np.array([0.3, 0.9, 0.2, 0.5, 1.1])  # per sample; the padding repeats them
    padded_losses = np.concatenate([losses, losses[:3]])
    hits = np.array([1, 0, 1, 1, 1])
    padded_hits = np.concatenate([hits, hits[:3]])
    weights = padded.sample_weight
    assert np.sum(weights * padded_losses) / len(weights) == pytest.approx(losses.mean())
    assert np.sum(weights * padded_hits) / np.sum(weights) == pytest.approx(hits.mean())
    # Fewer samples than devices: the padding wraps around.
    assert list(EvaluationSet.split_over(x[:2], y[:2], devices=8).y) == [1, 0] * 4


def test_the_phase_timer_adds_up_a_phase_entered_twice():
    import time

    from fp8demo.training import PhaseTimer

    timer = PhaseTimer()
    began = time.time()
    for phase in ("evaluating", "saving", "evaluating"):
        timer.start(phase)
        time.sleep(0.05)
    seconds = timer.seconds()
    assert list(seconds) == ["evaluating", "saving"]
    assert seconds["evaluating"] >= 0.1 and seconds["saving"] >= 0.05
    assert sum(seconds.values()) == pytest.approx(time.time() - began, abs=0.01)
