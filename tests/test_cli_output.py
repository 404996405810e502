"""The CLI's output is its results: no TensorFlow, absl, CUDA or JAX start-up lines unless
--verbose asks for them."""

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

from fp8demo import env

# What the libraries print while they start: absl's pre-init banner, glog-style lines
# ("I0000 00:00:…"), oneDNN and CUDA notices, JAX's backend warnings.
START_UP = re.compile(
    r"absl::InitializeLog|^[IWEF]\d{4} |oneDNN|cuda|TensorFlow binary|TF_CPP|WARNING:absl"
    r"|An NVIDIA GPU may be present|Unable to initialize backend",
    re.MULTILINE | re.IGNORECASE,
)


def cli(*args, home):
    return subprocess.run(
        [sys.executable, "-m", "fp8demo", *args],
        cwd=ROOT,
        env=dict(os.environ, FP8DEMO_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=600,
    )


def start_up_lines(done) -> list[str]:
    return [m.group(0) for m in START_UP.finditer(done.stdout + done.stderr)]


@pytest.mark.e2e
def test_commands_print_results_without_library_start_up_lines(trained):
    fp8_run = str(trained["run_ids"]["fp8"])
    for args in (
        ("runs",),
        ("show", fp8_run),
        ("health", fp8_run),
        ("predict", fp8_run, "a wonderful film"),  # loads Keras, hence TensorFlow
    ):
        done = cli(*args, home=trained["home"])
        assert done.returncode == 0, (args, done.stderr)
        assert done.stdout.strip(), args
        assert start_up_lines(done) == [], (args, done.stderr)


@pytest.mark.e2e
def test_verbose_is_a_global_flag_before_or_after_the_command(trained):
    fp8_run = str(trained["run_ids"]["fp8"])
    quiet = cli("predict", fp8_run, "a wonderful film", "--json", home=trained["home"])
    for args in (
        ("--verbose", "predict", fp8_run, "a wonderful film", "--json"),
        ("predict", fp8_run, "a wonderful film", "--json", "--verbose"),
    ):
        done = cli(*args, home=trained["home"])
        assert done.returncode == 0, (args, done.stderr)
        assert done.stdout == quiet.stdout  # the same results; only stderr may say more


def test_quiet_stderr_hides_what_native_code_writes_to_descriptor_2(capfd):
    os.write(2, b"before\n")
    with env.quiet_stderr():
        os.write(2, b"I0000 00:00:1 port.cc:153] hidden\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "before\nafter\n"


def test_quiet_start_up_hides_tensorflow_once_and_steps_aside(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    env.quiet_start_up()
    env.quiet_start_up()  # twice: still one hook
    hooks = [f for f in sys.meta_path if isinstance(f, env._QuietTensorFlow)]
    assert len(hooks) == 1
    assert hooks[0].find_spec("numpy") is None  # other imports are left alone


def test_gpu_xla_flags_join_the_users_own_and_never_override_them(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/d --xla_gpu_enable_triton_gemm=true")
    env.add_xla_flags(env.GPU_XLA_FLAGS)
    flags = os.environ["XLA_FLAGS"].split()
    assert flags == [
        "--xla_dump_to=/tmp/d",
        "--xla_gpu_enable_triton_gemm=true",  # the user's choice stays
        "--xla_allow_excess_precision=false",
    ]
    env.add_xla_flags(env.GPU_XLA_FLAGS)  # configure() again adds nothing twice
    assert os.environ["XLA_FLAGS"].split() == flags
    monkeypatch.delenv("XLA_FLAGS")
    env.add_xla_flags(env.GPU_XLA_FLAGS)
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_allow_excess_precision=false",
        "--xla_gpu_enable_triton_gemm=false",
    ]


def test_this_process_runs_under_the_gpu_flags_exactly_when_it_has_a_gpu():
    flags = os.environ.get("XLA_FLAGS", "")
    for name, value in env.GPU_XLA_FLAGS.items():
        assert (f"--{name}={value}" in flags) == env.has_nvidia_gpu()


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path):
    """`python -m fp8demo runs | head -1`: the pipe closes before the command writes; it stops
    with status 141 (as a shell reports SIGPIPE) and no traceback."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fp8demo", "runs"],
        cwd=ROOT,
        env=dict(os.environ, FP8DEMO_HOME=str(tmp_path / "home")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    process.stdout.close()  # the reader is gone before the first line
    stderr = process.stderr.read()
    assert process.wait(60) == 141
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
