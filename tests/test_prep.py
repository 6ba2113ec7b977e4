"""kcolor prep and kcolor.shards: the shard format, the pipeline, resuming, bad input."""

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import smooth_photo, write_miniplaces, write_photo_dir
from PIL import Image

from kcolor import cli, color, encode, shards

ZHANG = color.get_bin_table("zhang313")


@pytest.fixture(scope="module", autouse=True)
def lut_cache(tmp_path_factory):
    """One on-disk lookup-table cache for this module (subprocesses load it in ~0.1 s)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KCOLOR_CACHE_DIR", str(tmp_path_factory.mktemp("kcolor-cache")))
        encode.rgbx_lookup.cache_clear()
        encode.rgbx_lookup("zhang313")
        yield
    encode.rgbx_lookup.cache_clear()


def run_prep(*args):
    result = CliRunner().invoke(cli.main, ["prep", *map(str, args)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def read_all(out: Path) -> dict:
    """name -> datasets of every shard in out, for comparing two runs."""
    return {p.name: shards.read_shard(p) for p in sorted(out.glob("*.h5"))}


def assert_same_shards(a: Path, b: Path):
    da, db = read_all(a), read_all(b)
    assert da.keys() == db.keys() and da
    for name in da:
        for key in ("L", "bins", "label", "bin_counts"):
            np.testing.assert_array_equal(da[name][key], db[name][key], err_msg=f"{name}:{key}")
        assert da[name]["path"] == db[name]["path"]
    for report in sorted(a.glob("report*.txt")):
        assert report.read_text() == (b / report.name).read_text()


# --- the shard format -----------------------------------------------------------


def write_demo_shard(path: Path, n=3, size=8, table=ZHANG, **kw):
    rng = np.random.default_rng(0)
    L = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    bins = rng.integers(0, table.size, (n, size, size)).astype(np.uint16)
    args = dict(
        L=L,
        bins=bins,
        label=np.arange(n, dtype=np.int32),
        paths=[f"dir/é{i}.jpg" for i in range(n)],
        table=table,
        split="train",
        shard_index=0,
        num_shards=1,
        settings={"size": size},
        report="",
    )
    args.update(kw)
    shards.write_shard(path, **args)
    return L, bins


def test_shard_round_trip(tmp_path):
    path = tmp_path / shards.shard_name("train", 0, 1)
    L, bins = write_demo_shard(path)
    assert {p.name for p in tmp_path.iterdir()} == {path.name, "report-train-00000.txt"}
    got = shards.read_shard(path)
    np.testing.assert_array_equal(got["L"], L)
    np.testing.assert_array_equal(got["bins"], bins)
    assert got["label"].dtype == np.int32 and got["path"] == [
        "dir/é0.jpg",
        "dir/é1.jpg",
        "dir/é2.jpg",
    ]
    np.testing.assert_array_equal(got["bin_counts"], np.bincount(bins.ravel(), minlength=313))
    meta = shards.validate_shard(path)
    assert meta["table"] is ZHANG and meta["image_size"] == 8 and meta["num_images"] == 3
    assert meta["format_version"] == shards.FORMAT_VERSION and meta["settings"] == {"size": 8}
    with h5py.File(path) as f:
        assert f["L"].chunks is None and f["bins"].chunks is None  # contiguous


def test_count_bins_matches_bincount():
    bins = np.repeat(np.arange(313, dtype=np.uint16), 3000)  # long runs, > one chunk
    np.testing.assert_array_equal(shards.count_bins(bins, 313), np.full(313, 3000))
    with pytest.raises(ValueError, match="below 313"):
        shards.count_bins(np.array([313], np.uint16), 313)


def test_read_meta_rejects_foreign_centres(tmp_path):
    path = tmp_path / "train-00000-of-00001.h5"
    write_demo_shard(path)
    with h5py.File(path, "a") as f:
        f.attrs["bin_centres"] = f.attrs["bin_centres"] + 1
    with pytest.raises(ValueError, match="train-00000-of-00001.h5: bin centres"):
        shards.read_meta(path)


def test_list_and_check_compatible(tmp_path):
    with pytest.raises(FileNotFoundError, match="found none"):
        shards.list_shards(tmp_path, "train")
    a, b = tmp_path / "train-00000-of-00002.h5", tmp_path / "train-00001-of-00002.h5"
    write_demo_shard(b, shard_index=1, num_shards=2)
    write_demo_shard(a, num_shards=2)
    assert shards.list_shards(tmp_path, "train") == [a, b]
    shards.check_compatible([a, b])
    c = tmp_path / "val-00000-of-00001.h5"
    write_demo_shard(c, table=color.get_bin_table("grid18"), split="val")
    with pytest.raises(
        ValueError, match=r"val-00000-of-00001.h5: bin_table is 'grid18', but .*train-00000"
    ):
        shards.check_compatible([a, c])
    write_demo_shard(tmp_path / "train-00000-of-00003.h5", num_shards=3)
    with pytest.raises(ValueError, match="of-00003"):
        shards.list_shards(tmp_path, "train")


def test_write_stats_sums_train_shards_and_needs_all(tmp_path):
    a, b = tmp_path / "train-00000-of-00002.h5", tmp_path / "train-00001-of-00002.h5"
    write_demo_shard(a, num_shards=2)
    with pytest.raises(ValueError, match="expected 2 train shards, found 1 .missing 00001"):
        shards.write_stats(tmp_path)
    write_demo_shard(b, n=5, shard_index=1, num_shards=2)
    stats = shards.write_stats(tmp_path)
    loaded = shards.load_stats(tmp_path)
    assert loaded["bin_counts"].dtype == np.int64 and loaded["images"] == 8 == stats["images"]
    assert loaded["pixels"] == 8 * 8 * 8 == loaded["bin_counts"].sum()
    expected = shards.read_shard(a)["bin_counts"] + shards.read_shard(b)["bin_counts"]
    np.testing.assert_array_equal(loaded["bin_counts"], expected)


def test_rgbx_lookup_is_rgb24_lookup_in_pil_byte_order():
    l_u8, bins = color.rgb24_lookup("zhang313")
    both = encode.rgbx_lookup("zhang313")
    lx, bx = (both >> 16) & 0xFF, both & 0xFFFF
    colored = (both & encode.COLORED) > 0
    rgb = np.random.default_rng(2).integers(0, 256, (20000, 3))
    rgb_index = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    pil_index = rgb[:, 0] | (rgb[:, 1] << 8) | (rgb[:, 2] << 16)
    np.testing.assert_array_equal(lx[pil_index], l_u8[rgb_index])
    np.testing.assert_array_equal(bx[pil_index], bins[rgb_index])
    np.testing.assert_array_equal(colored[pil_index], np.ptp(rgb, axis=1) > 6)


# --- the pipeline -------------------------------------------------------------


def test_prep_miniplaces(tmp_path):
    root = write_miniplaces(tmp_path / "mini", n_train=7, n_val=3, size=16)
    out = tmp_path / "out"
    result = run_prep(root, out, "--size", 16, "--shard-size", 4, "--workers", 1)
    assert result.exit_code == 0, result.output
    assert "Wrote 7 train and 3 val images in 3 shards" in result.output
    assert "images/s" in result.output and "stats.json" in result.output
    names = sorted(p.name for p in out.glob("*.h5"))
    assert names == ["train-00000-of-00002.h5", "train-00001-of-00002.h5", "val-00000-of-00001.h5"]
    data = read_all(out)
    paths = sum((d["path"] for n, d in data.items() if n.startswith("train")), [])
    assert sorted(paths) == sorted(
        "images/" + line.split()[0] for line in (root / "train.txt").read_text().splitlines()
    )
    # Each pixel holds the exact L and bin of its color.
    shard = data["val-00000-of-00001.h5"]
    i = 0
    rgb = np.asarray(Image.open(root / shard["path"][i]).convert("RGB"))
    lab = color.rgb_to_lab(rgb)
    np.testing.assert_array_equal(shard["L"][i], color.encode_l(lab[..., 0]))
    np.testing.assert_array_equal(shard["bins"][i], ZHANG.quantize(lab[..., 1:]))
    labels = dict(line.split() for line in (root / "val.txt").read_text().splitlines())
    assert shard["label"][i] == int(labels[shard["path"][i].removeprefix("images/")])
    # Frequencies: per shard and in stats.json, summing to the pixel count.
    stats = shards.load_stats(out)
    assert stats["pixels"] == 7 * 16 * 16 == stats["bin_counts"].sum() and stats["images"] == 7
    for d in data.values():
        assert d["bin_counts"].sum() == d["L"].size
        np.testing.assert_array_equal(
            d["bin_counts"], np.bincount(d["bins"].ravel(), minlength=313)
        )
    meta = data["val-00000-of-00001.h5"]["meta"]
    assert meta["settings"]["size"] == 16 and meta["settings"]["bin_table"] == "zhang313"
    assert meta["num_shards"] == 1 and meta["split"] == "val"


def test_folder_split_is_seeded_and_independent_of_workers(tmp_path):
    photos = tmp_path / "photos"
    write_photo_dir(photos, n=24, size=16)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    common = ["--size", 16, "--val-fraction", 0.3, "--shard-size", 5]
    assert run_prep(photos, a, *common, "--workers", 1).exit_code == 0
    assert run_prep(photos, b, *common, "--workers", 2).exit_code == 0
    assert_same_shards(a, b)
    assert run_prep(photos, c, *common, "--workers", 1, "--seed", 7).exit_code == 0
    val = lambda out: sorted(sum((d["path"] for n, d in read_all(out).items() if "val" in n), []))  # noqa: E731
    assert 0 < len(val(a)) < 24 and val(a) != val(c)
    assert all(d["label"].tolist() == [-1] * len(d["label"]) for d in read_all(a).values())


def test_larger_photos_are_resized_on_the_short_side_and_centre_cropped(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    wide = smooth_photo(np.random.default_rng(3), 40, 64)
    Image.fromarray(wide).save(photos / "wide.png")
    result = run_prep(photos, tmp_path / "out", "--size", 20, "--val-fraction", 0, "--workers", 1)
    assert result.exit_code == 0, result.output
    shard = shards.read_shard(tmp_path / "out" / "train-00000-of-00001.h5")
    expected = Image.fromarray(wide).resize((20, 20), Image.Resampling.BICUBIC, box=(12, 0, 52, 40))
    lab = color.rgb_to_lab(np.asarray(expected))
    np.testing.assert_array_equal(shard["L"][0], color.encode_l(lab[..., 0]))


def test_rerun_skips_finished_shards_and_redoes_missing_ones(tmp_path):
    root = write_miniplaces(tmp_path / "mini", n_train=9, n_val=2, size=16)
    out = tmp_path / "out"
    args = [root, out, "--size", 16, "--shard-size", 3, "--workers", 1]
    assert run_prep(*args).exit_code == 0
    before = read_all(out)
    (out / "train-00001-of-00003.h5").unlink()
    (out / ".train-00002-of-00003.h5.999999.tmp").write_bytes(b"half a shard")
    result = run_prep(*args)
    assert result.exit_code == 0 and "(1 new, 3 already done)" in result.output
    assert not list(out.glob(".*.tmp"))
    after = read_all(out)
    for name in before:
        np.testing.assert_array_equal(before[name]["bins"], after[name]["bins"])
    # Other settings must not silently mix with the shards already there.
    result = run_prep(root, out, "--size", 8, "--shard-size", 3, "--workers", 1)
    assert result.exit_code == 1
    assert "train-00000-of-00003.h5: made with other settings" in result.output
    assert "size" in result.output


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="kill -9 and fork semantics of Linux")
def test_killed_and_resumed_prep_equals_an_uninterrupted_one(tmp_path):
    photos = tmp_path / "photos"
    write_photo_dir(photos, n=240, size=24)
    common = ["--size", "24", "--shard-size", "2", "--workers", "2"]
    cmd = [sys.executable, "-m", "kcolor", "prep", str(photos)]
    subprocess.run([*cmd, str(tmp_path / "whole"), *common], check=True, capture_output=True)

    out = tmp_path / "resumed"
    proc = subprocess.Popen(
        [*cmd, str(out), *common], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def shards_written():
        # pathlib's glob also matches hidden names: a shard's temp file
        # (.train-....h5.PID.tmp.h5) is no shard yet
        names = [shards.parse_shard_name(p.name) for p in out.glob("*.h5")]
        return [name for name in names if name is not None]

    deadline = time.monotonic() + 60
    while len(shards_written()) < 3 and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.3)  # the workers die with their parent (PR_SET_PDEATHSIG)
    # done = a shard and its report: the kill may land between the two, and such a shard
    # is made again
    finished = sum(
        (out / shards.report_name(split, i)).exists() for split, i, _ in shards_written()
    )
    assert 3 <= finished < 120, "the kill came too late to interrupt the run"
    assert not (out / "stats.json").exists()

    rerun = subprocess.run([*cmd, str(out), *common], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{finished} already done" in rerun.stdout
    assert "taking over the lock left by kcolor prep" in rerun.stderr  # kcolor.lock
    assert not list(out.glob(".*.tmp*"))
    assert_same_shards(tmp_path / "whole", out)
    whole = json.loads((tmp_path / "whole" / "stats.json").read_text())
    assert json.loads((out / "stats.json").read_text()) == whole


def test_shard_index_on_two_machines_then_merge_stats(tmp_path):
    root = write_miniplaces(tmp_path / "mini", n_train=10, n_val=4, size=16)
    common = ["--size", 16, "--num-shards", 4, "--workers", 1]
    assert run_prep(root, tmp_path / "all", *common).exit_code == 0
    first = run_prep(root, tmp_path / "m1", *common, "--shard-index", "0-1")
    assert first.exit_code == 0 and "--merge-stats" in first.output
    assert (
        run_prep(root, tmp_path / "m2", *common, "--shard-index", 2, "--shard-index", 3).exit_code
        == 0
    )
    assert not (tmp_path / "m1" / "stats.json").exists()
    early = run_prep("--merge-stats", tmp_path / "m1")
    assert early.exit_code == 1
    assert "expected 4 train shards, found 2 (missing 00002, 00003)" in early.output
    gathered = tmp_path / "gathered"
    gathered.mkdir()
    for m in ("m1", "m2"):
        for p in (tmp_path / m).glob("*-0000?*"):
            p.rename(gathered / p.name)
    result = run_prep("--merge-stats", gathered)
    assert result.exit_code == 0, result.output
    assert (
        shards.load_stats(gathered)["bin_counts"].tolist()
        == shards.load_stats(tmp_path / "all")["bin_counts"].tolist()
    )
    assert_same_shards(tmp_path / "all", gathered)
    bad = run_prep(root, tmp_path / "m3", *common, "--shard-index", "9")
    assert bad.exit_code == 1 and "--shard-index: expected 0..3, got 9" in bad.output


# --- bad input ----------------------------------------------------------------


def png16(path: Path, rgb16: np.ndarray):
    """A 16-bit RGB PNG (PIL cannot write one)."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\0" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def make_bad_inputs(folder: Path) -> dict:
    """One file per kind of bad input; returns file name -> expected message part."""
    write_photo_dir(folder, n=4, size=16, nested=False)
    rng = np.random.default_rng(9)
    rgb = smooth_photo(rng, 16)
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(rgb).convert("P").save(folder / "palette.png")
    rgba = np.dstack([rgb, np.full((16, 16), 255, np.uint8)])
    rgba[:4, :4, 3] = 0
    Image.fromarray(rgba).save(folder / "alpha.png")
    png16(folder / "deep.png", rgb.astype(np.uint16) * 257)
    Image.fromarray(rgb[..., 1]).save(folder / "gray-mode.png")
    Image.fromarray(np.repeat(rgb[..., 1:2], 3, axis=2)).save(folder / "gray-rgb.jpg")
    Image.fromarray(smooth_photo(rng, 8)).save(folder / "small.jpg")
    (folder / "text.jpg").write_text("not a photo")
    whole = (folder / "photo000.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    return {
        "cmyk.jpg": "CMYK image, converted to RGB",
        "palette.png": "palette image (mode P), converted to RGB",
        "alpha.png": "has transparent pixels; alpha dropped",
        "deep.png": "16-bit image, scaled to 8 bits",
        "gray-mode.png": "grayscale image (mode L)",
        "gray-rgb.jpg": "grayscale photo (R, G and B equal)",
        "small.jpg": "too small: 8x8, expected a short side of at least 16",
        "text.jpg": "not an image",
        "truncated.jpg": "truncated or corrupt image",
    }


