"""python -m fp8demo, end to end on a subset."""

import json
import subprocess
import sys

from conftest import ROOT


def cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "fp8demo", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_train_then_predict(home):
    import os

    env = dict(os.environ)
    done = cli("train", "--subset", "128", "--vocab-size", "700", "--seq-len", "48",
               "--epochs", "1", "--precision", "bf16,fp8", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "precision" in done.stdout and "test acc" in done.stdout
    assert "fp8 − bf16 test accuracy" in done.stdout
    runs = json.loads(cli("runs", "--json", env=env).stdout)
    assert [(r["precision"], r["status"]) for r in runs] == [("bf16", "finished"), ("fp8", "finished")]
    fp8_run = runs[1]["id"]
    shown = json.loads(cli("show", str(fp8_run), "--json", env=env).stdout)
    assert len(shown["float8_layers"]) == 8
    assert all(layer["scales"]["kernel"] != 1.0 for layer in shown["float8_layers"])
    assert shown["phase_seconds"]["fit (compiling, training, validating)"] > 0
    text = cli("show", str(fp8_run), env=env).stdout
    assert "seconds: loading data" in text and "saving" in text
    assert shown["compiled_step"]["fp8_matmuls"] == 0 and shown["compiled_step"]["matmuls"] > 0
    assert "compiled step: None of the" in text and "not the speed" in text
    predicted = cli("predict", str(fp8_run), "great film", "awful film", "--json", env=env)
    assert predicted.returncode == 0, predicted.stderr
    rows = json.loads(predicted.stdout)
    assert [r["text"] for r in rows] == ["great film", "awful film"]
    assert all(0.0 <= r["positive_probability"] <= 1.0 for r in rows)


def test_bad_input_exits_nonzero_with_one_line(home):
    bad = cli("train", "--heads", "3", "--no-wait")
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "error: hidden_dim (32) must be divisible by heads (3): each attention head gets "
        "hidden_dim / heads dimensions.")
    assert cli("train", "--epochs", "two").stderr.strip() == "error: epochs must be a whole number, got 'two'."
    assert cli("predict", "999", "x").stderr.strip().startswith("error: There is no run 999")


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
    replay = json.loads(cli("health", str(trained["run_ids"]["fp8"]), "--replay", "--json",
                            env=env).stdout)["replay"]
    assert [r["history length"] for r in replay if r["role"] == "inputs"] == [1, 4, 16, 64, 256,
                                                                             1024, 4096]
    refused = cli("health", str(trained["run_ids"]["bf16"]), env=env)
    assert refused.returncode == 2 and "has no float8 layers" in refused.stderr
