"""Color science: sRGB <-> CIE Lab, ab bin tables, and the fast 8-bit paths of photos
(their lightness; Lab -> sRGB keeping lightness). Rebalancing and decoding of the bin
distribution are in kcolor.rebalance.

Every color constant of kcolor is defined here, once, with its source.

    >>> from kcolor import color
    >>> lab = color.rgb_to_lab(rgb)            # (..., 3) float32 sRGB in [0, 1]
    >>> table = color.get_bin_table("zhang313")
    >>> bins = table.quantize(lab[..., 1:])    # (...,) int32 nearest-centre index
"""

from __future__ import annotations

import dataclasses
import functools
from importlib import resources

import numpy as np

# --- Constants -------------------------------------------------------------

# sRGB primaries to CIE XYZ, D65 (IEC 61966-2-1); the matrix skimage.color uses.
XYZ_FROM_RGB = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ],
    dtype=np.float64,
)
RGB_FROM_XYZ = np.linalg.inv(XYZ_FROM_RGB)
# D65 reference white, CIE 1931 2-degree observer (as in skimage.color).
D65_WHITE = np.array([0.95047, 1.0, 1.08883], dtype=np.float64)
# CIE Lab piecewise constants: (6/29)^3 and the linear-segment slope 1/(3 (6/29)^2).
LAB_EPSILON = 0.008856
LAB_KAPPA = 7.787
LAB_DELTA = 6.0 / 29.0

# The network's data contract (richzhang/colorization): L is centred at 50 and scaled by 100.
L_CENTRE = 50.0
L_SCALE = 100.0
# Storage encoding of L in the shards: uint8 = round(L * 255 / 100); max error 0.196 L units.
L_UINT8_SCALE = 255.0 / 100.0

# Zhang et al.'s rebalancing defaults (ECCV16 Sec. 2.2): Gaussian smoothing of the prior
# (sigma 5 in ab units) and a mix with the uniform distribution (lambda 0.5).
REBALANCE_SIGMA = 5.0
REBALANCE_LAMBDA = 0.5
# Annealed-mean temperature of the paper (Sec. 2.3).
ANNEALED_T = 0.38
# Largest class-rebalancing strength a decoding may apply (see `rebalance_logits`).
MAX_REBALANCE_STRENGTH = 2.0


# --- sRGB <-> Lab, numpy ---------------------------------------------------


def srgb_to_linear(rgb: np.ndarray) -> np.ndarray:
    """Inverse sRGB companding. (..., 3) float in [0, 1] -> same shape, linear."""
    rgb = np.asarray(rgb, dtype=np.float32)
    return np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)


def linear_to_srgb(lin: np.ndarray) -> np.ndarray:
    """sRGB companding. (..., 3) linear float -> same shape in [0, 1] (clipped)."""
    lin = np.clip(np.asarray(lin, dtype=np.float32), 0.0, None)
    out = np.where(lin > 0.0031308, 1.055 * lin ** (1 / 2.4) - 0.055, 12.92 * lin)
    return np.clip(out, 0.0, 1.0)


def _lab_f(t: np.ndarray) -> np.ndarray:
    """Lab companding: X/Xn (or Y/Yn, Z/Zn) -> f."""
    return np.where(t > LAB_EPSILON, np.cbrt(t), LAB_KAPPA * t + 16.0 / 116.0)


def _lab_finv(f: np.ndarray) -> np.ndarray:
    """Inverse Lab companding: f -> X/Xn (or Y/Yn, Z/Zn)."""
    return np.where(f > LAB_DELTA, f * f * f, (f - np.float32(16 / 116)) / LAB_KAPPA)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB -> CIE Lab (D65).

    Args:
        rgb: (..., 3) float in [0, 1], or uint8 in [0, 255].
    Returns:
        (..., 3) float32: L in [0, 100], a and b roughly in [-128, 127].
    """
    rgb = np.asarray(rgb)
    if rgb.dtype == np.uint8:
        rgb = rgb.astype(np.float32) / 255.0
    xyz = srgb_to_linear(rgb) @ (XYZ_FROM_RGB / D65_WHITE[:, None]).T.astype(np.float32)
    f = _lab_f(xyz)
    L = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1).astype(np.float32)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIE Lab (D65) -> sRGB.

    Args:
        lab: (..., 3) float, L in [0, 100].
    Returns:
        (..., 3) float32 sRGB in [0, 1]; out-of-gamut colors are clipped.
    """
    lab = np.asarray(lab, dtype=np.float32)
    fy = (lab[..., 0] + 16.0) / 116.0
    fx = fy + lab[..., 1] / 500.0
    fz = np.maximum(fy - lab[..., 2] / 200.0, 0.0)
    f = np.stack([fx, fy, fz], axis=-1)
    xyz = _lab_finv(f)
    lin = (xyz * D65_WHITE.astype(np.float32)) @ RGB_FROM_XYZ.T.astype(np.float32)
    return linear_to_srgb(lin)


