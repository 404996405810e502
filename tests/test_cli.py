"""python -m fp8demo, end to end on a subset."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, backend

# Every test but one starts the CLI. The CLI runs on SQLite; train → show → predict runs on
# PostgreSQL, the suite's one end to end on that store (the other commands read it as pages do).
pytestmark = pytest.mark.e2e


def cli(*args, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "fp8demo", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("home", ["postgresql"], indirect=True)  # SQLite: the tests below
def test_train_then_predict(home):
    import os

    env = dict(os.environ)
    done = cli(
        "train",
        "--subset",
        "128",
        "--vocab-size",
        "700",
        "--seq-len",
        "48",
        "--epochs",
        "1",
        "--precision",
        "bf16,fp8",
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "precision" in done.stdout and "test acc" in done.stdout
    assert "fp8 − bf16 test accuracy" in done.stdout
    runs = json.loads(cli("runs", "--json", env=env).stdout)
    assert [(r["precision"], r["status"]) for r in runs] == [
        ("bf16", "finished"),
        ("fp8", "finished"),
    ]
    from fp8demo.paths import host_name

    assert all(r["host"] == host_name() and r["slot"].isdigit() for r in runs)  # a pool slot
    fp8_run = runs[1]["id"]
    shown = json.loads(cli("show", str(fp8_run), "--json", env=env).stdout)
    assert len(shown["float8_layers"]) == 8
    assert all(layer["scales"]["kernel"] != 1.0 for layer in shown["float8_layers"])
    assert shown["phase_seconds"]["fit (compiling, training, validating)"] > 0
    text = cli("show", str(fp8_run), env=env).stdout
    assert "seconds: loading data" in text and "saving" in text
    from fp8demo import compiled

    assert shown["compiled_step"]["matmuls"] > 0
    assert f"compiled step: {compiled.verdict(shown['compiled_step'])}" in text
    if backend() == "cpu":  # XLA's CPU backend has no FP8 GEMMs: fp8 is simulated there
        assert shown["compiled_step"]["fp8_matmuls"] == 0
        assert "compiled step: None of the" in text and "not the speed" in text
    # The complete record: what Results shows is in the JSON too.
    assert shown["compiled_step_verdict"] == compiled.verdict(shown["compiled_step"])
    health = shown["fp8_health"]
    assert len(health["tensors"]) == 8 * 3 and health["latest_probe_step"] is not None
    assert health["overflows"] == sum(t["overflows"] for t in health["tensors"])
    assert all(0 <= t["underflow_pct"] <= 100 for t in health["tensors"])
    assert shown["best_epoch"]["epoch"] == 0 and shown["best_epoch"]["restored"] is False
    assert shown["best_epoch"]["test_accuracy"] == shown["test_accuracy"]
    bf16 = json.loads(cli("show", str(runs[0]["id"]), "--json", env=env).stdout)
    assert [r["mode"] for r in bf16["post_training"]] == ["int8", "int4"]
    assert all(
        0 <= r["test_accuracy"] <= 1 and r["weights_bytes"] > 0 for r in bf16["post_training"]
    )
    assert bf16["fp8_health"] is None and shown["post_training"] == []
    assert "int8 PTQ: test accuracy" in cli("show", str(runs[0]["id"]), env=env).stdout
    assert "fp8 health:" in text and "best epoch: 1" in text
    predicted = cli("predict", str(fp8_run), "great film", "awful film", "--json", env=env)
    assert predicted.returncode == 0, predicted.stderr
    rows = json.loads(predicted.stdout)
    assert [r["text"] for r in rows] == ["great film", "awful film"]
    assert all(0.0 <= r["positive_probability"] <= 1.0 for r in rows)


def test_show_and_predict_read_a_run_of_the_sqlite_store(trained):
    """show and predict on the embedded store (train → show → predict runs on PostgreSQL
    above, the CLI's train on SQLite in test_store_option_names_the_store_…)."""
    import os

    env = dict(os.environ, FP8DEMO_HOME=str(trained["home"]))
    fp8_run = str(trained["run_ids"]["fp8"])
    done = cli("show", fp8_run, "--json", env=env)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert len(shown["float8_layers"]) == 8 and shown["compiled_step"]["matmuls"] > 0
    assert shown["fp8_health"]["latest_probe_step"] is not None
    text = cli("show", fp8_run, env=env).stdout
    assert "fp8 health:" in text and "seconds: loading data" in text
    predicted = cli("predict", fp8_run, "great film", "awful film", "--json", env=env)
    assert predicted.returncode == 0, predicted.stderr
    rows = json.loads(predicted.stdout)
    assert [r["text"] for r in rows] == ["great film", "awful film"]
    assert all(0.0 <= r["positive_probability"] <= 1.0 for r in rows)


def test_bad_input_exits_nonzero_with_one_line(home):
    bad = cli("train", "--heads", "3", "--no-wait")
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "error: hidden_dim (32) must be divisible by heads (3): each attention head gets "
        "hidden_dim / heads dimensions."
    )
    assert (
        cli("train", "--epochs", "two").stderr.strip()
        == "error: epochs must be a whole number, got 'two'."
    )
    assert cli("predict", "999", "x").stderr.strip().startswith("error: There is no run 999")


