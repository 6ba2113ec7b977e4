#!/usr/bin/env bash
# Retrain the bundled model (kcolor/weights/model.keras) with kcolor's own commands.
#
#   tools/train_bundled.sh [PHOTOS] [WORK]      # defaults: ../shared/data/photos-train work/
#
# Resumable: rerun after an interruption and prep skips finished shards, fit resumes
# from its last checkpoint. TIME_LIMIT (minutes per fit invocation, default 110) bounds
# one sitting; rerun to continue until EPOCHS.
set -euo pipefail
cd "$(dirname "$0")/.."
PHOTOS=${1:-../shared/data/photos-train}
WORK=${2:-work}
KCOLOR=${KCOLOR:-.venv/bin/kcolor}
TIME_LIMIT=${TIME_LIMIT:-110}
EPOCHS=${EPOCHS:-40}

"$KCOLOR" prep "$PHOTOS" "$WORK/photos128" --size 128
"$KCOLOR" fit "$WORK/photos128" "$WORK/runs/bundled" \
    --width 0.25 --crop 64 --batch-size 32 --lr 1e-3 --precision fp32 \
    --epochs "$EPOCHS" --checkpoint-every 100 --val-images 512 --time-limit "$TIME_LIMIT"
cp "$WORK/runs/bundled/model.keras" kcolor/weights/model.keras
sed 's|^|'"$PHOTOS"'/images/|; s| [0-9]*$||' "$PHOTOS/val.txt" > "$WORK/val-files.txt"
xargs -a "$WORK/val-files.txt" "$KCOLOR" evaluate --model kcolor/weights/model.keras \
    --json "$WORK/bundled-val.json" > "$WORK/bundled-val.txt"
tail -n 4 "$WORK/bundled-val.txt"
