"""Colorize videos with temporally stable color: the library behind `kcolor colorize film.mp4`.

    kcolor colorize film.mp4 --temporal-smoothing 0.6

    >>> from kcolor import infer, video
    >>> col = infer.load_colorizer()
    >>> summary = video.colorize_video(col, "film.mp4", "colorized/film.mp4", smoothing=0.6)

Each frame is colorized as a photo is (kcolor.infer, kcolor.photo): its lightness goes
through the network at the colorizer's side for its size (`Colorizer.side_for`), and the decoded ab, upsampled, joins the
frame's own full-resolution L. A network colorizing frame by frame flickers: tiny
changes in L (noise, compression, a slow pan) tip the predicted distribution between
hues. So the per-pixel distribution over ab bins, the one the decoding averages, is
smoothed across frames before decoding (an exponential moving average), except

- at scene cuts, where it starts afresh: found where both the lightness histogram
  (relative to the mean lightness) changes by more than CUT_DISTANCE and the frame's
  coarse layout of light and dark (`layout`) by more than CUT_LAYOUT, and
- where a pixel's lightness changed by MOTION_L or more since the previous frame (a
  moving object), whose new colors then replace the old rather than smear.

Frames stream through in batches: memory does not grow with the video's length. The
output has the input's frame size, frame rate, timestamps and frame count, its audio
streams copied unchanged, and the container of its suffix (see ENCODERS).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np

from kcolor import rebalance
from kcolor.photo import compose, photo_from_image

# measured in benchmarks/video.py (figures in docs/video.md):
SMOOTHING = 0.6  # default weight of the past in the moving average
# a new shot starts where both change: the histogram (total variation, 0..1) and the layout
# (mean |change| of `layout`): an exposure jump moves the first, a fast pan the second
CUT_DISTANCE = 0.05
CUT_LAYOUT = 0.08
HISTOGRAM_BINS = 32  # bins of L / mean L over [0, HISTOGRAM_MAX]
HISTOGRAM_MAX = 3.0
LAYOUT_SIDE = 8  # blocks a side of `layout`
MOTION_L = 4.0  # change of a pixel's L (at the network's output scale) that stops smoothing
SHORT_SLACK_S = 0.5  # a video whose header claims this much more is reported as cut short
CONTAINERS = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov", ".avi": "avi", ".webm": "webm"}
VIDEO_SUFFIXES = tuple(CONTAINERS)
# encoder and options by container: h264 at a quality near transparent, VP9 where webm
# demands it; AVI stores no timestamps, so it gets no B-frames (their reordering needs them)
ENCODERS = {
    ".mp4": ("libx264", {"crf": "18", "preset": "medium"}),
    ".mkv": ("libx264", {"crf": "18", "preset": "medium"}),
    ".mov": ("libx264", {"crf": "18", "preset": "medium"}),
    ".avi": ("libx264", {"crf": "18", "preset": "medium", "bf": "0"}),
    ".webm": ("libvpx-vp9", {"crf": "30", "b": "0", "row-mt": "1", "cpu-used": "4"}),
}


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What a video's header says: frame size (W, H), frame rate, frames (declared, or
    estimated from the duration when `exact` is False; 0 when unknown), audio streams."""

    size: tuple[int, int]
    rate: Fraction
    frames: int
    exact: bool
    audio_streams: int


@dataclasses.dataclass(frozen=True)
class VideoSummary:
    """A colorized video: its frames, size (W, H), rate, audio streams copied, scene cuts
    found (where smoothing restarted) and wall time."""

    src: Path
    dst: Path
    frames: int
    size: tuple[int, int]
    rate: Fraction
    audio_streams: int
    cuts: int
    seconds: float

    @property
    def frames_per_second(self) -> float:
        return self.frames / max(self.seconds, 1e-9)


# --- reading --------------------------------------------------------------------------------


def _bad(path: Path, problem: str) -> ValueError:
    return ValueError(f"{path}: {problem}")


def _reason(exc: BaseException) -> str:
    """An FFmpeg error without the file name PyAV appends."""
    return getattr(exc, "strerror", None) or str(exc).splitlines()[0][:200]


def _open_input(src: Path):
    """(container, video stream, audio streams); ValueError (one line) for a file that is
    not a readable video."""
    import av

    if src.is_file() and src.stat().st_size == 0:
        raise _bad(src, "empty file (0 bytes)")
    try:
        container = av.open(str(src))
    except av.error.EOFError:
        raise _bad(src, "no frames: the file ends after its header") from None
    except (av.error.FFmpegError, OSError) as e:
        raise _bad(src, f"not a video, or a format FFmpeg cannot read ({_reason(e)})") from None
    audio = list(container.streams.audio)
    if not container.streams.video:
        container.close()
        kind = "only audio" if audio else "no video stream"
        raise _bad(src, f"{kind}: expected a video")
    vstream = container.streams.video[0]
    if vstream.codec_context is None:
        container.close()
        raise _bad(
            src, "no decoder for its video stream (a codec FFmpeg lacks, or a damaged header)"
        )
    vstream.thread_type = "AUTO"  # frame and slice threads: decoding keeps up with the net
    return container, vstream, audio


