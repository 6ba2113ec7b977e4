"""Cap the train crops taken from any one source photo, for `kcolor prep`.

    python tools/cap_crops.py ../shared/data/photos-train work/photos-capped --per-photo 8
    kcolor prep work/photos-capped work/capped128 --size 128

A Miniplaces-layout root whose crops.csv names each crop's source photo (path,source_id,...)
may take many crops from a few photos: photos-train takes 60-120 from each of 64 photos
(40 % of its train crops) and 1-9 from each of the other 2,730. Trained on all of them, a
network spends 40 % of its steps on 64 photos and learns those photos instead of colors
that carry over to unseen ones. This writes a root that keeps at most N train crops of each
source photo (the first N in train.txt order): OUT/train.txt, OUT/val.txt (copied as is) and
OUT/images, a link to SOURCE/images, so nothing is copied.
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
import shutil
import sys
from pathlib import Path

from kcolor.sources import split_list_line


def cap_lines(lines: list[str], source_of: dict[str, str], per_photo: int) -> list[str]:
    """The list lines to keep: at most per_photo lines per source photo, in order.

    Args:
        lines: train.txt lines, `PATH LABEL` (blank and '#' lines are dropped).
        source_of: PATH -> source photo id.
    Raises:
        ValueError naming the line, for a PATH that crops.csv does not list.
    """
    seen: collections.Counter[str] = collections.Counter()
    kept = []
    for number, line in enumerate(lines, 1):
        fields = split_list_line(line)  # read as `kcolor prep` reads it
        if fields is None:
            continue
        path = fields[0]
        if path not in source_of:
            raise ValueError(f"train.txt:{number}: {path!r} is not in crops.csv")
        source = source_of[path]
        if seen[source] < per_photo:
            kept.append(line if line.endswith("\n") else line + "\n")
            seen[source] += 1
    return kept


def read_sources(path: Path) -> dict[str, str]:
    """crops.csv -> {crop path: source photo id}."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"path", "source_id"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(
                f"{path}: expected columns path and source_id, missing {sorted(missing)}"
            )
        return {row["path"]: row["source_id"] for row in reader}


def cap_root(source: Path, out: Path, per_photo: int) -> tuple[int, int]:
    """Write the capped root; returns (train crops kept, train crops listed)."""
    if per_photo < 1:
        raise ValueError(f"per-photo: expected >= 1, got {per_photo}")
    for name in ("train.txt", "val.txt", "crops.csv", "images"):
        if not (source / name).exists():
            raise ValueError(f"{source}: has no {name} (expected a Miniplaces root with crops.csv)")
    link = out / "images"
    if (link.is_symlink() or link.exists()) and link.resolve() != (source / "images").resolve():
        raise ValueError(f"{link}: exists and is not a link to {source / 'images'}")
    lines = (source / "train.txt").read_text().splitlines(keepends=True)
    kept = cap_lines(lines, read_sources(source / "crops.csv"), per_photo)
    out.mkdir(parents=True, exist_ok=True)
    # written beside, then renamed: an interrupted run leaves no half-written list
    tmp = out / "train.txt.tmp"
    tmp.write_text("".join(kept))
    os.replace(tmp, out / "train.txt")
    shutil.copyfile(source / "val.txt", out / "val.txt")
    if not link.is_symlink():
        link.symlink_to((source / "images").resolve(), target_is_directory=True)
    return len(kept), sum(split_list_line(line) is not None for line in lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="Miniplaces root with crops.csv")
    parser.add_argument("out", type=Path, help="the capped root to write")
    parser.add_argument("--per-photo", type=int, default=8, help="train crops kept per photo")
    args = parser.parse_args(argv)
    try:
        kept, listed = cap_root(args.source, args.out, args.per_photo)
    except OSError as e:  # "path: reason", without Python's "[Errno 2]"
        print(f"Error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    print(
        f"Kept {kept:,} of {listed:,} train crops (at most {args.per_photo} per photo) in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
