"""Reading a photo collection for `kcolor prep`: listing SOURCE and decoding each photo.

    kcolor prep SOURCE OUT
    kcolor prep SOURCE1 SOURCE2 OUT        # several collections into one shard folder

SOURCE is a Miniplaces root (train.txt / val.txt listing paths under images/, each
with a label) or any folder of images, split into train/val by a seeded hash of
each path. `load_photo` turns one file into a size x size sRGB image or says why
not (`load_rgbx`: the same into an array, faster for JPEGs); problems are (kind,
message) pairs that prep reports as `path: message`.

Bad input, decided here: unreadable, missing, corrupt or truncated files, non-images,
unsupported modes, grayscale photos (modes 1/L/I/F, or RGB with equal channels: they
teach only 'gray') and photos smaller than the target are skipped. A photo with an
embedded ICC profile is converted to sRGB (kcolor.photo.to_srgb). CMYK without a
profile (converted without color management), palette, 16-bit (scaled to 8 bits) and
alpha (dropped) photos are kept and noted. In a folder, files without an image extension
(README, CREDITS.md) are ignored and only counted; hidden files and folders are skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import simplejpeg
from PIL import Image, ImageOps

from kcolor.photo import (  # noqa: F401 (GRAY_*: prep's rule, with encode)
    GRAY_FRACTION,
    GRAY_SPREAD,
    READ_SUFFIXES,
    depalette,
    describe_error,
    to_srgb,
)

# Kinds of problem: SKIP drops the image, NOTE converts it and keeps it.
SKIP_KINDS = (
    "missing",
    "unreadable",
    "not an image",
    "corrupt",
    "unsupported",
    "grayscale",
    "too small",
    "outside root",
    "malformed line",
)
NOTE_KINDS = ("CMYK", "palette", "16-bit", "alpha", "warning")

# A photo (after its crop) with fewer colored pixels than GRAY_FRACTION (kcolor.photo's
# rule) teaches the network only 'gray': prep skips it. On photos-train this skips 0.5%
# of the crops, all gray to the eye (a grey cat, walls).
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})


class Problem(NamedTuple):
    kind: str  # one of SKIP_KINDS or NOTE_KINDS
    message: str


class Item(NamedTuple):
    rel: str  # path relative to SOURCE, or 'train.txt:12' for a bad list line
    label: int  # -1 when none
    problem: Problem | None = None  # known before decoding (a bad list line)


@dataclasses.dataclass
class Listing:
    layout: str  # 'miniplaces' or 'folder'
    items: dict[str, list[Item]]  # split -> items, in a deterministic order
    ignored: int  # files skipped for their extension


# --- listing ----------------------------------------------------------------


def list_source(
    source: Path, *, seed: int = 0, val_fraction: float = 0.05, exclude: Path | None = None
) -> Listing:
    """The items of SOURCE per split. Raises ValueError when SOURCE cannot be used."""
    source = Path(source)
    try:
        os.scandir(source).close()
    except OSError as e:
        raise ValueError(f"{source}: expected a readable folder ({e.strerror})") from None
    if (source / "train.txt").is_file():
        if not (source / "images").is_dir():
            raise ValueError(f"{source}: has train.txt but no images/ folder (expected Miniplaces)")
        items = {
            split: _read_list(source, f"{split}.txt")
            for split in ("train", "val")
            if (source / f"{split}.txt").is_file()
        }
        return Listing("miniplaces", items, ignored=0)
    return _list_folder(source, seed, val_fraction, exclude)


def list_sources(
    sources: list[Path], *, seed: int = 0, val_fraction: float = 0.05, exclude: Path | None = None
) -> tuple[Path, Listing]:
    """Several SOURCEs as one listing: (their common root, items relative to it).

    Each source is listed as `list_source` lists it (its own layout and split); an item
    keeps its path below its source, prefixed with the source's path below the root, so
    photos of two collections never share a name in the shards. One source is its own root.
    Raises ValueError when a source is listed twice or lies inside another.
    """
    sources = [Path(s) for s in sources]
    if len(sources) == 1:
        return sources[0], list_source(
            sources[0], seed=seed, val_fraction=val_fraction, exclude=exclude
        )
    real = [Path(os.path.realpath(s)) for s in sources]
    for i, a in enumerate(real):
        for j, b in enumerate(real):
            if i != j and (a == b or b in a.parents):
                raise ValueError(f"{sources[i]}: the same photos as {sources[j]} (listed twice)")
    root = Path(os.path.commonpath(real))
    items: dict[str, list[Item]] = {}
    layouts, ignored = [], 0
    for src, r in zip(sources, real, strict=True):
        listing = list_source(src, seed=seed, val_fraction=val_fraction, exclude=exclude)
        prefix = r.relative_to(root).as_posix()
        for split, its in listing.items.items():
            items.setdefault(split, []).extend(it._replace(rel=f"{prefix}/{it.rel}") for it in its)
        layouts.append(listing.layout)
        ignored += listing.ignored
    return root, Listing("+".join(layouts), items, ignored)


def split_list_line(line: str) -> tuple[str, str] | None:
    """(PATH, LABEL text) of a Miniplaces list line ('-1' when it has no label), or None
    for a blank or '#' comment line. PATH may hold spaces: the label is the last field."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    return tuple(line.rsplit(maxsplit=1)) if len(line.split()) > 1 else (line, "-1")


