"""Per-layer precision: bf16_layers parsed and validated, swept, built without float8 state,
trained, shown as "bf16" by FP8 health, and reloaded for prediction."""

import dataclasses
import json

import numpy as np
import pytest
from conftest import TINY, copy_home, train_comparison

from fp8demo import fp8, records, sweep_space
from fp8demo.config import MODEL_LAYERS, ConfigError, TrainConfig, cli_flags, from_query, to_query

# A model small enough to build in a second or two.
SMALL = dict(vocab_size=200, seq_len=8, hidden_dim=8, heads=2, intermediate_dim=8)
KEY = "decoder/self_attention/key"


def bf16(*items, **settings) -> TrainConfig:
    return TrainConfig(bf16_layers=tuple(items), **settings)


# -- parsing and validation ------------------------------------------------------------------


def test_first_and_last_count_in_model_order_and_names_mix_with_them():
    config = TrainConfig.from_strings({"bf16_layers": "first:2, last:1,dense"})
    assert config.bf16_layers == ("first:2", "last:1", "dense")
    assert config.bf16_layer_names() == (
        "decoder/self_attention/query",
        KEY,
        "dense",
        "classifier",
    )
    assert config.errors() == []
    assert bf16("last:3").bf16_layer_names() == MODEL_LAYERS[-3:]
    assert bf16(KEY, KEY).bf16_layer_names() == (KEY,)


def test_an_unknown_layer_gets_one_line_listing_the_valid_ones():
    problems = TrainConfig.from_strings({"bf16_layers": "query,last:9,first:0"}).errors()
    assert len(problems) == 1
    message = problems[0]
    assert message.startswith("Unknown layers 'query', 'last:9', 'first:0' in bf16_layers")
    assert all(name in message for name in MODEL_LAYERS)
    assert "first:N / last:N (N from 1 to 8)" in message
    assert "\n" not in message
    with pytest.raises(ConfigError, match="Unknown layer 'dens' in bf16_layers"):
        bf16("dens").validate()


def test_bf16_layers_need_a_float8_precision_and_one_layer_left_in_float8():
    (problem,) = bf16("dense", precisions=("bf16", "float32")).errors()
    assert "no precision trains in float8" in problem
    assert bf16("dense", precisions=("bf16", "fp8-current")).errors() == []
    (problem,) = bf16("first:8").errors()
    assert "keeps every float8 layer in bf16" in problem
    # quantize_head=False keeps the head in bf16: the older way of saying bf16_layers=classifier
    (problem,) = bf16("first:7", quantize_head=False).errors()
    assert "keeps every float8 layer in bf16" in problem
    assert TrainConfig(quantize_head=False).bf16_layer_names() == ("classifier",)
    assert bf16(7).errors() == ["bf16_layers must be a list of layer names, got (7,)."]


def test_the_setting_travels_through_json_url_and_cli_flag():
    config = bf16("last:2", KEY)
    restored = TrainConfig.from_dict(json.loads(config.to_json()))
    assert restored == config and isinstance(restored.bf16_layers, tuple)
    assert to_query(config) == {"bf16_layers": f"last:2,{KEY}"}
    values, warnings = from_query({"bf16_layers": "last:2,decoder/self_attention/key"})
    assert values == {"bf16_layers": ("last:2", KEY)} and warnings == []
    values, warnings = from_query({"bf16_layers": "nope"})
    assert values == {} and "Unknown layer 'nope'" in warnings[0]
    flags = dict(cli_flags())
    assert flags["--bf16-layers"]["dest"] == "bf16_layers"


def test_bf16_layers_is_sweepable_as_plus_joined_choices():
    import optuna

    param = sweep_space.parse_space(["bf16_layers=none,classifier,dense+classifier,last:2"])[
        "bf16_layers"
    ]
    assert param.choices == ("none", "classifier", "dense+classifier", "last:2")  # no range
    assert sweep_space.grid_space({"bf16_layers": param}, 1)["bf16_layers"] == list(param.choices)
    for choice, value in [("none", ()), ("dense+classifier", ("dense", "classifier"))]:
        trial = optuna.trial.FixedTrial({"bf16_layers": choice})
        assert param.suggest(trial) == value
        dataclasses.replace(TrainConfig(), bf16_layers=value).validate()
    with pytest.raises(ConfigError, match="Unknown layer 'dense+x'|Unknown layer 'x'"):
        sweep_space.parse_space({"bf16_layers": "none,dense+x"})
    with pytest.raises(ConfigError, match="keeps every float8 layer in bf16"):
        sweep_space.parse_space({"bf16_layers": "first:8"})


# -- the model -------------------------------------------------------------------------------


def float8_state(model) -> dict[str, list[str]]:
    """{layer path: its float8 variables (scales, amax histories)} of every layer that has any."""
    found = {}
    for weight in model.weights:
        if weight.path.endswith(("_scale", "_amax_history")):
            found.setdefault(weight.path.rsplit("/", 1)[0], []).append(weight.path)
    return found


