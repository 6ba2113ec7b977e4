"""Flicker, scene cuts, smear and speed of `kcolor colorize film.mp4` (kcolor.video).

    nice .venv/bin/python benchmarks/video.py            # ~3 minutes on 2 cores

The bundled model colorizes clips made here from the photos in examples/demo/truth/:
854x480 gray frames at 24 fps, each with fresh Gaussian noise (sigma NOISE levels),
encoded as h264 (crf 18), FRAMES frames:

- pan:    one photo, the camera panning PAN px a frame (a static scene: any change of
          color between frames is flicker);
- cut:    the pan of one photo, then of another;
- moving: a still photo with a PATCH px square of another moving SPEED px a frame.

Figures:
- flicker: mean |delta ab| (Euclidean, ab units) between consecutive frames, at the
  network's output (the decoded 1/4-side ab the smoothing acts on) and on the written
  video (decoded, ab of its Lab; the pan undone, the moving square left out), where the
  encoder's own chroma noise adds a floor;
- lag: mean |ab - ab at smoothing 0| at the network's output, how far smoothing moves
  the colors from the per-frame ones: over the pan clip; over the moving square (smear);
  over the AFTER_CUT frames after a cut (carry-over of the previous shot);
- settle: frames after the cut until the colors are within 10% of the per-frame ones
  with the cut detection and the motion guide off: how long any change that neither
  catches (a light switched on, slow motion) takes to show;
- the lightness-histogram change (kcolor.video.cut_distance) between consecutive frames
  of a shot, between a photo and itself brighter, and between two photos (a cut);
- frames/s of the whole path (decode, network, smoothing, join, encode) at 480p, and
  the time multiscale adds (the model's decoding against the same without it).
Ratios compare runs of this one process.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from kcolor import color, infer, photo, video

PHOTOS = Path(__file__).resolve().parent.parent / "examples" / "demo" / "truth"
SIZE = (854, 480)  # 480p, 16:9
RATE = 24
FRAMES = 48
NOISE = 2.0  # sigma of the per-frame noise, in 8-bit levels
PAN = 2  # px per frame (even: the figures read every 2nd pixel, ab being smooth)
PATCH, SPEED = 128, 6  # the moving square: side and px per frame
SMOOTHINGS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9)
SCENES = (
    "beach-maldives.jpg",
    "mountain-picos-de-europa.jpg",
    "animal-red-panda.jpg",
)  # pan, cut to, patch
AFTER_CUT = 6  # frames after a cut over which the carry-over is measured


# --- clips --------------------------------------------------------------------------------


def scene(name: str, width: int = SIZE[0] + PAN * FRAMES) -> np.ndarray:
    """A demo photo in gray, resized to `width` and centre-cropped to SIZE[1] rows."""
    img = Image.open(PHOTOS / name).convert("L")
    img = img.resize((width, round(img.height * width / img.width)), Image.BICUBIC)
    top = (img.height - SIZE[1]) // 2
    return np.asarray(img, np.float32)[top : top + SIZE[1]]


def noisy(gray: np.ndarray, rng) -> np.ndarray:
    return np.clip(gray + rng.normal(0, NOISE, gray.shape), 0, 255).astype(np.uint8)


def pan_frames(name: str, rng, n: int = FRAMES):
    big = scene(name)
    for t in range(n):
        yield noisy(big[:, PAN * t : PAN * t + SIZE[0]], rng)


def moving_frames(rng):
    back = scene(SCENES[0])[:, : SIZE[0]]
    square = scene(SCENES[2])[SIZE[1] // 2 - PATCH // 2 :][:PATCH, SIZE[0] // 2 :][:, :PATCH]
    for t in range(FRAMES):
        frame = back.copy()
        x, y = 40 + SPEED * t, (SIZE[1] - PATCH) // 2
        frame[y : y + PATCH, x : x + PATCH] = square
        yield noisy(frame, rng)


def patch_box(t: int) -> tuple[slice, slice]:
    x, y = 40 + SPEED * t, (SIZE[1] - PATCH) // 2
    return slice(y, y + PATCH), slice(x, x + PATCH)


def write_clip(path: Path, frames) -> Path:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        stream.options = {"crf": "18"}
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="gray")))
        out.mux(stream.encode(None))
    return path


def read_frames(path: Path):
    """RGB frames of a video, (H, W, 3) uint8."""
    import av

    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            yield f.to_ndarray(format="rgb24")


def read_ab(path: Path) -> np.ndarray:
    """(T, H/2, W/2, 2) float32 ab of every 2nd pixel (ab comes upsampled from 1/4 of the
    network's side, so this loses nothing)."""
    return np.stack([color.rgb_to_lab(f[::2, ::2])[..., 1:] for f in read_frames(path)])


# --- figures ---------------------------------------------------------------------------------


def dist(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((a - b) ** 2).sum(-1)).mean())


