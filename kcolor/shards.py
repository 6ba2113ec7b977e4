"""HDF5 shards: the on-disk contract between `kcolor prep` and training.

    kcolor prep SOURCE OUT     # writes OUT/{split}-{k:05d}-of-{n:05d}.h5 and OUT/stats.json

One shard holds N images of S x S pixels (N is bounded: 1024 by default), each
dataset contiguous and written once:

    L           (N, S, S) uint8   color.encode_l(L), L in [0, 100]
    bins        (N, S, S) uint16  nearest ab bin of each pixel, in [0, Q)
    label       (N,)      int32   class label, -1 when none
    path        (N,)      str     source file, relative to SOURCE (UTF-8)
    bin_counts  (Q,)      int64   pixels per bin over this shard

The root attributes describe the shard (format_version, bin_table, bin_centres,
image_size, split, shard_index, num_shards, num_images, settings as JSON, and
problem_counts: JSON of the inputs skipped or converted per kind), so
readers need nothing but the path. stats.json sums the train shards' bin_counts.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import h5py
import numpy as np

from kcolor import color
from kcolor.photo import atomic_write

FORMAT_VERSION = 1
SPLITS = ("train", "val")
STATS_FILE = "stats.json"
REPORT_FILE = "report.txt"
_SHARD_RE = re.compile(r"^(train|val)-(\d{5})-of-(\d{5})\.h5$")
# Settings that may differ between shards of one dataset (machines mount SOURCE elsewhere).
_LOCAL_SETTINGS = ("source",)


def shard_name(split: str, index: int, num_shards: int) -> str:
    """'train-00003-of-00017.h5'."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.h5"


def report_name(split: str, index: int) -> str:
    """The per-shard problem report, written together with the shard."""
    return f"report-{split}-{index:05d}.txt"


def parse_shard_name(name: str) -> tuple[str, int, int] | None:
    """'train-00003-of-00017.h5' -> ('train', 3, 17); None for other names."""
    m = _SHARD_RE.match(name)
    return (m[1], int(m[2]), int(m[3])) if m else None


def stale_temp_files(root: Path, final_name: str | None = None) -> list[Path]:
    """Temp files (kcolor.photo.temp_path) of `final_name`, or of any file, in `root`: leftovers of
    interrupted runs when no other run writes into `root` (see kcolor.lock)."""
    name = re.escape(final_name) if final_name else ".+"
    pattern = re.compile(rf"^\.{name}\.\d+\.tmp(\.\w+)?$")
    return sorted(p for p in Path(root).glob(".*.tmp*") if pattern.match(p.name))


