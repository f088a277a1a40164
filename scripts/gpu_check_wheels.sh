#!/usr/bin/env bash
# Download the wheels scripts/gpu_check.sh installs offline (scripts/gpu_check_wheels.txt) into
# .whl/ (ignored by git), on a machine whose pip reaches PyPI: for CPython 3.12 on x86-64 Linux
# (the GPU machines' Python) and for this machine's Python. Idempotent.
#   bash scripts/gpu_check_wheels.sh [WHEEL_DIR]        (PYTHON: the pip to use, default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=${1:-.whl}
mkdir -p "$DEST"
mapfile -t SPECS < <(grep -v '^\s*#' scripts/gpu_check_wheels.txt | grep -v '^\s*$')
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64)
HERE=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
for version in $( ((${#SPECS[@]})) && printf '%s\n' 3.12 "$HERE" | sort -u); do
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$version" --implementation cp "${PLATFORMS[@]}" -d "$DEST" "${SPECS[@]}"
done
echo "gpu_check wheels in $DEST: $(ls "$DEST" | grep -c '\.whl$') files for ${#SPECS[@]} requirement(s)"