def test_bad_files_are_reported_one_line_each(tmp_path):
    folder = tmp_path / "photos"
    expected = make_bad_inputs(folder)
    out = tmp_path / "out"
    result = run_prep(folder, out, "--size", 16, "--val-fraction", 0, "--workers", 1)
    assert result.exit_code == 0, result.output
    report = (out / "report.txt").read_text().splitlines()
    assert len(report) == len(expected)
    for name, message in expected.items():
        assert any(line.startswith(f"{folder}/{name}: {message}") for line in report), name
    assert "Skipped 5: not an image 1, corrupt 1, grayscale 2, too small 1" in result.output
    assert "Converted 4: CMYK 1, palette 1, 16-bit 1, alpha 1" in result.output
    assert "Wrote 8 train images" in result.output  # 4 good + 4 converted
    assert (out / "report-train-00000.txt").read_text() == (out / "report.txt").read_text()


@pytest.mark.parametrize("name", ["truncated.jpg", "cmyk.jpg", "gray-rgb.jpg", "text.jpg"])
def test_strict_fails_on_the_first_problem(tmp_path, name):
    folder = tmp_path / "photos"
    message = make_bad_inputs(tmp_path / "all")[name]
    write_photo_dir(folder, n=3, size=16)
    (tmp_path / "all" / name).rename(folder / name)
    result = run_prep(folder, tmp_path / "out", "--size", 16, "--strict", "--workers", 1)
    assert result.exit_code == 1
    assert f"Error: {folder}/{name}: {message}" in result.output


