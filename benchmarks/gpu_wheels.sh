#!/usr/bin/env bash
# Download, here, the wheels that benchmarks/gpu_check.sh installs on a GPU machine that has
# JAX, numpy, h5py and pytest but no keras, keras-hub and no network. TensorFlow is not among
# them (too large to carry): the GPU check and the tests it runs never import it.
# The versions are those of requirements.txt; the others are what keras and keras-hub import.
# Usage: benchmarks/gpu_wheels.sh [DEST]          (DEST defaults to .whl, ignored by git)
#        PY_VERSION=3.11 benchmarks/gpu_wheels.sh /tmp/whl311   # for another Python
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${1:-$ROOT/.whl}
PY_VERSION=${PY_VERSION:-3.12}  # the GPU machine's python3
PIP=${PIP:-python3 -m pip}
WHEELS=(
    keras==3.15.1
    keras-hub==0.32.0
    namex==0.1.0
    optree==0.20.0
    kagglehub==1.0.2  # keras-hub pins kagglesdk 0.1.28; newer kagglehub wants a newer one
    kagglesdk==0.1.28
)
mkdir -p "$DEST"
# One version of each package: pip refuses an install that names two.
rm -f "$DEST"/*.whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    platforms+=(--platform "$p")
done
$PIP download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
    --implementation cp "${platforms[@]}" -d "$DEST" "${WHEELS[@]}"
ls -l "$DEST"
du -sh "$DEST"
