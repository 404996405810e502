#!/usr/bin/env bash
# Create .venv and install the pinned requirements (GPU wheels only where a GPU exists).
# Usage: scripts/setup.sh [requirements file]   (default: requirements.txt or -gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ $# -ge 1 ]; then
  requirements="$1"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  requirements=requirements-gpu.txt
else
  requirements=requirements.txt
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# Reinstall only when the requirements changed.
stamp=".venv/.installed-$(cat requirements*.txt | sha256sum | cut -c1-16)-$requirements"
if [ ! -e "$stamp" ]; then
  echo "Installing $requirements into .venv …"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"
  touch "$stamp"
fi