def test_bad_list_lines(tmp_path):
    root = write_miniplaces(tmp_path / "mini", n_train=3, n_val=1, size=16)
    with open(root / "train.txt", "a") as f:
        f.write("train/c/cat0/missing.jpg 0\n../../etc/passwd 1\nno label here\n\n")
    result = run_prep(root, tmp_path / "out", "--size", 16, "--workers", 1)
    assert result.exit_code == 0, result.output
    report = (tmp_path / "out" / "report.txt").read_text()
    assert f"{root}/images/train/c/cat0/missing.jpg: missing file\n" in report
    assert f"{root}/train.txt:5: '../../etc/passwd' points outside images/\n" in report
    assert f"{root}/train.txt:6: malformed line 'no label here', expected 'PATH LABEL'\n" in report
    assert "missing 1, outside root 1, malformed line 1" in result.output
    strict = run_prep(root, tmp_path / "out2", "--size", 16, "--workers", 1, "--strict")
    assert strict.exit_code == 1 and f"Error: {root}/" in strict.output


def test_unusable_source_or_out_fails_before_any_work(tmp_path):
    photos = tmp_path / "photos"
    write_photo_dir(photos, n=2, size=16)
    missing = run_prep(tmp_path / "nowhere", tmp_path / "out")
    assert (
        missing.exit_code == 1
        and f"Error: {tmp_path / 'nowhere'}: expected a readable folder" in missing.output
    )
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    as_source = run_prep(a_file, tmp_path / "out")
    assert as_source.exit_code == 1 and f"{a_file}: expected a readable folder" in as_source.output
    as_out = run_prep(photos, a_file)
    assert (
        as_out.exit_code == 1
        and f"Error: {a_file}: expected an output folder, found a file" in as_out.output
    )
    (tmp_path / "mini").mkdir()
    (tmp_path / "mini" / "train.txt").write_text("a.jpg 0\n")
    no_images = run_prep(tmp_path / "mini", tmp_path / "out")
    assert no_images.exit_code == 1 and "no images/ folder" in no_images.output
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = run_prep(empty, tmp_path / "out")
    assert nothing.exit_code == 1 and "expected images, found none" in nothing.output
    table = run_prep(photos, tmp_path / "out", "--bin-table", "grid19")
    assert table.exit_code == 1 and "grid19" in table.output
    assert not (tmp_path / "out").exists()


