#!/usr/bin/env bash
# Prove fp8 on a Hopper (or Ada) GPU: JAX sees the GPU, the fp8 training step compiles to
# cuBLASLt FP8 GEMMs (__cublas$lt$matmul$f8), and bf16 vs fp8 steps/s on the example model
# and larger presets. Needs only the project's GPU venv:
#     python3 -m venv .venv && .venv/bin/pip install -r requirements-gpu.txt
# Usage: benchmarks/gpu_check.sh OUT_DIR [extra gpu_check.py flags, e.g. --steps 200]
# Writes OUT_DIR/results.json, OUT_DIR/fp8_train_step.hlo.txt, OUT_DIR/nvidia-smi.txt, OUT_DIR/log.txt.
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: $0 OUT_DIR [gpu_check.py flags]" >&2
    exit 2
fi
OUT=$1; shift
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
mkdir -p "$OUT"
if ! [ -x "$PY" ]; then
    echo "No Python at $PY: create the venv with requirements-gpu.txt or set PYTHON=..." >&2
    exit 2
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
    nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv 2>/dev/null || true
else
    echo "nvidia-smi not found: no NVIDIA driver on this machine." | tee "$OUT/nvidia-smi.txt"
fi
# One JAX process on the GPU: let it use the memory it needs.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
export FP8DEMO_HOME=${FP8DEMO_HOME:-$(mktemp -d)}
cd "$ROOT"
set +e
"$PY" benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
status=${PIPESTATUS[0]}
set -e
exit "$status"
