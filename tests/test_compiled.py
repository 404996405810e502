"""What the compiled training step runs: counted from real optimized HLO on the backend the tests
run on (CPU or GPU), and from a GPU-shaped module for the FP8 GEMM paths the parser must
recognise wherever the tests run."""

import re

import numpy as np
from conftest import TINY, backend

from fp8demo import compiled
from fp8demo.config import TrainConfig

# The shapes XLA's GPU compiler prints: a cuBLASLt FP8 GEMM with its attributes on continuation
# lines, an ordinary cuBLAS GEMM, a bf16 dot, and a Triton GEMM fusion whose dot reads float8.
GPU_STYLE_HLO = """HloModule jit_train_step, \
entry_computation_layout={(bf16[16,32]{1,0})->f32[16,16]{1,0}}

%gemm_fusion (p0: f8e4m3fn[8,16], p1: f8e5m2[16,8]) -> bf16[8,8] {
  %p0 = f8e4m3fn[8,16]{1,0} parameter(0)
  %p1 = f8e5m2[16,8]{1,0} parameter(1)
  ROOT %dot.3 = bf16[8,8]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main (x: bf16[16,32], w: bf16[32,16], s: f32[]) -> f32[16,16] {
  %x = bf16[16,32]{1,0} parameter(0)
  %w = bf16[32,16]{1,0} parameter(1)
  %s = f32[] parameter(2)
  %xq = f8e4m3fn[16,32]{1,0} convert(%x)
  %wq = f8e4m3fn[16,32]{1,0} transpose(%w), dimensions={1,0}
  %cublas-gemm.1 = (f32[16,16]{1,0}, s8[33554432]{0}) custom-call(%xq, %wq, %s, %s),
    custom_call_target="__cublas$lt$matmul$f8",
    backend_config={
      "gemm_backend_config":{"alpha_real":1}
    }
  %gemm.2 = (bf16[16,16]{1,0}, s8[1024]{0}) custom-call(%x, %w), custom_call_target="__cublas$gemm"
  %dot.9 = bf16[16,16]{1,0} dot(%x, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %fusion.1 = bf16[8,8]{1,0} fusion(%xq, %wq), kind=kCustom, calls=%gemm_fusion
  ROOT %gte = f32[16,16]{1,0} get-tuple-element(%cublas-gemm.1), index=0
}
"""


def test_counts_fp8_gemms_in_a_gpu_style_module():
    found = compiled.count_matmuls(GPU_STYLE_HLO)
    assert found == {
        "matmuls": 4,
        "fp8_matmuls": 2,
        "float8_values": 4,
        "other_matmuls": {"__cublas$gemm": 1, "bf16": 1},
    }
    text = compiled.verdict({**found, "backend": "gpu"})
    assert text.startswith("2 of the 4 matmuls in the compiled training step run as FP8 GEMMs")
    assert "1 cuBLAS GEMM, 1 in bf16" in text
    assert compiled.headline(found) == "FP8 GEMMs: 2 of 4 matmuls on tensor cores"
    # Without the FP8 call and with the fusion reading bf16, the same module has none.
    plain = (
        GPU_STYLE_HLO.replace("$lt$matmul$f8", "$lt$matmul")
        .replace("f8e4m3fn[8,16]", "bf16[8,16]")
        .replace("f8e5m2[16,8]", "bf16[16,8]")
    )
    found = compiled.count_matmuls(plain)
    assert (found["matmuls"], found["fp8_matmuls"]) == (4, 0)
    gpu_text = compiled.verdict({**found, "backend": "gpu"})
    assert "XLA did not turn the quantize–dequantize pattern into FP8 GEMMs" in gpu_text
    assert "--xla_gpu_enable_triton_gemm=false" in gpu_text
    assert "not the speed" in gpu_text
    # XLA's excess-precision pass can remove every float8 rounding (jax 0.11 on an H200 did):
    # then the run is not fp8 at all, and the verdict says so.
    erased = re.sub(r"f8e4m3fn|f8e5m2", "bf16", plain)
    found = compiled.count_matmuls(erased)
    assert found["float8_values"] == 0
    text = compiled.verdict({**found, "backend": "gpu", "recipe": "delayed"})
    assert text.startswith("The compiled training step holds no float8 value")
    assert "this run's numbers are not fp8's" in text


def _fitted(precision):
    from fp8demo import model as model_lib

    config = TrainConfig(**TINY).validate()
    model = model_lib.compile(model_lib.build(config, precision), config)
    rng = np.random.default_rng(0)
    shape = (2 * config.batch_size, config.seq_len)
    x = rng.integers(2, config.vocab_size, size=shape, dtype=np.int32)
    y = rng.integers(0, 2, size=(2 * config.batch_size, 1)).astype(np.float32)
    model.fit(x, y, batch_size=config.batch_size, epochs=1, verbose=0)
    return model, x[: config.batch_size], y[: config.batch_size]


