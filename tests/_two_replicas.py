"""Run as a script (needs a fresh TensorFlow): one step of the real train step on 1 device
vs 2 replicas, from the same weights on the same global batch.

Prints JSON {"replicas": 2, "max_rel_diff": ...}. Used by test_train.py.
"""

import json

import numpy as np

from kcolor import loss, model, train

strategy = train.make_strategy(cpu_replicas=2)  # before TensorFlow initializes
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

keras.utils.set_random_seed(0)

GLOBAL_BATCH = 4
rng = np.random.default_rng(0)
L = rng.uniform(0, 100, (GLOBAL_BATCH, 32, 32, 1)).astype(np.float32)
bins = rng.integers(0, 313, (GLOBAL_BATCH, 8, 8)).astype(np.int32)
weights = rng.uniform(0.5, 2, 313).astype(np.float32)

loss_fn = loss.RebalancedCrossEntropy(weights, reduction=None)


def one_step(strategy, batch, start=None):
    """The weights after one step of kcolor's own train step (train.make_train_step) with
    plain SGD, whose update is lr x gradient, so any gradient error shows in the weights
    (Adam's first step, lr x sign, would hide a wrong scale)."""
    with strategy.scope():
        net = model.build_model(width=0.125, input_size=32)
        if start is not None:
            net.set_weights(start)
        opt = keras.optimizers.SGD(learning_rate=1.0)
        opt.build(net.trainable_variables)
    before = net.get_weights()
    step = train.make_train_step(strategy, net, opt, loss_fn, GLOBAL_BATCH)
    step(batch)
    return before, net.get_weights()


one_device = tf.distribute.get_strategy()
start, single = one_step(one_device, (tf.constant(L), tf.constant(bins)))
data = tf.data.Dataset.from_tensor_slices((L, bins)).batch(GLOBAL_BATCH)
batch = next(iter(strategy.experimental_distribute_dataset(data)))
_, got = one_step(strategy, batch, start)
# worst difference of the updates, relative to each variable's largest update
rel = max(
    float(np.abs((g - s0) - (r - s0)).max() / max(np.abs(r - s0).max(), 1e-3))
    for s0, r, g in zip(start, single, got, strict=True)
)
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "max_rel_diff": rel}))
