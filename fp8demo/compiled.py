"""What the compiled training step really runs: FP8 GEMMs, or float8 rounding around bf16/f32 ones.

Keras' float8 layers quantize and dequantize around ordinary matmuls (E4M3 inputs and kernel,
E5M2 output gradients). Only the compiler can turn that pattern into FP8 tensor-core GEMMs
(on Hopper/Ada GPUs, cuBLASLt's `__cublas$lt$matmul$f8`); on a CPU, or when the pattern is not
matched, the values are rounded to float8 and multiplied in bf16/f32: the numerics change,
the speed does not. So instead of inferring a speed-up from the device, each fp8 run reads its
own optimized HLO and counts.

Scaling recipes (model.use_recipe) differ here. XLA's rewrite needs one scalar scale per
operand: per-tensor current scaling ("current") emits Keras' pattern and may be matched, and
the count decides. So it does for "rowwise" (model.F8_GEMM_RECIPES), whose GEMMs multiply the
float8 values themselves and scale the output after, and for "mxfp8" and "nvfp4"
(model.BLOCK_SCALED_GEMM_RECIPES), whose GEMMs are jax.nn.scaled_matmul's block-scaled GEMMs:
cuDNN fusions on a Blackwell GPU, elsewhere their definition in higher precision, and the
verdict says why. The other per-row and per-block scales ("rowwise-gw-hp", "block128")
multiply each value by its own scale before the matmul, so these recipes are emulated, and
their verdict never suggests FP8 GEMMs, whatever float8 conversions the step holds.
"""

import re
import time

from fp8demo.model import (
    BLOCK_SCALED_GEMM_RECIPES,
    F8_GEMM_RECIPES,
    block_scaled_gemm_support,
    scaling_recipe,
)

FP8_GEMM_TARGET = "__cublas$lt$matmul$f8"
# Float8 element types and NVFP4's float4 (its quantize steps and block-scaled GEMMs count
# alike: low-precision values).
FLOAT8_TYPES = (
    "f8e4m3fn", "f8e5m2", "f8e4m3fnuz", "f8e5m2fnuz", "f8e4m3", "f8e4m3b11fnuz", "f4e2m1fn",
)  # fmt: skip
# XLA turns jax.nn.scaled_matmul's custom call into a cuDNN fusion on Blackwell GPUs.
_CUDNN_FUSION = '"kind":"__cudnn$fusion"'

# One HLO instruction: "%name = type[dims]{layout} opcode(operands), attributes"
# (tuple-typed results start with "(").
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\(?[a-z][a-z0-9]*)[\[\s(]")
_OPCODE = re.compile(r"\]\S*\s+([a-z][a-z\-]*)\(|\)\s+([a-z][a-z\-]*)\(")
# A computation's header ("%fused (p: f32[]) -> f32[] {", "ENTRY main {") or closing brace.
_COMPUTATION_EDGE = re.compile(
    r"^(\s*ENTRY\b|\s*HloModule\b|\s*%?[\w.\-]+\s*\(.*->.*\{\s*$|\}|\s*\w+\s*\{\s*$)"
)
_COMPUTATION_NAME = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_CALL_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_GEMM_TARGETS = ("__cublas$gemm", "__cublas$lt$matmul", FP8_GEMM_TARGET)
# Recipes whose scales vary within an operand, by what one scale covers: emulated everywhere.
EMULATED_RECIPES = {
    "rowwise-gw-hp": "one scale per row",
    "block128": "one power-of-two scale per 128-value tile",
}
# The block-scaled GEMMs' operands: (values, what one scale covers).
BLOCK_SCALED_OPERANDS = {
    "mxfp8": ("E4M3", "one E8M0 scale per 32 values"),
    "nvfp4": ("E2M1", "one E4M3 scale per 16 values and an FP32 scale per tensor"),
}


def train_step_hlo(model, x_batch, y_batch) -> str:
    """Optimized HLO text of `model`'s training step on one batch, compiled as Keras' fit does.

    Called right after `fit` with a batch of the fit's shape, JAX's in-memory caches return
    the executable fit compiled (milliseconds); otherwise this compiles it once more.
    """
    return lower_train_step(model, x_batch, y_batch).compile().as_text()


def lower_train_step(model, x_batch, y_batch):
    """`model`'s training step on one batch, traced and lowered as Keras' fit does (a jax
    Lowered): its `as_text()` is StableHLO before XLA's optimizations, alike on every backend."""
    import jax  # lazy: jax loads in ~3 s
    import jax.numpy as jnp

    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in model.optimizer.variables],
        [v.value for v in model.metrics_variables],
    )
    return jax.jit(model.train_step, donate_argnums=0).lower(
        state, (jnp.asarray(x_batch), jnp.asarray(y_batch))
    )


