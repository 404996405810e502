"""The JAX device, in plain words (imports jax: call it lazily)."""

import fp8demo.env  # noqa: F401

FP8_MIN_COMPUTE_CAPABILITY = 8.9  # Ada and Hopper have fp8 tensor cores


def describe() -> dict:
    import jax

    devices = jax.devices()
    first = devices[0]
    count = f"{len(devices)} × " if len(devices) > 1 else ""
    if first.platform == "gpu":
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
    else:
        name = "CPU"
        fp8_capable = False
        text = f"{count}CPU only — fp8 is emulated and slower; use a subset for a quick demo"
    return {
        "platform": first.platform,
        "name": name,
        "fp8_capable": fp8_capable,
        "devices": [str(d) for d in devices],
        "text": text,
    }
