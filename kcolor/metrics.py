"""Colorization metrics, and `kcolor evaluate`: the model against the grayscale baseline.

    kcolor evaluate val/ -r --limit 500 --model runs/a/model.keras --json eval.json

    >>> from kcolor import infer, metrics
    >>> report = metrics.evaluate(paths, infer.load_colorizer("runs/a/model.keras"))
    >>> print(metrics.format_table(report))

Each truth photo loses its color, is colorized by the code path of `kcolor colorize`
(in memory, at the truth's resolution) and is scored beside the grayscale baseline
(a = b = 0), since a model that does not beat gray has learnt nothing:
- AuC: area under the cumulative curve of per-pixel ab errors (fraction of pixels with
  L2 ab error <= t, t = 0..150), normalized to 100 % (Zhang et al. 2016, Sec. 3.1);
  "rebalanced" weights each pixel inversely by the probability of its true ab bin, as
  Zhang et al.'s Table 1 does: 1 / p~, p~ the prior smoothed as in their eq. 4 (lambda = 0).
  Each photo gets its own AuCs; the summary that compares with the paper pools the pixels
  of all photos ("all pixels"), reading the paper's "percentage of predicted pixel colors"
  as one over the whole test set. The mean of the photos' rebalanced AuCs is a different
  figure: each photo's weights are normalized over its own pixels, so a photo's few rarest
  pixels set its score. Pooled, the rare pixels weigh as much as ever, but against all the
  set's pixels: a few photos full of rare colors carry most of the weight.
- PSNR and SSIM on 8-bit RGB; colorfulness (Hasler & Suesstrunk 2003) and its distance
  to the truth's; top-1 accuracy of the argmax bin at the network's output resolution.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from kcolor import color, photo, rebalance

AUC_MAX_THRESHOLD = 150  # ab error thresholds 0..150 (Zhang et al. 2016, Sec. 3.1)
PSNR_CAP = 100.0  # dB reported for identical images (JSON has no infinity)
COLORFULNESS_MEAN_WEIGHT = 0.3  # Hasler & Suesstrunk 2003, eq. (3)
SSIM_WINDOW = 7  # skimage's default; shrunk (odd, >= 3) for smaller images
METRICS = ("auc", "auc_rebalanced", "psnr", "ssim", "colorfulness", "colorfulness_distance", "top1")

# --- metrics on arrays ------------------------------------------------------------------


def error_histogram(ab_pred, ab_true, bins=None, n_bins: int = 1) -> np.ndarray:
    """Pixel counts by ab error, the basis of AuC.

    Args:
        ab_pred, ab_true: (..., 2) float ab.
        bins: (...) int true bin of each pixel (None: all in bin 0); n_bins: Q.
    Returns:
        (n_bins, T + 2) int64, T = AUC_MAX_THRESHOLD: column k counts the pixels with
        error in (k - 1, k] (column 0: exactly 0; column T + 1: above T).
    """
    diff = np.asarray(ab_pred, np.float32) - np.asarray(ab_true, np.float32)
    err = np.sqrt((diff**2).sum(-1)).reshape(-1)
    k = np.minimum(np.ceil(err), AUC_MAX_THRESHOLD + 1).astype(np.int64)
    width = AUC_MAX_THRESHOLD + 2
    key = k if bins is None else np.asarray(bins, np.int64).reshape(-1) * width + k
    return np.bincount(key, minlength=n_bins * width).reshape(n_bins, width)


def auc_from_histogram(hist: np.ndarray, bin_weights=None) -> float:
    """AuC in % from an `error_histogram`, each bin's pixels weighted by bin_weights (Q,)."""
    hist = np.asarray(hist, np.float64)
    if bin_weights is not None:
        hist = hist * np.asarray(bin_weights, np.float64)[:, None]
    per_t = hist.sum(0)
    if per_t.sum() <= 0:
        return float("nan")
    curve = np.cumsum(per_t)[: AUC_MAX_THRESHOLD + 1] / per_t.sum()  # fraction <= t
    area = (curve[:-1] + curve[1:]).sum() / 2  # trapezoids of width 1
    return float(100.0 * area / AUC_MAX_THRESHOLD)


def auc(ab_pred, ab_true, weights=None) -> float:
    """AuC in % of per-pixel L2 ab errors; weights: (...) per-pixel weights or None.

    A constant error d gives (150 - d) / 150 within 0.5 / 150 (exactly for d = k + 1/2):
    the curve is sampled at integer t and integrated with trapezoids.
    """
    if weights is None:
        return auc_from_histogram(error_histogram(ab_pred, ab_true))
    w = np.asarray(weights, np.float64).reshape(-1)
    return auc_from_histogram(error_histogram(ab_pred, ab_true, np.arange(w.size), w.size), w)


