#!/usr/bin/env bash
# Make .venv-serve, the torch-free serving environment `bincam serve` runs Triton's Python
# backend in: bincam without torch, ONNX Runtime, numpy < 2 (the nvidia-pytriton stub was built
# against the numpy 1 ABI) and the nvidia-pytriton wheel for its tritonserver binary (installed
# without its Python dependencies: only the server is used). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -e /usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0 ] && [ ! -e /usr/lib/aarch64-linux-gnu/libpython3.11.so.1.0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then  # the stub links the system libpython
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q libpython3.11 >/dev/null
  else
    echo "serve setup: install libpython3.11 (Debian: apt-get install libpython3.11)" >&2
  fi
fi
if [ ! -x .venv-serve/bin/python ]; then
  "$PY" -m venv .venv-serve
fi
.venv-serve/bin/python -m pip install -q --upgrade pip 2>/dev/null || true
.venv-serve/bin/python -m pip install -q -r requirements/serve.txt
.venv-serve/bin/python -m pip install -q --no-deps "nvidia-pytriton==0.7.0"
.venv-serve/bin/python -m pip install -q --no-deps -e .
