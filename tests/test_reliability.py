"""What `kcolor prep` and `kcolor fit` do when things go wrong: a second run on one
folder, kills, full disks, damaged shards, a run folder that lost its config.json.
Each ends in one `Error: FILE: problem` line, and nothing already written is lost.
(tools/soak.py kills both at random moments many times; docs/reliability.md.)"""

import errno
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from conftest import TINY, write_photo_dir

from kcolor import cli, lock, model, shards, train

FIT_FLAGS = ["--width", "0.0625", "--batch-size", "4", "--lr", "3e-3", "--val-images", "8"]
FIT_FLAGS += ["--preview-images", "2", "--log-every", "2"]  # = TINY
# what TensorFlow raised when a checkpoint met a full disk (a 3 MB tmpfs)
DISK_FULL = (
    "{{function_node __wrapped__SaveV2_dtypes_207_device_/job:localhost/replica:0/task:0/"
    "device:CPU:0}} run/ckpt/ckpt-6_temp/part-00000-of-00001.data-00000-of-00001.tempstate"
    "16459270549518907387; No space left on device [Op:SaveV2]"
)


@pytest.fixture(scope="module")
def reference_run(shard_dir, tmp_path_factory):
    """One finished epoch (4 steps) of the tiny config: the run others are compared with."""
    run = tmp_path_factory.mktemp("reference") / "run"
    train.fit(shard_dir, run, train.FitConfig(**TINY, epochs=1), echo=lambda _m: None)
    return run


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def run_cli(*args):
    result = CliRunner().invoke(cli.main, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def error_line(result) -> str:
    """The one `Error:` line of a failed command (and no traceback)."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if "Error:" in line]
    assert len(lines) == 1, result.output
    return lines[0]


def weights(path: Path) -> list[np.ndarray]:
    return model.load_model(path).get_weights()


HOLD = """
import sys, time
from pathlib import Path
from kcolor import lock
with lock.hold(Path(sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder():
    """holder(folder, what) -> a process holding folder's lock (killed at the end)."""
    procs = []

    def start(folder: Path, what: str) -> subprocess.Popen:
        folder.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(folder), what], stdout=subprocess.PIPE, text=True
        )
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()
        proc.stdout.close()


# --- one run per folder ---------------------------------------------------------------


def test_a_second_prep_on_one_out_stops_at_once_naming_the_holder(tmp_path, holder):
    photos, out = tmp_path / "photos", tmp_path / "out"
    write_photo_dir(photos, n=4, size=16)
    other = holder(out, "kcolor prep")
    result = run_cli("prep", photos, out, "--size", 16, "--workers", 1)
    line = error_line(result)
    assert line.startswith(f"Error: {out}: in use by kcolor prep, PID {other.pid} on ")
    assert not list(out.glob("*.h5")) and not list(out.glob("report*"))


def test_a_lock_left_by_a_killed_prep_is_taken_over_with_a_line(tmp_path, holder):
    photos, out = tmp_path / "photos", tmp_path / "out"
    write_photo_dir(photos, n=4, size=16)
    dead = holder(out, "kcolor prep")
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    result = run_cli("prep", photos, out, "--size", 16, "--workers", 1)
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "taking over" in line)
    assert line.startswith(f"{out}: taking over the lock left by kcolor prep, PID {dead.pid} on ")
    assert line.endswith(", which is no longer running")
    assert lock.holder(out) == ""  # released cleanly: nothing for the next run to report


def test_a_second_fit_stops_at_once_and_only_the_holder_clears_stale_files(
    reference_run, shard_dir, tmp_path, holder
):
    run = copy_run(reference_run, tmp_path / "run")
    stale = [
        run / "ckpt" / "ckpt-40_temp" / "part-00000-of-00001.data-00000-of-00001.tempstate12",
        run / "ckpt" / "checkpoint.tmp0123456789abcdef0123456789abcdef",  # 0 bytes, as left
        run / ".model.keras.4242.tmp.keras",
        run / ".config.json.tmp",
    ]
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"")
    config = (run / "config.json").read_text()
    other = holder(run, "kcolor fit")
    result = run_cli("fit", shard_dir, run, *FIT_FLAGS, "--epochs", 1)
    assert error_line(result).startswith(f"Error: {run}: in use by kcolor fit, PID {other.pid}")
    assert all(p.exists() for p in stale), "removed another run's files"
    assert (run / "config.json").read_text() == config

    other.kill()
    other.wait()
    result = run_cli("fit", shard_dir, run, *FIT_FLAGS, "--epochs", 1)
    assert result.exit_code == 0, result.output
    assert f"{run}: taking over the lock left by kcolor fit, PID {other.pid}" in result.output
    assert not any(p.exists() for p in stale)
    assert not (run / "ckpt" / "ckpt-40_temp").exists()


# --- prep: stale files, folders it cannot make, a full disk ------------------------------


