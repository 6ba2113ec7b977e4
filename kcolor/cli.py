"""The `kcolor` command line: a thin click shell over the library (prep, fit, serve here;
the commands that colorize with a model in kcolor.cli_infer).

    kcolor prep SOURCE OUT       images -> HDF5 shards + bin frequencies
    kcolor fit SHARDS RUN_DIR    train the network from shards
    kcolor colorize INPUT...     colorize photos with a trained model (kcolor.cli_infer)
    kcolor evaluate TRUTH...     metrics against the grayscale baseline
    kcolor export [MODEL]        the model as SavedModel, TFLite or ONNX

Each command imports its module lazily so that `kcolor --help` is instant
(TensorFlow takes seconds to import).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import click

from kcolor import __version__, cli_infer
from kcolor.config import MAX_UPLOAD_MB, FitConfig

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
@click.argument("paths", metavar="SOURCE... OUT", nargs=-1, type=click.Path(path_type=Path))
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
def prep(paths, merge_dir, workers, shard_index, strict, **settings):
    """Turn the photos in SOURCE into HDF5 shards of L and ab bins in OUT.

    SOURCE is a Miniplaces root (train.txt, val.txt, images/) or any folder of
    images (split by --val-fraction); several SOURCEs go into one shard folder, each
    with its own split. Rerun the same command to resume after an interruption. Bad
    files are skipped and listed in OUT/report.txt.
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
            if paths:
                raise click.UsageError("--merge-stats takes only the folder of gathered shards")
            stats = prep_lib.merge_stats(merge_dir)
            click.echo(
                f"Wrote {merge_dir / 'stats.json'}: {stats['images']:,} images in {stats['shards']} train shards, {stats['pixels']:,} pixels"
            )
            return
        if len(paths) < 2:
            raise click.UsageError("expected SOURCE... OUT (or --merge-stats OUT)")
        try:
            summary = prep_lib.prepare(
                list(paths[:-1]),
                paths[-1],
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
    from kcolor import lock, train

    if run_dir.exists() and not run_dir.is_dir():
        raise click.ClickException(f"{run_dir}: RUN_DIR is a file")
    try:
        cfg = train.resolve_config(run_dir, config_file, flags)
        strategy = train.make_strategy(cpu_replicas)
        train.fit(shards, run_dir, cfg, strategy=strategy, init_model=init_model, echo=click.echo)
    except (ValueError, OSError, train.TrainingError, lock.LockError) as e:
        raise click.ClickException(str(e)) from None


# --- serve ----------------------------------------------------------------------


@main.command("serve")
@click.option(
    "--model", "model_path", type=click.Path(exists=True, path_type=Path), help=cli_infer.MODEL_HELP
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. The page has no login: 0.0.0.0 shares it with your network.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="Port to listen on (0: a free one).",
)
@click.option(
    "--max-upload-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=MAX_UPLOAD_MB,
    show_default=True,
    help="Largest photo file the page accepts, in MB.",
)
@cli_infer.precision_option(default="auto", show_default=True)
def serve(model_path, host, port, max_upload_mb, precision):
    """A web page to colorize photos: drop or pick them, compare before and after, set
    the rebalancing strength and temperature, download PNGs.

    One process keeps the model loaded and warm; the URL is printed once the first photo
    can be answered at full speed. Ctrl-C stops it.
    """
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise click.ClickException(
            f"kcolor serve needs {e.name}, which is not installed: pip install 'kcolor[serve]'"
        ) from None
    from kcolor import serve as server

    try:
        server.run(
            host,
            port,
            model_path,
            max_upload_mb=max_upload_mb,
            precision=precision,
            echo=click.echo,
        )
    except (ValueError, OSError) as e:  # not a kcolor model; the port is taken
        raise click.ClickException(str(e)) from None


# the commands that use a trained model
for _command in (
    cli_infer.colorize,
    cli_infer.evaluate,
    cli_infer.decoding,
    cli_infer.export,
):
    main.add_command(_command)
