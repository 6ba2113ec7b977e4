"""kcolor's networks as Keras 3 models: L in, per-pixel logits over the Q ab bins out.

    >>> from kcolor import model
    >>> net = model.build_model("zhang313", width=0.25, input_size=128)   # arch="eccv16"
    >>> net = model.build_model(arch="effnet_lite0", input_size=128)      # ImageNet encoder
    >>> logits = net(L)          # (B, H, W, 1) L in [0, 100] -> (B, H/4, W/4, Q)

- eccv16: the network of Zhang, Isola & Efros (ECCV 2016), the reference.
- effnet_lite0: an ImageNet-pretrained EfficientNet-Lite0 encoder (kcolor.encoder) fed
  the gray photo, and a light U-Net decoder over its stride 4-32 features.
    >>> net.save("run/model.keras"); net = model.load_model("run/model.keras")

The saved model carries its bin table, width, input size, rebalancing settings and
the training prior in a `kcolor_info` layer, so colorizing needs only its path.
"""

from __future__ import annotations

import inspect
import os
import warnings
import zipfile
from pathlib import Path

import keras
import numpy as np

from kcolor import color, rebalance
from kcolor.config import ARCH_STRIDES, ARCHS, PRECISION_ALIASES, PRECISIONS

# Paper's channels per block (conv1..conv8) and convs per block; block 8 opens with a
# 4x4 stride-2 transposed conv. Strides: blocks 1-3 end with stride 2; blocks 5-6 dilate by 2.
BLOCK_CHANNELS = (64, 128, 256, 512, 512, 512, 512, 256)
BLOCK_CONVS = (2, 2, 3, 3, 3, 3, 3, 3)
BLOCK_DILATION = (1, 1, 1, 1, 2, 2, 1, 1)
OUTPUT_STRIDE = 4  # logits come out at 1/4 of the input resolution
# effnet_lite0's decoder: channels (at width 1) of the stages at strides 16, 8 and 4
DECODER_CHANNELS = (256, 192, 128)
INFO_WARNING = "kcolor_info:"  # prefix of the warnings ColorizerInfo gives while loading


