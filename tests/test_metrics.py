"""Colorization metrics on hand-made cases, and `kcolor evaluate` (kcolor.metrics)."""

import json
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from kcolor import cli, color, evaluate, infer, metrics, model, photo

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "model.keras"
    model.build_model(width=0.0625, input_size=32).save(path)
    return path


def test_auc_identical_and_constant_shift():
    ab = RNG.uniform(-80, 80, (20, 30, 2))
    assert metrics.auc(ab, ab) == 100.0
    for d in (10.5, 37.25, 30.0, 149.5):
        shift = np.array([0.6, 0.8]) * d  # a constant ab error of length d
        want = 100 * (150 - d) / 150
        # exact for half-integer d, else within half a threshold (0.5 / 150)
        tol = 1e-3 if d % 1 == 0.5 else 100 * 0.5 / 150 + 1e-6
        assert metrics.auc(ab + shift, ab) == pytest.approx(want, abs=tol)
    assert metrics.auc(ab + [200.0, 0.0], ab) == 0.0


def test_auc_weights():
    truth = np.zeros((4, 2))
    pred = np.array([[0, 0], [0, 0], [200, 0], [200, 0]], float)  # half exact, half hopeless
    assert metrics.auc(pred, truth) == pytest.approx(50.0)
    assert metrics.auc(pred, truth, weights=[3, 3, 1, 1]) == pytest.approx(75.0)
    # per-bin weights through the histogram give the same answer
    hist = metrics.error_histogram(pred, truth, bins=[0, 0, 1, 1], n_bins=2)
    assert hist.shape == (2, 152) and hist.sum() == 4
    assert metrics.auc_from_histogram(hist, [3, 1]) == pytest.approx(75.0)


def test_class_balance_weights_are_the_inverse_smoothed_prior():
    table = color.get_bin_table("zhang313")
    prior = np.zeros(table.size)
    prior[[0, 1, 150]] = [0.5, 0.3, 0.2]
    # Zhang et al. eq. 4, lambda = 0, written out per bin
    d2 = ((table.centres[:, None] - table.centres[None]) ** 2).sum(-1)
    smoothed = np.array(
        [
            sum(np.exp(-d2[q, j] / 50) * prior[j] for j in range(table.size))
            for q in range(table.size)
        ]
    )
    smoothed /= smoothed.sum()
    w = metrics.class_balance_weights(prior, table)
    seen = prior > 0
    np.testing.assert_allclose(w[seen], 1 / smoothed[seen], rtol=1e-9)
    # a bin never seen weighs at most as much as the rarest seen bin, and far ones that much
    assert w[~seen].max() == pytest.approx(w[seen].max()) and w.argmax() not in (0, 1, 150)
    assert w[150] > w[0]  # the rarer color weighs more
    for bad in (np.zeros(table.size), np.full(table.size, np.nan), -prior, prior[:10]):
        with pytest.raises(ValueError, match="prior"):
            metrics.class_balance_weights(bad, table)


def test_pooled_auc_interval_brackets_the_lead_and_narrows_with_more_photos():
    rng = np.random.default_rng(0)
    width = metrics.AUC_MAX_THRESHOLD + 2

    def photos(n, mean_err):  # counts by error: each photo's errors around its own level
        errs = rng.normal(mean_err, 8, (n, 1)).clip(0) + rng.exponential(6, (n, 200))
        return np.stack(
            [np.bincount(np.minimum(e.astype(int), width - 1), minlength=width) for e in errs]
        )

    model, gray = photos(100, 20), photos(100, 30)
    lead = metrics._auc_rows(model.sum(0, keepdims=True)) - metrics._auc_rows(
        gray.sum(0, keepdims=True)
    )
    low, high = metrics.pooled_auc_interval(model, gray)
    assert low < lead[0] < high and 0 < low  # model's errors are smaller: a clear lead
    assert metrics.pooled_auc_interval(model, gray) == (low, high)  # seeded
    low4, high4 = metrics.pooled_auc_interval(np.tile(model, (4, 1)), np.tile(gray, (4, 1)))
    assert 0.4 < (high4 - low4) / (high - low) < 0.6  # 4x the photos: about half as wide
    same = np.tile(model[:1], (50, 1))  # identical photos: every resample pools the same
    one = float((metrics._auc_rows(model[:1]) - metrics._auc_rows(gray[:1]))[0])
    got = metrics.pooled_auc_interval(same, np.tile(gray[:1], (50, 1)))
    assert got == pytest.approx((one, one))


def test_psnr_ssim():
    a = RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + RNG.integers(-9, 10, a.shape), 0, 255).astype(np.uint8)
    assert metrics.psnr(a, a) == metrics.PSNR_CAP
    assert metrics.psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255))
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    assert metrics.ssim(a, b) < 1.0
    assert metrics.ssim(a[:5, :4], a[:5, :4]) == pytest.approx(1.0)  # window shrinks to 3
    assert np.isnan(metrics.ssim(a[:2], a[:2]))


