#!/usr/bin/env bash
# The GPU recipe: train the best candidate at 128 px for ~1M samples on one GPU (target: under 8 minutes on
# one H100) and write its bundle and its four-protocol AUROC table under OUT. Ready to run the moment a GPU is
# lent; tested end to end on the CPU at tiny scale (tests/test_benchmarks.py):
#
#   bash benchmarks/gpu_recipe.sh runs/gpu                                  # on a GPU machine
#   SAMPLES=400 IMAGE_SIZE=32 PARAMS="width=8 depth=3" DEVICE=cpu bash benchmarks/gpu_recipe.sh /tmp/tiny
#
# It trains on the shipped models' mix (kermany224 + nih train normals, no TB image), keeps a snapshot every
# SNAPSHOT samples, scores each on the four protocols' test splits, and writes OUT/learning_curves.md and .png
# (AUROC by samples), OUT/run/seed0/bundle (the final model) and OUT/log.txt. Settings via the environment:
set -euo pipefail
OUT=${1:?usage: gpu_recipe.sh OUT}
DETECTOR=${DETECTOR:-dae}
IMAGE_SIZE=${IMAGE_SIZE:-128}
SAMPLES=${SAMPLES:-1000000}
SNAPSHOT=${SNAPSHOT:-$(( SAMPLES / 5 ))}
DEVICE=${DEVICE:-cuda}
# a larger batch keeps a GPU busy; the learning rate grows with it (square-root rule from 32 / 1e-3)
PARAMS=${PARAMS:-"batch_size=256 lr=0.003"}
SEED=${SEED:-0}
DATA=${CXRAD_DATA:-$(cd "$(dirname "$0")/.." && pwd)/../shared/data}
PY=${PY:-python}
mkdir -p "$OUT"
params=()
for p in $PARAMS; do params+=(--param "$p"); done
(
  echo "gpu_recipe: $DETECTOR ${IMAGE_SIZE}px, $SAMPLES samples, snapshots every $SNAPSHOT, device $DEVICE, params: $PARAMS"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
  start=$(date +%s)
  CXRAD_DATA="$DATA" $PY "$(dirname "$0")/learning_curves.py" --detector "$DETECTOR" --tag "$DETECTOR$IMAGE_SIZE-gpu" \
    --image-size "$IMAGE_SIZE" --samples "$SAMPLES" --snapshot-every "$SNAPSHOT" --seeds "$SEED" \
    --device "$DEVICE" --run-root "$OUT/run" --out "$OUT" --cache-dir "$OUT/cache" --quiet "${params[@]}"
  echo "gpu_recipe: finished in $(( $(date +%s) - start )) s"
) 2>&1 | tee "$OUT/log.txt"
