#!/usr/bin/env bash
# Prove fp8 on an NVIDIA GPU, then run there the tests that need neither TensorFlow nor a browser.
#   1. When the interpreter lacks keras or keras-hub (a GPU machine with its own JAX and no
#      network), installs the wheels in WHEELS (benchmarks/gpu_wheels.sh downloads them) into
#      a scratch folder on PYTHONPATH. Nothing imports TensorFlow.
#   2. benchmarks/gpu_check.py: FP8 GEMMs in the compiled training step and bf16 vs fp8 steps/s
#      for the example, Large and XL models.
#   3. pytest on the model, float8 state, compiled-step, probe, recipe and block-scale tests.
# Usage: benchmarks/gpu_check.sh OUT_DIR [gpu_check.py flags, e.g. --steps 200, --configs xl]
#        benchmarks/gpu_check.sh /tmp/x --allow-cpu --tiny   # the whole script on a CPU
# Environment: PYTHON (default .venv/bin/python, else python3), WHEELS (default .whl),
# CHECK_TIMEOUT and TESTS_TIMEOUT (seconds for parts 2 and 3), SKIP_TESTS=1.
# Writes to OUT_DIR: nvidia-smi.txt, log.txt (install and check), results.json, hlo.tar.gz,
# pytest.txt, junit.xml. Exit status: the check's if it failed, else pytest's.
set -uo pipefail
if [ $# -lt 1 ]; then
    echo "usage: $0 OUT_DIR [gpu_check.py flags]" >&2
    exit 2
fi
OUT=$1; shift
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    [ -x "$ROOT/.venv/bin/python" ] && PYTHON=$ROOT/.venv/bin/python
fi
WHEELS=${WHEELS:-$ROOT/.whl}
CHECK_TIMEOUT=${CHECK_TIMEOUT:-300}
TESTS_TIMEOUT=${TESTS_TIMEOUT:-240}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$ROOT"

main() {
    # -- 1. the machine and the packages -----------------------------------------------------
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
        nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv
    else
        echo "nvidia-smi not found: no NVIDIA driver on this machine." | tee "$OUT/nvidia-smi.txt"
    fi
    if ! "$PYTHON" -c "import keras, keras_hub" >/dev/null 2>&1; then
        if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
            echo "$PYTHON has no keras/keras-hub and $WHEELS holds no wheels:" \
                 "run benchmarks/gpu_wheels.sh where pip reaches PyPI and bring its folder." >&2
            return 2
        fi
        SITE=$(mktemp -d)/site
        echo "Installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE"
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "$WHEELS"/*.whl || return 2
        export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
    fi
    "$PYTHON" -c "import importlib.util as u, sys; print('Python', sys.version.split()[0], '|',
        'TensorFlow installed:', 'yes' if u.find_spec('tensorflow') else 'no')"
    # One JAX process at a time on the GPU: let it take the memory it needs, as it goes.
    export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
    export FP8DEMO_HOME=${FP8DEMO_HOME:-$(mktemp -d)}  # never the user's run store
    export PYTHONUNBUFFERED=1

    # -- 2. FP8 GEMMs and speed --------------------------------------------------------------
    echo "== benchmarks/gpu_check.py (at most ${CHECK_TIMEOUT} s)"
    timeout --kill-after=10 "$CHECK_TIMEOUT" "$PYTHON" benchmarks/gpu_check.py --out "$OUT" "$@"
    check=$?
    [ $check -eq 124 ] && echo "gpu_check.py ran past ${CHECK_TIMEOUT} s: results.json holds" \
        "the configurations it finished."

    # -- 3. the tests that need neither TensorFlow (IMDB data) nor a browser ---------------------
    tests=0
    if [ "${SKIP_TESTS:-0}" != 1 ]; then
        echo "== pytest (at most ${TESTS_TIMEOUT} s), output in pytest.txt"
        # The two deselected tests train on IMDB reviews through TensorFlow; no PostgreSQL there.
        timeout --kill-after=10 "$TESTS_TIMEOUT" "$PYTHON" -m pytest -q -rA -p no:cacheprovider \
            tests/test_model.py tests/test_fp8.py tests/test_compiled.py tests/test_probe.py \
            tests/test_recipes.py tests/test_block_scales.py tests/test_gemm_operands.py \
            tests/test_rowwise_gemm.py tests/test_block_scaled_gemm.py \
            --deselect tests/test_probe.py::test_training_records_probes_for_the_fp8_run \
            --deselect tests/test_probe.py::test_training_records_recipe_statistics_at_every_probe \
            -k "not postgresql" \
            --junitxml="$OUT/junit.xml" > "$OUT/pytest.txt" 2>&1
        tests=$?
        grep -E "^(PASSED|FAILED|ERROR) |passed|failed" "$OUT/pytest.txt" | tail -n 30
    fi
    [ $check -ne 0 ] && return $check
    return $tests
}

main "$@" 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