def test_colorfulness():
    gray = np.repeat(RNG.integers(0, 256, (8, 8, 1)), 3, -1)
    assert metrics.colorfulness(gray) == 0.0
    red_green = np.zeros((2, 2, 3))
    red_green[0, :, 0] = 255
    red_green[1, :, 1] = 255
    # rg = +-255 (mean 0, sd 255); yb = 127.5 everywhere (sd 0)
    assert metrics.colorfulness(red_green) == pytest.approx(255 + 0.3 * 127.5)
    moments = metrics._moments(*metrics._opponent(red_green[:1])) + metrics._moments(
        *metrics._opponent(red_green[1:])
    )
    assert metrics._colorfulness_from_moments(moments) == pytest.approx(255 + 0.3 * 127.5)


def test_top1_and_truth_bins():
    assert metrics.top1([1, 2, 3, 4], [1, 2, 0, 0]) == 50.0
    table = color.get_bin_table("zhang313")
    red = Image.new("RGB", (50, 30), (200, 30, 30))
    bins = metrics.truth_bins(red, 32, table)
    want = table.quantize(color.rgb_to_lab(np.array([200, 30, 30], np.uint8))[1:])
    assert bins.shape == (5, 8) and (bins == want).all()  # 50x30 kept at 32x20, not squashed


def test_evaluate_against_gray(model_path, tmp_path):
    Image.new("L", (20, 12), 90).save(tmp_path / "gray.png")
    Image.fromarray(RNG.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(tmp_path / "c.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    seen = []
    paths = sorted(tmp_path.iterdir())
    colorizer = infer.load_colorizer(model_path)
    report = evaluate.evaluate(paths, colorizer, 2, on_image=lambda p, e: seen.append(e))
    assert report["count"] == 1 and len(seen) == 3 and report["prior"] == "truth"
    assert report["failed"][0]["image"].endswith("bad.png")
    # a grayscale truth has no colors to score: listed as skipped, not in the means
    assert [s["image"] for s in report["skipped"]] == [str(tmp_path / "gray.png")]
    [rec] = report["images"]
    assert rec["image"].endswith("c.png") and (rec["width"], rec["height"]) == (40, 24)
    # both sides recomputed independently: the colorize code path, then metrics on arrays
    ph = photo.open_photo(tmp_path / "c.png")
    truth = np.asarray(photo.to_rgb8(ph))
    outputs = {
        "model": np.asarray(colorizer.colorize([ph])[0]),
        "gray": np.asarray(photo.compose(ph, np.zeros((1, 1, 2), np.float32))),
    }
    ab_true = color.rgb_to_lab(truth)[..., 1:]
    for k, out in outputs.items():
        assert rec[k]["auc"] == pytest.approx(metrics.auc(color.rgb_to_lab(out)[..., 1:], ab_true))
        assert rec[k]["psnr"] == pytest.approx(metrics.psnr(truth, out))
        assert rec[k]["colorfulness"] == pytest.approx(metrics.colorfulness(out), abs=1e-6)
        assert report["mean"][k]["auc"] == rec[k]["auc"]
    assert rec["truth_colorfulness"] == pytest.approx(metrics.colorfulness(truth))
    table = evaluate.format_table(report)
    assert "c.png" in table and "mean of 1" in table and "bin frequencies" in table
    assert "skipped 1 grayscale photo" in table
    evaluate.write_json(report, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["count"] == 1
    assert [f.name for f in tmp_path.glob(".*")] == []  # no temporary left


def test_evaluate_interval_is_the_pooled_aucs_over_resampled_photos():
    table = color.get_bin_table("zhang313")
    rng = np.random.default_rng(5)
    prior = rng.random(table.size) + 0.01
    width = metrics.AUC_MAX_THRESHOLD + 2
    dense = {"model": [], "gray": []}
    scored = []
    for i in range(6):  # photos: sparse histograms by (true bin, error), gray's errors larger
        hist = {}
        for k, shift in (("model", 0), ("gray", 20)):
            h = np.zeros((table.size, width), np.int64)
            cells = rng.integers(0, table.size, 50), rng.integers(0, 60, 50) + shift
            np.add.at(h, cells, rng.integers(1, 20, 50))
            dense[k].append(h)
            hist[k] = (np.flatnonzero(h), h.reshape(-1)[np.flatnonzero(h)])
        scored.append({"record": {"image": f"p{i}.png", "model": {}, "gray": {}}, "hist": hist})
    colorizer = types.SimpleNamespace(table=table, info={"prior": prior})
    interval = evaluate._rebalanced_aucs(scored, colorizer)[0]["interval"]
    # by hand: the same resamples (seed 0) pooled as histograms, scored by auc_from_histogram
    picks = np.random.default_rng(0).multinomial(6, np.full(6, 1 / 6), size=1000)
    w = metrics.class_balance_weights(prior, table)
    for name, weights in (("auc", None), ("auc_rebalanced", w)):
        diffs = [
            metrics.auc_from_histogram(np.tensordot(row, dense["model"], 1), weights)
            - metrics.auc_from_histogram(np.tensordot(row, dense["gray"], 1), weights)
            for row in picks
        ]
        assert interval[name] == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])))
    assert interval["auc"][0] > 0  # the model's errors are 20 smaller on every photo
    assert interval["unit"] == "photo" and interval["count"] == 6
    # grouped: photos 0-2 are crops of one source, 3-5 of another; the groups' summed
    # counts are what is resampled
    groups = {f"p{i}.png": "first" if i < 3 else "second" for i in range(6)}
    grouped = evaluate._rebalanced_aucs(scored, colorizer, groups)[0]["interval"]
    assert grouped["unit"] == "group" and grouped["count"] == 2
    picks = np.random.default_rng(0).multinomial(2, [0.5, 0.5], size=1000)
    summed = {k: [sum(v[:3]), sum(v[3:])] for k, v in dense.items()}
    diffs = [
        metrics.auc_from_histogram(np.tensordot(row, summed["model"], 1))
        - metrics.auc_from_histogram(np.tensordot(row, summed["gray"], 1))
        for row in picks
    ]
    assert grouped["auc"] == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])))


