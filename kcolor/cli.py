"""The `kcolor` command line: a thin click shell over the library.

    kcolor prep SOURCE OUT       images -> HDF5 shards + bin frequencies
    kcolor fit SHARDS RUN_DIR    train the network from shards
    kcolor colorize INPUT...     colorize photos with a trained model
    kcolor evaluate TRUTH...     metrics against the grayscale baseline

Each command imports its module lazily so that `kcolor --help` is instant
(TensorFlow takes seconds to import).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import click

from kcolor import __version__
from kcolor.config import PRECISIONS, FitConfig

# TensorFlow's C++ start-up chatter (oneDNN, CPU feature notes) would bury the one-line
# messages the commands print; users can still ask for it with TF_CPP_MIN_LOG_LEVEL=0.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _one_line_warning(message, category, filename, lineno, line=None):
    # Python's default format adds the source line of the warning's caller (often a Keras
    # line) under the message: one line, like the commands' errors, reads better
    return f"Warning: {message}\n"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kcolor")
def main():
    """Colorize black-and-white photos (Zhang, Isola & Efros, ECCV 2016)."""
    # set when a command runs, not when kcolor.cli is imported (library users keep theirs)
    warnings.formatwarning = _one_line_warning


# --- prep ---------------------------------------------------------------------


@main.command()
@click.argument("source", required=False, type=click.Path(path_type=Path))
@click.argument("out", required=False, type=click.Path(path_type=Path))
@click.option(
    "--size",
    default=128,
    show_default=True,
    help="Side of the output images (short side resized, centre crop).",
)
@click.option(
    "--bin-table",
    default="zhang313",
    show_default=True,
    help="ab bins: zhang313 (the paper's) or grid18.",
)
@click.option(
    "--val-fraction",
    default=0.05,
    show_default=True,
    help="Share of a plain folder that goes to val (Miniplaces has val.txt).",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    help="Seed of the folder split and of the order of images in the shards.",
)
@click.option("--workers", type=int, help="Worker processes.  [default: all cores]")
@click.option("--shard-size", default=1024, show_default=True, help="Images per shard.")
@click.option("--num-shards", type=int, help="Shards per split (instead of --shard-size).")
@click.option(
    "--shard-index",
    multiple=True,
    help="Write only these shards: I or I-J, repeatable (to split the work across machines).",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Fail at the first bad input instead of skipping and reporting it.",
)
@click.option(
    "--merge-stats",
    "merge_dir",
    type=click.Path(path_type=Path),
    help="Only sum the train shards gathered in this folder into stats.json.",
)
def prep(source, out, merge_dir, workers, shard_index, strict, **settings):
    """Turn the photos in SOURCE into HDF5 shards of L and ab bins in OUT.

    SOURCE is a Miniplaces root (train.txt, val.txt, images/) or any folder of
    images (split by --val-fraction). Rerun the same command to resume after an
    interruption. Bad files are skipped and listed in OUT/report.txt.
    """
    import sys
    import time

    from kcolor import prep as prep_lib

    bar, since = None, (0.0, 0)

    def progress(done, total):
        nonlocal bar, since
        if bar is None:
            bar = click.progressbar(
                length=total, label="Preparing", file=sys.stderr, item_show_func=lambda s: s
            )
            bar.__enter__()
            since = (time.monotonic(), done)
        rate = (done - since[1]) / max(time.monotonic() - since[0], 1e-9)
        bar.update(done - bar.pos, f"{rate:,.0f} images/s")

    try:
        if merge_dir is not None:
            if source is not None:
                raise click.UsageError("--merge-stats takes only the folder of gathered shards")
            stats = prep_lib.merge_stats(merge_dir)
            click.echo(
                f"Wrote {merge_dir / 'stats.json'}: {stats['images']:,} images in {stats['shards']} train shards, {stats['pixels']:,} pixels"
            )
            return
        if source is None or out is None:
            raise click.UsageError("expected SOURCE and OUT (or --merge-stats OUT)")
        try:
            summary = prep_lib.prepare(
                source,
                out,
                prep_lib.PrepSettings(**settings),
                workers=workers,
                shard_indices=prep_lib.parse_shard_indices(shard_index),
                strict=strict,
                log=lambda msg: click.echo(msg, err=True),
                progress=progress,
            )
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
        click.echo(summary.format())
    except (ValueError, prep_lib.PrepError) as e:
        raise click.ClickException(str(e)) from None


def _fit_config_options(f):
    """One option per FitConfig field, its help, default and choices taken from the field."""
    for field in reversed(dataclasses.fields(FitConfig)):
        choices = field.metadata["choices"]
        f = click.option(
            "--" + field.name.replace("_", "-"),
            type=click.Choice(choices) if choices else type(field.default),
            help=f"{field.metadata['help']}  [default: {field.default}]",
        )(f)
    return f


def _precision_option(**kwargs):
    return click.option(
        "--precision",
        type=click.Choice(PRECISIONS),
        help="Arithmetic: auto = bf16 where it runs faster (a GPU, or a CPU with bfloat16 "
        "instructions for eccv16), else fp32. Models are stored in fp32 either way.",
        **kwargs,
    )


# --- fit ----------------------------------------------------------------------


@main.command()
@click.argument("shards", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON or TOML file of settings (flags override it).",
)
@_fit_config_options
@click.option(
    "--init",
    "init_model",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Start from the weights of a kcolor .keras model.",
)
@click.option(
    "--cpu-replicas",
    type=int,
    default=0,
    help="Split the CPU into N replicas (testing multi-replica code without GPUs).",
)
def fit(shards, run_dir, config_file, init_model, cpu_replicas, **flags):
    """Train the network from SHARDS (a `kcolor prep` folder) into RUN_DIR.

    Uses all local GPUs (MirroredStrategy; the CPU when there are none) or, when
    TF_CONFIG names several workers, MultiWorkerMirroredStrategy. Rerun the same
    command to resume from the last checkpoint.
    """
    from kcolor import train

    if run_dir.exists() and not run_dir.is_dir():
        raise click.ClickException(f"{run_dir}: RUN_DIR is a file")
    try:
        cfg = train.resolve_config(run_dir, config_file, flags)
        strategy = train.make_strategy(cpu_replicas)
        train.fit(shards, run_dir, cfg, strategy=strategy, init_model=init_model, echo=click.echo)
    except (ValueError, OSError, train.TrainingError) as e:
        raise click.ClickException(str(e)) from None


# --- colorize -------------------------------------------------------------------

_MODEL_HELP = "A .keras file (or run folder) from `kcolor fit`.  [default: the bundled model]"
_SIZE_HELP = "Side the lightness is resized to for the network, rounded to a multiple of 8.  [default: the model's input size]"


def _network_options(f):
    """--model, --size, --decode, --temperature, --rebalance-strength and --batch-size
    (colorize and evaluate)."""
    f = click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=8,
        show_default=True,
        help="Photos per network batch.",
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
    f = click.option("--size", type=click.IntRange(min=1), help=_SIZE_HELP)(f)
    f = _precision_option(default="auto", show_default=True)(f)
    return click.option(
        "--model", "model_path", type=click.Path(exists=True, path_type=Path), help=_MODEL_HELP
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


def _no_images(inputs, recursive) -> click.ClickException:
    hint = "" if recursive or not any(p.is_dir() for p in inputs) else " (-r looks into subfolders)"
    return click.ClickException(
        f"no images (.jpg .png .webp .tif .bmp) in {', '.join(map(str, inputs))}{hint}"
    )


@main.command()
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
    help="Also colorize the photos in subfolders of folder inputs.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["png", "jpeg", "webp", "tiff", "bmp"]),
    help="Output format.  [default: the input's]",
)
@click.option(
    "--compare", is_flag=True, help="Also write NAME-compare.EXT: input | output side by side."
)
@_network_options
def colorize(inputs, out, recursive, fmt, compare, batch_size, **network):
    """Colorize the photos INPUT (files and folders: JPEG, PNG, WebP, TIFF, BMP).

    Each output keeps its input's name, size and format (unless --format). With -o
    they go to OUT, keeping the paths below a folder input; without it, to a
    `colorized/` folder inside each folder input, or beside each file input. Inputs
    are never overwritten. Exit status 1 when any photo failed.
    """
    import sys
    import time

    from kcolor import infer

    start = time.monotonic()
    jobs, refused = infer.plan(inputs, out, recursive, fmt, compare)
    if not jobs and not refused:
        raise _no_images(inputs, recursive)
    problems = [f"{path}: {why}" for path, why in refused]
    colorizer = _load_colorizer(**network) if jobs else None
    with click.progressbar(length=len(jobs), label="Colorizing", file=sys.stderr) as bar:

        def on_result(job, problem):
            bar.update(1)
            if problem:
                problems.append(f"{job.src}: {problem}")

        if jobs:
            infer.colorize_files(jobs, colorizer, batch_size, on_result=on_result)
    for line in problems:
        click.echo(line, err=True)
    done = len(jobs) + len(refused) - len(problems)
    where = f" -> {out}" if out else ""
    click.echo(
        f"{done} colorized, {len(problems)} failed in {time.monotonic() - start:.1f} s{where}"
    )
    if problems:
        sys.exit(1)


# --- evaluate -------------------------------------------------------------------


@main.command()
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
@_network_options
def evaluate(truth, recursive, limit, json_path, batch_size, **network):
    """Score the model on color photos TRUTH (files and folders) against gray.

    Each photo loses its color and is colorized as `kcolor colorize` would, at its
    own resolution; the table gives, per photo and on average, model and grayscale
    baseline (a = b = 0) side by side: AuC of the per-pixel ab error (thresholds
    0..150) raw and class-rebalanced, PSNR, SSIM, colorfulness and its distance to
    the truth's, and top-1 bin accuracy at the network's output resolution. The "all
    pixels" row gives both AuCs over the pooled pixels of all photos, as Zhang et al.
    report them.
    """
    import sys

    from kcolor import infer, metrics

    outputs = [p / infer.OUTPUT_DIR for p in truth]  # earlier `kcolor colorize` results
    paths = [path for path, _ in infer.find_images(truth, recursive, skip=outputs)][:limit]
    if not paths:
        raise _no_images(truth, recursive)
    colorizer = _load_colorizer(**network)
    problems = []
    with click.progressbar(length=len(paths), label="Evaluating", file=sys.stderr) as bar:

        def on_image(path, problem):
            bar.update(1)
            if problem:
                problems.append(f"{path}: {problem}")

        report = metrics.evaluate(paths, colorizer, batch_size, on_image=on_image)
    report["model"] = str(colorizer.source)
    for line in problems:
        click.echo(line, err=True)
    click.echo(metrics.format_table(report))
    if json_path:
        try:
            metrics.write_json(report, json_path)
        except OSError as e:
            raise click.ClickException(
                f"{json_path}: cannot write the report ({e.strerror or e})"
            ) from None
        click.echo(f"Report written to {json_path}")
    if problems:
        click.echo(f"{len(problems)} of {len(paths)} photos failed", err=True)
        sys.exit(1)


# --- decoding -------------------------------------------------------------------


@main.command()
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
def decoding(model_path, temperature, rebalance_strength):
    """Show, or set, the decoding defaults that MODEL_PATH (a .keras file) records.

    `kcolor colorize` and `kcolor evaluate` use them unless given --temperature or
    --rebalance-strength. Choose them with `kcolor evaluate` on photos the model was not
    trained on.
    """
    from kcolor import model

    try:
        if temperature is None and rebalance_strength is None:
            info = model.model_info(model.load_model(model_path))
        else:
            info = model.set_decoding(model_path, temperature, rebalance_strength)
    except (ValueError, OSError) as e:  # OSError: the file or its folder is not writable
        raise click.ClickException(str(e)) from None
    strength = info["rebalance_strength"]
    click.echo(
        f"{model_path}: temperature {info['temperature']:g}, rebalance strength "
        + ("as trained" if strength is None else f"{strength:g}")
    )
