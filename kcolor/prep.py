"""Photos -> HDF5 shards of L and ab bins, plus the train split's bin frequencies.

    kcolor prep data/miniplaces work/shards                 # a Miniplaces root
    kcolor prep ~/photos work/shards --size 64 --seed 1     # any folder of images

Every shard is made by one worker process from a fixed list of images: decode
(PIL), centre-crop, look up the exact L and bin of each 24-bit color in a table
built once before the workers fork, write to a temp file, rename. What goes into
which shard depends only on SOURCE and the settings, so a rerun skips finished
shards and reproduces the rest byte for byte. One prep at a time writes into OUT
(kcolor.lock); it clears the temp files that killed runs left. Bad input is skipped
(or converted) and reported as one `path: problem` line, never silently. Numpy, PIL
and h5py only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from kcolor import color, encode, lock, shards
from kcolor.sources import NOTE_KINDS, SKIP_KINDS, Item, list_sources


class PrepError(Exception):
    """A one-line reason why prep cannot start or had to stop (the CLI prints it)."""


@dataclasses.dataclass(frozen=True)
class PrepSettings:
    """What decides the shards' content; stored in each shard as JSON."""

    size: int = 128  # output images are size x size (short side resized, centre crop)
    bin_table: str = "zhang313"  # color.get_bin_table name: zhang313 or grid18
    seed: int = 0  # folder split and the order of images across shards
    val_fraction: float = 0.05  # share of a plain folder that goes to val
    shard_size: int = 1024  # images per shard, unless num_shards is given
    num_shards: int | None = None  # shards per split (overrides shard_size)

    def check(self) -> None:
        color.get_bin_table(self.bin_table)  # raises ValueError naming the choices
        for name, value, low in (("size", self.size, 8), ("shard_size", self.shard_size, 1)):
            if value < low:
                raise ValueError(f"{name}: expected at least {low}, got {value}")
        if self.num_shards is not None and self.num_shards < 1:
            raise ValueError(f"num_shards: expected at least 1, got {self.num_shards}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: expected a value in [0, 1), got {self.val_fraction}")


@dataclasses.dataclass
class PrepSummary:
    out: Path
    images: dict  # split -> images in the selected shards
    problems: Counter  # kind -> count, over the selected shards
    shards_new: int
    shards_resumed: int
    pixels: int
    seconds: float
    images_new: int  # images written by this run (for images/s)
    ignored: int  # files skipped for their extension
    stats: Path | None  # stats.json when every train shard is present

    def format(self) -> str:
        split_text = " and ".join(f"{n:,} {s}" for s, n in self.images.items())
        lines = [
            f"Wrote {split_text} images in {self.shards_new + self.shards_resumed} shards "
            f"({self.shards_new} new, {self.shards_resumed} already done) to {self.out}",
        ]
        for title, kinds in (("Skipped", SKIP_KINDS), ("Converted", NOTE_KINDS)):
            found = [(k, self.problems[k]) for k in kinds if self.problems[k]]
            if found:
                total = sum(n for _, n in found)
                lines.append(f"{title} {total:,}: " + ", ".join(f"{k} {n:,}" for k, n in found))
        if self.ignored:
            lines.append(f"Ignored {self.ignored:,} file(s) without an image extension")
        if self.problems:
            lines.append(f"Problems listed in {self.out / shards.REPORT_FILE}")
        rate = self.images_new / self.seconds if self.seconds > 0 else 0.0
        lines.append(f"{self.pixels:,} pixels; {self.seconds:.1f} s; {rate:,.0f} images/s")
        lines.append(
            f"Bin frequencies in {self.stats}"
            if self.stats
            else "stats.json not written: not every train shard is here yet; "
            "run `kcolor prep --merge-stats OUT` once they are"
        )
        return "\n".join(lines)


# --- planning ---------------------------------------------------------------


def plan(items: dict[str, list[Item]], settings: PrepSettings) -> list[encode.ShardTask]:
    """Cut each split into shards: a seeded shuffle, then contiguous, balanced slices.

    The shuffle mixes categories (Miniplaces lists are sorted by class) so that any
    single shard is a fair sample; it depends only on the seed and the listing.
    """
    tasks = []
    for split_id, split in enumerate(shards.SPLITS):
        split_items = items.get(split, [])
        count = len(split_items)
        if count == 0:
            continue
        n = settings.num_shards or max(1, math.ceil(count / settings.shard_size))
        order = np.random.default_rng([settings.seed, split_id]).permutation(count)
        bounds = [round(k * count / n) for k in range(n + 1)]
        for k in range(n):
            chunk = tuple(split_items[i] for i in order[bounds[k] : bounds[k + 1]])
            tasks.append(encode.ShardTask(split, k, n, chunk))
    return tasks