def _info(container, vstream, audio) -> VideoInfo:
    rate = vstream.average_rate or vstream.guessed_rate or vstream.base_rate
    if not rate:
        raise _bad(Path(container.name), "the video stream has no frame rate")
    size = (vstream.codec_context.width, vstream.codec_context.height)
    if vstream.frames:
        return VideoInfo(size, Fraction(rate), vstream.frames, True, len(audio))
    if vstream.duration is not None:
        seconds = float(vstream.duration * vstream.time_base)
    else:  # the container's duration, which covers the longest stream
        seconds = (container.duration or 0) / 1_000_000
    return VideoInfo(size, Fraction(rate), round(seconds * rate), False, len(audio))


def probe(src: str | os.PathLike) -> VideoInfo:
    """A video's header (for a progress bar's length); ValueError (one line) for a bad one."""
    src = Path(src)
    container, vstream, audio = _open_input(src)
    with container:
        return _info(container, vstream, audio)


class _Reader:
    """The video's frames in display order; audio packets go to copy_audio on the way.

    A packet the decoder refuses is skipped (as ffmpeg does), data the demuxer cannot
    read ends the frames; either way the first such problem is kept in .problem.
    """

    def __init__(self, container, vstream, audio: list, copy_audio: Callable):
        self.container, self.vstream, self.audio = container, vstream, audio
        self.copy_audio = copy_audio
        self.problem: str | None = None

    def __iter__(self) -> Iterator:
        import av

        packets = self.container.demux(self.vstream, *self.audio)
        while True:
            try:
                packet = next(packets, None)
            except av.error.FFmpegError as e:
                self.problem = self.problem or f"unreadable data ({_reason(e)})"
                packet = None
            if packet is None:
                return
            if packet.stream is not self.vstream:
                if packet.dts is not None:  # demux ends each stream with an empty flush packet
                    self.copy_audio(packet)
                continue
            try:
                yield from packet.decode()
            except av.error.FFmpegError as e:
                self.problem = self.problem or f"corrupt video data ({_reason(e)})"


def _batched(items: Iterable, n: int) -> Iterator[list]:
    it = iter(items)
    while batch := list(itertools.islice(it, n)):
        yield batch


# --- writing --------------------------------------------------------------------------------


class _Clock:
    """Output timestamps: the input's, except where the container keeps none (AVI: its
    decoded timestamps can come out of order) or a frame's is missing or out of order:
    then one frame after the previous one at the nominal rate."""

    def __init__(self, container, vstream, rate: Fraction):
        self.trusted = "avi" not in container.format.name
        self.time_base = vstream.time_base if self.trusted else 1 / rate
        self.step = max(1, round(1 / (rate * self.time_base)))
        self.last = None

    def __call__(self, pts: int | None) -> int:
        if not self.trusted or pts is None or (self.last is not None and pts <= self.last):
            pts = 0 if self.last is None else self.last + self.step
        self.last = pts
        return pts


def _open_output(tmp: Path, dst: Path, clock: _Clock, audio: list, info: VideoInfo):
    """(container, video stream, {input audio stream: output stream}), header written."""
    import av

    codec, options = ENCODERS[dst.suffix.lower()]
    out = av.open(str(tmp), "w", format=CONTAINERS[dst.suffix.lower()])
    try:
        vout = out.add_stream(codec, rate=info.rate)
        vout.width, vout.height = info.size
        # 4:2:0 chroma needs even sides (x264 refuses odd ones): odd sizes keep full chroma
        even = info.size[0] % 2 == 0 and info.size[1] % 2 == 0
        vout.pix_fmt = "yuv420p" if even else "yuv444p"
        vout.options = dict(options)
        vout.codec_context.time_base = clock.time_base
        audio_out = {s: out.add_stream_from_template(s) for s in audio}
        out.start_encoding()
    except (av.error.FFmpegError, ValueError) as e:
        out.close()
        tmp.unlink(missing_ok=True)
        raise _bad(
            dst, f"cannot write a {dst.suffix} video with this input ({_reason(e)})"
        ) from None
    return out, vout, audio_out


def _encode(out, vout, clock: _Clock, images, in_frames) -> None:
    import av

    for img, src in zip(images, in_frames, strict=True):
        frame = av.VideoFrame.from_image(img)
        frame.time_base = clock.time_base
        frame.pts = clock(src.pts)
        out.mux(vout.encode(frame))


