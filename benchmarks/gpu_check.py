"""Prove fp8 on a GPU: does XLA emit FP8 GEMMs for the example model, and is fp8 faster?

1. Confirms JAX sees a GPU (else says so and exits 3; --allow-cpu runs the logic on the CPU
   for testing, where no cuBLAS call can appear).
2. Builds the example model, model.quantize("float8"), and compiles one training step the
   way Keras' fit does (jax.jit of model.train_step on the full training state); writes the
   optimized HLO and counts `__cublas$lt$matmul$f8` custom calls and f8e4m3fn / f8e5m2 ops.
3. Measures bf16 vs fp8 training steps/s on the example config and larger presets
   (fp8demo.config.PRESETS "Large (hidden 1024)", "XL (hidden 4096)"): a warm-up fit
   (compilation), then the wall time of a fit over --steps steps on random token ids.
4. Prints a table and writes results.json (+ the HLO text) to --out.

    .venv/bin/python benchmarks/gpu_check.py --out OUT_DIR
    .venv/bin/python benchmarks/gpu_check.py --out /tmp/x --allow-cpu --tiny   # logic test on a CPU
"""

import argparse
import json
import os
import re
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from fp8demo import compiled  # noqa: E402  (no jax at import: fp8demo.env still goes first)

CUBLAS_F8 = compiled.FP8_GEMM_TARGET
CONFIGS = {  # name → (preset, overrides)
    "example (hidden 32)": ("Keras example", {}),
    "Large (hidden 1024)": ("Large (hidden 1024)", {}),
    "XL (hidden 4096)": ("XL (hidden 4096)", {}),
}
TINY = dict(vocab_size=1000, seq_len=32, hidden_dim=32, heads=2, intermediate_dim=32)


def device_info() -> dict:
    import jax

    device = jax.devices()[0]
    info = {"platform": device.platform, "device_kind": getattr(device, "device_kind", "?"),
            "count": jax.device_count(), "jax": jax.__version__}
    capability = getattr(device, "compute_capability", None)
    if capability:
        info["compute_capability"] = str(capability)
    return info


def build(config, precision):
    from fp8demo import model as model_lib

    return model_lib.compile(model_lib.build(config, precision), config)


