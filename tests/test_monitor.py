"""FP8Monitor: a user's own Keras model (not the example's) recorded into a real run store.

A tiny Dense/EinsumDense classifier on random data, with real keras float8 layers after
quantize("float8"): its steps, epochs, amax and scales of every float8 layer and its probes
land in SQLite; bf16 and fp8 fits with one comparison label pair; an exception in fit fails
the run; a script killed mid-fit is reaped 'interrupted' with its steps kept; the Keras
example's script runs end to end with the callback.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import ROOT, wait_for

from fp8demo.store import Store

FEATURES, BATCH, SAMPLES = 16, 8, 64


def tiny_model(float8: bool, dtype=None):
    """Dense → EinsumDense → Dense(sigmoid): three float8 layers after quantize."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((FEATURES,))
    x = keras.layers.Dense(32, activation="relu", name="first", dtype=dtype)(inputs)
    x = keras.layers.EinsumDense(
        "ab,bc->ac", output_shape=16, activation="relu", name="mixer", dtype=dtype
    )(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="head", dtype=dtype)(x)
    model = keras.Model(inputs, outputs, name="tiny_classifier")
    if float8:
        model.quantize("float8")
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    return model


def random_data(n=SAMPLES):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.float32)


def fit(model, monitor, epochs=2, callbacks=()):
    x, y = random_data()
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=epochs,
        validation_data=(x[:16], y[:16]),
        callbacks=[monitor, *callbacks],
        verbose=0,
    )