# --- temporal smoothing -----------------------------------------------------------------------


def distribution(colorizer, L: np.ndarray) -> np.ndarray:
    """The bin distribution the colorizer's decoding reads: softmax(logits / T) for the
    annealed mean (whose ab is linear in it), softmax(logits) for argmax.

    Args:
        L: (B, S, S) float32 lightness in [0, 100], S = colorizer.side_for(frame size).
    Returns:
        (B, S/4, S/4, Q) float32 probabilities, summing to 1 over the last axis.
    """
    z = colorizer.logits(L)
    if colorizer.decode == "annealed":
        z = z / np.float32(colorizer.temperature)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def decode(colorizer, probs: np.ndarray) -> np.ndarray:
    """(B, h, w, Q) distribution from `distribution` -> (B, h, w, 2) float32 ab.

    Through rebalance.decode_ab at T = 1 on log-probabilities: softmax(log p) = p, so this is
    the colorizer's own decoding of the (smoothed) distribution.
    """
    logp = np.log(np.maximum(probs, np.float32(1e-30)))
    return np.asarray(rebalance.decode_ab(logp, colorizer.table.centres, colorizer.decode, 1.0))


def histogram(L: np.ndarray) -> np.ndarray:
    """(S, S) lightness in [0, 100] -> (HISTOGRAM_BINS,) float64 fractions summing to 1.

    Of L relative to the frame's mean L, so that the exposure flicker of old film (a
    gain) does not look like a cut: 10% more light moves a plain histogram as far as a
    cut between two of the demo photos, this one less than the closest such cut.
    """
    rel = np.clip(L / max(float(L.mean()), 1e-3), 0.0, HISTOGRAM_MAX)
    counts, _ = np.histogram(rel, HISTOGRAM_BINS, (0.0, HISTOGRAM_MAX))
    return counts / max(L.size, 1)


def cut_distance(h0: np.ndarray, h1: np.ndarray) -> float:
    """Total variation distance of two histograms: 0 (same) .. 1 (disjoint)."""
    return 0.5 * float(np.abs(h1 - h0).sum())


