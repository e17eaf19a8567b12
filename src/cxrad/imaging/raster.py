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
    if factor > 1 and img.format in ("JPEG", "MPO"):
        # the JPEG decoder scales by 1/2, 1/4 or 1/8 itself: the full-size image is never held
        img.draft(img.mode, (math.ceil(width / factor), math.ceil(height / factor)))
        factor = _reduction(*img.size)
    pixels = img.size[0] * img.size[1]
    # the decoded image (Pillow keeps multi-band pixels in 4 bytes), the strips, float copies of the result
    estimate = pixels * _BYTES_PER_PIXEL.get(img.mode, 4) + 16 * STRIP_PIXELS + 16 * pixels // factor ** 2
    with bounds.DECODE_BUDGET.reserve(estimate):
        try:
            img.load()
            return _to_grey(img, keep_uint8) if factor == 1 else _to_grey_reduced(img, factor)
        except ImageReadError:
            raise
        except Image.DecompressionBombError as exc:
            raise ImageReadError(f"image too large (decompression bomb: {_clean(exc)})") from None
        except Exception as exc:
            raise ImageReadError(f"not a readable image ({_reason(exc)})") from None


def _to_grey(img: Image.Image, keep_uint8: bool = False) -> np.ndarray:
    """Grey float32 in [0, 1]; with ``keep_uint8``, an 8-bit image stays uint8 0-255 (no full-size float copy
    before resizing: ``resize`` takes both and gives the same pixels)."""
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        return _scale_values(arr, mode, float(arr.max()))
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
    parts, peak = [], -math.inf
    for top in range(0, h, step):
        strip = img.crop((0, top, w, min(top + step, h)))
        if values:
            arr = np.asarray(strip, dtype=np.float32)
            if not np.isfinite(arr).all():
                raise ImageReadError("floating-point image contains NaN or infinite values")
            peak = max(peak, float(arr.max()))
        else:
            arr = _to_grey(strip)
        parts.append(_block_mean(arr, factor))
    small = np.concatenate(parts)
    return _scale_values(small, img.mode, peak) if values else small


def _scale_values(arr: np.ndarray, mode: str, peak: float) -> np.ndarray:
    """[0, 1] from the numbers of a 16/32-bit integer or a floating-point image (``peak``: their maximum)."""
    if mode == "F":
        if not np.isfinite(arr).all():  # a NaN would otherwise pass as a blank (all-zero) image
            raise ImageReadError("floating-point image contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    # 16-bit PNGs: scale by the bit depth actually used, so 12-bit data stored in 16 bits is not dimmed.
    full = 4095.0 if peak <= 4095 else 65535.0
    return np.clip(arr / full, 0, 1)


