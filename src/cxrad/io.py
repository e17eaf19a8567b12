"""Reading chest X-rays from PNG, JPEG and DICOM into grey float images, and resizing them.

Every reader returns a float32 array in [0, 1], shape (H, W), with bright = dense tissue (bone white),
which is the convention of the PNG/JPEG sets and of DICOM MONOCHROME2.
"""
from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ImageReadError

# Largest image we agree to decode (pixels). A 4k x 4k radiograph is 16.7 MP; anything far beyond is
# a decompression bomb or not an X-ray.
MAX_PIXELS = 64_000_000
# Largest file we agree to read (bytes).
MAX_FILE_BYTES = 256 * 1024 * 1024

DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes model input: square side in pixels, and how the aspect ratio is handled.

    resize='stretch' squashes to a square (as the CAE paper did); 'pad' keeps the aspect ratio and pads
    the short side with black.
    """

    size: int = 128
    resize: str = "stretch"

    def __post_init__(self):
        if self.resize not in ("stretch", "pad"):
            raise ValueError(f"resize must be 'stretch' or 'pad', not {self.resize!r}")
        if not 8 <= int(self.size) <= 2048:
            raise ValueError(f"size must be between 8 and 2048 pixels, not {self.size}")

    def to_dict(self) -> dict:
        return asdict(self)


def _clean(exc: Exception) -> str:
    """Readers name the in-memory buffer ("<_io.BytesIO object at 0x...>"): noise in an error row."""
    return re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(exc))


def _is_dicom(data: bytes, suffix: str) -> bool:
    return suffix.lower() in DICOM_SUFFIXES or (len(data) > 132 and data[128:132] == b"DICM")


def _dicom_to_grey(data: bytes) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        rows, cols = int(ds.Rows), int(ds.Columns)
    except Exception as exc:  # pydicom raises many types for corrupt files
        raise ImageReadError(f"not a readable DICOM file ({type(exc).__name__}: {_clean(exc)})") from None
    if rows * cols > MAX_PIXELS:
        raise ImageReadError(f"image too large ({cols}x{rows} pixels, limit {MAX_PIXELS})")
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise ImageReadError(f"DICOM has no decodable pixel data ({type(exc).__name__}: {exc})") from None
    if arr.ndim == 3 and ds.get("SamplesPerPixel", 1) == 1:
        arr = arr[0]  # multi-frame: first frame
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3:  # colour DICOM (secondary capture)
        arr = arr[..., :3].astype(np.float32).mean(axis=-1)
        lo, hi = 0.0, float(2 ** int(ds.get("BitsStored", 8)) - 1)
    else:
        arr = apply_modality_lut(arr, ds).astype(np.float32)  # RescaleSlope / RescaleIntercept
        has_voi = "WindowCenter" in ds or "VOILUTSequence" in ds
        if has_voi:
            arr = apply_voi_lut(arr, ds, index=0).astype(np.float32)
        # Scale by the range the header defines (stored bits through the modality LUT, or the VOI LUT's
        # output), not by this image's min/max: a stretch would undo the window and ignore the bit depth.
        lo, hi = _dicom_output_range(ds, voi_lut=has_voi and "WindowCenter" not in ds)
    out = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr, dtype=np.float32)
    out = np.clip(out, 0.0, 1.0)
    if photometric == "MONOCHROME1":  # 0 = white in MONOCHROME1
        out = 1.0 - out
    return out.astype(np.float32)


def _dicom_output_range(ds, voi_lut: bool) -> tuple[float, float]:
    """Value range of a monochrome DICOM after the modality LUT (and a VOI LUT table, when ``voi_lut``)."""
    def lut_bits(item) -> int:
        return int(item.LUTDescriptor[2]) if "LUTDescriptor" in item else 16

    if voi_lut:
        return 0.0, float(2 ** lut_bits(ds.VOILUTSequence[0]) - 1)
    if "ModalityLUTSequence" in ds:
        return 0.0, float(2 ** lut_bits(ds.ModalityLUTSequence[0]) - 1)
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if int(ds.get("PixelRepresentation", 0)) else (0, 2 ** bits - 1)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    return float(lo), float(hi)


def _raster_to_grey(data: bytes, keep_uint8: bool = False) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise ImageReadError(f"image too large ({img.width}x{img.height} pixels, limit {MAX_PIXELS})")
            img.load()
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(f"image too large (decompression bomb: {exc})") from None
    except Exception as exc:
        raise ImageReadError(f"not a readable image ({type(exc).__name__}: {_clean(exc)})") from None
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        # 16-bit PNGs: scale by the bit depth actually used, so 12-bit data stored in 16 bits is not dimmed.
        peak = float(arr.max())
        full = 4095.0 if peak <= 4095 else 65535.0
        return np.clip(arr / full, 0, 1)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA" if mode != "LA" else "LA")
        # Composite on black: transparent regions carry no anatomy.
        background = Image.new(img.mode, img.size, 0)
        img = Image.alpha_composite(background.convert("RGBA"), img.convert("RGBA"))
    grey = np.asarray(img if img.mode == "L" else img.convert("L"))
    return grey if keep_uint8 else grey.astype(np.float32) / 255.0


def read_bytes(path: str | os.PathLike) -> bytes:
    """Read a file with the checks every reader shares; raises ImageReadError with the reason."""
    p = Path(path)
    if not p.exists():
        raise ImageReadError("file not found")
    if p.is_dir():
        raise ImageReadError("is a directory, not an image file")
    size = p.stat().st_size
    if size == 0:
        raise ImageReadError("empty file")
    if size > MAX_FILE_BYTES:
        raise ImageReadError(f"file too large ({size} bytes, limit {MAX_FILE_BYTES})")
    return p.read_bytes()


def decode_image(data: bytes, suffix: str = "", keep_uint8: bool = False) -> np.ndarray:
    """Decode PNG/JPEG/DICOM bytes into a float32 grey image in [0, 1]; with ``keep_uint8``, 8-bit rasters
    come back as uint8 0-255 instead (``resize`` takes both: no float copy of a full-size image)."""
    if not data:
        raise ImageReadError("empty file")
    grey = _dicom_to_grey(data) if _is_dicom(data, suffix) else _raster_to_grey(data, keep_uint8)
    if grey.ndim != 2 or min(grey.shape) < 8:
        raise ImageReadError(f"image too small or not 2-D (shape {grey.shape})")
    if not np.isfinite(grey).all():
        raise ImageReadError("image contains NaN or infinite values")
    return grey


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one file into a float32 grey image in [0, 1]."""
    return decode_image(read_bytes(path), Path(path).suffix)


def resize(grey: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """Resize a float grey image in [0, 1] (or a uint8 one) to prep.size square and return uint8 (H, W)."""
    if grey.dtype == np.uint8:  # the same pixels as the float path: round(v / 255 * 255) == v
        img = Image.fromarray(grey)
    else:
        img = Image.fromarray(np.clip(grey * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    s = prep.size
    if prep.resize == "stretch":
        return np.asarray(img.resize((s, s), Image.BILINEAR, reducing_gap=3.0), dtype=np.uint8)
    scale = s / max(img.width, img.height)
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    canvas = Image.new("L", (s, s), 0)
    canvas.paste(img.resize((w, h), Image.BILINEAR, reducing_gap=3.0), ((s - w) // 2, (s - h) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def load_for_model(path_or_bytes, prep: Preprocessing, suffix: str = "") -> np.ndarray:
    """A file path (or raw bytes) -> uint8 (size, size) model input."""
    if isinstance(path_or_bytes, (bytes, bytearray)):
        grey = decode_image(bytes(path_or_bytes), suffix)
    else:
        grey = read_image(path_or_bytes)
    return resize(grey, prep)
