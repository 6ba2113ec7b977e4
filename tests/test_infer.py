"""`kcolor colorize` and its library (kcolor.infer), with a tiny untrained model."""

import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from kcolor import cli, color, infer, model, photo, rebalance

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "model.keras"  # as `kcolor fit` writes it
    model.build_model(width=0.0625, input_size=32).save(path)
    return path


@pytest.fixture(scope="module")
def colorizer(model_path):
    return infer.load_colorizer(model_path)


def smooth(h, w, channels=3):
    """A smooth color photo (JPEG-friendly), uint8 (h, w, channels)."""
    y, x = np.mgrid[0:h, 0:w]
    planes = [128 + 100 * np.sin(x / 7 + k) * np.cos(y / 9 - k) for k in range(channels)]
    return np.clip(np.stack(planes, -1), 0, 255).astype(np.uint8)


def run(*args):
    return CliRunner().invoke(cli.main, ["colorize", *map(str, args)])


def l_of(path):
    """L of an image file as kcolor reads it (upright), (H, W) float32."""
    return color.lightness(np.asarray(photo.open_photo(path).image))


# --- library -------------------------------------------------------------------------


def test_predict_shapes_and_decoding(colorizer, model_path):
    ab, bins = colorizer.predict(np.full((3, 32, 32), 50.0, np.float32))
    assert ab.shape == (3, 8, 8, 2) and ab.dtype == np.float32
    assert bins.shape == (3, 8, 8) and bins.dtype == np.int32
    arg = infer.load_colorizer(model_path, decode="argmax", size=45)
    assert arg.side == 48  # rounded to a multiple of 8
    ab, bins = arg.predict(np.full((1, 48, 48), 50.0, np.float32))
    np.testing.assert_allclose(ab, colorizer.table.centres[bins])
    with pytest.raises(ValueError, match="decode"):
        infer.Colorizer(colorizer.net, decode="mode")


def test_colorize_mixed_sizes_in_one_batch(colorizer):
    photos = [photo.photo_from_image(Image.fromarray(smooth(h, w))) for h, w in [(9, 70), (40, 3)]]
    outs = colorizer.colorize(photos)
    assert [o.size for o in outs] == [(70, 9), (3, 40)]


def test_a_small_photo_runs_at_its_own_size_not_enlarged(model_path):
    col = infer.load_colorizer(model_path, size=48)
    assert col.side_for(200, 100) == 48  # larger than the side: scaled down to it
    assert col.side_for(30, 12) == 32  # smaller: its own long side, rounded up to 8
    assert col.side_for(3, 2) == 8
    small = photo.photo_from_image(Image.fromarray(smooth(12, 30)))
    big = photo.photo_from_image(Image.fromarray(smooth(60, 90)))
    assert col.lightness(small).shape == (32, 32) and col.lightness(big).shape == (48, 48)
    # mixed sides in one batch: one network call per side, each photo gets its own result
    [(ab_s, bins_s), (ab_b, _)] = col.predict_each([col.lightness(small), col.lightness(big)])
    assert ab_s.shape == (8, 8, 2) and ab_b.shape == (12, 12, 2)
    alone_ab, alone_bins = col.predict(col.lightness(small)[None])
    np.testing.assert_allclose(ab_s, alone_ab[0], atol=1e-4)
    np.testing.assert_array_equal(bins_s, alone_bins[0])
    assert [o.size for o in col.colorize([small, big])] == [(30, 12), (90, 60)]


