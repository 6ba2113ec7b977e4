"""Colorize throughput (images/s) and peak memory (RSS) by input size, width and precision.

    .venv/bin/python benchmarks/colorize.py            # the full table, ~6 minutes on 2 cores
    .venv/bin/python benchmarks/colorize.py --quick    # fewer images per config

Each config runs in its own subprocess, so its peak RSS (getrusage ru_maxrss) is its
own: the whole `kcolor colorize` path (JPEG decode, network, ab upsampling and Lab join
in row strips, JPEG encode) on untrained models (weights do not change the speed).
bfloat16 models are built under keras.mixed_precision policy "mixed_bfloat16" and get
the fp32 model's weights. The last row colorizes one 50-megapixel photo to show that
memory stays bounded: "base" is the RSS before the photo (TensorFlow + model).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SIZES = [(256, 256), (1024, 768), (4000, 3000)]  # width x height of the inputs
WIDTHS = [0.25, 1.0]
PRECISIONS = ["fp32", "bf16"]
INPUT_SIZE = 256  # the network's side (as the reference colorizes)
BATCH = 4
HUGE = (8660, 5774)  # 50 megapixels


def images_for(size, width, precision, quick) -> int:
    """Images to time: about 10 s per config on 2 cores."""
    pixels = size[0] * size[1]
    n = 32 if pixels < 1e6 else 12 if pixels < 5e6 else 3
    if width >= 1.0:
        n = min(n, 8 if precision == "fp32" else 4)
    return max(2, n // 2) if quick else n


def make_photo(path: Path, size) -> None:
    """A smooth color JPEG (compresses and decodes like a photo, unlike noise)."""
    w, h = size
    y = np.linspace(0, 6 * np.pi, h, dtype=np.float32)[:, None]
    x = np.linspace(0, 9 * np.pi, w, dtype=np.float32)[None, :]
    rgb = np.empty((h, w, 3), np.uint8)
    for c in range(3):
        rgb[..., c] = (127 + 120 * np.sin(x + 2 * c) * np.cos(y - c)).astype(np.uint8)
    Image.fromarray(rgb).save(path, quality=90)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(cfg: dict) -> dict:
    """One config, in this (fresh) process."""
    import keras

    from kcolor import infer, model

    net = model.build_model(width=cfg["width"], input_size=INPUT_SIZE)
    if cfg["precision"] == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        fp32, net = net, model.build_model(width=cfg["width"], input_size=INPUT_SIZE)
        keras.mixed_precision.set_global_policy("float32")
        net.set_weights(fp32.get_weights())
        del fp32
    col = infer.Colorizer(net)
    n, src, out = cfg["n"], Path(cfg["src"]), Path(cfg["out"])
    batch = min(BATCH, n)
    col.predict(np.zeros((batch, col.side, col.side), np.float32))  # trace once
    net_time = [0.0]
    predict = col.predict

    def timed(L):
        t = time.perf_counter()
        result = predict(L)
        net_time[0] += time.perf_counter() - t
        return result

    col.predict = timed
    base = peak_rss_mb()
    jobs = [infer.Job(src, out / f"{i}.jpg", "JPEG") for i in range(n)]
    start = time.perf_counter()
    failed = infer.colorize_files(jobs, col, batch_size=batch)
    seconds = time.perf_counter() - start
    assert not failed, failed
    return {
        "images_per_s": n / seconds,
        "net_share": net_time[0] / seconds,
        "base_mb": base,
        "peak_mb": peak_rss_mb(),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="half the images per config")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    configs = [
        {"size": s, "width": w, "precision": p} for s in SIZES for w in WIDTHS for p in PRECISIONS
    ]
    configs.append({"size": HUGE, "width": 0.25, "precision": "fp32", "n": 1})
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    total = time.perf_counter()
    print(
        f"kcolor colorize benchmark: {os.cpu_count()} CPU cores, net input {INPUT_SIZE}px, batch {BATCH}"
    )
    header = f"{'input':>11} {'width':>5} {'prec':>5} {'images':>6} {'img/s':>7} {'net %':>5} {'base MB':>8} {'peak MB':>8}"
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in configs:
            src = Path(tmp) / f"{cfg['size'][0]}x{cfg['size'][1]}.jpg"
            if not src.exists():
                make_photo(src, cfg["size"])
            cfg.setdefault("n", images_for(cfg["size"], cfg["width"], cfg["precision"], args.quick))
            out = Path(tmp) / "out"
            out.mkdir(exist_ok=True)
            cfg.update(src=str(src), out=str(out))
            proc = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(cfg)],
                capture_output=True,
                text=True,
                env=env,
            )
            if proc.returncode:
                sys.exit(f"config {cfg} failed:\n{proc.stderr[-2000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            size = f"{cfg['size'][0]}x{cfg['size'][1]}"
            print(
                f"{size:>11} {cfg['width']:>5} {cfg['precision']:>5} {cfg['n']:>6} "
                f"{r['images_per_s']:>7.2f} {100 * r['net_share']:>5.0f} "
                f"{r['base_mb']:>8.0f} {r['peak_mb']:>8.0f}",
                flush=True,
            )
            for f in out.iterdir():
                f.unlink()
    print(f"total {time.perf_counter() - total:.0f} s")


if __name__ == "__main__":
    main()
