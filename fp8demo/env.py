"""Process environment for anything that imports Keras, JAX or TensorFlow.

Import this module before keras/jax/tensorflow. It must stay cheap: the dashboard
imports it on first paint.
"""

import contextlib
import importlib.machinery
import logging
import os
import shutil
import sys


def has_nvidia_gpu() -> bool:
    """True when the machine shows an NVIDIA device (driver node or nvidia-smi)."""
    return os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None


# On a GPU, XLA drops an f32 -> float8 -> f32 round trip as "excess precision", which erases the
# FP8 rounding, and its Triton GEMM fusion takes the matmuls before the rewrite into FP8 cuBLASLt
# GEMMs sees them (benchmarks/README.md, "GPU"). Both precisions compile under the same flags,
# so bf16 runs cuBLAS GEMMs too.
GPU_XLA_FLAGS = {"xla_allow_excess_precision": "false", "xla_gpu_enable_triton_gemm": "false"}


def add_xla_flags(flags: dict) -> None:
    """Append each flag to XLA_FLAGS unless the user already set it there."""
    current = os.environ.get("XLA_FLAGS", "")
    extra = [f"--{name}={value}" for name, value in flags.items() if name not in current]
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()


def configure(quiet: bool = False) -> None:
    """Settings for Keras, JAX and TensorFlow; `quiet` (the CLI without --verbose) also hides
    their start-up lines, which say nothing about the command's result."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    # TensorFlow only reads data; quiet its C++ logging.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # jax[cuda12] on a machine without a GPU prints a cuInit traceback before
    # falling back to the CPU; say "cpu" up front instead.
    if "JAX_PLATFORMS" not in os.environ and not has_nvidia_gpu():
        os.environ["JAX_PLATFORMS"] = "cpu"
    if has_nvidia_gpu():
        add_xla_flags(GPU_XLA_FLAGS)
    # Dashboard and worker may share a GPU: do not grab 75 % of its memory.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if quiet:
        quiet_start_up()


def quiet_start_up() -> None:
    """Hide the libraries' start-up lines in this process: TensorFlow's C++ ones (oneDNN, "Could
    not find cuda drivers", written while its libraries load, before any log level applies),
    absl's and JAX's backend warnings. Real errors still raise."""
    if not any(isinstance(finder, _QuietTensorFlow) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())
    for name in ("absl", "jax._src.xla_bridge"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def quiet_stderr():
    """Point file descriptor 2 at /dev/null for the block: C++ code writes there directly."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


class _QuietTensorFlow:
    """An import hook: `import tensorflow`, wherever it happens (keras imports it too), runs
    under quiet_stderr; then the hook steps aside."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            load = spec.loader.exec_module

            def exec_module(module):
                with quiet_stderr():
                    load(module)

            spec.loader.exec_module = exec_module
        return spec


configure()

# XLA executables kept on disk, per fp8demo home: a warm comparison, the second precision of a
# comparison in a new worker, and the Predict page after a restart load them instead of
# compiling again.
# Bounded, least recently used first; the size bound also makes JAX lock the folder, which
# the worker and the dashboard share.
COMPILATION_CACHE_BYTES = 1 << 30
COMPILATION_CACHE_MIN_SECONDS = 0.1  # what compiles faster is not worth a file
_compilation_cache_dir = None


def use_compilation_cache(home) -> str | None:
    """Point JAX's persistent compilation cache at <home>/cache/xla; returns the folder.

    A JAX_COMPILATION_CACHE_DIR set by the user wins (returns None and changes nothing).
    """
    global _compilation_cache_dir
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    path = os.path.join(os.fspath(home), "cache", "xla")
    if path == _compilation_cache_dir:
        return path
    import jax  # lazy: jax loads in ~3 s
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_persistent_cache_min_compile_time_secs", COMPILATION_CACHE_MIN_SECONDS)
    jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_BYTES)
    # JAX decides once per process whether to use a cache, at the first compilation: start over
    # so a process that compiled before (or used another home) picks this folder up.
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", path)
    _compilation_cache_dir = path
    return path


def tensorflow():
    """Import TensorFlow for data work only: JAX owns the GPU, so hide it from TF."""
    import tensorflow as tf  # lazy: TensorFlow loads in ~5 s

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # already initialised: too late to change, and harmless on CPU
        pass
    return tf
