"""Training speed of effnet_lite0 under `kcolor fit --encoder-lr`: 1 (all trained), 0.1, 0 (frozen).

    python benchmarks/encoder_lr.py [--width 0.5] [--size 128] [--batch 16] [--steps 20]

Times kcolor.train's real train step and optimizer on one random batch held in memory
(the input pipeline is benchmarks/fit.py's subject), the three settings alternated round
by round so that drift in machine load hits all alike, and prints images/s and each
setting's speed as a ratio to training everything.
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

from kcolor import loss, model, train


def make_step(cfg: train.FitConfig, size: int, batch: int):
    strategy = tf.distribute.MirroredStrategy()
    with strategy.scope():
        net = model.build_model(width=cfg.width, input_size=size, arch="effnet_lite0")
        opt = train.optimizer(cfg, net)
        opt.build(net.trainable_variables)
        loss_fn = loss.RebalancedCrossEntropy(np.ones(313, np.float32), reduction=None)
    return train.make_train_step(strategy, net, opt, loss_fn, batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20, help="steps per timing")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    keras.mixed_precision.set_global_policy("float32")
    rng = np.random.default_rng(0)
    L = tf.constant(rng.uniform(0, 100, (args.batch, args.size, args.size, 1)), tf.float32)
    bins = loss.subsample_bins(rng.integers(0, 313, (args.batch, args.size, args.size)))
    scales = (1.0, 0.1, 0.0)
    steps = {}
    for s in scales:
        cfg = train.FitConfig(arch="effnet_lite0", width=args.width, encoder_lr=s)
        steps[s] = make_step(cfg, args.size, args.batch)
        steps[s]((L, bins)).numpy()  # trace
    best = dict.fromkeys(scales, float("inf"))
    for _ in range(args.rounds):
        for s in scales:
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[s]((L, bins)).numpy()
            best[s] = min(best[s], time.perf_counter() - start)
    print(
        f"effnet_lite0 width {args.width:g}, {args.size} px, batch {args.batch}, fp32, "
        f"{args.steps} steps x {args.rounds} rounds (best)"
    )
    for s in scales:
        rate = args.steps * args.batch / best[s]
        print(f"--encoder-lr {s:g}: {rate:6.1f} img/s, {best[1.0] / best[s]:.2f}x all-trained")


if __name__ == "__main__":
    main()
