"""Process environment for anything that imports Keras, JAX or TensorFlow.

Import this module before keras/jax/tensorflow. It must stay cheap: the dashboard
imports it on first paint.
"""

import os
import shutil


def has_nvidia_gpu() -> bool:
    """True when the machine shows an NVIDIA device (driver node or nvidia-smi)."""
    return os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None


def configure() -> None:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    # TensorFlow only reads data; quiet its C++ logging.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # jax[cuda12] on a machine without a GPU prints a cuInit traceback before
    # falling back to the CPU; say "cpu" up front instead.
    if "JAX_PLATFORMS" not in os.environ and not has_nvidia_gpu():
        os.environ["JAX_PLATFORMS"] = "cpu"
    # Dashboard and worker may share a GPU: do not grab 75 % of its memory.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


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
    import jax
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
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # already initialised: too late to change, and harmless on CPU
        pass
    return tf
