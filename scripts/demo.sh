#!/usr/bin/env bash
# Set up, then the main job on the embedded default (the two models shipped in models/): render
# 300 fresh synthetic faces, explain four of them with binary CAMs of all 40 attributes under both
# models, export the balanced one to ONNX and explain the same faces with ONNX Runtime, and audit
# both models on the 300 faces (the paper's protocol: error by class, PE by predicted class).
# Training your own: scripts/train_demo.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${BINCAM_DEMO_OUT:-runs/demo}
BIN=.venv/bin/bincam
rm -rf "$OUT"
$BIN data synth --out "$OUT/data" --n 300 --seed 7 --size 112 --split test
FACES=("$OUT"/data/celeba/img_align_celeba/00000{1,2,3,4}.jpg)
for model in unbalanced balanced; do
  $BIN cam "models/synth-small-$model" "${FACES[@]}" --out "$OUT/cams-$model"
done
$BIN export models/synth-small-balanced --out "$OUT/balanced.onnx"
$BIN cam "$OUT/balanced.onnx" "${FACES[@]}" --out "$OUT/cams-onnx"
$BIN analyze --model unbalanced=models/synth-small-unbalanced \
  --model balanced=models/synth-small-balanced --data "synth:$OUT/data" --split test \
  --out "$OUT/audit"
cat <<DONE

Pictures (one grid per face: the face and its 40 attribute maps, each for the predicted class):
  $OUT/cams-unbalanced/grids/   $OUT/cams-balanced/grids/   (PyTorch)
  $OUT/cams-onnx/grids/         (the exported $OUT/balanced.onnx on ONNX Runtime)
Audit of both models on 300 fresh faces (error rates by class, PE by predicted class, average
maps): $OUT/audit/report.md (also report.html, tables/, plots/)
DONE