def random_batch(config, n, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.integers(2, config.vocab_size, size=(n, config.seq_len), dtype=np.int32)
    y = rng.integers(0, 2, size=(n, 1)).astype(np.float32)
    return x, y


def train_step_hlo(config, precision="fp8") -> str:
    """Optimized HLO of one training step, compiled as Keras' fit compiles it."""
    model = build(config, precision)
    x, y = random_batch(config, config.batch_size)
    model.fit(x, y, batch_size=config.batch_size, epochs=1, verbose=0)  # builds optimizer, metrics
    return compiled.train_step_hlo(model, x, y)


def hlo_summary(text: str) -> dict:
    """The engine's matmul count (what each fp8 run records) plus raw mentions."""
    return {
        **compiled.count_matmuls(text),
        "cublas_f8_gemms": text.count(CUBLAS_F8),
        "f8e4m3fn_mentions": len(re.findall(r"f8e4m3fn", text)),
        "f8e5m2_mentions": len(re.findall(r"f8e5m2", text)),
        "cublas_gemms_any": len(re.findall(r"__cublas\$(lt\$)?(matmul|gemm)", text)),
        "hlo_chars": len(text),
    }


def throughput(config, precision, steps, warmup) -> dict:
    """Steps/s: wall time of one fit over `steps` steps after a warm-up fit (same shapes)."""
    model = build(config, precision)
    x, y = random_batch(config, config.batch_size * max(steps, warmup))
    t = time.perf_counter()
    model.fit(x[: config.batch_size * warmup], y[: config.batch_size * warmup],
              batch_size=config.batch_size, epochs=1, verbose=0, shuffle=False)
    warmup_s = time.perf_counter() - t
    t = time.perf_counter()
    model.fit(x[: config.batch_size * steps], y[: config.batch_size * steps],
              batch_size=config.batch_size, epochs=1, verbose=0, shuffle=False)
    seconds = time.perf_counter() - t  # fit returns after the state is back on the host side
    from fp8demo import model as model_lib

    return {"precision": precision, "steps": steps, "seconds": seconds,
            "steps_per_sec": steps / seconds, "samples_per_sec": steps * config.batch_size / seconds,
            "warmup_seconds": warmup_s, "params": model_lib.count_params(model)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for results.json and the HLO text")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU (logic test)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and one config (CPU test)")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per point")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help="comma-separated names from: " + ", ".join(CONFIGS))
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import fp8demo.env  # noqa: F401  (hides the GPU from TensorFlow; JAX keeps it)
    from fp8demo.env import tensorflow

    tensorflow()
    info = device_info()
    print(f"JAX {info['jax']}: {info['count']} × {info['platform']} {info['device_kind']}"
          + (f", compute capability {info['compute_capability']}" if "compute_capability" in info else ""))
    results = {"device": info, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[1:]}
    if info["platform"] != "gpu":
        message = ("JAX sees no GPU (platform: %s). Install the GPU requirements "
                   "(pip install -r requirements-gpu.txt) on a machine with an NVIDIA GPU and "
                   "check `nvidia-smi`; JAX_PLATFORMS must not be 'cpu'." % info["platform"])
        if not args.allow_cpu:
            print("ERROR: " + message)
            results["error"] = message
            (out / "results.json").write_text(json.dumps(results, indent=2))
            return 3
        print("WARNING: " + message + " Continuing on the CPU (--allow-cpu): no cuBLAS FP8 "
              "call can appear and the speeds say nothing about a GPU.")
    cc = info.get("compute_capability")
    if cc and float(cc) < 8.9:
        print(f"NOTE: compute capability {cc} < 8.9 has no FP8 tensor cores: expect no "
              f"{CUBLAS_F8} and no fp8 speed-up.")

    from fp8demo.config import preset

    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        print(f"Unknown config(s) {unknown}; choose from {list(CONFIGS)}")
        return 2
    if args.tiny:
        names = names[:1]

    def config_for(name):
        base, overrides = CONFIGS[name]
        return preset(base, **overrides, **(TINY if args.tiny else {}))

    # -- 1. the compiled fp8 training step --------------------------------------------------
    print(f"\n== fp8 training step of the example model: optimized HLO")
    try:
        text = train_step_hlo(config_for(names[0]))
        (out / "fp8_train_step.hlo.txt").write_text(text)
        summary = hlo_summary(text)
        results["hlo"] = summary
        print(f"{CUBLAS_F8} custom calls: {summary['cublas_f8_gemms']}; f8e4m3fn mentions: "
              f"{summary['f8e4m3fn_mentions']}; f8e5m2: {summary['f8e5m2_mentions']}; "
              f"all cuBLAS GEMMs: {summary['cublas_gemms_any']} (HLO in {out / 'fp8_train_step.hlo.txt'})")
        results["fp8_gemms_on_tensor_cores"] = summary["fp8_matmuls"] > 0
        print("FP8 GEMMs through cuBLASLt: " + ("YES" if summary["cublas_f8_gemms"] else "NO"))
        print(compiled.verdict({**summary, "backend": info["platform"]}))
    except Exception as e:  # keep going to the throughput part
        traceback.print_exc()
        results["hlo"] = {"error": f"{type(e).__name__}: {e}"}

    # -- 2. bf16 vs fp8 throughput -------------------------------------------------------------
    print(f"\n== bf16 vs fp8 training throughput ({args.steps} steps after {args.warmup} warm-up)")
    rows, results["throughput"] = [], []
    for name in names:
        config = config_for(name)
        point = {"config": name, "settings": {k: getattr(config, k) for k in (
            "vocab_size", "seq_len", "hidden_dim", "heads", "intermediate_dim", "batch_size")}}
        for precision in ("bf16", "fp8"):
            try:
                point[precision] = throughput(config, precision, args.steps, args.warmup)
                print(f"  {name} {precision}: {point[precision]['steps_per_sec']:.1f} steps/s", flush=True)
            except Exception as e:
                traceback.print_exc()
                point[precision] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        results["throughput"].append(point)
        b, f = point["bf16"].get("steps_per_sec"), point["fp8"].get("steps_per_sec")
        rows.append((name, _common.fmt(point["bf16"].get("params") or point["fp8"].get("params"), ",d"),
                     _common.fmt(b, ".1f"), _common.fmt(f, ".1f"),
                     _common.fmt(f / b if b and f else None, ".2f") + ("×" if b and f else "")))
        (out / "results.json").write_text(json.dumps(results, indent=2))
    print("\n" + _common.table(["config", "params", "bf16 steps/s", "fp8 steps/s", "fp8 / bf16"], rows))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nresults written to {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
