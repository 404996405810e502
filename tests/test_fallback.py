"""fallback.py: thresholds, the decision, the switch to bf16 mid-fit, and the engine's events."""

import contextlib
import json
import logging
import warnings

import jax
import keras
import numpy as np
import pytest
from conftest import TINY, train_comparison

from fp8demo import cli, fallback, fp8, tokenizer
from fp8demo import model as model_lib
from fp8demo import probe as probe_lib
from fp8demo.config import TrainConfig
from fp8demo.data import lowercase
from fp8demo.fp8 import ROLES
from fp8demo.store import Store

SMALL = TrainConfig(vocab_size=300, seq_len=16, hidden_dim=8, intermediate_dim=8)

# -- thresholds -------------------------------------------------------------------------------


def test_thresholds_read_percentages_fractions_and_decibels():
    thresholds = fallback.parse("underflow>5%, saturation>0.001,mse>1e-4,snr<20dB")
    assert [(t.statistic, t.limit, t.text) for t in thresholds] == [
        ("underflow", 0.05, "underflow>5%"),
        ("saturation", 0.001, "saturation>0.1%"),
        ("mse", 1e-4, "mse>0.0001"),
        ("snr", 20.0, "snr<20"),
    ]
    assert fallback.parse("") == () and fallback.parse("  ") == ()
    underflow, *_, snr = thresholds
    assert underflow.crossed(0.051) and not underflow.crossed(0.05)
    assert snr.crossed(19.9) and not snr.crossed(25.0)
    assert not underflow.crossed(float("nan"))  # an all-zero tensor has nothing to lose


@pytest.mark.parametrize(
    "text, words",
    [
        ("underflow>5", "a percentage (5%) or a fraction"),
        ("underflow<5%", "write underflow>5%"),
        ("snr>20", "write snr<20"),
        ("overflow>1%", "choose from underflow, saturation, mse, snr"),
        ("mse>1%", "mse is not a share"),
        ("mse>-1", "never negative"),
        ("mse>abc", "'abc' is not a number"),
        ("underflow>5%,,mse>1e-4", "empty item"),
        ("underflow>5%,underflow>1%", "names underflow twice"),
        ("underflow 5%", "write a statistic, > or <, and a number"),
        ("snr<inf", "finite"),
    ],
)
def test_bad_fallback_text_gets_one_line(text, words):
    problems = TrainConfig(fallback=text).errors()
    assert len(problems) == 1 and words in problems[0] and "\n" not in problems[0]


def test_a_config_with_a_good_fallback_has_no_problem_unless_nothing_probes():
    assert TrainConfig(fallback="underflow>5%,mse>1e-4").errors() == []
    assert TrainConfig(fallback="underflow>5%", probe_every=0).errors() == [
        "fallback needs the probe's measurements: set probe_every above 0."
    ]
    assert TrainConfig(fallback="", probe_every=0).errors() == []


# -- the decision -----------------------------------------------------------------------------


def test_each_layer_falls_back_once_on_its_first_crossing():
    names = ["decoder/query", "decoder/key", "dense"]
    check = fallback.Fallback(fallback.parse("underflow>5%,snr<20"), names)
    underflow = np.zeros((3, 3))
    snr = np.full((3, 3), 30.0)
    underflow[0, 2] = 0.4  # query's output gradient
    snr[0, 0] = 10.0  # and its inputs: the underflow threshold comes first
    snr[2, 1] = 15.0  # dense's kernel
    events = check.check(0, {"underflow": underflow, "snr": snr})
    assert [tuple(e) for e in events] == [
        (0, "decoder/query", "outputs_grad", "underflow>5%", 0.4),
        (0, "dense", "kernel", "snr<20", 15.0),
    ]
    underflow[1, 0] = 0.5  # key crosses later; query, crossing again, is not moved twice
    later = check.check(8, {"underflow": underflow, "snr": snr})
    assert [(e.step, e.layer) for e in later] == [(8, "decoder/key")]
    assert check.moved == [0, 2, 1] and len(check.events) == 3
    rows = fallback.event_rows(check.events)
    assert rows[0] == {
        "step": 0,
        "layer": "decoder/query",
        "role": "outputs_grad",
        "reason": "underflow>5%",
        "value": 0.4,
    }
    assert (
        fallback.layers_summary(check.moved, 8) == "3 of 8 float8 layers ended in bf16 (fallback)"
    )
    assert fallback.layers_summary([], 8) == ""