def _read_list(source: Path, name: str) -> list[Item]:
    """Items of a Miniplaces list: `PATH LABEL` lines, PATH relative to images/."""
    try:
        text = (source / name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{source / name}: expected a UTF-8 text list ({e})") from None
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = split_list_line(line)
        if fields is None:
            continue
        where = f"{name}:{number}"
        path, label = fields
        try:
            label = int(label)
        except ValueError:
            msg = f"malformed line {line[:80]!r}, expected 'PATH LABEL'"
            items.append(Item(where, -1, Problem("malformed line", msg)))
            continue
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if path.startswith("/") or ".." in parts or "\\" in path:
            msg = f"{path!r} points outside images/"
            items.append(Item(where, label, Problem("outside root", msg)))
            continue
        rel = "images/" + "/".join(parts)
        if not _inside(source / "images", rel[len("images/") :]):
            msg = f"{path!r} is a link to outside {source}"
            items.append(Item(where, label, Problem("outside root", msg)))
            continue
        items.append(Item(rel, label))
    return items


def _inside(folder: Path, rel: str) -> bool:
    """Whether folder/rel, links followed, stays inside the folder's real location (a
    symlink in images/ may point anywhere: prep reads only the collection it was given;
    images/ itself may be a link, as tools/cap_crops.py makes it)."""
    base = os.path.realpath(folder)
    return os.path.commonpath([os.path.realpath(os.path.join(folder, rel)), base]) == base


def _list_folder(source: Path, seed: int, val_fraction: float, exclude: Path | None) -> Listing:
    skip_dir = os.path.realpath(exclude) if exclude is not None else None
    items = {"train": [], "val": []}
    ignored = 0
    unreadable = []
    for top, dirs, files in os.walk(source, onerror=unreadable.append):
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".") and os.path.realpath(os.path.join(top, d)) != skip_dir
        )
        rel_top = Path(top).relative_to(source).as_posix()
        for name in sorted(files):
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() not in READ_SUFFIXES:
                ignored += 1
                continue
            rel = name if rel_top == "." else f"{rel_top}/{name}"
            if not _inside(source, rel):
                problem = Problem("outside root", f"a link to outside {source}")
                items["train"].append(Item(rel, -1, problem))
                continue
            items["val" if is_val(rel, seed, val_fraction) else "train"].append(Item(rel, -1))
    for e in unreadable:
        rel = Path(e.filename).relative_to(source).as_posix()
        items["train"].append(
            Item(rel, -1, Problem("unreadable", f"unreadable folder ({e.strerror})"))
        )
    return Listing("folder", items, ignored)


def is_val(rel: str, seed: int, fraction: float) -> bool:
    """Whether a file goes to val: a seeded hash of its path, so the split does not
    depend on the order of listing, the worker count, or other files coming and going."""
    digest = hashlib.blake2b(f"{seed}:{rel}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") < fraction * 2.0**64


# --- decoding ---------------------------------------------------------------


