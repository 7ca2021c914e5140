"""sRGB <-> CIE L*a*b* (D65, 2-degree observer) conversion and CIE76 colour difference.

Plain vectorised numpy so the colour metrics and the training-free baseline need neither
torch nor scikit-image at run time. The constants are the ones scikit-image uses (the
6-digit sRGB matrix, white point (0.95047, 1, 1.08883), and the rounded CIE thresholds
0.008856 / 7.787), so Lab values agree with ``skimage.color.rgb2lab`` to float precision
and numbers stay comparable with tools built on it.

All functions accept any leading shape with a trailing channel axis of 3 (HxWx3 images as
well as Nx3 pixel lists), which lets callers convert only the pixels they need.

uint8 input takes a faster path through OpenCV's table lookup and 3x3 transforms, still in
float64 with the same constants and formulas (OpenCV's own Lab conversion is not used: it
works in float32 with its own white point and differs from scikit-image by up to ~0.4).
"""

from __future__ import annotations

import cv2
import numpy as np

_XYZ_FROM_RGB = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ],
    dtype=np.float64,
)
_RGB_FROM_XYZ = np.linalg.inv(_XYZ_FROM_RGB)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883], dtype=np.float64)

_LAB_EPSILON = 0.008856  # (6/29)^3, rounded as in the CIE publication
_LAB_SLOPE = 7.787  # (29/6)^2 / 3, rounded likewise
_LAB_OFFSET = 16.0 / 116.0
_LAB_INV_EPSILON = 0.2068966  # 6/29: f(_LAB_EPSILON), the breakpoint of the inverse


def _check_channels(arr: np.ndarray, name: str) -> None:
    if arr.ndim < 1 or arr.shape[-1] != 3:
        raise ValueError(f"{name} must have a trailing axis of size 3, got shape {arr.shape}")


def _to_float01(rgb: np.ndarray) -> np.ndarray:
    """uint8 -> [0, 1] float64; float input is taken as already in [0, 1]."""
    arr = np.asarray(rgb)
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        raise TypeError(f"rgb must be uint8 or float in [0, 1], got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def srgb_to_linear(rgb01: np.ndarray) -> np.ndarray:
    """Undo the sRGB transfer curve (IEC 61966-2-1) of values in [0, 1]."""
    rgb01 = np.asarray(rgb01, dtype=np.float64)
    return np.where(rgb01 > 0.04045, ((rgb01 + 0.055) / 1.055) ** 2.4, rgb01 / 12.92)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """Apply the sRGB transfer curve; negative inputs map below zero (callers clip)."""
    linear = np.asarray(linear, dtype=np.float64)
    # np.where evaluates both branches: keep the power's base non-negative.
    high = 1.055 * np.power(np.maximum(linear, 0.0031308), 1.0 / 2.4) - 0.055
    return np.where(linear > 0.0031308, high, linear * 12.92)


_LINEAR_FROM_UINT8 = srgb_to_linear(np.arange(256, dtype=np.float64) / 255.0)
# XYZ / white point in one 3x3 transform, and L*a*b* from f(X), f(Y), f(Z) as a 3x4 affine one.
_T_FROM_LINEAR = _XYZ_FROM_RGB / _WHITE_D65[:, None]
_LAB_FROM_F = np.array([[0.0, 116.0, 0.0, -16.0], [500.0, -500.0, 0.0, 0.0], [0.0, 200.0, -200.0, 0.0]])


def _rgb_uint8_to_lab(arr: np.ndarray) -> np.ndarray:
    """`rgb_to_lab` of uint8 pixels with OpenCV's vectorised kernels, in float64: the numpy path's
    formulas and constants, about 3x faster."""
    # OpenCV wants an image: N x 1 x 3 holds any number of pixels.
    img = np.ascontiguousarray(arr).reshape(-1, 1, 3)
    t = cv2.transform(cv2.LUT(img, _LINEAR_FROM_UINT8), _T_FROM_LINEAR)
    f = np.cbrt(t)
    dark = t <= _LAB_EPSILON
    if dark.any():
        np.copyto(f, _LAB_SLOPE * t + _LAB_OFFSET, where=dark)
    return cv2.transform(f, _LAB_FROM_F).reshape(arr.shape)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """Convert sRGB (uint8, or float in [0, 1]) to CIE L*a*b* as float64, same shape.

    L is in [0, 100]; a and b are roughly in [-128, 128] for sRGB colours.
    """
    arr = np.asarray(rgb)
    _check_channels(arr, "rgb")
    if arr.dtype == np.uint8:
        if arr.size == 0:
            return np.zeros(arr.shape, dtype=np.float64)
        return _rgb_uint8_to_lab(arr)
    linear = srgb_to_linear(_to_float01(arr))
    xyz = linear @ _XYZ_FROM_RGB.T
    t = xyz / _WHITE_D65
    f = np.cbrt(t)
    # Only near-black values take the linear segment; patching them in place avoids
    # evaluating both branches over the whole image.
    dark = t <= _LAB_EPSILON
    f[dark] = _LAB_SLOPE * t[dark] + _LAB_OFFSET
    lab = np.empty_like(f)
    lab[..., 0] = 116.0 * f[..., 1] - 16.0
    lab[..., 1] = 500.0 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200.0 * (f[..., 1] - f[..., 2])
    return lab


def lab_to_linear(lab: np.ndarray) -> np.ndarray:
    """CIE L*a*b* to linear-light RGB, unclipped: a colour is inside the sRGB gamut where all three
    lie in [0, 1]. A negative Z (very large b*) is clamped to zero, as scikit-image does."""
    lab = np.asarray(lab, dtype=np.float64)
    _check_channels(lab, "lab")
    fy = (lab[..., 0] + 16.0) / 116.0
    fx = lab[..., 1] / 500.0 + fy
    fz = np.maximum(fy - lab[..., 2] / 200.0, 0.0)
    f = np.stack([fx, fy, fz], axis=-1)
    t = np.where(f > _LAB_INV_EPSILON, f**3, (f - _LAB_OFFSET) / _LAB_SLOPE)
    return (t * _WHITE_D65) @ _RGB_FROM_XYZ.T


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """Convert CIE L*a*b* to sRGB float64 in [0, 1], same shape.

    Out-of-gamut colours are clipped to [0, 1] (`lab_to_linear` says which are out).
    """
    return np.clip(linear_to_srgb(lab_to_linear(lab)), 0.0, 1.0)


def lab_to_rgb_uint8(lab: np.ndarray) -> np.ndarray:
    """Convert CIE L*a*b* to sRGB uint8 with round-to-nearest."""
    return np.rint(lab_to_rgb(lab) * 255.0).astype(np.uint8)


def delta_e76(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIE76 colour difference: Euclidean distance over the trailing L*a*b* axis."""
    lab1 = np.asarray(lab1, dtype=np.float64)
    lab2 = np.asarray(lab2, dtype=np.float64)
    _check_channels(lab1, "lab1")
    _check_channels(lab2, "lab2")
    return np.sqrt(np.sum((lab1 - lab2) ** 2, axis=-1))
