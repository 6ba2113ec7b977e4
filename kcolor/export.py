"""Export a kcolor model, with its decoding, for serving: SavedModel, TFLite or ONNX.

    kcolor export runs/a/model.keras --format tflite -o kcolor.tflite

    from kcolor import export
    export.export("runs/a/model.keras", "kcolor.onnx", "onnx")          # None: the bundled model

The exported model maps L to ab, as `infer.Colorizer.predict` does:

    L:  (B, H, W, 1) float32 lightness in [0, 100]; H and W divisible by
        `model.input_multiple(arch)` (8 for eccv16, 32 for effnet_lite0); `kcolor
        colorize` resizes a photo to `Colorizer.side_for` its size (the model's recorded
        side, or a smaller photo's own). An export given `size` takes that one side only.
    ab: (B, H/4, W/4, 2) float32, the model's recorded decoding (the logits averaged with
        the mirror image's where it records `flip`, and with those at the training side
        where it records `multiscale` and the input is larger, class rebalancing at its recorded
        strength with its training prior, then the annealed mean at its recorded
        temperature); upsample it and join it to the photo's own L (kcolor.photo.compose).
    bins (output="bins"): (B, H/4, W/4, Q) float32, the rebalanced bin distribution
        (softmax); softmax(log(bins) / T) @ bin centres is the ab above, its argmax the
        bins of `Colorizer.predict`.

The network runs in float32 whatever precision it was trained or would run in here
(`model.with_precision`): TFLite has no bf16 kernels for its layers, and an export
should not depend on the machine it was made on. Input and output are named "L" and
"ab" / "bins" in every format; the ONNX model is NHWC like the others.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import tensorflow as tf

from kcolor import infer, rebalance
from kcolor.config import EXPORT_FORMATS as FORMATS
from kcolor.config import EXPORT_OUTPUTS as OUTPUTS

ONNX_OPSET = 17  # onnxruntime runs it since 1.13; tf2onnx 1.17 knows opsets up to 18


@dataclasses.dataclass(frozen=True)
class Exported:
    """What `export` wrote: the path, and the shapes of its input L and its output (None
    where any size goes: the batch, and the sides of a model exported for any side)."""

    path: Path
    input_shape: tuple
    output: str
    output_shape: tuple

    def __str__(self):
        def shape(s):
            return "(" + ", ".join("?" if d is None else str(d) for d in s) + ")"

        return (
            f"{self.path}: L {shape(self.input_shape)} -> {self.output} {shape(self.output_shape)}"
        )


def export(model_path, out, fmt: str, output: str = "ab", size=None, **decoding) -> Exported:
    """Write the model (with its decoding) as `fmt` to `out`.

    Args:
        model_path: a .keras file, a `kcolor fit` run folder, or None for the bundled model.
        out: the file (tflite, onnx) or folder (savedmodel) to write (its folder is
            made); an existing file is replaced, an existing folder only when it holds
            a SavedModel.
        fmt: one of FORMATS.
        output: "ab" (decoded ab) or "bins" (the bin distribution).
        size: export for this input side only (rounded as `infer.Colorizer` rounds it).
            None: any side, where the network allows it (eccv16); else the model's
            input_size (effnet_lite0: Keras 3's bilinear UpSampling2D needs static sides).
        decoding: decode, temperature, rebalance_strength overriding the model's
            recorded ones, as `infer.Colorizer` takes them.

    Raises ValueError (one line) for a bad argument, a missing converter or a failed
    conversion.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {FORMATS}, got {fmt!r}")
    if output not in OUTPUTS:
        raise ValueError(f"output: expected one of {OUTPUTS}, got {output!r}")
    out = Path(out)
    _check_out(out, fmt)
    if fmt == "onnx":
        _onnx_converter()  # fail before loading anything when tf2onnx is missing
    # float32 whatever the file or this machine would choose: see the module docstring
    colorizer = infer.load_colorizer(model_path, precision="fp32", size=size, **decoding)
    module = ServingModule(colorizer, output, any_side=size is None)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    _remove(tmp)
    try:
        {"savedmodel": _write_savedmodel, "tflite": _write_tflite, "onnx": _write_onnx}[fmt](
            module, tmp
        )
        if out.is_dir():  # a SavedModel (_check_out): os.replace cannot replace a folder
            _remove(out)
        os.replace(tmp, out)
    finally:
        _remove(tmp)
    [result] = module.serve.get_concrete_function().structured_outputs.values()
    return Exported(out, tuple(module.input_spec.shape), output, tuple(result.shape))


# --- the graph ------------------------------------------------------------------------


class ServingModule(tf.Module):
    """`serve(L)` is the exported function: {"ab": ...} or {"bins": ...} (shapes in the
    module docstring), the network and decoding of `colorizer`.

    any_side: accept any side (multiple of the arch's) when the network traces with
    unknown sides; else, or when it does not, only the colorizer's side.
    """

    def __init__(self, colorizer: infer.Colorizer, output: str = "ab", any_side: bool = True):
        super().__init__(name="kcolor")
        # its variables are tracked, not the Keras model: tf.saved_model.save would trace
        # the model's own call at unknown sides, which some layers cannot take
        self.weights = list(colorizer.net.weights)
        self._colorizer, self._output = colorizer, output
        self._shift = colorizer.logit_shift()
        self.serve = self._trace(None) if any_side else None
        if self.serve is None:
            self.serve = self._trace(colorizer.side)
        self.input_spec = self.serve.input_signature[0]

    def _trace(self, side):
        spec = tf.TensorSpec([None, side, side, 1], tf.float32, name="L")
        serve = tf.function(self._serve, input_signature=[spec])
        try:
            serve.get_concrete_function()
        except Exception:  # a layer that needs static sides (Keras raises various types)
            if side is not None:
                raise
            return None
        return serve

    def _view(self, L):
        logits = self._colorizer.net(L, training=False)
        if self._colorizer.flip:  # as Colorizer.logits: the mirror image's, mirrored back
            mirrored = self._colorizer.net(tf.reverse(L, axis=[2]), training=False)
            logits = (logits + tf.reverse(mirrored, axis=[2])) / 2
        return logits

    def _serve(self, L):
        logits = self._view(L)
        col = self._colorizer
        if col.multiscale:  # as Colorizer.logits
            size = tf.shape(L)[1:3]
            small = infer.multiscale_size(size, col.training_side, col.multiple)

            def averaged():
                low = self._view(infer.shrink(L, small[0], small[1]))
                return (logits + tf.image.resize(low, tf.shape(logits)[1:3], "bilinear")) / 2

            logits = tf.cond(tf.reduce_max(size) > col.training_side, averaged, lambda: logits)
        if self._shift is not None:
            logits = logits + tf.constant(self._shift)
        if self._output == "bins":
            return {"bins": tf.nn.softmax(logits, axis=-1)}
        col = self._colorizer
        return {"ab": rebalance.decode_ab(logits, col.table.centres, col.decode, col.temperature)}


# --- the formats --------------------------------------------------------------------------


def _write_savedmodel(module, path: Path) -> None:
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def _frozen(module):
    """module.serve with its variables made constants, its output named as before."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    serve = module.serve.get_concrete_function()
    frozen = convert_variables_to_constants_v2(serve)
    [key] = serve.structured_outputs  # freezing flattens the outputs: name them again
    return tf.function(lambda L: {key: frozen(L)[0]}, input_signature=[module.input_spec])


def _write_tflite(module, path: Path) -> None:
    # Freeze first: TF 2.21's converter leaves Keras 3 variables as READ_VARIABLE ops with
    # no initializer (from_saved_model too), so the interpreter fails with
    # "read_variable.cc: variable != nullptr" (or silently gives NaN under XNNPACK).
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [_frozen(module).get_concrete_function()], tf.Module()
    )
    try:
        flat = converter.convert()
    except Exception as e:  # the converter raises many types; one line for the user
        raise ValueError(f"format tflite: conversion failed ({_first_line(e)})") from None
    path.write_bytes(flat)


def _onnx_converter():
    """tf2onnx, or a one-line ValueError saying how to get it."""
    try:
        import onnx  # noqa: F401
        import tf2onnx
    except ImportError as e:
        raise ValueError(
            f"format onnx: needs tf2onnx and onnx ({e.name} is missing): "
            "pip install 'kcolor[export]'"
        ) from None
    return tf2onnx


def _write_onnx(module, path: Path) -> None:
    tf2onnx = _onnx_converter()
    try:
        # frozen first: tf2onnx loses the kernels' shapes of the convolutions inside the
        # multiscale branch (tf.cond) when they are variables
        proto, _ = tf2onnx.convert.from_function(
            _frozen(module), input_signature=[module.input_spec], opset=ONNX_OPSET
        )
    except Exception as e:  # tf2onnx raises many types; one line naming the versions
        raise ValueError(
            f"format onnx: tf2onnx {tf2onnx.__version__} failed on TensorFlow "
            f"{tf.__version__} ({_first_line(e)})"
        ) from None
    _name_onnx_io(proto, module.serve)
    path.write_bytes(proto.SerializeToString())


def _name_onnx_io(proto, function) -> None:
    """tf2onnx names the input and outputs after graph tensors ("l", "Identity:0"): give
    them the signature's names (L, ab / bins), as in the SavedModel and TFLite exports."""
    concrete = function.get_concrete_function()
    names = {proto.graph.input[0].name: "L"}
    names.update((t.name, key) for key, t in concrete.structured_outputs.items())

    def rename(graph):  # the branches of an If (multiscale) read the input too
        for node in graph.node:
            node.input[:] = [names.get(i, i) for i in node.input]
            node.output[:] = [names.get(o, o) for o in node.output]
            for attribute in node.attribute:
                for sub in [attribute.g, *attribute.graphs]:
                    rename(sub)

    rename(proto.graph)
    for value in [*proto.graph.input, *proto.graph.output]:
        value.name = names.get(value.name, value.name)


# --- files --------------------------------------------------------------------------------


def _check_out(out: Path, fmt: str) -> None:
    if fmt == "savedmodel":
        if out.is_file() or (
            out.is_dir() and any(out.iterdir()) and not (out / "saved_model.pb").is_file()
        ):
            raise ValueError(f"{out}: exists and is not a SavedModel folder; choose another -o")
    elif out.is_dir():
        raise ValueError(f"{out}: is a folder, expected a .{fmt} file path")
    if out.parent.exists() and not out.parent.is_dir():
        raise ValueError(f"{out}: {out.parent} is not a folder")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
