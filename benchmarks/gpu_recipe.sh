#!/usr/bin/env bash
# The GPU recipe, ready to run the moment a GPU is lent (15 minutes of an H200 in all), tested end to end on the
# CPU at tiny scale (tests/test_benchmarks.py):
#
#   bash benchmarks/gpu_recipe.sh runs/gpu                                  # on a GPU machine
#   SAMPLES=300 IMAGE_SIZE=32 PARAMS="width=8 depth=3" DEVICE=cpu DDAD_SAMPLES=100 DDAD_PROTOCOLS=tb \
#     DDAD_SEEDS=0 FUSED_SAMPLES="300 100" FUSED_IMAGE_SIZE=32 FUSED_PARAMS="width=8 depth=3" \
#     bash benchmarks/gpu_recipe.sh /tmp/tiny
#
# Stage `default` (the next candidate at scale): the DAE at IMAGE_SIZE on the adult-first pool (POOL), with a
# snapshot every SNAPSHOT samples scored on every protocol's test split: OUT/learning_curves.md and .png,
# OUT/run/<tag>/seed0/bundle (the final model), OUT/mix_protocols.md (the bundle on every protocol, AP/PA views).
# Stage `fused` (the shipped default's recipe, dae-cxr-64-fused): the DAE at 64 px on the shipped models' mix, one
# run per count of FUSED_SAMPLES (300k and 60k, the shipped recipe's own settings), fused by `cxrad fuse` with
# thresholds from the held-out films neither trained on: OUT/fused (the bundle) and its row in OUT/mix_protocols.md.
# Stage `ddad`: DDAD and the normal-only ensemble at the same compute, 3 seeds (OUT/ddad.md). Every table names
# the machine (the card) that produced it; OUT/log.txt holds everything printed. Settings via the environment:
set -euo pipefail
OUT=${1:?usage: gpu_recipe.sh OUT}
STAGES=${STAGES:-"fused default ddad"}
DETECTOR=${DETECTOR:-dae}
IMAGE_SIZE=${IMAGE_SIZE:-128}
POOL=${POOL:-adult-weighted}
SAMPLES=${SAMPLES:-1000000}
SNAPSHOT=${SNAPSHOT:-$(( SAMPLES / 5 ))}
DEVICE=${DEVICE:-cuda}
# a larger batch keeps a GPU busy; the learning rate grows with it (square-root rule from 32 / 1e-3)
PARAMS=${PARAMS:-"batch_size=256 lr=0.003"}
SEED=${SEED:-0}
FUSED_SAMPLES=${FUSED_SAMPLES:-"300000 60000"}
FUSED_IMAGE_SIZE=${FUSED_IMAGE_SIZE:-64}
FUSED_PARAMS=${FUSED_PARAMS:-""}
DDAD_SAMPLES=${DDAD_SAMPLES:-100000}
DDAD_PROTOCOLS=${DDAD_PROTOCOLS:-"kermany224 tb nih14"}
DDAD_SEEDS=${DDAD_SEEDS:-"0 1 2"}
DATA=${CXRAD_DATA:-$(cd "$(dirname "$0")/.." && pwd)/../shared/data}
PY=${PY:-python}
HERE=$(dirname "$0")
TAG="$DETECTOR$IMAGE_SIZE-$POOL-gpu"
mkdir -p "$OUT"
params=()
for p in $PARAMS; do params+=(--param "$p"); done
fused_params=()
for p in $FUSED_PARAMS; do fused_params+=(--param "$p"); done
(
  echo "gpu_recipe: stages $STAGES; $DETECTOR ${IMAGE_SIZE}px on $POOL, $SAMPLES samples, snapshots every $SNAPSHOT, device $DEVICE, params: $PARAMS; ddad $DDAD_SAMPLES samples per network"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
  start=$(date +%s)
  for stage in $STAGES; do
    case $stage in
      default)
        CXRAD_DATA="$DATA" $PY "$HERE/learning_curves.py" --detector "$DETECTOR" --tag "$TAG" --pool "$POOL" \
          --image-size "$IMAGE_SIZE" --samples "$SAMPLES" --snapshot-every "$SNAPSHOT" --seeds "$SEED" \
          --device "$DEVICE" --run-root "$OUT/run" --out "$OUT" --cache-dir "$OUT/cache" --quiet "${params[@]}"
        CXRAD_DATA="$DATA" $PY "$HERE/mix_protocols.py" --bundle "$OUT/run/$TAG/seed$SEED/bundle" --tag "$TAG" \
          --seeds "$SEED" --device "$DEVICE" --out "$OUT" --cache-dir "$OUT/cache" ;;
      fused)
        members=()
        for n in $FUSED_SAMPLES; do
          CXRAD_DATA="$DATA" $PY "$HERE/learning_curves.py" --detector dae --tag "dae$FUSED_IMAGE_SIZE-mix-$n-gpu" \
            --pool mix --image-size "$FUSED_IMAGE_SIZE" --samples "$n" --snapshot-every "$n" --seeds "$SEED" \
            --device "$DEVICE" --run-root "$OUT/run" --out "$OUT" --cache-dir "$OUT/cache" --quiet "${fused_params[@]}"
          members+=("$OUT/run/dae$FUSED_IMAGE_SIZE-mix-$n-gpu/seed$SEED/bundle")
        done
        CXRAD_DATA="$DATA" $PY "$HERE/../tools/default_training_manifest.py" "$OUT/default_train.csv"
        CXRAD_DATA="$DATA" $PY -m cxrad fuse "${members[@]}" --data "$OUT/default_train.csv" --out "$OUT/fused" \
          --device "$DEVICE" --cache-dir "$OUT/cache" --quiet
        CXRAD_DATA="$DATA" $PY "$HERE/mix_protocols.py" --bundle "$OUT/fused" --tag "dae$FUSED_IMAGE_SIZE-mix-fused-gpu" \
          --seeds "$SEED" --device "$DEVICE" --out "$OUT" --cache-dir "$OUT/cache" ;;
      ddad)
        # shellcheck disable=SC2086
        CXRAD_DATA="$DATA" $PY "$HERE/ddad.py" --samples "$DDAD_SAMPLES" --protocols $DDAD_PROTOCOLS \
          --seeds $DDAD_SEEDS --device "$DEVICE" --run-root "$OUT/ddad" --out "$OUT" --cache-dir "$OUT/cache" ;;
      *) echo "gpu_recipe: unknown stage $stage" >&2; exit 2 ;;
    esac
    echo "gpu_recipe: stage $stage done at $(( $(date +%s) - start )) s"
  done
  echo "gpu_recipe: finished in $(( $(date +%s) - start )) s"
) 2>&1 | tee "$OUT/log.txt"
