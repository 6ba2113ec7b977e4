#!/usr/bin/env bash
# Retrain the bundled model (kcolor/weights/model.keras) with kcolor's own commands.
#
#   tools/train_bundled.sh [WORK]      # default: work/
#
# Data: MIT Miniplaces (../shared/data/miniplaces, 20k train + 1k val) and photos-train
# (../shared/data/photos-train, 17k train + 1k val crops of 3,073 photos), prepared into one
# shard folder. Network: effnet_lite0 (the ImageNet-pretrained EfficientNet-Lite0 encoder
# that ships in kcolor, a U-Net decoder at width 0.5). Resumable: rerun after an
# interruption and prep skips finished shards, fit resumes from its last checkpoint.
# About 3 h 10 min on 2 free CPU cores (estimated: 2 h for the whole network, then 40 and
# 30 min for the decoder alone; fp32: bf16 is slower for this network on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-work}
KCOLOR=${KCOLOR:-.venv/bin/kcolor}
MINIPLACES=${MINIPLACES:-../shared/data/miniplaces}
PHOTOS=${PHOTOS:-../shared/data/photos-train}

"$KCOLOR" prep "$MINIPLACES" "$PHOTOS" "$WORK/union128" --size 128
# plain cross-entropy (--rebalance none); Zhang's rebalancing is applied when decoding
"$KCOLOR" fit "$WORK/union128" "$WORK/runs/bundled" \
    --arch effnet_lite0 --width 0.5 --batch-size 16 --epochs 4 --rebalance none \
    --lr 2e-4 --lr-schedule cosine --warmup-steps 300 --precision auto \
    --checkpoint-every 500 --val-images 512
# then 4 more epochs of the decoder alone, the encoder frozen (MODEL_CARD.md, "The decoder
# trained on, the encoder frozen"): about 40 more minutes
"$KCOLOR" fit "$WORK/union128" "$WORK/runs/decoder" --init "$WORK/runs/bundled/model.keras" \
    --arch effnet_lite0 --width 0.5 --batch-size 16 --epochs 4 --rebalance none --encoder-lr 0 \
    --lr 1e-4 --lr-schedule cosine --warmup-steps 200 --precision fp32 \
    --checkpoint-every 250 --val-images 512
# and 3 more at half the rate, a new data order (MODEL_CARD.md, "The decoder trained
# further"): about 30 more minutes
"$KCOLOR" fit "$WORK/union128" "$WORK/runs/decoder2" --init "$WORK/runs/decoder/model.keras" \
    --arch effnet_lite0 --width 0.5 --batch-size 16 --epochs 3 --rebalance none --encoder-lr 0 \
    --lr 5e-5 --lr-schedule cosine --warmup-steps 100 --seed 1 --precision fp32 \
    --checkpoint-every 250 --val-images 512
cp "$WORK/runs/decoder2/model.keras" kcolor/weights/model.keras
# decoding and input side chosen on tuning halves (MODEL_CARD.md, "Choosing the decoding",
# "Multiscale", "The decoder trained on")
"$KCOLOR" decoding kcolor/weights/model.keras --temperature 0.6 --rebalance-strength 0.75 --size 224 --flip \
    --multiscale
