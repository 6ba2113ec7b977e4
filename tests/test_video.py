"""`kcolor colorize film.mp4` (kcolor.video), with tiny videos and a tiny untrained model."""

import re
from fractions import Fraction

import av
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from kcolor import cli, color, infer, model, video

SIDE = 64


@pytest.fixture(scope="module")
def colorizer(tmp_path_factory):
    """A random colorizer whose colors follow the lightness. An untrained network's
    features fade to ~1e-7 by the classifier (inference-mode batch norm does not
    rescale them), so its classifier is scaled up to logits of std ~3."""
    path = tmp_path_factory.mktemp("run") / "model.keras"
    net = model.build_model(width=0.0625, input_size=32)
    classifier = net.get_layer("classifier")
    kernel, bias = classifier.get_weights()
    rng = np.random.default_rng(0)
    classifier.set_weights([rng.normal(0, 3e6, kernel.shape).astype(np.float32), bias])
    net.save(path)
    return infer.load_colorizer(path)


def scene(seed: int, n: int, size=(SIDE, SIDE), noise=3.0, gains=None, contrast=1.0):
    """n gray frames (H, W) uint8 of one still scene, fresh noise in each; frame t is
    brighter by gains[t] when given."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    f = rng.uniform(2, 6, 4)
    waves = 50 * np.sin(f[0] * x + f[1] * y) + 40 * np.cos(f[2] * x - f[3] * y + seed)
    base = 128 + contrast * waves
    gains = np.ones(n) if gains is None else gains
    return [
        np.clip(base * g + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8) for g in gains
    ]


def write_video(path, frames, rate=24, audio=None, codec=None, options=None):
    """A video of gray frames; `audio`: an audio codec for a 440 Hz tone as long as the video."""
    h, w = frames[0].shape
    codec = codec or ("libvpx-vp9" if path.suffix == ".webm" else "libx264")
    with av.open(str(path), "w", options=options or {}) as out:
        v = out.add_stream(codec, rate=rate)
        v.width, v.height = w, h
        v.pix_fmt = "yuv420p" if w % 2 == 0 and h % 2 == 0 else "yuv444p"
        a = out.add_stream(audio, rate=48000) if audio else None
        for f in frames:
            out.mux(v.encode(av.VideoFrame.from_ndarray(f, format="gray")))
        out.mux(v.encode(None))
        if a:
            t = np.arange(int(48000 * len(frames) / rate)) / 48000
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            frame = av.AudioFrame.from_ndarray(tone, format="flt", layout="mono")
            frame.sample_rate = 48000
            out.mux(a.encode(frame))
            out.mux(a.encode(None))
    return path


def read(path):
    """(frames as RGB uint8, seconds of each frame, rate, audio packets' bytes)."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        rate = v.average_rate
        frames, times, audio = [], [], []
        for packet in c.demux(v, *c.streams.audio):
            if packet.stream.type == "audio":
                if packet.dts is not None:
                    audio.append(bytes(packet))
                continue
            for f in packet.decode():
                frames.append(f.to_ndarray(format="rgb24"))
                times.append(float(f.pts * f.time_base))
    return frames, times, rate, audio


def flicker(ab: np.ndarray) -> float:
    """Mean |delta ab| between consecutive frames of (T, h, w, 2) ab."""
    return float(np.sqrt((np.diff(ab, axis=0) ** 2).sum(-1)).mean())


@pytest.fixture
def net_ab(monkeypatch):
    """The decoded low-resolution ab of the real path, frame after frame."""
    parts = []
    decode = video.decode

    def recording(col, probs):
        parts.append(decode(col, probs))
        return parts[-1]

    monkeypatch.setattr(video, "decode", recording)
    return parts


# --- what is kept ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "suffix, rate, size, audio",
    [
        (".mp4", 24, (64, 48), "aac"),
        (".mkv", Fraction(30000, 1001), (64, 48), "aac"),
        (".mov", 25, (65, 49), None),  # odd sides: no 4:2:0
        (".avi", 24, (64, 48), None),
        (".webm", 30, (64, 48), "libopus"),
    ],
)
def test_frames_size_rate_timestamps_and_audio_are_kept(
    colorizer, tmp_path, suffix, rate, size, audio
):
    gains = np.linspace(0.6, 1.3, 21)  # each frame its own brightness: the order shows
    src = write_video(tmp_path / f"in{suffix}", scene(0, 21, size, gains=gains), rate, audio)
    calls = []
    summary = video.colorize_video(
        colorizer, src, tmp_path / "out" / src.name, batch_frames=8, progress=calls.append
    )
    frames, times, out_rate, out_audio = read(summary.dst)
    in_frames, in_times, in_rate, in_audio = read(src)
    assert len(frames) == len(in_frames) == summary.frames == 21
    assert calls == [8, 8, 5]  # streamed in batches
    assert frames[0].shape[:2] == (size[1], size[0]) and summary.size == size
    assert out_rate == in_rate == rate
    if suffix == ".avi":  # AVI keeps no timestamps: the frames are numbered at the rate
        times, in_times = np.diff(times), np.full(20, 1 / rate)
    np.testing.assert_allclose(times, in_times, atol=1e-3)
    assert out_audio == in_audio and (len(in_audio) > 0) == (audio is not None)
    # each output frame is its input frame colorized: the lightness is the input's
    L_in = np.stack([color.lightness(f) for f in in_frames])
    L_out = np.stack([color.rgb_to_lab(f)[..., 0] for f in frames])
    assert np.abs(L_out - L_in).mean(axis=(1, 2)).max() < 2.0
    assert sorted(tmp_path.joinpath("out").iterdir()) == [summary.dst]  # no temporary left


