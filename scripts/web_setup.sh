#!/usr/bin/env bash
# Install what the browser test of examples/web needs: Debian's Chromium and the page's npm
# packages (onnxruntime-web, and playwright-core to drive Chromium). Idempotent; skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }
  else
    echo "web setup: install Chromium (Debian: apt-get install chromium) for the browser test" >&2
  fi
fi
if command -v npm >/dev/null; then
  (cd examples/web && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
else
  echo "web setup: install Node.js and npm for the browser test" >&2
fi