# --- 8-bit photos: fast lightness, Lab -> sRGB keeping lightness ------------------

GAMUT_STEPS = 8  # bisection steps of the chroma scale of out-of-gamut pixels (1/256 precision)
# Linear -> 8-bit sRGB table size: 1/65535 steps move the 8-bit code by <= 0.05 (at black).
SRGB_LUT_SIZE = 65536


def _l_from_y(y: np.ndarray) -> np.ndarray:
    """Relative luminance Y (D65 white Y = 1) -> CIE L in [0, 100], float32."""
    return (116.0 * _lab_f(y) - 16.0).astype(np.float32)


@functools.cache
def _gray_l_lut(levels: int) -> np.ndarray:
    """L of each gray level 0..levels-1 ((levels,) float32): gray sRGB has Y = linear(g)."""
    g = np.arange(levels, dtype=np.float64) / (levels - 1)
    return _l_from_y(srgb_to_linear(g).astype(np.float64))


@functools.cache
def _y_luts() -> np.ndarray:
    """(3, 256) float32: each 8-bit channel's contribution to Y (row Y of XYZ_FROM_RGB)."""
    lin = srgb_to_linear(np.arange(256) / 255.0).astype(np.float64)
    weights = XYZ_FROM_RGB[1] / D65_WHITE[1]
    return (weights[:, None] * lin[None, :]).astype(np.float32)


def lightness(pixels: np.ndarray) -> np.ndarray:
    """CIE L of pixels, equal to `rgb_to_lab(...)[..., 0]` but ~10x faster.

    Args:
        pixels: (H, W) uint8 or uint16 gray, or (H, W, 3) uint8 sRGB.
    Returns:
        (H, W) float32 L in [0, 100].
    """
    if pixels.ndim == 2:
        return _gray_l_lut(256 if pixels.dtype == np.uint8 else 65536)[pixels]
    lut = _y_luts()
    y = lut[0][pixels[..., 0]]
    y += lut[1][pixels[..., 1]]
    y += lut[2][pixels[..., 2]]
    return _l_from_y(y)


# Linear sRGB from XYZ relative to the white (X/Xn, Y/Yn, Z/Zn): rows r, g, b, scaled to
# sum to 1 (a change < 1e-4) so that a = b = 0 gives exactly gray (see _lab_to_linear).
_RGB_FROM_XYZN = RGB_FROM_XYZ * D65_WHITE[None, :]
_RGB_FROM_XYZN = (_RGB_FROM_XYZN / _RGB_FROM_XYZN.sum(1, keepdims=True)).astype(np.float32)


