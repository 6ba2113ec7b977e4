"""`kcolor fit` on tiny shards: learning, resume, strategies, refusals."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from conftest import TINY

from kcolor import cli, color, dataset, loss, model, rebalance, shards, train


def _cfg(**kw):
    return train.FitConfig(**(TINY | kw))


def _train_loss(model_path, shard_dir, soft=False):
    """Mean loss over the train images, batch-norm in training mode (batch statistics:
    the moving averages lag far behind after a few dozen steps)."""
    net = model.load_model(model_path)
    stats = shards.load_stats(shard_dir)
    table = color.get_bin_table("zhang313")
    weights = rebalance.rebalance_weights(stats["bin_counts"], table)
    L, bins = dataset.load_arrays(shards.list_shards(shard_dir, "train"), 64)
    logits = net(color.decode_l(L)[..., None], training=True)
    bins = bins.astype(np.int32)
    if soft:  # the excess over the loss of predicting the targets exactly
        kernel = rebalance.target_kernel(table)
        fn = loss.SoftCrossEntropy(weights, kernel, reduction=None)
        n, h, w = bins.shape
        cells = np.eye(313)[bins].reshape(n, h // 4, 4, w // 4, 4, 313).mean((2, 4))
        exact = np.log(np.maximum(cells @ kernel, 1e-30)).astype(np.float32)
        return float(np.mean(fn(bins, logits)) - np.mean(fn(bins, exact)))
    fn = loss.RebalancedCrossEntropy(weights, reduction=None)
    return float(np.mean(fn(loss.subsample_bins(bins), logits)))


@pytest.mark.slow
def test_short_fit_lowers_the_loss_and_resumes(shard_dir, tmp_path):
    run = tmp_path / "run"
    first = train.fit(shard_dir, run, _cfg(epochs=1), echo=lambda _m: None)
    before = _train_loss(first, shard_dir)
    messages = []
    train.fit(shard_dir, run, _cfg(epochs=15, lr=1e-2), echo=messages.append)
    assert any("Resumed from" in m and "(step 4)" in m for m in messages), messages
    after = _train_loss(run / "model.keras", shard_dir)
    # the resumed run trained with its own --lr, not the one restored from the checkpoint
    latest = tf.train.latest_checkpoint(str(run / "ckpt"))
    lr = tf.train.load_variable(latest, "optimizer/_learning_rate/.ATTRIBUTES/VARIABLE_VALUE")
    assert lr == pytest.approx(1e-2)
    assert after < 0.9 * before, (before, after)
    saved = json.loads((run / "config.json").read_text())
    assert saved["epochs"] == 15 and saved["bin_table"] == "zhang313"
    info = model.model_info(model.load_model(run / "model.keras"))
    assert info["input_size"] == 32 and len(info["prior"]) == 313
    assert list((run / "logs" / "train").iterdir()) and list((run / "logs" / "val").iterdir())


@pytest.mark.slow
def test_soft_targets_fit_lowers_the_soft_loss(shard_dir, tmp_path):
    run = tmp_path / "run"
    first = train.fit(shard_dir, run, _cfg(epochs=1, targets="soft"), echo=lambda _m: None)
    before = _train_loss(first, shard_dir, soft=True)
    train.fit(shard_dir, run, _cfg(epochs=40, lr=1e-2, targets="soft"), echo=lambda _m: None)
    after = _train_loss(run / "model.keras", shard_dir, soft=True)
    assert after < 0.9 * before, (before, after)
    with pytest.raises(ValueError, match="started with targets='soft'"):
        train.resolve_config(run, None, {"targets": "hard"})
    with pytest.raises(ValueError, match="targets: expected one of"):
        train.resolve_config(tmp_path / "new", None, {"targets": "fuzzy"})


def test_cosine_schedule_warms_up_decays_to_zero_and_is_a_function_of_the_step():
    cfg = train.FitConfig(lr=1e-3, lr_schedule="cosine", warmup_steps=10)
    rates = [train.learning_rate(cfg, s, 110) for s in range(110)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert rates[10] == pytest.approx(1e-3)  # the peak, then the cosine
    assert rates[60] == pytest.approx(5e-4)  # halfway through the decay
    assert all(a >= b for a, b in zip(rates[9:], rates[10:], strict=False))
    assert train.learning_rate(cfg, 110, 110) == 0.0
    constant = train.FitConfig(lr=1e-3)
    assert {train.learning_rate(constant, s, 110) for s in (0, 50, 109)} == {1e-3}


@pytest.mark.slow
def test_resumed_cosine_run_continues_the_schedule(shard_dir, tmp_path):
    run = tmp_path / "run"
    cfg = _cfg(epochs=3, lr_schedule="cosine", warmup_steps=2)
    train.fit(
        shard_dir,
        run,
        _cfg(epochs=3, lr_schedule="cosine", warmup_steps=2, max_steps=5),
        echo=lambda _m: None,
    )
    latest = tf.train.latest_checkpoint(str(run / "ckpt"))
    lr = tf.train.load_variable(latest, "optimizer/_learning_rate/.ATTRIBUTES/VARIABLE_VALUE")
    steps_per_epoch = 16 // cfg.batch_size
    # the checkpoint at step 5 was written after step 5 (index 4) ran at its rate
    assert lr == pytest.approx(train.learning_rate(cfg, 4, 3 * steps_per_epoch))
    train.fit(shard_dir, run, cfg, echo=lambda _m: None)
    latest = tf.train.latest_checkpoint(str(run / "ckpt"))
    lr = tf.train.load_variable(latest, "optimizer/_learning_rate/.ATTRIBUTES/VARIABLE_VALUE")
    assert lr == pytest.approx(
        train.learning_rate(cfg, 3 * steps_per_epoch - 1, 3 * steps_per_epoch)
    )
    assert lr < cfg.lr / 10


def test_resumed_epoch_continues_at_the_same_batch(shard_dir):
    paths = shards.list_shards(shard_dir, "train")
    full = [L.numpy() for L, _ in dataset.train_dataset(paths, 4, epoch=3, seed=7)]
    rest = [L.numpy() for L, _ in dataset.train_dataset(paths, 4, epoch=3, seed=7, skip_batches=2)]
    assert len(full) == 4 and len(rest) == 2
    for a, b in zip(full[2:], rest, strict=True):
        np.testing.assert_array_equal(a, b)
    other = [L.numpy() for L, _ in dataset.train_dataset(paths, 4, epoch=4, seed=7)]
    assert not all(np.array_equal(a, b) for a, b in zip(full, other, strict=True))


def test_pipeline_shapes_crops_and_flips(shard_dir):
    paths = shards.list_shards(shard_dir, "train")
    L, bins = next(iter(dataset.train_dataset(paths, 4, epoch=0, crop=16)))
    assert L.shape == (4, 16, 16, 1) and bins.shape == (4, 4, 4)
    L2, full = next(iter(dataset.train_dataset(paths, 4, epoch=0, crop=16, full_bins=True)))
    np.testing.assert_array_equal(L2, L)
    assert full.shape == (4, 16, 16) and full.dtype.name == "int32"
    np.testing.assert_array_equal(loss.subsample_bins(full.numpy()), bins)


def test_zoom_resizes_crops_and_keeps_the_bins_of_the_image(shard_dir):
    paths = shards.list_shards(shard_dir, "train")
    batches = [dataset.train_dataset(paths, 4, epoch=0, crop=16, zoom=2) for _ in range(2)]
    (L, bins), (L2, bins2) = (next(iter(b)) for b in batches)
    assert L.shape == (4, 16, 16, 1) and bins.shape == (4, 4, 4)
    np.testing.assert_array_equal(L, L2)  # seeded: the same crops every time
    all_L, all_bins = dataset.load_arrays(paths, 64)
    assert set(np.unique(bins)) <= set(np.unique(all_bins))  # nearest: no new bins
    plain = next(iter(dataset.train_dataset(paths, 4, epoch=0, crop=16)))[0]
    assert not np.array_equal(L, plain)
    # eagerly, on one image: bins only from the image (nearest), L within its range
    fn = dataset._augment(7, 16, flip=False, zoom=2)
    zl, zb = fn(tf.constant(0, tf.int64), (tf.constant(all_L[0]), tf.constant(all_bins[0])))
    assert zl.shape == (16, 16) and zl.dtype == tf.uint8 and zb.dtype == all_bins.dtype
    assert set(np.unique(zb)) <= set(np.unique(all_bins[0]))
    assert all_L[0].min() <= zl.numpy().min() and zl.numpy().max() <= all_L[0].max()
    with pytest.raises(ValueError, match="zoom: expected >= 1"):
        train.resolve_config(Path("/nonexistent/run"), None, {"zoom": 0.5})
    assert L.dtype.name == "float32" and bins.dtype.name == "int32"
    assert 0 <= float(L.numpy().min()) and float(L.numpy().max()) <= 100
    # each pipeline of a 2-worker run reads a disjoint half of the data
    n0, n1 = (dataset.count_images(paths, p, 2) for p in (0, 1))
    assert n0 + n1 == dataset.count_images(paths)


def test_degrade_changes_the_lightness_of_that_share_of_images_and_never_the_colours(shard_dir):
    paths = shards.list_shards(shard_dir, "train")
    plain = list(dataset.train_dataset(paths, 4, epoch=0, crop=16))
    for share, lo, hi in ((1.0, 16, 16), (0.5, 3, 13)):
        runs = [
            list(dataset.train_dataset(paths, 4, epoch=0, crop=16, degrade=share)) for _ in "ab"
        ]
        changed = 0
        for (L, bins), (L2, _), (L0, bins0) in zip(*runs, plain, strict=True):
            np.testing.assert_array_equal(L, L2)  # seeded: the same degradation every time
            np.testing.assert_array_equal(bins, bins0)  # the true colours stay
            changed += int(np.sum(np.any(L.numpy() != L0.numpy(), axis=(1, 2, 3))))
        assert lo <= changed <= hi, (share, changed)  # of the 16 train images
    # degraded images have less contrast on average (faded, blurred; the grain adds less)
    clean = np.concatenate([L0.numpy() for L0, _ in plain])
    worn = np.concatenate(
        [L.numpy() for L, _ in dataset.train_dataset(paths, 4, epoch=0, crop=16, degrade=1.0)]
    )
    assert worn.std(axis=(1, 2, 3)).mean() < 0.9 * clean.std(axis=(1, 2, 3)).mean()
    tiny = dataset._degrade(
        tf.constant(np.full((4, 4), 200, np.uint8)), tf.constant([1, 2], tf.int64)
    )
    assert tiny.shape == (4, 4) and tiny.dtype == tf.uint8  # too small to blur: not blurred
    with pytest.raises(ValueError, match="degrade: expected 0..1"):
        train.resolve_config(Path("/nonexistent/run"), None, {"degrade": 1.5})


def test_the_degradations_blur_is_a_gaussian():
    from scipy import ndimage

    L = np.random.default_rng(0).uniform(0, 255, (24, 24)).astype(np.float32)
    for sigma in (0.5, 1.0, 1.5):
        ours = dataset._blur(tf.constant(L), tf.constant(sigma)).numpy()
        # tf's REFLECT padding is scipy's "mirror"; radius 4 px
        ref = ndimage.gaussian_filter(L, sigma, mode="mirror", truncate=4 / sigma)
        np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_pipelines_read_exactly_the_shards(shard_dir):
    paths = shards.list_shards(shard_dir, "train")
    L, bins = dataset.load_arrays(paths, 10**6)  # h5py reads, the reference
    expect_L = color.decode_l(L)[..., None]
    got = list(dataset.eval_dataset(paths, 5).as_numpy_iterator())
    np.testing.assert_array_equal(np.concatenate([g[0] for g in got]), expect_L)
    np.testing.assert_array_equal(
        np.concatenate([g[1] for g in got]), loss.subsample_bins(bins.astype(np.int32))
    )
    # an epoch of training batches holds every image once, maybe flipped (batch 1: none dropped)
    train_L = np.concatenate([b[0] for b in dataset.train_dataset(paths, 1, epoch=2)])

    def canonical(images):  # the same key for an image and its mirror image
        return sorted(max(a.tobytes(), a[:, ::-1].tobytes()) for a in images)

    assert canonical(train_L) == canonical(expect_L)


def test_a_shard_without_images_gives_no_batches(tmp_path):
    import h5py

    path = tmp_path / "val-00000-of-00001.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("L", shape=(0, 32, 32), dtype=np.uint8)
        f.create_dataset("bins", shape=(0, 32, 32), dtype=np.uint16)
    assert dataset.count_images([path]) == 0
    assert list(dataset.eval_dataset([path], 4)) == []


def test_shards_that_are_not_contiguous_are_refused(shard_dir, tmp_path):
    import h5py

    src = shards.list_shards(shard_dir, "train")[0]
    bad = tmp_path / src.name
    with h5py.File(src, "r") as f, h5py.File(bad, "w") as g:
        for name in f:
            g.create_dataset(name, data=f[name][()], compression="gzip" if name == "L" else None)
    with pytest.raises(ValueError, match=f"{bad}: dataset 'L' is not a contiguous"):
        dataset.count_images([bad])


def test_nan_loss_stops_with_the_step(shard_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(
        rebalance, "rebalance_weights", lambda counts, table, mode: np.full(table.size, np.nan)
    )
    with pytest.raises(train.TrainingError, match="loss is nan at step 1"):
        train.fit(shard_dir, tmp_path / "run", _cfg(epochs=1), echo=lambda _m: None)
    assert not (tmp_path / "run" / "model.keras").exists()


def test_bin_table_mismatch_is_refused(shard_dir, tmp_path):
    other = model.build_model("grid18", width=0.0625, input_size=32)
    other.save(tmp_path / "grid.keras")
    with pytest.raises(
        ValueError, match="bin table 'zhang313' does not match the model's 'grid18'"
    ):
        train.fit(shard_dir, tmp_path / "r1", _cfg(), init_model=tmp_path / "grid.keras")
    run = tmp_path / "r2"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"bin_table": "grid18"}))
    result = CliRunner().invoke(cli.main, ["fit", str(shard_dir), str(run), "--width", "0.0625"])
    assert result.exit_code == 1
    assert "does not match the run's 'grid18'" in result.output


def test_config_precedence_and_frozen_settings(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text("width = 0.5\nepochs = 3\n")
    cfg = train.resolve_config(tmp_path / "run", cfg_file, {"epochs": 7, "lr": None})
    assert (cfg.width, cfg.epochs, cfg.lr) == (0.5, 7, 3e-5)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"width": 0.25, "epochs": 2}))
    assert train.resolve_config(run, None, {}).width == 0.25
    with pytest.raises(ValueError, match="started with width=0.25"):
        train.resolve_config(run, None, {"width": 1.0})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"widht": 1}))
    with pytest.raises(ValueError, match="unknown settings"):
        train.resolve_config(tmp_path / "new", bad, {})


def test_a_broken_settings_file_is_named_in_one_line(tmp_path):
    for name, text in [("c.json", '{"width": 0.5,'), ("c.toml", "width = ="), ("l.json", "[1]")]:
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ValueError, match=f"^{path}: ") as e:
            train.resolve_config(tmp_path / "new", path, {})
        assert "\n" not in str(e.value)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"width": 0.2')  # a saved config damaged by hand
    with pytest.raises(ValueError, match=f"^{run / 'config.json'}: not valid JSON"):
        train.resolve_config(run, None, {})


@pytest.mark.slow
def test_two_replicas_give_the_single_device_gradient():
    out = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("_two_replicas.py"))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["max_rel_diff"] < 1e-3


def _fit_cmd(shard_dir, run, *extra):
    return [
        sys.executable, "-m", "kcolor", "fit", str(shard_dir), str(run),
        "--width", "0.0625", "--batch-size", "4", "--val-images", "4", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(shard_dir, tmp_path):
    cmd = _fit_cmd(shard_dir, tmp_path / "run", "--epochs", "1", "--cpu-replicas", "2")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "2 replica(s)" in out.stdout
    assert (tmp_path / "run" / "model.keras").is_file()


@pytest.mark.slow
def test_kill_9_then_resume(shard_dir, tmp_path):
    run = tmp_path / "run"
    cmd = _fit_cmd(shard_dir, run, "--epochs", "30", "--checkpoint-every", "2")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not list((run / "ckpt").glob("ckpt-6.index")):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list((run / "ckpt").glob("ckpt-*.index")), "no checkpoint before the kill"
    out = subprocess.run(cmd[:-4] + ["--epochs", "3"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    resumed = [l for l in out.stdout.splitlines() if l.startswith("Resumed from")]
    assert resumed and int(resumed[0].split("(step ")[1].rstrip(")")) >= 6
    assert f"{run}: taking over the lock left by kcolor fit, PID {proc.pid}" in out.stdout
    net = model.load_model(run / "model.keras")
    assert model.model_info(net)["width"] == 0.0625


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_mirrored_two_processes(shard_dir, tmp_path):
    run = tmp_path / "run"
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for index in range(2):
        env = os.environ | {
            "TF_CONFIG": json.dumps(
                {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
            )
        }
        cmd = _fit_cmd(shard_dir, run, "--epochs", "2")
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_so, se) in zip(procs, outs, strict=True):
        assert p.returncode == 0, se[-3000:]
    assert "2 replica(s)" in outs[0][0]
    # the chief locked RUN_DIR, worker 1 its own folder (kcolor.lock)
    assert (run / ".kcolor.lock").exists() and (run / ".worker-1" / ".kcolor.lock").exists()
    chief = model.load_model(run / "model.keras").get_weights()
    other = model.load_model(run / ".worker-1" / "model.keras").get_weights()
    for a, b in zip(chief, other, strict=True):
        np.testing.assert_array_equal(a, b)


def _weights(path):
    """{layer name: {variable name: value}} of a saved model."""
    out = {}
    for v in model.load_model(path).weights:
        layer, name = v.path.rsplit("/", 1)
        out.setdefault(layer, {})[name] = np.array(v)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("encoder_lr", [0.0, 0.1])
def test_encoder_lr_slows_or_freezes_the_pretrained_encoder(shard_dir, tmp_path, encoder_lr):
    """AdamW's first step moves each weight by about the learning rate (the update is the
    gradient's sign), so the encoder's largest move is encoder_lr times the decoder's; at 0
    the encoder, its batch-norm statistics too, stays as it started."""
    from kcolor import encoder

    settings = dict(arch="effnet_lite0", weight_decay=0.0, epochs=1)
    quiet = dict(echo=lambda _m: None)
    start = train.fit(shard_dir, tmp_path / "start", _cfg(**settings, lr=0.0), **quiet)
    runs = {}
    for scale in (1.0, encoder_lr):
        cfg = _cfg(**settings, lr=1e-2, max_steps=1, encoder_lr=scale)
        runs[scale] = _weights(
            train.fit(shard_dir, tmp_path / f"run{scale}", cfg, init_model=start, **quiet)
        )
    before = _weights(start)
    names = {layer.name for layer in encoder.pretrained_layers(model.load_model(start))}
    assert len(names) > 40

    def moved(after, in_encoder, kinds=("kernel",)):
        return max(
            float(np.abs(value - before[layer][name]).max())
            for layer, values in after.items()
            if (layer in names) == in_encoder
            for name, value in values.items()
            if name in kinds
        )

    assert moved(runs[1.0], True) == pytest.approx(1e-2, rel=0.05)
    assert moved(runs[encoder_lr], False) == pytest.approx(1e-2, rel=0.05)
    if encoder_lr == 0:
        assert moved(runs[0.0], True, ("kernel", "gamma", "beta", "moving_mean")) == 0.0
        saved = model.load_model(tmp_path / "run0.0" / "model.keras")
        assert all(layer.trainable for layer in saved.layers)  # frozen for the run only
    else:
        assert moved(runs[encoder_lr], True) == pytest.approx(encoder_lr * 1e-2, rel=0.05)
    with pytest.raises(ValueError, match="encoder_lr: eccv16 has no pretrained encoder"):
        train.resolve_config(tmp_path / "new", None, {"encoder_lr": 0.5})
