"""Shared fixtures: tiny, colorful, deterministic photo collections made with PIL.

def test_something(make_photo_dir, tmp_path):
    photos = make_photo_dir(tmp_path / "photos", n=8, size=32)   # list of paths
def test_other(make_miniplaces, tmp_path):
    root = make_miniplaces(tmp_path / "mini", n_train=6, n_val=2, size=32)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def smooth_photo(rng: np.random.Generator, height: int, width: int | None = None) -> np.ndarray:
    """A colorful but smooth (photo-like, JPEG-friendly) image: (H, W, 3) uint8.

    Each channel is a sum of a few random low-frequency waves, so colors vary over
    the whole gamut while neighbouring pixels stay close.
    """
    width = width or height
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((height, width, 3), np.float32)
    for c in range(3):
        acc = np.zeros((height, width), np.float32)
        for _ in range(3):
            fy, fx = rng.uniform(0.2, 2.0, 2) * 2 * np.pi / np.array([height, width])
            acc += np.sin(fy * y + fx * x + rng.uniform(0, 2 * np.pi))
        out[..., c] = acc
    out = (out - out.min()) / max(float(np.ptp(out)), 1e-6)
    return np.clip(out * 255.0, 0, 255).astype(np.uint8)


def write_photo_dir(
    root: Path, n: int = 8, size: int = 32, *, seed: int = 0, ext: str = ".jpg", nested: bool = True
) -> list[Path]:
    """Write n smooth color photos of size x size into root (half of them in a subfolder
    when nested). Returns their paths, sorted."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        folder = root / "sub" if nested and i % 2 else root
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"photo{i:03d}{ext}"
        Image.fromarray(smooth_photo(rng, size)).save(path, quality=95)
        paths.append(path)
    return sorted(paths)


def write_miniplaces(
    root: Path, n_train: int = 8, n_val: int = 2, size: int = 32, *, seed: int = 0
) -> Path:
    """A Miniplaces root: images/{train,val}/..., train.txt and val.txt with labels."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        lines = []
        for i in range(n):
            label = i % 3
            rel = f"{split}/c/cat{label}/{i:08d}.jpg" if split == "train" else f"val/{i:08d}.jpg"
            (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(smooth_photo(rng, size)).save(root / "images" / rel, quality=95)
            lines.append(f"{rel} {label}\n")
        (root / f"{split}.txt").write_text("".join(lines))
    return root


@pytest.fixture
def make_photo_dir():
    """Factory: make_photo_dir(root, n=8, size=32, seed=0, ext='.jpg') -> list of paths."""
    return write_photo_dir


@pytest.fixture
def make_miniplaces():
    """Factory: make_miniplaces(root, n_train=8, n_val=2, size=32, seed=0) -> root."""
    return write_miniplaces


# the smallest fit that trains: a tiny network on 32 px shards (tests of fit and its reliability)
TINY = dict(width=0.0625, batch_size=4, lr=3e-3, val_images=8, preview_images=2, log_every=2)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    """Shards of a tiny Miniplaces root: 16 train and 4 val photos of 32 px, 6 per shard."""
    from kcolor import prep

    root = write_miniplaces(tmp_path_factory.mktemp("mini"), n_train=16, n_val=4, size=32)
    out = tmp_path_factory.mktemp("shards")
    prep.prepare(root, out, prep.PrepSettings(size=32, shard_size=6), workers=1)
    return out


def icc_profile(space: str, gamma: float = 1.0, colorants=None, name: str = "") -> bytes:
    """A minimal ICC v2 profile: display 'GRAY' (a tone curve), display 'RGB ' (three D50
    colorants and one tone curve) or printer 'CMYK' (a 2-point lut16 whose corners are the
    linear-light RGB (1 - c)(1 - k), (1 - m)(1 - k), (1 - y)(1 - k) in sRGB's colorants).
    Written here because Pillow can only create sRGB, Lab and XYZ profiles, and tests need
    others (a wide gamut, a linear gray, a press)."""
    import itertools
    import struct

    def s15(x):
        return struct.pack(">i", round(x * 65536))

    def xyz(x, y, z):
        return b"XYZ \0\0\0\0" + s15(x) + s15(y) + s15(z)

    name = name.encode() or b"test " + space.strip().encode() + b" gamma %g" % gamma
    desc = (
        b"desc\0\0\0\0"
        + struct.pack(">I", len(name) + 1)
        + name
        + b"\0"
        + bytes(4 + 4 + 2 + 1 + 67)
    )
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    tags = [(b"desc", desc), (b"wtpt", xyz(0.9642, 1.0, 0.8249))]
    if space == "GRAY":
        tags.append((b"kTRC", curve))
    elif space == "CMYK":
        lut = b"mft2\0\0\0\0" + bytes([4, 3, 2, 0])
        lut += b"".join(s15(float(i == j)) for i in range(3) for j in range(3))
        lut += struct.pack(">HH", 2, 2) + struct.pack(">2H", 0, 65535) * 4
        for c, m, y, k in itertools.product((0, 1), repeat=4):  # the first channel slowest
            rgb = [(1 - v) * (1 - k) for v in (c, m, y)]
            pcs = [
                sum(w * col[i] for w, col in zip(rgb, SRGB_COLORANTS, strict=True))
                for i in range(3)
            ]
            lut += struct.pack(">3H", *(min(65535, round(v * 32768)) for v in pcs))
        lut += struct.pack(">2H", 0, 65535) * 3
        tags.append((b"A2B0", lut))
    else:
        for sig, c in zip((b"rXYZ", b"gXYZ", b"bXYZ"), colorants, strict=True):
            tags.append((sig, xyz(*c)))
        tags += [(b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        body += bytes(-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (
        struct.pack(">II", size, 0)
        + bytes([2, 0x10, 0, 0])
        + (b"prtr" if space == "CMYK" else b"mntr")
        + space.encode()
        + b"XYZ "
        + bytes(12)
        + b"acsp"
        + bytes(4 + 4 + 4 + 4 + 8 + 4)
        + s15(0.9642)
        + s15(1.0)
        + s15(0.8249)
        + bytes(4 + 16 + 28)
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


# D50-adapted colorants (the ICC's PCS) of sRGB's and Adobe RGB (1998)'s primaries
SRGB_COLORANTS = ((0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141))
ADOBE_COLORANTS = ((0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446))
