"""The `kcolor` commands that use a trained model: colorize, evaluate, decoding, export
(`kcolor serve` is in kcolor.cli).

    kcolor colorize old_photos/ -o colorized/
    kcolor evaluate val/ -r --json eval.json
    kcolor export --format tflite -o kcolor.tflite

Registered on the `kcolor` group by kcolor.cli; like it, a thin click shell that imports
the library lazily (TensorFlow takes seconds to import).
"""

from __future__ import annotations

from pathlib import Path

import click

from kcolor.config import EXPORT_FORMATS, EXPORT_OUTPUTS, PRECISIONS
from kcolor.photo import READ_SUFFIXES
from kcolor.video import SMOOTHING, VIDEO_SUFFIXES


def precision_option(**kwargs):
    return click.option(
        "--precision",
        type=click.Choice(PRECISIONS),
        help="Arithmetic: auto = bf16 where it runs faster (a GPU, or a CPU with bfloat16 "
        "instructions for eccv16), else fp32. Models are stored in fp32 either way.",
        **kwargs,
    )


# --- colorize -------------------------------------------------------------------

MODEL_HELP = "A .keras file (or run folder) from `kcolor fit`.  [default: the bundled model]"
_SIZE_HELP = "Side the lightness is resized to for the network, rounded to a multiple of 8; a smaller photo runs at its own size.  [default: the model's input size]"


_MULTISCALE_HELP = (
    "A photo that runs larger than the model's training side also runs at that side; the "
    "two outputs are averaged (about 1.3x the work at side 224 for a 128 px model)."
)


def _network_options(f):
    """--model, --size, --decode, --temperature, --rebalance-strength, --flip,
    --multiscale and --batch-size (colorize and evaluate)."""
    f = click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=8,
        show_default=True,
        help="Photos (or video frames) per network batch.",
    )(f)
    f = click.option(
        "--temperature",
        type=click.FloatRange(min=0, min_open=True),
        help="Annealed-mean temperature.  [default: the model's; 0.38, the paper's, unless `kcolor decoding` set another]",
    )(f)
    f = click.option(
        "--rebalance-strength",
        type=click.FloatRange(0, 2),
        help="Class rebalancing applied when decoding: 0 = none (accurate but dull), "
        "1 = Zhang's (vivid, the paper's), between trades the two.  [default: the model's]",
    )(f)
    f = click.option(
        "--decode",
        type=click.Choice(["annealed", "argmax"]),
        default="annealed",
        show_default=True,
        help="ab from the bin distribution: annealed mean or top bin.",
    )(f)
    f = click.option(
        "--flip/--no-flip",
        default=None,
        help="Average the network's output on the photo and on its mirror image (twice "
        "the work).  [default: the model's]",
    )(f)
    f = click.option(
        "--multiscale/--no-multiscale",
        default=None,
        help=_MULTISCALE_HELP + "  [default: the model's]",
    )(f)
    f = click.option("--size", type=click.IntRange(min=1), help=_SIZE_HELP)(f)
    f = precision_option(default="auto", show_default=True)(f)
    return click.option(
        "--model", "model_path", type=click.Path(exists=True, path_type=Path), help=MODEL_HELP
    )(f)


def _load_colorizer(model_path, **decoding):
    """The colorizer of the _network_options (model_path, size, decode, temperature,
    rebalance_strength)."""
    from kcolor import infer

    click.echo("Loading model...", err=True)
    try:
        return infer.load_colorizer(model_path, **decoding)
    except ValueError as e:
        raise click.ClickException(str(e)) from None


def _no_images(inputs, recursive, videos=False) -> click.ClickException:
    hint = "" if recursive or not any(p.is_dir() for p in inputs) else " (-r looks into subfolders)"
    also = f" or videos ({' '.join(VIDEO_SUFFIXES)})" if videos else ""
    return click.ClickException(
        f"no images ({' '.join(sorted(READ_SUFFIXES))}){also} in {', '.join(map(str, inputs))}{hint}"
    )


def _colorize_video(job, colorizer, smoothing, batch_size) -> None:
    """One video, with a progress bar in frames and frames/s; ValueError (one line, naming
    the file) for a bad one."""
    import sys
    import time

    from kcolor import video

    frames = video.probe(job.src).frames  # from the header: an estimate in some containers
    start, written = time.monotonic(), 0

    def speed(_):
        return f"{written / max(time.monotonic() - start, 1e-9):.1f} frames/s"

    bar = click.progressbar(
        length=max(frames, 1), label=job.src.name, file=sys.stderr, item_show_func=speed
    )
    with bar:

        def progress(n):
            nonlocal written
            written += n
            bar.update(n)

        video.colorize_video(colorizer, job.src, job.dst, smoothing, batch_size, progress)


