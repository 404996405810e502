"""XLA executables kept on disk per fp8demo home: a second process loads the training step
instead of compiling it again (two real processes, a real cache folder)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.e2e  # fits in new processes

FIT_ONE_BATCH = """
import sys
import numpy as np
import fp8demo.env
from fp8demo import model as model_lib
from fp8demo.config import TrainConfig
print("CACHE", fp8demo.env.use_compilation_cache(sys.argv[1]))
config = TrainConfig(subset=64, vocab_size=500, seq_len=32, epochs=1).validate()
model = model_lib.compile(model_lib.build(config, "fp8"), config)
x = np.random.default_rng(0).integers(2, 500, size=(32, 32), dtype=np.int32)
model.fit(x, np.ones((32, 1), np.float32), batch_size=32, epochs=1, verbose=0)
"""


def fit_in_a_new_process(home, **env):
    inherited = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    done = subprocess.run(
        [sys.executable, "-c", FIT_ONE_BATCH, str(home)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**inherited, "PYTHONPATH": str(ROOT), "JAX_LOG_COMPILES": "1", **env},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_a_second_process_loads_the_training_step_from_the_home_cache(tmp_path):
    folder = tmp_path / "cache" / "xla"
    first = fit_in_a_new_process(tmp_path)
    assert f"CACHE {folder}" in first.stdout
    assert "cache hit for 'jit_train_step'" not in first.stderr
    assert any(
        p.name.startswith("jit_train_step-") and p.name.endswith("-cache") for p in folder.iterdir()
    )
    second = fit_in_a_new_process(tmp_path)
    assert "Persistent compilation cache hit for 'jit_train_step'" in second.stderr


def test_the_users_own_cache_folder_wins(tmp_path):
    own = tmp_path / "mine"
    done = fit_in_a_new_process(tmp_path / "home", JAX_COMPILATION_CACHE_DIR=str(own))
    assert "CACHE None" in done.stdout
    assert not (tmp_path / "home" / "cache" / "xla").exists()
    assert any(p.name.startswith("jit_train_step-") for p in own.iterdir())