def test_train_refuses_a_data_path_that_does_not_exist(tmp_path, monkeypatch):
    from fp8demo.store import Store

    home = tmp_path / "home"
    monkeypatch.setenv("FP8DEMO_HOME", str(home))
    missing = tmp_path / "aclImdb_v1.tar.gz"
    refused = cli("train", "--data", str(missing), "--subset", "128", "--no-wait")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"error: The IMDB path {missing} does not exist. Name the aclImdb_v1.tar.gz archive or "
        "the folder it was extracted to."
    )
    assert refused.stdout == ""
    assert Store(home).runs() == []  # nothing queued, so no worker runs to fail


def test_store_option_names_the_store_of_the_command_and_its_workers(home, tmp_path):
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.sqlite'}"
    tiny = ("--subset", "64", "--vocab-size", "700", "--seq-len", "48", "--epochs", "1")
    done = cli("train", *tiny, "--precision", "bf16", "--store", elsewhere)
    assert done.returncode == 0, done.stdout + done.stderr
    # The worker that train started trained the run in the named store, not in the home's.
    runs = json.loads(cli("runs", "--json", "--store", elsewhere).stdout)
    assert [(r["precision"], r["status"]) for r in runs] == [("bf16", "finished")]
    assert json.loads(cli("runs", "--json").stdout) == []
    bad = cli("runs", "--store", "mysql://somewhere/db")
    assert bad.returncode == 2 and bad.stderr.startswith("error: 'mysql://somewhere/db' is not")


