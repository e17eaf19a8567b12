"""Anomaly heatmaps drawn over the radiograph: shared by the dashboard and ``cxrad score --maps``.

A detector's map is at the model's input size; it is smoothed, scaled by its own 99th percentile, mapped back
onto the picture (undoing the padding of ``resize='pad'``) and blended over it with a colormap.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from cxrad.imaging import Preprocessing

#: longest side of the pictures shown or written (the model sees its own size)
DISPLAY_SIDE = 512


def display_image(grey: np.ndarray, side: int = DISPLAY_SIDE) -> np.ndarray:
    """uint8 grey image with the original aspect ratio, longest side at most ``side``."""
    h, w = grey.shape
    scale = min(1.0, side / max(h, w))
    img = Image.fromarray(np.clip(grey * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if scale < 1.0:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR, reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8)


# ---------------------------------------------------------------------------------------- heatmap
def unprep_map(amap: np.ndarray, shape: tuple[int, int], prep: Preprocessing) -> np.ndarray:
    """Map a model-size map back onto an image of ``shape``: undo the padding, then stretch."""
    if prep.resize == "pad":
        h, w = shape
        s = amap.shape[0]
        scale = s / max(h, w)
        ph, pw = max(1, round(h * scale)), max(1, round(w * scale))
        top, left = (s - ph) // 2, (s - pw) // 2
        amap = amap[top:top + ph, left:left + pw]
    img = Image.fromarray(amap.astype(np.float32), mode="F")
    return np.asarray(img.resize((shape[1], shape[0]), Image.BILINEAR), dtype=np.float32)


def normalise_map(amap: np.ndarray) -> np.ndarray:
    """Smooth a per-pixel map and scale it to [0, 1] by its own 99th percentile.

    Per-image scaling shows *where* in this image the model disagrees most; how anomalous the image is
    overall is the score, not the colour. Smoothing (sigma ~ 1.5 % of the side) hides single-pixel noise.
    """
    from scipy.ndimage import gaussian_filter

    amap = np.nan_to_num(np.asarray(amap, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    amap = gaussian_filter(amap, sigma=max(0.5, 0.015 * amap.shape[0]))
    lo, hi = float(amap.min()), float(np.percentile(amap, 99))
    if hi - lo < 1e-12:
        return np.zeros_like(amap, dtype=np.float32)
    return np.clip((amap - lo) / (hi - lo), 0, 1).astype(np.float32)


def overlay(grey_u8: np.ndarray, heat01: np.ndarray, cmap: str = "inferno", alpha: float = 0.6) -> np.ndarray:
    """Colour ``heat01`` (same shape, [0, 1]) with a matplotlib colormap over the grey image; the colour's
    opacity grows with the value so that unremarkable regions keep showing the radiograph."""
    import matplotlib

    if grey_u8.shape != heat01.shape:
        raise ValueError(f"image {grey_u8.shape} and heatmap {heat01.shape} differ in shape")
    colours = matplotlib.colormaps[cmap](heat01)[..., :3]
    base = np.repeat(grey_u8[..., None].astype(np.float32) / 255.0, 3, axis=-1)
    a = (alpha * heat01)[..., None]
    out = (1 - a) * base + a * colours
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def map_overlay(grey_u8: np.ndarray, amap: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """uint8 RGB: the model-size map ``amap`` of one image, normalised and drawn over ``grey_u8`` (the image at
    display size)."""
    heat = normalise_map(np.asarray(amap))
    return overlay(grey_u8, unprep_map(heat, grey_u8.shape, prep))
