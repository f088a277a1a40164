#!/usr/bin/env bash
# Set up, then the main job on the embedded default: synthesize 3,000 faces, train the small
# attribute classifier (unbalanced, 3 epochs at 112 px), show its model card, and explain four test
# faces with binary CAMs of all 40 attributes (overlays and grids in $OUT/cams), then audit it on
# the 300 test faces (bincam analyze: $OUT/audit/report.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-runs/demo}
rm -rf "$OUT"
.venv/bin/bincam data synth --out "$OUT/data" --n 3000 --seed 0 --workers 2
.venv/bin/bincam train --data "synth:$OUT/data" --out "$OUT/small-unbalanced" --arch small \
  --weighting none --epochs 3 --image-size 112
.venv/bin/bincam info "$OUT/small-unbalanced"
.venv/bin/bincam cam "$OUT/small-unbalanced" "$OUT"/data/celeba/img_align_celeba/00299{7,8,9}.jpg \
  "$OUT"/data/celeba/img_align_celeba/003000.jpg --out "$OUT/cams"
.venv/bin/bincam analyze --model small-unbalanced="$OUT/small-unbalanced" --data "synth:$OUT/data" \
  --out "$OUT/audit"
