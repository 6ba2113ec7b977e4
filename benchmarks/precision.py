"""The bundled model colorizing in fp32 vs bf16, alternated in one process.

    python benchmarks/precision.py [--rounds 3] [PHOTOS...]        # default: examples/demo/gray
    ONEDNN_MAX_CPU_ISA=AVX512_CORE python benchmarks/precision.py  # as a CPU without bf16

kcolor stores weights in fp32 and picks the arithmetic at run time (`--precision auto`).
Until the bundled file was re-saved in fp32 it ran bf16 on every CPU; this script times both
on the same photos through `infer.run_photos` (the `kcolor colorize` path, outputs kept in
memory) and prints the speed ratio and how far the bf16 outputs move from the fp32 ones in
8-bit RGB. ONEDNN_MAX_CPU_ISA caps the instructions oneDNN may use, so a CPU with bf16
instructions can be measured as one without.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from kcolor import infer, model, photo


def colorize_all(colorizer, paths) -> tuple[float, list[np.ndarray]]:
    outs = {}

    def finish(path, ph, ab_low, bins, workers):
        return np.asarray(photo.compose(ph, ab_low, workers))

    def keep(path, problem, result):
        outs[path] = result

    start = time.perf_counter()
    infer.run_photos(paths, colorizer, finish, batch_size=8, on_result=keep)
    return time.perf_counter() - start, [outs[p] for p in paths]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("photos", nargs="*", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=4, help="passes over the photos per timing")
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[1]
    paths = args.photos or sorted((root / "examples" / "demo" / "gray").iterdir())
    paths = paths * args.repeat
    fp32 = infer.load_colorizer(None, precision="fp32")
    bf16 = infer.Colorizer(model.with_precision(fp32.net, "bf16"))
    times = {"fp32": [], "bf16": []}
    for _ in range(args.rounds + 1):  # the first round warms both up (tracing)
        for name, col in (("fp32", fp32), ("bf16", bf16)):
            seconds, outs = colorize_all(col, paths)
            times[name].append(seconds)
            if name == "fp32":
                ref = outs
            else:
                diff = [np.abs(a.astype(np.int16) - b) for a, b in zip(ref, outs, strict=True)]
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "all the CPU has")
    print(f"{len(paths)} photos per timing, {args.rounds} rounds, oneDNN ISA: {isa}")
    for name, t in times.items():
        best = min(t[1:])
        print(f"{name}: {len(paths) / best:6.2f} photos/s (best of {args.rounds})")
    ratio = min(times["bf16"][1:]) / min(times["fp32"][1:])
    print(f"fp32 is {ratio:.2f}x the speed of bf16")
    print(
        f"|bf16 - fp32| in 8-bit RGB: mean {np.mean([d.mean() for d in diff]):.2f}, "
        f"max {max(int(d.max()) for d in diff)}"
    )


if __name__ == "__main__":
    main()
