"""tools/old_photo_copies.py: degraded lightness, the true colours kept; the val tuning half."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import color

_spec = importlib.util.spec_from_file_location(
    "old_photo_copies", Path(__file__).parents[1] / "tools" / "old_photo_copies.py"
)
old_photo_copies = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(old_photo_copies)


def _lab(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return color.rgb2lab(np.asarray(img.convert("RGB")))


def test_copies_degrade_the_lightness_and_keep_the_colours(tmp_path):
    # a mid-tone colour photo with stripes of lightness (texture for the blur to soften),
    # no pixel near the gamut's edge
    y, x = np.mgrid[0:48, 0:64]
    lab = np.stack([45 + 15 * (x % 4 < 2) + 0.1 * y, 10 + 0 * x, -10 + 0.2 * y], -1)
    rgb = np.clip(color.lab2rgb(lab), 0, 1)
    Image.fromarray((rgb * 255 + 0.5).astype(np.uint8)).save(tmp_path / "p.png")
    old_photo_copies.write_copies([tmp_path / "p.png"], tmp_path / "out")
    truth = _lab(tmp_path / "p.png")
    copies = {k: _lab(tmp_path / "out" / k / "00000_p.png") for k in old_photo_copies.degraders()}
    for kind, lab in copies.items():
        # 8-bit rounding of sRGB moves ab by about 1 unit at most here
        np.testing.assert_allclose(lab[..., 1:], truth[..., 1:], atol=2.5, err_msg=kind)
    L = truth[..., 0]
    np.testing.assert_allclose(copies["clean"][..., 0], L, atol=0.5)
    np.testing.assert_allclose(copies["fade"][..., 0], 20 + 0.6 * L, atol=0.5)
    grain = copies["grain"][..., 0] - L
    assert 1.0 < np.std(grain) < 3.0  # sigma 5/255 of 100 L units
    stripes = np.abs(np.diff(L, axis=1)).mean()
    blur = copies["blur"][..., 0]
    assert np.abs(np.diff(blur, axis=1)).mean() < 0.6 * stripes  # softened
    np.testing.assert_allclose(blur.mean(), L.mean(), atol=0.5)  # not darkened or lightened
    # old: faded (mean 20 + 0.6 L), then blurred (stripes softer than the fade's alone)
    old = copies["old"][..., 0]
    np.testing.assert_allclose(old.mean(), 20 + 0.6 * L.mean(), atol=1.0)
    assert np.abs(np.diff(old, axis=1)).mean() < 0.45 * stripes  # the fade alone: 0.6


def test_the_val_tuning_half_is_the_model_cards():
    shared = old_photo_copies.SHARED
    if not (shared / "photos-train" / "crops.csv").is_file():
        missing = f"{shared}: photos-train and Miniplaces are missing (../shared)"
        assert not os.environ.get("KCOLOR_REQUIRE_SHARED"), missing
        pytest.skip(missing)
    half, groups = old_photo_copies.val_tuning_half()
    # 506 photos-train crops of 140 source photos and 500 Miniplaces photos (1,002 in colour)
    assert len(half) == len(groups) == 1006 and len(set(half)) == 1006
    assert sum("miniplaces" in p.parts for p in half) == 500
    assert len(set(groups)) == 640
    assert all(p.is_file() for p in half)
