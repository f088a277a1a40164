#!/usr/bin/env bash
# Set up, then the main job on the embedded default: synthesize 3,000 faces and train the small
# attribute classifier (unbalanced, 3 epochs at 112 px), then show its model card.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-runs/demo}
rm -rf "$OUT"
.venv/bin/bincam data synth --out "$OUT/data" --n 3000 --seed 0 --workers 2
.venv/bin/bincam train --data "synth:$OUT/data" --out "$OUT/small-unbalanced" --arch small \
  --weighting none --epochs 3 --image-size 112
.venv/bin/bincam info "$OUT/small-unbalanced"
