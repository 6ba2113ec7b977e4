"""sources.load_rgbx: the fast JPEG path gives exactly what PIL (load_photo) gives."""

import io

import numpy as np
import pytest
from conftest import ADOBE_COLORANTS, SRGB_COLORANTS, icc_profile, smooth_photo
from PIL import Image

from kcolor import photo, sources

SIZE = 32


def rgbx_via_pil(path, size):
    img, problems = sources.load_photo(path, size)
    if img is None:
        return None, problems
    return np.frombuffer(img.tobytes("raw", "RGBX"), "<u4").copy(), problems


def jpeg(path, rgb, **save):
    Image.fromarray(rgb).save(path, "JPEG", **save)
    return path


@pytest.mark.parametrize(
    "save",
    [
        {"quality": 90},  # 4:2:0
        {"quality": 95, "subsampling": 0},  # 4:4:4
        {"quality": 80, "subsampling": 1},  # 4:2:2
        {"quality": 85, "progressive": True},
        {"quality": 90, "optimize": True},
    ],
)
def test_fast_jpeg_path_matches_pil_bit_for_bit(tmp_path, save):
    rgb = smooth_photo(np.random.default_rng(1), SIZE)
    path = jpeg(tmp_path / "a.jpg", rgb, **save)
    out = np.zeros(SIZE * SIZE, np.uint32)
    assert sources.load_rgbx(path, SIZE, out) == (True, [])
    expected, problems = rgbx_via_pil(path, SIZE)
    assert problems == []
    np.testing.assert_array_equal(out & 0xFFFFFF, expected & 0xFFFFFF)


def test_jpegs_the_fast_path_leaves_to_pil(tmp_path):
    rng = np.random.default_rng(2)
    # EXIF orientation 6 on a photo of the target size: PIL turns it upright
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = tmp_path / "rotated.jpg"
    Image.fromarray(smooth_photo(rng, SIZE)).save(rotated, "JPEG", quality=95, exif=exif.tobytes())
    upright = np.asarray(Image.open(rotated).convert("RGB").transpose(Image.Transpose.ROTATE_270))
    larger = jpeg(tmp_path / "larger.jpg", smooth_photo(rng, 2 * SIZE, 3 * SIZE))
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(smooth_photo(rng, SIZE)).convert("CMYK").save(cmyk, "JPEG")
    for path in (rotated, larger, cmyk):
        out = np.zeros(SIZE * SIZE, np.uint32)
        loaded, problems = sources.load_rgbx(path, SIZE, out)
        expected, expected_problems = rgbx_via_pil(path, SIZE)
        assert loaded and problems == expected_problems, path.name
        np.testing.assert_array_equal(out & 0xFFFFFF, expected & 0xFFFFFF)
    assert [p.kind for p in sources.load_rgbx(cmyk, SIZE, out)[1]] == ["CMYK"]
    sources.load_rgbx(rotated, SIZE, out)
    np.testing.assert_array_equal(out.view(np.uint8).reshape(SIZE, SIZE, 4)[..., :3], upright)


def test_bad_jpegs_get_the_same_problems_as_with_pil(tmp_path):
    rgb = smooth_photo(np.random.default_rng(3), SIZE)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.jpg").write_bytes(data[:2] + b"\x00" * 200)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.jpg", "JPEG")
    for name, kind in [("truncated.jpg", "corrupt"), ("garbage.jpg", "not an image"),
                       ("gray.jpg", "grayscale"), ("missing.jpg", "missing")]:  # fmt: skip
        path = tmp_path / name
        loaded, problems = sources.load_rgbx(path, SIZE, np.zeros(SIZE * SIZE, np.uint32))
        assert not loaded and problems == sources.load_photo(path, SIZE)[1], name
        assert problems[-1].kind == kind, (name, problems)


def test_a_jpeg_with_a_colour_profile_is_converted_to_srgb(tmp_path):
    rgb = smooth_photo(np.random.default_rng(3), SIZE)
    adobe = icc_profile("RGB ", 563 / 256, ADOBE_COLORANTS)
    path = jpeg(tmp_path / "adobe.jpg", rgb, quality=95, icc_profile=adobe)
    out = np.zeros(SIZE * SIZE, np.uint32)
    assert sources.load_rgbx(path, SIZE, out) == (True, [])  # not the fast path: it ignores ICC
    with Image.open(path) as img:
        naive = np.asarray(img.convert("RGB"))
        want = np.asarray(photo.to_srgb(img))
    got = out.view(np.uint8).reshape(SIZE, SIZE, 4)[..., :3]
    np.testing.assert_array_equal(got, want)
    assert np.abs(got.astype(int) - naive).max() > 10


def test_palette_and_cmyk_photos_with_profiles_are_converted_as_colorize_reads_them(tmp_path):
    pal = Image.new("P", (SIZE, SIZE))
    pal.putpalette([128, 64, 200] * 128 + [10, 250, 90] * 128)
    pal.paste(200, (0, 0, SIZE, SIZE // 2))
    pal.save(tmp_path / "pal.png", icc_profile=icc_profile("RGB ", 1.0, SRGB_COLORANTS))
    rgb = smooth_photo(np.random.default_rng(4), SIZE)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    cmyk.save(tmp_path / "cmyk.tif", icc_profile=icc_profile("CMYK"))
    for name, kinds in (("pal.png", ["palette"]), ("cmyk.tif", [])):  # CMYK: no note now
        img, problems = sources.load_photo(tmp_path / name, SIZE)
        assert [p.kind for p in problems] == kinds
        want = photo.open_photo(tmp_path / name).image
        np.testing.assert_array_equal(np.asarray(img), np.asarray(want))
        with Image.open(tmp_path / name) as raw:
            assert np.abs(np.asarray(img, int) - np.asarray(raw.convert("RGB"), int)).max() > 30
