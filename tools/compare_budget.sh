#!/usr/bin/env bash
# The fixed-budget comparison of the model card ("Where the time goes"): each variant
# trains for the steps that fill BUDGET seconds of this machine at its own measured speed,
# then is scored on held-out photos with `kcolor evaluate`.
#
#   tools/compare_budget.sh SHARDS PT_SHARDS VAL_LIST [WORK]
#
# SHARDS: Miniplaces + photos-train prepared at 128 px (as tools/train_bundled.sh does);
# PT_SHARDS: photos-train alone; VAL_LIST: a text file of held-out photo paths.
# MS_EFF128, MS_EFF96, MS_ECC96: ms/step of each network measured alone on this machine
# (defaults: the card's, 2 AMD EPYC Zen 4 cores); BUDGET: seconds (default 720).
# Runs one after another; rerun to resume (finished variants are skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARDS=$1 PT=$2 VAL=$3 WORK=${4:-work/compare}
KCOLOR=${KCOLOR:-.venv/bin/kcolor}
BUDGET=${BUDGET:-720}
S128=$((BUDGET * 1000 / ${MS_EFF128:-562}))
S96=$((BUDGET * 1000 / ${MS_EFF96:-282}))
SECC=$((BUDGET * 1000 / ${MS_ECC96:-190}))
EFF="--arch effnet_lite0 --width 0.5 --batch-size 16 --epochs 20 --lr 2e-4 --lr-schedule cosine --warmup-steps 300 --val-images 256"
ECC="--width 0.25 --batch-size 16 --epochs 40 --crop 96 --rebalance none --lr 3e-4 --lr-schedule cosine --warmup-steps 500 --val-images 256"
PLAIN="--temperature 0.6 --rebalance-strength 0.85 --no-flip --size 128"
mkdir -p "$WORK"

variant() {  # name shards steps "decoding" fit-args...
    local name=$1 shards=$2 steps=$3 decoding=$4
    shift 4
    [ -f "$WORK/$name.json" ] && return
    # shellcheck disable=SC2086
    "$KCOLOR" fit "$shards" "$WORK/runs/$name" --max-steps "$steps" "$@"
    # shellcheck disable=SC2086
    xargs -a "$VAL" "$KCOLOR" evaluate --model "$WORK/runs/$name" $decoding --json "$WORK/$name.json" \
        > "$WORK/$name.txt"
}

variant effnet "$SHARDS" "$S128" "$PLAIN" $EFF --rebalance none
variant zhang_loss "$SHARDS" "$S128" "--temperature 0.38 --no-flip --size 128" $EFF --rebalance zhang
variant crop96 "$SHARDS" "$S96" "$PLAIN" $EFF --rebalance none --crop 96
variant photos_train_only "$PT" "$S128" "$PLAIN" $EFF --rebalance none
variant eccv16 "$SHARDS" "$SECC" "$PLAIN" $ECC
echo "Reports in $WORK/*.txt"
