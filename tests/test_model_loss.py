"""The network's shapes and saved settings, and the rebalanced loss."""

import importlib.util
import json
import re
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcolor import color, loss, model, rebalance


def test_shapes_and_layer_counts():
    net = model.build_model("zhang313", width=0.125, input_size=32)
    assert net.output_shape == (None, None, None, 313)
    out = net(np.full((2, 32, 48, 1), 50.0, np.float32))
    assert out.shape == (2, 8, 12, 313) and out.dtype == tf.float32
    convs = [l for l in net.layers if "conv" in l.name and "norm" not in l.name]
    assert len(convs) == 22
    norms = [l for l in net.layers if l.name.endswith("_norm")]
    assert len(norms) == 8
    assert net.get_layer("conv5_1").dilation_rate == (2, 2)
    assert net.get_layer("conv8_1").strides == (2, 2)


@pytest.mark.slow
def test_paper_width_has_32m_parameters():
    net = model.build_model("zhang313", width=1.0)
    assert 31e6 < net.count_params() < 33e6
    # ~24 GFLOP (2 x multiply-adds) per 128x128 image, the paper's scale
    assert 20e9 < model.flops_per_image(net, 128) < 26e9


def test_grid18_table_and_bad_size():
    net = model.build_model("grid18", width=0.125, input_size=16)
    assert net.output_shape[-1] == 324
    with pytest.raises(ValueError, match="multiple of 8"):
        model.build_model(width=0.125, input_size=20)


