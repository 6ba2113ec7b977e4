"""Colorization metrics: pure functions of arrays, used by `kcolor evaluate`
(kcolor.evaluate) and by the val figures of `kcolor fit` (kcolor.monitor).

    >>> from kcolor import metrics
    >>> metrics.auc(ab_pred, ab_true)                    # % , thresholds 0..150
    >>> metrics.auc_from_histogram(hist, weights)        # the same from error counts

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

import math

import numpy as np
from PIL import Image

from kcolor import color, rebalance

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
    return float(_auc_rows(per_t[None])[0])


def pooled_auc_interval(
    model: np.ndarray, gray: np.ndarray, level: float = 0.95, draws: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap interval of the pooled AuC difference model - gray, resampling photos.

    Args:
        model, gray: (N, T + 2) per photo: its (weighted) pixel counts by error, the
            column sums of its `error_histogram` (times the bin weights for AuC-rb). A
            row may also be a group of photos (their sums): the rows are resampled.
        level: the central fraction of the resampled differences the interval holds.
    Returns:
        (low, high) in AuC points. It assumes the rows are independent, so for several
        crops of one photo in rows of their own it is too narrow: sum them into one row.
        Seeded: the same rows give the same interval.
    """
    n = len(model)
    picks = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=draws)
    diff = _auc_rows(picks @ model) - _auc_rows(picks @ gray)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(diff, [tail, 100 - tail])
    return float(low), float(high)


def _auc_rows(per_t: np.ndarray) -> np.ndarray:
    """AuC in % of each row of (B, T + 2) counts by error (rows with pixels)."""
    curve = np.cumsum(per_t, 1)[:, : AUC_MAX_THRESHOLD + 1] / per_t.sum(1, keepdims=True)
    area = (curve[:, :-1] + curve[:, 1:]).sum(1) / 2  # trapezoids of width 1, up to T
    return 100.0 * area / AUC_MAX_THRESHOLD


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
    """The truth's ab bins at the network's output resolution: RGB resized as its
    lightness is for the network (kcolor.photo.fit_in_square, aspect kept), then
    subsampled as the training targets (kcolor.loss.subsample_bins).
    Returns (h/4, w/4) int32, (h, w) the photo's size inside the side x side input."""
    from kcolor.loss import subsample_bins
    from kcolor.photo import fit_in_square

    small = np.asarray(
        truth.convert("RGB").resize(fit_in_square(*truth.size, side), Image.BILINEAR)
    )
    return subsample_bins(table.quantize(color.rgb_to_lab(small)[..., 1:])[None])[0]


def score_rgb8(truth: np.ndarray, preds: dict, table: color.BinTable) -> tuple[dict, dict]:
    """Metrics of colorizations of one photo against its truth.

    Args:
        truth: (H, W, 3) uint8 RGB; preds: {name: (H, W, 3) uint8 RGB}.
    Returns:
        ({name: {"auc", "psnr", "ssim", "colorfulness", "colorfulness_distance"}} plus
        "truth_colorfulness", {name: (Q, T + 2) error_histogram by true bin}). Works in
        row strips, so the float temporaries stay bounded for any photo size.
    """
    from kcolor.photo import row_strips

    height, width = truth.shape[:2]
    hist = {k: np.zeros((table.size, AUC_MAX_THRESHOLD + 2), np.int64) for k in preds}
    moments = {k: np.zeros(5) for k in (*preds, "truth")}
    sse = dict.fromkeys(preds, 0.0)
    for r0, r1 in row_strips(height, width):
        t = truth[r0:r1]
        ab_true = color.rgb_to_lab(t)[..., 1:]
        bins = table.quantize(ab_true)
        moments["truth"] += _moments(*_opponent(t))
        for k, pred in preds.items():
            p = pred[r0:r1]
            hist[k] += error_histogram(color.rgb_to_lab(p)[..., 1:], ab_true, bins, table.size)
            moments[k] += _moments(*_opponent(p))
            sse[k] += float(((p.astype(np.int32) - t) ** 2).sum())
    c_truth = _colorfulness_from_moments(moments["truth"])
    scores = {"truth_colorfulness": c_truth}
    for k, pred in preds.items():
        c = _colorfulness_from_moments(moments[k])
        scores[k] = {
            "auc": auc_from_histogram(hist[k]),
            "psnr": _psnr(sse[k] / truth.size),
            "ssim": ssim(truth, pred),
            "colorfulness": c,
            "colorfulness_distance": abs(c - c_truth),
        }
    return scores, hist
