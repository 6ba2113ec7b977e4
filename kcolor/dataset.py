"""tf.data input pipeline that streams `kcolor prep` shards.

    >>> from kcolor import dataset
    >>> ds = dataset.train_dataset(shard_paths, batch_size=32, epoch=0, seed=0)
    >>> for L, bins in ds: ...   # (B, S, S, 1) float32 L in [0, 100], (B, S/4, S/4) int32

How the shards are read: tensorflow-io (the only tf.data HDF5 reader) no longer loads
on TensorFlow >= 2.18, and a Python generator (`from_generator`) holds the GIL, can
deadlock when an iterator is dropped mid-epoch while a generator thread waits for the
GIL, and competes with the training loop. But `kcolor prep` writes L and bins as
contiguous, uncompressed HDF5 datasets: raw records at a fixed byte offset. So h5py
only reads the offsets, and tf.data's native `FixedLengthRecordDataset` reads the
records; reading, shuffling, augmentation and batching all run in tf.data's C++ runtime.

The order of an epoch is a pure function of (seed, epoch, shard list), so a resumed
run can skip to the exact batch it stopped at. Each image's bins are checked against
the bin table as they are read (a check over all the bins before training would read
the whole dataset): a bad value fails the step with `bad_data_message` naming the
shard, instead of an index error deep in the loss (CPU) or a NaN loss (GPU).
"""

from __future__ import annotations

import base64
import functools
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import tensorflow as tf

from kcolor import color, shards
from kcolor.loss import subsample_bins

BLOCK = 256  # consecutive images taken from one shard before the next
CYCLE = 4  # shards read in parallel (interleaved) -> shuffling across shards
SHUFFLE_BUFFER = 2048  # images


class _Layout(NamedTuple):
    """Where one shard's records are: image count, byte offsets of L and bins, file size."""

    n: int
    L_offset: int
    bins_offset: int
    file_size: int


def _layout(path: Path) -> _Layout:
    with h5py.File(path, "r") as f:
        n = int(f["L"].shape[0])
        offsets = []
        for name, dtype in (("L", np.uint8), ("bins", np.uint16)):
            ds = f[name]
            offset = ds.id.get_offset()
            if n and (offset is None or ds.dtype != np.dtype(dtype).newbyteorder("<")):
                raise ValueError(
                    f"{path}: dataset {name!r} is not a contiguous little-endian "
                    f"{np.dtype(dtype).name} array; prepare the shards with `kcolor prep`"
                )
            offsets.append(offset or 0)
    return _Layout(n, *offsets, os.path.getsize(path))


Piece = tuple[Path, _Layout, int, int]  # shard, its layout, images [lo, hi)


