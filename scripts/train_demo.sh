#!/usr/bin/env bash
# Train your own (scripts/demo.sh explains and audits the shipped models instead): set up,
# synthesize 3,000 faces, train the small attribute classifier (unbalanced, 3 epochs at 112 px),
# show its card, explain four test faces and audit it on the 300 test faces.
# What a few epochs can show: the pipeline end to end, and the bias the paper is about in its
# extreme form — rare attributes are predicted negative almost always (minority-class error near
# 1), and maps of a barely trained net look alike across attributes. What they cannot show:
# maps that find each attribute's own region; for those, train as in models/README.md (8 epochs
# of 16,000 faces, about 14 minutes here) or look at the shipped models (scripts/demo.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${BINCAM_DEMO_OUT:-runs/train-demo}
rm -rf "$OUT"
.venv/bin/bincam data synth --out "$OUT/data" --n 3000 --seed 0 --workers 2
.venv/bin/bincam train --data "synth:$OUT/data" --out "$OUT/small-unbalanced" --arch small \
  --weighting none --epochs 3 --image-size 112
.venv/bin/bincam info "$OUT/small-unbalanced"
.venv/bin/bincam cam "$OUT/small-unbalanced" "$OUT"/data/celeba/img_align_celeba/00299{7,8,9}.jpg \
  "$OUT"/data/celeba/img_align_celeba/003000.jpg --out "$OUT/cams"
.venv/bin/bincam analyze --model small-unbalanced="$OUT/small-unbalanced" --data "synth:$OUT/data" \
  --out "$OUT/audit"