def test_prep_never_imports_tensorflow(tmp_path):
    photos = tmp_path / "photos"
    write_photo_dir(photos, n=3, size=16)
    code = (
        "import sys; from kcolor import cli\n"
        f"cli.main(['prep', {str(photos)!r}, {str(tmp_path / 'out')!r}, '--size', '16'],"
        " standalone_mode=False)\n"
        "assert 'tensorflow' not in sys.modules, 'prep imported TensorFlow'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_two_sources_go_into_one_shard_folder(tmp_path):
    a = write_miniplaces(tmp_path / "data" / "a", n_train=5, n_val=2, size=16, seed=1)
    b = write_photo_dir(tmp_path / "data" / "b", n=6, size=16, seed=2, nested=False)[0].parent
    out = tmp_path / "out"
    result = run_prep(a, b, out, "--size", 16, "--val-fraction", 0.5, "--workers", 1)
    assert result.exit_code == 0, result.output
    data = read_all(out)
    paths = sorted(sum((d["path"] for d in data.values()), []))
    # every photo of both, named below the sources' common folder, each split its own way
    want_a = [
        "a/images/" + ln.split()[0]
        for t in ("train", "val")
        for ln in (a / f"{t}.txt").read_text().splitlines()
    ]
    want_b = [f"b/{p.name}" for p in sorted(b.iterdir())]
    assert paths == sorted(want_a + want_b)
    val = sum((d["path"] for n, d in data.items() if n.startswith("val")), [])
    assert {p for p in val if p.startswith("a/")} == {p for p in want_a if "/val/" in p}
    assert shards.load_stats(out)["images"] == sum(
        len(d["path"]) for n, d in data.items() if n.startswith("train")
    )
    # the same collection twice is refused before any work
    result = run_prep(a, a, tmp_path / "out2", "--size", 16)
    assert result.exit_code == 1 and "listed twice" in result.output
    assert not (tmp_path / "out2").exists()


def test_links_to_outside_the_source_are_refused(tmp_path):
    outside = write_photo_dir(tmp_path / "elsewhere", n=1, size=16, nested=False)[0]
    root = write_miniplaces(tmp_path / "mini", n_train=4, n_val=1, size=16)
    (root / "images" / "train" / "link.jpg").symlink_to(outside)
    (root / "train.txt").write_text((root / "train.txt").read_text() + "train/link.jpg 0\n")
    folder = tmp_path / "folder"
    write_photo_dir(folder, n=3, size=16, nested=False)
    (folder / "link.jpg").symlink_to(outside)
    for src in (root, folder):
        out = tmp_path / f"out-{src.name}"
        result = run_prep(src, out, "--size", 16, "--workers", 1)
        assert result.exit_code == 0, result.output
        assert "outside root 1" in result.output
        report = (out / "report.txt").read_text()
        assert "link.jpg" in report and "a link to outside" in report
        assert not any("link" in p for d in read_all(out).values() for p in d["path"])
