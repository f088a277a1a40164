#!/usr/bin/env bash
# Set up (scripts/setup.sh; scripts/web_setup.sh for the browser test; scripts/serve_setup.sh for
# the Triton server tests; scripts/runtime_setup.sh for the torch-free install profile's test;
# scripts/emulation_setup.sh for the kernels' CPU emulation) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/web_setup.sh
bash scripts/serve_setup.sh
bash scripts/runtime_setup.sh
bash scripts/emulation_setup.sh
exec .venv/bin/python -m pytest -q "$@"
