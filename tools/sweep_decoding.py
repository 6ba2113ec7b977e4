"""Score a model's decoding settings (temperature x rebalance strength x input side x
flip x multiscale) on held-out photos.

    python tools/sweep_decoding.py MODEL.keras photos.txt --temperatures 0.38,1 \
        --strengths 0,0.5,1 [--sizes 128,256] [--flips 0,1] [--multiscales 0,1] \
        [--json sweep.json]

A size is the largest input side: photos smaller than it run at their own size, so sizes
above the photos' own give the same figures (sweep sizes on photos larger than them).

photos.txt lists truth photos, one path a line, that the model was not trained on. For each
setting it runs `kcolor evaluate`'s scoring (kcolor.evaluate.evaluate) and prints the AuCs
over all pixels (Zhang et al.'s figures) and the mean colorfulness beside the grayscale
baseline; pick one and record it with
`kcolor decoding MODEL.keras --temperature T --rebalance-strength S [--size N] [--flip]
[--multiscale]`. The network runs once
per setting: the scoring at full resolution costs more than the forward pass.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kcolor import evaluate, infer


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def sweep(
    model_path,
    paths,
    temperatures,
    strengths,
    sizes=(None,),
    flips=(None,),
    multiscales=(None,),
    echo=print,
) -> list[dict]:
    base = infer.load_colorizer(model_path)
    rows = []
    settings = [
        (z, f, m, t, s)
        for z in sizes
        for f in flips
        for m in multiscales
        for t in temperatures
        for s in strengths
    ]
    for size, flip, multi, t, s in settings:
        colorizer = infer.Colorizer(
            base.net, size, temperature=t, rebalance_strength=s, flip=flip, multiscale=multi
        )
        report = evaluate.evaluate(paths, colorizer)
        model, gray = report["all_pixels"]["model"], report["all_pixels"]["gray"]
        row = {
            "size": colorizer.side,  # the largest side: smaller photos ran at their own
            "flip": colorizer.flip,
            "multiscale": colorizer.multiscale,
            "temperature": t,
            "rebalance_strength": s,
            "images": report["count"],
            "auc_all_pixels": model["auc"],
            "auc_all_pixels_gray": gray["auc"],
            "auc_rebalanced_all_pixels": model["auc_rebalanced"],
            "auc_rebalanced_all_pixels_gray": gray["auc_rebalanced"],
            "auc_rebalanced_image_mean": report["mean"]["model"]["auc_rebalanced"],
            "auc_rebalanced_image_mean_gray": report["mean"]["gray"]["auc_rebalanced"],
            "colorfulness": report["mean"]["model"]["colorfulness"],
            "colorfulness_truth": report["mean"]["truth_colorfulness"],
            # 95% bootstrap intervals of the pooled AuCs' lead over gray (kcolor.evaluate)
            "interval": report["all_pixels"].get("interval"),
        }
        rows.append(row)
        echo(
            f"side <={colorizer.side:<4} {'flip ' if colorizer.flip else ''}"
            f"{'multiscale ' if colorizer.multiscale else ''}T {t:<5g} "
            f"strength {s:<5g} "
            f"AuC {model['auc']:5.2f} ({model['auc'] - gray['auc']:+.2f} vs gray)  "
            f"AuC-rb {model['auc_rebalanced']:5.2f} "
            f"({model['auc_rebalanced'] - gray['auc_rebalanced']:+.2f})  "
            f"colorfulness {row['colorfulness']:4.1f} "
            f"(truth {row['colorfulness_truth']:.1f})"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("photos", type=Path, help="a text file of photo paths, one a line")
    ap.add_argument("--temperatures", type=_floats, default=[0.38, 1.0])
    ap.add_argument("--strengths", type=_floats, default=[0.0, 0.5, 1.0])
    ap.add_argument(
        "--sizes",
        type=lambda x: [int(v) for v in x.split(",")],
        default=[None],
        help="network input sides (default: the model's)",
    )
    ap.add_argument(
        "--flips",
        type=lambda x: [bool(int(v)) for v in x.split(",")],
        default=[None],
        help="0 and/or 1: without / with flip (default: the model's)",
    )
    ap.add_argument(
        "--multiscales",
        type=lambda x: [bool(int(v)) for v in x.split(",")],
        default=[None],
        help="0 and/or 1: without / with multiscale (default: the model's)",
    )
    ap.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = ap.parse_args()
    paths = [Path(line.strip()) for line in args.photos.read_text().splitlines() if line.strip()]
    if not paths:
        raise SystemExit(f"{args.photos}: no photo paths")
    rows = sweep(
        args.model,
        paths,
        args.temperatures,
        args.strengths,
        args.sizes,
        args.flips,
        args.multiscales,
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
