#!/usr/bin/env bash
# Retrain the bundled model (kcolor/weights/model.keras) with kcolor's own commands.
#
#   tools/train_bundled.sh [PHOTOS] [WORK]      # defaults: ../shared/data/photos-train work/
#
# Resumable: rerun after an interruption and prep skips finished shards, fit resumes
# from its last checkpoint. About an hour on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PHOTOS=${1:-../shared/data/photos-train}
WORK=${2:-work}
KCOLOR=${KCOLOR:-.venv/bin/kcolor}
EPOCHS=${EPOCHS:-4}  # the bundled model: 4; more epochs buy quality (watch val)

"$KCOLOR" prep "$PHOTOS" "$WORK/photos128" --size 128
# 1,700 steps at lr 1e-3, then the rest at 2e-4 (a rerun after a kill resumes either phase)
"$KCOLOR" fit "$WORK/photos128" "$WORK/runs/bundled" \
    --width 0.25 --crop 64 --batch-size 32 --lr 1e-3 --precision fp32 \
    --epochs "$EPOCHS" --max-steps 1700 --checkpoint-every 100 --val-images 512
"$KCOLOR" fit "$WORK/photos128" "$WORK/runs/bundled" --lr 2e-4 --max-steps 0
cp "$WORK/runs/bundled/model.keras" kcolor/weights/model.keras
sed 's|^|'"$PHOTOS"'/images/|; s| [0-9]*$||' "$PHOTOS/val.txt" > "$WORK/val-files.txt"
xargs -a "$WORK/val-files.txt" "$KCOLOR" evaluate --model kcolor/weights/model.keras \
    --json "$WORK/bundled-val.json" > "$WORK/bundled-val.txt"
tail -n 4 "$WORK/bundled-val.txt"
