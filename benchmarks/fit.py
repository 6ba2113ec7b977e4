"""Training throughput of `kcolor fit`: fed from shards vs from in-memory tensors.

    python benchmarks/fit.py                       # preps ../shared/data/photos-train first
    python benchmarks/fit.py --shards work/shards --steps 8 --crop 64 --batch 32

For each width (0.25, 1.0) and precision (fp32, mixed_bfloat16) it times the real
train step of kcolor.train fed (a) by the shard pipeline of kcolor.dataset, as `fit`
feeds it (`train.distribute`), and (b) by one batch already in memory, alternating the
two so that drift in machine load hits both alike. It prints images/s, the pipeline's
overhead ((b - a) / b) and the achieved GFLOP/s (3 x the forward FLOPs per image:
forward + backward).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kcolor import dataset, loss, model, prep, rebalance, shards, train

DEFAULT_SOURCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "photos-train"


def _timed(step, batches, n: int) -> float:
    """Seconds for n steps (after the batch iterator is warm)."""
    it = iter(batches)
    step(next(it)).numpy()  # warm: trace, fill prefetch
    start = time.perf_counter()
    for _ in range(n):
        step(next(it)).numpy()
    return time.perf_counter() - start


def run(shard_dir, width: float, precision: str, batch: int, steps: int, rounds: int, crop: int):
    keras.mixed_precision.set_global_policy("float32" if precision == "fp32" else precision)
    strategy = tf.distribute.MirroredStrategy()
    paths = shards.list_shards(shard_dir, "train")
    table = shards.read_meta(paths[0])["table"]
    size = int(shards.read_meta(paths[0])["image_size"])
    counts = shards.load_stats(shard_dir)["bin_counts"]
    with strategy.scope():
        net = model.build_model(table.name, width, size)
        opt = keras.optimizers.AdamW(1e-4)
        opt.build(net.trainable_variables)
        loss_fn = loss.RebalancedCrossEntropy(
            rebalance.rebalance_weights(counts, table), reduction=None
        )

    step = train.make_train_step(strategy, net, opt, loss_fn, batch)

    def shard_batches(ctx=None):
        return dataset.train_dataset(paths, batch, epoch=0, crop=crop).repeat()

    L, bins = next(iter(dataset.train_dataset(paths, batch, epoch=1, crop=crop)))
    memory = tf.data.Dataset.from_tensors((L, bins)).repeat()
    t_shards = t_memory = 0.0
    for _ in range(rounds):
        t_memory += _timed(step, memory, steps)
        t_shards += _timed(step, train.distribute(strategy, shard_batches), steps)
    images = rounds * steps * batch
    flops = 3 * model.flops_per_image(net, crop or size)
    ips_s, ips_m = images / t_shards, images / t_memory
    return ips_s, ips_m, (ips_m - ips_s) / ips_m, ips_s * flops / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=Path, help="a kcolor prep folder (default: prep --source)")
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=0, help="training crop side (0: none)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=2, help="alternations shards/memory")
    ap.add_argument("--widths", default="0.25,1.0")
    ap.add_argument("--precisions", default="fp32,mixed_bfloat16")
    args = ap.parse_args()
    shard_dir = args.shards
    if shard_dir is None:
        shard_dir = Path("work/bench-shards")
        print(f"Preparing {args.source} -> {shard_dir} ...", flush=True)
        prep.prepare(args.source, shard_dir)
    print(
        f"batch {args.batch}, crop {args.crop or 'none'}, {args.rounds} x {args.steps} timed steps per feed"
    )
    print(f"{'width':>6} {'precision':>15} {'shards img/s':>13} {'memory img/s':>13} "
          f"{'overhead':>9} {'GFLOP/s':>8}")  # fmt: skip
    for width in (float(w) for w in args.widths.split(",")):
        for precision in args.precisions.split(","):
            ips_s, ips_m, over, gflops = run(
                shard_dir, width, precision, args.batch, args.steps, args.rounds, args.crop
            )
            print(f"{width:>6g} {precision:>15} {ips_s:>13.1f} {ips_m:>13.1f} "
                  f"{100 * over:>8.1f}% {gflops:>8.1f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