def test_read_groups_matches_path_endings(tmp_path):
    photos = [Path("/data/images/val/00000001.jpg"), Path("/data/images/val/00000002.jpg")]
    photos.append(Path("/data/other/00000001.jpg"))
    csv = tmp_path / "crops.csv"
    csv.write_text(
        "path,source_id,short_side\n"  # a header matches no photo: ignored
        "val/00000001.jpg,lake,300\nimages/val/00000002.jpg,lake,200\n"
        "train/a/00000009.jpg,cat,128\n00000001.jpg,loose\n\n"
    )
    got = evaluate.read_groups(csv, photos)
    assert got == {str(photos[0]): "lake", str(photos[1]): "lake", str(photos[2]): "loose"}
    csv.write_text("val/00000001.jpg,lake\nval/00000002.jpg\n")
    with pytest.raises(ValueError, match=r"crops.csv: line 2: expected photo,group"):
        evaluate.read_groups(csv, photos)
    csv.write_text("train/x.jpg,lake\n")
    with pytest.raises(ValueError, match=r"crops.csv: names none of the 3 photos"):
        evaluate.read_groups(csv, photos)


def test_evaluate_pools_all_pixels_and_uses_the_model_prior(tmp_path):
    table = color.get_bin_table("zhang313")
    rgb = np.array([200, 30, 30], np.uint8)
    ab_red = color.rgb_to_lab(rgb)[1:]
    red_bin, gray_bin = table.quantize(ab_red), table.quantize(np.zeros(2, np.float32))
    prior = np.full(table.size, 1e-3)
    prior[gray_bin] = 1.0  # red is rare
    model.build_model(width=0.0625, input_size=32, prior=prior).save(tmp_path / "m.keras")
    mostly_gray = np.full((12, 20, 3), 90, np.uint8)  # 237 gray pixels and 3 red ones
    mostly_gray[0, :3] = rgb  # (1.25% coloured: not a grayscale photo, which is skipped)
    Image.fromarray(mostly_gray).save(tmp_path / "a_gray.png")
    Image.new("RGB", (10, 10), tuple(int(v) for v in rgb)).save(tmp_path / "b_red.png")  # 100
    paths = sorted(tmp_path.glob("*.png"))
    report = evaluate.evaluate(paths, infer.load_colorizer(tmp_path / "m.keras"))
    assert report["prior"] == "model"
    # the gray baseline: exact on the gray pixels, off by |ab_red| on every red pixel
    a_red = metrics.auc(np.zeros((1, 2)), ab_red[None])
    a_first = (237 * 100 + 3 * a_red) / 240
    got = [r["gray"]["auc"] for r in report["images"]]
    assert got == pytest.approx([a_first, a_red], abs=0.05)
    assert report["mean"]["gray"]["auc"] == pytest.approx((a_first + a_red) / 2, abs=0.05)
    pooled = report["all_pixels"]["gray"]
    assert pooled["auc"] == pytest.approx((237 * 100 + 103 * a_red) / 340, abs=0.05)
    w = metrics.class_balance_weights(prior, table)
    want = (237 * w[gray_bin] * 100 + 103 * w[red_bin] * a_red) / (
        237 * w[gray_bin] + 103 * w[red_bin]
    )
    assert pooled["auc_rebalanced"] == pytest.approx(want, abs=0.05)
    assert pooled["auc_rebalanced"] < pooled["auc"] - 10  # the rare red pixels count
    iv = report["all_pixels"]["interval"]
    assert iv["level"] == 0.95 and iv["unit"] == "photo"
    for k in ("auc", "auc_rebalanced"):
        lead = report["all_pixels"]["model"][k] - pooled[k]
        assert iv[k][0] <= lead <= iv[k][1]
    assert "95% bootstrap intervals over the 2 photos" in evaluate.format_table(report)
    # the red photo carries most of the rebalanced weight; without it, the gray one's lead
    mass = {"a_gray.png": 237 * w[gray_bin] + 3 * w[red_bin], "b_red.png": 100 * w[red_bin]}
    for r in report["images"]:
        share = mass[Path(r["image"]).name] / sum(mass.values())
        assert r["rebalanced_weight_share"] == pytest.approx(share, rel=1e-6)
    top = report["all_pixels"]["heaviest"]
    assert Path(top["image"]).name == "b_red.png" and top["share"] > 0.5
    first = report["images"][0]
    assert top["auc_rebalanced_lead_without"] == pytest.approx(
        first["model"]["auc_rebalanced"] - first["gray"]["auc_rebalanced"]
    )
    assert "heaviest photo in AuC-rb: " in evaluate.format_table(report)
    row = next(
        ln for ln in evaluate.format_table(report).splitlines() if ln.startswith("all pixels")
    )
    cells = row.split()[2:]  # model and gray per column, the two AuCs first
    assert float(cells[1]) == pytest.approx(pooled["auc"], abs=0.05)
    assert float(cells[3]) == pytest.approx(pooled["auc_rebalanced"], abs=0.05)
    assert cells[4:] == ["-"] * 10  # the other metrics have no pooled figure


