"""Throughput of `kcolor prep` against the naive per-image pipeline.

    .venv/bin/python benchmarks/prep.py [SOURCE] [--workers N] [--baseline-images 300]

SOURCE defaults to ../shared/data/photos-train (a Miniplaces layout of 128x128 crops).
Prints images/s of kcolor prep (end to end: listing, lookup table, shards, stats)
and of the naive baseline (skimage.io.imread, skimage.color.rgb2lab, argmin over
the 313 bin centres, one image at a time) timed on a subset, and their ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from kcolor import color, encode, prep
from kcolor.sources import list_source

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "photos-train"


def naive(paths: list[Path], size: int) -> float:
    """Images/s of the straightforward pipeline, one image at a time."""
    from skimage import color as skcolor
    from skimage import io as skio
    from skimage.transform import resize

    centres = color.get_bin_table("zhang313").centres.astype(np.float64)
    start = time.perf_counter()
    for path in paths:
        rgb = skio.imread(path)[..., :3]
        if rgb.shape[:2] != (size, size):
            rgb = resize(rgb, (size, size), anti_aliasing=True)
        lab = skcolor.rgb2lab(rgb)
        d = ((lab[..., None, 1:] - centres) ** 2).sum(-1)  # (S, S, 313)
        _L = color.encode_l(lab[..., 0])
        _bins = d.argmin(-1).astype(np.uint16)
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--baseline-images", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=2, help="prep runs; the best is kept")
    args = parser.parse_args()

    print(f"source: {args.source}; {args.workers} workers, {os.cpu_count()} cores")
    t = time.perf_counter()
    encode.rgbx_lookup("zhang313")  # builds the on-disk cache on the very first run
    print(f"lookup table ready in {time.perf_counter() - t:.1f} s (cache: KCOLOR_CACHE_DIR)")
    encode.rgbx_lookup.cache_clear()  # each prep run below loads it as a fresh process would

    best = None
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as out:
            s = prep.prepare(
                args.source, out, prep.PrepSettings(size=args.size), workers=args.workers
            )
        encode.rgbx_lookup.cache_clear()
        rate = s.images_new / s.seconds
        print(f"kcolor prep: {s.images_new:,} images in {s.seconds:.2f} s = {rate:,.0f} images/s")
        best = max(best or 0.0, rate)

    items = list_source(args.source).items["train"]
    paths = [args.source / it.rel for it in items if it.problem is None][: args.baseline_images]
    base = naive(paths, args.size)
    print(f"naive baseline: {len(paths)} images, {base:,.1f} images/s")
    print(
        f"kcolor prep is {best / base:,.0f}x the naive baseline ({best:,.0f} vs {base:,.1f} images/s)"
    )


if __name__ == "__main__":
    main()