def test_smoothing_zero_decodes_as_photos_are(colorizer):
    # the video path's distribution + decode is the colorizer's own predict
    L = np.stack(scene(1, 3, (32, 32))).astype(np.float32) * (100 / 255)
    ab_photo, _ = colorizer.predict(L)
    ab = video.decode(colorizer, video.Smoother(0.0)(video.distribution(colorizer, L), L))
    np.testing.assert_allclose(ab, ab_photo, atol=1e-3)
    argmax = infer.Colorizer(colorizer.net, decode="argmax")
    ab, bins = argmax.predict(L)
    np.testing.assert_allclose(video.decode(argmax, video.distribution(argmax, L)), ab)


# --- temporal smoothing -------------------------------------------------------------------


def test_smoothing_lowers_flicker(colorizer, tmp_path, net_ab):
    src = write_video(tmp_path / "still.mp4", scene(2, 40, noise=6.0))
    runs = {}
    for s in (0.0, 0.6):
        net_ab.clear()
        summary = video.colorize_video(colorizer, src, tmp_path / f"{s}.mp4", s)
        ab = np.stack([color.rgb_to_lab(f)[..., 1:] for f in read(summary.dst)[0]])
        runs[s] = (flicker(np.concatenate(net_ab)), flicker(ab))
    net_ratio = runs[0.6][0] / runs[0.0][0]
    video_ratio = runs[0.6][1] / runs[0.0][1]
    # an average with weight 0.6 on the past divides frame-to-frame noise by ~3
    assert net_ratio < 0.5, runs
    assert video_ratio < 0.8, runs  # the encoder adds a floor of its own


