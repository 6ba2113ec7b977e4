"""Photos in and out: decoding, lightness, and joining predicted ab to the full-size L.

    >>> from kcolor import photo
    >>> p = photo.open_photo("old.jpg")              # upright, gray/RGB/16-bit/alpha
    >>> small = photo.net_lightness(p, 256)          # (256, 256) float32 L
    >>> out = photo.compose(p, ab_low)               # full-size PIL image, L kept

Used by `kcolor colorize` (kcolor.infer) and `kcolor evaluate` (kcolor.metrics).
Full-resolution work runs in row strips of STRIP_PIXELS, so a 50-megapixel photo
needs its decoded pixels and its output plus a bounded amount of float temporaries.
Pixels in a file's embedded ICC colour profile (Adobe RGB, ProPhoto, a gray gamma,
a CMYK press profile...) are converted to sRGB first (`to_srgb`): kcolor's Lab is
sRGB's. Colors outside the sRGB gamut lose chroma (not lightness) until they fit, so the
output's L is the input's (color.lab_to_rgb8; color.lab_to_rgb clips channels instead).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageCms, ImageOps, UnidentifiedImageError

from kcolor import color

IMAGE_SUFFIXES = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
}
OUTPUT_STRIDE = 4  # the networks' ab come out at 1/4 of their input side (model.OUTPUT_STRIDE)
# what a folder gives: every image suffix PIL reads; the outputs of those not in
# IMAGE_SUFFIXES (formats kcolor writes back) are PNG
READ_SUFFIXES = frozenset(IMAGE_SUFFIXES) | {".gif", ".ppm", ".pgm", ".pbm", ".pnm", ".jfif"}
STRIP_PIXELS = 1 << 20  # pixels per row strip: ~50 MB of float temporaries
COMPARE_MAX_SIDE = 2048  # each panel of a --compare image is shrunk to fit this
SAVE_OPTIONS = {
    "JPEG": {"quality": 95},
    "WEBP": {"quality": 95},
    "TIFF": {"compression": "tiff_deflate"},
}


# --- photos ------------------------------------------------------------------------


@dataclasses.dataclass
class Photo:
    """A decoded photo, upright (EXIF orientation applied).

    image: mode 'L' (8-bit gray), 'I;16' (16-bit gray) or 'RGB' (8-bit); only its
        lightness is used, so a color photo is colorized anew.
    alpha: the alpha channel (mode 'L') or None; it is copied to the output.
    format: the PIL format of the file it came from, or None.
    exif: the file's EXIF block (date, camera, captions...), orientation removed since
        the image is upright, or None; it is copied to JPEG, PNG and WebP outputs.
    """

    image: Image.Image
    alpha: Image.Image | None = None
    format: str | None = None
    exif: bytes | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
# modes converted here and the mode littleCMS writes for each (gray goes through a tone
# curve measured on the 8-bit levels: Pillow's ImageCms has no 16-bit transforms)
_CMS_MODES = {"L": "RGB", "I;16": "RGB", "RGB": "RGB", "RGBA": "RGBA", "CMYK": "RGB"}
_RAMP = np.arange(256, dtype=np.uint8)[None]  # every 8-bit gray level
_GRID = np.stack(np.meshgrid(*[np.linspace(0, 255, 6, dtype=np.uint8)] * 3), -1).reshape(1, -1, 3)
EXIF_COLOR_SPACE = 0xA001  # the EXIF IFD's ColorSpace tag: 1 = sRGB


@functools.lru_cache(maxsize=16)
def _conversion(icc: bytes, mode: str) -> np.ndarray | ImageCms.ImageCmsTransform | None:
    """How to convert `mode` pixels from the profile `icc` to sRGB: for gray (L, I;16) the
    sRGB level of each of the 256 8-bit levels, for colour littleCMS's transform; None
    when it moves no gray level (colour of a 6x6x6 grid) by more than one level: an sRGB
    profile in effect, whatever its name says. Raises OSError or ImageCms.PyCMSError for
    a profile that cannot be used."""
    gray = mode in ("L", "I;16")
    flags = ImageCms.Flags.BLACKPOINTCOMPENSATION
    if gray:  # littleCMS's optimized 8-bit gray transform is off by up to 10 levels near
        flags |= ImageCms.Flags.NOOPTIMIZE  # black (measured); here it runs on 256 pixels
    transform = ImageCms.buildTransform(
        ImageCms.ImageCmsProfile(io.BytesIO(icc)),
        _SRGB,
        "L" if gray else mode,
        _CMS_MODES[mode],
        ImageCms.Intent.RELATIVE_COLORIMETRIC,
        flags=flags,
    )
    if mode == "CMYK":
        return transform
    probe = Image.fromarray(_RAMP if gray else _GRID).convert("L" if gray else mode)
    moved = np.asarray(ImageCms.applyTransform(probe, transform), np.int16)[..., :3]
    if np.abs(moved - (_RAMP[..., None] if gray else _GRID)).max() <= 1:
        return None
    return moved[0, :, 0] if gray else transform


def to_srgb(img: Image.Image) -> Image.Image:
    """`img` with the pixels of its embedded ICC profile converted to sRGB.

    Modes L, I;16, RGB, RGBA (alpha kept) and CMYK; gray stays gray. An image without a
    profile, or whose profile is sRGB's in effect, is returned as it is; so is one whose
    profile cannot be used (damaged, or for another colour space than the mode's), with a
    warning. Uses littleCMS through Pillow's ImageCms with relative colorimetric intent
    and black point compensation: photo editors' default for converting a photo to sRGB.
    16-bit gray follows the profile's tone curve measured at the 256 8-bit levels and
    interpolated between them (within half an 8-bit level).
    """
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in _CMS_MODES:
        return img
    try:
        conversion = _conversion(icc, img.mode)
    except (OSError, ImageCms.PyCMSError) as e:
        how = "converted without it" if img.mode == "CMYK" else "pixels read as sRGB"
        warnings.warn(f"colour profile not used, {how} ({e})", stacklevel=2)
        return img
    if conversion is None:
        return img
    if img.mode == "L":
        out = img.point(conversion.tolist())
    elif img.mode == "I;16":
        values = np.interp(np.asarray(img, np.float64), _RAMP[0] * 257.0, conversion * 257.0)
        out = Image.fromarray(np.rint(values).astype(np.uint16))
    else:
        out = ImageCms.applyTransform(img, conversion)
    out.info = {k: v for k, v in img.info.items() if k != "icc_profile"}
    return out


def _exif_in_srgb(exif: bytes) -> bytes:
    """The EXIF block with its ColorSpace saying sRGB (the pixels were converted to it)."""
    block = Image.Exif()
    try:
        block.load(exif)
        ifd = block.get_ifd(ExifTags.IFD.Exif)
    except Exception:  # PIL raises SyntaxError, struct.error, ... on a damaged block
        return exif  # copied as it came, as for photos without a profile
    if ifd.get(EXIF_COLOR_SPACE, 1) == 1:
        return exif
    ifd[EXIF_COLOR_SPACE] = 1
    return block.tobytes()


def depalette(img: Image.Image) -> Image.Image:
    """A palette image ('P', 'PA') as RGB, or RGBA where it has transparency; any other
    image as it is."""
    if img.mode not in ("P", "PA"):
        return img
    return img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")


def photo_from_image(img: Image.Image, fmt: str | None = None) -> Photo:
    """Any PIL image (gray, RGB, RGBA, palette, 16-bit, CMYK...) -> a Photo, in sRGB."""
    img.load()
    ImageOps.exif_transpose(img, in_place=True)  # also drops the orientation tag
    exif = img.info.get("exif") or None
    icc = img.info.get("icc_profile")
    img = depalette(img)
    if img.mode == "1":
        img = img.convert("L")
    if img.mode.startswith("I;16"):
        img = Image.fromarray(np.asarray(img).astype(np.uint16))  # native byte order
    elif img.mode in ("I", "F"):  # 32-bit int: 16-bit range; float: [0, 1]
        scale = 65535.0 if img.mode == "F" else 1.0
        values = np.clip(np.rint(np.asarray(img, np.float64) * scale), 0, 65535)
        img = Image.fromarray(values.astype(np.uint16))
    if icc:
        img.info["icc_profile"] = icc  # kept by the conversions above, set by fromarray's
        pixels = img.convert("L") if img.mode == "LA" else img  # littleCMS converts L, not LA
        converted = to_srgb(pixels)
        if converted is not pixels:
            alpha = [img.getchannel("A")] if img.mode == "LA" else []
            img = Image.merge("LA", [converted, *alpha]) if alpha else converted
            exif = _exif_in_srgb(exif) if exif else exif
    alpha = None
    if img.mode in ("LA", "La", "RGBA", "RGBa"):
        alpha = img.getchannel("A")
        img = img.convert("L" if img.mode[0] == "L" else "RGB")
    if img.mode not in ("L", "I;16", "RGB"):
        img = img.convert("RGB")
    return Photo(img, alpha, fmt, exif)


def open_photo(path: str | os.PathLike) -> Photo:
    """Decode an image file; raises OSError / UnidentifiedImageError for a bad one.

    PIL's warnings about the file (a decompression-bomb-sized photo, a bad EXIF block)
    are given again naming it: PIL's own do not say which file they are about.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Image.open(path) as img:
            photo = photo_from_image(img, img.format)
    for w in caught:
        warnings.warn(f"{path}: {w.message}", w.category, stacklevel=2)
    return photo


# A pixel counts as coloured when max(R, G, B) - min(R, G, B) exceeds GRAY_SPREAD (of 255;
# JPEG noise in a gray photo stays below it); a photo with fewer coloured pixels than
# GRAY_FRACTION is a gray one (prep skips it, evaluate has nothing to score in it).
GRAY_SPREAD = 6
GRAY_FRACTION = 0.01


def has_color(photo: Photo) -> bool:
    """Whether the photo has colours (GRAY_FRACTION of its pixels, on a 256 px copy)."""
    if photo.image.mode != "RGB":
        return False
    small = photo.image.copy()
    small.thumbnail((256, 256))
    rgb = np.asarray(small, np.int16)
    return bool(((rgb.max(-1) - rgb.min(-1)) > GRAY_SPREAD).mean() >= GRAY_FRACTION)


def describe_error(exc: BaseException) -> str:
    """One line saying what went wrong with a file."""
    if isinstance(exc, UnidentifiedImageError):
        return "not an image, or a format PIL cannot read"
    if isinstance(exc, PermissionError):
        return "cannot read it: permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a folder, expected an image file"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    lower = text.lower()
    if "truncated" in lower or "broken data stream" in lower or "premature end" in lower:
        return f"truncated or corrupt image ({text})"
    return text[:300]


def row_strips(height: int, width: int) -> Iterator[tuple[int, int]]:
    """(first row, end row) of strips of about STRIP_PIXELS pixels covering the image."""
    rows = max(1, STRIP_PIXELS // max(width, 1))
    for r0 in range(0, height, rows):
        yield r0, min(height, r0 + rows)


def _rows(img: Image.Image, r0: int, r1: int) -> np.ndarray:
    return np.asarray(img.crop((0, r0, img.width, r1)))


def fit_in_square(width: int, height: int, side: int) -> tuple[int, int]:
    """The size a photo is resized to inside the network's side x side input: the long
    side `side`, the short side in proportion, rounded to a multiple of OUTPUT_STRIDE."""
    long, short = max(width, height), min(width, height)
    short = min(
        side, max(OUTPUT_STRIDE, round(side * short / long / OUTPUT_STRIDE) * OUTPUT_STRIDE)
    )
    return (side, short) if width >= height else (short, side)


def net_lightness(photo: Photo, side: int) -> np.ndarray:
    """The photo's L at the network's input: resized (bilinear, antialiased) keeping its
    aspect ratio (`fit_in_square`), then padded by mirroring to (side, side). float32 in
    [0, 100]; `compose` keeps the unpadded part of the prediction.

    Squashing a 3:2 photo into a square would show the network shapes it never saw in
    training; mirroring pads with the photo's own content, not a flat border. Resized in
    two separable passes, rows strip by strip first, so the full-size L never exists at once.
    """
    width, height = photo.size
    w, h = fit_in_square(width, height, side)
    narrow = np.empty((height, w), np.float32)  # (H, w): small
    for r0, r1 in row_strips(height, width):
        strip = Image.fromarray(color.lightness(_rows(photo.image, r0, r1)))
        narrow[r0:r1] = np.asarray(strip.resize((w, r1 - r0), Image.BILINEAR))
    small = np.asarray(Image.fromarray(narrow).resize((w, h), Image.BILINEAR))
    return np.pad(small, ((0, side - h), (0, side - w)), mode="symmetric")


# --- ab -> full-resolution RGB -------------------------------------------------------------


def _taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps with half-pixel centres (tf.image.resize, torch align_corners=False)."""
    src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    return i0, np.minimum(i0 + 1, n_in - 1), (src - i0).astype(np.float32)


def compose(photo: Photo, ab_low: np.ndarray, workers: int = 1) -> Image.Image:
    """Join the predicted ab to the photo's full-resolution L.

    Args:
        photo: the input photo.
        ab_low: (h, w, 2) float32 predicted ab at the network's output resolution; a
            square one comes from `net_lightness` and is cropped to the photo's part.
        workers: threads converting row strips at once (numpy releases the GIL).
    Returns:
        PIL image of the photo's size, 'RGB' (or 'RGBA' with the photo's alpha).
    """
    out = Image.new("RGB", photo.size)
    for r0, rgb in _compose_strips(photo, ab_low, workers, bits=8):
        out.paste(Image.fromarray(rgb), (0, r0))
    if photo.alpha is not None:
        out.putalpha(photo.alpha)
    return out


def compose16(photo: Photo, ab_low: np.ndarray, workers: int = 1) -> np.ndarray:
    """`compose` at 16 bits for a 16-bit photo: (H, W, 3) uint16 sRGB whose lightness is
    the photo's own at 16-bit precision (PIL has no 16-bit RGB mode: an array)."""
    width, height = photo.size
    out = np.empty((height, width, 3), np.uint16)
    for r0, rgb in _compose_strips(photo, ab_low, workers, bits=16):
        out[r0 : r0 + len(rgb)] = rgb
    return out


def _compose_strips(photo: Photo, ab_low: np.ndarray, workers: int, bits: int):
    """(first row, (rows, W, 3) sRGB) strips of the photo's L joined to the upsampled ab."""
    width, height = photo.size
    h, w = ab_low.shape[:2]
    if h == w:  # the square of `net_lightness`: keep the part that is the photo
        w, h = (n // OUTPUT_STRIDE for n in fit_in_square(width, height, w * OUTPUT_STRIDE))
        ab_low = ab_low[:h, :w]
    x0, x1, wx = _taps(width, w)
    wx = wx[None, :, None]
    cols = ab_low[:, x0] * (1 - wx) + ab_low[:, x1] * wx  # (h, W, 2): small
    y0, y1, wy = _taps(height, h)

    def strip(rows):
        r0, r1 = rows
        t = wy[r0:r1, None, None]
        ab = cols[y0[r0:r1]] * (1 - t) + cols[y1[r0:r1]] * t
        return r0, color.lab_to_rgb8(color.lightness(_rows(photo.image, r0, r1)), ab, bits)

    strips = row_strips(height, width)
    with ThreadPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        yield from (pool.map(strip, strips) if pool else map(strip, strips))


def save_image16(rgb: np.ndarray, path: Path, fmt: str) -> None:
    """Write (H, W, 3) uint16 sRGB as a 16-bit PNG (pypng) or TIFF (tifffile), atomically.

    Pillow has no 16-bit RGB mode, so these two libraries, which have, write it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "TIFF":
        import tifffile

        def write(tmp):
            tifffile.imwrite(tmp, rgb, photometric="rgb", compression="zlib")
    elif fmt == "PNG":
        import png

        def write(tmp):
            with open(tmp, "wb") as f:
                writer = png.Writer(rgb.shape[1], rgb.shape[0], bitdepth=16, greyscale=False)
                writer.write(f, rgb.reshape(rgb.shape[0], -1))
    else:
        raise ValueError(f"{path}: 16-bit output is PNG or TIFF, not {fmt}")
    atomic_write(path, write)


def to_rgb8(photo: Photo) -> Image.Image:
    """The photo itself as an 8-bit 'RGB' image (16-bit gray rounded to 8 bits)."""
    img = photo.image
    if img.mode == "I;16":
        img = Image.fromarray(((np.asarray(img, np.uint32) + 128) // 257).astype(np.uint8))
    return img.convert("RGB")


def compare_image(photo: Photo, out: Image.Image) -> Image.Image:
    """Input | output side by side, each panel shrunk to fit COMPARE_MAX_SIDE."""
    scale = min(1.0, COMPARE_MAX_SIDE / max(photo.size))
    size = (max(1, round(photo.size[0] * scale)), max(1, round(photo.size[1] * scale)))
    left = Photo(photo.image.resize(size, Image.BILINEAR))
    pair = Image.new("RGB", (2 * size[0], size[1]))
    pair.paste(to_rgb8(left), (0, 0))
    pair.paste(out.convert("RGB").resize(size, Image.BILINEAR), (size[0], 0))
    return pair


EXIF_FORMATS = ("JPEG", "PNG", "WEBP")  # outputs that carry the input's EXIF block
ALPHA_FORMATS = ("PNG", "WEBP", "TIFF")  # outputs that keep the input's alpha


def temp_path(final: Path) -> Path:
    """The one temporary name of kcolor's atomic writes: .NAME.PID.tmp, plus NAME's own
    suffix (Keras and PIL pick the format from it). Per process, so two writers never
    share one; prep's sweep of stale files knows this pattern (`stale_temp_glob`)."""
    final = Path(final)
    return final.with_name(f".{final.name}.{os.getpid()}.tmp{final.suffix}")


def stale_temp_glob(final_name: str) -> str:
    """The glob of `temp_path`s of `final_name` left by any process."""
    return f".{final_name}.*.tmp*"


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` into a temporary file beside `path`, then rename it over `path`: a
    kill at any moment leaves the old file or the new one, never a half-written one."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def save_image(img: Image.Image, path: Path, fmt: str, exif: bytes | None = None) -> None:
    """Write atomically (`atomic_write`) in PIL format `fmt`, with the EXIF block `exif`
    where the format takes one (EXIF_FORMATS)."""
    try:  # one call, no check-then-create: parallel saves make the folder at the same time
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OSError(f"cannot write {path}: {path.parent} is not a folder") from None
    if img.mode == "RGBA" and fmt not in ALPHA_FORMATS:
        # composited on white: dropping alpha would show the pixels it hid
        flat = Image.new("RGB", img.size, (255, 255, 255))
        flat.paste(img, mask=img.getchannel("A"))
        img = flat
    options = dict(SAVE_OPTIONS.get(fmt, {}))
    if exif and fmt in EXIF_FORMATS:
        options["exif"] = exif
    atomic_write(path, lambda tmp: img.save(tmp, format=fmt, **options))
