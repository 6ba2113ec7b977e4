"""tf.data input pipeline that streams `kcolor prep` shards.

    >>> from kcolor import dataset
    >>> ds = dataset.train_dataset(shard_paths, batch_size=32, epoch=0, seed=0)
    >>> for L, bins in ds: ...   # (B, S, S, 1) float32 L in [0, 100], (B, S/4, S/4) int32

Why h5py inside `from_generator` rather than a native reader: tensorflow-io (the
only tf.data HDF5 reader) no longer loads on TensorFlow >= 2.18. The generator only
does contiguous slab reads (thousands of images per call, GB/s); unbatching,
shuffling, augmentation and batching run in tf.data's C++ runtime.

The order of an epoch is a pure function of (seed, epoch, shard list), so a resumed
run can skip to the exact batch it stopped at.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import tensorflow as tf

from kcolor import color
from kcolor.loss import subsample_bins

SLAB = 256  # images per contiguous h5py read
CYCLE = 4  # shards read in parallel (interleaved) -> shuffling across shards
SHUFFLE_BUFFER = 2048  # images


def _shard_length(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return int(f["L"].shape[0])


def _read_slabs(path, start, stop):
    """Yield (L, bins) slabs of images [start, stop) of one shard: uint8/uint16 arrays."""
    path = path.decode() if isinstance(path, bytes) else str(path)
    with h5py.File(path, "r") as f:
        L, bins = f["L"], f["bins"]
        for i in range(int(start), int(stop), SLAB):
            j = min(i + SLAB, int(stop))
            yield L[i:j], bins[i:j]


def _slab_dataset(path, start, stop, size):
    spec = (
        tf.TensorSpec((None, size, size), tf.uint8),
        tf.TensorSpec((None, size, size), tf.uint16),
    )
    return tf.data.Dataset.from_generator(
        _read_slabs, output_signature=spec, args=(path, start, stop)
    )


def _pieces(paths: Sequence[Path], part: int, parts: int) -> list[tuple[str, int, int]]:
    """This input pipeline's share: whole shards when there are enough, else ranges."""
    lengths = [_shard_length(p) for p in paths]
    if parts == 1:
        return [(str(p), 0, n) for p, n in zip(paths, lengths, strict=True)]
    if len(paths) >= parts:
        return [(str(p), 0, n) for p, n in list(zip(paths, lengths, strict=True))[part::parts]]
    out = []
    for p, n in zip(paths, lengths, strict=True):
        lo, hi = n * part // parts, n * (part + 1) // parts
        out.append((str(p), lo, hi))
    return out


def _pieces_dataset(pieces: list[tuple[str, int, int]]) -> tf.data.Dataset:
    paths, lo, hi = zip(*pieces, strict=True)
    return tf.data.Dataset.from_tensor_slices(
        (list(paths), np.array(lo, np.int64), np.array(hi, np.int64))
    )


def count_images(paths: Sequence[Path], part: int = 0, parts: int = 1) -> int:
    return sum(hi - lo for _, lo, hi in _pieces(paths, part, parts))


def _augment(seed, crop: int, flip: bool):
    """Random crop to `crop` and horizontal flip of one image, stateless-seeded."""

    def fn(index, example):
        L, bins = example
        s = tf.stack([tf.cast(seed, tf.int64), index])
        size = tf.shape(L)[0]
        if crop:
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
        return L, bins

    return fn


def _to_model(L, bins):
    """Batch of uint8 L / uint16 bins -> ((B,S,S,1) float32 L in [0,100], (B,S/4,S/4) int32)."""
    L = tf.cast(L, tf.float32)[..., None] / color.L_UINT8_SCALE
    return L, tf.cast(subsample_bins(bins), tf.int32)


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
) -> tf.data.Dataset:
    """One epoch of shuffled, augmented training batches (the last partial batch dropped).

    Args:
        paths: the train shards (all with the same image size).
        batch_size: images per batch of this pipeline.
        epoch, seed: fix the order; the same values give the same batches.
        crop: random crop side (multiple of 8, <= the shards' size); 0 = no crop.
        part, parts: this input pipeline's share in multi-worker training.
        skip_batches: batches of this epoch already trained (resume).
    """
    size = image_size or _image_size(paths)
    pieces = _pieces(paths, part, parts)
    rng = np.random.default_rng([seed, epoch, part])
    pieces = [pieces[i] for i in rng.permutation(len(pieces))]
    ds = _pieces_dataset(pieces)
    ds = ds.interleave(
        lambda p, lo, hi: _slab_dataset(p, lo, hi, size),
        cycle_length=CYCLE,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.unbatch().shuffle(SHUFFLE_BUFFER, seed=int(rng.integers(2**31)))
    aug_seed = int(rng.integers(2**31))
    ds = ds.enumerate().map(
        _augment(aug_seed, crop if crop and crop < size else 0, flip=True),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.batch(batch_size, drop_remainder=True).map(_to_model, tf.data.AUTOTUNE)
    if skip_batches:
        ds = ds.skip(skip_batches)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(
    paths: Sequence[Path], batch_size: int, part: int = 0, parts: int = 1
) -> tf.data.Dataset:
    """Validation batches in file order, full size, no augmentation (last batch kept)."""
    size = _image_size(paths)
    pieces = _pieces(paths, part, parts)
    ds = _pieces_dataset(pieces)
    ds = ds.flat_map(lambda p, lo, hi: _slab_dataset(p, lo, hi, size)).unbatch()
    return ds.batch(batch_size).map(_to_model, tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


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