def _instructions(hlo: str):
    """(name, result element type, full text, computation) per HLO instruction; attributes
    printed on continuation lines are joined to their instruction."""
    current, computation = None, ""
    for line in hlo.splitlines():
        match = _INSTRUCTION.match(line)
        if match:
            if current:
                yield current
            current = [match.group(1), match.group(2).lstrip("("), line, computation]
        elif current and line.strip() and not _COMPUTATION_EDGE.match(line):
            current[2] += " " + line.strip()
        else:
            if current:
                yield current
                current = None
            header = _COMPUTATION_NAME.match(line)
            if header and line.rstrip().endswith("{"):
                computation = header.group(1)
            elif line.strip() == "}":
                computation = ""
    if current:
        yield current


def count_matmuls(hlo: str) -> dict:
    """Matmuls in an optimized HLO module, by how they run.

    fp8_matmuls: cuBLASLt FP8 GEMM calls, cuDNN fusions of float8 (float4) operands (block-
    scaled GEMMs) and `dot`s whose operands are float8 (e.g. Triton GEMM fusions); other
    matmuls are grouped by operand types (`dot`) or GEMM library call; a cuDNN fusion's own
    `dot` is not counted again. float8_values: instructions that produce a float8 (float4)
    tensor (the quantize steps).
    """
    instructions = list(_instructions(hlo))
    types = {name: dtype for name, dtype, _, _ in instructions}
    # What a cuDNN fusion computes is its GEMM: counted once, by the fusion.
    fused = {
        c for _, _, text, _ in instructions if _CUDNN_FUSION in text for c in _CALLS.findall(text)
    }
    fp8_matmuls, others, float8_values = 0, {}, 0
    for _name, dtype, text, computation in instructions:
        if computation in fused:
            continue
        if dtype in FLOAT8_TYPES:
            float8_values += 1
        opcode = _OPCODE.search(text)
        opcode = (opcode.group(1) or opcode.group(2)) if opcode else ""
        if opcode == "fusion" and _CUDNN_FUSION in text:
            operands = re.findall(r"%([\w.\-]+)", text[text.index(" fusion(") :].split(")")[0])
            if any(types.get(operand) in FLOAT8_TYPES for operand in operands):
                fp8_matmuls += 1
        elif opcode == "custom-call":
            target = _CALL_TARGET.search(text)
            target = target.group(1) if target else ""
            if target == FP8_GEMM_TARGET:
                fp8_matmuls += 1
            elif target in _GEMM_TARGETS:
                others[target] = others.get(target, 0) + 1
        elif opcode == "dot":
            operands = text[text.index(" dot(") + 5 :].split(")")[0]
            names = (
                re.findall(r"%([\w.\-]+)", operands)
                if "%" in operands
                else [operand.strip() for operand in operands.split(",")]
            )
            operand_types = sorted({types.get(operand, "?") for operand in names})
            if any(t in FLOAT8_TYPES for t in operand_types):
                fp8_matmuls += 1
            else:
                key = "/".join(operand_types)
                others[key] = others.get(key, 0) + 1
    return {
        "matmuls": fp8_matmuls + sum(others.values()),
        "fp8_matmuls": fp8_matmuls,
        "other_matmuls": others,
        "float8_values": float8_values,
    }


def inspect(model, x_batch, y_batch) -> dict:
    """count_matmuls of the model's compiled training step, with the backend, the scaling
    recipe of its float8 layers and the time taken; {"error": ...} instead of raising (an
    inspection must never end a training run)."""
    import jax  # lazy: jax loads in seconds; the dashboard imports this module

    started = time.perf_counter()
    try:
        found = count_matmuls(train_step_hlo(model, x_batch, y_batch))
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"[:500]}
    recipe = scaling_recipe(model)
    if recipe in BLOCK_SCALED_GEMM_RECIPES and not block_scaled_gemm_support()[0]:
        found["no_block_scaled_gemm"] = block_scaled_gemm_support()[1]
    return {
        **found,
        "backend": jax.devices()[0].platform,
        "recipe": recipe,
        "seconds": round(time.perf_counter() - started, 3),
    }


_LIBRARY_CALLS = {"__cublas$gemm": "cuBLAS", "__cublas$lt$matmul": "cuBLASLt"}


def _describe_others(others: dict) -> str:
    """{"f32": 29, "__cublas$gemm": 2} → "29 in f32, 2 cuBLAS GEMMs"."""
    parts = []
    for kind, n in sorted(others.items(), key=lambda item: -item[1]):
        if kind in _LIBRARY_CALLS:
            parts.append(f"{n} {_LIBRARY_CALLS[kind]} GEMM{'s' if n > 1 else ''}")
        else:
            parts.append(f"{n} in {kind.replace('/', ' × ')}")
    return ", ".join(parts)