def test_a_scene_cut_restarts_the_smoothing(colorizer, tmp_path, net_ab):
    src = write_video(tmp_path / "cut.mp4", scene(3, 12) + scene(4, 12, contrast=0.3))
    out = {}
    for name, s, cut in [("frame", 0.0, video.CUT_DISTANCE), ("reset", 0.9, video.CUT_DISTANCE)]:
        net_ab.clear()
        # no motion guide: only the cut detection may restart
        summary = video.colorize_video(
            colorizer, src, tmp_path / f"{name}.mp4", s, cut_distance=cut, motion_l=np.inf
        )
        out[name] = (np.concatenate(net_ab), summary.cuts)
    net_ab.clear()
    video.colorize_video(
        colorizer, src, tmp_path / "kept.mp4", 0.9, cut_distance=np.inf, motion_l=np.inf
    )
    kept = np.concatenate(net_ab)
    assert out["reset"][1] == out["frame"][1] == 1
    np.testing.assert_allclose(out["reset"][0][12], out["frame"][0][12], atol=1e-4)
    assert (
        np.abs(kept[12] - out["frame"][0][12]).mean()
        > 10 * np.abs(out["reset"][0][12] - out["frame"][0][12]).mean() + 1e-3
    )


def cuts_found(L: np.ndarray) -> int:
    smoother = video.Smoother(0.6)
    smoother(np.full((len(L), 16, 16, 4), 0.25, np.float32), L)
    return smoother.cuts


def test_exposure_flicker_is_not_a_cut_and_another_scene_is():
    rng = np.random.default_rng(5)
    gains = 1 + rng.uniform(-0.1, 0.1, 20)  # old film's exposure flicker, up to +-10%
    L = np.stack(scene(5, 20, gains=gains)).astype(np.float32) / 2.55  # ~L in [0, 100]
    other = np.stack(scene(6, 1, contrast=0.3)).astype(np.float32) / 2.55
    assert cuts_found(L) == 0
    assert cuts_found(np.concatenate([L, other, L])) == 2


def test_a_cut_needs_a_new_histogram_and_a_new_layout():
    L = np.stack(scene(5, 1)).astype(np.float32) / 2.55
    np.testing.assert_allclose(video.layout(L[0] * 1.2), video.layout(L[0]), rtol=1e-6)
    brighter = np.clip(L * 1.4, 0, 100)  # highlights clip: the histogram moves, not the layout
    moved = video.cut_distance(video.histogram(L[0]), video.histogram(brighter[0]))
    assert moved > video.CUT_DISTANCE and cuts_found(np.concatenate([L, brighter])) == 0
    turned = L[:, ::-1, ::-1]  # the same histogram, light and dark elsewhere
    assert video.layout_distance(video.layout(L[0]), video.layout(turned[0])) > video.CUT_LAYOUT
    assert cuts_found(np.concatenate([L, turned])) == 0
    other = np.stack(scene(6, 1, contrast=0.3)).astype(np.float32) / 2.55
    assert cuts_found(np.concatenate([L, other, brighter])) == 2


def test_moving_pixels_take_their_new_colors():
    # two frames: the left half's lightness jumps by MOTION_L, the right half's stays
    L = np.full((2, 32, 32), 50.0, np.float32)
    L[1, :, :16] += video.MOTION_L
    probs = np.zeros((2, 8, 8, 2), np.float32)
    probs[0, ..., 0] = probs[1, ..., 1] = 1.0
    out = video.Smoother(0.6, cut=np.inf)(probs, L)
    np.testing.assert_allclose(out[1, :, :4], probs[1, :, :4])  # moved: this frame's
    np.testing.assert_allclose(out[1, :, 4:, 0], 0.6)  # still: 0.6 of the past
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-6)


# --- bad input ---------------------------------------------------------------------------


def audio_only(path):
    with av.open(str(path), "w") as out:
        a = out.add_stream("aac", rate=48000)
        tone = np.zeros((1, 48000), np.float32)
        frame = av.AudioFrame.from_ndarray(tone, format="flt", layout="mono")
        frame.sample_rate = 48000
        out.mux(a.encode(frame))
        out.mux(a.encode(None))
    return path


def header_only(path):
    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=24)
    v.width = v.height = SIDE
    out.start_encoding()
    out.close()
    return path


def unknown_codec(path):
    write_video(path, scene(7, 4), codec="mpeg4")
    data = path.read_bytes()
    assert data.count(b"FMP4") == 2  # the AVI's codec tags
    path.write_bytes(data.replace(b"FMP4", b"ZZZZ"))
    return path


