#!/usr/bin/env bash
# Install what the CPU emulation of the CUDA kernels (tests/test_kernel_emulation.py) needs: a
# C++20 compiler with AddressSanitizer, UBSan and ThreadSanitizer (Debian's g++ ≥ 11 brings
# libasan, libubsan and libtsan). Idempotent; skips what is there.
set -euo pipefail
if ! command -v "${CXX:-g++}" >/dev/null && ! command -v clang++ >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q g++ >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q g++ >/dev/null; }
  else
    echo "emulation setup: install a C++ compiler (Debian: apt-get install g++) for the kernel emulation tests" >&2
  fi
fi