def class_balance_weights(prior, table: color.BinTable) -> np.ndarray:
    """(Q,) weights of the rebalanced AuC: 1 / p~, p~ = `rebalance.smoothed_prior(prior)`.

    This is Zhang et al.'s eq. 4 with lambda = 0, as their Table 1 specifies. A bin that
    the prior never saw gets at most the weight of the rarest bin it saw: smoothing leaves
    such a bin only the tails of distant colors' Gaussians (or 0), and 1 / that would let
    one stray pixel outweigh a whole photo set. (Their ImageNet prior saw every bin.)
    """
    p = np.asarray(prior, np.float64)
    if p.shape != (table.size,) or not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"prior: expected {table.size} non-negative values, not all zero")
    smoothed = rebalance.smoothed_prior(p, table)
    return 1.0 / np.maximum(smoothed, smoothed[p > 0].min())


def psnr(truth, pred) -> float:
    """PSNR in dB of 8-bit images (as skimage.metrics.peak_signal_noise_ratio with
    data_range=255), PSNR_CAP when they are identical."""
    return _psnr(np.mean((np.asarray(truth, np.float64) - np.asarray(pred, np.float64)) ** 2))


def _psnr(mse: float) -> float:
    return PSNR_CAP if mse == 0 else float(min(PSNR_CAP, 10 * math.log10(255.0**2 / mse)))


def ssim(truth, pred) -> float:
    """SSIM of 8-bit (H, W, 3) images (skimage.metrics); NaN when a side is under 3."""
    from skimage.metrics import structural_similarity

    side = min(np.shape(truth)[:2])
    if side < 3:
        return float("nan")
    win = min(SSIM_WINDOW, side if side % 2 else side - 1)
    return float(structural_similarity(truth, pred, win_size=win, channel_axis=-1, data_range=255))


def _opponent(rgb) -> tuple[np.ndarray, np.ndarray]:
    rgb = np.asarray(rgb, np.float32)
    return rgb[..., 0] - rgb[..., 1], 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]


def colorfulness(rgb) -> float:
    """Hasler & Suesstrunk (2003) colorfulness of (..., 3) 0..255 RGB; 0 for gray.

    sqrt(sd_rg^2 + sd_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2), rg = R - G,
    yb = (R + G) / 2 - B.
    """
    rg, yb = _opponent(rgb)
    return _colorfulness_from_moments(_moments(rg, yb))


def _moments(rg, yb) -> np.ndarray:
    """n, sums and sums of squares of rg and yb: (5,) float64, summable over strips."""
    rg, yb = rg.astype(np.float64), yb.astype(np.float64)
    return np.array([rg.size, rg.sum(), yb.sum(), (rg**2).sum(), (yb**2).sum()])


def _colorfulness_from_moments(m) -> float:
    n, s_rg, s_yb, q_rg, q_yb = m
    mu_rg, mu_yb = s_rg / n, s_yb / n
    var = max(0.0, q_rg / n - mu_rg**2) + max(0.0, q_yb / n - mu_yb**2)
    return float(math.sqrt(var) + COLORFULNESS_MEAN_WEIGHT * math.hypot(mu_rg, mu_yb))


def top1(pred_bins, true_bins) -> float:
    """% of pixels whose predicted bin is the true bin."""
    return float(100.0 * np.mean(np.asarray(pred_bins) == np.asarray(true_bins)))


def truth_bins(truth: Image.Image, side: int, table: color.BinTable) -> np.ndarray:
    """The truth's ab bins at the network's output resolution: RGB resized to the net's
    input side, then subsampled as the training targets (kcolor.loss.subsample_bins).
    Returns (side/4, side/4) int32."""
    from kcolor.loss import subsample_bins

    small = np.asarray(truth.convert("RGB").resize((side, side), Image.BILINEAR))
    return subsample_bins(table.quantize(color.rgb_to_lab(small)[..., 1:])[None])[0]


# --- evaluate ---------------------------------------------------------------------------