def test_statistics_come_from_the_recipe_the_run_trains_with():
    recipes = ("delayed", "current")
    by_recipe = np.zeros((1, 3, 2, 3), np.float32)  # [layers, roles, recipes, 3]
    by_recipe[0, :, 0] = [[10.0, 0.5, 20.0], [0.0, 0.0, 30.0], [50.0, 0.0, np.inf]]
    by_recipe[0, :, 1] = [[1.0, 0.0, 40.0], [0.0, 0.0, 40.0], [2.0, 0.0, 40.0]]
    mean_square = np.array([[4.0, 1.0, 9.0]])
    stats = np.zeros((1, 3, 2))
    delayed = fallback.tensor_statistics(stats, by_recipe, recipes, "delayed", mean_square)
    np.testing.assert_allclose(delayed["underflow"], [[0.1, 0.0, 0.5]])
    np.testing.assert_allclose(delayed["saturation"], [[0.005, 0.0, 0.0]])
    # mse = mean square / 10^(snr/10): 4 / 100, 1 / 1000; an exact quantization: 0.
    np.testing.assert_allclose(delayed["mse"], [[0.04, 0.001, 0.0]], rtol=1e-6)
    current = fallback.tensor_statistics(stats, by_recipe, recipes, "current", mean_square)
    np.testing.assert_allclose(current["snr"], [[40.0, 40.0, 40.0]])
    # Without that recipe probed: the delayed scale's own stats, no snr or mse.
    stats[0, 2] = [0.0, 0.3]
    bare = fallback.tensor_statistics(stats, by_recipe[:, :, :0], (), "delayed", mean_square)
    np.testing.assert_allclose(bare["underflow"], [[0.0, 0.0, 0.3]])
    assert np.isnan(bare["mse"]).all() and np.isnan(bare["snr"]).all()


def test_the_probe_reports_each_tensors_mean_square_for_the_mse():
    model = model_lib.compile(model_lib.build(SMALL, "fp8"), SMALL)
    rng = np.random.default_rng(0)
    x = rng.integers(2, SMALL.vocab_size, size=(16, SMALL.seq_len), dtype=np.int32)
    y = rng.integers(0, 2, size=(16, 1)).astype(np.float32)
    probe = probe_lib.Probe(model, x, y)
    probe.measure()
    layers = fp8.float8_layers(model)
    assert probe.mean_square.shape == (len(layers), len(ROLES))
    # The layer computes with its kernel in bf16 (mixed precision): that is what quantizes.
    kernel = np.asarray(jax.numpy.asarray(layers[0]._kernel.value, "bfloat16"), np.float32)
    np.testing.assert_allclose(probe.mean_square[0, 1], np.mean(kernel**2), rtol=1e-5)
    assert (probe.mean_square > 0).all()


# -- the switch -------------------------------------------------------------------------------