def test_evaluate_command(model_path, tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.png", "b.jpg", "sub/c.png"):
        Image.fromarray(RNG.integers(0, 256, (16, 24, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "colorized").mkdir()  # earlier colorize outputs are not truth
    Image.new("RGB", (8, 8)).save(tmp_path / "colorized" / "a.png")
    args = ["evaluate", str(tmp_path), "-r", "--model", str(model_path)]
    result = CliRunner().invoke(cli.main, [*args, "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    assert "mean of 3" in result.output and "AuC-rb" in result.output
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["count"] == 3 and report["model"] == str(model_path)
    assert not report["flip"] and not report["multiscale"]
    result = CliRunner().invoke(cli.main, [*args, "--limit", "1", "--flip", "--multiscale"])
    assert result.exit_code == 0 and "mean of 1" in result.output
    assert "flip (averaged with the mirror image), multiscale (averaged" in result.output
    groups = tmp_path / "groups.csv"
    groups.write_text("a.png,one\nb.jpg,one\n")  # c.png: a group of its own
    result = CliRunner().invoke(cli.main, [*args, "--groups", str(groups)])
    assert result.exit_code == 0, result.output
    assert "bootstrap intervals over 2 groups of the 3 photos" in result.output
    groups.write_text("a.png\n")
    result = CliRunner().invoke(cli.main, [*args, "--groups", str(groups)])
    assert result.exit_code == 1
    assert (
        result.output.strip().splitlines()[-1].endswith("groups.csv: line 1: expected photo,group")
    )
    (tmp_path / "z.png").write_bytes(b"")
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 1 and "z.png: not an image" in result.output


def test_fit_val_auc_is_the_evaluate_auc():
    """TensorBoard's val AuC (monitor.Evaluator) and `kcolor evaluate`'s are one definition."""
    import tensorflow as tf

    from kcolor import monitor

    table = color.get_bin_table("zhang313")
    i = int(table.quantize(np.array([0.0, 0.0], np.float32)))
    j = int(table.quantize(np.array([10.0, 10.0], np.float32)))  # a diagonal neighbour
    logits = np.full((2, 4, 4, table.size), -50.0, np.float32)
    logits[..., j] = 50.0  # decodes to bin j's centre

    def net(L, training=False):
        return tf.constant(logits)

    def loss_fn(bins, lg):
        return tf.zeros([tf.shape(bins)[0]])

    bins = np.full((2, 4, 4), i, np.int32)
    got = monitor.Evaluator(net, loss_fn, table)([(np.zeros((2, 16, 16, 1), np.float32), bins)])
    error = np.linalg.norm(table.centres[j] - table.centres[i])  # 14.14: between thresholds
    pred = np.zeros((32, 2), np.float32)
    pred[:, 0] = error
    want = metrics.auc(pred, np.zeros((32, 2), np.float32))
    assert got["auc"] == pytest.approx(want, abs=1e-6) and got["top1"] == 0.0