def _score(ph: photo.Photo, ab_low, pred_bins, colorizer, workers: int) -> tuple[dict, dict]:
    """Metrics of one photo (all but the rebalanced AuC) and its error histograms."""
    ph = photo.Photo(ph.image)  # alpha plays no part
    table = colorizer.table
    truth = np.asarray(photo.to_rgb8(ph))
    preds = {
        "model": np.asarray(photo.compose(ph, ab_low, workers)),
        "gray": np.asarray(photo.compose(ph, np.zeros((1, 1, 2), np.float32))),
    }
    height, width = truth.shape[:2]
    hist = {k: np.zeros((table.size, AUC_MAX_THRESHOLD + 2), np.int64) for k in preds}
    moments = {k: np.zeros(5) for k in (*preds, "truth")}
    sse = dict.fromkeys(preds, 0.0)
    for r0, r1 in photo.row_strips(height, width):  # bounded float temporaries
        t = truth[r0:r1]
        ab_true = color.rgb_to_lab(t)[..., 1:]
        bins = table.quantize(ab_true)
        moments["truth"] += _moments(*_opponent(t))
        for k, pred in preds.items():
            p = pred[r0:r1]
            hist[k] += error_histogram(color.rgb_to_lab(p)[..., 1:], ab_true, bins, table.size)
            moments[k] += _moments(*_opponent(p))
            sse[k] += float(((p.astype(np.int32) - t) ** 2).sum())
    tb = truth_bins(Image.fromarray(truth), colorizer.side, table)
    gray_bin = table.quantize(np.zeros(2, np.float32))
    top = {"model": top1(pred_bins, tb), "gray": top1(np.full_like(tb, gray_bin), tb)}
    c_truth = _colorfulness_from_moments(moments["truth"])
    record = {"image": None, "width": width, "height": height, "truth_colorfulness": c_truth}
    for k, pred in preds.items():
        c = _colorfulness_from_moments(moments[k])
        record[k] = {
            "auc": auc_from_histogram(hist[k]),
            "auc_rebalanced": None,  # needs the prior: set by `evaluate`
            "psnr": _psnr(sse[k] / truth.size),
            "ssim": ssim(truth, pred),
            "colorfulness": c,
            "colorfulness_distance": abs(c - c_truth),
            "top1": top[k],
        }
    sparse = {k: (np.flatnonzero(h), h.reshape(-1)[np.flatnonzero(h)]) for k, h in hist.items()}
    return record, sparse


def _nanmean(values) -> float | None:
    v = np.array([np.nan if x is None else x for x in values], np.float64)
    return None if np.isnan(v).all() else float(np.nanmean(v))