def _lab_to_linear(fy: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) fy = (L + 16) / 116, y = Y/Yn, a, b -> (3, N) float32 linear RGB, not clipped."""
    dx = _lab_finv(fy + a / np.float32(500)) - y  # both 0 for a = b = 0: r = g = b = y exactly
    dz = _lab_finv(fy - b / np.float32(200)) - y
    return np.stack([y + m[0] * dx + m[2] * dz for m in _RGB_FROM_XYZN])


def _outside(lin: np.ndarray) -> np.ndarray:
    tol = np.float32(1e-4)  # float error of the conversion; gray must count as inside
    return ((lin < -tol) | (lin > 1 + tol)).any(0)


def lab_to_rgb8(L: np.ndarray, ab: np.ndarray, bits: int = 8) -> np.ndarray:
    """CIE Lab -> 8-bit (or 16-bit) sRGB keeping L: out-of-gamut colors are desaturated
    until they fit.

    (lab_to_rgb clips each channel instead, which changes L near black and white.)

    Args:
        L: (...) float L in [0, 100]; ab: (..., 2) float; bits: 8 or 16.
    Returns:
        (..., 3) uint8 sRGB, or uint16 for bits 16.
    """
    shape = np.shape(L)
    fy = (np.asarray(L, np.float32).reshape(-1) + np.float32(16)) / np.float32(116)
    a, b = np.asarray(ab, np.float32).reshape(-1, 2).T
    y = _lab_finv(fy)
    lin = _lab_to_linear(fy, y, a, b)
    out = np.flatnonzero(_outside(lin))
    if out.size:
        fo, yo, ao, bo = fy[out], y[out], a[out], b[out]
        lo, hi = np.zeros(out.size, np.float32), np.ones(out.size, np.float32)
        for _ in range(GAMUT_STEPS):  # largest chroma scale in gamut; 0 (gray) always is
            mid = (lo + hi) / 2
            fits = ~_outside(_lab_to_linear(fo, yo, ao * mid, bo * mid))
            lo, hi = np.where(fits, mid, lo), np.where(fits, hi, mid)
        lin[:, out] = _lab_to_linear(fo, yo, ao * lo, bo * lo)
    if bits == 16:
        srgb = linear_to_srgb(np.clip(lin.T, 0, 1).astype(np.float64))
        return np.rint(srgb * 65535.0).astype(np.uint16).reshape(*shape, 3)
    idx = np.rint(np.clip(lin.T, 0, 1) * np.float32(SRGB_LUT_SIZE - 1)).astype(np.int32)
    return _srgb8_lut()[idx].reshape(*shape, 3)


@functools.cache
def _srgb8_lut() -> np.ndarray:
    """8-bit sRGB code of linear values i / (SRGB_LUT_SIZE - 1): 20x faster than the pow."""
    lin = np.arange(SRGB_LUT_SIZE, dtype=np.float64) / (SRGB_LUT_SIZE - 1)
    return np.rint(linear_to_srgb(lin) * 255.0).astype(np.uint8)


# --- sRGB <-> Lab, TensorFlow (for tf.data and the model) -------------------


def tf_rgb_to_lab(rgb):
    """TensorFlow twin of `rgb_to_lab`. (..., 3) float32 sRGB in [0, 1] -> (..., 3) Lab."""
    import tensorflow as tf

    rgb = tf.convert_to_tensor(rgb, tf.float32)
    lin = tf.where(rgb > 0.04045, tf.pow((rgb + 0.055) / 1.055, 2.4), rgb / 12.92)
    m = tf.constant((XYZ_FROM_RGB / D65_WHITE[:, None]).T, tf.float32)
    xyz = tf.tensordot(lin, m, axes=1)
    # pow(x, 1/3) is NaN for x < 0 in TF; the branch is not taken there, but the
    # gradient of the unused branch would still be NaN, hence the maximum.
    f = tf.where(
        xyz > LAB_EPSILON,
        tf.pow(tf.maximum(xyz, LAB_EPSILON), 1.0 / 3.0),
        LAB_KAPPA * xyz + 16.0 / 116.0,
    )
    L = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return tf.stack([L, a, b], axis=-1)


def tf_lab_to_rgb(lab):
    """TensorFlow twin of `lab_to_rgb`. (..., 3) float32 Lab -> (..., 3) sRGB in [0, 1]."""
    import tensorflow as tf

    lab = tf.convert_to_tensor(lab, tf.float32)
    fy = (lab[..., 0] + 16.0) / 116.0
    fx = fy + lab[..., 1] / 500.0
    fz = tf.maximum(fy - lab[..., 2] / 200.0, 0.0)
    f = tf.stack([fx, fy, fz], axis=-1)
    xyz = tf.where(f > LAB_DELTA, f**3, (f - 16.0 / 116.0) / LAB_KAPPA)
    m = tf.constant((RGB_FROM_XYZ * D65_WHITE[None, :]).T, tf.float32)
    lin = tf.maximum(tf.tensordot(xyz, m, axes=1), 0.0)
    srgb = tf.where(
        lin > 0.0031308,
        1.055 * tf.pow(tf.maximum(lin, 0.0031308), 1 / 2.4) - 0.055,
        12.92 * lin,
    )
    return tf.clip_by_value(srgb, 0.0, 1.0)


@functools.lru_cache(maxsize=1)
def _rgb24_lab_table() -> np.ndarray:
    """Lab of every 24-bit sRGB color: (2^24, 3) float32, index (r << 16) | (g << 8) | b."""
    out = np.empty((1 << 24, 3), np.float32)
    levels = np.arange(256, dtype=np.uint8)
    gb = np.stack(np.meshgrid(levels, levels, indexing="ij"), -1).reshape(-1, 2)
    for r in range(256):  # 256 slabs of 64k colors: bounded temporary memory
        rgb = np.concatenate([np.full((gb.shape[0], 1), r, np.uint8), gb], axis=1)
        out[r << 16 : (r + 1) << 16] = rgb_to_lab(rgb)
    return out


# --- ab bin tables ----------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class BinTable:
    """A named set of ab bin centres with a stable index order.

    Centres lie on a regular grid (`step`, first grid line at `origin`), so the
    nearest centre is found by rounding to the grid and a table lookup, not by an
    argmin over all Q centres.
    """

    name: str
    centres: np.ndarray  # (Q, 2) float32, a and b
    step: float
    origin: float
    extent: int  # grid lines per axis

    @property
    def size(self) -> int:
        return int(self.centres.shape[0])

    @functools.cached_property
    def _cell_to_bin(self) -> np.ndarray:
        cells = np.full((self.extent, self.extent), -1, np.int32)
        ij = np.rint((self.centres - self.origin) / self.step).astype(np.int64)
        cells[ij[:, 0], ij[:, 1]] = np.arange(self.size, dtype=np.int32)
        return cells

    def quantize(self, ab: np.ndarray) -> np.ndarray:
        """Exact nearest-centre bin of each ab value.

        Args:
            ab: (..., 2) float, a and b.
        Returns:
            (...,) int32 in [0, Q).
        """
        ab = np.asarray(ab, dtype=np.float32)
        ij = np.rint((ab - self.origin) / self.step).astype(np.int64)
        ij = np.clip(ij, 0, self.extent - 1)
        bins = self._cell_to_bin[ij[..., 0], ij[..., 1]]
        # The nearest grid point is the nearest centre whenever it is a centre (the
        # centres are a subset of the grid). Colors whose nearest grid point is not
        # a centre (outside the table's gamut) fall back to the full argmin.
        miss = bins < 0
        if miss.any():
            d = ((ab[miss][:, None, :] - self.centres[None]) ** 2).sum(-1)
            bins[miss] = d.argmin(-1)
        return bins

    def to_attrs(self) -> dict:
        """The table as HDF5/JSON-friendly attributes."""
        return {
            "bin_table": self.name,
            "bin_centres": self.centres.astype(np.float32),
        }


@functools.cache
def get_bin_table(name: str) -> BinTable:
    """The bin table called `name`: 'zhang313' (default) or 'grid18'."""
    if name == "zhang313":
        # The paper's 313 in-gamut centres, a grid of 10 (copy of richzhang/colorization
        # resources/pts_in_hull.npy, BSD-2; see kcolor/data/LICENSE-pts_in_hull.txt).
        with resources.files("kcolor.data").joinpath("pts_in_hull.npy").open("rb") as f:
            centres = np.load(f).astype(np.float32)
        return BinTable("zhang313", centres, step=10.0, origin=-110.0, extent=23)
    if name == "grid18":
        # 18x18 equal buckets over a, b in [-110, 110): bucket width 220/18.
        step = 220.0 / 18.0
        axis = -110.0 + step * (np.arange(18) + 0.5)
        aa, bb = np.meshgrid(axis, axis, indexing="ij")
        centres = np.stack([aa.ravel(), bb.ravel()], -1).astype(np.float32)
        return BinTable("grid18", centres, step=step, origin=-110.0 + step / 2, extent=18)
    raise ValueError(f"bin table: expected 'zhang313' or 'grid18', got {name!r}")


BIN_TABLES = ("zhang313", "grid18")


@functools.cache
def rgb24_lookup(table_name: str) -> tuple[np.ndarray, np.ndarray]:
    """L (uint8 encoding) and bin index (uint16) of every 24-bit sRGB color.

    Why a lookup table: photos are 8-bit sRGB, so the exact Lab and bin of every
    pixel is one gather into 2^24 precomputed entries (48 MB), which is ~50x faster
    than evaluating the Lab formulas per pixel. Built once per process (~5 s).

    Returns:
        (L_u8, bins): (2^24,) uint8 and (2^24,) uint16, index (r << 16) | (g << 8) | b.
    """
    lab = _rgb24_lab_table()
    l_u8 = encode_l(lab[:, 0])
    bins = get_bin_table(table_name).quantize(lab[:, 1:]).astype(np.uint16)
    return l_u8, bins


def encode_l(L: np.ndarray) -> np.ndarray:
    """L in [0, 100] (float) -> uint8 storage encoding round(L * 2.55)."""
    return np.clip(np.rint(np.asarray(L) * L_UINT8_SCALE), 0, 255).astype(np.uint8)


def decode_l(l_u8: np.ndarray) -> np.ndarray:
    """uint8 storage encoding -> L in [0, 100], float32."""
    return np.asarray(l_u8, np.float32) / np.float32(L_UINT8_SCALE)
