"""Copies of colour photos whose lightness is degraded as an old print's, for `kcolor evaluate`.

    python tools/old_photo_copies.py work/old                 # the val tuning half (below)
    python tools/old_photo_copies.py work/old photos/ more.jpg
    kcolor evaluate work/old/old --groups work/old/groups.csv  # and clean/, fade/, blur/, grain/

Each photo's L (CIE Lab, 0..100) is degraded by a fixed amount and its ab kept, so the
AuCs still score the photo's true colours: fade L -> 20 + 0.6 L; blur a Gaussian of sigma
1 px; grain Gaussian noise of sigma 5/255 of the range; old all three, then JPEG quality 75
of the L; clean the photo as it is (through the same Lab round trip). Written as PNG, so no
second JPEG touches the ab. Changing L with ab kept pushes a few pixels out of the sRGB
gamut, where clipping changes their ab: compare each copy's lead over gray, which
`kcolor evaluate` reports beside it, not raw AuCs across copies.

With no photos given: the val tuning half of the model card ("Choosing the decoding"):
photos-train's val crops whose source photo is at an even position of the sorted source
ids, and Miniplaces' val photos at even positions of the sorted names, from ../shared/data;
OUT/groups.csv names each copy's source photo, so that the bootstrap interval resamples
photos, not crops of one photo.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from skimage import color, filters

from kcolor import photo
from kcolor.infer import find_images

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
GRAIN = 5 * 100 / 255  # 5 of 255 levels, in L units


def val_tuning_half(shared: Path = SHARED) -> tuple[list[Path], list[str]]:
    """The half's photos, and each one's source photo (a Miniplaces photo is its own)."""
    pt = shared / "photos-train"
    with open(pt / "crops.csv", newline="") as f:
        source = {r["path"]: r["source_id"] for r in csv.DictReader(f)}
    listed = [line.split()[0] for line in (pt / "val.txt").read_text().splitlines() if line.strip()]
    keep = set(sorted({source[p] for p in listed})[0::2])
    crops = [p for p in listed if source[p] in keep]
    miniplaces = sorted((shared / "miniplaces" / "images" / "val").glob("*.jpg"))[0::2]
    photos = [pt / "images" / p for p in crops] + miniplaces
    return photos, [source[p] for p in crops] + [f"miniplaces/{p.name}" for p in miniplaces]


def _jpeg(L: np.ndarray, quality: int) -> np.ndarray:
    # truncated to 8 bits, not rounded: so it made the copies the model card scores
    buf = io.BytesIO()
    Image.fromarray(np.clip(L * 2.55, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf), np.float64) / 2.55


def _blur(L: np.ndarray) -> np.ndarray:
    return filters.gaussian(L, sigma=1.0, preserve_range=True)


def degraders(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "clean": lambda L: L,
        "fade": lambda L: 20 + 0.6 * L,
        "blur": _blur,
        "grain": lambda L: L + rng.normal(0, GRAIN, L.shape),
        "old": lambda L: _jpeg(_blur(20 + 0.6 * L) + rng.normal(0, GRAIN, L.shape), 75),
    }


def copy_name(i: int, path: Path) -> str:
    return f"{i:05d}_{path.stem}.png"  # numbered: crops of the two sets share names


def write_copies(photos: list[Path], out: Path, groups: list[str] | None = None) -> None:
    """OUT/<kind>/ for each kind; with groups, OUT/groups.csv for `kcolor evaluate --groups`."""
    if groups is not None:
        rows = "".join(
            f"{copy_name(i, p)},{g}\n" for i, (p, g) in enumerate(zip(photos, groups, strict=True))
        )
        out.mkdir(parents=True, exist_ok=True)
        (out / "groups.csv").write_text(rows)
    for kind, degrade in degraders().items():
        folder = out / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(photos):
            # as kcolor reads a photo: upright, in sRGB
            lab = color.rgb2lab(np.asarray(photo.to_rgb8(photo.open_photo(path))))
            lab[..., 0] = np.clip(degrade(lab[..., 0]), 0, 100)
            rgb = np.clip(color.lab2rgb(lab), 0, 1)
            Image.fromarray((rgb * 255 + 0.5).astype(np.uint8)).save(folder / copy_name(i, path))
        print(f"{folder}: {len(photos)} photos")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("photos", nargs="*", type=Path, help="photos or folders of photos")
    args = ap.parse_args()
    photos = [path for path, _ in find_images(args.photos)]
    for path in photos:  # one line for a photo that cannot be read, before anything is written
        try:
            photo.open_photo(path)
        except (OSError, UnidentifiedImageError) as e:
            problem = photo.describe_error(e)
            raise SystemExit(f"{path}: cannot read it as a photo ({problem})") from None
    if photos:
        write_copies(photos, args.out)
    else:
        half, groups = val_tuning_half()
        write_copies(half, args.out, groups)


if __name__ == "__main__":
    main()