def layout(L: np.ndarray) -> np.ndarray:
    """(H, W) lightness -> (LAYOUT_SIDE, LAYOUT_SIDE) means of its blocks relative to the
    frame's mean: where the light and the dark are, blind to a gain (exposure flicker)
    and to noise. Compared with `layout_distance`."""
    rows, cols = (np.arange(min(LAYOUT_SIDE, n)) * n // min(LAYOUT_SIDE, n) for n in L.shape)
    sums = np.add.reduceat(np.add.reduceat(L.astype(np.float64), rows, 0), cols, 1)
    sizes = np.outer(np.diff(rows, append=L.shape[0]), np.diff(cols, append=L.shape[1]))
    means = sums / sizes
    return means / max(float(L.mean()), 1e-3)


def layout_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |difference| of two `layout`s: 0 (same) .. about 1 (light and dark swapped)."""
    return float(np.abs(a - b).mean())


class Smoother:
    """Exponential moving average of per-pixel bin distributions over frames.

    out_t = k * out_{t-1} + (1 - k) * p_t with k = smoothing * max(0, 1 - |dL| / MOTION_L)
    per pixel, dL the pixel's lightness change since the previous frame (at the output
    scale); out_t = p_t at the first frame and at scene cuts (a lightness histogram
    change above `cut` and a layout change above `cut_layout`). smoothing 0 leaves every
    frame as predicted.
    """

    def __init__(
        self,
        smoothing: float,
        motion_l: float = MOTION_L,
        cut: float = CUT_DISTANCE,
        cut_layout: float = CUT_LAYOUT,
    ):
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing: expected a value in [0, 1), got {smoothing}")
        self.smoothing, self.motion_l = float(smoothing), float(motion_l)
        self.cut, self.cut_layout = float(cut), float(cut_layout)
        self.cuts = 0  # scene cuts seen
        self._state = self._L = self._hist = self._layout = None

    def is_cut(self, hist: np.ndarray, lay: np.ndarray) -> bool:
        """Whether a frame of this histogram and layout starts a new shot."""
        return (
            cut_distance(self._hist, hist) > self.cut
            and layout_distance(self._layout, lay) > self.cut_layout
        )

    def __call__(self, probs: np.ndarray, L: np.ndarray) -> np.ndarray:
        """Smooth a batch of consecutive frames.

        Args:
            probs: (B, h, w, Q) float32 distributions of the frames, in order.
            L: (B, S, S) float32 lightness they were predicted from, S a multiple of h.
        Returns:
            (B, h, w, Q) float32 smoothed distributions.
        """
        out = np.empty_like(probs)
        h, w = probs.shape[1:3]
        for i, (p, l) in enumerate(zip(probs, L, strict=True)):
            hist, lay = histogram(l), layout(l)
            small = l.reshape(h, l.shape[0] // h, w, l.shape[1] // w).mean(axis=(1, 3))
            if self._state is None:
                self._state = p.copy()
            elif self.is_cut(hist, lay):
                self.cuts += 1
                self._state = p.copy()
            elif self.smoothing > 0:
                still = np.clip(1.0 - np.abs(small - self._L) / self.motion_l, 0.0, 1.0)
                keep = (self.smoothing * still)[..., None].astype(np.float32)
                self._state = keep * self._state + (1.0 - keep) * p
            else:
                self._state = p
            out[i] = self._state
            self._L, self._hist, self._layout = small, hist, lay
        return out


# --- the driver --------------------------------------------------------------------------------


def _colorize_batch(colorizer, smoother: Smoother, frames: list, pool) -> list:
    """Decoded frames -> colorized full-size PIL RGB images."""
    photos = list(pool.map(lambda f: photo_from_image(f.to_image()), frames))
    L = np.stack(list(pool.map(colorizer.lightness, photos)))  # one video: one size
    ab = decode(colorizer, smoother(distribution(colorizer, L), L))
    return list(pool.map(compose, photos, ab))


def _short(info: VideoInfo, frames: int) -> str | None:
    """Why `frames` decoded frames are fewer than the header promised, or None. A count
    estimated from a duration (which covers the longest stream) gets some slack."""
    slack = 0 if info.exact else round(SHORT_SLACK_S * info.rate + 0.02 * info.frames)
    if info.frames - frames <= slack:
        return None
    how = "declares" if info.exact else "implies"
    return f"truncated or corrupt: {frames} of the {info.frames} frames its header {how} decoded"


def colorize_video(
    colorizer,
    src: str | os.PathLike,
    dst: str | os.PathLike,
    smoothing: float = SMOOTHING,
    batch_frames: int = 16,
    progress: Callable[[int], None] | None = None,
    *,
    motion_l: float = MOTION_L,
    cut_distance: float = CUT_DISTANCE,
    workers: int | None = None,
) -> VideoSummary:
    """Colorize the video src into dst (a VIDEO_SUFFIXES file, written atomically).

    Args:
        colorizer: a kcolor.infer.Colorizer.
        smoothing: weight of the past in the moving average of the color distributions,
            in [0, 1): 0 colorizes each frame alone (see Smoother).
        batch_frames: frames per network batch.
        progress: called with the number of frames written, after each batch.
        motion_l, cut_distance: see Smoother (float("inf"): no motion guide, no cuts).
        workers: threads converting frames (default: all cores).

    Raises ValueError (one line naming the file) for an input that is not a video, has no
    video stream or no frames, or a codec FFmpeg cannot decode: nothing is written. For
    data that breaks off (a truncated or corrupt file), the frames before the break are
    kept in dst, a video that plays, and the message says so.
    """
    src, dst = Path(src), Path(dst)
    if dst.suffix.lower() not in CONTAINERS:
        raise _bad(dst, f"expected an output suffix in {' '.join(VIDEO_SUFFIXES)}")
    if batch_frames < 1:
        raise ValueError(f"batch_frames: expected >= 1, got {batch_frames}")
    smoother = Smoother(smoothing, motion_l, cut_distance)
    start = time.monotonic()
    container, vstream, audio = _open_input(src)
    with container:
        info = _info(container, vstream, audio)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp")
        clock = _Clock(container, vstream, info.rate)
        out, vout, audio_out = _open_output(tmp, dst, clock, audio, info)

        def copy_audio(packet):
            packet.stream = audio_out[packet.stream]
            out.mux(packet)

        reader = _Reader(container, vstream, audio, copy_audio)
        frames = 0
        try:
            with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
                for batch in _batched(reader, batch_frames):
                    images = _colorize_batch(colorizer, smoother, batch, pool)
                    _encode(out, vout, clock, images, batch)
                    frames += len(batch)
                    if progress:
                        progress(len(batch))
            out.mux(vout.encode(None))  # flush the encoder's delayed frames
            out.close()
        except BaseException:
            out.close()
            tmp.unlink(missing_ok=True)
            raise
    broken = reader.problem or _short(info, frames)
    if frames == 0:
        tmp.unlink(missing_ok=True)
        raise _bad(src, f"{broken or 'no video frames'}; no output written")
    os.replace(tmp, dst)
    if broken:
        raise _bad(src, f"{broken}; those {frames} frames are kept in {dst}")
    seconds = time.monotonic() - start
    return VideoSummary(src, dst, frames, info.size, info.rate, len(audio), smoother.cuts, seconds)
