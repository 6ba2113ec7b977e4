"""Colorize photos with a trained model: the library behind `kcolor colorize`.

    kcolor colorize old/ -r -o new/ --model runs/a/model.keras

    >>> from kcolor import infer, photo
    >>> col = infer.load_colorizer("runs/a/model.keras")
    >>> [out] = col.colorize([photo.open_photo("old.jpg")])   # PIL image, full size

As in richzhang/colorization: the photo's lightness is resized to the network's input
side (a photo smaller than that runs at its own size), the network predicts a distribution over ab bins at 1/4 of that side, which is
decoded to ab (annealed mean or argmax), upsampled bilinearly to the full resolution
and joined to the photo's own full-resolution L (kcolor.photo), so no detail is lost.
A model may record two test-time averages of the logits before decoding: with the
mirror image's (flip) and, for a photo larger than the training side, with those at the
training side (multiscale).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from kcolor import color, rebalance
from kcolor.photo import (
    IMAGE_SUFFIXES,
    READ_SUFFIXES,
    Photo,
    compare_image,
    compose,
    compose16,
    describe_error,
    has_color,
    net_lightness,
    open_photo,
    save_image,
    save_image16,
)

SIXTEEN_BIT_FORMATS = ("PNG", "TIFF")  # 16-bit inputs give 16-bit outputs in these

OUTPUT_FORMATS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "tiff": ".tif", "bmp": ".bmp"}
OUTPUT_DIR = "colorized"  # default output folder, created beside the inputs
BATCH_PIXELS = 16_000_000  # full-resolution pixels decoded per batch (one huge photo always fits)


def default_model_path() -> Path | None:
    """The bundled model kcolor/weights/model.keras, or None when none is bundled."""
    path = Path(__file__).parent / "weights" / "model.keras"
    return path if path.is_file() else None


# --- the network -------------------------------------------------------------------------


class Colorizer:
    """A kcolor model with its decoding settings.

    Args:
        net: a model from `kcolor.model.build_model` / `load_model`.
        size: side the lightness is resized to (None: the model's photo_side, else its
            input_size); rounded to a multiple of `model.input_multiple` of its arch. A
            photo smaller than that runs at its own size (`side_for`).
        decode, temperature: see `kcolor.rebalance.decode_ab` (None: the model's recorded
            temperature; the paper's T = 0.38 unless `kcolor decoding` changed it).
        rebalance_strength: see `kcolor.rebalance.rebalance_logits` (None: the model's
            recorded value; a model that records none is decoded as trained).
        flip: average the logits of the photo and of its mirror image (None: the model's
            recorded choice). Twice the network's work; on the bundled model it scored
            higher in both AuCs (model card).
        multiscale: a photo that runs at a side larger than the model's training side
            also runs at the training side, and the two sets of logits are averaged
            (None: the model's recorded choice). About 1.3x the network's work on a
            224 px photo of a 128 px model; on the bundled model it scored higher in both
            AuCs on full-size photos (model card).
        replicas: devices the model is mirrored on (see `load_colorizer`).
        source: where the model came from (for reports).
    """

    def __init__(
        self,
        net,
        size=None,
        decode="annealed",
        temperature=None,
        rebalance_strength=None,
        replicas=1,
        source=None,
        flip=None,
        multiscale=None,
    ):
        from kcolor import model

        info = model.model_info(net)
        temperature = float(
            info.get("temperature", color.ANNEALED_T) if temperature is None else temperature
        )
        if rebalance_strength is None:
            rebalance_strength = info.get("rebalance_strength")
        if rebalance_strength is not None:
            rebalance_strength = rebalance.check_rebalance_strength(rebalance_strength)
            if info.get("prior") is None:
                raise ValueError(
                    "rebalance strength: the model records no training prior to rebalance with"
                )
        if decode not in rebalance.DECODE_METHODS:
            raise ValueError(f"decode: expected one of {rebalance.DECODE_METHODS}, got {decode!r}")
        if decode == "annealed" and temperature <= 0:
            raise ValueError(f"temperature: expected > 0, got {temperature}")
        size = int(size or info.get("photo_side") or info["input_size"])
        multiple = model.input_multiple(info.get("arch", "eccv16"))
        self.side = max(multiple, round(size / multiple) * multiple)
        self.multiple = multiple
        self.net, self.info = net, info
        self.table = color.get_bin_table(info["bin_table"])
        self.decode, self.temperature, self.replicas = decode, temperature, replicas
        self.rebalance_strength = rebalance_strength
        self.flip = bool(info.get("flip", False) if flip is None else flip)
        self.multiscale = bool(info.get("multiscale", False) if multiscale is None else multiscale)
        self.training_side = int(info["input_size"])
        self._weights = None  # (trained, decode) rebalancing weights
        if rebalance_strength is not None:
            prior = np.asarray(info["prior"], np.float64)
            self._weights = (
                rebalance.rebalance_weights(prior, self.table, info["rebalance"]),
                rebalance.rebalance_weights(prior, self.table, "zhang"),
            )
        self.source = source

    def side_for(self, width: int, height: int) -> int:
        """The network side for a photo of this size: `side`, or for a smaller photo its
        long side rounded up to the arch's multiple. A small photo is not enlarged: the
        network was trained on photos at their own scale, and on 128 px val crops (tuning
        half) running at 128 instead of enlarging them to 224 scored 1.1 points more raw
        AuC, 0.6 less rebalanced (model card)."""
        long = max(width, height)
        return min(self.side, max(self.multiple, -(-long // self.multiple) * self.multiple))

    def lightness(self, photo: Photo) -> np.ndarray:
        """The photo's L at its network side (`side_for`, `net_lightness`)."""
        return net_lightness(photo, self.side_for(*photo.size))

    def predict_each(self, Ls: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """`predict` for lightness arrays of mixed sides, one network call per side;
        returns (ab, bins) for each, in order."""
        out: list = [None] * len(Ls)
        by_side: dict[tuple, list[int]] = {}
        for i, L in enumerate(Ls):
            by_side.setdefault(L.shape, []).append(i)
        for idx in by_side.values():
            ab, bins = self.predict(np.stack([Ls[i] for i in idx]))
            for i, a, b in zip(idx, ab, bins, strict=True):
                out[i] = (a, b)
        return out

    def logit_shift(self) -> np.ndarray | None:
        """(Q,) float32 that this colorizer's rebalancing adds to every logit vector, or
        None when it decodes the logits as trained (a constant shift: `kcolor export`
        folds it into the graph)."""
        if self._weights is None:
            return None
        zeros = np.zeros(self.table.size, np.float32)
        return rebalance.rebalance_logits(zeros, *self._weights, self.rebalance_strength)

    def logits(self, L: np.ndarray) -> np.ndarray:
        """The network's bin logits, rebalanced as this colorizer decodes them.

        Args:
            L: (B, S, S) float32 lightness in [0, 100], S a multiple of self.multiple.
        Returns:
            (B, S/4, S/4, Q) float32 logits.
        """
        x = np.asarray(L, np.float32)[..., None]
        logits = self._view_logits(x)
        small = self.multiscale and multiscale_shape(
            *x.shape[1:3], self.training_side, self.multiple
        )
        if small:  # as export.ServingModule does it
            import tensorflow as tf

            low = self._view_logits(shrink(x, *small).numpy())
            logits = (logits + tf.image.resize(low, logits.shape[1:3], "bilinear").numpy()) / 2
        if self._weights is not None:
            logits = rebalance.rebalance_logits(logits, *self._weights, self.rebalance_strength)
        return np.asarray(logits, np.float32)

    def _view_logits(self, x: np.ndarray) -> np.ndarray:
        """The network's logits for (B, H, W, 1) x, averaged with the mirror image's
        under flip."""
        if self.flip:  # the mirrored photos ride in the same batch; their logits mirrored back
            both = self._net_logits(np.concatenate([x, x[:, :, ::-1]]))
            return (both[: len(x)] + both[len(x) :, :, ::-1]) / 2
        return self._net_logits(x)

    def _net_logits(self, x: np.ndarray) -> np.ndarray:
        if self.replicas > 1:  # predict() splits the batch over the replicas
            return np.asarray(self.net.predict(x, batch_size=len(x), verbose=0))
        return np.asarray(self.net.predict_on_batch(x))

    def predict(self, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Network + decoding.

        Args:
            L: (B, S, S) float32 lightness in [0, 100], S a multiple of self.multiple.
        Returns:
            ab: (B, S/4, S/4, 2) float32 decoded ab; bins: (B, S/4, S/4) int32 argmax bins.
        """
        logits = self.logits(L)
        ab = rebalance.decode_ab(logits, self.table.centres, self.decode, self.temperature)
        return np.asarray(ab), np.argmax(logits, axis=-1).astype(np.int32)

    def colorize(self, photos: list[Photo]) -> list[Image.Image]:
        """Colorize photos of any sizes as one batch; returns full-size PIL images."""
        results = self.predict_each([self.lightness(p) for p in photos])
        return [compose(p, a) for p, (a, _) in zip(photos, results, strict=True)]


def multiscale_shape(height: int, width: int, side: int, multiple: int) -> tuple | None:
    """The (h, w) that a (height, width) network input also runs at under multiscale
    (`multiscale_size`); None when its long side is `side` or less."""
    if max(height, width) <= side:
        return None
    h, w = multiscale_size([height, width], side, multiple).numpy()
    return int(h), int(w)


def multiscale_size(size, side: int, multiple: int):
    """Multiscale's second input size for an input of `size` ([h, w], ints or a tensor):
    its long side brought down to `side` (the training side), each side rounded to the
    arch's multiple. An int32 tensor [h, w]; `Colorizer` and the exported graphs share it."""
    import tensorflow as tf

    size = tf.cast(size, tf.float32)
    scaled = size * (side / tf.reduce_max(size)) / multiple
    return tf.cast(tf.maximum(1.0, tf.round(scaled)) * multiple, tf.int32)


def shrink(x, height, width):
    """(B, H, W, C) float32 resized down to (B, height, width, C) by the antialiased
    bilinear (triangle) filter of `tf.image.resize(..., antialias=True)`.

    Written out as two matrix products because TFLite and ONNX have no op for that
    resize (TensorFlow's ScaleAndTranslate): `kcolor export` traces this same function
    into its graphs, so exported models shrink exactly as `Colorizer` does. Runs eagerly
    or traced; the sizes may be tensors. Returns a tf.Tensor.
    """
    import tensorflow as tf

    def taps(n_in, n_out):  # (n_out, n_in) weights, rows summing to 1
        n_in, n_out = tf.cast(n_in, tf.float32), tf.cast(n_out, tf.float32)
        scale = n_in / n_out
        centres = (tf.range(n_out) + 0.5) * scale  # output pixel centres in input pixels
        distance = tf.abs(tf.range(n_in)[None, :] + 0.5 - centres[:, None])
        w = tf.nn.relu(1.0 - distance / tf.maximum(scale, 1.0))
        return w / tf.reduce_sum(w, axis=1, keepdims=True)

    x = tf.convert_to_tensor(x, tf.float32)
    shape = tf.shape(x)
    return tf.einsum("ih,bhwc,jw->bijc", taps(shape[1], height), x, taps(shape[2], width))


def load_colorizer(model_path=None, precision="auto", **kwargs) -> Colorizer:
    """Load a model mirrored on all GPUs; kwargs go to Colorizer.

    model_path: a .keras file, a `kcolor fit` run folder (its model.keras), or None for
    the bundled model.
    precision: 'auto' | 'fp32' | 'bf16' | 'fp16' (see `kcolor.model.resolve_precision`).

    Raises ValueError (one line) when there is no model or the file is not a kcolor model.
    """
    import tensorflow as tf

    from kcolor import model

    if model_path is None:
        model_path = default_model_path()
        if model_path is None:
            raise ValueError(
                "no --model given and no bundled model: pass a .keras file from `kcolor fit`"
            )
    model_path = Path(model_path)
    if model_path.is_dir():
        model_path = model_path / "model.keras"
    gpus = tf.config.list_physical_devices("GPU")
    strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    with strategy.scope():
        net = model.load_model(model_path)
        arch = model.model_info(net).get("arch", "eccv16")
        net = model.with_precision(net, model.resolve_precision(precision, arch))
    return Colorizer(net, replicas=strategy.num_replicas_in_sync, source=model_path, **kwargs)


# --- files ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Job:
    """One photo to colorize: its file, its output, its --compare output (or None)."""

    src: Path
    dst: Path
    fmt: str  # PIL format of dst
    compare: Path | None = None


def find_images(
    inputs: Iterable[str | os.PathLike], recursive: bool = False, skip=(), suffixes=READ_SUFFIXES
) -> list[tuple[Path, Path]]:
    """(file, folder it was found in) of each image; files given by name are kept whatever
    their suffix, folders give their files with `suffixes` (sorted; subfolders with
    `recursive`, except hidden ones and those in `skip`)."""
    skip = {Path(s).resolve() for s in skip}
    found = []
    for item in map(Path, inputs):
        if not item.is_dir():
            found.append((item, item.parent))
            continue
        walk = sorted(item.rglob("*") if recursive else item.iterdir())
        for f in walk:
            rel = f.relative_to(item)
            if any(p.startswith(".") for p in rel.parts) or f.suffix.lower() not in suffixes:
                continue
            if any(d in skip for d in f.resolve().parents) or not f.is_file():
                continue
            found.append((f, item))
    return found


def plan(
    inputs, out=None, recursive=False, fmt=None, compare=False, suffixes=READ_SUFFIXES
) -> tuple[list[Job], list[tuple[Path, str]]]:
    """Output paths for the inputs, and the inputs refused (with the reason).

    suffixes: the files folders give (kcolor.video.VIDEO_SUFFIXES for videos, whose
    outputs keep their suffix).

    Outputs go to OUT/<path relative to the input folder> (a file given by name: OUT/<name>);
    without OUT, to <input folder>/colorized/... (for a file: colorized/ beside it).
    An output never replaces an input, nor another input's output.
    """
    inputs = [Path(i) for i in inputs]
    outdirs = [Path(out)] if out else [(i if i.is_dir() else i.parent) / OUTPUT_DIR for i in inputs]
    found = find_images(inputs, recursive, skip=outdirs, suffixes=suffixes)
    sources = {f.resolve() for f, _ in found}
    jobs, refused, taken = [], [], {}
    for f, root in found:
        base = (Path(out) if out else root / OUTPUT_DIR) / (
            f.relative_to(root) if f != root else f.name
        )
        if fmt:
            dst, dst_fmt = base.with_suffix(OUTPUT_FORMATS[fmt]), fmt.upper()
        elif f.suffix.lower() in IMAGE_SUFFIXES:
            dst, dst_fmt = base, IMAGE_SUFFIXES[f.suffix.lower()]
        elif f.suffix.lower() in suffixes and f.suffix.lower() not in READ_SUFFIXES:
            dst, dst_fmt = base, None  # a video keeps its container
        else:
            dst, dst_fmt = base.with_name(base.name + ".png"), "PNG"
        cmp = dst.with_name(f"{dst.stem}-compare{dst.suffix}") if compare else None
        clash = [p for p in (dst, cmp) if p is not None and p.resolve() in sources]
        if clash:
            refused.append((f, f"output {clash[0]} would overwrite an input; choose another -o"))
        elif dst.resolve() in taken:
            refused.append((f, f"output {dst} is also the output of {taken[dst.resolve()]}"))
        else:
            taken[dst.resolve()] = f
            jobs.append(Job(f, dst, dst_fmt, cmp))
    return jobs, refused


def _header_pixels(path: Path) -> int:
    try:
        with Image.open(path) as img:
            return img.size[0] * img.size[1]
    except Exception:  # the real load reports the problem
        return 0


def _batches(items: list, path: Callable, batch_size: int) -> Iterator[list]:
    """Batches of at most batch_size photos and BATCH_PIXELS decoded pixels (or one photo)."""
    batch, pixels = [], 0
    for item in items:
        px = _header_pixels(path(item))
        if batch and (len(batch) == batch_size or pixels + px > BATCH_PIXELS):
            yield batch
            batch, pixels = [], 0
        batch.append(item)
        pixels += px
    if batch:
        yield batch


def run_photos(
    items: list,
    colorizer: Colorizer,
    finish: Callable,
    path: Callable = lambda item: item,
    batch_size: int = 8,
    workers: int | None = None,
    on_result: Callable | None = None,
) -> list[tuple[Path, str]]:
    """The batched photo runner of colorize, evaluate and the decoding sweep: load each
    item's photo, run the network on batches, then `finish` each photo; a bad photo fails
    alone.

    Args:
        items: what to run (paths, or `Job`s with `path=lambda job: job.src`).
        finish: `finish(item, photo, ab_low, bins, workers) -> result`, run on the pool:
            ab_low (S/4, S/4, 2) float32 and bins (S/4, S/4) int32 from `Colorizer.predict`.
        on_result: `on_result(item, problem or None, result or None)`, once per item, in
            the calling thread.
    Memory stays bounded: a batch holds at most `batch_size` photos and BATCH_PIXELS
    decoded pixels, and the finishing of one batch overlaps the next batch's decoding
    and network. Decoding and finishing run on `workers` threads (default: all cores).

    Returns:
        [(file, one-line problem)] for the items that failed.
    """
    workers = workers or os.cpu_count() or 1
    failed = []

    def outcome(item, future, last_step):
        try:
            result = future.result()
        except Exception as e:  # one bad photo must not stop the others
            failed.append((path(item), describe_error(e)))
            if on_result:
                on_result(item, failed[-1][1], None)
            return None
        if last_step and on_result:
            on_result(item, None, result)
        return result

    def load(item):
        photo = open_photo(path(item))
        return photo, colorizer.lightness(photo)

    with ThreadPoolExecutor(workers) as pool:
        finishing = []
        for batch in _batches(items, path, batch_size):
            loads = [(item, pool.submit(load, item)) for item in batch]
            loaded = [(item, r) for item, f in loads if (r := outcome(item, f, False)) is not None]
            results = ()
            try:
                if loaded:
                    results = colorizer.predict_each([r[1] for _, r in loaded])
            except Exception as e:  # e.g. out of device memory: this batch fails, not the run
                for item, _ in loaded:
                    failed.append((path(item), describe_error(e)))
                    if on_result:
                        on_result(item, failed[-1][1], None)
                loaded = []
            for item, f in finishing:
                outcome(item, f, True)
            strip_workers = max(1, workers // max(1, len(loaded)))  # a lone huge photo: all cores
            finishing = [
                (item, pool.submit(finish, item, photo, a, b, strip_workers))
                for (item, (photo, _)), (a, b) in zip(loaded, results, strict=True)
            ]
        for item, f in finishing:
            outcome(item, f, True)
    return failed


def _write(job: Job, photo: Photo, ab_low: np.ndarray, bins, workers: int) -> bool:
    """Write the colorized photo (and its --compare image); True when the input had colours.

    A 16-bit photo written as PNG or TIFF stays 16-bit, its lightness at full precision."""
    if photo.image.mode == "I;16" and job.fmt in SIXTEEN_BIT_FORMATS and photo.alpha is None:
        save_image16(compose16(photo, ab_low, workers), job.dst, job.fmt)
        out = compose(photo, ab_low, workers) if job.compare is not None else None
    else:
        out = compose(photo, ab_low, workers)
        save_image(out, job.dst, job.fmt, photo.exif)
    if job.compare is not None:
        save_image(compare_image(photo, out), job.compare, job.fmt)
    return has_color(photo)


def colorize_files(
    jobs: list[Job],
    colorizer: Colorizer,
    batch_size: int = 8,
    workers: int | None = None,
    on_result: Callable[[Job, str | None], None] | None = None,
    on_recolor: Callable[[Job], None] | None = None,
) -> list[tuple[Path, str]]:
    """Colorize and write each job's photo (`run_photos`); a bad photo fails alone.

    `on_result(job, None or problem)` is called once per job, in the calling thread, and
    `on_recolor(job)` for each input that was a colour photo (its colours are replaced).
    Returns [(file, one-line problem)] for the photos that failed.
    """

    def report(job, problem, had_color):
        if on_result:
            on_result(job, problem)
        if had_color and on_recolor:
            on_recolor(job)

    return run_photos(
        jobs, colorizer, _write, lambda job: job.src, batch_size, workers, on_result=report
    )
