"""The committed ImageNet encoder (kcolor.encoder) and the effnet_lite0 network built on it."""

import numpy as np
from PIL import Image
from skimage import data

from kcolor import encoder, model

CATS = {281, 282, 283, 284, 285}  # ImageNet's tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_the_committed_weights_load_and_classify_chelsea_as_a_cat():
    net = encoder.build_classifier()
    assert encoder.load_imagenet_weights(net) == 99  # every layer with weights
    rgb = np.asarray(Image.fromarray(data.chelsea()).resize((224, 224), Image.BICUBIC))
    logits = np.asarray(net.predict_on_batch(rgb[None].astype(np.float32) / 255.0))[0]
    top5 = set(np.argsort(-logits)[:5].tolist())
    assert int(np.argmax(logits)) in CATS and len(top5 & CATS) >= 3


def test_the_colorizer_takes_the_encoder_weights_and_keeps_its_contract(tmp_path):
    net = model.build_model(arch="effnet_lite0", width=0.25, input_size=64)
    stem = np.load(encoder.WEIGHTS_PATH)["stem/0"]
    np.testing.assert_array_equal(net.get_layer("stem").get_weights()[0], stem)
    L = np.random.default_rng(0).uniform(0, 100, (2, 64, 96, 1)).astype(np.float32)
    logits = np.asarray(net.predict_on_batch(L))
    assert logits.shape == (2, 16, 24, 313)  # 1/4 of the input, Q bins
    net.save(tmp_path / "m.keras")
    again = model.load_model(tmp_path / "m.keras")
    assert model.model_info(again)["arch"] == "effnet_lite0"
    np.testing.assert_allclose(np.asarray(again.predict_on_batch(L)), logits, atol=1e-5)


def test_gray_rgb_is_the_srgb_gray_of_each_lightness():
    from kcolor import color

    L = np.array([0.0, 20.0, 50.0, 100.0], np.float32).reshape(1, 1, 4, 1)
    rgb = np.asarray(model.GrayRGB()(L))[0, 0]
    want = color.lab_to_rgb(np.stack([L[0, 0, :, 0], 0 * L[0, 0, :, 0], 0 * L[0, 0, :, 0]], -1))
    np.testing.assert_allclose(rgb, want, atol=1e-4)


def test_one_network_runs_at_several_sides_in_one_process():
    """effnet_lite0 at a second input side (Keras's bilinear UpSampling2D, traced at the
    first side, failed there: the decoder resizes to its skip tensor's size instead)."""
    net = model.build_model(arch="effnet_lite0", width=0.25, input_size=64, pretrained=False)
    for side in (64, 96, 32):
        L = np.full((1, side, side, 1), 50.0, np.float32)
        assert np.asarray(net.predict_on_batch(L)).shape == (1, side // 4, side // 4, 313)