def test_real_fp8_step_and_its_verdict_on_this_backend():
    model, x, y = _fitted("fp8")
    text = compiled.train_step_hlo(model, x, y)
    found = compiled.inspect(model, x, y)  # the same executable, from JAX's cache
    assert "error" not in found and found["backend"] == backend()
    # The parser on this backend's real HLO: every `dot` and GEMM library call, counted once.
    calls = {
        target: text.count(f'custom_call_target="{target}"')
        for target in ("__cublas$gemm", "__cublas$lt$matmul", compiled.FP8_GEMM_TARGET)
    }
    assert found["matmuls"] == len(re.findall(r"\sdot\(", text)) + sum(calls.values()) > 0
    assert found["fp8_matmuls"] >= calls[compiled.FP8_GEMM_TARGET]
    for target in ("__cublas$gemm", "__cublas$lt$matmul"):
        assert found["other_matmuls"].get(target, 0) == calls[target]
    bf16_model, x, y = _fitted("bf16")
    bf16 = compiled.inspect(bf16_model, x, y)
    assert bf16["float8_values"] == bf16["fp8_matmuls"] == 0
    text = compiled.verdict(found)
    if backend() == "cpu":
        # 8 float8 layers: each quantizes inputs and kernel forward, the output gradient backward.
        assert found["float8_values"] >= 8 * 3
        assert found["fp8_matmuls"] == 0 and found["matmuls"] >= 8 * 3
        assert set(found["other_matmuls"]) <= {"f32", "bf16", "bf16/f32"}
        assert text.startswith(f"None of the {found['matmuls']} matmuls") and "this CPU" in text
        assert bf16["matmuls"] == found["matmuls"]
        return
    # On a GPU, XLA decides: FP8 GEMMs where it matched the quantize-dequantize pattern, else
    # float8 rounding around higher-precision GEMMs. The verdict counts them or says why not.
    assert found["float8_values"] > 0  # FP8 GEMM operands or rounding: float8 tensors either way
    assert 0 <= found["fp8_matmuls"] <= found["matmuls"]
    if found["fp8_matmuls"]:
        assert text.startswith(
            f"{found['fp8_matmuls']} of the {found['matmuls']} matmuls in the "
            "compiled training step run as FP8 GEMMs"
        )
        assert compiled.headline(found).endswith("on tensor cores")
    else:
        assert text.startswith(f"None of the {found['matmuls']} matmuls")
        assert "XLA did not turn the quantize–dequantize pattern into FP8 GEMMs" in text


def test_inspection_failure_is_reported_not_raised():
    found = compiled.inspect(object(), np.zeros((2, 4), np.int32), np.zeros((2, 1), np.float32))
    assert found["error"].startswith("AttributeError")
    assert compiled.headline(found) is None
    assert compiled.verdict(found).startswith("The compiled training step could not be inspected")
    assert compiled.verdict(None).startswith("The compiled training step has not been inspected")


# jax.nn.scaled_matmul as XLA compiles it on a Blackwell GPU: a cuDNN fusion of E4M3 values
# and E8M0 scales whose computation dequantizes and holds the dot.
BLOCK_SCALED_HLO = """HloModule jit_train_step

%block_scaled_dot (lhs: f8e4m3fn[1,64,32], rhs: f8e4m3fn[1,16,32], ls: f8e8m0fnu[1,64,1], \
rs: f8e8m0fnu[1,16,1]) -> f32[1,64,16] {
  %lhs = f8e4m3fn[1,64,32]{2,1,0} parameter(0)
  %rhs = f8e4m3fn[1,16,32]{2,1,0} parameter(1)
  %ls = f8e8m0fnu[1,64,1]{2,1,0} parameter(2)
  %rs = f8e8m0fnu[1,16,1]{2,1,0} parameter(3)
  %a = f32[1,64,32]{2,1,0} convert(%lhs)
  %b = f32[1,16,32]{2,1,0} convert(%rhs)
  ROOT %dot.1 = f32[1,64,16]{2,1,0} dot(%a, %b), lhs_batch_dims={0}, rhs_batch_dims={0}
}

ENTRY %main (x: bf16[64,32], w: bf16[16,32]) -> f32[1,64,16] {
  %x = bf16[64,32]{1,0} parameter(0)
  %w = bf16[16,32]{1,0} parameter(1)
  %xq = f8e4m3fn[1,64,32]{2,1,0} convert(%x)
  %wq = f8e4m3fn[1,16,32]{2,1,0} convert(%w)
  %xs = f8e8m0fnu[1,64,1]{2,1,0} constant({...})
  %ws = f8e8m0fnu[1,16,1]{2,1,0} constant({...})
  %dot.2 = bf16[64,16]{1,0} dot(%x, %w), lhs_contracting_dims={1}, rhs_contracting_dims={1}
  ROOT %fusion.3 = f32[1,64,16]{2,1,0} fusion(%xq, %wq, %xs, %ws), kind=kCustom, \
calls=%block_scaled_dot, backend_config={"operation_queue_id":"0",\
"fusion_backend_config":{"kind":"__cudnn$fusion"}}
}
"""


def test_counts_a_cudnn_block_scaled_gemm_once():
    """The fusion is one block-scaled GEMM of float8 operands; the dot inside it is not
    counted again, nor are its computation's parameters as float8 values."""
    found = compiled.count_matmuls(BLOCK_SCALED_HLO)
    assert found == {
        "matmuls": 2,
        "fp8_matmuls": 1,
        "float8_values": 2,
        "other_matmuls": {"bf16": 1},
    }
    text = compiled.verdict({**found, "backend": "gpu", "recipe": "mxfp8"})
    assert text.startswith("1 of the 2 matmuls in the compiled training step run as block-scaled")
    # Reading bf16 values instead, the same fusion is no low-precision GEMM.
    plain = BLOCK_SCALED_HLO.replace(
        "f8e4m3fn[1,64,32]{2,1,0} convert", "bf16[1,64,32]{2,1,0} convert"
    )
    plain = plain.replace("f8e4m3fn[1,16,32]{2,1,0} convert", "bf16[1,16,32]{2,1,0} convert")
    assert compiled.count_matmuls(plain)["fp8_matmuls"] == 0