@pytest.mark.parametrize("precision", ["fp8", "fp8-rowwise"])
def test_a_layer_kept_in_bf16_has_no_float8_state_and_the_others_do(precision):
    from fp8demo import model as model_lib

    config = TrainConfig(**SMALL, bf16_layers=(KEY, "last:1"))
    model = model_lib.build(config, precision)
    assert model_lib.float8_capable_layers(model) == list(MODEL_LAYERS)
    kept = {KEY, "classifier"}
    state = float8_state(model)
    assert set(state) == set(MODEL_LAYERS) - kept
    assert all(len(variables) == 6 for variables in state.values())  # 3 roles × (scale, history)
    assert [layer.path for layer in fp8.float8_layers(model)] == [
        name for name in MODEL_LAYERS if name not in kept
    ]
    # Every float8 layer scales with the precision's recipe, the bf16 ones are plain layers.
    recipe = "delayed" if precision == "fp8" else "rowwise"
    assert model_lib.scaling_recipe(model) == recipe
    layers = {layer.path: layer for layer in fp8.all_layers(model)}
    for name in kept:
        assert layers[name].quantization_mode is None
        assert layers[name].dtype_policy.name == "mixed_bfloat16"
        assert not hasattr(layers[name], "scaling_recipe")
    if precision == "fp8":
        return
    # A training step runs the recipe beside the bf16 layers and moves their weights too.
    model_lib.compile(model, config)
    before = np.asarray(layers[KEY].kernel.value, np.float32).copy()
    ids = np.random.default_rng(0).integers(2, SMALL["vocab_size"], (4, SMALL["seq_len"]))
    model.fit(ids, np.array([0, 1, 0, 1], np.float32), batch_size=4, epochs=1, verbose=0)
    assert not np.array_equal(before, np.asarray(layers[KEY].kernel.value, np.float32))


def test_quantize_head_off_builds_the_model_bf16_layers_classifier_builds():
    from fp8demo import model as model_lib

    old = model_lib.build(TrainConfig(**SMALL, quantize_head=False), "fp8")
    new = model_lib.build(TrainConfig(**SMALL, bf16_layers=("classifier",)), "fp8")
    assert [w.path for w in old.weights] == [w.path for w in new.weights]
    assert "classifier" not in float8_state(old)


def test_saved_weights_of_a_model_with_bf16_layers_load_into_its_rebuild(tmp_path):
    from fp8demo import model as model_lib

    config = TrainConfig(**SMALL, bf16_layers=("first:2",))
    saved = model_lib.build(config, "fp8-current")
    ids = np.random.default_rng(1).integers(2, SMALL["vocab_size"], (2, SMALL["seq_len"]))
    saved.save_weights(tmp_path / "model.weights.h5")
    rebuilt = model_lib.build(TrainConfig.from_dict(config.to_dict()), "fp8-current")
    rebuilt.load_weights(tmp_path / "model.weights.h5")
    np.testing.assert_array_equal(saved.predict(ids, verbose=0), rebuilt.predict(ids, verbose=0))


# -- a trained run ---------------------------------------------------------------------------


@pytest.mark.e2e  # trains a run
def test_a_trained_run_keeps_its_bf16_layers_in_records_health_and_predict(tmp_path, imdb_folder):
    """A tiny fp8 run with three layers in bf16: five float8 layers recorded, FP8 health's
    rows say "bf16" for the other three in model order, and its saved model reloads and
    predicts what it predicted before saving."""
    from fp8demo.predict import LoadedRun
    from fp8demo.store import Store

    config = TrainConfig(**TINY, precisions=("fp8",), probe_every=4, bf16_layers=(KEY, "last:2"))
    texts = ["a wonderful film", "a dull, awful film"]
    done = train_comparison(tmp_path / "home", imdb_folder, config, texts)
    store = Store(done["home"])
    run = store.run(done["run_ids"]["fp8"])
    assert run["status"] == "finished", run["error"]
    kept = [KEY, "dense", "classifier"]
    assert records.float8_layer_names(run) == [n for n in MODEL_LAYERS if n not in kept]
    rows = records.health_summary(store, run)
    assert [r["layer"] for r in rows if r["format"] == "bf16"] == kept
    assert list(dict.fromkeys(r["layer"] for r in rows)) == list(MODEL_LAYERS)
    assert len(rows) == 5 * 3 + 3
    health = records.health_record(store, run)
    assert health["bf16_layers"] == kept and len(health["tensors"]) == 15
    assert records.kept_in_bf16_words(run["config"]) == (
        f"Kept in bf16 in the float8 runs: {', '.join(kept)}."
    )
    loaded = LoadedRun(store, run["id"])
    np.testing.assert_allclose(
        loaded.predict(texts), done["predictions_before_save"][run["id"]], atol=1e-6
    )


def test_health_of_a_copy_without_bf16_layers_has_no_bf16_rows(trained, tmp_path):
    from fp8demo.store import Store

    store = Store(copy_home(trained["home"], tmp_path / "home"))
    run = store.run(trained["run_ids"]["fp8"])
    rows = records.health_summary(store, run)
    assert len(rows) == 24 and not any(r["format"] == "bf16" for r in rows)
    assert records.kept_in_bf16_words(run["config"]) is None


# -- the Train page's picker -----------------------------------------------------------------


def train_page(home, monkeypatch, **query):
    import os

    from conftest import ROOT
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FP8DEMO_HOME", str(home))
    at = AppTest.from_file(os.path.join(ROOT, "pages/train.py"), default_timeout=60)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def test_the_train_page_picks_layers_only_for_a_float8_precision(tmp_path, monkeypatch):
    at = train_page(tmp_path / "home", monkeypatch, bf16_layers="last:2")
    assert not at.exception
    picker = at.multiselect(key="bf16_layers")
    assert picker.options == list(MODEL_LAYERS)
    assert picker.value == ["dense", "classifier"]  # last:2 spelled out
    picker.set_value([KEY]).run()
    assert not at.exception and not at.error
    assert at.query_params["bf16_layers"] == KEY
    at.multiselect(key="precisions").set_value(["bf16"]).run()
    assert not at.exception and not at.error
    assert not [w for w in at.multiselect if w.key == "bf16_layers"]
    assert "bf16_layers" not in at.query_params  # not shown, not used
