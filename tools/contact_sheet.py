"""A side-by-side contact sheet: input | colorized | (truth), one row per photo.

    python tools/contact_sheet.py examples/demo/gray colorized \
        --truth examples/demo/truth -o colorized/contact-sheet.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

ROW_HEIGHT = 192
GAP = 4
HEADER = 22


def _fit(path: Path, height: int) -> Image.Image:
    img = Image.open(path).convert("RGB")
    return img.resize((max(1, round(img.width * height / img.height)), height), Image.LANCZOS)


def contact_sheet(inputs: Path, colorized: Path, truth: Path | None = None) -> Image.Image:
    """Rows of the photos in `inputs` that have a namesake in `colorized` (and `truth`)."""
    names = sorted(p.name for p in inputs.iterdir() if (colorized / p.name).is_file())
    if not names:
        raise SystemExit(f"{colorized}: no colorized namesakes of the photos in {inputs}")
    columns = [("input", inputs), ("kcolor", colorized)] + ([("original", truth)] if truth else [])
    rows = [[_fit(folder / n, ROW_HEIGHT) for _, folder in columns] for n in names]
    col_w = [max(r[c].width for r in rows) for c in range(len(columns))]
    width = sum(col_w) + GAP * (len(columns) + 1)
    height = HEADER + len(rows) * (ROW_HEIGHT + GAP) + GAP
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    x = GAP
    for c, (title, _) in enumerate(columns):
        draw.text((x + 2, 5), title, fill="black")
        y = HEADER
        for r in rows:
            sheet.paste(r[c], (x, y))
            y += ROW_HEIGHT + GAP
        x += col_w[c] + GAP
    return sheet


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", type=Path)
    ap.add_argument("colorized", type=Path)
    ap.add_argument("--truth", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    sheet = contact_sheet(args.inputs, args.colorized, args.truth)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"Contact sheet: {args.out}")


if __name__ == "__main__":
    main()
