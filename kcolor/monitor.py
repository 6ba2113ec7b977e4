"""Validation figures and TensorBoard logging for `kcolor fit`.

    tensorboard --logdir RUN_DIR/logs

Val metrics are computed at the network's output resolution against the true bins'
centres (the shards store bins, not exact ab), which adds at most half a grid step
of quantization to the ab error; `kcolor evaluate` measures on real photos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from kcolor import color, metrics, rebalance

AUC_BINS = metrics.AUC_MAX_THRESHOLD + 2  # error counts by threshold, as metrics


class Board:
    """TensorBoard writers for train and val (no-ops on non-chief workers)."""

    def __init__(self, log_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.writers = {}
        if enabled:
            for name in ("train", "val"):
                self.writers[name] = tf.summary.create_file_writer(str(Path(log_dir) / name))

    def scalars(self, split: str, step: int, values: dict) -> None:
        if not self.enabled:
            return
        with self.writers[split].as_default(step=step):
            for key, value in values.items():
                tf.summary.scalar(key, value)
        self.writers[split].flush()

    def preview(self, step: int, grid: np.ndarray) -> None:
        if not self.enabled:
            return
        with self.writers["val"].as_default(step=step):
            tf.summary.image("gray | colorized | truth", grid[None], max_outputs=1)
        self.writers["val"].flush()

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


class Evaluator:
    """Mean per-image loss, top-1 bin accuracy and ab-error AuC (%) of `net` on batches.

    The step is traced once per Evaluator, so build one per run, not per epoch.
    """

    def __init__(self, net, loss_fn, table: color.BinTable):
        centres = tf.constant(table.centres)

        # autograph=False: plain TF ops, nothing to convert, so no source is read at trace
        # time (a kcolor upgraded under a running fit cannot break its first evaluation)
        @tf.function(reduce_retracing=True, autograph=False)
        def step(L, bins):
            logits = tf.cast(net(L, training=False), tf.float32)
            per_image = loss_fn(bins, logits)
            top = tf.argmax(logits, -1, output_type=tf.int32)
            hit = tf.cast(tf.equal(top, bins), tf.float32)
            ab = rebalance.decode_ab(logits, table.centres)
            err = tf.norm(ab - tf.gather(centres, bins), axis=-1)
            # the error histogram of metrics.error_histogram, so the val AuC is the AuC of
            # `kcolor evaluate` (metrics.auc_from_histogram), not a second definition
            k = tf.cast(tf.minimum(tf.math.ceil(err), AUC_BINS - 1), tf.int32)
            hist = tf.math.bincount(tf.reshape(k, [-1]), minlength=AUC_BINS, maxlength=AUC_BINS)
            sums = tf.stack(
                [tf.reduce_sum(per_image), tf.cast(tf.shape(L)[0], tf.float32), tf.reduce_sum(hit)]
            )
            return sums, hist

        self._step = step

    def __call__(self, batches) -> dict:
        totals, hist = np.zeros(3), np.zeros(AUC_BINS, np.int64)
        for L, bins in batches:
            sums, h = self._step(L, bins)
            totals += sums.numpy()
            hist += h.numpy()
        loss_sum, images, hits = totals
        if images == 0:
            return {}
        pixels = hist.sum()
        auc = metrics.auc_from_histogram(hist[None])
        return {"loss": loss_sum / images, "top1": hits / pixels, "auc": auc}


def preview_grid(net, arrays, table: color.BinTable) -> np.ndarray:
    """Rows of gray | colorized (annealed mean) | truth for a few val images.

    Args:
        arrays: (L uint8 (N,S,S), bins uint16 (N,S,S)) as stored in the shards.
    Returns:
        (N*S, 3*S, 3) float32 RGB in [0, 1].
    """
    l_u8, bins = arrays
    L = color.decode_l(l_u8)[..., None]
    logits = net(L, training=False)
    ab = tf.image.resize(rebalance.decode_ab(logits, table.centres), L.shape[1:3], "bilinear")
    pred = color.lab_to_rgb(np.concatenate([L, ab.numpy()], -1))
    truth = color.lab_to_rgb(np.concatenate([L, table.centres[bins.astype(np.int64)]], -1))
    gray = color.lab_to_rgb(np.concatenate([L, np.zeros_like(ab)], -1))
    rows = np.concatenate([gray, pred, truth], axis=2)
    return rows.reshape(-1, rows.shape[2], 3)
