"""Photo decoding, lightness and the join of predicted ab to the full-size L (kcolor.photo)."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import ADOBE_COLORANTS, SRGB_COLORANTS, icc_profile
from PIL import ExifTags, Image, ImageCms

from kcolor import color, photo

RNG = np.random.default_rng(0)


def test_lightness_matches_rgb_to_lab():
    rgb = RNG.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    np.testing.assert_allclose(color.lightness(rgb), color.rgb_to_lab(rgb)[..., 0], atol=1e-4)
    gray = RNG.integers(0, 256, (7, 9), dtype=np.uint8)
    as_rgb = np.repeat(gray[..., None], 3, -1)
    np.testing.assert_allclose(color.lightness(gray), color.rgb_to_lab(as_rgb)[..., 0], atol=1e-4)
    g16 = RNG.integers(0, 65536, (7, 9), dtype=np.uint16)
    as_rgb = np.repeat(g16[..., None], 3, -1) / 65535.0
    np.testing.assert_allclose(color.lightness(g16), color.rgb_to_lab(as_rgb)[..., 0], atol=1e-4)


def test_net_lightness_in_strips_equals_one_resize(monkeypatch):
    rgb = RNG.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    # 70x50 keeps its aspect inside the 16x16 input: 16x12, then 4 mirrored rows
    whole = np.asarray(Image.fromarray(color.lightness(rgb)).resize((16, 12), Image.BILINEAR))
    monkeypatch.setattr(photo, "STRIP_PIXELS", 300)  # 4 rows per strip
    small = photo.net_lightness(photo.photo_from_image(Image.fromarray(rgb)), 16)
    assert small.shape == (16, 16) and small.dtype == np.float32
    np.testing.assert_allclose(small[:12], whole, atol=1e-4)
    np.testing.assert_allclose(small[12:], whole[::-1][:4], atol=1e-4)


def test_a_wide_photo_is_not_squashed_and_its_padding_is_dropped():
    assert photo.fit_in_square(300, 200, 32) == (32, 20)  # 21.3 rounded to a multiple of 4
    assert photo.fit_in_square(200, 300, 32) == (20, 32)
    assert photo.fit_in_square(1000, 10, 32) == (32, 4)  # never below one output cell
    p = photo.photo_from_image(Image.new("L", (64, 32), 128))
    ab_low = np.zeros((8, 8, 2), np.float32)  # the net's output for a 32x32 input
    ab_low[:4, :, 0] = 40  # the photo's part (32x16 -> 8x4 cells): red
    ab_low[4:, :, 1] = -40  # the mirrored padding: blue, must not show
    lab = color.rgb_to_lab(np.asarray(photo.compose(p, ab_low)))
    assert np.abs(lab[..., 1] - 40).max() < 2.5 and np.abs(lab[..., 2]).max() < 2.5


def test_compose_upsamples_like_tf_resize_and_keeps_l(monkeypatch):
    monkeypatch.setattr(photo, "STRIP_PIXELS", 500)
    L = np.linspace(30, 80, 45 * 37, dtype=np.float32).reshape(45, 37)
    gray = np.clip(np.rint(color.lab_to_rgb(np.stack([L, 0 * L, 0 * L], -1)) * 255), 0, 255)
    p = photo.photo_from_image(Image.fromarray(gray.astype(np.uint8)))
    ab_low = RNG.uniform(-12, 12, (4, 3, 2)).astype(np.float32)  # in gamut at L 30..80
    out = np.asarray(photo.compose(p, ab_low, workers=2))
    assert out.shape == (45, 37, 3) and out.dtype == np.uint8
    lab = color.rgb_to_lab(out)
    want = tf.image.resize(ab_low[None], (45, 37), method="bilinear").numpy()[0]
    assert np.abs(lab[..., 1:] - want).max() < 2.5  # 8-bit rounding
    assert np.abs(lab[..., 0] - color.lightness(np.asarray(p.image))).max() < 0.6


def test_lab_to_rgb8_keeps_l_out_of_gamut_and_gray_is_exact():
    L = RNG.uniform(0, 100, 5000).astype(np.float32)
    ab = RNG.uniform(-110, 110, (5000, 2)).astype(np.float32)
    rgb = color.lab_to_rgb8(L, ab)
    assert np.abs(color.rgb_to_lab(rgb)[..., 0] - L).max() < 0.6
    gray = color.lab_to_rgb8(L, np.zeros_like(ab))
    assert (gray[:, 0] == gray[:, 1]).all() and (gray[:, 1] == gray[:, 2]).all()
    # in gamut: the same colors as color.lab_to_rgb (up to one 8-bit step)
    small = ab * 0.05
    ref = np.rint(color.lab_to_rgb(np.concatenate([L[:, None], small], 1)) * 255)
    inside = (L > 20) & (L < 80)
    assert np.abs(color.lab_to_rgb8(L, small)[inside] - ref[inside]).max() <= 1


@pytest.mark.parametrize(
    ("mode", "want_mode", "has_alpha"),
    [
        ("RGB", "RGB", False),
        ("RGBA", "RGB", True),
        ("L", "L", False),
        ("LA", "L", True),
        ("1", "L", False),
        ("P", "RGB", False),
        ("I;16", "I;16", False),
        ("I", "I;16", False),
        ("F", "I;16", False),
        ("CMYK", "RGB", False),
    ],
)
def test_photo_modes(mode, want_mode, has_alpha):
    img = Image.fromarray(RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8))
    if mode == "I":
        img = Image.fromarray(RNG.integers(0, 65536, (6, 5)).astype(np.int32))
    elif mode == "F":
        img = Image.fromarray(RNG.random((6, 5)).astype(np.float32))
    elif mode == "I;16":
        img = Image.fromarray(RNG.integers(0, 65536, (6, 5)).astype(np.uint16))
    else:
        img = img.convert(mode)
    p = photo.photo_from_image(img)
    assert p.image.mode == want_mode and p.size == (5, 6)
    assert (p.alpha is not None) == has_alpha
    assert photo.to_rgb8(p).mode == "RGB"


def test_palette_with_transparency_keeps_alpha():
    img = Image.fromarray(RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)).convert("P")
    img.info["transparency"] = 0
    p = photo.photo_from_image(img)
    assert p.image.mode == "RGB" and p.alpha is not None


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(RNG.integers(0, 256, (20, 40, 3), dtype=np.uint8))  # 40 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display rotated by 90 degrees
    img.save(tmp_path / "r.jpg", exif=exif)
    assert photo.open_photo(tmp_path / "r.jpg").size == (20, 40)


def test_compare_image_and_atomic_save(tmp_path, monkeypatch):
    monkeypatch.setattr(photo, "COMPARE_MAX_SIDE", 32)
    p = photo.photo_from_image(Image.new("L", (64, 16), 128))
    out = photo.compose(p, np.zeros((2, 2, 2), np.float32))
    pair = photo.compare_image(p, out)
    assert pair.size == (64, 8)
    photo.save_image(pair, tmp_path / "a" / "b.png", "PNG")
    assert [f.name for f in (tmp_path / "a").iterdir()] == ["b.png"]  # no temporary left
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match="is not a folder"):
        photo.save_image(pair, tmp_path / "file" / "b.png", "PNG")


def test_describe_error_is_one_line(tmp_path):
    good = tmp_path / "g.png"
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    cut = tmp_path / "t.png"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(OSError) as e:
        photo.open_photo(cut)
    assert "truncated" in photo.describe_error(e.value)
    (tmp_path / "n.jpg").write_text("hello")
    with pytest.raises(OSError) as e:
        photo.open_photo(tmp_path / "n.jpg")
    assert photo.describe_error(e.value) == "not an image, or a format PIL cannot read"


def test_parallel_saves_create_the_output_folder_once(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    img = Image.new("RGB", (4, 4), (10, 200, 30))
    for trial in range(5):
        folder = tmp_path / f"t{trial}" / "out"
        with ThreadPoolExecutor(16) as pool:
            paths = [folder / f"{i}.png" for i in range(64)]
            list(pool.map(lambda path: photo.save_image(img, path, "PNG"), paths))
        assert len(list(folder.iterdir())) == 64
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match="is not a folder"):
        photo.save_image(img, tmp_path / "file" / "a.png", "PNG")


def test_pil_warnings_name_the_file(tmp_path, monkeypatch):
    Image.new("RGB", (40, 30)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1,200 pixels: a "bomb" here
    with pytest.warns(Image.DecompressionBombWarning, match=rf"^{tmp_path / 'big.png'}: "):
        photo.open_photo(tmp_path / "big.png")


def srgb_encode(values):
    """Linear [0, 255] -> sRGB-encoded [0, 255] (IEC 61966-2-1)."""
    v = np.asarray(values, np.float64) / 255
    return 255 * np.where(v <= 0.0031308, 12.92 * v, 1.055 * v ** (1 / 2.4) - 0.055)


def tagged(array, profile):
    img = Image.fromarray(np.asarray(array, np.uint8))
    img.info["icc_profile"] = profile
    return img


def test_embedded_colour_profiles_are_converted_to_srgb(tmp_path):
    # linear gray and linear-light sRGB primaries: sRGB's own curve gives the answer
    gray = np.array([[0, 30, 128, 255]])
    out = photo.photo_from_image(tagged(gray, icc_profile("GRAY", 1.0)))
    assert out.image.mode == "L" and "icc_profile" not in out.image.info
    np.testing.assert_allclose(np.asarray(out.image), srgb_encode(gray), atol=1)
    rgb = np.array([[[128, 64, 200], [10, 250, 90]]])
    path = tmp_path / "linear.png"
    tagged(rgb, icc_profile("RGB ", 1.0, SRGB_COLORANTS)).save(
        path, icc_profile=icc_profile("RGB ", 1.0, SRGB_COLORANTS)
    )
    np.testing.assert_allclose(np.asarray(photo.open_photo(path).image), srgb_encode(rgb), atol=1)
    # Adobe RGB's green is beyond sRGB's: read as sRGB it would look duller
    adobe = np.array([[[30, 200, 40], [200, 60, 60]]])
    converted = photo.photo_from_image(
        tagged(adobe, icc_profile("RGB ", 563 / 256, ADOBE_COLORANTS))
    )
    lab, naive = (
        color.rgb_to_lab(np.asarray(converted.image)),
        color.rgb_to_lab(adobe.astype(np.uint8)),
    )
    assert (np.hypot(lab[..., 1], lab[..., 2]) > np.hypot(naive[..., 1], naive[..., 2]) + 5).all()
    # a palette photo's colours and an RGBA photo's too, its alpha kept
    pal = Image.new("P", (2, 1))
    pal.putpalette([128, 64, 200] * 256)
    pal.info["icc_profile"] = icc_profile("RGB ", 1.0, SRGB_COLORANTS)
    rgba = tagged([[[128, 64, 200, 77]]], icc_profile("RGB ", 1.0, SRGB_COLORANTS))
    for img in (pal, rgba):
        out = photo.photo_from_image(img)
        np.testing.assert_allclose(out.image.getpixel((0, 0)), srgb_encode([128, 64, 200]), atol=1)
    assert out.alpha.getpixel((0, 0)) == 77
    # a press profile's CMYK: half cyan is half the red light, linear (not 127 as PIL's)
    cmyk = Image.frombytes("CMYK", (2, 1), bytes([128, 0, 0, 0, 0, 255, 0, 128]))
    cmyk.info["icc_profile"] = icc_profile("CMYK")
    want = srgb_encode([[[127.5, 255, 255], [127.5, 0, 127.5]]])
    np.testing.assert_allclose(photo.photo_from_image(cmyk).image, want, atol=1)
    # 16-bit gray: the tone curve at 16 bits
    g16 = np.array([[0, 1000, 20000, 40000, 65535]], np.uint16)
    img = Image.fromarray(g16)
    img.info["icc_profile"] = icc_profile("GRAY", 1.0)
    out = photo.photo_from_image(img)
    assert out.image.mode == "I;16"
    np.testing.assert_allclose(np.asarray(out.image), srgb_encode(g16 / 257) * 257, atol=130)
    # gray with alpha: the profile converts the gray, the alpha is kept
    la = Image.merge("LA", (Image.fromarray(gray.astype(np.uint8)), Image.new("L", (4, 1), 77)))
    la.info["icc_profile"] = icc_profile("GRAY", 1.0)
    out = photo.photo_from_image(la)
    np.testing.assert_allclose(np.asarray(out.image), srgb_encode(gray), atol=1)
    assert np.asarray(out.alpha).tolist() == [[77] * 4]


def test_a_converted_photo_keeps_its_exif_saying_srgb(tmp_path):
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif)[photo.EXIF_COLOR_SPACE] = 0xFFFF  # uncalibrated: Adobe RGB
    exif[0x010F] = "Camera maker"
    path = tmp_path / "adobe.jpg"
    adobe = icc_profile("RGB ", 563 / 256, ADOBE_COLORANTS)
    Image.new("RGB", (8, 8), (30, 200, 40)).save(path, exif=exif.tobytes(), icc_profile=adobe)
    got = Image.Exif()
    got.load(photo.open_photo(path).exif)
    assert got.get_ifd(ExifTags.IFD.Exif)[photo.EXIF_COLOR_SPACE] == 1
    assert got[0x010F] == "Camera maker"
    # a damaged EXIF block is copied as it came; the pixels are still converted
    Image.new("RGB", (8, 8), (30, 200, 40)).save(path, exif=b"Exif\0\0garbage", icc_profile=adobe)
    damaged = photo.open_photo(path)
    assert damaged.exif == b"Exif\0\0garbage"
    assert damaged.image.getpixel((0, 0))[0] < 10  # Adobe's green is beyond sRGB's


def test_srgb_missing_and_unusable_profiles_leave_pixels_as_they_are(tmp_path):
    rgb = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for profile in (None, srgb):
        img = tagged(rgb, profile) if profile else Image.fromarray(rgb)
        np.testing.assert_array_equal(np.asarray(photo.photo_from_image(img).image), rgb)
    # what a profile does counts, not its name
    linear = icc_profile("RGB ", 1.0, SRGB_COLORANTS, name="sRGB IEC61966-2.1")
    out = photo.photo_from_image(tagged([[[128, 64, 200]]], linear))
    np.testing.assert_allclose(out.image.getpixel((0, 0)), srgb_encode([128, 64, 200]), atol=1)
    for name, profile in [("damaged", b"not a profile"), ("gray", icc_profile("GRAY", 1.0))]:
        path = tmp_path / f"{name}.png"
        Image.fromarray(rgb).save(path, icc_profile=profile)
        with pytest.warns(
            UserWarning, match=rf"^{path}: colour profile not used, pixels read as sRGB"
        ):
            got = photo.open_photo(path)
        np.testing.assert_array_equal(np.asarray(got.image), rgb)
