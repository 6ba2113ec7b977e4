#!/usr/bin/env bash
# Retrain the bundled model (kcolor/weights/model.keras) with kcolor's own commands.
#
#   tools/train_bundled.sh [PHOTOS] [WORK]      # defaults: ../shared/data/photos-train work/
#
# Resumable: rerun after an interruption and prep skips finished shards, fit resumes
# from its last checkpoint. About 50 minutes on 2 CPU cores with AVX-512 BF16; on a CPU
# without bfloat16 instructions, PRECISION=auto picks fp32 (bf16 is ~6x slower there).
set -euo pipefail
cd "$(dirname "$0")/.."
PHOTOS=${1:-../shared/data/photos-train}
WORK=${2:-work}
KCOLOR=${KCOLOR:-.venv/bin/kcolor}
PRECISION=${PRECISION:-auto}

"$KCOLOR" prep "$PHOTOS" "$WORK/photos128" --size 128
# plain cross-entropy (--rebalance none); Zhang's rebalancing is applied when decoding
"$KCOLOR" fit "$WORK/photos128" "$WORK/runs/bundled" \
    --width 0.25 --crop 96 --batch-size 16 --epochs 20 --rebalance none \
    --lr 3e-4 --lr-schedule cosine --warmup-steps 500 --precision "$PRECISION" \
    --checkpoint-every 1057 --val-images 0
cp "$WORK/runs/bundled/model.keras" kcolor/weights/model.keras
# the decoding chosen on half of the val photos (MODEL_CARD.md, "Choosing the decoding")
"$KCOLOR" decoding kcolor/weights/model.keras --temperature 0.38 --rebalance-strength 0.75
sed 's|^|'"$PHOTOS"'/images/|; s| [0-9]*$||' "$PHOTOS/val.txt" > "$WORK/val-files.txt"
xargs -a "$WORK/val-files.txt" "$KCOLOR" evaluate --model kcolor/weights/model.keras \
    --json "$WORK/bundled-val.json" > "$WORK/bundled-val.txt"
tail -n 5 "$WORK/bundled-val.txt"