def flicker(ab: np.ndarray, pan: int = 0, skip=(), mask=None) -> float:
    """Mean |delta ab| of consecutive frames, the pan undone; pairs (t, t+1) with t in skip
    are left out; mask(t) -> bool (H, W) of the pixels to leave out of frame t."""
    s = pan // 2
    values = []
    for t in range(len(ab) - 1):
        if t in skip:
            continue
        a, b = ab[t][:, s:], ab[t + 1][:, : ab.shape[2] - s]
        if mask is None:
            values.append(dist(a, b))
        else:
            keep = ~(mask(t)[:, s:] | mask(t + 1)[:, : ab.shape[2] - s])
            values.append(dist(a[keep], b[keep]))
    return float(np.mean(values))


def square_mask(t: int) -> np.ndarray:
    m = np.zeros((SIZE[1] // 2, SIZE[0] // 2), bool)
    ys, xs = patch_box(t)
    m[ys.start // 2 - 4 : ys.stop // 2 + 4, xs.start // 2 - 4 : xs.stop // 2 + 4] = True
    return m


def smear(net: np.ndarray, net0: np.ndarray) -> float:
    """Mean |ab - ab0| of the network's output cells under the moving square, from frame 4
    on (the smoothing has settled)."""
    h, w = net.shape[1:3]
    out = []
    for t in range(4, len(net)):
        ys, xs = patch_box(t)
        rows = slice(ys.start * h // SIZE[1], -(-ys.stop * h // SIZE[1]))
        cols = slice(xs.start * w // SIZE[0], -(-xs.stop * w // SIZE[0]))
        out.append(dist(net[t, rows, cols], net0[t, rows, cols]))
    return float(np.mean(out))


def settle(net: np.ndarray, net0: np.ndarray, at: int) -> str:
    """Frames from `at` (a change of scene) until the colors are within 10% of the jump of
    the per-frame ones (net0) at `at`; '>N' when they are not within the clip's N frames."""
    jump = dist(net0[at], net0[at - 1])
    frames = range(len(net) - at)
    k = next((k for k in frames if dist(net[at + k], net0[at + k]) <= 0.1 * jump), None)
    return f">{len(frames)}" if k is None else str(k)


def histogram_changes(col, clips: dict, cut_at: int) -> dict[str, list[float]]:
    """cut_distance between consecutive frames of the clips' shots, between each demo
    photo and itself 5% and 10% brighter (old film's exposure flicker), and between
    every two demo photos (a cut)."""

    def hist(gray):
        rgb = np.repeat(np.clip(gray, 0, 255).astype(np.uint8)[..., None], 3, -1)
        return video.histogram(col.lightness(photo.photo_from_image(Image.fromarray(rgb))))

    shots = []
    for name, path in clips.items():
        hists = [hist(f[..., 0]) for f in read_frames(path)]
        for t in range(len(hists) - 1):
            if not (name == "cut" and t == cut_at - 1):
                shots.append(video.cut_distance(hists[t], hists[t + 1]))
    stills = [scene(p.name, SIZE[0]) for p in sorted(PHOTOS.glob("*.jpg"))]
    return {
        "shots": shots,
        "5% light": [video.cut_distance(hist(g), hist(g * 1.05)) for g in stills],
        "10% light": [video.cut_distance(hist(g), hist(g * 1.10)) for g in stills],
        "cuts": [
            video.cut_distance(hist(a), hist(b)) for a, b in itertools.combinations(stills, 2)
        ],
    }


class NetOutput:
    """Records the decoded low-resolution ab of the real path (video.decode), before
    upsampling and encoding: (T, h, w, 2) in .ab after the run."""

    def __enter__(self):
        self.parts, self._decode = [], video.decode
        video.decode = lambda col, probs: (
            self.parts.append(self._decode(col, probs)) or self.parts[-1]
        )
        return self

    def __exit__(self, *exc):
        video.decode = self._decode
        self.ab = np.concatenate(self.parts)


# --- the run ----------------------------------------------------------------------------------


def colorize(col, src: Path, out: Path, smoothing: float, **kw):
    """(ab of the written video, ab of the network output, summary)."""
    dst = out / f"{src.stem}-{smoothing}-{sorted(kw.items())}.mp4"
    with NetOutput() as net:
        summary = video.colorize_video(col, src, dst, smoothing, **kw)
    return read_ab(dst), net.ab, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="auto", help="see kcolor colorize --precision")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    col = infer.load_colorizer(None, precision=args.precision)
    print(
        f"kcolor video benchmark: {os.cpu_count()} cores, bundled model (side {col.side}), "
        f"precision {args.precision}, clips of {FRAMES} frames {SIZE[0]}x{SIZE[1]} at {RATE} fps"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cut_at = FRAMES // 2
        clips = {
            "pan": write_clip(tmp / "pan.mp4", pan_frames(SCENES[0], rng)),
            "cut": write_clip(
                tmp / "cut.mp4",
                itertools.chain(
                    pan_frames(SCENES[0], rng, cut_at), pan_frames(SCENES[1], rng, cut_at)
                ),
            ),
            "moving": write_clip(tmp / "moving.mp4", moving_frames(rng)),
        }
        print(
            f"\nlightness-histogram change (a cut: above CUT_DISTANCE {video.CUT_DISTANCE} and a "
            f"layout change above {video.CUT_LAYOUT}; benchmarks/cuts.py measures both):"
        )
        for what, values in histogram_changes(col, clips, cut_at).items():
            print(
                f"  {what:>9}: min {min(values):.3f}  median {np.median(values):.3f}  "
                f"max {max(values):.3f}  (n={len(values)})"
            )

        out = tmp / "out"
        print(
            "\nflicker: mean |delta ab| between consecutive frames (ratio to smoothing 0); "
            "lag, smear, carry: mean |ab - ab at smoothing 0|, at the network's output"
        )
        print(
            f"{'smoothing':>9} {'net: pan':>15} {'video: pan':>15} {'video: cut':>15} "
            f"{'video: moving':>15} {'lag':>5} {'smear':>5} {'carry':>5} {'settle':>6} "
            f"{'frames/s':>8}"
        )
        after = slice(cut_at, cut_at + AFTER_CUT)
        base, off = {}, float("inf")
        for s in SMOOTHINGS:
            ab_pan, net_pan, summary = colorize(col, clips["pan"], out, s)
            ab_cut, net_cut, cut_summary = colorize(col, clips["cut"], out, s)
            ab_mov, net_mov, _ = colorize(col, clips["moving"], out, s)
            _, net_open, _ = colorize(col, clips["cut"], out, s, cut_distance=off, motion_l=off)
            assert cut_summary.cuts == 1, f"cuts found in the cut clip: {cut_summary.cuts}"
            figures = {
                "net": flicker(net_pan),
                "pan": flicker(ab_pan, PAN),
                "cut": flicker(ab_cut, PAN, skip={cut_at - 1}),
                "moving": flicker(ab_mov, 0, mask=square_mask),
            }
            if s == 0:
                base = {"pan": net_pan, "cut": net_cut, "moving": net_mov, "figures": figures}
            cells = " ".join(
                f"{v:>8.3f} ({v / base['figures'][k]:.2f})" for k, v in figures.items()
            )
            print(
                f"{s:>9} {cells} {dist(net_pan, base['pan']):>5.2f} "
                f"{smear(net_mov, base['moving']):>5.2f} "
                f"{dist(net_cut[after], base['cut'][after]):>5.2f} "
                f"{settle(net_open, base['cut'], cut_at):>6} {summary.frames_per_second:>8.1f}",
                flush=True,
            )

        s = video.SMOOTHING
        print(f"\nat smoothing {s}, carry-over of the previous shot after the cut:")
        for cut, motion in itertools.product((video.CUT_DISTANCE, off), (video.MOTION_L, off)):
            _, net_cut, _ = colorize(col, clips["cut"], out, s, cut_distance=cut, motion_l=motion)
            print(
                f"  scene-cut reset {'on ' if cut < off else 'off'}, motion guide "
                f"{'on ' if motion < off else 'off'}: {dist(net_cut[after], base['cut'][after]):.2f}"
            )
        _, net_mov, _ = colorize(col, clips["moving"], out, s, motion_l=off)
        print(
            f"smear on the moving square: {smear(net_mov, base['moving']):.2f} without the "
            f"motion guide (with it, MOTION_L {video.MOTION_L}: the table's)"
        )
        for s in (0.0, video.SMOOTHING):
            start = time.perf_counter()
            summary = video.colorize_video(col, clips["pan"], out / "speed.mp4", s)
            print(
                f"speed at 480p, smoothing {s}: {summary.frames / (time.perf_counter() - start):.1f} "
                f"frames/s ({summary.frames} frames, {os.cpu_count()} cores)"
            )
        if col.multiscale:  # its cost: the same clip, the same network, one side only
            plain = infer.Colorizer(col.net, multiscale=False)  # else as the model records
            seconds = {"multiscale": [], "one side": []}
            for _ in range(3):  # alternated, medians: the machine's speed drifts
                for name, c in (("one side", plain), ("multiscale", col)):
                    start = time.perf_counter()
                    summary = video.colorize_video(
                        c, clips["pan"], out / "speed.mp4", video.SMOOTHING
                    )
                    seconds[name].append(time.perf_counter() - start)
            one, multi = (float(np.median(seconds[k])) for k in ("one side", "multiscale"))
            print(
                f"multiscale (a pass at the training side {col.training_side} too): "
                f"{multi / one:.2f}x the time of side {col.side} alone "
                f"({summary.frames / multi:.1f} against {summary.frames / one:.1f} frames/s)"
            )


if __name__ == "__main__":
    main()
