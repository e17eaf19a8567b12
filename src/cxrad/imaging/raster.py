"""PNG, JPEG, TIFF and BMP to a grey float image (Pillow, with the plugins and modes a radiograph needs)."""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from cxrad.errors import ImageReadError
from cxrad.imaging import bounds
from cxrad.imaging.bounds import MAX_PIXELS, STRIP_PIXELS, _block_mean, _clean, _reason, _reduction

# Pillow plugins we let near untrusted bytes (no EPS/Ghostscript, no exotic formats)
RASTER_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")  # JPEG includes MPO (camera multi-picture) files
# modes with a meaning for a radiograph; CMYK, LAB, HSV exports are refused rather than guessed at
GREY_MODES = {"1", "L", "P", "LA", "PA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
COLOUR_MODES = {"RGB", "RGBA", "RGBX", "RGBa", "YCbCr"}
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}  # others: 4
def _raster_to_grey(data: bytes, keep_uint8: bool = False) -> np.ndarray:
    try:
        img = Image.open(io.BytesIO(data), formats=RASTER_FORMATS)
        width, height = img.size
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"image too large (decompression bomb: {_clean(exc)})") from None
    except Exception as exc:
        raise ImageReadError(f"not a readable image ({_reason(exc)})") from None
    if width * height > MAX_PIXELS:
        raise ImageReadError(f"image too large ({width}x{height} pixels, limit {MAX_PIXELS})")
    if img.mode not in GREY_MODES | COLOUR_MODES:
        raise ImageReadError(f"unsupported colour mode {img.mode} (a radiograph is grey or RGB)")
    factor = _reduction(width, height)
    coefficients = _jpeg_coefficient_bytes(img) if img.format in ("JPEG", "MPO") else 0
    if factor > 1 and img.format in ("JPEG", "MPO"):
        # the JPEG decoder scales by 1/2, 1/4 or 1/8 itself: the full-size image is never held
        img.draft(img.mode, (math.ceil(width / factor), math.ceil(height / factor)))
        factor = _reduction(*img.size)
    if min(img.size) // factor < 8:  # (a 1 x 100000 strip would reduce to nothing)
        raise ImageReadError(f"image too small or too thin ({width}x{height} pixels; 8 a side at least)")
    pixels = img.size[0] * img.size[1]
    # the decoded image (Pillow keeps multi-band pixels in 4 bytes), a progressive JPEG's coefficients (libjpeg
    # holds them all, at full size even when it scales), the strips, float copies of the result
    estimate = pixels * _BYTES_PER_PIXEL.get(img.mode, 4) + coefficients + 16 * STRIP_PIXELS + \
        24 * pixels // factor ** 2
    orientation = _orientation(img)
    with bounds.DECODE_BUDGET.reserve(estimate):
        try:
            img.load()
            grey = _to_grey(img, keep_uint8) if factor == 1 else _to_grey_reduced(img, factor)
            return _orient(grey, orientation)
        except ImageReadError:
            raise
        except Image.DecompressionBombError as exc:
            raise ImageReadError(f"image too large (decompression bomb: {_clean(exc)})") from None
        except Exception as exc:
            raise ImageReadError(f"not a readable image ({_reason(exc)})") from None


def _jpeg_coefficient_bytes(img: Image.Image) -> int:
    """What libjpeg holds for a progressive (multi-scan) JPEG: every DCT coefficient of every component, 2 bytes
    each, at full size (about 330 MB for an 8000 x 8000 4:4:4 colour file); 0 for a sequential one."""
    if not (img.info.get("progressive") or img.info.get("progression")):
        return 0
    layers = getattr(img, "layer", None) or [("", 1, 1, 0)] * len(img.getbands())
    hmax, vmax = max(layer[1] for layer in layers), max(layer[2] for layer in layers)
    width, height = img.size
    return sum(2 * 64 * math.ceil(width * h / hmax / 8) * math.ceil(height * v / vmax / 8) for _, h, v, _ in layers)


#: EXIF orientation -> the numpy view that shows the image upright (as PIL.ImageOps.exif_transpose does)
_ORIENTATIONS = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
                 5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
                 8: lambda a: np.rot90(a, 1)}


def _orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(0x0112, 1))
    except Exception:  # a damaged EXIF block says nothing about orientation
        return 1
    return value if value in _ORIENTATIONS else 1


def _orient(grey: np.ndarray, orientation: int) -> np.ndarray:
    """``grey`` turned upright by its EXIF orientation (phone photos and some scanners store it rotated), after
    decoding and reduction: no full-size copy is made."""
    return np.ascontiguousarray(_ORIENTATIONS[orientation](grey)) if orientation in _ORIENTATIONS else grey


def _to_grey(img: Image.Image, keep_uint8: bool = False) -> np.ndarray:
    """Grey float32 in [0, 1]; with ``keep_uint8``, an 8-bit image stays uint8 0-255 (no full-size float copy
    before resizing: ``resize`` takes both and gives the same pixels)."""
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        if not np.isfinite(arr).all():  # a NaN would otherwise pass as a blank (all-zero) image
            raise ImageReadError("floating-point image contains NaN or infinite values")
        return _scale_values(arr, mode, float(arr.min()), float(arr.max()))
    if mode in ("RGBA", "LA", "PA", "RGBa") or (mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        # Composite on black: transparent regions carry no anatomy.
        img = Image.alpha_composite(Image.new("RGBA", img.size, 0), img)
    grey = np.asarray(img if img.mode == "L" else img.convert("L"))
    return grey if keep_uint8 else grey.astype(np.float32) / 255.0


def _to_grey_reduced(img: Image.Image, factor: int) -> np.ndarray:
    """``_to_grey`` of a large image box-averaged by ``factor``, converted a strip of rows at a time: no
    full-size copy is made besides the decoded image itself (the ragged edge is dropped)."""
    w, h = img.width // factor * factor, img.height // factor * factor
    step = factor * max(1, STRIP_PIXELS // (img.width * factor))
    values = img.mode.startswith("I") or img.mode == "F"  # numbers to scale once the whole image is seen
    parts, low, peak = [], math.inf, -math.inf
    for top in range(0, h, step):
        strip = img.crop((0, top, w, min(top + step, h)))
        if values:
            arr = np.asarray(strip, dtype=np.float32)
            if not np.isfinite(arr).all():
                raise ImageReadError("floating-point image contains NaN or infinite values")
            low, peak = min(low, float(arr.min())), max(peak, float(arr.max()))
        else:
            arr = _to_grey(strip)
        parts.append(_block_mean(arr, factor))
    small = np.concatenate(parts)
    return _scale_values(small, img.mode, low, peak) if values else small


def _scale_values(arr: np.ndarray, mode: str, low: float, peak: float) -> np.ndarray:
    """[0, 1] from the numbers of a 16/32-bit integer or a floating-point image (``low``, ``peak``: their least
    and largest value). Unsigned 16-bit data is scaled by the bit depth it uses (so 12-bit data stored in 16 bits
    is not dimmed); floating-point data, and integers outside 0-65535 (signed or 32-bit TIFFs), by their own
    range, in float64 (a float32 difference of +-3e38 would overflow)."""
    if mode == "F" or low < 0 or peak > 65535:
        if not peak > low:
            return np.zeros(arr.shape, np.float32)
        return ((arr.astype(np.float64) - low) / (peak - low)).astype(np.float32)
    full = 4095.0 if peak <= 4095 else 65535.0
    return np.clip(arr / full, 0, 1)