def evaluate(
    paths: list[Path],
    colorizer,
    batch_size: int = 8,
    workers: int | None = None,
    on_image: Callable[[Path, str | None], None] | None = None,
) -> dict:
    """Colorize the truth photos from their lightness and score them beside gray.

    Args:
        paths: truth photo files (color).
        colorizer: a `kcolor.infer.Colorizer`.
        on_image: called with (path, None or the one-line problem) after each photo.
    Returns:
        report: {"images": [per-photo record], "mean": {...}, "all_pixels": {...},
        "failed": [...], "prior": "model" or "truth", ...}; each record, and "mean" (of the
        records), has "model" and "gray" dicts of METRICS (AuC, top-1 in %), and records
        also "truth_colorfulness", "image", "width", "height". "all_pixels" has "model"
        and "gray" dicts of "auc" and "auc_rebalanced" over the pooled pixels of all
        photos (Zhang et al.'s Table 1 figures).
    """
    workers = workers or os.cpu_count() or 1
    table = colorizer.table
    records, hists, failed = [], [], []

    def fail(path, exc):
        failed.append({"image": str(path), "error": photo.describe_error(exc)})
        if on_image:
            on_image(path, failed[-1]["error"])

    def load(path):
        ph = photo.open_photo(path)
        return ph, photo.net_lightness(ph, colorizer.side)

    with ThreadPoolExecutor(workers) as pool:
        for i in range(0, len(paths), batch_size):
            chunk = [(p, pool.submit(load, p)) for p in paths[i : i + batch_size]]
            loaded = []
            for path, fut in chunk:
                try:
                    loaded.append((path, *fut.result()))
                except Exception as e:  # one bad photo must not stop the evaluation
                    fail(path, e)
            if not loaded:
                continue
            ab, bins = colorizer.predict(np.stack([small for _, _, small in loaded]))
            per = max(1, workers // len(loaded))
            scores = [
                (path, pool.submit(_score, ph, a, b, colorizer, per))
                for (path, ph, _), a, b in zip(loaded, ab, bins, strict=True)
            ]
            for path, fut in scores:
                try:
                    record, sparse = fut.result()
                except Exception as e:
                    fail(path, e)
                    continue
                record["image"] = str(path)
                records.append(record)
                hists.append(sparse)
                if on_image:
                    on_image(path, None)

    # Rebalanced AuC: pixels weighted by 1 / smoothed prior of their true bin (Zhang et al.).
    prior, source = colorizer.info.get("prior"), "model"
    if prior is None or len(prior) != table.size:
        counts = np.zeros(table.size * (AUC_MAX_THRESHOLD + 2), np.int64)
        for sparse in hists:
            np.add.at(counts, *sparse["gray"])
        prior, source = counts.reshape(table.size, -1).sum(1), "truth"
    weights = class_balance_weights(prior, table) if records else None
    pooled = {k: np.zeros((table.size, AUC_MAX_THRESHOLD + 2), np.int64) for k in ("model", "gray")}
    for record, sparse in zip(records, hists, strict=True):
        for k, (idx, cnt) in sparse.items():
            dense = np.zeros(table.size * (AUC_MAX_THRESHOLD + 2), np.int64)
            dense[idx] = cnt
            dense = dense.reshape(table.size, -1)
            pooled[k] += dense
            record[k]["auc_rebalanced"] = auc_from_histogram(dense, weights)
    mean = {k: {m: _nanmean(r[k][m] for r in records) for m in METRICS} for k in ("model", "gray")}
    all_pixels = {
        k: {"auc": auc_from_histogram(h), "auc_rebalanced": auc_from_histogram(h, weights)}
        for k, h in pooled.items()
    }
    mean["truth_colorfulness"] = _nanmean(r["truth_colorfulness"] for r in records)
    return {
        "count": len(records),
        "bin_table": table.name,
        "input_size": colorizer.side,
        "decode": colorizer.decode,
        "temperature": colorizer.temperature,
        "rebalance_strength": colorizer.rebalance_strength,
        "prior": source,
        "mean": mean,
        "all_pixels": all_pixels,
        "images": records,
        "failed": failed,
    }


def _clean(x):
    """NaN -> None, numpy scalars -> Python, for strict JSON."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, float | np.floating):
        return None if math.isnan(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_json(report: dict, path: str | os.PathLike) -> None:
    """Write the report as JSON atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(_clean(report), indent=2, allow_nan=False) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_COLUMNS = (
    ("auc", "AuC %", 1),
    ("auc_rebalanced", "AuC-rb %", 1),
    ("psnr", "PSNR dB", 2),
    ("ssim", "SSIM", 3),
    ("colorfulness", "colorful", 1),
    ("colorfulness_distance", "|dC|", 1),
    ("top1", "top-1 %", 1),
)


def format_table(report: dict) -> str:
    """The report as a text table: one row per photo and the mean, model / gray per metric."""

    def cell(v, digits):
        return f"{'-' if v is None or v != v else f'{v:.{digits}f}':>6}"

    def short(name):
        return name if len(name) <= 40 else "..." + name[-37:]

    name_w = max([24] + [len(short(r["image"])) for r in report["images"]])
    head1 = " " * name_w + "".join(f"  {title:^13}" for _, title, _ in _COLUMNS)
    head2 = f"{'image':<{name_w}}" + "  model   gray" * len(_COLUMNS)
    lines = [head1, head2]

    def row(name, rec):
        cells = "".join(
            f"  {cell(rec['model'][k], d)} {cell(rec['gray'][k], d)}" for k, _, d in _COLUMNS
        )
        return f"{name:<{name_w}}{cells}"

    lines += [row(short(r["image"]), r) for r in report["images"]]
    if report["images"]:
        lines.append(row(f"mean of {report['count']}", report["mean"]))
        if report.get("all_pixels"):
            auc_only = {k: dict.fromkeys(METRICS) | v for k, v in report["all_pixels"].items()}
            lines.append(row("all pixels", auc_only))
        c = report["mean"]["truth_colorfulness"]
        prior = {
            "model": "the model's training prior",
            "truth": "the bin frequencies of these truth photos (the model has no prior)",
        }
        lines.append(f"truth colorfulness (mean): {c:.1f}")
        if report.get("decode"):
            how = (
                "argmax"
                if report["decode"] == "argmax"
                else f"annealed mean, T = {report['temperature']:g}"
            )
            strength = report.get("rebalance_strength")
            rebal = "as trained" if strength is None else f"{strength:g}"
            lines.append(f"decoding: {how}, rebalance strength {rebal}")
        lines.append(
            "AuC-rb weights pixels by 1 / prior of their true bin (smoothed as in Zhang et al.); "
            f"prior: {prior[report['prior']]}"
        )
        lines.append("all pixels: AuCs over the pooled pixels of all photos, as in Zhang et al.")
    return "\n".join(lines)
