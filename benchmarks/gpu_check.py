"""Prove fp8 on a GPU: FP8 GEMMs in the compiled step, and fp8 and its recipes against bf16.

Does XLA emit FP8 GEMMs for the example model and the large presets, and is fp8 (and each
scaling recipe) faster than bf16 there?

1. Confirms JAX sees a GPU (else says so and exits 3; --allow-cpu runs everything on the CPU as
   a logic test, where no cuBLAS call can appear and the speeds say nothing about a GPU).
2. For each configuration (the example, "Large (hidden 1024)", "XL (hidden 4096)") and each
   precision that trains (bf16; fp8, Keras' delayed scaling; every scaling recipe, fp8-current
   to nvfp4): builds the model (float8: model.quantize("float8"), then the
   recipe's quantization), compiles the training step with a warm-up fit, counts the matmuls
   of that compiled step by how they run (fp8demo.compiled: FP8 GEMMs, other GEMMs and dots)
   and times a fit over --steps steps.
3. Prints each float8 step's verdict (does it run FP8 GEMMs, or is its recipe emulated?) and a
   table; after every configuration it rewrites results.json and hlo.tar.gz (each compiled
   step's optimized HLO) in --out.

Imports neither TensorFlow nor the data pipeline: random token ids stand in for reviews, so it
runs where only JAX, keras and keras-hub are installed (benchmarks/gpu_check.sh).

    .venv/bin/python benchmarks/gpu_check.py --out OUT_DIR
    .venv/bin/python benchmarks/gpu_check.py --out /tmp/x --allow-cpu --tiny   # logic test on a CPU
"""

import argparse
import io
import json
import os
import re
import sys
import tarfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from fp8demo import compiled  # noqa: E402  (no jax at import: fp8demo.env still goes first)

# short name → (label, preset)
CONFIGS = {
    "example": ("example (hidden 32)", "Keras example"),
    "large": ("Large (hidden 1024)", "Large (hidden 1024)"),
    "xl": ("XL (hidden 4096)", "XL (hidden 4096)"),
}
# Every precision that trains, bf16 first (the ratios' base) and float32 left out.
PRECISIONS = (
    "bf16",
    "fp8",
    "fp8-current",
    "fp8-rowwise",
    "fp8-rowwise-gw-hp",
    "fp8-block128",
    "mxfp8",
    "nvfp4",
)


