"""Kill `kcolor prep` and `kcolor fit` at random moments, resume them, and compare what
they end with to an uninterrupted run.

    nice -n 10 python tools/soak.py             # 20 prep and 6 fit kills: ~4 min on 2 cores
    python tools/soak.py --prep-kills 50 --fit-kills 20 --seed 3 --work /tmp/soak --keep

Each round starts a run in a fresh folder, SIGKILLs it (prep 1 to 3 times, fit 1 or 2,
each restart resuming), then lets it finish; a round whose runs all ended before their
kill moment is not counted. Prep kills fall anywhere until its last shard is written;
fit kills after its start-up (the `Training` line): in steps, checkpoints, validation
or export. Identical means, for prep, every file of OUT (shards, reports, stats.json)
byte for byte the uninterrupted run's; for fit (fixed seed), every tensor of the last
checkpoint (weights and optimizer state; not the save counter) and of model.keras bit
for bit. The data are made here: smooth color photos of 64 px, prepared at 48 px for
prep and at 32 px for a width-0.0625 fit. Exit status 0 when every outcome is identical;
docs/reliability.md quotes a run.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before this process imports TensorFlow
ENV = dict(os.environ)
PREP = ["--size", "48", "--shard-size", "8", "--workers", "2"]
FIT = [
    "--width", "0.0625", "--batch-size", "4", "--lr", "3e-3", "--epochs", "5",
    "--checkpoint-every", "1", "--val-images", "4", "--preview-images", "2",
    "--log-every", "2", "--seed", "0",
]  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prep-kills", type=int, default=20)
    ap.add_argument("--fit-kills", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0, help="of the kill moments")
    ap.add_argument("--work", type=Path, help="working folder (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the working folder")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="kcolor-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        ok = soak_prep(work, args.prep_kills, rng) if args.prep_kills else True
        ok &= soak_fit(work, args.fit_kills, rng) if args.fit_kills else True
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


# --- prep ---------------------------------------------------------------------------------


def soak_prep(work: Path, kills: int, rng: random.Random) -> bool:
    photos = make_photos(work / "photos", n=1200, size=64)
    cmd = [sys.executable, "-m", "kcolor", "prep", str(photos)]
    ref = work / "prep-ref"
    subprocess.run([*cmd, str(ref), *PREP], check=True, capture_output=True, env=ENV)
    total = len(list(ref.glob("*.h5")))
    # a second run, watched: when its shards appear (the first warmed the page cache)
    timing = work / "prep-timing"
    proc = subprocess.Popen(
        [*cmd, str(timing), *PREP], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV
    )
    started, first, last = time.monotonic(), None, None
    while proc.poll() is None:
        on_disk = len(list(timing.glob("*.h5"))) if timing.exists() else 0
        first = first or (on_disk and time.monotonic() - started)
        last = last or (on_disk == total and time.monotonic() - started)
        time.sleep(0.01)
    seconds = time.monotonic() - started
    first, last = first or 0.0, last or seconds
    print(
        f"prep: uninterrupted run {seconds:.1f} s, {total} shards, written from "
        f"{first:.1f} s to {last:.1f} s; kills at random moments until the last shard is written"
    )
    done, writing, same, rounds, stale, taken = 0, 0, 0, 0, 0, 0
    for attempt in range(1, 3 * kills + 1):
        if done >= kills:
            break
        out, log = work / f"prep-{attempt}", work / f"prep-{attempt}.log"
        notes = []
        for _ in range(rng.randint(1, 3)):
            # a resumed run starts up as long, then writes only the shards still missing
            left = total - (len(list(out.glob("*.h5"))) if out.exists() else 0)
            with open(log, "ab") as f:
                proc = subprocess.Popen([*cmd, str(out), *PREP], stdout=f, stderr=f, env=ENV)
            moment = rng.uniform(0.0, first + (last - first) * left / total)
            if kill_after(proc, moment):
                on_disk = len(list(out.glob("*.h5")))
                done += 1
                writing += 0 < on_disk < total
                notes.append(f"kill at {moment:.2f} s ({on_disk}/{total} shards)")
            else:
                notes.append(f"ran to its end before {moment:.2f} s")
            stale += len(list(out.glob(".*.tmp*")))
        if not any(n.startswith("kill") for n in notes):
            continue  # nothing was interrupted: no outcome to compare
        rounds += 1
        final = subprocess.run([*cmd, str(out), *PREP], capture_output=True, text=True, env=ENV)
        taken += log.read_text(errors="replace").count("taking over the lock")
        taken += final.stderr.count("taking over the lock")
        identical = final.returncode == 0 and same_files(ref, out)
        same += identical
        print(f"  round {rounds}: " + ", ".join(notes) + f"; resumed: {verdict(identical)}")
    print(
        f"prep: {done} kills in {rounds} rounds ({writing} while shards were being written); "
        f"{stale} temp files left by kills, all cleared; {taken} locks of killed runs taken "
        f"over; {same} of {rounds} outcomes byte-identical to the uninterrupted run"
    )
    return same == rounds


def same_files(a: Path, b: Path) -> bool:
    """Every file of a in b, byte for byte, and no other (the lock file aside)."""
    names = {p.name for p in a.iterdir()} - {".kcolor.lock"}
    if names != {p.name for p in b.iterdir()} - {".kcolor.lock"}:
        return False
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


# --- fit ----------------------------------------------------------------------------------


def soak_fit(work: Path, kills: int, rng: random.Random) -> bool:
    photos = make_photos(work / "fit-photos", n=24, size=32, seed=1)
    shards = work / "fit-shards"
    subprocess.run(
        [sys.executable, "-m", "kcolor", "prep", str(photos), str(shards), "--size", "32",
         "--val-fraction", "0.25", "--shard-size", "6", "--workers", "2"],
        check=True, capture_output=True, env=ENV,
    )  # fmt: skip
    cmd = [sys.executable, "-m", "kcolor", "fit", str(shards)]
    ref = work / "fit-ref"
    log = work / "fit-ref.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([*cmd, str(ref), *FIT], stdout=f, stderr=f, env=ENV)
        start_up = wait_for_training(proc, log)
        started = time.monotonic()
        if proc.wait() != 0:
            raise SystemExit(f"fit: the uninterrupted run failed; see {log}")
    seconds = time.monotonic() - started
    steps = latest_step(ref)
    print(f"fit: uninterrupted run {start_up + seconds:.0f} s ({seconds:.1f} s of {steps} steps)")
    reference = fit_outcome(ref)
    done, same, rounds, stale, taken = 0, 0, 0, 0, 0
    for attempt in range(1, 3 * kills + 1):
        if done >= kills:
            break
        run, log = work / f"fit-{attempt}", work / f"fit-{attempt}.log"
        notes = []
        for _ in range(rng.randint(1, 2)):
            left = (steps - latest_step(run)) / steps if run.exists() else 1.0
            with open(log, "ab") as f:
                offset = f.tell()
                proc = subprocess.Popen([*cmd, str(run), *FIT], stdout=f, stderr=f, env=ENV)
            wait_for_training(proc, log, offset)
            moment = rng.uniform(0.0, seconds * left)
            if kill_after(proc, moment):
                done += 1
                notes.append(f"kill {moment:.1f} s into training (last checkpoint: step "
                             f"{latest_step(run)})")  # fmt: skip
            else:
                notes.append(f"ran to its end before {moment:.1f} s")
            stale += count_stale(run)
        if not any(n.startswith("kill") for n in notes):
            continue  # nothing was interrupted: no outcome to compare
        rounds += 1
        final = subprocess.run([*cmd, str(run), *FIT], capture_output=True, text=True, env=ENV)
        taken += final.stdout.count("taking over the lock")
        taken += log.read_text(errors="replace").count("taking over the lock")
        outcome = fit_outcome(run) if final.returncode == 0 else {}
        identical = outcome == reference
        same += identical
        print(f"  round {rounds}: " + ", ".join(notes) + f"; resumed: {verdict(identical)}")
        if final.returncode:
            print(final.stderr[-2000:])
        elif not identical:
            differ = sorted(
                k for k in reference.keys() | outcome.keys() if reference.get(k) != outcome.get(k)
            )
            print(f"    differ: {', '.join(differ[:8])}")
    print(
        f"fit: {done} kills in {rounds} rounds; {stale} temp files left by kills, all cleared; "
        f"{taken} locks of killed runs taken over; {same} of {rounds} outcomes bit-identical "
        "to the uninterrupted run (weights and optimizer state)"
    )
    return same == rounds


def wait_for_training(proc: subprocess.Popen, log: Path, offset: int = 0) -> float:
    """Seconds until the run prints its `Training` line (its start-up is over) into log
    after `offset`."""
    started = time.monotonic()
    while proc.poll() is None and b"\nTraining " not in log.read_bytes()[offset:]:
        time.sleep(0.05)
    return time.monotonic() - started


def latest_step(run: Path) -> int:
    state = run / "ckpt" / "checkpoint"
    if not state.exists():
        return 0
    first = state.read_text().splitlines()[0]  # model_checkpoint_path: "ckpt-17"
    return int(first.rsplit("-", 1)[1].rstrip('"'))


def count_stale(run: Path) -> int:
    ckpt = run / "ckpt"
    found = (
        [p for p in ckpt.iterdir() if "_temp" in p.name or ".tmp" in p.name]
        if ckpt.exists()
        else []
    )
    return len(found) + len(list(run.glob(".*tmp*")))


def fit_outcome(run: Path) -> dict:
    """name -> bytes of every tensor of the last checkpoint (but the save counter) and of
    model.keras's weights; plus the temp files left over (there should be none)."""
    import tensorflow as tf

    out = {}
    reader = tf.train.load_checkpoint(str(run / "ckpt"))
    for name in reader.get_variable_to_shape_map():
        # the object graph is metadata: a run resumed only to finish its last epoch end
        # never calls the model in training, and Keras tracks a little less of it
        if not name.startswith(("save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH")):
            out["ckpt:" + name] = np.asarray(reader.get_tensor(name)).tobytes()
    with zipfile.ZipFile(run / "model.keras") as z:
        weights = h5py.File(io.BytesIO(z.read("model.weights.h5")), "r")
        weights.visititems(
            lambda name, obj: (
                out.__setitem__("keras:" + name, obj[()].tobytes())
                if isinstance(obj, h5py.Dataset)
                else None
            )
        )
    out["stale"] = count_stale(run)
    return out


# --- both ---------------------------------------------------------------------------------


def kill_after(proc: subprocess.Popen, seconds: float) -> bool:
    """SIGKILL proc after `seconds` unless it ended before; whether it was killed."""
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def verdict(identical: bool) -> str:
    return "identical" if identical else "DIFFERENT"


def make_photos(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """n smooth, colorful JPEG photos (sums of low-frequency waves per channel)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    for i in range(n):
        waves = [
            sum(np.sin(f[0] * y + f[1] * x + rng.uniform(0, 2 * np.pi))
                for f in rng.uniform(0.2, 2.0, (3, 2)) * 2 * np.pi / size)
            for _ in range(3)
        ]  # fmt: skip
        rgb = np.stack(waves, -1)
        rgb = (rgb - rgb.min()) / max(float(np.ptp(rgb)), 1e-6) * 255
        Image.fromarray(rgb.astype(np.uint8)).save(root / f"photo{i:04d}.jpg", quality=95)
    return root


if __name__ == "__main__":
    sys.exit(main())