def parse_shard_indices(specs: list[str] | tuple[str, ...]) -> set[int] | None:
    """['0-3', '7'] -> {0, 1, 2, 3, 7}; empty -> None (all shards)."""
    picked = set()
    for spec in specs:
        try:
            low, _, high = str(spec).partition("-")
            picked.update(range(int(low), int(high or low) + 1))
        except ValueError:
            raise ValueError(f"shard index: expected I or I-J, got {spec!r}") from None
    return picked or None


def _listing_digest(items: list[Item]) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(f"{it.rel}\t{it.label}\t{it.problem}\n".encode())
    return h.hexdigest()[:16]


# --- the run ----------------------------------------------------------------


def prepare(
    source: Path | list[Path],
    out: Path,
    settings: PrepSettings = PrepSettings(),
    *,
    workers: int | None = None,
    shard_indices: set[int] | None = None,
    strict: bool = False,
    log=None,
    progress=None,
) -> PrepSummary:
    """Write the shards of SOURCE into OUT (only `shard_indices`, if given), resuming.

    Args:
        workers: processes (default os.cpu_count()); each makes whole shards.
        strict: stop with PrepError at the first problem instead of reporting it.
        log: called with one-line status messages.
        progress: called with (images done, images to do) while working.
    Raises:
        PrepError: SOURCE or OUT unusable, settings that disagree with shards
            already in OUT, or (strict) the first bad input.
    """
    start = time.monotonic()
    log = log or (lambda _msg: None)
    sources = [Path(x) for x in source] if isinstance(source, list | tuple) else [Path(source)]
    out = Path(out)
    workers = workers or os.cpu_count() or 1
    try:
        settings.check()
        if workers < 1:
            raise ValueError(f"workers: expected at least 1, got {workers}")
        if out.exists() and not out.is_dir():
            raise ValueError(f"{out}: expected an output folder, found a file")
        source, listing = list_sources(
            sources, seed=settings.seed, val_fraction=settings.val_fraction, exclude=out
        )
    except ValueError as e:
        raise PrepError(str(e)) from None
    tasks = plan(listing.items, settings)
    if not tasks:
        raise PrepError(f"{' + '.join(map(str, sources))}: expected images, found none")
    counts = {s: len(v) for s, v in listing.items.items()}
    found = " and ".join(f"{n:,} {s}" for s, n in counts.items() if n)
    names = " + ".join(map(str, sources))
    log(f"Found {found} files in {names} ({listing.layout} layout)")
    num = {t.split: t.num_shards for t in tasks}
    if shard_indices is not None:
        bad = sorted(i for i in shard_indices if not 0 <= i < max(num.values()))
        if bad:
            raise PrepError(f"--shard-index: expected 0..{max(num.values()) - 1}, got {bad[0]}")
        tasks = [t for t in tasks if t.index in shard_indices]
    recipe = _recipe(settings, sources, listing, num)
    _make_folder(out)
    with _locked(out, log):
        todo, done = _resume(out, tasks, num, recipe)
        if done:
            log(f"Resuming: {len(done)} of {len(tasks)} shards already in {out}")
        results = _run(todo, workers, settings, recipe, source, out, strict, log, progress)
        stats = _finish(out, num.get("train", 0))
    images, problems = Counter(), Counter()
    for task, meta in done:
        images[task.split] += meta["num_images"]
        problems.update(json.loads(meta.get("problem_counts", "{}")))
    for task, r in zip(todo, results, strict=True):
        images[task.split] += r["images"]
        problems.update(r["problems"])
    return PrepSummary(
        out=out,
        images={s: images[s] for s in shards.SPLITS if s in num},
        problems=problems,
        shards_new=len(todo),
        shards_resumed=len(done),
        pixels=sum(images.values()) * settings.size**2,
        seconds=time.monotonic() - start,
        images_new=sum(r["images"] for r in results),
        ignored=listing.ignored,
        stats=stats,
    )


def _recipe(settings: PrepSettings, sources: list[Path], listing, num: dict) -> dict:
    """What decides the shards' content, stored in each: a rerun resumes only shards
    made by the same recipe."""
    return {
        **dataclasses.asdict(settings),
        "format_version": shards.FORMAT_VERSION,
        "source": " + ".join(str(x.resolve()) for x in sources),
        "layout": listing.layout,
        "num_shards": num,
        "listing": {s: _listing_digest(v) for s, v in listing.items.items()},
    }


def _make_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        where = f"{e.filename}: " if e.filename and Path(e.filename) != out else ""
        reason = "a broken symbolic link" if out.is_symlink() else e.strerror
        raise PrepError(f"{out}: could not create the output folder ({where}{reason})") from None


@contextlib.contextmanager
def _locked(out: Path, log):
    """Hold OUT's lock; clear the temp files of killed runs (only a holder may: another
    run's temp files are its work in progress); one line for any write error."""
    try:
        with lock.hold(out, "kcolor prep", echo=log):
            for stale in shards.stale_temp_files(out):
                stale.unlink(missing_ok=True)
            yield
    except (lock.LockError, shards.WriteError) as e:
        raise PrepError(str(e)) from None
    except OSError as e:
        reason = e.strerror or str(e).splitlines()[0]
        raise PrepError(f"{e.filename or out}: {reason}") from None


