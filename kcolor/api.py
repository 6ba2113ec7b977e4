"""kcolor's Python API: load a model once, colorize files, PIL images and numpy arrays.

Run from the repository root (the examples read examples/demo/gray/), these are doctests:

    >>> import kcolor
    >>> colorizer = kcolor.load()              # the bundled model; or a .keras file / run folder
    >>> img = colorizer.colorize("examples/demo/gray/animal-red-panda.jpg")
    >>> img.mode, img.size                             # a PIL image of the photo's own size
    ('RGB', (384, 216))

    >>> import numpy as np
    >>> gray = np.asarray(img.convert("L"))            # (H, W) uint8
    >>> rgb = colorizer.colorize(gray, temperature=0.5, rebalance_strength=1.0)
    >>> rgb.shape, rgb.dtype                           # arrays in, arrays out
    ((216, 384, 3), dtype('uint8'))

    >>> import tempfile
    >>> out = tempfile.TemporaryDirectory()
    >>> written, failed = colorizer.colorize_files(["examples/demo/gray"], out.name)
    >>> len(written), failed
    (8, [])
    >>> out.cleanup()

`kcolor colorize` does the same for files (kcolor.infer, which this module delegates to).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from kcolor import infer, photo

ORIENTATION = 0x0112  # EXIF tag of the camera's orientation


def load(
    model=None,
    *,
    size=None,
    decode="annealed",
    temperature=None,
    rebalance_strength=None,
    flip=None,
    multiscale=None,
):
    """Load a model to colorize with.

    Args:
        model: a .keras file, a `kcolor fit` run folder, or None for the bundled model.
        size, decode, temperature, rebalance_strength: the defaults of `colorize` and
            `colorize_files`, as `infer.Colorizer` takes them (None: the model's own).
        flip: average each photo's logits with its mirror image's (None: the model's
            own choice; `infer.Colorizer`).
        multiscale: also run a photo larger than the training side at that side and
            average the logits (None: the model's own choice; `infer.Colorizer`).
    Returns:
        a `Colorizer`.

    Raises ValueError (one line) when there is no model or the file is not a kcolor model.
    """
    settings = dict(
        size=size,
        decode=decode,
        temperature=temperature,
        rebalance_strength=rebalance_strength,
        flip=flip,
        multiscale=multiscale,
    )
    return Colorizer(infer.load_colorizer(model, **settings))


class Colorizer:
    """A loaded model; see `load`.

    Each call may override the decoding given to `load` (size, decode, temperature,
    rebalance_strength); the network is loaded once.
    """

    def __init__(self, colorizer: infer.Colorizer):
        self._base = colorizer
        self._variants = {}  # decoding overrides -> infer.Colorizer on the same network

    @property
    def side(self) -> int:
        """The network's input side: a larger photo is resized to it, a smaller one runs
        at its own size."""
        return self._base.side

    def __repr__(self):
        col = self._base
        strength = "as trained" if col.rebalance_strength is None else col.rebalance_strength
        return (
            f"<kcolor Colorizer {col.source}: side {col.side}, {col.decode} T {col.temperature:g}"
            f", rebalance strength {strength}{', flip' if col.flip else ''}"
            f"{', multiscale' if col.multiscale else ''}>"
        )

    def colorize(
        self, x, *, size=None, decode=None, temperature=None, rebalance_strength=None
    ) -> Image.Image | np.ndarray:
        """Colorize one photo of any size.

        Args:
            x: an image file path; a PIL image (any mode: gray, RGB, 16-bit, with alpha...;
                an EXIF orientation is applied); or a numpy array: (H, W) gray uint8,
                uint16 or float in [0, 1], (H, W, 3) RGB or (H, W, 4) RGBA, uint8 (or
                uint16 / float in [0, 1], rounded to 8 bits). Only the lightness is used.
            size, decode, temperature, rebalance_strength: override `load`'s settings
                (None: keep them).
        Returns:
            for a path or PIL image, a PIL image of the same size, 'RGB' ('RGBA' when the
            input has alpha, which is copied); for an array, (H, W, 3) uint8 RGB
            ((H, W, 4) with the input's alpha).
        """
        colorizer = self._colorizer(size, decode, temperature, rebalance_strength)
        if isinstance(x, np.ndarray):
            [out] = colorizer.colorize([photo.photo_from_image(image_from_array(x))])
            return np.asarray(out)
        if isinstance(x, Image.Image):
            if x.getexif().get(ORIENTATION, 1) != 1:
                x = ImageOps.exif_transpose(x)  # a copy: photo_from_image would turn x itself
            [out] = colorizer.colorize([photo.photo_from_image(x)])
            return out
        if isinstance(x, str | os.PathLike):
            return colorizer.colorize([photo.open_photo(x)])[0]
        raise TypeError(
            f"x: expected an image path, a PIL image or a numpy array, got {type(x).__name__}"
        )

    def colorize_files(
        self,
        inputs,
        out=None,
        *,
        recursive=False,
        fmt=None,
        compare=False,
        batch_size=8,
        size=None,
        decode=None,
        temperature=None,
        rebalance_strength=None,
    ) -> tuple[list[Path], list[tuple[Path, str]]]:
        """Colorize image files and folders as `kcolor colorize` does (kcolor.infer).

        Args:
            inputs: a file or folder, or a list of them.
            out: output folder (None: `colorized/` in each input folder, beside each file).
            recursive, fmt, compare, batch_size: as the command's -r, --format, --compare
                and --batch-size.
            size, decode, temperature, rebalance_strength: override `load`'s settings.
        Returns:
            (written output files, [(input file, one-line problem)] for those that failed
            or were refused), neither of them raising.
        """
        if isinstance(inputs, str | os.PathLike):
            inputs = [inputs]
        colorizer = self._colorizer(size, decode, temperature, rebalance_strength)
        jobs, refused = infer.plan(inputs, out, recursive, fmt, compare)
        failed = infer.colorize_files(jobs, colorizer, batch_size) if jobs else []
        bad = {src for src, _ in failed}
        return [job.dst for job in jobs if job.src not in bad], refused + failed

    def _colorizer(self, size, decode, temperature, rebalance_strength) -> infer.Colorizer:
        """The base colorizer, or one on the same network with these overrides."""
        base = self._base
        key = (size, decode, temperature, rebalance_strength)
        if key == (None,) * 4:
            return base
        if key not in self._variants:
            self._variants[key] = infer.Colorizer(
                base.net,
                size=base.side if size is None else size,
                decode=base.decode if decode is None else decode,
                temperature=base.temperature if temperature is None else temperature,
                rebalance_strength=(
                    base.rebalance_strength if rebalance_strength is None else rebalance_strength
                ),
                replicas=base.replicas,
                source=base.source,
                flip=base.flip,
                multiscale=base.multiscale,
            )
        return self._variants[key]


def image_from_array(x: np.ndarray) -> Image.Image:
    """A numpy photo as a PIL image `photo.photo_from_image` takes.

    (H, W) gray: uint8 -> 'L', uint16 -> 'I;16', float in [0, 1] -> 'F' (read as 16 bits).
    (H, W, 1) is gray; (H, W, 2) gray + alpha; (H, W, 3) RGB; (H, W, 4) RGBA: uint8, or
    uint16 / float in [0, 1] rounded to 8 bits (PIL has no 16-bit color modes; the output
    is 8-bit anyway).

    Raises ValueError naming the shape, dtype or range that does not fit.
    """
    if x.ndim == 3 and x.shape[2] == 1:
        x = x[..., 0]
    if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[2] > 4) or 0 in x.shape[:2]:
        raise ValueError(
            f"x: expected an (H, W) gray or (H, W, 3) RGB array (or with alpha), got shape {x.shape}"
        )
    if x.dtype.kind == "f":
        lo, hi = float(x.min()), float(x.max())
        if not (0.0 <= lo and hi <= 1.0):  # NaN fails too
            raise ValueError(
                f"x: expected float values in [0, 1], got [{lo:g}, {hi:g}]; pass uint8 for 0-255"
            )
        if x.ndim == 2:
            return Image.fromarray(np.ascontiguousarray(x, np.float32))
        x = np.rint(x * 255.0).astype(np.uint8)
    elif x.dtype == np.uint16:
        if x.ndim == 2:
            return Image.fromarray(np.ascontiguousarray(x))
        x = ((x.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif x.dtype != np.uint8:
        raise ValueError(
            f"x: expected a uint8, uint16 or float array, got {x.dtype}; "
            "e.g. x.astype(np.uint8) for values in 0-255"
        )
    return Image.fromarray(np.ascontiguousarray(x))