def test_flip_averages_the_logits_of_the_photo_and_its_mirror(model_path, tmp_path):
    L = np.stack([color.lightness(smooth(32, 32)), color.lightness(smooth(32, 32, 3)[::-1])])
    plain, flip = infer.load_colorizer(model_path), infer.load_colorizer(model_path, flip=True)
    assert not plain.flip and flip.flip
    mirrored = plain.logits(L[:, :, ::-1])[:, :, ::-1]
    np.testing.assert_allclose(flip.logits(L), (plain.logits(L) + mirrored) / 2, atol=1e-4)
    # the mirror image of a photo gets the mirror image of its colors
    np.testing.assert_allclose(
        flip.predict(L[:, :, ::-1])[0], flip.predict(L)[0][:, :, ::-1], atol=1e-4
    )
    # recorded in the model by `kcolor decoding --flip`, shown, and taken back by --no-flip
    path = tmp_path / "m.keras"
    path.write_bytes(model_path.read_bytes())
    result = CliRunner().invoke(cli.main, ["decoding", str(path), "--flip"])
    assert result.exit_code == 0 and result.output.rstrip().endswith(", flip")
    assert infer.load_colorizer(path).flip and not infer.load_colorizer(path, flip=False).flip
    CliRunner().invoke(cli.main, ["decoding", str(path), "--no-flip"])
    assert not infer.load_colorizer(path).flip


def test_shrink_is_tensorflows_antialiased_bilinear_resize():
    import tensorflow as tf

    x = RNG.random((2, 60, 90, 1)).astype(np.float32) * 100
    for size in [(32, 48), (59, 90), (7, 13), (60, 90)]:
        want = tf.image.resize(x, size, "bilinear", antialias=True).numpy()
        np.testing.assert_allclose(infer.shrink(x, *size).numpy(), want, atol=1e-3, rtol=0)
    assert infer.multiscale_shape(224, 224, 128, 32) == (128, 128)
    assert infer.multiscale_shape(224, 160, 128, 32) == (128, 96)  # 91.4 -> 96
    assert infer.multiscale_shape(128, 96, 128, 32) is None  # not above the training side


def test_multiscale_averages_the_logits_at_the_photo_side_and_the_training_side(
    model_path, tmp_path
):
    import tensorflow as tf

    plain = infer.load_colorizer(model_path, size=64)
    multi = infer.load_colorizer(model_path, size=64, multiscale=True)
    assert multi.multiscale and multi.training_side == 32 and not plain.multiscale
    big = np.stack([color.lightness(smooth(64, 64)), color.lightness(smooth(64, 64, 3)[::-1])])
    small = infer.shrink(big[..., None], 32, 32).numpy()[..., 0]
    low = tf.image.resize(plain.logits(small), (16, 16), "bilinear").numpy()
    np.testing.assert_allclose(multi.logits(big), (plain.logits(big) + low) / 2, atol=1e-4)
    # at or below the training side a photo runs once, as without it
    at = big[:, :32, :32]
    np.testing.assert_array_equal(multi.logits(at), plain.logits(at))
    # recorded in the model by `kcolor decoding --multiscale`, shown, and taken back
    path = tmp_path / "m.keras"
    path.write_bytes(model_path.read_bytes())
    result = CliRunner().invoke(cli.main, ["decoding", str(path), "--multiscale"])
    assert result.exit_code == 0
    assert result.output.rstrip().endswith(", multiscale (also at 32)")
    assert infer.load_colorizer(path).multiscale
    assert not infer.load_colorizer(path, multiscale=False).multiscale
    CliRunner().invoke(cli.main, ["decoding", str(path), "--no-multiscale"])
    assert not infer.load_colorizer(path).multiscale


def test_color_and_gray_versions_get_the_same_colors(colorizer):
    # Only the lightness is used: a color photo and a 16-bit gray photo of its L agree.
    rgb = smooth(24, 24)
    L = color.lightness(rgb)
    g16 = np.searchsorted(color._gray_l_lut(65536), L).clip(0, 65535).astype(np.uint16)
    assert np.abs(color.lightness(g16) - L).max() < 0.01
    a, b = (
        np.asarray(colorizer.colorize([photo.photo_from_image(Image.fromarray(x))])[0])
        for x in (rgb, g16)
    )
    assert np.abs(a.astype(int) - b).max() <= 1


