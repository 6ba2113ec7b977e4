"""`kcolor evaluate`: the model against the grayscale baseline, on color photos.

    kcolor evaluate val/ -r --limit 500 --model runs/a/model.keras --json eval.json

    >>> from kcolor import evaluate, infer
    >>> report = evaluate.evaluate(paths, infer.load_colorizer("runs/a/model.keras"))
    >>> print(evaluate.format_table(report))

Each truth photo loses its color, is colorized by the code path of `kcolor colorize`
(kcolor.infer.run_photos, in memory, at the truth's resolution) and is scored beside the
grayscale baseline (a = b = 0), since a model that does not beat gray has learnt nothing.
The metrics themselves are kcolor.metrics's. Grayscale truth photos have no colors to
score against: they are skipped and listed, not averaged in.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from kcolor import infer, metrics, photo
from kcolor.metrics import AUC_MAX_THRESHOLD, METRICS

SKIPPED_GRAY = "grayscale photo: no colors to score against (skipped)"
# the pooled AuCs' lead over gray gets a bootstrap interval holding this central fraction
INTERVAL_LEVEL = 0.95


def _score(path, ph: photo.Photo, ab_low, pred_bins, workers: int, colorizer) -> dict | None:
    """One photo's record (all but the rebalanced AuC) and its sparse error histograms,
    or None for a grayscale truth."""
    ph = photo.Photo(ph.image)  # alpha plays no part
    table = colorizer.table
    if not photo.has_color(ph):
        return None
    truth = np.asarray(photo.to_rgb8(ph))
    preds = {
        "model": np.asarray(photo.compose(ph, ab_low, workers)),
        "gray": np.asarray(photo.compose(ph, np.zeros((1, 1, 2), np.float32))),
    }
    scores, hist = metrics.score_rgb8(truth, preds, table)
    side = pred_bins.shape[0] * photo.OUTPUT_STRIDE  # the side this photo ran at
    tb = metrics.truth_bins(Image.fromarray(truth), side, table)
    gray_bin = table.quantize(np.zeros(2, np.float32))
    top = {"model": pred_bins[: tb.shape[0], : tb.shape[1]], "gray": np.full_like(tb, gray_bin)}
    height, width = truth.shape[:2]
    record = {"image": str(path), "width": width, "height": height}
    record["truth_colorfulness"] = scores["truth_colorfulness"]
    for k in preds:
        record[k] = scores[k] | {"auc_rebalanced": None, "top1": metrics.top1(top[k], tb)}
    sparse = {k: (np.flatnonzero(h), h.reshape(-1)[np.flatnonzero(h)]) for k, h in hist.items()}
    return {"record": record, "hist": sparse}


def _nanmean(values) -> float | None:
    v = np.array([np.nan if x is None else x for x in values], np.float64)
    return None if np.isnan(v).all() else float(np.nanmean(v))


def evaluate(
    paths: list[Path],
    colorizer,
    batch_size: int = 8,
    workers: int | None = None,
    on_image: Callable[[Path, str | None], None] | None = None,
    groups: dict[str, str] | None = None,
) -> dict:
    """Colorize the truth photos from their lightness and score them beside gray.

    Args:
        paths: truth photo files (color).
        colorizer: a `kcolor.infer.Colorizer`.
        on_image: called with (path, None or the one-line problem) after each photo.
        groups: str(path) -> group (`read_groups`): the bootstrap interval resamples the
            groups (e.g. the source photo of several crops), not the photos; a photo
            not listed is a group of its own.
    Returns:
        report: {"images": [per-photo record], "mean": {...}, "all_pixels": {...},
        "failed": [...], "skipped": [...], "prior": "model" or "truth", ...}; each record,
        and "mean" (of the records), has "model" and "gray" dicts of METRICS (AuC, top-1
        in %), and records also "truth_colorfulness", "image", "width", "height".
        "all_pixels" has "model" and "gray" dicts of "auc" and "auc_rebalanced" over the
        pooled pixels of all photos (Zhang et al.'s Table 1 figures) and, for 2+ photos,
        "interval": {"auc": (low, high), "auc_rebalanced": (low, high), "level": 0.95,
        "unit": "photo" or "group", "count": how many were resampled}, a bootstrap
        interval of model - gray resampling the photos or their groups
        (`metrics.pooled_auc_interval`), and "heaviest": {"image", "share",
        "auc_rebalanced_lead_without"}, the photo that carries the largest share of the
        pooled AuC-rb's pixel weight and that AuC's model - gray without it. Each record
        has its "rebalanced_weight_share" (a fraction).
    """
    scored, skipped = [], []

    def done(path, problem, result):
        if result is not None:
            scored.append(result)
        elif problem is None:
            skipped.append({"image": str(path), "reason": SKIPPED_GRAY})
        if on_image:
            on_image(path, problem)

    def finish(path, ph, ab_low, bins, strip_workers):
        return _score(path, ph, ab_low, bins, strip_workers, colorizer)

    failed = infer.run_photos(
        list(paths), colorizer, finish, batch_size=batch_size, workers=workers, on_result=done
    )
    order = {str(p): i for i, p in enumerate(paths)}
    scored.sort(key=lambda s: order[s["record"]["image"]])
    records = [s["record"] for s in scored]
    all_pixels, source = _rebalanced_aucs(scored, colorizer, groups)
    mean = {k: {m: _nanmean(r[k][m] for r in records) for m in METRICS} for k in ("model", "gray")}
    mean["truth_colorfulness"] = _nanmean(r["truth_colorfulness"] for r in records)
    return {
        "count": len(records),
        "bin_table": colorizer.table.name,
        "input_size": colorizer.side,  # the largest: a smaller photo ran at its own side
        "decode": colorizer.decode,
        "temperature": colorizer.temperature,
        "rebalance_strength": colorizer.rebalance_strength,
        "flip": colorizer.flip,
        "multiscale": colorizer.multiscale,
        "prior": source,
        "mean": mean,
        "all_pixels": all_pixels,
        "images": records,
        "failed": [{"image": str(p), "error": why} for p, why in failed],
        "skipped": skipped,
    }


def _rebalanced_aucs(
    scored: list[dict], colorizer, groups: dict[str, str] | None = None
) -> tuple[dict, str]:
    """Fill each record's rebalanced AuCs; the pooled ("all pixels") AuCs; the prior used.

    Pixels weigh 1 / the smoothed prior of their true bin (Zhang et al.); the prior is
    the model's training prior, or these photos' bin frequencies when it records none.
    The bootstrap interval resamples `groups` of photos (str(path) -> group) where given.
    """
    table = colorizer.table
    width = AUC_MAX_THRESHOLD + 2
    prior, source = colorizer.info.get("prior"), "model"
    if prior is None or len(prior) != table.size:
        counts = np.zeros(table.size * width, np.int64)
        for s in scored:
            np.add.at(counts, *s["hist"]["gray"])
        prior, source = counts.reshape(table.size, -1).sum(1), "truth"
    weights = metrics.class_balance_weights(prior, table) if scored else None
    pooled = {k: np.zeros((table.size, width), np.int64) for k in ("model", "gray")}
    # each photo's counts by error, plain and weighted: what the bootstrap resamples
    per_photo = {(k, w): np.zeros((len(scored), width)) for k in pooled for w in (0, 1)}
    for i, s in enumerate(scored):
        for k, (idx, cnt) in s["hist"].items():
            dense = np.zeros(table.size * width, np.int64)
            dense[idx] = cnt
            dense = dense.reshape(table.size, -1)
            pooled[k] += dense
            per_photo[k, 0][i] = dense.sum(0)
            per_photo[k, 1][i] = weighted = (dense * weights[:, None]).sum(0)
            s["record"][k]["auc_rebalanced"] = metrics.auc_from_histogram(weighted[None])
    all_pixels = {
        k: {
            "auc": metrics.auc_from_histogram(h),
            "auc_rebalanced": metrics.auc_from_histogram(h, weights),
        }
        for k, h in pooled.items()
    }
    # each photo's share of the pooled AuC-rb's weight (the same truth for model and gray):
    # a few photos full of rare colors can carry most of it, so the report names the
    # heaviest and gives the pooled lead without it
    mass = per_photo["gray", 1].sum(1)
    share = mass / mass.sum() if scored else mass  # every scored photo has pixels
    for item, f in zip(scored, share, strict=True):
        item["record"]["rebalanced_weight_share"] = float(f)
    if len(scored) >= 2:
        top = int(np.argmax(mass))
        rest = {k: per_photo[k, 1].sum(0) - per_photo[k, 1][top] for k in pooled}
        all_pixels["heaviest"] = {
            "image": scored[top]["record"]["image"],
            "share": float(share[top]),
            "auc_rebalanced_lead_without": metrics.auc_from_histogram(rest["model"][None])
            - metrics.auc_from_histogram(rest["gray"][None]),
        }
        # photos of one group (crops of one source photo) are not independent: the
        # bootstrap resamples the groups, each the sum of its photos' counts
        names = [s["record"]["image"] for s in scored]
        labels = [groups.get(name, name) if groups else name for name in names]
        _, unit = np.unique(labels, return_inverse=True)
        summed = {}
        for key, rows in per_photo.items():
            summed[key] = np.zeros((unit.max() + 1, width))
            np.add.at(summed[key], unit, rows)
        grouped = len(summed["gray", 0]) < len(scored)
        all_pixels["interval"] = {
            "level": INTERVAL_LEVEL,
            "unit": "group" if grouped else "photo",
            "count": len(summed["gray", 0]),
        } | {
            name: metrics.pooled_auc_interval(summed["model", w], summed["gray", w], INTERVAL_LEVEL)
            for name, w in (("auc", 0), ("auc_rebalanced", 1))
        }
    return all_pixels, source


def read_groups(path: str | os.PathLike, photos: list[Path]) -> dict[str, str]:
    """The group of each of `photos` from a CSV file of `photo,group` rows.

    A row's photo is a path that matches the trailing components of a photo's path
    (`val/00000001.jpg` matches `.../images/val/00000001.jpg`; the longest match wins);
    other columns, and rows that match none of the photos (a header, photos not being
    evaluated), are ignored. Returns str(photo) -> group for the photos listed.
    Raises ValueError naming the file and the problem.
    """
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        why = getattr(e, "strerror", None) or e
        raise ValueError(f"{path}: cannot read the groups ({why})") from None
    table = {}
    for line, row in enumerate(rows, 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise ValueError(f"{path}: line {line}: expected photo,group")
        table[Path(row[0].strip()).parts] = row[1].strip()
    found = {}
    for p in photos:
        parts = Path(p).parts
        for start in range(len(parts)):  # the longest trailing match first
            if parts[start:] in table:
                found[str(p)] = table[parts[start:]]
                break
    if photos and not found:
        raise ValueError(f"{path}: names none of the {len(photos)} photos evaluated")
    return found


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
    photo.atomic_write(Path(path), lambda tmp: tmp.write_text(_json(report)))


def _json(report: dict) -> str:
    return json.dumps(_clean(report), indent=2, allow_nan=False) + "\n"


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
        pooled = report.get("all_pixels")
        if pooled:
            auc_only = {k: dict.fromkeys(METRICS) | pooled[k] for k in ("model", "gray")}
            lines.append(row("all pixels", auc_only))
        c = report["mean"]["truth_colorfulness"]
        prior = {
            "model": "the model's training prior",
            "truth": "the bin frequencies of these truth photos (the model has no prior)",
        }
        lines.append(f"truth colorfulness (mean): {c:.1f}")
        if report.get("skipped"):
            lines.append(f"skipped {len(report['skipped'])} grayscale photo(s)")
        if report.get("decode"):
            how = (
                "argmax"
                if report["decode"] == "argmax"
                else f"annealed mean, T = {report['temperature']:g}"
            )
            strength = report.get("rebalance_strength")
            rebal = "as trained" if strength is None else f"{strength:g}"
            averaged = ", flip (averaged with the mirror image)" if report.get("flip") else ""
            if report.get("multiscale"):
                averaged += ", multiscale (averaged with the output at the training side)"
            lines.append(f"decoding: {how}, rebalance strength {rebal}{averaged}")
        lines.append(
            "AuC-rb weights pixels by 1 / prior of their true bin (smoothed as in Zhang et al.); "
            f"prior: {prior[report['prior']]}"
        )
        lines.append("all pixels: AuCs over the pooled pixels of all photos, as in Zhang et al.")
        if pooled and pooled.get("interval"):
            iv = pooled["interval"]
            lead = [
                f"{title} {pooled['model'][k] - pooled['gray'][k]:+.2f} "
                f"({iv[k][0]:+.2f} to {iv[k][1]:+.2f})"
                for k, title in (("auc", "AuC"), ("auc_rebalanced", "AuC-rb"))
            ]
            over = (
                f"over {iv['count']} groups of the {report['count']} photos"
                if iv.get("unit") == "group"
                else f"over the {report['count']} photos (too narrow if some are crops of one "
                "photo: see --groups)"
            )
            lines.append(
                f"all pixels, model - gray: {', '.join(lead)}: {100 * iv['level']:g}% bootstrap "
                f"intervals {over}"
            )
        top = pooled.get("heaviest") if pooled else None
        if top:
            lines.append(
                f"heaviest photo in AuC-rb: {top['image']} carries {100 * top['share']:.0f}% of "
                f"the pooled weight; without it, model - gray AuC-rb "
                f"{top['auc_rebalanced_lead_without']:+.2f}"
            )
    return "\n".join(lines)
