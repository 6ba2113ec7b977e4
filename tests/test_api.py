"""`kcolor.load` and its Colorizer (kcolor.api), with a tiny untrained model and real photos."""

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import kcolor
from kcolor import api, color, infer, model, photo

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo" / "gray"
PHOTO = DEMO / "animal-red-panda.jpg"  # 384 x 216 gray JPEG


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")  # as `kcolor fit` leaves it
    prior = np.random.default_rng(0).random(313) + 0.01
    model.build_model(width=0.0625, input_size=32, prior=prior).save(run / "model.keras")
    model.set_decoding(run / "model.keras", rebalance_strength=0.75)
    return run


@pytest.fixture(scope="module")
def colorizer(run_dir):
    return kcolor.load(run_dir)


@pytest.fixture(scope="module")
def gray():
    with Image.open(PHOTO) as img:
        return np.asarray(img)  # (216, 384) uint8


def test_import_kcolor_does_not_import_tensorflow():
    code = "import sys, kcolor; kcolor.load; print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
    with pytest.raises(AttributeError, match="no attribute 'lod'"):
        kcolor.lod  # noqa: B018


def test_path_pil_and_array_give_the_same_photo(colorizer, gray):
    by_path = colorizer.colorize(PHOTO)
    with Image.open(PHOTO) as img:
        by_pil = colorizer.colorize(img)
    by_array = colorizer.colorize(gray)
    assert isinstance(by_path, Image.Image) and by_path.mode == "RGB"
    assert by_path.size == (384, 216) and by_array.shape == (216, 384, 3)
    assert by_array.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(by_pil), np.asarray(by_path))
    np.testing.assert_array_equal(by_array, np.asarray(by_path))
    # the photo's own L is kept at full resolution
    assert np.abs(color.lightness(by_array) - color.lightness(gray)).max() < 1.5


def test_every_array_kind_of_the_same_gray_gives_the_same_colors(colorizer, gray):
    want = colorizer.colorize(gray)
    same = {
        "uint16": gray.astype(np.uint16) * 257,
        "float": gray / 255.0,
        "float32": (gray / 255.0).astype(np.float32),
        "(H, W, 1)": gray[..., None],
        "strided": np.asfortranarray(gray),
    }
    for kind, x in same.items():
        np.testing.assert_array_equal(colorizer.colorize(x), want, err_msg=kind)
    rgb = np.repeat(gray[..., None], 3, axis=-1)  # 8-bit RGB: L from the sRGB formula
    for kind, x in {"rgb": rgb, "rgb16": rgb.astype(np.uint16) * 257, "rgbf": rgb / 255}.items():
        assert np.abs(colorizer.colorize(x).astype(int) - want).max() <= 1, kind


def test_alpha_is_kept(colorizer, gray):
    alpha = np.tile(np.linspace(0, 255, gray.shape[1]).astype(np.uint8), (gray.shape[0], 1))
    rgba = np.dstack([gray, gray, gray, alpha])
    out = colorizer.colorize(rgba)
    assert out.shape == (*gray.shape, 4)
    np.testing.assert_array_equal(out[..., 3], alpha)
    assert np.abs(out[..., :3].astype(int) - colorizer.colorize(gray)).max() <= 1
    gray_alpha = colorizer.colorize(np.dstack([gray, alpha]))  # (H, W, 2): gray + alpha
    np.testing.assert_array_equal(gray_alpha[..., 3], alpha)
    np.testing.assert_array_equal(gray_alpha[..., :3], colorizer.colorize(gray))
    pil = colorizer.colorize(Image.fromarray(rgba))
    assert pil.mode == "RGBA"


def test_bad_arrays_and_types_fail_with_one_line(colorizer, gray):
    with pytest.raises(ValueError, match="expected a uint8, uint16 or float array, got int64"):
        colorizer.colorize(gray.astype(np.int64))
    with pytest.raises(ValueError, match=r"float values in \[0, 1\], got \[\d+, \d+\]"):
        colorizer.colorize(gray.astype(np.float32))
    with pytest.raises(ValueError, match=r"float values in \[0, 1\], got \[nan, nan\]"):
        colorizer.colorize(np.full((8, 8), np.nan))
    with pytest.raises(ValueError, match=r"got shape \(8, 8, 5\)"):
        colorizer.colorize(np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(TypeError, match="got list"):
        colorizer.colorize(gray.tolist())


def test_a_pil_image_is_turned_upright_but_not_changed(colorizer, gray):
    exif = Image.Exif()
    exif[api.ORIENTATION] = 6  # camera turned: the photo is shown rotated 90 degrees
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "JPEG", exif=exif)
    img = Image.open(io.BytesIO(buf.getvalue()))
    out = colorizer.colorize(img)
    assert out.size == (216, 384)  # upright
    assert img.size == (384, 216) and img.getexif()[api.ORIENTATION] == 6  # caller's untouched


def test_decoding_can_change_per_call(colorizer, run_dir, gray):
    assert colorizer._base.rebalance_strength == 0.75  # the recorded one
    plain = colorizer.colorize(gray, temperature=1.0, rebalance_strength=0.0)
    assert not np.array_equal(plain, colorizer.colorize(gray))
    net = colorizer._base.net
    want = infer.Colorizer(net, temperature=1.0, rebalance_strength=0.0).colorize(
        [photo.photo_from_image(Image.fromarray(gray))]
    )[0]
    np.testing.assert_array_equal(plain, np.asarray(want))
    assert colorizer._colorizer(None, None, 1.0, 0.0).net is net  # the network is shared
    with pytest.raises(ValueError, match="temperature"):
        colorizer.colorize(gray, temperature=-1.0)
    loaded = kcolor.load(run_dir / "model.keras", temperature=2.0)
    assert loaded._base.temperature == 2.0 and "T 2" in repr(loaded)


def test_colorize_files_writes_outputs_and_reports_failures(colorizer, tmp_path):
    src = tmp_path / "old"
    src.mkdir()
    for p in sorted(DEMO.glob("*.jpg"))[:2]:
        (src / p.name).write_bytes(p.read_bytes())
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    written, failed = colorizer.colorize_files(src, tmp_path / "new", fmt="png")
    assert sorted(p.name for p in written) == ["animal-red-panda.png", "beach-maldives.png"]
    assert all(p.is_file() for p in written)
    assert failed == [(src / "broken.jpg", "not an image, or a format PIL cannot read")]
    with Image.open(written[1]) as out, Image.open(src / "beach-maldives.jpg") as inp:
        assert out.size == inp.size
    # without out: colorized/ beside the inputs, as `kcolor colorize` does
    written, _ = colorizer.colorize_files([src / "beach-maldives.jpg"])
    assert written == [src / "colorized" / "beach-maldives.jpg"]


def test_the_docstring_examples_run(monkeypatch):
    """kcolor/api.py's examples are doctests (with the bundled model and the demo photos)."""
    import doctest

    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # they read examples/demo/gray
    result = doctest.testmod(api, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 8 and result.failed == 0
