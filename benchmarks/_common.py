"""Shared helpers for the benchmark scripts (not a benchmark itself).

Every script imports this first: it puts the repository root on sys.path, points
FP8DEMO_IMDB at the shared archive unless set, and never touches the user's store
(FP8DEMO_HOME defaults to a fresh temp folder).
"""

import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_ARCHIVE = ROOT.parent / "shared" / "data" / "aclImdb_v1.tar.gz"


def setup_env(home: str | None = None, prefix: str = "bench-home-") -> Path:
    """FP8DEMO_IMDB → the shared archive (unless set); FP8DEMO_HOME → `home` or a temp folder."""
    if not os.environ.get("FP8DEMO_IMDB") and DEFAULT_ARCHIVE.exists():
        os.environ["FP8DEMO_IMDB"] = str(DEFAULT_ARCHIVE)
    path = Path(home) if home else Path(tempfile.mkdtemp(prefix=prefix))
    path.mkdir(parents=True, exist_ok=True)
    os.environ["FP8DEMO_HOME"] = str(path)
    import fp8demo.env  # noqa: F401  (KERAS_BACKEND=jax, JAX_PLATFORMS=cpu without a GPU)

    return path


def archive() -> Path:
    named = os.environ.get("FP8DEMO_IMDB") or str(DEFAULT_ARCHIVE)
    return Path(named)


class Phases:
    """Named wall-clock phases, in order."""

    def __init__(self, log=print):
        self.seconds = {}
        self.log = log

    @contextmanager
    def __call__(self, name):
        self.log(f"  … {name}")
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
            self.log(f"    {name}: {self.seconds[name]:.1f} s")

    @property
    def total(self):
        return sum(self.seconds.values())


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# Vector extensions that decide XLA's CPU code: 512-bit integer work (dropout's random bits)
# and native bf16 dot products.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_model() -> str:
    """The CPU model name as lscpu reports it, with its family/model/stepping and vector
    extensions (cloud VMs often name every generation just "AMD EPYC"), and the CPU count."""
    import subprocess

    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    fields = {
        k.strip(): v.strip()
        for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)
    }
    name = fields.get("Model name", "unknown CPU")
    generation = "/".join(fields.get(k, "?") for k in ("CPU family", "Model", "Stepping"))
    flags = set(fields.get("Flags", "").split())
    isa = " ".join(flag for flag in ISA_FLAGS if flag in flags) or "no AVX2"
    return f"{name} (family/model/stepping {generation}; {isa}), {os.cpu_count()} CPUs"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other processes slow every timing."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, spec=".2f", none="–"):
    return none if value is None else format(value, spec)


def met(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def table(headers, rows) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path, payload):
    if path:
        Path(path).write_text(json.dumps(payload, indent=2, default=str))
        print(f"JSON written to {path}")


def random_batch(config, n, seed=0):
    """`n` reviews of random token ids in `config`'s shape, with random labels: training speed
    without the data pipeline. Ids start at 2, after the padding and unknown tokens."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.integers(2, config.vocab_size, size=(n, config.seq_len), dtype=np.int32)
    y = rng.integers(0, 2, size=(n, 1)).astype(np.float32)
    return x, y


def fit_seconds(model, x, y, batch_size, steps, callbacks=()) -> float:
    """Wall seconds of one epoch's fit over the first `steps` batches of x, y, in order (the
    first fit of a model also compiles its training step: a warm-up)."""
    started = time.perf_counter()
    model.fit(
        x[: batch_size * steps],
        y[: batch_size * steps],
        batch_size=batch_size,
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=list(callbacks),
    )
    return time.perf_counter() - started  # fit returns once the state is back in the model


def child_result(script, *args, timeout=None) -> tuple[str | None, str]:
    """Run `python script *args` with the repository on PYTHONPATH (a fresh process: its own
    compilation and peak memory) and return (what its last "RESULT " line says, or None;
    the end of its output, to explain a failure)."""
    import subprocess

    done = subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    result = lines[-1][len("RESULT ") :] if lines and not done.returncode else None
    return result, (done.stderr or done.stdout)[-300:]


class StepTimer:
    """Keras callback: wall time of each training step, validation excluded. Pass it to
    model.fit, or to the engine as train_run(..., callbacks=[timer]).

    Rate = steps / time between consecutive batch ends inside an epoch, so the first
    step of each epoch (compilation, epoch setup, the previous validation) is left out.
    """

    def __new__(cls, *args, **kwargs):
        import keras

        class _StepTimer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.intervals = []  # seconds between consecutive train batch ends
                self.last = None

            def on_epoch_begin(self, epoch, logs=None):
                self.last = None

            def on_train_batch_end(self, batch, logs=None):
                now = time.perf_counter()
                if self.last is not None:
                    self.intervals.append(now - self.last)
                self.last = now

            def on_test_begin(self, logs=None):
                self.last = None

            def steps_per_sec(self):
                return rate(self.intervals)

        return _StepTimer()


def rate(intervals) -> float | None:
    """Steps per second from step intervals; intervals over 5× the median (a recompilation,
    e.g. for a smaller last batch) are left out."""
    if not intervals:
        return None
    limit = 5 * statistics.median(intervals)
    kept = [i for i in intervals if i <= limit]
    return len(kept) / sum(kept)


def preload():
    """Import every fp8demo module up front: the tree may change while a long benchmark
    runs, and a module first imported an hour later could disagree with one imported at start."""
    import importlib

    for name in (
        "config",
        "store",
        "data",
        "tokenizer",
        "model",
        "fp8",
        "training",
        "worker",
        "predict",
        "charts",
        "device",
    ):
        importlib.import_module(f"fp8demo.{name}")