@click.command()
@click.argument(
    "inputs",
    metavar="INPUT...",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, path_type=Path),
)
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder.  [default: colorized/ in each input folder, beside each input file]",
)
@click.option(
    "-r",
    "--recursive",
    is_flag=True,
    help="Also colorize the photos and videos in subfolders of folder inputs.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["png", "jpeg", "webp", "tiff", "bmp"]),
    help="Output format of photos.  [default: the input's]",
)
@click.option(
    "--compare", is_flag=True, help="Also write NAME-compare.EXT: input | output side by side."
)
@click.option(
    "--temporal-smoothing",
    type=click.FloatRange(0, 1, max_open=True),
    default=SMOOTHING,
    show_default=True,
    help="Videos: weight of the past frames in the moving average of the predicted colors; "
    "0 colorizes each frame alone. Restarts at scene cuts.",
)
@_network_options
def colorize(inputs, out, recursive, fmt, compare, temporal_smoothing, batch_size, **network):
    """Colorize the photos and videos INPUT (files and folders: JPEG, PNG, WebP, TIFF,
    BMP; MP4, MKV, MOV, AVI, WebM).

    Each output keeps its input's name, size and format (unless --format, photos only).
    With -o they go to OUT, keeping the paths below a folder input; without it, to a
    `colorized/` folder inside each folder input, or beside each file input. Inputs
    are never overwritten. A video keeps its frame rate, frame count and audio; its
    colors are smoothed over time (--temporal-smoothing). Exit status 1 when any input
    failed.
    """
    import sys
    import time

    from kcolor import infer, video

    start = time.monotonic()

    def is_video(p):
        return not p.is_dir() and p.suffix.lower() in video.VIDEO_SUFFIXES

    for folder in (p for p in inputs if p.is_dir() and out is not None):
        if Path(out).resolve() == folder.resolve():
            raise click.ClickException(
                f"-o {out} is the input folder {folder}: outputs would replace the inputs; "
                "choose another -o"
            )
    photos = [p for p in inputs if not is_video(p)]
    films = [p for p in inputs if p.is_dir() or is_video(p)]
    jobs, refused = infer.plan(photos, out, recursive, fmt, compare) if photos else ([], [])
    clips, clips_refused = (
        infer.plan(films, out, recursive, suffixes=video.VIDEO_SUFFIXES) if films else ([], [])
    )
    refused += clips_refused
    if not jobs and not clips and not refused:
        raise _no_images(inputs, recursive, videos=True)
    problems = [f"{path}: {why}" for path, why in refused]
    colorizer = _load_colorizer(**network) if jobs or clips else None
    if jobs:
        with click.progressbar(length=len(jobs), label="Colorizing", file=sys.stderr) as bar:

            def on_result(job, problem):
                bar.update(1)
                if problem:
                    problems.append(f"{job.src}: {problem}")

            recolored = []
            infer.colorize_files(
                jobs, colorizer, batch_size, on_result=on_result, on_recolor=recolored.append
            )
        if recolored:
            click.echo(
                f"Note: {len(recolored)} input(s) were colour photos, {recolored[0].src} first: "
                "kcolor colorizes from lightness alone, so their colours were replaced",
                err=True,
            )
    for job in clips:
        try:
            _colorize_video(job, colorizer, temporal_smoothing, batch_size)
        except ValueError as e:  # the message names the file
            problems.append(str(e))
    for line in problems:
        click.echo(line, err=True)
    done = len(jobs) + len(clips) + len(refused) - len(problems)
    folders = sorted({str(job.dst.parent) for job in jobs + clips})
    where = f" -> {out or folders[0]}" if out or len(folders) == 1 else ""
    where = where or f" -> {len(folders)} folders ({infer.OUTPUT_DIR}/ beside each input)"
    click.echo(
        f"{done} colorized, {len(problems)} failed in {time.monotonic() - start:.1f} s{where}"
    )
    if problems:
        sys.exit(1)


# --- evaluate -------------------------------------------------------------------


