"""Encoding photos into shard arrays: the 24-bit color table and the shard worker.

    kcolor prep SOURCE OUT     # prep.py plans the shards; make_shard fills one

make_shard decodes the photos of one shard (sources.load_rgbx), looks up the
exact L and bin of every pixel in one table indexed by its 24-bit color, skips
gray photos, and writes the shard with shards.write_shard. It runs in worker
processes forked after the table is loaded (they share it) or in-process.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import itertools
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from kcolor import color, shards
from kcolor.photo import atomic_write
from kcolor.sources import GRAY_FRACTION, GRAY_SPREAD, Item, Problem, load_rgbx

BATCH = 32  # images per table lookup (see make_shard)
COLORED = np.uint32(1 << 24)  # flag in rgbx_lookup: the color is not (nearly) gray


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """One shard to make: its place and the items that go into it, in order."""

    split: str
    index: int
    num_shards: int
    items: tuple[Item, ...]

    @property
    def name(self) -> str:
        return shards.shard_name(self.split, self.index, self.num_shards)


# --- the lookup table ---------------------------------------------------------


@functools.lru_cache(maxsize=2)
def rgbx_lookup(table_name: str) -> np.ndarray:
    """Bin, L and colorfulness of every 24-bit color in one (2^24,) uint32 table:
    bin | L_u8 << 16 | COLORED (when max(r, g, b) - min(r, g, b) > GRAY_SPREAD).

    Indexed by PIL's RGBX bytes read as a little-endian uint32 with the X byte masked
    off (r | g << 8 | b << 16): color.rgb24_lookup in PIL's byte order, saving a
    shuffle per pixel. One table instead of two halves the cache misses per pixel.
    Building it takes seconds, so it is cached on disk (KCOLOR_CACHE_DIR, default
    ~/.cache/kcolor), keyed by the source of color.py, the table name and GRAY_SPREAD.
    """
    src = Path(inspect.getsourcefile(color)).read_bytes()
    key = hashlib.sha256(src + f"{table_name} {GRAY_SPREAD}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("KCOLOR_CACHE_DIR") or Path.home() / ".cache" / "kcolor")
    path = cache / f"rgbx-{table_name}-{key}.npy"
    try:
        table = np.load(path)
        if table.shape == (1 << 24,) and table.dtype == np.uint32:
            return table
    except (OSError, ValueError):
        pass
    l_u8, bins = color.rgb24_lookup(table_name)
    table = bins.astype(np.uint32) | (l_u8.astype(np.uint32) << 16)
    table = np.ascontiguousarray(table.reshape(256, 256, 256).transpose(2, 1, 0)).reshape(-1)
    rgb = np.arange(1 << 24, dtype=np.uint32).view(np.uint8).reshape(-1, 4)[:, :3]
    table[rgb.max(1) - rgb.min(1) > GRAY_SPREAD] |= COLORED
    try:
        cache.mkdir(parents=True, exist_ok=True)
        for stale in shards.stale_temp_files(cache, path.name):  # 64 MiB each
            pid = int(stale.name[len(path.name) + 2 :].split(".", 1)[0])  # .NAME.PID.tmp...
            if not _alive(pid):  # else another prep's, in progress
                stale.unlink(missing_ok=True)

        def save(tmp):
            with open(tmp, "wb") as f:
                np.save(f, table)

        atomic_write(path, save)
    except OSError:
        pass  # an unwritable cache only costs time
    return table


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


# --- the worker ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WorkerContext:
    """What every prep worker reads. Set in the parent before forking (`set_context`):
    the workers inherit it, and the 64 MB lookup table is shared, not copied (nothing
    writes to it), which passing it to each worker would not be."""

    tasks: list  # [ShardTask], a worker makes tasks[slot]
    lut: np.ndarray  # rgbx_lookup(settings.bin_table)
    settings: object  # kcolor.prep.PrepSettings
    recipe: dict  # stored in each shard
    source: str  # the folder the items' paths are relative to
    display: str  # how problem lines name it
    out: Path
    strict: bool
    done: object  # multiprocessing.RawArray("q"): images done per slot
    stop: object  # multiprocessing.RawValue("b"): 1 = stop at the next image
    parent: int  # the parent's PID
    poll: object = None  # progress callback, in-process runs only


CONTEXT: WorkerContext | None = None
_BUFFERS: tuple | None = None  # a worker's image buffers, reused from shard to shard


def set_context(context: WorkerContext | None) -> None:
    global CONTEXT
    CONTEXT = context


class Stop(Exception):
    """Raised in a worker when the parent asked everyone to stop."""


class BadInput(Exception):
    """The first problem with the input, raised in strict mode (one line)."""


def make_shard(slot: int) -> dict:
    """Make one shard; return its counts. Runs in a worker (or in-process)."""
    st = CONTEXT
    task, size = st.tasks[slot], st.settings.size
    table = color.get_bin_table(st.settings.bin_table)
    L, bins, index, both = _buffers(len(task.items), size)
    counts = np.zeros(table.size, np.int64)
    labels, paths, lines, kinds = [], [], [], Counter()
    # Decoded images wait in `index` (their colors) and `pending` (their items) to be
    # looked up BATCH at a time, so that the table's hot entries stay in cache
    # instead of being evicted by each decode.
    pending: list[Item] = []

    def report(item: Item, problem: Problem) -> None:
        line = f"{st.display}/{item.rel}: {problem.message}"
        if st.strict:
            raise BadInput(line + " (--strict)")
        lines.append(line + "\n")
        kinds[problem.kind] += 1

    def look_up() -> None:
        m = len(pending)
        found = np.take(st.lut, index[:m], out=both[:m], mode="wrap")  # (m, S * S)
        keep = np.count_nonzero(found >= COLORED, axis=1) >= GRAY_FRACTION * size * size
        if not keep.all():
            for item in itertools.compress(pending, ~keep):
                report(item, Problem("grayscale", "grayscale photo (R, G and B equal)"))
            found = found[keep]
        k, c = len(paths), len(found)
        L[k : k + c].reshape(c, -1)[:] = found.view(np.uint8)[:, 2::4]
        bins[k : k + c].reshape(c, -1)[:] = found.view(np.uint16)[:, ::2]
        counts[:] += np.bincount(bins[k : k + c].reshape(-1), minlength=table.size)
        for item in itertools.compress(pending, keep):
            labels.append(item.label)
            paths.append(item.rel)
        pending.clear()

    for j, item in enumerate(task.items):
        if st.stop.value:
            raise Stop
        if item.problem:
            report(item, item.problem)
        else:
            row = index[len(pending)]
            loaded, problems = load_rgbx(os.path.join(st.source, item.rel), size, row)
            for problem in problems:
                report(item, problem)
            if loaded:
                np.bitwise_and(row, 0xFFFFFF, out=row)  # drop the X byte: r | g << 8 | b << 16
                pending.append(item)
                if len(pending) == BATCH:
                    look_up()
        st.done[slot] = j + 1
        if st.poll:
            st.poll()
    if pending:
        look_up()
    k = len(paths)
    shards.write_shard(
        st.out / task.name,
        L=L[:k],
        bins=bins[:k],
        label=np.asarray(labels, np.int32),
        paths=paths,
        table=table,
        split=task.split,
        shard_index=task.index,
        num_shards=task.num_shards,
        settings=st.recipe,
        bin_counts=counts,
        report="".join(lines),
        extra_attrs={"problem_counts": json.dumps(dict(sorted(kinds.items())))},
    )
    return {"slot": slot, "images": k, "problems": kinds}


def _buffers(n: int, size: int) -> tuple[np.ndarray, ...]:
    """L, bins, colors and lookups for n images, reused from shard to shard: fresh
    memory costs a page fault per page, as much as the lookups themselves."""
    global _BUFFERS
    have = _BUFFERS
    if have is None or have[0].shape[0] < n or have[0].shape[1] != size:
        have = (
            np.empty((n, size, size), np.uint8),
            np.empty((n, size, size), np.uint16),
            np.empty((BATCH, size * size), np.uint32),
            np.empty((BATCH, size * size), np.uint32),
        )
        _BUFFERS = have
    return have[0][:n], have[1][:n], have[2], have[3]


def init_worker() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    try:  # Linux: die with the parent (kill -9 included) instead of writing on alone
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != CONTEXT.parent:
        os._exit(1)
