"""The run folder of `kcolor fit`: making it, clearing what killed runs left, checking it
can be resumed, and the checkpoint restore, checkpoint save, model export and config
writes, each failing with one line that names the file (docs/reliability.md).

`run` below is kcolor.train's run: its `manager` (tf.train.CheckpointManager), `ckpt`,
`net`, `out_dir` and `step`.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from kcolor.config import CONFIG_NAME
from kcolor.photo import atomic_write


class TrainingError(RuntimeError):
    """A training run stopped for a reason the user must act on."""


def make_run_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        where = f"{e.filename}: " if e.filename and Path(e.filename) != out_dir else ""
        raise ValueError(
            f"{out_dir}: could not create the run folder ({where}{e.strerror})"
        ) from None


# temp files that a kill can leave: TF's checkpoint parts (ckpt-N_temp/) and state file
# (checkpoint.tmp<uuid>), and model.keras and config.json before their rename
# (.model.tmp.keras, .model.keras.<pid>.tmp.keras, .config.json.tmp)
_STALE_IN_CKPT = re.compile(r"^(ckpt-\d+_temp|checkpoint\.tmp[0-9a-f]+)$")
_STALE_IN_RUN = re.compile(r"^\.(model|model\.keras|config\.json)\.(\d+\.)?tmp(\.keras|\.json)?$")


def clear_stale_files(out_dir: Path) -> None:
    """Remove what killed runs left half-written. Only the lock's holder may: another
    run's temp files are its work in progress."""
    ckpt_dir = out_dir / "ckpt"
    stale = (
        [p for p in ckpt_dir.iterdir() if _STALE_IN_CKPT.match(p.name)] if ckpt_dir.is_dir() else []
    )
    stale += [p for p in out_dir.glob(".*tmp*") if _STALE_IN_RUN.match(p.name)]
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def check_resumable(run_dir: Path, out_dir: Path) -> None:
    """A run folder with checkpoints needs its config.json: the settings that shaped the
    network are there, and a guess (the defaults) would be overwritten into it."""
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(str(out_dir / "ckpt"))
    config = run_dir / CONFIG_NAME
    if latest and not config.is_file():
        raise ValueError(
            f"{config}: missing, but {latest} is a checkpoint of this run; put its "
            "config.json back (it records the settings that shaped the network) or use a new RUN_DIR"
        )


def restore(run, echo) -> None:
    import tensorflow as tf

    latest = run.manager.latest_checkpoint
    if not latest:
        return
    try:
        run.ckpt.restore(latest).assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as e:
        # the half-done restore logs a list of unrestored values when it is freed (at
        # exit): noise under the one line that says what is wrong
        tf.get_logger().addFilter(lambda r: "restored" not in r.getMessage())
        m = _SHAPE_MISMATCH.search(str(e))
        why = (
            f"{m[3]} has shape {m[1]} in this run's model, {m[2]} in the checkpoint"
            if m
            else reason(e)
        )
        raise ValueError(
            f"{latest}: cannot resume from it ({why}); was {run.out_dir / CONFIG_NAME} "
            "changed by hand?"
        ) from None
    echo(f"Resumed from {latest} (step {run.step})")


_SHAPE_MISMATCH = re.compile(
    r"variable\.shape=(\S+), Received: value\.shape=(\S+)\. Target variable: <Variable path=([^,]+)"
)


def reason(e: BaseException) -> str:
    """The gist of an OSError, TensorFlow or Keras error, on one line."""
    text = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
    text = (text.strip().splitlines() or [type(e).__name__])[0]
    text = re.sub(r"\{\{[^}]*\}\}|\s*\[Op:\w+\].*$", "", text).strip()
    return text.rsplit("; ", 1)[-1][:300] or type(e).__name__


def latest(run) -> str:
    return run.manager.latest_checkpoint or "no checkpoint"


def save(run, step: int) -> None:
    """Checkpoint `step`; on failure (a full disk) stop, keeping the last good one."""
    import tensorflow as tf

    try:
        run.manager.save(checkpoint_number=step)
    except (OSError, tf.errors.OpError) as e:
        shutil.rmtree(Path(run.manager.directory) / f"ckpt-{step}_temp", ignore_errors=True)
        raise TrainingError(
            f"{Path(run.manager.directory) / f'ckpt-{step}'}: could not write the checkpoint "
            f"({reason(e)}); kept {latest(run)}; rerun to resume"
        ) from None


def export(run) -> None:
    """Write model.keras; on failure stop with one line (the checkpoints are kept)."""
    from kcolor import model

    path = run.out_dir / "model.keras"
    try:
        model.export_model(run.net, path)
    except OSError as e:
        raise TrainingError(
            f"{path}: could not write the model ({reason(e)}); kept {latest(run)}; "
            "rerun to finish the epoch"
        ) from None


def latest_step(run) -> int | None:
    latest = run.manager.latest_checkpoint
    return int(latest.rsplit("-", 1)[1]) if latest else None


def write_config(path: Path, text: str) -> None:
    """Write config.json atomically; on failure stop with one line."""
    try:
        atomic_write(path, lambda tmp: tmp.write_text(text))
    except OSError as e:
        raise TrainingError(f"{path}: could not write it ({reason(e)})") from None
