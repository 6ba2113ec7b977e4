"""Scene cuts against changes within a shot: how kcolor.video's cut detection tells them apart.

    python benchmarks/cuts.py [PHOTO_OR_LIST ...]     # default: examples/demo/truth

Each photo becomes a gray 480p frame (its centre rows, the width 854 px, noise of 2
levels) and goes through the colorizer's own lightness path (the bundled model's side).
Changes within a shot: the same frame panned by 2 and 16 px, and 5%, 10% and 20%
brighter (old film's exposure flicker, highlights clipping). Cuts: every two photos.
For the lightness-histogram change (video.cut_distance) and the layout change
(video.layout_distance) it prints the largest change within a shot and the smallest
cut, and for each rule how many changes within a shot it takes for cuts (false cuts)
and how many cuts it misses: kcolor's rule (both above CUT_DISTANCE and CUT_LAYOUT)
beside the histogram alone at 0.2. A .txt argument is a list of photos, one a line.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from PIL import Image

from kcolor import infer, photo, video

PHOTOS = Path(__file__).resolve().parent.parent / "examples" / "demo" / "truth"
SIZE = (854, 480)
NOISE = 2.0
PANS = (2, 16)  # px
GAINS = (1.05, 1.10, 1.20)
HISTOGRAM_ONLY = 0.2  # the histogram rule alone, at the threshold it once had


def frame(path: Path, rng, shift: int = 0, gain: float = 1.0) -> np.ndarray:
    """The photo in gray at 480p (resized to the width plus the largest pan), uint8."""
    width = SIZE[0] + max(PANS)
    img = Image.open(path).convert("L")
    img = img.resize((width, max(SIZE[1], round(img.height * width / img.width))), Image.BICUBIC)
    gray = np.asarray(img, np.float32)
    top = (gray.shape[0] - SIZE[1]) // 2
    gray = gray[top : top + SIZE[1], shift : shift + SIZE[0]] * gain
    return np.clip(gray + rng.normal(0, NOISE, gray.shape), 0, 255).astype(np.uint8)


def features(col, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rgb = np.repeat(gray[..., None], 3, -1)
    L = col.lightness(photo.photo_from_image(Image.fromarray(rgb)))
    return video.histogram(L), video.layout(L)


def photos_from(args: list[str]) -> list[Path]:
    if not args:
        return sorted(PHOTOS.glob("*.jpg"))
    found = []
    for a in map(Path, args):
        if a.suffix == ".txt":
            found += [Path(line.strip()) for line in a.read_text().splitlines() if line.strip()]
        elif a.is_dir():
            found += sorted(p for p in a.iterdir() if p.suffix.lower() in (".jpg", ".png"))
        else:
            found.append(a)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", nargs="*", help="photos, folders or .txt lists")
    args = parser.parse_args()
    paths = photos_from(args.photos)
    rng = np.random.default_rng(0)
    col = infer.load_colorizer(None)
    base = {p: features(col, frame(p, rng)) for p in paths}
    changes = {f"pan {s} px": {"shift": s} for s in PANS}
    changes |= {f"{round(100 * (g - 1))}% light": {"gain": g} for g in GAINS}
    pairs = {}  # what -> (histogram changes, layout changes)
    for what, kw in changes.items():
        after = [features(col, frame(p, rng, **kw)) for p in paths]
        pairs[what] = [
            (video.cut_distance(base[p][0], h), video.layout_distance(base[p][1], lay))
            for p, (h, lay) in zip(paths, after, strict=True)
        ]
    pairs["cuts"] = [
        (video.cut_distance(a[0], b[0]), video.layout_distance(a[1], b[1]))
        for a, b in itertools.combinations(base.values(), 2)
    ]
    rules = {
        f"histogram > {video.CUT_DISTANCE} and layout > {video.CUT_LAYOUT} (kcolor)": lambda h, lay: (
            h > video.CUT_DISTANCE and lay > video.CUT_LAYOUT
        ),
        f"histogram > {HISTOGRAM_ONLY} alone": lambda h, lay: h > HISTOGRAM_ONLY,
    }
    print(f"{len(paths)} photos, side {col.side}; {len(pairs['cuts'])} cuts (pairs of photos)")
    print(f"{'':>12} {'histogram (max / min)':>22} {'layout (max / min)':>19}")
    for what, values in pairs.items():
        h, lay = np.array(values).T
        pick = min if what == "cuts" else max
        print(f"{what:>12} {pick(h):>22.3f} {pick(lay):>19.3f}")
    for name, rule in rules.items():
        false = {w: sum(rule(*v) for v in vs) for w, vs in pairs.items() if w != "cuts"}
        missed = sum(not rule(*v) for v in pairs["cuts"])
        print(
            f"{name}: cuts missed {missed} of {len(pairs['cuts'])} "
            f"({100 * missed / len(pairs['cuts']):.2f}%); false cuts "
            + ", ".join(f"{w} {n} of {len(paths)}" for w, n in false.items())
        )


if __name__ == "__main__":
    main()