def test_an_fp8_fit_is_recorded(tmp_path):
    from fp8demo import FP8Monitor

    store = Store(tmp_path / "home")
    x, y = random_data()
    monitor = FP8Monitor(
        name="mine", comparison="exp", probe_data=(x[:BATCH], y[:BATCH]), probe_every=3, store=store
    )
    fit(tiny_model(float8=True), monitor)

    run = store.run(monitor.run_id)
    assert (run["status"], run["precision"], run["worker_pid"]) == ("finished", "fp8", os.getpid())
    assert run["host"] and run["started_at"] and run["finished_at"]
    summary = run["summary"]
    assert summary["source"] == "monitor" and summary["name"] == "mine"
    assert summary["model_name"] == "tiny_classifier" and summary["script"]
    assert [layer["class"] for layer in summary["fp8_layers"]] == ["Dense", "EinsumDense", "Dense"]
    assert summary["final"]["loss"] > 0 and "accuracy" in summary["final"]
    assert run["test_accuracy"] == summary["final"]["val_accuracy"]  # Results pairs on it

    steps = store.step_metrics(run["id"])
    assert list(steps["step"]) == list(range(1, 2 * SAMPLES // BATCH + 1))
    assert np.isfinite(steps["loss"]).all() and np.isfinite(steps["accuracy"]).all()
    epochs = store.epoch_metrics(run["id"])
    assert [e["epoch"] for e in epochs] == [0, 1] and epochs[1]["val_accuracy"] is not None

    amax_steps, amax = store.fp8_amax(run["id"])
    assert list(amax_steps) == list(steps["step"].astype(int))
    assert amax.shape == (16, 3, 3) and (amax[:, :, :2] > 0).all()  # inputs, kernel of 3 layers
    _, scales = store.fp8_scales(run["id"])
    assert scales.shape[1:] == (3, 3) and (scales > 0).all()
    probe_steps, stats = store.fp8_probe(run["id"])
    assert list(probe_steps) == [0, 3, 6, 9, 12, 15, 16] and stats.shape[1:] == (3, 3, 2)
    assert run["config"].epochs == 2 and not run["config"].ptq


def test_the_default_cadence_keeps_probes_within_their_budget():
    """ProbePacer: every 25 steps while a probe is cheap; a probe as long as 50 steps of
    training is spaced to 50 / 2 % = 2,500 steps; the cadence follows each probe's time."""
    from fp8demo.monitor import PROBE_BUDGET, ProbePacer

    def steps(pacer, n, seconds, probed_last=False):
        for i in range(n):  # each step began `seconds` after the previous one ended
            started = (pacer.last_end or 0.0) + seconds
            every = pacer.after_step(started, probed_last and i == n - 1)
        return every

    assert steps(ProbePacer(25, probe_seconds=0.001), 5, 0.01) == 25
    slow = ProbePacer(25, probe_seconds=0.5)
    assert abs(steps(slow, 5, 0.01) - 0.5 / (PROBE_BUDGET * 0.01)) <= 1  # 2,500 (rounded up)
    slow.last_end = -1e9  # the next step ends long after it began: a slow probe
    assert steps(slow, 1, 0.01, probed_last=True) > 2501


def test_bf16_and_fp8_fits_pair_into_one_comparison(tmp_path):
    from fp8demo import FP8Monitor

    store = Store(tmp_path / "home")
    fit(tiny_model(False, "mixed_bfloat16"), FP8Monitor(comparison="pair", store=store), epochs=1)
    fit(tiny_model(True), FP8Monitor(comparison="pair", store=store), epochs=1)
    fit(tiny_model(False), FP8Monitor(comparison="other", store=store), epochs=1)

    paired, other = [c for c in store.comparisons() if c["label"] == "pair"], None
    assert len(paired) == 1
    assert [r["precision"] for r in paired[0]["runs"]] == ["bf16", "fp8"]
    assert paired[0]["config"].precisions == ("bf16", "fp8")
    (other,) = [c for c in store.comparisons() if c["label"] == "other"]
    assert [r["precision"] for r in other["runs"]] == ["float32"]
    # A second bf16 fit under the same label starts a new comparison: one run per precision.
    fit(tiny_model(False, "mixed_bfloat16"), FP8Monitor(comparison="pair", store=store), epochs=1)
    assert len([c for c in store.comparisons() if c["label"] == "pair"]) == 2


def test_an_exception_in_fit_fails_the_run(tmp_path, monkeypatch):
    """Keras skips on_train_end: the heartbeat thread sees the exception that reached the top
    (sys.last_exc / last_value, as Python and IPython set them) and fails the run."""
    import keras

    from fp8demo import FP8Monitor, monitor

    monkeypatch.setattr(monitor, "HEARTBEAT_SECONDS", 0.05)
    store = Store(tmp_path / "home")
    callback = FP8Monitor(comparison="boom", store=store)

    class Boom(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 3:
                raise RuntimeError("the data loader broke at batch 3")

    with pytest.raises(RuntimeError) as raised:
        fit(tiny_model(True), callback, callbacks=[Boom()])
    assert store.run(callback.run_id)["status"] == "running"
    monkeypatch.setattr(sys, "last_value", raised.value, raising=False)
    monkeypatch.setattr(sys, "last_exc", raised.value, raising=False)
    run = wait_for(
        lambda: (r := store.run(callback.run_id))["status"] == "failed" and r, 10, "failed"
    )
    assert "RuntimeError: the data loader broke at batch 3" in run["error"]
    assert len(store.step_metrics(run["id"])["step"]) >= 3  # steps written before it


def test_a_postgresql_store_url_receives_the_run(tmp_path, monkeypatch, postgres_url):
    """store=<url> and FP8DEMO_STORE write into PostgreSQL; the dashboard's Store on another
    home (another host) reads the runs, paired, and predicts with the saved model, whose file
    came through the database."""
    from fp8demo import FP8Monitor
    from fp8demo.predict import load_run

    x, _ = random_data()
    by_url = FP8Monitor(comparison="shared", store=postgres_url, save_model=True)
    fp8_model = tiny_model(True)
    fit(fp8_model, by_url, epochs=1)
    monkeypatch.setenv("FP8DEMO_STORE", postgres_url)
    monkeypatch.setenv("FP8DEMO_HOME", str(tmp_path / "script-home"))
    by_environment = FP8Monitor(comparison="shared")
    fit(tiny_model(False, "mixed_bfloat16"), by_environment, epochs=1)

    dashboard = Store(tmp_path / "dashboard-home", url=postgres_url)
    (comparison,) = dashboard.comparisons()
    runs = {r["precision"]: r["status"] for r in comparison["runs"]}
    assert runs == {"fp8": "finished", "bf16": "finished"}
    assert comparison["config"].precisions == ("bf16", "fp8")  # the baseline first
    assert comparison["id"] == by_url.comparison_id == by_environment.comparison_id
    assert len(dashboard.step_metrics(by_url.run_id)["step"]) == SAMPLES // BATCH
    assert dashboard.fp8_amax(by_url.run_id)[1].shape[1:] == (3, 3)
    loaded = load_run(dashboard, by_url.run_id)
    assert str(loaded.model_path).startswith(str(tmp_path / "dashboard-home"))
    np.testing.assert_allclose(
        loaded.predict(x[:2])[:, 0], fp8_model.predict(x[:2], verbose=0)[:, 0], rtol=1e-2, atol=1e-3
    )


def test_export_csv_of_a_monitor_run(tmp_path, monkeypatch, capsys):
    from fp8demo import FP8Monitor
    from fp8demo.cli import main

    monkeypatch.setenv("FP8DEMO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FP8DEMO_STORE", raising=False)
    callback = FP8Monitor(comparison="csv")
    fit(tiny_model(True), callback, epochs=1)
    target = tmp_path / "metrics.csv"
    assert main(["export", str(callback.run_id), "--csv", str(target)]) == 0
    lines = target.read_text().splitlines()
    assert lines[0].startswith("run_id,precision,step") and len(lines) == 1 + SAMPLES // BATCH


# -- a user's script, in a process of its own ------------------------------------------------

SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
import keras
from test_monitor import tiny_model, random_data, BATCH
from fp8demo import FP8Monitor

class Slow(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        time.sleep({sleep})
        if batch == {fail_at}:
            raise ValueError("bad batch {fail_at}")

x, y = random_data()
monitor = FP8Monitor(comparison="script", store={home!r})
callbacks = [monitor, Slow()]
tiny_model(True).fit(x, y, batch_size=BATCH, epochs={epochs}, callbacks=callbacks, verbose=0)
"""


def start_script(tmp_path, sleep=0.0, fail_at=-1, epochs=1) -> subprocess.Popen:
    script = tmp_path / "train_mine.py"
    script.write_text(
        textwrap.dedent(
            SCRIPT.format(
                root=str(ROOT),
                tests=str(ROOT / "tests"),
                home=str(tmp_path / "home"),
                sleep=sleep,
                fail_at=fail_at,
                epochs=epochs,
            )
        )
    )
    return subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


@pytest.mark.e2e
def test_an_uncaught_exception_in_a_script_fails_the_run(tmp_path):
    """A script's exception reaches the top: at exit (atexit) the run ends failed."""
    process = start_script(tmp_path, fail_at=2)
    output = process.communicate(timeout=300)[0].decode()
    assert process.returncode == 1, output
    (run,) = Store(tmp_path / "home").runs()
    assert run["status"] == "failed", output
    assert "ValueError: bad batch 2" in run["error"]
    assert run["summary"]["script"] == "train_mine.py"


@pytest.mark.e2e
def test_a_killed_script_is_reaped_interrupted_with_its_steps(tmp_path):
    process = start_script(tmp_path, sleep=0.2, epochs=50)
    store = Store(tmp_path / "home")
    try:
        wait_for(
            lambda: store.runs() and len(store.step_metrics(store.runs()[0]["id"])["step"]) >= 3,
            240,
            "steps of the script's run",
        )
        assert store.runs()[0]["status"] == "running"
        assert store.reap() == []  # alive: nothing to reap
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    steps = len(store.step_metrics(store.runs()[0]["id"])["step"])
    assert store.reap() == [store.runs()[0]["id"]]  # the supervisor's job
    run = store.runs()[0]
    assert run["status"] == "interrupted" and "partial metrics are kept" in run["error"]
    assert len(store.step_metrics(run["id"])["step"]) == steps >= 3


# The examples' models at CI sizes compile far longer than they train: XLA's cheaper CPU
# code generation cuts that by about a fifth, and what the tests assert does not depend on it.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def example_env(tmp_path) -> dict:
    """The environment of an example's process: a store of its own, quick compilation."""
    flags = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), FAST_COMPILE]))
    env = {**os.environ, "FP8DEMO_HOME": str(tmp_path / "home"), "XLA_FLAGS": flags}
    env.pop("FP8DEMO_STORE", None)
    return env


