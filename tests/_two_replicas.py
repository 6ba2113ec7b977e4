"""Run as a script (needs a fresh TensorFlow): gradients on 1 device vs 2 replicas.

Prints JSON {"max_abs_diff": ..., "max_abs_grad": ...}. Used by test_distributed.py.
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

single = model.build_model(width=0.125, input_size=32)
loss_fn = loss.RebalancedCrossEntropy(weights, reduction=None)
with tf.GradientTape() as tape:
    per_image = loss_fn(bins, single(L, training=True))
    value = tf.nn.compute_average_loss(per_image, global_batch_size=GLOBAL_BATCH)
ref = tape.gradient(value, single.trainable_variables)

with strategy.scope():
    net = model.build_model(width=0.125, input_size=32)
    net.set_weights(single.get_weights())
data = tf.data.Dataset.from_tensor_slices((L, bins)).batch(GLOBAL_BATCH)
batch = next(iter(strategy.experimental_distribute_dataset(data)))


@tf.function
def grads(batch):
    def fn(x, y):
        with tf.GradientTape() as tape:
            per_image = loss_fn(y, net(x, training=True))
            value = tf.nn.compute_average_loss(per_image, global_batch_size=GLOBAL_BATCH)
        return tape.gradient(value, net.trainable_variables)

    per_replica = strategy.run(fn, args=batch)
    return [strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None) for g in per_replica]


got = grads(batch)
# worst difference relative to each variable's largest gradient
rel = max(
    float(np.abs(a.numpy() - b.numpy()).max() / max(np.abs(a.numpy()).max(), 1e-3))
    for a, b in zip(ref, got, strict=True)
)
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "max_rel_diff": rel}))