@keras.saving.register_keras_serializable(package="kcolor")
class ColorizerInfo(keras.layers.Layer):
    """Identity on the logits; its config records what the model was trained on."""

    def __init__(
        self,
        bin_table="zhang313",
        width=1.0,
        input_size=128,
        rebalance="zhang",
        prior=None,
        format_version=1,
        temperature=color.ANNEALED_T,
        rebalance_strength=None,
        arch="eccv16",
        photo_side=None,
        flip=False,
        multiscale=False,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.bin_table = bin_table
        self.width = float(width)
        self.input_size = int(input_size)
        self.rebalance = rebalance
        self.prior = None if prior is None else [float(p) for p in prior]
        self.format_version = int(format_version)
        # decoding defaults of `kcolor colorize` for this model (`kcolor decoding` sets them)
        # None: decode the distribution as trained
        self.temperature = float(temperature)
        self.rebalance_strength = None if rebalance_strength is None else float(rebalance_strength)
        self.arch = arch
        # the network's input side for whole photos (None: input_size), chosen on photos
        # the model was not trained on (`kcolor decoding --size`)
        self.photo_side = None if photo_side is None else int(photo_side)
        # average the logits of the photo and of its mirror image (`kcolor decoding --flip`)
        self.flip = bool(flip)
        # a photo larger than the training side also runs at it, the logits averaged
        # (`kcolor decoding --multiscale`)
        self.multiscale = bool(multiscale)

    @classmethod
    def from_config(cls, config):
        # a model saved by a newer kcolor may record settings this one does not know:
        # load it with a warning naming them instead of refusing the file
        known = set(inspect.signature(cls.__init__).parameters) | {"name", "trainable", "dtype"}
        unknown = sorted(set(config) - known)
        if unknown:
            warnings.warn(
                f"{INFO_WARNING} ignoring settings unknown to this kcolor: {unknown}", stacklevel=2
            )
        return cls(**{k: v for k, v in config.items() if k not in unknown})

    def call(self, logits):
        return keras.ops.cast(logits, "float32")

    def get_config(self):
        config = super().get_config()
        config.update(
            bin_table=self.bin_table,
            width=self.width,
            input_size=self.input_size,
            rebalance=self.rebalance,
            prior=self.prior,
            format_version=self.format_version,
            temperature=self.temperature,
            rebalance_strength=self.rebalance_strength,
            arch=self.arch,
            photo_side=self.photo_side,
            flip=self.flip,
            multiscale=self.multiscale,
        )
        return config


@keras.saving.register_keras_serializable(package="kcolor")
class ResizeLike(keras.layers.Layer):
    """Bilinear resize of x to the height and width of `like`, read at run time.

    [(B, h, w, C), (B, H, W, *)] -> (B, H, W, C). Keras's UpSampling2D(bilinear), traced at
    one input side, fails when the same network is called at another in one process
    (Keras 3.15); the size taken from the tensor works at any side. Same half-pixel
    bilinear as UpSampling2D's.
    """

    def call(self, inputs):
        import tensorflow as tf

        x, like = inputs
        out = tf.image.resize(x, tf.shape(like)[1:3], method="bilinear")
        return tf.cast(out, x.dtype)


@keras.saving.register_keras_serializable(package="kcolor")
class GrayRGB(keras.layers.Layer):
    """L in [0, 100] -> the sRGB gray of that lightness, in [0, 1], as 3 equal channels.

    An ImageNet encoder was trained on sRGB photos: a gray photo's sRGB value, not L/100,
    is what it saw. (B, H, W, 1) float -> (B, H, W, 3) float32.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, L):
        ops = keras.ops
        t = (ops.cast(L, "float32") + 16.0) / 116.0
        # CIE's inverse f (D65 Y of a gray: X = Y = Z relative to white)
        delta = 6.0 / 29.0
        y = ops.where(t > delta, t**3, 3.0 * delta**2 * (t - 4.0 / 29.0))
        y = ops.clip(y, 0.0, 1.0)
        # sRGB transfer curve (IEC 61966-2-1)
        srgb = ops.where(
            y <= 0.0031308, 12.92 * y, 1.055 * ops.power(ops.maximum(y, 1e-8), 1 / 2.4) - 0.055
        )
        return ops.concatenate([srgb] * 3, axis=-1)


def _channels(base: int, width: float) -> int:
    return max(8, int(round(base * width)))


def input_multiple(arch: str) -> int:
    """What the input sides of an `arch` network must divide by."""
    return ARCH_STRIDES[check_arch(arch)]


def check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise ValueError(f"arch: expected one of {ARCHS}, got {arch!r}")
    return arch


def build_model(
    bin_table: str = "zhang313",
    width: float = 1.0,
    input_size: int = 128,
    rebalance: str = "zhang",
    prior: np.ndarray | None = None,
    arch: str = "eccv16",
    pretrained: bool = True,
) -> keras.Model:
    """A colorization network.

    Args:
        bin_table: name of the ab bin table; Q = its size.
        width: channel multiplier (eccv16: 1.0 = the paper's 64..512 channels, ~32M
            parameters; effnet_lite0: of the decoder's DECODER_CHANNELS).
        input_size: the training/inference side (the nets are fully convolutional; any
            side divisible by `input_multiple(arch)` works).
        rebalance, prior: recorded in the model (the training settings and the (Q,)
            bin prior of the training set), used by evaluation.
        arch: one of ARCHS.
        pretrained: effnet_lite0 only: start the encoder from its ImageNet weights.
    Returns:
        keras.Model: (B, H, W, 1) float L in [0, 100] -> (B, H/4, W/4, Q) float32 logits.
    """
    table = color.get_bin_table(bin_table)
    multiple = input_multiple(arch)
    if input_size % multiple:
        raise ValueError(f"input_size: expected a multiple of {multiple}, got {input_size}")
    inputs = keras.Input((None, None, 1), name="L")
    if arch == "effnet_lite0":
        x = _effnet_lite0_trunk(inputs, width)
    else:
        x = _eccv16_trunk(inputs, width)
    logits = keras.layers.Conv2D(table.size, 1, name="classifier")(x)
    prior_list = None if prior is None else np.asarray(prior, np.float64).tolist()
    outputs = ColorizerInfo(
        bin_table=bin_table,
        width=width,
        input_size=input_size,
        rebalance=rebalance,
        prior=prior_list,
        arch=arch,
        name="kcolor_info",
    )(logits)
    name = f"eccv16_w{width:g}" if arch == "eccv16" else f"{arch}_w{width:g}"
    net = keras.Model(inputs, outputs, name=name)
    if arch == "effnet_lite0" and pretrained:
        from kcolor import encoder

        encoder.load_imagenet_weights(net)
    return net


def _effnet_lite0_trunk(L, width: float):
    """Encoder features at strides 4-32 -> a U-Net decoder back to stride 4."""
    from kcolor import encoder

    rgb = GrayRGB(name="gray_rgb")(L)
    x = keras.layers.Rescaling(
        1.0 / encoder.RGB_STD, offset=-encoder.RGB_MEAN / encoder.RGB_STD, name="normalize"
    )(rgb)
    blocks = encoder.backbone(x)
    skips = [blocks[i] for i in encoder.FEATURE_BLOCKS.values()]  # strides 4, 8, 16, 32
    x = skips[-1]
    for stage, (skip, base) in enumerate(zip(skips[-2::-1], DECODER_CHANNELS, strict=True)):
        ch = _channels(base, width)
        x = ResizeLike(name=f"up{stage}")([x, skip])
        x = keras.layers.Concatenate(name=f"skip{stage}")([x, skip])
        for i in range(2):
            x = keras.layers.Conv2D(ch, 3, padding="same", use_bias=False, name=f"dec{stage}_{i}")(
                x
            )
            x = keras.layers.BatchNormalization(synchronized=True, name=f"dec{stage}_{i}_bn")(x)
            x = keras.layers.ReLU(name=f"dec{stage}_{i}_relu")(x)
    return x


def _eccv16_trunk(inputs, width: float):
    # Data contract of richzhang/colorization: L centred at 50, scaled by 1/100.
    x = keras.layers.Rescaling(1.0 / color.L_SCALE, offset=-color.L_CENTRE / color.L_SCALE)(inputs)
    for block, (base, convs, dilation) in enumerate(
        zip(BLOCK_CHANNELS, BLOCK_CONVS, BLOCK_DILATION, strict=True), start=1
    ):
        ch = _channels(base, width)
        for i in range(1, convs + 1):
            name = f"conv{block}_{i}"
            if block == 8 and i == 1:
                x = keras.layers.Conv2DTranspose(
                    ch, 4, strides=2, padding="same", activation="relu", name=name
                )(x)
                continue
            stride = 2 if (block <= 3 and i == convs) else 1
            x = keras.layers.Conv2D(
                ch,
                3,
                strides=stride,
                padding="same",
                dilation_rate=dilation,
                activation="relu",
                name=name,
            )(x)
        # synchronized: batch statistics over the global batch, so that N replicas
        # train exactly like one device with the same global batch.
        x = keras.layers.BatchNormalization(synchronized=True, name=f"conv{block}_norm")(x)
    return x


def model_info(net: keras.Model) -> dict:
    """The settings a kcolor model was built with (bin_table, width, input_size, ...)."""
    try:
        layer = net.get_layer("kcolor_info")
    except ValueError:
        raise ValueError(f"model {net.name!r}: not a kcolor model (no kcolor_info layer)") from None
    return layer.get_config()


def set_decoding(
    path: str | os.PathLike,
    temperature=None,
    rebalance_strength=None,
    photo_side=None,
    flip=None,
    multiscale=None,
) -> dict:
    """Record new colorizing defaults (temperature, rebalance_strength, photo_side, flip,
    multiscale) in a saved model; None keeps a setting.

    The file is rewritten atomically; returns the model's settings afterwards.
    """
    path = Path(path)
    net = load_model(path)
    info = net.get_layer("kcolor_info")
    if temperature is not None:
        if temperature <= 0:
            raise ValueError(f"temperature: expected > 0, got {temperature}")
        info.temperature = float(temperature)
    if rebalance_strength is not None:
        strength = rebalance.check_rebalance_strength(rebalance_strength)
        if info.prior is None:
            raise ValueError(f"{path}: the model records no training prior to rebalance with")
        info.rebalance_strength = strength
    if photo_side is not None:
        multiple = input_multiple(info.arch)
        if photo_side < multiple or photo_side % multiple:
            raise ValueError(f"size: expected a multiple of {multiple}, got {photo_side}")
        info.photo_side = int(photo_side)
    if flip is not None:
        info.flip = bool(flip)
    if multiscale is not None:
        info.multiscale = bool(multiscale)
    export_model(net, path)
    return model_info(net)


def export_model(net: keras.Model, path: Path) -> None:
    """Save `net` as a .keras file of fp32 layers, atomically (a kill mid-write leaves the
    old file). A net trained in mixed precision is saved as its float32 twin: precision
    is chosen when the file is used (`with_precision`), not when it is written."""
    from kcolor.photo import atomic_write

    # layers frozen for training (`kcolor fit --encoder-lr 0`) are saved trainable: the
    # freezing is a setting of that run, not of the file
    frozen = [layer for layer in net.layers if not layer.trainable]
    for layer in frozen:
        layer.trainable = True
    try:
        atomic_write(Path(path), with_precision(net, "fp32").save)
    finally:
        for layer in frozen:
            layer.trainable = False


# --- precision ------------------------------------------------------------------------

POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512_BF16 or AMX-BF16, Linux flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, arch: str = "eccv16") -> str:
    """'auto' | 'fp32' | 'bf16' | 'fp16' -> the one to run with on this machine.

    auto: bf16 on a GPU, and on a CPU with bf16 instructions for eccv16; fp32 elsewhere.
    Measured on 2 AVX-512 BF16 cores (training, batch 16, 96 px): eccv16 width 0.25 runs
    53 img/s in bf16; effnet_lite0 width 0.5 runs 35 img/s in fp32 but 19 in bf16
    (oneDNN's bf16 depthwise convolutions are slow), and bf16 is several times slower
    than fp32 on CPUs without bf16 instructions.
    """
    precision = PRECISION_ALIASES.get(precision, precision)
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "bf16"
    return "bf16" if cpu_has_bf16() and arch == "eccv16" else "fp32"


def _policy_names(net: keras.Model) -> set[str]:
    return {layer.dtype_policy.name for layer in net.layers if layer.name != "kcolor_info"}


def with_precision(net: keras.Model, precision: str) -> keras.Model:
    """`net` running in `precision` ('fp32' | 'bf16' | 'fp16'): `net` itself when it already
    does, else a twin built under that policy with the same (float32) weights and settings."""
    policy, names = POLICIES[precision], _policy_names(net)
    if (names <= {"float32"}) if policy == "float32" else (policy in names):
        return net
    info = model_info(net)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        twin = build_model(
            info["bin_table"],
            info["width"],
            info["input_size"],
            info["rebalance"],
            info["prior"],
            arch=info.get("arch", "eccv16"),
            pretrained=False,
        )
    finally:
        keras.mixed_precision.set_global_policy(previous)
    settings = twin.get_layer("kcolor_info")
    settings.temperature = info["temperature"]
    settings.rebalance_strength = info["rebalance_strength"]
    settings.photo_side = info.get("photo_side")
    settings.flip = info.get("flip", False)
    settings.multiscale = info.get("multiscale", False)
    twin.set_weights(net.get_weights())
    return twin


def load_model(path: str | os.PathLike) -> keras.Model:
    """Load a `.keras` file written by `kcolor fit`; one clear error when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: model file not found")
    # Keras says "File not found" for a file that exists but is no zip archive
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a kcolor model (not a .keras zip archive)")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            net = keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types for a bad file; one line for the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a kcolor model ({first[:200]})") from None
    for w in caught:  # ColorizerInfo's warnings do not know the file: name it
        if str(w.message).startswith(INFO_WARNING):
            warnings.warn(f"{path}: {w.message}", w.category, stacklevel=2)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    try:
        model_info(net)
    except ValueError:
        raise ValueError(f"{path}: not a kcolor model (no kcolor_info layer)") from None
    return net


def check_bin_table(net: keras.Model, table: color.BinTable, where: str) -> None:
    """Refuse a model trained on another bin table than `table` (from `where`)."""
    name = model_info(net)["bin_table"]
    if name != table.name:
        raise ValueError(
            f"{where}: bin table {table.name!r} does not match the model's {name!r}; "
            "prepare the shards with the model's --bin-table or train a new model"
        )


def flops_per_image(net: keras.Model, side: int) -> float:
    """Forward multiply-adds x 2 of one side x side image (conv layers only)."""
    total = 0.0
    h = side
    for layer in net.layers:
        if isinstance(layer, keras.layers.Conv2DTranspose):
            h *= layer.strides[0]
            k = layer.kernel_size[0] * layer.kernel_size[1]
            total += 2.0 * h * h * k * layer.kernel.shape[-1] * layer.filters
        elif isinstance(layer, keras.layers.Conv2D):
            h = -(-h // layer.strides[0])
            k = layer.kernel_size[0] * layer.kernel_size[1]
            total += 2.0 * h * h * k * layer.kernel.shape[-2] * layer.filters
    return total