def test_every_setting_is_a_flag_and_a_url_parameter():
    import dataclasses

    from fp8demo import cli as fp8demo_cli
    from fp8demo.config import EXAMPLE, TrainConfig, cli_flags, from_query, to_query, to_text

    flags = dict(cli_flags())
    assert list(flags) == [
        "--epochs",
        "--batch-size",
        "--lr",
        "--seed",
        "--vocab-size",
        "--seq-len",
        "--vocab-method",
        "--hidden-dim",
        "--heads",
        "--intermediate-dim",
        "--dropout",
        "--dropout-masks",
        "--quantize-head",
        "--bf16-layers",
        "--fallback",
        "--nvfp4-2d-weights",
        "--nvfp4-rht",
        "--nvfp4-stochastic-rounding",
        "--ptq",
        "--restore-best",
        "--early-stopping",
        "--amax-history-length",
        "--probe-every",
        "--block-scales",
        "--data-parallel",
        "--side-by-side",
        "--precision",
        "--data",
        "--subset",
    ]
    changed = TrainConfig(
        epochs=2,
        batch_size=16,
        lr=0.002,
        seed=7,
        vocab_size=900,
        seq_len=64,
        vocab_method="fast",
        hidden_dim=48,
        heads=4,
        intermediate_dim=64,
        dropout=0.25,
        dropout_masks="fast",
        quantize_head=False,
        bf16_layers=("decoder/self_attention/key", "last:2"),
        fallback="underflow>5%",
        nvfp4_2d_weights=False,
        nvfp4_rht=False,
        nvfp4_stochastic_rounding=False,
        ptq=False,
        restore_best=True,
        early_stopping=2,
        amax_history_length=16,
        probe_every=16,
        block_scales="off",
        data_parallel=True,
        side_by_side="on",
        precisions=("fp8", "float32"),
        data="/somewhere/aclImdb",
        subset=300,
    )
    assert set(changed.differences()) == {f.name for f in dataclasses.fields(TrainConfig)}
    argv = ["train"]
    for flag, options in flags.items():
        argv += [flag, to_text(getattr(changed, options["dest"]))]
    assert fp8demo_cli.config_from_args(fp8demo_cli.parse_args(argv)) == changed
    query = to_query(changed)
    assert query["precisions"] == "fp8,float32" and query["quantize_head"] == "false"
    values, warnings = from_query(query)
    assert warnings == [] and dataclasses.replace(EXAMPLE, **values) == changed
    # A preset is the base the flags change.
    quick = fp8demo_cli.parse_args(["train", "--preset", "Quick demo", "--epochs", "4"])
    assert fp8demo_cli.config_from_args(quick) == dataclasses.replace(
        TrainConfig(subset=12000, vocab_size=5000, lr=3e-3, dropout_masks="fast"), epochs=4
    )