def _pieces(paths: Sequence[Path], part: int, parts: int) -> list[Piece]:
    """This input pipeline's share: whole shards when there are enough, else ranges."""
    layouts = [(Path(p), _layout(p)) for p in paths]
    if parts == 1:
        out = [(p, lay, 0, lay.n) for p, lay in layouts]
    elif len(paths) >= parts:
        out = [(p, lay, 0, lay.n) for p, lay in layouts[part::parts]]
    else:
        out = [(p, lay, lay.n * part // parts, lay.n * (part + 1) // parts) for p, lay in layouts]
    return [piece for piece in out if piece[3] > piece[2]]


def _pieces_dataset(pieces: list[Piece], size: int) -> tf.data.Dataset:
    """One element per piece: (path, then header and footer bytes around its L records,
    then around its bins records)."""
    rows = []
    for path, lay, lo, hi in pieces:
        row = [str(path)]
        for offset, item in ((lay.L_offset, size * size), (lay.bins_offset, 2 * size * size)):
            row += [offset + lo * item, lay.file_size - offset - hi * item]
        rows.append(row)
    bounds = np.array([row[1:] for row in rows], np.int64).reshape(-1, 4)  # none: (0, 4)
    paths = tf.constant([row[0] for row in rows], tf.string, shape=[len(rows)])
    return tf.data.Dataset.from_tensor_slices((paths, *bounds.T))


@tf.autograph.experimental.do_not_convert  # plain tf.data calls: nothing to convert
def _records(path, L_head, L_foot, bins_head, bins_foot, size: int, q: int) -> tf.data.Dataset:
    """(L, bins) images of one piece, uint8 and uint16 (S, S), read natively; bins
    checked to be below `q` (the bin table's size)."""
    read = tf.data.FixedLengthRecordDataset
    L = read(path, size * size, L_head, L_foot).map(
        lambda r: tf.reshape(tf.io.decode_raw(r, tf.uint8), (size, size))
    )
    bins = read(path, 2 * size * size, bins_head, bins_foot).map(
        lambda r: _checked_bins(
            tf.reshape(tf.io.decode_raw(r, tf.uint16, little_endian=True), (size, size)), path, q
        )
    )
    return tf.data.Dataset.zip(L, bins)


# The check's message carries the shard's path in base64: TensorFlow escapes quotes and
# control characters in the strings it prints, base64 has none.
_BAD_BINS = "kcolor-bad-bins"
_BAD_BINS_RE = re.compile(_BAD_BINS + r":([A-Za-z0-9_=-]*):(\d+):(\d+)")


def _checked_bins(bins, path, q: int):
    """bins (S, S) uint16, unchanged, after asserting that every value is below q."""
    top = tf.cast(tf.reduce_max(bins), tf.int32)
    message = tf.strings.join(
        [_BAD_BINS, tf.io.encode_base64(path), str(q), tf.strings.as_string(top)], ":"
    )
    with tf.control_dependencies([tf.debugging.Assert(top < q, [message])]):
        return tf.identity(bins)


def bad_data_message(error: Exception) -> str | None:
    """The one-line message of a bad bin value met while reading (an InvalidArgumentError
    from `_checked_bins`), e.g. 'train-00003-of-00017.h5: bins: expected values below
    313, found 65535 (a damaged shard: remake it with kcolor prep)'; None for other errors."""
    m = _BAD_BINS_RE.search(str(getattr(error, "message", error)))
    if m is None:
        return None
    path = base64.urlsafe_b64decode(m[1] + "=" * (-len(m[1]) % 4)).decode("utf-8", "replace")
    return (
        f"{path}: bins: expected values below {m[2]}, found {m[3]} "
        "(a damaged shard: remake it with `kcolor prep`)"
    )


def count_images(paths: Sequence[Path], part: int = 0, parts: int = 1) -> int:
    return sum(hi - lo for _, _, lo, hi in _pieces(paths, part, parts))


# --degrade: the ranges an old print's lightness is degraded in (uint8 L levels, pixels)
FADE_CONTRAST = (0.5, 1.0)  # L -> lift + contrast * L, the lift keeping L within 0..255
BLUR_SIGMA = (0.0, 1.5)  # px, Gaussian
GRAIN_SIGMA = (0.0, 10.0)  # levels, Gaussian per pixel
JPEG_QUALITY = (30, 95)
_BLUR_RADIUS = 4


def _blur(L, sigma):
    """(S, S) float L blurred by a Gaussian of a tensor sigma, edges reflected.

    Hand-written: tf.image has no Gaussian blur, and keras.layers.RandomGaussianBlur draws
    its sigma from a stateful seed generator, while every augmentation here must be a pure
    function of (seed, image index) so that a resumed run replays the same batches."""
    x = tf.range(-_BLUR_RADIUS, _BLUR_RADIUS + 1, dtype=tf.float32)
    k = tf.exp(-(x**2) / (2 * tf.maximum(sigma, 1e-3) ** 2))
    k = k / tf.reduce_sum(k)
    r = _BLUR_RADIUS
    img = tf.pad(L[None, :, :, None], [[0, 0], [r, r], [r, r], [0, 0]], "REFLECT")
    img = tf.nn.conv2d(img, tf.reshape(k, [-1, 1, 1, 1]), 1, "VALID")
    img = tf.nn.conv2d(img, tf.reshape(k, [1, -1, 1, 1]), 1, "VALID")
    return img[0, :, :, 0]


def _degrade(L, s):
    """uint8 (S, S) L as an old print's: faded, blurred, grainy, JPEG-compressed, each
    by a random amount within the ranges above (seeded by the int64 pair s)."""

    def u(i, lo, hi):
        return tf.random.stateless_uniform([], s + 10 + i, lo, hi)

    contrast = u(0, *FADE_CONTRAST)
    lift = u(1, 0.0, 1.0) * 255.0 * (1.0 - contrast)
    x = lift + contrast * tf.cast(L, tf.float32)
    sigma = u(2, *BLUR_SIGMA)
    small = tf.reduce_min(tf.shape(x)) <= _BLUR_RADIUS  # too small to pad by reflection
    x = tf.cond(small, lambda: x, lambda: _blur(x, sigma))
    x = x + u(3, *GRAIN_SIGMA) * tf.random.stateless_normal(tf.shape(x), s + 14)
    x = tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)
    quality = tf.random.stateless_uniform(
        [], s + 15, JPEG_QUALITY[0], JPEG_QUALITY[1] + 1, tf.int32
    )
    return tf.image.adjust_jpeg_quality(x[..., None], quality)[..., 0]


def _augment(seed, crop: int, flip: bool, zoom: float = 1.0, degrade: float = 0.0):
    """Random crop to `crop` and horizontal flip of one image, stateless-seeded.

    With zoom > 1 the crop is cut from a random square of side in [crop / zoom,
    crop * zoom] (within the image) and resized to `crop`: L bilinear, bins nearest.
    With degrade > 0 that share of the images has its L degraded as an old print's
    (`_degrade`); the bins, the true colours, stay as they are.
    """

    @tf.autograph.experimental.do_not_convert  # tf.cond already: nothing to convert
    def fn(index, example):
        L, bins = example
        s = tf.stack([tf.cast(seed, tf.int64), index])
        size = tf.shape(L)[0]
        if crop and zoom > 1:
            lo = max(8, int(round(crop / zoom)))
            hi = tf.minimum(size, int(round(crop * zoom)))
            side = tf.random.stateless_uniform([], s + 3, lo, hi + 1, tf.int32)
            oy = tf.random.stateless_uniform([], s, 0, size - side + 1, tf.int32)
            ox = tf.random.stateless_uniform([], s + 1, 0, size - side + 1, tf.int32)
            L = L[oy : oy + side, ox : ox + side, None]
            bins = bins[oy : oy + side, ox : ox + side, None]
            L = tf.image.resize(L, [crop, crop], "bilinear", antialias=True)
            L = tf.cast(tf.clip_by_value(tf.round(L[..., 0]), 0, 255), tf.uint8)
            bins = tf.image.resize(bins, [crop, crop], "nearest")[..., 0]
        elif crop:
            hi = size - crop + 1
            oy = tf.random.stateless_uniform([], s, 0, hi, tf.int32)
            ox = tf.random.stateless_uniform([], s + 1, 0, hi, tf.int32)
            # keep crops on the 4-pixel grid of the network's output
            oy, ox = oy - oy % 4, ox - ox % 4
            L = L[oy : oy + crop, ox : ox + crop]
            bins = bins[oy : oy + crop, ox : ox + crop]
        if flip:
            do = tf.random.stateless_uniform([], s + 2) < 0.5
            L = tf.cond(do, lambda: tf.reverse(L, [1]), lambda: L)
            bins = tf.cond(do, lambda: tf.reverse(bins, [1]), lambda: bins)
        if degrade:
            do = tf.random.stateless_uniform([], s + 4) < degrade
            L = tf.cond(do, lambda: _degrade(L, s), lambda: L)
        return L, bins

    return fn


@tf.autograph.experimental.do_not_convert
def _to_model(L, bins):
    """Batch of uint8 L / uint16 bins -> ((B,S,S,1) float32 L in [0,100], (B,S/4,S/4) int32)."""
    L, bins = _to_model_full(L, bins)
    return L, subsample_bins(bins)


@tf.autograph.experimental.do_not_convert
def _to_model_full(L, bins):
    """Like `_to_model` but the bins stay at full resolution: (B,S,S) int32."""
    L = tf.cast(L, tf.float32)[..., None] / color.L_UINT8_SCALE
    return L, tf.cast(bins, tf.int32)


def train_dataset(
    paths: Sequence[Path],
    batch_size: int,
    epoch: int,
    seed: int = 0,
    crop: int = 0,
    image_size: int | None = None,
    part: int = 0,
    parts: int = 1,
    skip_batches: int = 0,
    full_bins: bool = False,
    zoom: float = 1.0,
    degrade: float = 0.0,
) -> tf.data.Dataset:
    """One epoch of shuffled, augmented training batches (the last partial batch dropped).

    Args:
        paths: the train shards (all with the same image size).
        batch_size: images per batch of this pipeline.
        epoch, seed: fix the order; the same values give the same batches.
        crop: random crop side (multiple of 8, <= the shards' size); 0 = no crop.
        part, parts: this input pipeline's share in multi-worker training.
        skip_batches: batches of this epoch already trained (resume).
        zoom: scale augmentation of the crops (see `_augment`); 1 = none.
        degrade: the share of images whose L is degraded as an old print's (`_degrade`).
        full_bins: yield the bins at full resolution (for soft targets) instead of at
            the logits' resolution.
    """
    size = image_size or _image_size(paths)
    pieces = _pieces(paths, part, parts)
    rng = np.random.default_rng([seed, epoch, part])
    pieces = [pieces[i] for i in rng.permutation(len(pieces))]
    ds = _pieces_dataset(pieces, size).interleave(
        functools.partial(_records, size=size, q=_num_bins(pieces)),
        cycle_length=CYCLE,
        block_length=BLOCK,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.shuffle(SHUFFLE_BUFFER, seed=int(rng.integers(2**31)))
    aug_seed = int(rng.integers(2**31))
    ds = ds.enumerate().map(
        _augment(
            aug_seed, crop if crop and crop < size else 0, flip=True, zoom=zoom, degrade=degrade
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.batch(batch_size, drop_remainder=True).map(
        _to_model_full if full_bins else _to_model, tf.data.AUTOTUNE
    )
    if skip_batches:
        ds = ds.skip(skip_batches)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(
    paths: Sequence[Path], batch_size: int, part: int = 0, parts: int = 1
) -> tf.data.Dataset:
    """Validation batches in file order, full size, no augmentation (last batch kept)."""
    size = _image_size(paths)
    pieces = _pieces(paths, part, parts)
    records = functools.partial(_records, size=size, q=_num_bins(pieces))
    ds = _pieces_dataset(pieces, size).flat_map(records)
    return ds.batch(batch_size).map(_to_model, tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _num_bins(pieces: list[Piece]) -> int:
    """The size of the shards' bin table (checked compatible by the caller)."""
    return shards.read_meta(pieces[0][0])["table"].size if pieces else 1 << 16


def _image_size(paths: Sequence[Path]) -> int:
    with h5py.File(paths[0], "r") as f:
        return int(f["L"].shape[1])


def load_arrays(paths: Sequence[Path], limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `limit` images of the shards as arrays (previews, benchmarks)."""
    Ls, bins, n = [], [], 0
    for p in paths:
        with h5py.File(p, "r") as f:
            take = min(limit - n, f["L"].shape[0])
            Ls.append(f["L"][:take])
            bins.append(f["bins"][:take])
            n += take
        if n >= limit:
            break
    return np.concatenate(Ls), np.concatenate(bins)