def tiny(config) -> dict:
    """Overrides that keep each configuration's proportions at a size a CPU compiles quickly."""
    return dict(
        vocab_size=1000,
        seq_len=32,
        heads=2,
        hidden_dim=max(32, config.hidden_dim // 16),
        intermediate_dim=max(32, config.intermediate_dim // 16),
    )


def device_info() -> dict:
    import jax
    import jaxlib
    import keras
    import keras_hub

    device = jax.devices()[0]
    info = {
        "platform": device.platform,
        "device_kind": getattr(device, "device_kind", "?"),
        "count": jax.device_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "keras": keras.__version__,
        "keras_hub": keras_hub.__version__,
        "python": sys.version.split()[0],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    capability = getattr(device, "compute_capability", None)
    if capability:
        info["compute_capability"] = str(capability)
    return info


def hlo_summary(text: str) -> dict:
    """The engine's matmul count (what each fp8 run records) plus raw mentions."""
    return {
        **compiled.count_matmuls(text),
        "cublas_f8_gemms": text.count(compiled.FP8_GEMM_TARGET),
        "cudnn_fusions": text.count("__cudnn$fusion"),
        "f8e4m3fn_mentions": len(re.findall(r"f8e4m3fn", text)),
        "f8e5m2_mentions": len(re.findall(r"f8e5m2", text)),
        "cublas_gemms_any": len(re.findall(r"__cublas\$(lt\$)?(matmul|gemm)", text)),
        "hlo_chars": len(text),
    }


def measure(config, precision, steps, warmup) -> tuple[dict, str]:
    """One model: a warm-up fit (compiles the step), the compiled step's matmuls, then the
    wall time of a fit over `steps` steps (same shapes). Returns (results, HLO text)."""
    from fp8demo import model as model_lib

    model = model_lib.compile(model_lib.build(config, precision), config)
    batch = config.batch_size
    x, y = _common.random_batch(config, batch * max(steps, warmup))
    warmup_seconds = _common.fit_seconds(model, x, y, batch, warmup)
    started = time.perf_counter()
    text = compiled.train_step_hlo(model, x[:batch], y[:batch])
    hlo = {
        **hlo_summary(text),
        "recipe": model_lib.scaling_recipe(model),
        "seconds": time.perf_counter() - started,
    }
    seconds = _common.fit_seconds(model, x, y, batch, steps)
    return {
        "precision": precision,
        "steps": steps,
        "seconds": seconds,
        "steps_per_sec": steps / seconds,
        "samples_per_sec": steps * batch / seconds,
        "warmup_seconds": warmup_seconds,
        "params": model_lib.count_params(model),
        "hlo": hlo,
    }, text


def write_hlo_archive(path: Path, texts: dict):
    """{file name: HLO text} as one .tar.gz (one file to carry back, compressed)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in texts.items():
            payload = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def fp8_gemms(measured: dict) -> str:
    """How a float8 step's matmuls ran: "20 of 29 FP8 GEMMs", "emulated (0 of 29)", an error."""
    found = measured.get("hlo", {})
    if "matmuls" not in found:
        return measured.get("error", "–")[:40]
    counted = f"{found['fp8_matmuls']} of {found['matmuls']}"
    if found.get("recipe") in compiled.EMULATED_RECIPES:
        return f"emulated ({counted})"
    if found.get("recipe") in compiled.BLOCK_SCALED_OPERANDS:
        return f"{counted} block-scaled GEMMs"
    return f"{counted} FP8 GEMMs"


def rows(label, point, precisions) -> list[tuple]:
    """Table rows of one configuration: per precision its steps/s, the ratio to bf16 and,
    for a float8 precision, how its matmuls ran."""
    bf16 = point.get("bf16", {}).get("steps_per_sec")
    out = []
    for precision in precisions:
        measured = point.get(precision, {})
        rate = measured.get("steps_per_sec")
        how = fp8_gemms(measured) if precision != "bf16" else measured.get("error", "")[:40]
        out.append(
            (
                label,
                _common.fmt(measured.get("params"), ",d"),
                precision,
                how,
                _common.fmt(rate, ".1f"),
                _common.fmt(rate / bf16 if bf16 and rate else None, ".2f")
                + ("×" if bf16 and rate else ""),
            )
        )
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for results.json and hlo.tar.gz")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU (logic test)")
    parser.add_argument("--tiny", action="store_true", help="small shapes (a CPU logic test)")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed steps per point (default 100; 10 with --tiny)",
    )
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help="comma-separated, from: " + ", ".join(CONFIGS)
    )
    parser.add_argument(
        "--precisions",
        default=",".join(PRECISIONS),
        help="comma-separated, bf16 first for the ratios; from: " + ", ".join(PRECISIONS),
    )
    args = parser.parse_args(argv)
    steps = args.steps or (10 if args.tiny else 100)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or not names:
        print(f"Unknown or no configuration in {args.configs!r}: choose from {', '.join(CONFIGS)}")
        return 2
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        print(
            f"Unknown or no precision in {args.precisions!r}: choose from {', '.join(PRECISIONS)}"
        )
        return 2

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import fp8demo.env  # noqa: F401  (KERAS_BACKEND=jax before keras loads)

    info = device_info()
    if "tensorflow" in sys.modules:  # keras-hub imports it where it is installed: not the GPU
        from fp8demo.env import tensorflow

        tensorflow()
    print(
        f"JAX {info['jax']}, keras {info['keras']}, keras-hub {info['keras_hub']}: "
        f"{info['count']} × {info['platform']} {info['device_kind']}"
        + (
            f", compute capability {info['compute_capability']}"
            if "compute_capability" in info
            else ""
        )
    )
    results = {
        "device": info,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "argv": sys.argv[1:],
        "configs": [],
    }
    if info["platform"] != "gpu":
        message = (
            f"JAX sees no GPU (platform: {info['platform']}). Run this on a machine with "
            "an NVIDIA GPU (check `nvidia-smi`) and a CUDA build of jaxlib "
            "(requirements-gpu.txt); JAX_PLATFORMS must not be 'cpu'."
        )
        if not args.allow_cpu:
            print("ERROR: " + message)
            results["error"] = message
            (out / "results.json").write_text(json.dumps(results, indent=2))
            return 3
        print(
            "WARNING: " + message + " Continuing on the CPU (--allow-cpu): no cuBLAS FP8 "
            "call can appear and the speeds say nothing about a GPU."
        )
    capability = info.get("compute_capability")
    if capability and float(capability) < 8.9:
        print(
            f"NOTE: compute capability {capability} < 8.9 has no FP8 tensor cores: expect no "
            f"{compiled.FP8_GEMM_TARGET} and no fp8 speed-up."
        )

    from fp8demo.config import preset

    print(
        f"\n== {', '.join(precisions)} per configuration: compiled step, then {steps} timed "
        f"steps after {args.warmup} warm-up steps"
    )
    texts, table_rows, failures = {}, [], 0
    for name in names:
        label, preset_name = CONFIGS[name]
        config = preset(preset_name)
        config = preset(preset_name, **tiny(config)) if args.tiny else config
        point = {
            "config": name,
            "label": label,
            "settings": {
                key: getattr(config, key)
                for key in (
                    "vocab_size",
                    "seq_len",
                    "hidden_dim",
                    "heads",
                    "intermediate_dim",
                    "batch_size",
                )
            },
        }
        for precision in precisions:
            try:
                point[precision], texts[f"{name}-{precision}.hlo.txt"] = measure(
                    config, precision, steps, args.warmup
                )
                found = point[precision]["hlo"]
                print(
                    f"  {label} {precision}: {point[precision]['steps_per_sec']:.1f} steps/s; "
                    f"compiled step: {found['fp8_matmuls']} FP8 GEMMs of {found['matmuls']} "
                    f"matmuls, {found['float8_values']} float8 values",
                    flush=True,
                )
            except Exception as e:  # an out-of-memory XL must not lose the other points
                traceback.print_exc()
                point[precision] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
                failures += 1
        point["verdicts"] = {}
        for precision in precisions:
            if precision == "bf16" or "hlo" not in point[precision]:
                continue
            found = {**point[precision]["hlo"], "backend": info["platform"]}
            point[precision]["runs_fp8_gemms"] = compiled.runs_fp8_gemms(found)
            point["verdicts"][precision] = compiled.verdict(found)
            print(f"  {label}, {precision} verdict: {point['verdicts'][precision]}", flush=True)
        results["configs"].append(point)
        table_rows += rows(label, point, precisions)
        results["tensorflow_imported"] = "tensorflow" in sys.modules
        (out / "results.json").write_text(json.dumps(results, indent=2))
        write_hlo_archive(out / "hlo.tar.gz", texts)

    print(
        "\n"
        + _common.table(
            ["config", "params", "precision", "matmuls", "steps/s", "/ bf16"],
            table_rows,
        )
    )
    print(
        "\nTensorFlow imported: "
        + (
            "yes (by keras-hub, which imports it where it is installed; its GPUs hidden)"
            if results["tensorflow_imported"]
            else "no"
        )
    )
    print(f"results written to {out / 'results.json'}, compiled steps to {out / 'hlo.tar.gz'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