@pytest.mark.e2e
def test_the_keras_example_runs_end_to_end(tmp_path, imdb_folder):
    env = example_env(tmp_path)
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "keras_example_fp8.py"),
            "--data",
            str(imdb_folder),
            "--subset",
            "64",
            "--epochs",
            "1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Accuracy (float8)" in result.stdout
    store = Store(tmp_path / "home")
    (comparison,) = store.comparisons()
    assert comparison["label"] == "keras-example"
    bf16, fp8 = comparison["runs"]
    assert (bf16["precision"], fp8["precision"]) == ("bf16", "fp8")
    assert bf16["status"] == fp8["status"] == "finished"
    assert len(store.step_metrics(fp8["id"])["step"]) == 2  # 64 reviews, batch 32
    assert store.fp8_amax(fp8["id"])[1].shape[1:] == (7, 3)  # the example's float8 layers
    assert len(store.fp8_probe(fp8["id"])[0]) == 2  # before the first step, after the last


@pytest.mark.e2e
def test_the_causal_lm_example_runs_end_to_end(tmp_path, imdb_folder):
    env = example_env(tmp_path)
    command = [sys.executable, str(ROOT / "examples" / "causal_lm_fp8.py"), "--data"]
    command += [str(imdb_folder), "--subset", "16", "--epochs", "1", "--vocabulary", "200"]
    command += ["--seq-len", "16"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    store = Store(tmp_path / "home")
    (comparison,) = store.comparisons()
    bf16, fp8 = comparison["runs"]
    assert (bf16["precision"], fp8["precision"]) == ("bf16", "fp8")
    assert bf16["status"] == fp8["status"] == "finished"
    # 4 blocks of 4 attention projections and 2 feed-forward layers, and the head.
    assert store.fp8_amax(fp8["id"])[1].shape[1:] == (4 * 6 + 1, 3)
    assert len(store.fp8_probe(fp8["id"])[0]) >= 2


# -- Predict on a saved model (save_model=True) ---------------------------------------------


def tiny_decoder(float8: bool):
    """A keras_hub TransformerDecoder classifier over token ids: after quantize("float8") its
    inner Dense layers are float8, which keras.saving.load_model alone cannot reload."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    token_ids = keras.Input((12,), dtype="int32", name="token_ids")
    x = keras_hub.layers.TokenAndPositionEmbedding(50, 12, 8)(token_ids)
    x = keras_hub.layers.TransformerDecoder(intermediate_dim=8, num_heads=2)(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(token_ids, keras.layers.Dense(1, activation="sigmoid")(x), name="tiny_lm")
    if float8:
        model.quantize("float8")
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    return model


def test_a_saved_float8_model_predicts_on_a_json_array(tmp_path):
    from fp8demo import FP8Monitor
    from fp8demo.predict import PredictError, load_run

    store = Store(tmp_path / "home")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 50, (32, 12)).astype(np.int32), rng.integers(0, 2, 32)
    model = tiny_decoder(float8=True)
    monitor = FP8Monitor(comparison="saved", store=store, save_model=True)
    model.fit(x, y.astype(np.float32), batch_size=8, epochs=1, callbacks=[monitor], verbose=0)
    expected = model.predict(x[:3], verbose=0)[:, 0]

    loaded = load_run(store, monitor.run_id)
    assert not loaded.takes_text and loaded.input_shape == (None, 12)
    assert "JSON array of int32" in loaded.describe_input()
    got = loaded.predict(loaded.parse(json.dumps(x[:3].tolist())))
    np.testing.assert_allclose(got[:, 0], expected, rtol=1e-2, atol=1e-3)
    one = loaded.predict(loaded.parse(json.dumps(x[0].tolist())))  # one example, no batch axis
    assert one.shape == (1, 1)
    for raw, why in [
        ("[1, 2", "not a JSON array"),
        ("[[1, 2, 3]]", "axis 1 has 3 values, not 12"),
        (json.dumps([[0.5] * 12]), "fractions"),
        ("[[[1]]]", "3 dimensions"),
        ("", "Give the model an input"),
    ]:
        with pytest.raises(PredictError, match=why):
            loaded.parse(raw)
    with pytest.raises(PredictError, match="Post-training"):
        load_run(store, monitor.run_id, "int8")


def test_a_saved_model_behind_its_tokenizer_predicts_on_text(tmp_path):
    import keras

    from fp8demo import FP8Monitor
    from fp8demo.predict import load_run

    texts = ["a good film", "a bad film", "good acting", "bad plot"] * 8
    vectorize = keras.layers.TextVectorization(max_tokens=20, output_sequence_length=FEATURES)
    vectorize.adapt(texts)
    classifier = tiny_model(float8=True)
    reader = keras.Sequential([keras.Input((), dtype="string"), vectorize, classifier])
    store = Store(tmp_path / "home")
    monitor = FP8Monitor(comparison="text", store=store, save_model=reader)
    x = np.asarray(vectorize(np.asarray(texts)), dtype=np.float32)
    y = np.asarray([t.startswith("a good") or t.startswith("good") for t in texts], np.float32)
    classifier.fit(x, y, batch_size=BATCH, epochs=1, callbacks=[monitor], verbose=0)
    expected = classifier.predict(x[:2], verbose=0)[:, 0]

    loaded = load_run(store, monitor.run_id)
    assert loaded.takes_text and "text" in loaded.describe_input()
    got = loaded.predict(loaded.parse("a good film\n\na bad film\n"))
    np.testing.assert_allclose(got[:, 0], expected, rtol=1e-2, atol=1e-3)


def test_predict_page_and_command_take_raw_inputs_for_saved_models(tmp_path, monkeypatch, capsys):
    """bf16 and fp8 fits with save_model=True: the Predict page shows both models' outputs
    for a JSON array, `fp8demo predict RUN ARRAY` prints them; a run without a saved model
    keeps its note."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from fp8demo import FP8Monitor
    from fp8demo.cli import main

    monkeypatch.setenv("FP8DEMO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FP8DEMO_STORE", raising=False)
    x, _ = random_data()
    expected = {}
    for precision, model in [
        ("bf16", tiny_model(False, "mixed_bfloat16")),
        ("fp8", tiny_model(True)),
    ]:
        monitor = FP8Monitor(comparison="raw", save_model=True)
        fit(model, monitor, epochs=1)
        expected[precision] = (monitor.run_id, model.predict(x[:2], verbose=0)[:, 0])
    raw = json.dumps(np.round(x[:2], 4).tolist())

    fp8_run, fp8_expected = expected["fp8"]
    assert main(["predict", str(fp8_run), raw, "--json"]) == 0
    printed = [row["output"][0] for row in json.loads(capsys.readouterr().out)]
    np.testing.assert_allclose(printed, fp8_expected, rtol=1e-2, atol=1e-3)
    assert main(["predict", str(fp8_run), "[1, 2]"]) == 2  # a clear one-line error
    assert "axis 1 has 2 values, not 16" in capsys.readouterr().err

    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "pages" / "predict.py"), default_timeout=120).run()
    assert not at.exception
    assert "JSON array of float32" in at.info[0].value
    at.text_area("raw_input").input(raw).run()
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert list(table.columns) == ["example", "bf16", "fp8"] and len(table) == 2
    for precision, (_, values) in expected.items():
        shown = [float(cell.strip("[]")) for cell in table[precision]]
        np.testing.assert_allclose(shown, values, rtol=1e-2, atol=1e-3)