def test_saved_model_carries_its_settings(tmp_path):
    prior = np.full(313, 1 / 313)
    net = model.build_model("zhang313", width=0.125, input_size=32, rebalance="neglog", prior=prior)
    path = tmp_path / "m.keras"
    net.save(path)
    back = model.load_model(path)
    info = model.model_info(back)
    assert (info["bin_table"], info["width"], info["input_size"], info["rebalance"]) == (
        "zhang313",
        0.125,
        32,
        "neglog",
    )
    np.testing.assert_allclose(info["prior"], prior)
    x = np.random.default_rng(0).uniform(0, 100, (1, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(net(x), back(x), atol=1e-5)


def _newer_model(tmp_path):
    """A model file as a newer kcolor may write it: kcolor_info records an unknown setting."""
    net = model.build_model("zhang313", width=0.125, input_size=32)
    path = tmp_path / "m.keras"
    net.save(path)
    newer = tmp_path / "newer.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(newer, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "config.json":
                config = json.loads(data)
                for layer in config["config"]["layers"]:
                    if layer["class_name"] == "ColorizerInfo":
                        layer["config"]["future_setting"] = 1.5
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    return net, newer


def test_a_model_with_settings_from_a_newer_kcolor_loads_with_a_warning(tmp_path):
    net, newer = _newer_model(tmp_path)
    with pytest.warns(
        UserWarning, match=r"newer.keras: kcolor_info: ignoring settings .*\['future_setting'\]"
    ):
        back = model.load_model(newer)
    x = np.random.default_rng(0).uniform(0, 100, (1, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(net(x), back(x), atol=1e-5)


def test_the_command_line_prints_the_warning_in_one_line(tmp_path):
    _, newer = _newer_model(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "kcolor", "decoding", str(newer)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "future_setting" in line]
    assert lines == [
        f"Warning: {newer}: kcolor_info: ignoring settings unknown to this kcolor: "
        "['future_setting']"
    ]
    # nothing of the warning's source is printed under it
    assert "warnings.warn" not in done.stderr and "from_config" not in done.stderr


def test_tools_average_weights_means_the_weights_and_keeps_the_first_settings(tmp_path):
    spec = importlib.util.spec_from_file_location("average_weights", "tools/average_weights.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    paths = []
    for seed, temperature in ((1, 0.5), (2, 0.9)):
        keras.utils.set_random_seed(seed)
        net = model.build_model(width=0.0625, input_size=32, prior=np.ones(313))
        net.get_layer("kcolor_info").temperature = temperature
        paths.append(tmp_path / f"m{seed}.keras")
        model.export_model(net, paths[-1])
    nets = [model.load_model(p) for p in paths] + [tool.average(paths)]
    for a, b, mean in zip(*(n.get_weights() for n in nets), strict=True):
        np.testing.assert_allclose(mean, (a + b) / 2, rtol=1e-6, atol=1e-7)
    assert model.model_info(nets[2])["temperature"] == 0.5
    model.build_model(width=0.125, input_size=32).save(tmp_path / "wide.keras")
    want = f"{tmp_path / 'wide.keras'}: width 0.125, but {paths[0]} has 0.0625"
    with pytest.raises(SystemExit, match=f"^{re.escape(want)}$"):
        tool.average([paths[0], tmp_path / "wide.keras"])


def test_not_a_kcolor_model(tmp_path):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"bad.keras: not a kcolor model \(not a .keras zip"):
        model.load_model(bad)
    not_keras = tmp_path / "other.keras"
    with zipfile.ZipFile(not_keras, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="other.keras: not a kcolor model"):
        model.load_model(not_keras)
    with pytest.raises(ValueError, match="not found"):
        model.load_model(tmp_path / "missing.keras")
    net = model.build_model(width=0.125)
    with pytest.raises(
        ValueError, match="bin table 'grid18' does not match the model's 'zhang313'"
    ):
        model.check_bin_table(net, color.get_bin_table("grid18"), "shards/")


def _loop_loss(bins, logits, weights):
    """Plain per-pixel reference: sum over pixels of w[y] * -log softmax(z)[y]."""
    out = np.zeros(bins.shape[0])
    for n in range(bins.shape[0]):
        for i in range(bins.shape[1]):
            for j in range(bins.shape[2]):
                z = logits[n, i, j].astype(np.float64)
                logp = z - z.max() - np.log(np.exp(z - z.max()).sum())
                out[n] += weights[bins[n, i, j]] * -logp[bins[n, i, j]]
    return out


def test_loss_matches_a_per_pixel_loop():
    rng = np.random.default_rng(1)
    q = 313
    weights = rng.uniform(0.1, 5, q).astype(np.float32)
    bins = rng.integers(0, q, (3, 4, 5))
    logits = rng.normal(0, 3, (3, 4, 5, q)).astype(np.float32)
    per_image = loss.RebalancedCrossEntropy(weights, reduction=None)(bins, logits)
    ref = _loop_loss(bins, logits, weights)
    np.testing.assert_allclose(per_image.numpy(), ref, rtol=1e-5)
    total = loss.RebalancedCrossEntropy(weights)(bins, logits)  # default: sum over images
    np.testing.assert_allclose(float(total), ref.sum(), rtol=1e-5)


def test_loss_config_round_trip():
    fn = loss.RebalancedCrossEntropy(np.arange(3, dtype=np.float32), reduction=None)
    back = loss.RebalancedCrossEntropy.from_config(fn.get_config())
    np.testing.assert_array_equal(back.weights, fn.weights)


def test_subsample_bins_takes_cell_centres():
    bins = np.arange(8 * 8).reshape(1, 8, 8)
    out = loss.subsample_bins(bins)
    assert out.shape == (1, 2, 2)
    assert out[0, 0, 0] == bins[0, 2, 2] and out[0, 1, 1] == bins[0, 6, 6]


def test_target_kernel_spreads_to_the_nearest_bins():
    table = color.get_bin_table("zhang313")
    kernel = rebalance.target_kernel(table)
    assert kernel.shape == (313, 313)
    np.testing.assert_allclose(kernel.sum(1), 1, rtol=1e-5)
    assert (kernel.argmax(1) == np.arange(313)).all()
    # a bin with 4 neighbours 10 ab units away keeps ~60% of its mass (Zhang: sigma 5)
    d = np.linalg.norm(table.centres[:, None] - table.centres[None], axis=-1)
    inner = int(np.argmax((np.abs(d - 10) < 1e-6).sum(1) == 4))
    assert 0.55 < kernel[inner, inner] < 0.7
    assert kernel[inner][d[inner] > 25].sum() < 1e-3
    with pytest.raises(ValueError, match="sigma"):
        rebalance.target_kernel(table, 0)


def test_soft_loss_with_identity_kernel_and_uniform_cells_is_the_hard_loss():
    rng = np.random.default_rng(2)
    q = 313
    weights = rng.uniform(0.1, 5, q).astype(np.float32)
    cells = rng.integers(0, q, (2, 3, 4))
    bins = np.repeat(np.repeat(cells, 4, axis=1), 4, axis=2)  # (2, 12, 16), one bin per cell
    logits = rng.normal(0, 3, (2, 3, 4, q)).astype(np.float32)
    soft = loss.SoftCrossEntropy(weights, np.eye(q), reduction=None)(bins, logits)
    hard = loss.RebalancedCrossEntropy(weights, reduction=None)(cells, logits)
    np.testing.assert_allclose(soft.numpy(), hard.numpy(), rtol=1e-5)


def test_soft_loss_matches_a_per_cell_loop():
    rng = np.random.default_rng(3)
    q = 313
    weights = rng.uniform(0.1, 5, q).astype(np.float32)
    kernel = rebalance.target_kernel(color.get_bin_table("zhang313"))
    bins = rng.integers(0, q, (2, 8, 12))
    logits = rng.normal(0, 3, (2, 2, 3, q)).astype(np.float32)
    ref = np.zeros(2)
    for n in range(2):
        for i in range(2):
            for j in range(3):
                cell = bins[n, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].ravel()
                target = kernel[cell].mean(0)
                z = logits[n, i, j].astype(np.float64)
                logp = z - z.max() - np.log(np.exp(z - z.max()).sum())
                ref[n] += (target @ weights) * -(target @ logp)
    fn = loss.SoftCrossEntropy(weights, kernel, reduction=None)
    np.testing.assert_allclose(fn(bins, logits).numpy(), ref, rtol=1e-4)
    back = loss.SoftCrossEntropy.from_config(fn.get_config())
    np.testing.assert_array_equal(back.kernel, fn.kernel)
    assert back.stride == 4