@click.command()
@click.argument(
    "truth",
    metavar="TRUTH...",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, path_type=Path),
)
@click.option(
    "-r", "--recursive", is_flag=True, help="Also use the photos in subfolders of folder inputs."
)
@click.option(
    "--limit", type=click.IntRange(min=1), help="Evaluate only the first N photos (in path order)."
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the report (per photo, mean, all pixels) to this JSON file.",
)
@click.option(
    "--groups",
    "groups_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV of photo,group rows (e.g. each crop's source photo): the bootstrap interval "
    "resamples the groups, not the photos. A row's photo matches the end of a photo's path "
    "(the longest match wins); photos not listed are groups of their own.",
)
@_network_options
def evaluate(truth, recursive, limit, json_path, groups_path, batch_size, **network):
    """Score the model on color photos TRUTH (files and folders) against gray.

    Each photo loses its color and is colorized as `kcolor colorize` would, at its
    own resolution; the table gives, per photo and on average, model and grayscale
    baseline (a = b = 0) side by side: AuC of the per-pixel ab error (thresholds
    0..150) raw and class-rebalanced, PSNR, SSIM, colorfulness and its distance to
    the truth's, and top-1 bin accuracy at the network's output resolution. The "all
    pixels" row gives both AuCs over the pooled pixels of all photos, as Zhang et al.
    report them, and their lead over gray a 95% bootstrap interval over the photos
    (or over their --groups).
    """
    import sys

    from kcolor import evaluate as evaluation
    from kcolor import infer

    outputs = [p / infer.OUTPUT_DIR for p in truth]  # earlier `kcolor colorize` results
    paths = [path for path, _ in infer.find_images(truth, recursive, skip=outputs)][:limit]
    if not paths:
        raise _no_images(truth, recursive)
    groups = None
    if groups_path:
        try:
            groups = evaluation.read_groups(groups_path, paths)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
    colorizer = _load_colorizer(**network)
    problems = []
    with click.progressbar(length=len(paths), label="Evaluating", file=sys.stderr) as bar:

        def on_image(path, problem):
            bar.update(1)
            if problem:
                problems.append(f"{path}: {problem}")

        report = evaluation.evaluate(paths, colorizer, batch_size, on_image=on_image, groups=groups)
    report["model"] = str(colorizer.source)
    problems += [f"{s['image']}: {s['reason']}" for s in report["skipped"]]
    for line in problems:
        click.echo(line, err=True)
    click.echo(evaluation.format_table(report))
    if json_path:
        try:
            evaluation.write_json(report, json_path)
        except OSError as e:
            raise click.ClickException(
                f"{json_path}: cannot write the report ({e.strerror or e})"
            ) from None
        click.echo(f"Report written to {json_path}")
    if report["failed"]:
        click.echo(f"{len(report['failed'])} of {len(paths)} photos failed", err=True)
        sys.exit(1)


# --- decoding -------------------------------------------------------------------


@click.command()
@click.argument("model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--temperature",
    type=click.FloatRange(min=0, min_open=True),
    help="New default annealed-mean temperature.",
)
@click.option(
    "--rebalance-strength",
    type=click.FloatRange(0, 2),
    help="New default rebalance strength (0 = none, 1 = Zhang's).",
)
@click.option(
    "--size",
    type=click.IntRange(min=1),
    help="New default network input side for whole photos (a multiple of 8, or 32 for "
    "effnet_lite0).",
)
@click.option(
    "--flip/--no-flip",
    default=None,
    help="New default: average the output on each photo and on its mirror image, or not.",
)
@click.option(
    "--multiscale/--no-multiscale",
    default=None,
    help="New default. " + _MULTISCALE_HELP,
)
def decoding(model_path, temperature, rebalance_strength, size, flip, multiscale):
    """Show, or set, the colorizing defaults that MODEL_PATH (a .keras file) records.

    `kcolor colorize` and `kcolor evaluate` use them unless given --temperature,
    --rebalance-strength, --size, --flip or --multiscale. Choose them with `kcolor evaluate` on photos the model
    was not trained on.
    """
    from kcolor import model

    try:
        if (temperature, rebalance_strength, size, flip, multiscale) == (None,) * 5:
            info = model.model_info(model.load_model(model_path))
        else:
            info = model.set_decoding(
                model_path, temperature, rebalance_strength, size, flip, multiscale
            )
    except (ValueError, OSError) as e:  # OSError: the file or its folder is not writable
        raise click.ClickException(str(e)) from None
    strength = info["rebalance_strength"]
    side = info.get("photo_side") or info["input_size"]
    click.echo(
        f"{model_path}: temperature {info['temperature']:g}, rebalance strength "
        + ("as trained" if strength is None else f"{strength:g}")
        + f", input side {side}"
        + (", flip" if info.get("flip") else "")
        + (f", multiscale (also at {info['input_size']})" if info.get("multiscale") else "")
    )


# --- export -------------------------------------------------------------------


@click.command("export")
@click.argument(
    "model_path", metavar="[MODEL]", required=False, type=click.Path(exists=True, path_type=Path)
)
@click.option(
    "--format",
    "fmt",
    required=True,
    type=click.Choice(EXPORT_FORMATS),
    help="savedmodel (a folder), tflite or onnx (a file; onnx needs `pip install 'kcolor[export]'`).",
)
@click.option(
    "--output",
    type=click.Choice(EXPORT_OUTPUTS),
    default="ab",
    show_default=True,
    help="ab: the model's decoding (`kcolor decoding` shows it); bins: the bin distribution.",
)
@click.option(
    "-o",
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="File (tflite, onnx) or folder (savedmodel) to write.",
)
@click.option(
    "--size",
    type=click.IntRange(min=1),
    help="Export for this input side only (rounded to a multiple of 8, or 32 for effnet_lite0).  "
    "[default: any side (eccv16); the model's input size (effnet_lite0)]",
)
def export(model_path, fmt, output, out, size):
    """Export MODEL (a .keras file or run folder; default: the bundled model) for serving.

    The exported model takes L (batch, H, W, 1) in [0, 100] and gives ab (batch, H/4,
    W/4, 2) decoded as `kcolor colorize` decodes it, or with --output bins the bin
    distribution (batch, H/4, W/4, 313). It runs in float32.
    """
    from kcolor import export as exporter

    click.echo("Exporting...", err=True)
    try:
        exported = exporter.export(model_path, out, fmt, output, size=size)
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(str(exported))