def test_health_of_an_fp8_run(trained):
    import os

    env = dict(os.environ, FP8DEMO_HOME=str(trained["home"]))
    shown = cli("health", str(trained["run_ids"]["fp8"]), "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    assert len(rows) == 24 and {r["role"] for r in rows} == {"inputs", "kernel", "outputs_grad"}
    assert all(r["min headroom"] is not None for r in rows)
    assert all(0 <= r["underflow %"] <= 100 for r in rows)  # the probe's statistics
    text = cli("health", str(trained["run_ids"]["fp8"]), "--replay", env=env).stdout
    assert "sat %" in text and "Replayed under other amax history lengths (this run: 1024)" in text
    assert "underflow %: share of the tensor's nonzero values" in text
    replay = json.loads(
        cli("health", str(trained["run_ids"]["fp8"]), "--replay", "--json", env=env).stdout
    )["replay"]
    assert [r["history length"] for r in replay if r["role"] == "inputs"] == [
        1,
        4,
        16,
        64,
        256,
        1024,
        4096,
    ]
    refused = cli("health", str(trained["run_ids"]["bf16"]), env=env)
    assert refused.returncode == 2 and "has no float8 layers" in refused.stderr


def test_export_writes_the_results_pages_metrics_csv(tmp_path):
    import os

    from fp8demo import report
    from fp8demo.config import TrainConfig
    from fp8demo.store import Store

    store = Store(tmp_path / "home")
    cid, run_ids = store.create_comparison(TrainConfig(precisions=("bf16", "fp8")))
    for run_id in run_ids:
        store.add_steps(
            run_id, [(s, 0, 0.5 * s, 0.7 - 0.01 * s, 0.5 + 0.01 * s) for s in range(1, 5)]
        )
        store.add_epoch(run_id, 0, 4, 0.67, 0.52, 0.66, 0.55)
    env = dict(os.environ, FP8DEMO_HOME=str(tmp_path / "home"))
    expected = report.metrics_csv(store, store.comparison(cid)["runs"])

    shown = cli("export", str(run_ids[1]), "--comparison", env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == expected and len(expected.splitlines()) == 1 + 2 * 4
    one_run = cli("export", str(run_ids[1]), env=env).stdout
    assert one_run == report.metrics_csv(store, [store.run(run_ids[1])])
    assert len(one_run.splitlines()) == 1 + 4
    target = tmp_path / "metrics.csv"
    written = cli("export", str(run_ids[0]), "--comparison", "--csv", str(target), env=env)
    assert written.returncode == 0, written.stderr
    assert f"8 rows (2 runs) written to {target}" in written.stdout
    assert target.read_text(encoding="utf-8") == expected

    # Bad input: a clear line, exit 2, and the file written before is kept.
    missing = cli("export", "99", "--csv", str(target), env=env)
    assert missing.returncode == 2 and missing.stderr.strip().startswith(
        "error: There is no run 99 in "
    )
    assert target.read_text(encoding="utf-8") == expected
    folder = cli("export", str(run_ids[0]), "--csv", str(tmp_path), env=env)
    assert folder.returncode == 2
    assert folder.stderr.strip() == f"error: Cannot write {tmp_path}: Is a directory."


def test_export_tensorboard_writes_one_folder_per_run(trained, tmp_path):
    import os

    env = dict(os.environ, FP8DEMO_HOME=str(trained["home"]))
    ids = trained["run_ids"]
    result = cli("export", str(ids["fp8"]), "--comparison", "--tensorboard", str(tmp_path), env=env)
    assert result.returncode == 0, result.stderr
    for precision, run_id in ids.items():
        folder = tmp_path / f"run{run_id}-{precision}"
        assert f"TensorBoard events written to {folder}" in result.stdout
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    refused = cli("export", str(ids["bf16"]), "--tensorboard", str(blocked), env=env)
    assert refused.returncode == 2 and refused.stderr.strip().endswith(
        f"error: Cannot write {blocked}: Not a directory."
    )
    assert blocked.read_text() == "not a folder"


def test_health_recipes_json_has_every_tensor_and_recipe(trained):
    import math
    import os

    from fp8demo import recipes
    from fp8demo.store import Store

    env = dict(os.environ, FP8DEMO_HOME=str(trained["home"]))
    run_id = str(trained["run_ids"]["fp8"])
    store = Store(trained["home"])
    steps, _, stats = store.fp8_recipes(int(run_id))
    layers = [layer["name"] for layer in store.run(int(run_id))["summary"]["fp8_layers"]]
    shown = cli("health", run_id, "--recipes", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "Infinity" not in shown.stdout and "NaN" not in shown.stdout  # strict JSON
    rows = json.loads(shown.stdout)
    keys = ["layer", "role", "gemm", "recipe", "step", "underflow_pct", "saturation_pct", "snr_db"]
    assert all(list(r) == keys for r in rows)
    # Each tensor under both GEMMs that use it, for every recipe (the store keeps both).
    assert [(r["layer"], r["role"], r["gemm"], r["recipe"]) for r in rows] == [
        (layer, role, gemm, recipe)
        for layer in layers
        for role, gemms in recipes.ROLE_GEMMS.items()
        for gemm in gemms
        for recipe in recipes.RECIPES
    ]
    assert {r["step"] for r in rows} == {int(steps[-1])}
    assert all(0 <= r["underflow_pct"] <= 100 and 0 <= r["saturation_pct"] <= 100 for r in rows)
    # snr_db is null exactly where the store holds +inf (exact quantization).
    exact = [not math.isfinite(v) for v in stats[-1, :, :, :, 2].ravel()]
    first = [r for r in rows if r["gemm"] == recipes.ROLE_GEMMS[r["role"]][0]]
    assert [r["snr_db"] is None for r in first] == exact
    every = json.loads(cli("health", run_id, "--recipes", "--all-probes", "--json", env=env).stdout)
    assert len(every) == len(steps) * len(rows)
    assert sorted({r["step"] for r in every}) == [int(s) for s in steps]
    text = cli("health", run_id, "--recipes", env=env)
    assert text.returncode == 0 and "Median SNR over the 24 tensors" in text.stdout
    refused = cli("health", run_id, "--all-probes", env=env)
    assert refused.returncode == 2 and "--all-probes goes with --recipes" in refused.stderr
    refused = cli("health", str(trained["run_ids"]["bf16"]), "--recipes", "--json", env=env)
    assert refused.returncode == 2 and "has no float8 layers" in refused.stderr