def write_shard(
    path: Path,
    *,
    L: np.ndarray,
    bins: np.ndarray,
    label: np.ndarray,
    paths: list[str],
    table: color.BinTable,
    split: str,
    shard_index: int,
    num_shards: int,
    settings: dict,
    bin_counts: np.ndarray | None = None,
    report: str | None = None,
    extra_attrs: dict | None = None,
) -> np.ndarray:
    """Write one shard (and its report) atomically: temp files, then os.replace.

    The report, if given, is renamed into place before the shard, so a finished
    shard always has its report beside it.

    Args:
        L: (N, S, S) uint8 encoded L.  bins: (N, S, S) uint16.  label: (N,) int32.
        paths: N paths relative to SOURCE.  settings: JSON-serializable prep settings.
        bin_counts: (Q,) counts of `bins` if the caller has them (else counted here).
    Returns:
        (Q,) int64 bin counts of the shard.
    """
    path = Path(path)
    n = len(paths)
    size = int(L.shape[1]) if L.ndim == 3 else 0
    if L.shape != (n, size, size) or bins.shape != L.shape or np.shape(label) != (n,):
        raise ValueError(
            f"{path}: expected L and bins of shape ({n}, S, S) and label ({n},), "
            f"got {L.shape}, {bins.shape}, {np.shape(label)}"
        )
    counts = count_bins(bins, table.size) if bin_counts is None else bin_counts
    if np.shape(counts) != (table.size,) or int(np.sum(counts)) != n * size * size:
        raise ValueError(
            f"{path}: expected {table.size} bin counts summing to {n}*{size}*{size}, "
            f"got {np.shape(counts)} summing to {int(np.sum(counts))}"
        )
    attrs = {
        "format_version": FORMAT_VERSION,
        **table.to_attrs(),
        "image_size": size,
        "split": split,
        "shard_index": shard_index,
        "num_shards": num_shards,
        "num_images": n,
        "settings": json.dumps(settings, sort_keys=True),
        **(extra_attrs or {}),
    }
    # The file is built in memory (HDF5's core driver: the same bytes as on disk) and
    # written with one plain write, so a full disk is one clean OSError naming the file,
    # not HDF5 errors from a half-flushed file (again when h5py frees it).
    with h5py.File(f"{path.name}.mem", "w", driver="core", backing_store=False) as f:
        f.create_dataset("L", data=np.asarray(L, np.uint8))
        f.create_dataset("bins", data=np.asarray(bins, np.uint16))
        f.create_dataset("label", data=np.asarray(label, np.int32))
        f.create_dataset("path", data=np.array(paths, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("bin_counts", data=np.asarray(counts, np.int64))
        f.attrs.update(attrs)
        f.flush()
        image = f.id.get_file_image()
    if report is not None:
        _write_atomic(path.with_name(report_name(split, shard_index)), report.encode("utf-8"))
    _write_atomic(path, image)
    return counts


def count_bins(bins: np.ndarray, q: int) -> np.ndarray:
    """(Q,) int64 pixels per bin of a uint16 bin array of any shape.

    np.bincount stalls on runs of equal values (photos are full of them), each
    increment waiting for the last; spreading consecutive pixels over LANES
    histograms lets them overlap, about 3x faster.
    """
    flat = np.asarray(bins).reshape(-1)
    if flat.size and int(flat.max()) >= q:
        raise ValueError(f"bins: expected indices below {q}, found {int(flat.max())}")
    out = np.zeros(q, np.int64)
    for start in range(0, flat.size, _COUNT_CHUNK):
        part = flat[start : start + _COUNT_CHUNK]
        lanes = _lane_offsets(q)[: part.size]
        out += np.bincount(part + lanes, minlength=_LANES * q).reshape(_LANES, q).sum(0)
    return out


_LANES = 8
_COUNT_CHUNK = 1 << 19


@functools.lru_cache(maxsize=4)
def _lane_offsets(q: int) -> np.ndarray:
    return (np.arange(_COUNT_CHUNK, dtype=np.intp) % _LANES) * q


def read_meta(path: Path) -> dict:
    """The root attributes of a shard as Python values.

    Returns the attributes (`settings` parsed from JSON, `bin_centres` as (Q, 2)
    float32) plus `table`: the BinTable named by `bin_table`, checked against the
    stored centres, and `path`.
    """
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
    except OSError as e:
        raise ValueError(f"{path}: expected an HDF5 shard, could not open it ({e})") from None
    missing = {"format_version", "bin_table", "bin_centres", "image_size"} - attrs.keys()
    if missing:
        raise ValueError(f"{path}: expected shard attributes, missing {sorted(missing)}")
    meta = {k: v.item() if isinstance(v, np.generic) else v for k, v in attrs.items()}
    if meta["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"{path}: expected format_version {FORMAT_VERSION}, found {meta['format_version']}"
        )
    meta["settings"] = json.loads(meta.get("settings", "{}"))
    meta["bin_centres"] = np.asarray(meta["bin_centres"], np.float32)
    table = color.get_bin_table(meta["bin_table"])
    if not np.array_equal(table.centres, meta["bin_centres"]):
        raise ValueError(
            f"{path}: bin centres stored for {table.name} differ from kcolor's {table.name} table"
        )
    meta["table"] = table
    meta["path"] = path
    return meta


def read_shard(path: Path) -> dict:
    """All datasets of a shard in memory: L, bins, label, path (list of str), bin_counts,
    plus `meta` (see read_meta). Meant for tests and tools; training reads slabs."""
    meta = read_meta(path)
    with h5py.File(path, "r") as f:
        out = {k: f[k][()] for k in ("L", "bins", "label", "bin_counts")}
        out["path"] = list(f["path"].asstr()[()])
    out["meta"] = meta
    return out


def validate_shard(path: Path) -> dict:
    """Check a shard's datasets against its attributes without reading the pixels.

    Returns read_meta(path); raises ValueError naming the file and the mismatch.
    """
    meta = read_meta(path)
    n, s, q = meta.get("num_images"), meta["image_size"], meta["table"].size
    expected = {
        "L": ((n, s, s), np.uint8),
        "bins": ((n, s, s), np.uint16),
        "label": ((n,), np.int32),
        "path": ((n,), None),
        "bin_counts": ((q,), np.int64),
    }
    with h5py.File(path, "r") as f:
        for name, (shape, dtype) in expected.items():
            if name not in f:
                raise ValueError(f"{path}: expected dataset {name!r}, found none")
            ds = f[name]
            if ds.shape != shape or (dtype is not None and ds.dtype != dtype):
                raise ValueError(
                    f"{path}: dataset {name!r}: expected {shape} {np.dtype(dtype or object)}, "
                    f"found {ds.shape} {ds.dtype}"
                )
        total = int(f["bin_counts"][()].sum())
    if total != n * s * s:
        raise ValueError(f"{path}: bin_counts sum to {total}, expected {n}*{s}*{s} pixels")
    return meta


def list_shards(root: Path, split: str) -> list[Path]:
    """The shards of `split` in `root`, sorted by index.

    Raises FileNotFoundError when there are none, ValueError when they disagree on
    the number of shards (leftovers of an earlier run).
    """
    root = Path(root)
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    found = []
    if root.is_dir():
        for p in root.iterdir():
            parsed = parse_shard_name(p.name)
            if parsed and parsed[0] == split:
                found.append((parsed[1], parsed[2], p))
    if not found:
        raise FileNotFoundError(
            f"{root}: expected {split}-NNNNN-of-NNNNN.h5 shards (made by `kcolor prep`), found none"
        )
    found.sort()
    totals = {n for _, n, _ in found}
    if len(totals) > 1:
        a = next(p for _, n, p in found if n == min(totals))
        b = next(p for _, n, p in found if n == max(totals))
        raise ValueError(
            f"{b}: expected -of-{min(totals):05d} like {a.name}, found -of-{max(totals):05d}"
        )
    return [p for _, _, p in found]


def missing_shards(paths: list[Path]) -> list[int]:
    """Indices absent from a `list_shards` result (its -of-N says how many there should be)."""
    parsed = [parse_shard_name(Path(p).name) for p in paths]
    have = {k for _, k, _ in parsed}
    return [k for k in range(parsed[0][2]) if k not in have] if parsed else []


def check_compatible(paths: list[Path]) -> dict:
    """Check that shards share format, bin table and image size; return the first's meta.

    A mismatch raises ValueError naming both files and the difference.
    """
    if not paths:
        raise ValueError("shards: expected at least one shard, got none")
    first = read_meta(paths[0])
    for p in paths[1:]:
        meta = read_meta(p)
        for key in ("format_version", "bin_table", "image_size"):
            if meta[key] != first[key]:
                raise ValueError(f"{p}: {key} is {meta[key]!r}, but {paths[0]} has {first[key]!r}")
    return first


def write_stats(root: Path) -> dict:
    """Sum the bin counts of all train shards in `root` into root/stats.json.

    This is the merge step of a prep split across machines: it needs every train
    shard, and the shards must come from the same settings. Returns the stats.
    """
    root = Path(root)
    paths = list_shards(root, "train")
    missing = missing_shards(paths)
    if missing:
        shown = ", ".join(f"{k:05d}" for k in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise ValueError(
            f"{root}: expected {len(paths) + len(missing)} train shards, found {len(paths)} "
            f"(missing {shown})"
        )
    first = check_compatible(paths)
    shared = {k: v for k, v in first["settings"].items() if k not in _LOCAL_SETTINGS}
    counts = np.zeros(first["table"].size, np.int64)
    images = 0
    for p in paths:
        meta = validate_shard(p)
        theirs = {k: v for k, v in meta["settings"].items() if k not in _LOCAL_SETTINGS}
        if theirs != shared:
            diff = sorted(
                k for k in shared.keys() | theirs.keys() if shared.get(k) != theirs.get(k)
            )
            raise ValueError(
                f"{p}: made with other settings than {paths[0].name} (differ in {diff})"
            )
        with h5py.File(p, "r") as f:
            counts += f["bin_counts"][()]
        images += meta["num_images"]
    stats = {
        "format_version": FORMAT_VERSION,
        "bin_table": first["bin_table"],
        "image_size": first["image_size"],
        "split": "train",
        "bin_counts": [int(c) for c in counts],
        "pixels": int(counts.sum()),
        "images": images,
        "shards": len(paths),
    }
    _write_text_atomic(root / STATS_FILE, json.dumps(stats, indent=1) + "\n")
    return stats


def load_stats(root: Path) -> dict:
    """root/stats.json with `bin_counts` as a (Q,) int64 array, checked for consistency."""
    path = Path(root) / STATS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: expected the bin frequencies written by `kcolor prep`, found no file"
        )
    stats = json.loads(path.read_text(encoding="utf-8"))
    if stats.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: expected format_version {FORMAT_VERSION}, found {stats.get('format_version')}"
        )
    stats["bin_counts"] = np.asarray(stats["bin_counts"], np.int64)
    q = color.get_bin_table(stats["bin_table"]).size
    if stats["bin_counts"].shape != (q,) or int(stats["bin_counts"].sum()) != stats["pixels"]:
        raise ValueError(
            f"{path}: expected {q} bin counts summing to pixels={stats['pixels']}, found "
            f"{stats['bin_counts'].size} summing to {int(stats['bin_counts'].sum())}"
        )
    return stats


def merge_reports(root: Path) -> Path:
    """Concatenate the per-shard reports in `root` into root/report.txt (train first)."""
    root = Path(root)
    parts = sorted(root.glob("report-*-?????.txt"))
    text = "".join(p.read_text(encoding="utf-8") for p in parts)
    _write_text_atomic(root / REPORT_FILE, text)
    return root / REPORT_FILE


def _write_text_atomic(path: Path, text: str) -> None:
    _write_atomic(path, text.encode("utf-8"))


class WriteError(Exception):
    """A file of OUT could not be written: one line naming it and the reason."""


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` with kcolor's one atomic write (photo.atomic_write); WriteError names
    the file when it fails (a full disk)."""
    try:
        atomic_write(path, lambda tmp: tmp.write_bytes(data))
    except OSError as e:
        reason = e.strerror or str(e).splitlines()[0]
        raise WriteError(f"{path}: could not write it ({reason})") from None