def _finish(out: Path, n_train: int) -> Path | None:
    """report.txt, and stats.json once every train shard is here (else None)."""
    shards.merge_reports(out)
    if not all((out / shards.shard_name("train", k, n_train)).exists() for k in range(n_train)):
        return None
    try:
        shards.write_stats(out)
    except ValueError as e:
        raise PrepError(str(e)) from None
    return out / shards.STATS_FILE


def _resume(out: Path, tasks: list[encode.ShardTask], num: dict, recipe: dict):
    """Split tasks into (to do, done with their meta).

    A finished shard counts only if it was made from the same listing and settings;
    anything else in OUT that would mix with this run is an error, not a guess.
    """
    for p in sorted(out.glob("*.h5")):
        parsed = shards.parse_shard_name(p.name)
        if parsed and parsed[2] != num.get(parsed[0]):
            raise PrepError(
                f"{p}: made for {parsed[2]} {parsed[0]} shards, this run makes "
                f"{num.get(parsed[0], 0)}; delete the old shards or choose another OUT"
            )
    mine = {k: v for k, v in recipe.items() if k != "source"}
    todo, done = [], []
    for task in tasks:
        final = out / task.name
        report = out / shards.report_name(task.split, task.index)
        if not (final.exists() and report.exists()):
            todo.append(task)
            continue
        try:
            meta = shards.validate_shard(final)
        except ValueError as e:
            raise PrepError(f"{e}; delete it to remake it") from None
        theirs = {k: v for k, v in meta["settings"].items() if k != "source"}
        if theirs != mine:
            diff = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
            raise PrepError(
                f"{final}: made with other settings or another listing (differ in "
                f"{', '.join(diff)}); delete it or choose another OUT"
            )
        done.append((task, meta))
    return todo, done


def _run(todo, workers, settings, recipe, source, out, strict, log, progress) -> list[dict]:
    """Make the shards of `todo`, in worker processes when there are several."""
    if not todo:
        return []
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    log(f"Loading the {settings.bin_table} color lookup table (the first run builds it)...")
    total = sum(len(t.items) for t in todo)
    done = multiprocessing.RawArray("q", len(todo))
    last = [0.0]

    def poll(force=False):
        if progress and (force or time.monotonic() - last[0] > 0.2):
            last[0] = time.monotonic()
            progress(sum(done), total)

    context = encode.WorkerContext(
        tasks=todo,
        lut=encode.rgbx_lookup(settings.bin_table),
        settings=settings,
        recipe=recipe,
        source=str(source),
        display=str(source).rstrip("/") or "/",
        out=out,
        strict=strict,
        done=done,
        stop=multiprocessing.RawValue("b", 0),
        parent=os.getpid(),
    )
    encode.set_context(context)
    workers = min(workers, len(todo))
    log(f"Making {len(todo)} shards ({total:,} images) with {workers} worker(s)...")
    try:
        if workers == 1:
            encode.set_context(dataclasses.replace(context, poll=poll))
            results = [encode.make_shard(i) for i in range(len(todo))]
        else:
            results = [None] * len(todo)
            ctx = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(
                workers, mp_context=ctx, initializer=encode.init_worker
            ) as pool:
                pending = {pool.submit(encode.make_shard, i) for i in range(len(todo))}
                try:
                    while pending:
                        finished, pending = wait(pending, 0.2, return_when=FIRST_COMPLETED)
                        for f in finished:
                            r = f.result()
                            results[r["slot"]] = r
                        poll()
                except BaseException:
                    context.stop.value = 1  # workers stop at their next image
                    for f in pending:
                        f.cancel()
                    raise
        poll(force=True)
        return results
    except (encode.BadInput, encode.Stop) as e:
        raise PrepError(str(e) or "stopped") from None
    except shards.WriteError as e:
        raise PrepError(f"{e}; the shards written are kept: rerun to resume") from None
    except BrokenProcessPool:
        raise PrepError(f"{out}: a worker died (out of memory?); rerun to resume") from None
    except OSError as e:
        reason = e.strerror or str(e).splitlines()[0]
        raise PrepError(f"{e.filename or out}: could not write a shard ({reason})") from None
    finally:
        encode.set_context(None)


def merge_stats(out: Path) -> dict:
    """`kcolor prep --merge-stats OUT`: stats.json and report.txt from the shards in OUT."""
    out = Path(out)
    if not out.is_dir():
        raise PrepError(f"{out}: expected a folder of shards, found none")
    with _locked(out, log=None):
        try:
            stats = shards.write_stats(out)
        except (FileNotFoundError, ValueError) as e:
            raise PrepError(str(e)) from None
        shards.merge_reports(out)
    return stats
