"""The devices, in plain words: the GPUs and cores a pool of workers shares, found without
importing JAX (visible_gpus, take_device_share), and JAX's own view (describe: imports jax,
so pages call it once per server)."""

import functools
import os
import subprocess

import fp8demo.env  # noqa: F401  (JAX's environment, before describe imports it)
from fp8demo.config import TrainConfig

FP8_MIN_COMPUTE_CAPABILITY = 8.9  # Ada and Hopper have fp8 tensor cores

# The GPUs and cores the whole pool shares, kept in the environment by a worker that took its
# slot's share of them: the workers it starts in turn inherit that share, but not these.
POOL_GPUS, POOL_CORES = "FP8DEMO_POOL_GPUS", "FP8DEMO_POOL_CORES"


# -- the pool's devices, without JAX --------------------------------------------------------


@functools.cache
def visible_gpus() -> tuple[str, ...]:
    """The ids of the GPUs this host lets its processes use: CUDA_VISIBLE_DEVICES when set,
    else one per `nvidia-smi -L` GPU line; () without any. Cached: pages ask on each refresh."""
    named = os.environ.get(POOL_GPUS, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if named is not None:
        ids = tuple(i.strip() for i in named.split(",") if i.strip())
        return () if ids in ((), ("-1",)) else ids
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    count = sum(line.startswith("GPU ") for line in listing.splitlines())  # not MIG lines
    return tuple(str(i) for i in range(count))


def default_slots() -> int:
    """The pool's size unless asked for more: one slot per GPU, or one on a CPU."""
    return max(1, len(visible_gpus()))


def trains_side_by_side(config: TrainConfig) -> bool:
    """Whether a comparison trains its precisions at the same time: its side_by_side setting,
    "auto" meaning when this host has a GPU per precision (on a CPU they share the cores)."""
    if config.side_by_side == "auto":
        gpus = len(visible_gpus())
        return gpus > 0 and gpus >= len(config.precisions)
    return config.side_by_side == "on"


def pool_cores() -> list[int]:
    """The CPU cores the whole pool shares."""
    named = os.environ.get(POOL_CORES)
    return [int(c) for c in named.split(",")] if named else sorted(os.sched_getaffinity(0))


def take_device_share(slot: int, slots: int) -> str:
    """Restrict this process to slot `slot` of `slots` before JAX and TensorFlow load (they
    size their devices and thread pools at import): one GPU, or on a CPU its share of the
    cores. Returns what it took, in words."""
    gpus = visible_gpus()
    if gpus:
        gpu = gpus[slot % len(gpus)]  # more slots than GPUs only when the user asks for them
        os.environ[POOL_GPUS] = ",".join(gpus)
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        return f"GPU {gpu}"
    cores = pool_cores()
    share = cores[slot * len(cores) // slots : (slot + 1) * len(cores) // slots]
    share = share or [cores[min(slot * len(cores) // slots, len(cores) - 1)]]
    os.environ[POOL_CORES] = ",".join(map(str, cores))
    os.sched_setaffinity(0, share)
    return f"CPU cores {','.join(map(str, share))}"


# -- JAX's view --------------------------------------------------------------------------


def describe() -> dict:
    """This process's JAX devices: platform, name, fp8_capable, devices, "label" (name and
    count: "CPU, 2 cores", "NVIDIA H200", "2 × NVIDIA H200") and "text" (advice in words)."""
    import jax  # lazy: jax loads in seconds, and pages import this module

    devices = jax.devices()
    first = devices[0]
    count = f"{len(devices)} × " if len(devices) > 1 else ""
    if first.platform != "gpu":
        cores = len(os.sched_getaffinity(0))
        return {
            "platform": first.platform,
            "name": "CPU",
            "fp8_capable": False,
            "devices": [str(d) for d in devices],
            "label": f"CPU, {cores} core{'s' if cores != 1 else ''}",
            "text": f"{count}CPU only — fp8 is emulated and slower; use a subset for a quick demo",
        }
    name = first.device_kind
    try:
        capability = float(getattr(first, "compute_capability", "0"))
    except ValueError:
        capability = 0.0
    fp8_capable = capability >= FP8_MIN_COMPUTE_CAPABILITY
    text = (
        f"{count}{name} — has fp8 tensor cores (compute capability {capability}); "
        "each fp8 run reports whether XLA used them"
        if fp8_capable
        else f"{count}{name} — no fp8 tensor cores (compute capability {capability}); "
        "fp8 is emulated"
    )
    return {
        "platform": first.platform,
        "name": name,
        "fp8_capable": fp8_capable,
        "devices": [str(d) for d in devices],
        "label": f"{count}{name}",
        "text": text,
    }


def emulates_fp8(label: str | None) -> bool:
    """Whether a run's stored device label is a CPU's (fp8 is emulated there)."""
    return bool(label) and label.startswith("CPU")