def small_float8_model():
    """Two float8 Dense layers in mixed bf16, compiled: the switch's test bench."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8,))
        hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
        outputs = keras.layers.Dense(1, activation="sigmoid", name="head")(hidden)
        model = keras.Model(inputs, outputs)
    finally:
        keras.config.set_dtype_policy(previous)
    with warnings.catch_warnings():  # "InputLayer does not have a `quantize` method"
        warnings.simplefilter("ignore", UserWarning)
        model.quantize("float8")
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    return model


@contextlib.contextmanager
def counted_compilations():
    """{function name: times XLA compiled it} while inside, from JAX's compile log."""
    counts = {}

    class Count(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if message.startswith("Compiling jit("):
                name = message.removeprefix("Compiling jit(").split(")")[0]
                counts[name] = counts.get(name, 0) + 1

    handler, logger = Count(), logging.getLogger("jax")
    logger.addHandler(handler)
    previous = jax.config.jax_log_compiles
    jax.config.update("jax_log_compiles", True)
    try:
        yield counts
    finally:
        jax.config.update("jax_log_compiles", previous)
        logger.removeHandler(handler)


def test_a_layer_in_bf16_computes_the_plain_bf16_matmul():
    model = small_float8_model()
    hidden = model.get_layer("hidden")
    x = np.random.default_rng(1).normal(0, 1e-3, (32, 8)).astype(np.float32)
    hidden.inputs_scale.assign(1.0)  # scale 1.0: inputs around 1e-3 lose precision in E4M3
    float8_out = np.asarray(hidden(x), np.float32)
    fallback.use_bf16(hidden)
    bf16_out = np.asarray(hidden(x), np.float32)
    kernel = np.asarray(hidden._kernel.value)
    expected = keras.ops.relu(
        keras.ops.matmul(keras.ops.cast(x, "bfloat16"), keras.ops.cast(kernel, "bfloat16"))
        + keras.ops.cast(hidden.bias.value, "bfloat16")
    )
    np.testing.assert_array_equal(bf16_out, np.asarray(expected, np.float32))
    assert not np.array_equal(float8_out, bf16_out)  # the float8 path did quantize
    assert fallback.moved_layers(model) == [hidden.path]


def test_falling_back_mid_fit_freezes_the_float8_state_and_retraces_once():
    """After the switch the layer's amax history and scales stop changing (no quantization
    bookkeeping) while the other layer's go on; the train step is traced once more."""
    model = small_float8_model()
    rng = np.random.default_rng(0)
    x = rng.random((256, 8)).astype(np.float32)
    y = (x.sum(axis=1) > 4).astype(np.float32)
    seen = []

    class SwitchAtStep4(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            _ = self.model  # sync JAX's training state into the variables
            seen.append(
                {
                    name: np.asarray(self.model.get_layer(name).inputs_amax_history.value).copy()
                    for name in ("hidden", "head")
                }
            )
            if len(seen) == 4:
                fallback.use_bf16(self.model.get_layer("hidden"))
                fallback.retrace(self.model)

    with counted_compilations() as compiled:
        model.fit(
            x,
            y,
            batch_size=16,
            epochs=2,
            callbacks=[SwitchAtStep4()],
            verbose=0,
            validation_data=(x[:32], y[:32]),
        )
    changed = {
        name: [not np.array_equal(a[name], b[name]) for a, b in zip(seen, seen[1:])]
        for name in ("hidden", "head")
    }
    assert changed["hidden"][:3] == [True] * 3 and not any(changed["hidden"][3:])
    assert all(changed["head"])
    assert compiled["train_step"] == 2  # the first step, and once after the switch
    assert compiled["test_step"] == 1  # the switch came before the first validation
    assert float(model.get_layer("hidden").inputs_scale.value) > 0  # kept, not zeroed


def test_the_recorder_moves_a_layer_mid_fit_and_records_the_event(tmp_path):
    """A probe that sees `hidden`'s inputs saturate at step 8 moves it to bf16: one more
    compilation of the train step, the event in the summary, no amax recorded after it."""
    from fp8demo.recorder import Recorder

    model = small_float8_model()
    rng = np.random.default_rng(0)
    x = rng.random((256, 8)).astype(np.float32)
    y = (x.sum(axis=1) > 4).astype(np.float32)
    store = Store(tmp_path)
    _, (run_id,) = store.create_comparison(TrainConfig(precisions=("fp8",)))
    store.merge_summary(run_id, fp8_layers=fp8.describe_layers(model))  # as training does

    class SqueezeAtStep8(keras.callbacks.Callback):
        """Before the recorder's probe at step 8: a scale so small that inputs clip."""

        def on_train_batch_end(self, batch, logs=None):
            if self.model.optimizer.iterations.value == 8:  # read after the step's sync
                self.model.get_layer("hidden").inputs_scale.assign(1e-6)

    recorder = Recorder(
        store,
        run_id,
        n_train=256,
        batch_size=16,
        epochs=1,
        probe=probe_lib.Probe(model, x[:16], y[:16]),
        probe_every=4,
        fallback=fallback.parse("saturation>1%"),
    )

    class Sync(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            _ = self.model  # the state into the variables, so the assignment sticks

    with counted_compilations() as compiled:
        model.fit(
            x, y, batch_size=16, epochs=1, verbose=0, callbacks=[Sync(), SqueezeAtStep8(), recorder]
        )
    summary = store.run(run_id)["summary"]
    (event,) = summary["fallback_events"]
    assert (event["step"], event["layer"], event["role"]) == (8, "hidden", "inputs")
    assert event["reason"] == "saturation>1%" and event["value"] > 0.5
    assert summary["fallback_layers"] == ["hidden"] == recorder.fallback_layers()
    assert summary["fallback_summary"] == "1 of 2 float8 layers ended in bf16 (fallback)"
    assert compiled["train_step"] == 2  # the first step, and once after the event
    steps, amax = store.fp8_amax(run_id)
    hidden = amax[:, 0]
    assert np.isfinite(hidden[steps <= 8]).all() and np.isnan(hidden[steps > 8]).all()
    assert np.isfinite(amax[:, 1]).all()  # the head kept float8


def test_a_rebuilt_model_moves_the_saved_layers(tmp_path):
    model = model_lib.build(SMALL, "fp8")
    names = [layer.path for layer in fp8.float8_layers(model)]
    moved = fallback.apply_saved(model, names[:2])
    assert [layer.path for layer in moved] == names[:2] == fallback.moved_layers(model)
    with pytest.raises(ValueError, match="no float8 layer nowhere"):
        fallback.apply_saved(model, ["nowhere"])


# -- the charts ------------------------------------------------------------------------------

EVENTS = [
    {
        "step": 0,
        "layer": "decoder/self_attention/query",
        "role": "outputs_grad",
        "reason": "underflow>5%",
        "value": 0.62,
    },
    {
        "step": 0,
        "layer": "decoder/self_attention/key",
        "role": "outputs_grad",
        "reason": "underflow>5%",
        "value": 0.71,
    },
    {"step": 6, "layer": "dense", "role": "kernel", "reason": "snr<20", "value": 18.5},
]


def test_curves_mark_each_step_that_moved_layers():
    from fp8demo import charts

    c = charts.curve("fp8", "fp8", [1, 2, 4, 8], [0.1, 0.2, 0.4, 0.8], [0.7, 0.6, 0.5, 0.3])
    fig = charts.metric_figure([c], "loss", x_axis="step")
    charts.add_fallback_markers(fig, c, EVENTS, "step")
    (marks,) = [t for t in fig.data if t.name == "fp8: fallback to bf16"]
    assert list(marks.x) == [0, 6] and np.allclose(marks.y, [0.7, 0.4])  # on the raw curve
    assert marks.text[0] == (
        "step 0: query (outputs_grad underflow>5%, 0.62), key (outputs_grad underflow>5%, "
        "0.71) → bf16"
    )
    timed = charts.metric_figure([c], "loss", x_axis="time")
    charts.add_fallback_markers(timed, c, EVENTS, "time")
    assert np.allclose(timed.data[-1].x, [0.1, 0.6])
    empty = charts.curve("fp8", "fp8", [], [], [])
    bare = charts.metric_figure([empty], "loss")
    charts.add_fallback_markers(bare, empty, EVENTS)  # no curve yet: no marker
    assert not [t for t in bare.data if "fallback" in (t.name or "")]


def test_heatmaps_mark_the_row_of_each_moved_layer():
    from fp8demo import charts

    layers = ["decoder/self_attention/query", "decoder/self_attention/key", "dense"]
    fig = charts.amax_heatmap(np.arange(1, 9), np.ones((8, 3)), layers, "outputs_grad")
    charts.add_heatmap_fallback_markers(fig, EVENTS, layers)
    marks = fig.data[-1]
    assert marks.name == "fallback to bf16"
    assert list(marks.x) == [0, 0, 6] and list(marks.y) == layers
    other = charts.amax_heatmap(np.arange(1, 9), np.ones((8, 1)), ["classifier"], "inputs")
    charts.add_heatmap_fallback_markers(other, EVENTS, ["classifier"])
    assert len(other.data) == 1  # none of its layers moved


# -- the engine: Keras' delayed scaling starts at scale 1.0 ----------------------------------

TEXTS = ["a wonderful, moving film with great acting", "boring and awful, a waste of time"]


def test_delayed_scalings_first_steps_move_layers_to_bf16_and_record_it(home, imdb_folder, capsys):
    """Keras' first two steps use scale 1.0, which flushes small output gradients to zero:
    the probe at step 0 sees it, and an underflow threshold moves those layers before the
    first step compiles (no recompilation at all). Predict's rebuilt model moves them too."""
    config = TrainConfig(**TINY, precisions=("fp8",), probe_every=2, fallback="underflow>5%")
    with counted_compilations() as compiled:
        done = train_comparison(home, imdb_folder, config, TEXTS)
    store = Store(home)
    run = store.run(done["run_ids"]["fp8"])
    assert run["status"] == "finished"
    summary, names = run["summary"], [layer["name"] for layer in run["summary"]["fp8_layers"]]
    events = summary["fallback_events"]
    moved = [e["layer"] for e in events]
    assert {"decoder/self_attention/query", "decoder/self_attention/key"} <= set(moved)
    assert all(e["step"] == 0 and e["reason"] == "underflow>5%" for e in events)
    assert all(e["role"] in ROLES and e["value"] > 0.05 for e in events)
    assert summary["fallback_layers"] == [n for n in names if n in moved]
    assert summary["fallback_summary"] == (
        f"{len(moved)} of {len(names)} float8 layers ended in bf16 (fallback)"
    )
    assert len(moved) < len(names)  # the rest kept float8
    assert compiled["train_step"] == 1  # moved before the first step was traced
    # Moved layers never quantized: no amax recorded for them (NaN, a gap); the others' filled.
    _, amax = store.fp8_amax(run["id"])
    for i, name in enumerate(names):
        assert np.isnan(amax[:, i]).all() == (name in moved), name
        assert name in moved or (amax[:, i] > 0).any(), name
    # Their float8 state never changed: the scales stayed 1.0, the histories empty.
    after = summary["fp8_after"]
    for name in moved:
        assert all(after[name][role]["scale"] == 1.0 for role in ROLES), after[name]
        assert all(after[name][role]["amax_nonzero"] == 0 for role in ROLES), after[name]

    # show --json lists the events; the text says how many layers ended in bf16.
    capsys.readouterr()  # training's own output
    assert cli.main(["show", str(run["id"]), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["fallback_events"] == events
    assert cli.main(["show", str(run["id"])]) == 0
    assert summary["fallback_summary"] in capsys.readouterr().out

    # The saved model remembers the moved layers: rebuilt, it predicts as training ended.
    folder = store.run_dir(run["id"])
    saved = json.loads((folder / "config.json").read_text())
    assert saved["fallback_layers"] == summary["fallback_layers"]
    rebuilt = model_lib.build(config, "fp8")
    rebuilt.load_weights(folder / "model.weights.h5")
    ids = tokenizer.tokenize(
        tokenizer.make_tokenizer(
            (folder / "vocabulary.txt").read_text(encoding="utf-8").split("\n"), config.seq_len
        ),
        lowercase(TEXTS),
    )
    still_float8 = rebuilt.predict(ids, verbose=0)[:, 0]
    fallback.apply_saved(rebuilt, saved["fallback_layers"])
    predicted = rebuilt.predict(ids, verbose=0)[:, 0]
    expected = done["predictions_before_save"][run["id"]]
    np.testing.assert_allclose(predicted, expected, rtol=1e-6)
    assert not np.allclose(still_float8, expected, rtol=1e-6)