def truncated(path, faststart):
    """A 30-frame mp4 cut inside its 21st frame's data; with faststart its index (moov)
    comes before the frames and stays, without it the index is lost."""
    options = {"movflags": "faststart"} if faststart else None
    write_video(path, scene(8, 30), options=options)
    with av.open(str(path)) as c:
        cut = [p.pos for p in c.demux(video=0) if p.size][20] + 4
    path.write_bytes(path.read_bytes()[:cut])
    return path


def text(path):
    path.write_text("not a video")
    return path


def empty(path):
    path.write_bytes(b"")
    return path


BAD = {
    "text.mp4": (text, "not a video"),
    "empty.mp4": (empty, "empty file (0 bytes)"),
    "audio.mp4": (audio_only, "only audio"),
    "header.mkv": (header_only, "no frames"),
    "codec.avi": (unknown_codec, "no decoder for its video stream"),
    "no-index.mp4": (lambda p: truncated(p, faststart=False), "not a video"),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_input_is_one_line_and_writes_nothing(colorizer, tmp_path, name):
    make, problem = BAD[name]
    src = make(tmp_path / name)
    dst = tmp_path / "out" / name
    with pytest.raises(ValueError) as e:
        video.colorize_video(colorizer, src, dst)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{src}: ") and problem in message
    assert not dst.parent.exists() or not any(dst.parent.iterdir())


def test_a_truncated_video_keeps_its_frames_in_a_file_that_plays(colorizer, tmp_path):
    src = truncated(tmp_path / "cut-short.mp4", faststart=True)
    dst = tmp_path / "out" / "cut-short.mp4"
    with pytest.raises(ValueError) as e:
        video.colorize_video(colorizer, src, dst)
    frames = read(dst)[0]
    assert 0 < len(frames) < 30
    # the decoder refuses the cut frame (FFmpeg 7) or takes it and ends early (FFmpeg 8)
    why = "corrupt video data [(][^)]*[)]|truncated or corrupt: .* of the 30 frames .* decoded"
    kept = f"; those {len(frames)} frames are kept in {re.escape(str(dst))}"
    assert re.fullmatch(f"{re.escape(str(src))}: ({why}){kept}", str(e.value)), str(e.value)


def test_bad_arguments(colorizer, tmp_path):
    src = write_video(tmp_path / "a.mp4", scene(9, 2))
    with pytest.raises(ValueError, match=r"smoothing: expected a value in \[0, 1\), got 1"):
        video.colorize_video(colorizer, src, tmp_path / "b.mp4", smoothing=1.0)
    with pytest.raises(ValueError, match="b.gif: expected an output suffix in .mp4"):
        video.colorize_video(colorizer, src, tmp_path / "b.gif")


def run_cli(*args):
    return CliRunner().invoke(cli.main, ["colorize", *map(str, args)])


def test_cli_colorizes_the_videos_and_photos_of_a_folder(tmp_path):
    m = tmp_path / "model.keras"
    model.build_model(width=0.0625, input_size=32).save(m)
    d = tmp_path / "in"
    d.mkdir()
    write_video(d / "a.mp4", scene(0, 10), audio="aac")
    write_video(d / "b.mkv", scene(1, 5))
    (d / "bad.mp4").write_text("not a video")
    Image.fromarray(scene(2, 1)[0]).save(d / "p.png")
    r = run_cli(d, "--model", m, "--temporal-smoothing", "0.5")
    assert r.exit_code == 1 and "3 colorized, 1 failed" in r.output
    assert f"{d / 'bad.mp4'}: not a video" in r.output
    assert len(read(d / "colorized" / "a.mp4")[0]) == 10 and (d / "colorized" / "p.png").exists()
    r = run_cli(d / "b.mkv", "--model", m, "-o", tmp_path / "o")
    assert r.exit_code == 0 and len(read(tmp_path / "o" / "b.mkv")[0]) == 5
    assert run_cli(d / "b.mkv", "--temporal-smoothing", "1").exit_code == 2
