"""tools/cap_crops.py: at most N train crops per source photo, in a root `kcolor prep` reads."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import write_miniplaces
from test_prep import read_all, run_prep

_spec = importlib.util.spec_from_file_location(
    "cap_crops", Path(__file__).parents[1] / "tools" / "cap_crops.py"
)
cap_crops = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cap_crops)


def _with_crops_csv(root: Path, sources: list[str]) -> Path:
    """Give a Miniplaces root's train crops the source photos `sources` (in list order)."""
    paths = [line.split()[0] for line in (root / "train.txt").read_text().splitlines()]
    rows = [f"{p},{s},128,0,0,0\n" for p, s in zip(paths, sources, strict=True)]
    (root / "crops.csv").write_text("path,source_id,short_side,x,y,hflip\n" + "".join(rows))
    return root


def test_cap_lines_keeps_the_first_n_per_photo_in_order():
    lines = ["a 0\n", "b 0\n", "c 1\n", "d 0\n", "\n", "e 1"]
    source_of = {"a": "p", "b": "p", "c": "q", "d": "p", "e": "q"}
    assert cap_crops.cap_lines(lines, source_of, 2) == ["a 0\n", "b 0\n", "c 1\n", "e 1\n"]
    assert cap_crops.cap_lines(lines, source_of, 1) == ["a 0\n", "c 1\n"]
    with pytest.raises(ValueError, match=r"train.txt:2: 'x' is not in crops.csv"):
        cap_crops.cap_lines(["a 0", "x 0"], source_of, 1)


def test_capped_root_preps_only_the_kept_crops(tmp_path, capsys):
    root = _with_crops_csv(
        write_miniplaces(tmp_path / "mini", n_train=7, n_val=2, size=16), list("pppppqr")
    )
    out = tmp_path / "capped"
    assert cap_crops.main([str(root), str(out), "--per-photo", "2"]) == 0
    assert "Kept 4 of 7 train crops (at most 2 per photo)" in capsys.readouterr().out
    assert (out / "val.txt").read_text() == (root / "val.txt").read_text()
    kept = [line.split()[0] for line in (out / "train.txt").read_text().splitlines()]
    listed = [line.split()[0] for line in (root / "train.txt").read_text().splitlines()]
    assert kept == [listed[0], listed[1], listed[5], listed[6]]
    # rerunning over the same folder is fine (the images link is kept)
    assert cap_crops.main([str(root), str(out), "--per-photo", "2"]) == 0

    result = run_prep(out, tmp_path / "shards", "--size", 16, "--workers", 1)
    assert result.exit_code == 0, result.output
    assert "Wrote 4 train and 2 val images" in result.output
    data = read_all(tmp_path / "shards")
    prepped = sorted(p for n, d in data.items() if n.startswith("train") for p in d["path"])
    assert prepped == sorted("images/" + p for p in kept)


def test_bad_input_is_one_line(tmp_path, capsys):
    root = write_miniplaces(tmp_path / "mini", n_train=3, n_val=1, size=16)
    assert cap_crops.main([str(root), str(tmp_path / "o")]) == 1
    assert "has no crops.csv (expected a Miniplaces root" in capsys.readouterr().err
    (root / "crops.csv").write_text("path,photo\n")
    assert cap_crops.main([str(root), str(tmp_path / "o")]) == 1
    assert "expected columns path and source_id, missing ['source_id']" in capsys.readouterr().err
    _with_crops_csv(root, list("ppp"))
    assert cap_crops.main([str(root), str(tmp_path / "o"), "--per-photo", "0"]) == 1
    assert "per-photo: expected >= 1, got 0" in capsys.readouterr().err


def test_an_out_folder_with_its_own_images_is_refused_before_writing(tmp_path, capsys):
    root = _with_crops_csv(write_miniplaces(tmp_path / "mini", n_train=3, n_val=1, size=16), "pqr")
    out = tmp_path / "o"
    (out / "images").mkdir(parents=True)
    assert cap_crops.main([str(root), str(out)]) == 1
    assert "images: exists and is not a link to" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["images"]


def test_an_out_folder_that_cannot_be_made_is_one_line(tmp_path, capsys):
    root = _with_crops_csv(write_miniplaces(tmp_path / "mini", n_train=3, n_val=1, size=16), "pqr")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cap_crops.main([str(root), str(blocker / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"Error: {blocker / 'out'}: ") and "Errno" not in err
