#!/usr/bin/env bash
# The GPU check as one call, from the working tree, on a GPU machine without network: Python
# with torch (CUDA), numpy and cuda-python (with NVRTC's library) is all it needs besides the
# wheels scripts/gpu_check_wheels.sh put in .whl/ beforehand (installed here with --no-index
# into a temporary folder; no build step: PYTHONPATH is the tree's toolkit/). Then
# scripts/gpu_check_preflight.py (imports, NVRTC, GPU) and benchmarks/gpu_check.py, which writes
# JSON + Markdown named after the card to OUTDIR. One line per step; exit 0 only if all passed
# (1: a step or a check failed; 3: no CUDA GPU, after everything up to it worked).
#   bash scripts/gpu_check.sh OUTDIR
# BINCAM_GPU_PYTHON: the Python to use (default python3); BINCAM_WHEELS: the wheel folder
# (default .whl). tests/test_gpu_check_script.py runs it here, where it stops at "no CUDA GPU".
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUTDIR=${1:?usage: scripts/gpu_check.sh OUTDIR}
PY=${BINCAM_GPU_PYTHON:-python3}
WHEELS=${BINCAM_WHEELS:-$ROOT/.whl}
step() { printf '%-4s %s\n' "$1" "$2"; }

version=$("$PY" -c 'import sys; print(sys.version.split()[0])') ||
  { step FAIL "python: $PY does not run"; exit 1; }
step ok "python $version ($(command -v "$PY" || echo "$PY"))"

SITE=$(mktemp -d "${TMPDIR:-/tmp}/bincam-gpu-check.XXXXXX")
trap 'rm -rf "$SITE"' EXIT
mapfile -t SPECS < <(grep -v '^\s*#' "$ROOT/scripts/gpu_check_wheels.txt" | grep -v '^\s*$')
if [ "${#SPECS[@]}" -gt 0 ] && ! log=$("$PY" -m pip install -q --disable-pip-version-check --no-index --find-links "$WHEELS" \
    --no-deps --no-compile --no-cache-dir --target "$SITE" "${SPECS[@]}" 2>&1); then
  step FAIL "wheels: pip install --no-index from $WHEELS failed (run scripts/gpu_check_wheels.sh \
where pip reaches PyPI, and bring .whl/ along): $(echo "$log" | grep -m1 -i error)"
  exit 1
fi
step ok "wheels: ${SPECS[*]} installed offline (--no-index) from $WHEELS"

export PYTHONPATH="$ROOT/toolkit:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" "$ROOT/scripts/gpu_check_preflight.py"
status=$?
[ "$status" -eq 0 ] || exit "$status"

mkdir -p "$OUTDIR"
"$PY" "$ROOT/benchmarks/gpu_check.py" --out "$OUTDIR"
status=$?
if [ "$status" -eq 0 ]; then
  step ok "gpu_check: every check passed; JSON + Markdown in $OUTDIR"
else
  step FAIL "gpu_check: exit status $status; JSON + Markdown in $OUTDIR"
fi
exit "$status"