def test_prep_clears_every_temp_file_of_killed_runs(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "out"
    write_photo_dir(photos, n=4, size=16)
    args = ["prep", photos, out, "--size", 16, "--val-fraction", 0, "--workers", 1]
    assert run_cli(*args).exit_code == 0
    stale = [
        ".stats.json.4242.tmp",
        ".report.txt.4242.tmp",
        ".report-train-00000.txt.4242.tmp",
        ".train-00000-of-00001.h5.4242.tmp",
        ".train-00000-of-00001.h5.4242.tmp.h5",
        ".train-00000-of-00007.h5.4242.tmp",  # of another --num-shards
    ]
    for name in stale:
        (out / name).write_bytes(b"half")
    (out / "notes.tmp").write_text("the user's")
    result = run_cli(*args)
    assert result.exit_code == 0 and "(0 new, 1 already done)" in result.output
    assert sorted(p.name for p in out.glob(".*tmp*")) == []
    assert (out / "notes.tmp").exists()


def test_prep_into_a_folder_it_cannot_make_is_one_line(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    write_photo_dir(photos, n=2, size=16)
    (tmp_path / "file").write_text("x")
    result = run_cli("prep", photos, tmp_path / "file" / "out")
    assert error_line(result) == (
        f"Error: {tmp_path / 'file' / 'out'}: could not create the output folder (Not a directory)"
    )
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    result = run_cli("prep", photos, tmp_path / "dangling")
    assert error_line(result) == (
        f"Error: {tmp_path / 'dangling'}: could not create the output folder "
        "(a broken symbolic link)"
    )

    def refuse(self, *args, **kwargs):  # tests run as root here: chmod would not stop it
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    result = run_cli("prep", photos, tmp_path / "locked" / "out")
    assert error_line(result) == (
        f"Error: {tmp_path / 'locked' / 'out'}: could not create the output folder "
        "(Permission denied)"
    )


FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write (EFBIG) instead of dying
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
from kcolor import cli
cli.main(sys.argv[2:])
"""


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE semantics of Linux")
def test_prep_that_cannot_write_a_shard_says_which_in_one_line_then_resumes(tmp_path):
    photos, out, whole = tmp_path / "photos", tmp_path / "out", tmp_path / "whole"
    write_photo_dir(photos, n=40, size=16)
    args = ["prep", str(photos), "--size", "16", "--shard-size", "8", "--workers", "2"]
    assert run_cli(args[0], args[1], whole, *args[2:]).exit_code == 0
    small = min(p.stat().st_size for p in whole.glob("train-*.h5"))
    # every shard is larger than the limit: the first write fails, as on a full disk
    cmd = [sys.executable, "-c", FULL_DISK, str(small - 1), *args[:2], str(out), *args[2:]]
    failed = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr and "Exception ignored" not in failed.stderr
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: {out}/") and last.endswith(
        ".h5: could not write it (File too large); the shards written are kept: rerun to resume"
    )
    assert not list(out.glob(".*tmp*"))
    assert run_cli(args[0], args[1], out, *args[2:]).exit_code == 0
    for p in whole.glob("*.h5"):
        assert (out / p.name).read_bytes() == p.read_bytes(), p.name


# --- fit: a full disk, damaged shards, a lost config.json, --init ------------------------


@pytest.mark.slow  # three fits, resumed
def test_full_disk_while_fitting_stops_with_one_line_and_resumes(
    reference_run, shard_dir, tmp_path, monkeypatch
):
    run = copy_run(reference_run, tmp_path / "run")
    save = tf.train.CheckpointManager.save

    def disk_full_at_6(self, checkpoint_number=None, **kw):
        if checkpoint_number == 6:
            raise tf.errors.ResourceExhaustedError(None, None, DISK_FULL)
        return save(self, checkpoint_number=checkpoint_number, **kw)

    args = ["fit", shard_dir, run, *FIT_FLAGS, "--epochs", 2, "--checkpoint-every", 1]
    with monkeypatch.context() as mp:
        mp.setattr(tf.train.CheckpointManager, "save", disk_full_at_6)
        line = error_line(run_cli(*args))
    ckpt = run / "ckpt"
    assert line == (
        f"Error: {ckpt / 'ckpt-6'}: could not write the checkpoint (No space left on device); "
        f"kept {ckpt / 'ckpt-5'}; rerun to resume"
    )
    assert tf.train.latest_checkpoint(str(ckpt)) == str(ckpt / "ckpt-5")

    def disk_full(net, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as mp:  # resumes at 5; the export of epoch 2 fails
        mp.setattr(model, "export_model", disk_full)
        line = error_line(run_cli(*args))
    assert line == (
        f"Error: {run / 'model.keras'}: could not write the model (No space left on device); "
        f"kept {ckpt / 'ckpt-8'}; rerun to finish the epoch"
    )
    result = run_cli(*args)  # space again: the epoch's end is done, nothing retrained
    assert result.exit_code == 0, result.output
    assert "Resumed from" in result.output and "epoch 2/2 step 8: val" in result.output
    assert "Training 4 steps/epoch x 2 epochs, batch 4, from step 8" in result.output


def damaged_copy(shard_dir: Path, to: Path, name: str, edit) -> Path:
    shutil.copytree(shard_dir, to)
    with h5py.File(to / name, "a") as f:
        edit(f)
    return to / name


def test_shards_with_wrong_shapes_are_named_before_training(shard_dir, tmp_path):
    def smaller_bins(f):
        n = f["bins"].shape[0]
        del f["bins"]
        f.create_dataset("bins", data=np.zeros((n, 16, 16), np.uint16))

    bad = damaged_copy(shard_dir, tmp_path / "shards", "train-00001-of-00003.h5", smaller_bins)
    result = run_cli("fit", bad.parent, tmp_path / "run", *FIT_FLAGS, "--epochs", 1)
    n = shards.read_meta(bad)["num_images"]
    assert error_line(result) == (
        f"Error: {bad}: dataset 'bins': expected ({n}, 32, 32) uint16, found ({n}, 16, 16) uint16"
    )
    assert not (tmp_path / "run" / "config.json").exists()


def test_bin_values_out_of_range_are_named_with_the_shard(shard_dir, tmp_path):
    def bad_image(f):
        f["bins"][1] = np.full(f["bins"].shape[1:], 65535, np.uint16)

    bad = damaged_copy(shard_dir, tmp_path / "shards", "train-00001-of-00003.h5", bad_image)
    result = run_cli("fit", bad.parent, tmp_path / "run", *FIT_FLAGS, "--epochs", 1)
    assert error_line(result) == (
        f"Error: {bad}: bins: expected values below 313, found 65535 (a damaged shard: remake "
        "it with `kcolor prep`); stopped at step 0, kept no checkpoint"
    )
    bad_val = damaged_copy(shard_dir, tmp_path / "shards2", "val-00000-of-00001.h5", bad_image)
    with pytest.raises(train.TrainingError, match=f"{bad_val}: bins: expected values below 313"):
        train.fit(bad_val.parent, tmp_path / "run2", train.FitConfig(**TINY, epochs=1))


def test_run_folder_without_config_json_is_refused_and_left_as_it_was(
    reference_run, shard_dir, tmp_path
):
    run = copy_run(reference_run, tmp_path / "run")
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").unlink()
    result = run_cli("fit", shard_dir, run, "--batch-size", 4)  # width: the default 1.0
    assert error_line(result) == (
        f"Error: {run / 'config.json'}: missing, but {run / 'ckpt' / 'ckpt-4'} is a checkpoint "
        "of this run; put its config.json back (it records the settings that shaped the "
        "network) or use a new RUN_DIR"
    )
    assert not (run / "config.json").exists()  # not rewritten with the defaults
    (run / "config.json").write_text(json.dumps(saved | {"width": 0.125}))
    result = run_cli("fit", shard_dir, run)
    line = error_line(result)
    assert line.startswith(f"Error: {run / 'ckpt' / 'ckpt-4'}: cannot resume from it (")
    assert "in this run's model" in line and f"was {run / 'config.json'} changed by hand?" in line


def test_init_from_a_model_of_another_width_is_refused(reference_run, shard_dir, tmp_path):
    result = run_cli(
        "fit", shard_dir, tmp_path / "run", *FIT_FLAGS[2:], "--width", 0.125, "--epochs", 1,
        "--init", reference_run / "model.keras",
    )  # fmt: skip
    assert error_line(result) == (
        f"Error: {reference_run / 'model.keras'}: its width is 0.0625, this run's is 0.125; "
        "--init needs a model of the same width"
    )


# --- resume and determinism ----------------------------------------------------------------


class Killed(BaseException):
    """Stands for a kill -9: nothing after it runs (not even `except Exception`)."""


@pytest.mark.slow  # a stop and a resume
def test_a_stop_between_the_epoch_checkpoint_and_its_export_is_finished_on_resume(
    reference_run, shard_dir, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    cfg = train.FitConfig(**TINY, epochs=1)

    def killed(net, path):
        raise Killed

    with monkeypatch.context() as mp:
        mp.setattr(model, "export_model", killed)
        with pytest.raises(Killed):
            train.fit(shard_dir, run, cfg, echo=lambda _m: None)
    latest = tf.train.latest_checkpoint(str(run / "ckpt"))
    assert latest.endswith("ckpt-4") and not (run / "model.keras").exists()
    assert tf.train.load_variable(latest, "epoch_end_done/.ATTRIBUTES/VARIABLE_VALUE") == 0
    messages = []
    train.fit(shard_dir, run, cfg, echo=messages.append)
    assert any(m.startswith("epoch 1/1 step 4: val loss") for m in messages), messages
    latest = tf.train.latest_checkpoint(str(run / "ckpt"))
    assert tf.train.load_variable(latest, "epoch_end_done/.ATTRIBUTES/VARIABLE_VALUE") == 4
    for a, b in zip(
        weights(run / "model.keras"), weights(reference_run / "model.keras"), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_two_identical_short_runs_end_with_identical_weights(reference_run, shard_dir, tmp_path):
    again = train.fit(
        shard_dir, tmp_path / "run", train.FitConfig(**TINY, epochs=1), echo=lambda _m: None
    )
    ours, theirs = weights(again), weights(reference_run / "model.keras")
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit, not approximately