class _Skip(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.problem = Problem(kind, message)


def load_photo(path: Path, size: int) -> tuple[Image.Image | None, list[Problem]]:
    """Decode `path` into a size x size RGB image: short side resized (bicubic), centre crop.

    Returns (image, problems); image is None when the photo is skipped, and problems
    then end with the reason. Conversions (CMYK, palette, 16-bit, alpha) keep the image
    and add a note. Photos smaller than `size` and grayscale modes are skipped.
    """
    data = _read(path)
    if isinstance(data, Problem):
        return None, [data]
    return _load(data, size)


def load_rgbx(path: Path, size: int, out: np.ndarray) -> tuple[bool, list[Problem]]:
    """`load_photo` into `out`, (size * size,) uint32: pixel r | g << 8 | b << 16 | x << 24.

    Returns (loaded, problems). A clean color JPEG already of the target size (all of
    Miniplaces) is decoded by simplejpeg straight into `out`: the same libjpeg-turbo
    decode as PIL's, bit for bit, at about half the cost, because PIL parses the JPEG
    markers in Python. Every other file, and any JPEG simplejpeg finds fault with,
    goes through PIL (`load_photo`), which also words the problems.
    """
    data = _read(path)
    if isinstance(data, Problem):
        return False, [data]
    # EXIF may rotate and an ICC profile needs converting to sRGB: PIL's job
    if data[:2] == b"\xff\xd8" and b"Exif\0\0" not in data and b"ICC_PROFILE\0" not in data:
        try:
            h, w, space, _ = simplejpeg.decode_jpeg_header(data)
            if h == w == size and space in ("YCbCr", "RGB"):
                simplejpeg.decode_jpeg(data, "RGBX", buffer=out)
                return True, []
        except ValueError:
            pass  # PIL decides what is wrong with it
    img, problems = _load(data, size)
    if img is None:
        return False, problems
    out[:] = np.frombuffer(img.tobytes("raw", "RGBX"), "<u4")
    return True, problems


def _read(path: Path) -> bytes | Problem:
    try:
        with open(path, "rb") as f:
            return f.read()  # one read: PIL's many small reads cost ~25% more
    except FileNotFoundError:
        return Problem("missing", "missing file")
    except IsADirectoryError:
        return Problem("unreadable", "is a folder, expected an image file")
    except OSError as e:
        return Problem("unreadable", f"cannot read the file ({e.strerror})")


def _load(data: bytes, size: int) -> tuple[Image.Image | None, list[Problem]]:
    problems: list[Problem] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            img = _decode(io.BytesIO(data), size, problems)
        except _Skip as e:
            return None, problems + [e.problem]
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on bad files
            # worded as colorize and evaluate word it (kcolor.photo.describe_error)
            why = describe_error(e)
            kind = "not an image" if why.startswith("not an image") else "corrupt"
            return None, [Problem(kind, why)]
    problems += [Problem("warning", f"decoder warning: {w.message}") for w in caught]
    return img, problems


def _decode(fp: io.BytesIO, size: int, problems: list[Problem]) -> Image.Image:
    img = Image.open(fp)
    mode, (w, h) = img.mode, img.size
    if mode in GRAY_MODES:
        raise _Skip("grayscale", f"grayscale image (mode {mode})")
    short = min(w, h)
    if short < size:
        raise _Skip("too small", f"too small: {w}x{h}, expected a short side of at least {size}")
    if any(";16" in str(tile.args) for tile in img.tile):
        problems.append(Problem("16-bit", "16-bit image, scaled to 8 bits"))
    if img.format == "JPEG" and short >= 2 * size:
        # Decode at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling), still >= size.
        img.draft(mode, (math.ceil(w * size / short), math.ceil(h * size / short)))
    img.load()
    img = ImageOps.exif_transpose(img)  # upright, as kcolor.photo reads photos
    return _centre_crop(_to_rgb(img, problems), size)


def _to_rgb(img: Image.Image, problems: list[Problem]) -> Image.Image:
    mode = img.mode
    if mode in ("P", "PA"):
        problems.append(Problem("palette", f"palette image (mode {mode}), converted to RGB"))
        img = depalette(img)
    img = to_srgb(img)  # an embedded ICC profile's pixels to sRGB, as kcolor.photo does
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "RGBa"):
        if img.getchannel("A").getextrema()[0] < 255:
            problems.append(Problem("alpha", "has transparent pixels; alpha dropped"))
        return img.convert("RGB")
    if mode == "CMYK":
        problems.append(Problem("CMYK", "CMYK image, converted to RGB without color management"))
        return img.convert("RGB")
    if mode in ("RGBX", "YCbCr", "HSV"):
        return img.convert("RGB")
    raise _Skip("unsupported", f"unsupported image mode {mode}")


def _centre_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    short = min(w, h)
    if short == size:
        left, top = (w - size) // 2, (h - size) // 2
        return img if w == h else img.crop((left, top, left + size, top + size))
    left, top = (w - short) / 2, (h - short) / 2
    box = (left, top, left + short, top + short)
    return img.resize((size, size), Image.Resampling.BICUBIC, box=box)
