#!/usr/bin/env bash
# Make .venv-runtime: bincam's runtime install profile (`pip install bincam`, no PyTorch) in a
# clean environment, as a deployment would have it. tests/test_runtime_profile.py explains and
# audits an exported ONNX file with it. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv-runtime/bin/python ]; then
  "$PY" -m venv .venv-runtime
fi
.venv-runtime/bin/python -m pip install -q --upgrade pip 2>/dev/null || true
.venv-runtime/bin/python -m pip install -q -e .
if .venv-runtime/bin/python -c "import torch" 2>/dev/null; then
  echo "runtime setup: torch is installed in .venv-runtime; it must not be" >&2
  exit 1
fi