def runs_fp8_gemms(found: dict | None) -> bool:
    """Whether an inspected step counts FP8 GEMMs that its recipe really computes with
    (never for an emulated recipe)."""
    return bool(
        found
        and "error" not in found
        and found["fp8_matmuls"]
        and found.get("recipe") not in EMULATED_RECIPES
    )


def headline(found: dict | None) -> str | None:
    """A few words for a run card, e.g. "FP8 GEMMs: 20 of 29 matmuls on tensor cores"."""
    if not found or "error" in found:
        return None
    fp8, total = found["fp8_matmuls"], found["matmuls"]
    if found.get("recipe") in EMULATED_RECIPES:
        return f"{found['recipe']} scaling emulated (numerics, not speed)"
    if found.get("recipe") in BLOCK_SCALED_OPERANDS:
        if fp8:
            return f"{found['recipe']} block-scaled GEMMs: {fp8} of {total} matmuls on tensor cores"
        return f"{found['recipe']} block-scaled GEMMs emulated (numerics, not speed)"
    return f"FP8 GEMMs: {fp8} of {total} matmuls" + (
        " on tensor cores" if fp8 else " (fp8 simulated: numerics, not speed)"
    )


def verdict(found: dict | None) -> str:
    """One plain sentence: does this run's fp8 use FP8 GEMMs, and what does that mean for speed?"""
    if not found:
        return (
            "The compiled training step has not been inspected: it is read once the fit "
            "ends, and this run holds no record of it."
        )
    if "error" in found:
        return f"The compiled training step could not be inspected: {found['error']}"
    total, fp8 = found["matmuls"], found["fp8_matmuls"]
    others = _describe_others(found["other_matmuls"])
    recipe = found.get("recipe")
    if found.get("float8_values") == 0:
        return (
            f"The compiled training step holds no float8 value: XLA removed every float8 "
            f"rounding as excess precision, so all {total} matmuls ({others}) and the values "
            "around them stay in higher precision and this run's numbers are not fp8's. "
            "fp8demo sets XLA_FLAGS=--xla_allow_excess_precision=false on an NVIDIA GPU "
            "unless XLA_FLAGS already names that flag."
        )
    if recipe in EMULATED_RECIPES:
        operands = (
            f"{fp8} of the {total} matmuls take float8 operands, but the scales are applied "
            "around them"
            if fp8
            else f"all {total} matmuls run in higher precision ({others})"
        )
        return (
            f"The {recipe} recipe is emulated: it scales with {EMULATED_RECIPES[recipe]}, which "
            "XLA's FP8 GEMM rewrite (one scalar scale per operand) does not take, so the values "
            f"are rounded to float8 ({found['float8_values']} float8 conversions) and "
            f"{operands}. It shows the recipe's numerics; no FP8 speed-up is counted for it."
        )
    if recipe in BLOCK_SCALED_OPERANDS:
        values, scope = BLOCK_SCALED_OPERANDS[recipe]
        if fp8:
            return (
                f"{fp8} of the {total} matmuls in the compiled training step run as "
                f"block-scaled GEMMs (cuDNN: {values} values with {scope}, on tensor cores); "
                f"the rest ({others or 'none'}) run in higher precision."
            )
        why = found.get("no_block_scaled_gemm") or (
            f"this {str(found.get('backend', 'device')).upper()} has no block-scaled GEMM"
        )
        return (
            f"The {recipe} recipe's GEMMs are block-scaled GEMMs (jax.nn.scaled_matmul: "
            f"{values} values with {scope}), but {why}, so their definition runs instead: "
            f"the values times their block scales, multiplied in higher precision ({others}; "
            f"{found['float8_values']} float8/float4 conversions). It shows the recipe's "
            "numerics; no speed-up is counted for it."
        )
    if fp8:
        return (
            f"{fp8} of the {total} matmuls in the compiled training step run as FP8 GEMMs "
            f"(float8 operands on tensor cores); the rest ({others or 'none'}) run in higher "
            "precision — Keras quantizes the Dense and EinsumDense layers, not the attention's "
            "score and value products."
        )
    if found.get("backend") == "cpu":
        where = "this CPU has no FP8 matmul"
    elif recipe in F8_GEMM_RECIPES:
        where = "XLA multiplies the float8 values in higher precision on this device"
    else:
        where = (
            "XLA did not turn the quantize–dequantize pattern into FP8 GEMMs on this device "
            "(its Triton GEMM fusion takes the matmuls first unless XLA_FLAGS has "
            "--xla_gpu_enable_triton_gemm=false, which fp8demo sets on an NVIDIA GPU)"
        )
    formats = "E4M3" if recipe in F8_GEMM_RECIPES else "E4M3/E5M2"
    return (
        f"None of the {total} matmuls in the compiled training step runs in FP8: {where}. "
        f"The values are rounded to {formats} ({found['float8_values']} float8 conversions) "
        f"and multiplied in higher precision ({others}), so fp8 here changes the numerics, "
        "not the speed."
    )
