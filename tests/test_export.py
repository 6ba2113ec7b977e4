"""`kcolor.export`: each format, run by its own runtime on real photos, matches the Keras
model + `Colorizer.predict`, with a tiny untrained model that records a decoding."""

import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcolor import export, infer, model, photo

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo" / "gray"
AB_TOLERANCE = 1e-3  # ab units (a, b span about +-110); measured ~1e-5 on this model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    prior = np.random.default_rng(0).random(313) + 0.01
    path = tmp_path_factory.mktemp("run") / "model.keras"
    model.build_model(width=0.0625, input_size=32, prior=prior).save(path)
    # a decoding other than the defaults, so that the export must read the recorded one
    model.set_decoding(path, temperature=0.5, rebalance_strength=0.75, flip=True, multiscale=True)
    return path


@pytest.fixture(scope="module")
def colorizer(model_path):
    return infer.load_colorizer(model_path, precision="fp32")


@pytest.fixture(scope="module")
def lightness():
    """(3, 32, 32) float32 L of three real photos at the tiny model's side."""
    return _demo_lightness(32)


def _demo_lightness(side):
    paths = sorted(DEMO.glob("*.jpg"))[:3]
    return np.stack([photo.net_lightness(photo.open_photo(p), side) for p in paths])


def run_exported(fmt, path, L):
    """The exported model at `path` run by its own runtime: {output name: array}."""
    x = np.asarray(L, np.float32)[..., None]
    if fmt == "savedmodel":
        serve = tf.saved_model.load(str(path)).signatures["serving_default"]
        return {k: v.numpy() for k, v in serve(L=tf.constant(x)).items()}
    if fmt == "tflite":
        return tf.lite.Interpreter(model_path=str(path)).get_signature_runner()(L=x)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["L"]
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"L": x}), strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", export.FORMATS)
def test_each_format_decodes_like_colorizer_predict(
    fmt, model_path, colorizer, lightness, tmp_path
):
    if fmt == "onnx":
        pytest.importorskip("tf2onnx")
        pytest.importorskip("onnxruntime")
    exported = export.export(model_path, tmp_path / f"m.{fmt}", fmt)
    assert exported.input_shape == (None, None, None, 1)  # any batch, any side
    assert str(exported).endswith("L (?, ?, ?, 1) -> ab (?, ?, ?, 2)")
    assert colorizer.temperature == 0.5 and colorizer.rebalance_strength == 0.75
    assert colorizer.flip  # the graph must average with the mirror image too
    assert colorizer.multiscale  # and, above the training side (32), with the output at it
    large = _demo_lightness(64)
    # any batch and sides (multiples of 8), at, below and above the training side
    for L in (lightness, lightness[:1, :24, :], large, large[:2, :48, :], large[:1, :, :40]):
        got = run_exported(fmt, exported.path, L)
        want, _ = colorizer.predict(L)
        assert list(got) == ["ab"] and got["ab"].shape == want.shape
        np.testing.assert_allclose(got["ab"], want, atol=AB_TOLERANCE, rtol=0)


@pytest.mark.slow
def test_bins_output_is_the_rebalanced_distribution(model_path, colorizer, lightness, tmp_path):
    out = export.export(model_path, tmp_path / "bins", "savedmodel", output="bins").path
    probs = run_exported("savedmodel", out, lightness)["bins"]
    ab, bins = colorizer.predict(lightness)
    assert probs.shape == (3, 8, 8, 313)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    # the annealed mean of the exported distribution is the decoded ab; its argmax the bins
    annealed = tf.nn.softmax(np.log(probs) / colorizer.temperature).numpy()
    np.testing.assert_allclose(annealed @ colorizer.table.centres, ab, atol=AB_TOLERANCE)
    np.testing.assert_array_equal(probs.argmax(-1), bins)


@pytest.mark.slow
def test_a_bf16_model_file_exports_to_tflite_in_float32(tmp_path, lightness):
    # models saved before export_model wrote fp32 hold mixed_bfloat16 layers, which the
    # TFLite converter cannot take
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        net = model.build_model(width=0.0625, input_size=32)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    net.save(tmp_path / "bf16.keras")
    out = export.export(tmp_path / "bf16.keras", tmp_path / "m.tflite", "tflite").path
    want, _ = infer.load_colorizer(tmp_path / "bf16.keras", precision="fp32").predict(lightness)
    got = run_exported("tflite", out, lightness)["ab"]
    np.testing.assert_allclose(got, want, atol=AB_TOLERANCE, rtol=0)


@pytest.mark.slow
def test_an_effnet_model_is_exported_at_its_side(tmp_path, lightness):
    # its decoder resizes to the skip tensors' sizes (model.ResizeLike), so it traces at
    # unknown sides like eccv16
    net = model.build_model(arch="effnet_lite0", width=0.0625, input_size=32, pretrained=False)
    net.save(tmp_path / "eff.keras")
    exported = export.export(tmp_path / "eff.keras", tmp_path / "eff", "savedmodel")
    assert exported.input_shape == (None, None, None, 1)
    assert exported.output_shape == (None, None, None, 2)
    want, _ = infer.load_colorizer(tmp_path / "eff.keras", precision="fp32").predict(lightness)
    got = run_exported("savedmodel", exported.path, lightness)["ab"]
    np.testing.assert_allclose(got, want, atol=AB_TOLERANCE, rtol=0)


def test_bad_arguments_fail_before_loading(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-model.keras"  # never read: the arguments fail first
    with pytest.raises(ValueError, match=r"format: expected one of .* got 'pb'"):
        export.export(missing, tmp_path / "m.pb", "pb")
    with pytest.raises(ValueError, match="output: expected one of"):
        export.export(missing, tmp_path / "m.tflite", "tflite", output="logits")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="is not a SavedModel folder"):
        export.export(missing, tmp_path / "photos", "savedmodel")
    with pytest.raises(ValueError, match="is a folder"):
        export.export(missing, tmp_path / "photos", "tflite")
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if not installed
    with pytest.raises(ValueError, match=r"needs tf2onnx .*pip install 'kcolor\[export\]'"):
        export.export(missing, tmp_path / "m.onnx", "onnx")


def test_the_export_command_writes_a_model_and_refuses_a_bad_one(model_path, tmp_path):
    from click.testing import CliRunner

    from kcolor import cli

    out = tmp_path / "k.tflite"
    result = CliRunner().invoke(
        cli.main, ["export", str(model_path), "--format", "tflite", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0 and "-> ab" in result.output
    bad = tmp_path / "bad.keras"
    bad.write_text("not a model")
    result = CliRunner().invoke(
        cli.main, ["export", str(bad), "--format", "tflite", "-o", str(out)]
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith(f"Error: {bad}: not a kcolor model")
