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


def tensorflow():
    """Import TensorFlow for data work only: JAX owns the GPU, so hide it from TF."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # already initialised: too late to change, and harmless on CPU
        pass
    return tf