def test_a_failing_batch_fails_alone(colorizer, tmp_path, monkeypatch):
    for i in range(3):
        Image.fromarray(smooth(10, 10)).save(tmp_path / f"{i}.png")
    jobs, _ = infer.plan([tmp_path])
    real = colorizer.predict
    calls = []

    def flaky(L):
        calls.append(len(L))
        if len(calls) == 1:
            raise MemoryError("out of device memory")
        return real(L)

    monkeypatch.setattr(colorizer, "predict", flaky)
    seen = []
    failed = infer.colorize_files(jobs, colorizer, 2, on_result=lambda job, e: seen.append(e))
    assert failed == [(jobs[0].src, "out of device memory"), (jobs[1].src, "out of device memory")]
    assert calls == [2, 1] and len(seen) == 3
    assert (tmp_path / "colorized" / "2.png").is_file()


def test_plan_outputs(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for name in ("in/a.jpg", "in/B.PNG", "in/sub/c.webp", "in/notes.txt", "one.tif"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "in" / "colorized").mkdir()
    (tmp_path / "in" / "colorized" / "old.jpg").write_bytes(b"")
    jobs, refused = infer.plan([tmp_path / "in", tmp_path / "one.tif"], recursive=True)
    got = {
        j.src.relative_to(tmp_path).as_posix(): j.dst.relative_to(tmp_path).as_posix() for j in jobs
    }
    assert got == {
        "in/B.PNG": "in/colorized/B.PNG",
        "in/a.jpg": "in/colorized/a.jpg",
        "in/sub/c.webp": "in/colorized/sub/c.webp",
        "one.tif": "colorized/one.tif",
    }
    assert not refused
    jobs, _ = infer.plan([tmp_path / "in"], out=tmp_path / "o", fmt="png", compare=True)
    assert sorted(j.dst.name for j in jobs) == ["B.png", "a.png"]  # not recursive
    assert {j.fmt for j in jobs} == {"PNG"} and jobs[0].compare.name.endswith("-compare.png")
    jobs, refused = infer.plan([tmp_path / "in" / "a.jpg"], out=tmp_path / "in")
    assert not jobs and "would overwrite an input" in refused[0][1]


# --- the command ------------------------------------------------------------------


def test_sizes_and_modes_keep_size_and_lightness(tmp_path, model_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(smooth(33, 17)).save(src / "odd.png")
    Image.fromarray(smooth(1, 1)).save(src / "one.png")
    Image.fromarray(smooth(20, 30, 4)).save(src / "alpha.png")
    Image.fromarray(smooth(16, 24, 1)[..., 0].astype(np.uint16) * 257).save(src / "deep.png")
    Image.fromarray(smooth(18, 26)).convert("P").save(src / "palette.png")
    Image.fromarray(smooth(40, 64)).save(src / "photo.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 8  # stored rotated by 90 degrees
    Image.fromarray(smooth(24, 48)).save(src / "rotated.jpg", exif=exif, quality=95)
    Image.fromarray(smooth(12, 20)).convert("L").save(src / "gray.webp", lossless=True)
    Image.fromarray(smooth(12, 20)).save(src / "x.bmp")
    Image.fromarray(smooth(12, 20)).save(src / "x.tif")
    result = run(src, "--model", model_path, "-o", tmp_path / "out", "--batch-size", 4)
    assert result.exit_code == 0, result.output
    assert "10 colorized, 0 failed" in result.output
    for f in src.iterdir():
        out = tmp_path / "out" / f.name
        with Image.open(f) as a, Image.open(out) as b:
            assert b.format == a.format
        want, got = l_of(f), l_of(out)
        assert got.shape == want.shape, f.name
        err = np.abs(got - want)
        if f.suffix in (".jpg", ".webp"):  # lossy outputs
            assert err.mean() < 1.0, f.name
        else:
            assert err.max() < 0.7, f.name
    assert l_of(tmp_path / "out" / "rotated.jpg").shape == (48, 24)  # upright
    with Image.open(tmp_path / "out" / "alpha.png") as img:
        assert img.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(img)[..., 3], smooth(20, 30, 4)[..., 3])


def test_exif_is_kept_and_orientation_dropped(tmp_path, model_path):
    src = tmp_path / "in"
    src.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: stored rotated
    exif[0x0110] = "Old Camera"  # model
    exif[0x010E] = "Grandma, 1952"  # image description
    Image.fromarray(smooth(16, 40)).save(src / "a.jpg", exif=exif, quality=95)
    Image.fromarray(smooth(16, 40)).save(src / "b.png", exif=exif)
    Image.fromarray(smooth(16, 40)).save(src / "plain.jpg", quality=95)
    result = run(src, "--model", model_path, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    for name in ("a.jpg", "b.png"):
        with Image.open(tmp_path / "out" / name) as img:
            assert img.size == (16, 40), name  # upright, so no orientation tag is needed
            kept = img.getexif()
            assert kept.get(0x0110) == "Old Camera" and kept.get(0x010E) == "Grandma, 1952"
            assert kept.get(0x0112, 1) == 1, name
    with Image.open(tmp_path / "out" / "plain.jpg") as img:
        assert not img.getexif()


def test_bad_inputs_fail_alone(tmp_path, model_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(smooth(32, 32)).save(src / "good.png")
    good = (src / "good.png").read_bytes()
    (src / "cut.png").write_bytes(good[: len(good) // 3])
    (src / "junk.jpg").write_bytes(os.urandom(500))
    (src / "empty.png").write_bytes(b"")
    (src / "dir.jpg").mkdir()  # a folder with an image name is not looked into
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    result = run(src, notes, "--model", model_path)
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    for name in ("cut.png", "junk.jpg", "empty.png", "notes.txt"):
        assert sum(name in line for line in lines) == 1, (name, result.output)
    assert "1 colorized, 4 failed" in result.output
    assert (src / "colorized" / "good.png").is_file()
    assert "truncated" in next(line for line in lines if "cut.png" in line)


def test_output_problems(tmp_path, model_path):
    Image.fromarray(smooth(16, 16)).save(tmp_path / "a.png")
    (tmp_path / "file").write_text("x")
    result = run(tmp_path / "a.png", "-o", tmp_path / "file", "--model", model_path)
    assert result.exit_code == 2 and "is a file" in result.output  # click usage error
    (tmp_path / "colorized").write_text("in the way")
    result = run(tmp_path / "a.png", "--model", model_path)
    assert result.exit_code == 1 and "colorized is not a folder" in result.output
    result = run(tmp_path / "a.png", "-o", tmp_path, "--model", model_path)
    assert result.exit_code == 1 and "would overwrite an input" in result.output
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"


def test_model_problems(tmp_path, monkeypatch):
    Image.fromarray(smooth(16, 16)).save(tmp_path / "a.png")
    (tmp_path / "m.keras").write_bytes(b"PK not really")
    result = run(tmp_path / "a.png", "--model", tmp_path / "m.keras")
    assert result.exit_code == 1
    assert "m.keras: not a kcolor model" in result.output
    monkeypatch.setattr(infer, "default_model_path", lambda: None)
    result = run(tmp_path / "a.png")
    assert result.exit_code == 1 and "no --model given and no bundled model" in result.output
    result = run(tmp_path / "missing.png")
    assert result.exit_code == 2


def test_compare_format_decode_options(tmp_path, model_path):
    Image.fromarray(smooth(20, 28)).save(tmp_path / "a.jpg")
    args = ["--compare", "--format", "png", "--decode", "argmax", "--size", "16"]
    result = run(tmp_path / "a.jpg", "--model", model_path.parent, *args)  # a run folder
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "colorized" / "a.png") as out:
        assert out.size == (28, 20) and out.format == "PNG"
    with Image.open(tmp_path / "colorized" / "a-compare.png") as pair:
        assert pair.size == (56, 20)


def test_no_images(tmp_path, model_path):
    (tmp_path / "sub").mkdir()
    Image.fromarray(smooth(8, 8)).save(tmp_path / "sub" / "a.png")
    result = run(tmp_path, "--model", model_path)
    assert result.exit_code == 1 and "-r looks into subfolders" in result.output


def test_rebalance_strength_and_the_decoding_the_model_records(tmp_path):
    table = color.get_bin_table("zhang313")
    prior = np.exp(-np.linalg.norm(table.centres, axis=1) / 20)  # skewed toward gray
    prior /= prior.sum()
    path = tmp_path / "model.keras"  # trained with Zhang's rebalancing (the default)
    model.build_model(width=0.0625, input_size=32, prior=prior).save(path)
    L = np.stack([color.lightness(smooth(32, 32))] * 2)
    plain = infer.load_colorizer(path)
    assert (plain.temperature, plain.rebalance_strength) == (color.ANNEALED_T, None)
    ab_plain, _ = plain.predict(L)
    # strength 1 = Zhang's = what a network trained with Zhang's weights predicts as it is
    same = infer.load_colorizer(path, rebalance_strength=1.0)
    np.testing.assert_allclose(same.predict(L)[0], ab_plain, atol=1e-4)

    info = model.set_decoding(path, temperature=0.5, rebalance_strength=0.0)
    assert (info["temperature"], info["rebalance_strength"]) == (0.5, 0.0)
    posterior = infer.load_colorizer(path)
    assert (posterior.temperature, posterior.rebalance_strength) == (0.5, 0.0)
    logits = posterior.net.predict_on_batch(L[..., None])
    w = rebalance.rebalance_weights(prior, table, "zhang")
    expected = rebalance.decode_ab(logits - np.log(w), table.centres, "annealed", 0.5).numpy()
    ab, _ = posterior.predict(L)
    np.testing.assert_allclose(ab, expected, atol=1e-4)
    # dividing the weights out moves the colors toward the (grayish) prior
    assert np.abs(ab).mean() < np.abs(ab_plain).mean()
    # flags override what the model records
    again = infer.load_colorizer(path, temperature=color.ANNEALED_T, rebalance_strength=1.0)
    np.testing.assert_allclose(again.predict(L)[0], ab_plain, atol=1e-4)

    runner = CliRunner()
    shown = runner.invoke(cli.main, ["decoding", str(path)])
    assert shown.exit_code == 0 and "temperature 0.5, rebalance strength 0" in shown.output
    args = ["decoding", str(path), "--rebalance-strength", "0.25"]
    result = runner.invoke(cli.main, args)
    assert result.exit_code == 0 and "temperature 0.5, rebalance strength 0.25" in result.output
    assert infer.load_colorizer(path).rebalance_strength == 0.25
    bad = runner.invoke(cli.main, ["decoding", str(path), "--rebalance-strength", "3"])
    assert bad.exit_code == 2 and "--rebalance-strength" in bad.output
    # the input side for whole photos is recorded too, and used unless --size says otherwise
    result = runner.invoke(cli.main, ["decoding", str(path), "--size", "48"])
    assert result.exit_code == 0 and "input side 48" in result.output
    assert infer.load_colorizer(path).side == 48 and infer.load_colorizer(path, size=32).side == 32
    bad = runner.invoke(cli.main, ["decoding", str(path), "--size", "20"])
    assert bad.exit_code == 1 and "expected a multiple of 8, got 20" in bad.output


def test_a_model_trained_without_rebalancing_is_rebalanced_at_decoding(tmp_path):
    table = color.get_bin_table("zhang313")
    prior = np.exp(-np.linalg.norm(table.centres, axis=1) / 20)
    prior /= prior.sum()
    path = tmp_path / "model.keras"
    model.build_model(width=0.0625, input_size=32, rebalance="none", prior=prior).save(path)
    L = np.stack([color.lightness(smooth(32, 32))])
    as_trained = infer.load_colorizer(path)
    logits = as_trained.net.predict_on_batch(L[..., None])
    w = rebalance.rebalance_weights(prior, table, "zhang")
    expected = rebalance.decode_ab(logits + np.log(w), table.centres, "annealed", 0.38).numpy()
    vivid = infer.load_colorizer(path, rebalance_strength=1.0)
    np.testing.assert_allclose(vivid.predict(L)[0], expected, atol=1e-4)
    none = infer.load_colorizer(path, rebalance_strength=0.0)
    np.testing.assert_allclose(none.predict(L)[0], as_trained.predict(L)[0], atol=1e-4)


def test_rebalance_strength_needs_a_training_prior(tmp_path, model_path):
    with pytest.raises(ValueError, match="no training prior"):
        infer.load_colorizer(model_path, rebalance_strength=0.5)
    args = ["decoding", str(model_path), "--rebalance-strength", "0.5"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 1
    assert f"{model_path}: the model records no training prior" in result.output


def test_colour_inputs_summary_and_output_folder(tmp_path, model_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(smooth(16, 24)).save(src / "colour.png")  # a colour photo
    Image.fromarray(smooth(16, 24)).convert("L").save(src / "gray.png")
    result = run(src, "--model", model_path)
    assert result.exit_code == 0, result.output
    # one note for the colour inputs, naming the first; the summary names the output folder
    notes = [ln for ln in result.output.splitlines() if ln.startswith("Note:")]
    assert len(notes) == 1 and "1 input(s) were colour photos" in notes[0]
    assert str(src / "colour.png") in notes[0]
    assert result.output.strip().splitlines()[-1].endswith(f"-> {src / 'colorized'}")
    # -o naming the input folder itself is refused with the reason, nothing written
    result = run(src, "-o", src, "--model", model_path)
    assert result.exit_code == 1 and "is the input folder" in result.output
    assert sorted(p.name for p in src.iterdir()) == ["colorized", "colour.png", "gray.png"]


def test_alpha_to_a_format_without_alpha_is_composited_on_white(tmp_path, model_path):
    rgba = np.zeros((16, 24, 4), np.uint8)
    rgba[..., :3] = 20  # dark pixels, fully transparent: they must not show
    rgba[:, :12, 3] = 255
    rgba[:, :12, :3] = 128
    Image.fromarray(rgba).save(tmp_path / "a.png")
    result = run(tmp_path / "a.png", "--model", model_path, "--format", "jpeg")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "colorized" / "a.jpg") as out:
        assert out.mode == "RGB"
        assert np.asarray(out.convert("L"))[:, 14:].min() > 240  # white, not the hidden 20


def test_16_bit_inputs_give_16_bit_png_and_tiff(tmp_path, model_path):
    import png
    import tifffile

    deep = (smooth(24, 32, 1)[..., 0].astype(np.uint16) * 257) + np.arange(32, dtype=np.uint16)
    for name in ("deep.png", "deep.tif"):
        Image.fromarray(deep).save(tmp_path / name)
    result = run(tmp_path / "deep.png", tmp_path / "deep.tif", "--model", model_path)
    assert result.exit_code == 0, result.output
    with open(tmp_path / "colorized" / "deep.png", "rb") as f:
        width, height, rows, info = png.Reader(file=f).read()
        from_png = np.vstack([np.asarray(r, np.uint16) for r in rows]).reshape(height, width, 3)
    from_tif = tifffile.imread(tmp_path / "colorized" / "deep.tif")
    assert info["bitdepth"] == 16 and from_tif.dtype == np.uint16
    want = color.lightness(deep)  # the input's L at 16-bit precision
    for rgb in (from_png, from_tif):
        assert rgb.shape == (24, 32, 3)
        got = color.rgb_to_lab(rgb / 65535.0)[..., 0]
        assert np.abs(got - want).max() < 0.05  # 8-bit output would be off by up to ~0.4
