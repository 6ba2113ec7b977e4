"""Class-rebalanced sparse categorical cross-entropy (Zhang et al. 2016, eq. 2).

    >>> from kcolor import loss
    >>> fn = loss.RebalancedCrossEntropy(weights)          # (Q,) rebalancing weights
    >>> per_image = fn(bins_lowres, logits)                 # reduction=None -> (B,)

Per pixel: w[true bin] * -log softmax(logits)[true bin]; per image: the sum over its
pixels. With the default reduction ("sum") a minibatch's loss is the sum over its
images. The training step uses reduction=None and `tf.nn.compute_average_loss` with
the global batch size, so that one replica and N replicas give the same gradient.

`SoftCrossEntropy` is the same loss against Zhang's soft encoding (`fit --targets soft`):
each output cell's target is the histogram of the bins of all its stride x stride
pixels, spread in ab by `rebalance.target_kernel`, instead of the one bin of its centre pixel.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kcolor.model import OUTPUT_STRIDE


@keras.saving.register_keras_serializable(package="kcolor")
class RebalancedCrossEntropy(keras.losses.Loss):
    """Weighted sparse categorical cross-entropy, summed over each image's pixels.

    Args:
        weights: (Q,) float class-rebalancing weight of each bin (see
            `kcolor.rebalance.rebalance_weights`).
    Call:
        y_true: (B, h, w) int bin indices at the logits' resolution.
        y_pred: (B, h, w, Q) logits (any float dtype; computed in float32).
    Returns:
        per-image losses (B,) float32 with reduction=None; their sum with "sum".
    """

    def __init__(self, weights, reduction="sum", name="rebalanced_ce", **kwargs):
        super().__init__(reduction=reduction, name=name, **kwargs)
        self.weights = np.asarray(weights, np.float32)

    def call(self, y_true, y_pred):
        logits = tf.cast(y_pred, tf.float32)
        labels = tf.cast(y_true, tf.int32)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        w = tf.gather(tf.constant(self.weights), labels)
        return tf.reduce_sum(w * ce, axis=[1, 2])

    def get_config(self):
        config = super().get_config()
        config["weights"] = self.weights.tolist()
        return config


@keras.saving.register_keras_serializable(package="kcolor")
class SoftCrossEntropy(keras.losses.Loss):
    """Weighted cross-entropy against soft targets, summed over each image's cells.

    Per output cell: t = (bin histogram of its stride x stride pixels) @ kernel, and the
    loss is (t . weights) * -(t . log softmax(logits)). With every pixel of a cell in
    one bin and an identity kernel it equals `RebalancedCrossEntropy`.

    Args:
        weights: (Q,) float class-rebalancing weight of each bin.
        kernel: (Q, Q) float, row i the target of a pixel in bin i (`rebalance.target_kernel`).
        stride: pixels per output cell along each side.
    Call:
        y_true: (B, H, W) int bin indices at full resolution (H, W = h, w * stride).
        y_pred: (B, h, w, Q) logits (any float dtype; computed in float32).
    Returns:
        per-image losses (B,) float32 with reduction=None; their sum with "sum".
    """

    def __init__(
        self, weights, kernel, stride=OUTPUT_STRIDE, reduction="sum", name="soft_ce", **kwargs
    ):
        super().__init__(reduction=reduction, name=name, **kwargs)
        self.weights = np.asarray(weights, np.float32)
        self.kernel = np.asarray(kernel, np.float32)
        self.stride = int(stride)

    def call(self, y_true, y_pred):
        logits = tf.cast(y_pred, tf.float32)
        q = self.weights.shape[0]
        shape = tf.shape(logits)
        b, h, w, s = shape[0], shape[1], shape[2], self.stride
        onehot = tf.one_hot(tf.cast(y_true, tf.int32), q, dtype=tf.float32)
        hist = tf.reduce_mean(tf.reshape(onehot, [b, h, s, w, s, q]), axis=[2, 4])
        target = tf.einsum("bhwk,kq->bhwq", hist, tf.constant(self.kernel))
        ce = -tf.reduce_sum(target * tf.nn.log_softmax(logits), axis=-1)
        weight = tf.einsum("bhwq,q->bhw", target, tf.constant(self.weights))
        return tf.reduce_sum(weight * ce, axis=[1, 2])

    def get_config(self):
        config = super().get_config()
        config.update(
            weights=self.weights.tolist(), kernel=self.kernel.tolist(), stride=self.stride
        )
        return config


def subsample_bins(bins, stride: int = OUTPUT_STRIDE):
    """Full-resolution bin indices -> the logits' resolution.

    Takes the pixel nearest each output cell's centre (offset stride // 2), as a
    nearest-neighbour resize would.

    Args:
        bins: (B, H, W) integer bin indices, H and W divisible by `stride`.
    Returns:
        (B, H / stride, W / stride) same dtype.
    """
    off = stride // 2
    return bins[:, off::stride, off::stride]
