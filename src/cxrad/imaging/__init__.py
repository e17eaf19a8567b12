"""Reading chest X-rays from PNG, JPEG, TIFF, BMP and DICOM into grey float images, and resizing them.

Every reader returns a float32 array in [0, 1], shape (H, W), with bright = dense tissue (bone white),
which is the convention of the PNG/JPEG sets and of DICOM MONOCHROME2.

Inputs are untrusted: every failure is an ``ImageReadError`` with a one-line reason, and memory stays bounded
whatever a file claims (the limits below; the reasons are in docs/security.md):

- ``MAX_FILE_BYTES``: larger files are refused before they are read; only regular files are read.
- ``MAX_PIXELS``: an image (for DICOM, one frame) whose header declares more pixels is refused before decoding.
- ``MAX_DICOM_PIXEL_BYTES``: a DICOM whose header declares more pixel data (all frames together) is refused
  before decoding; of the others only the first frame is decoded (a deflated file is inflated only that far).
- ``MAX_DECODE_SIDE``: larger images are decoded downscaled (JPEG: by the decoder; others: box-averaged by an
  integer factor straight after decoding), so a decode costs its native pixels once and little more.
- ``DECODE_MEMORY_BYTES``: decodes running at once (in threads) reserve their estimated memory from this
  budget first; one that does not fit waits, one larger than the whole budget runs alone.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cxrad.errors import ImageReadError
from cxrad.files import UnsafeFileError, read_regular_file
from cxrad.imaging.bounds import MAX_FILE_BYTES, _reason
from cxrad.imaging.dicom import _dicom_to_grey
from cxrad.imaging.formats import DICOM_SUFFIXES, IMAGE_SUFFIXES, _is_dicom
from cxrad.imaging.preprocess import Preprocessing, resize
from cxrad.imaging.raster import _raster_to_grey

__all__ = ["DICOM_SUFFIXES", "IMAGE_SUFFIXES", "ImageReadError", "MAX_FILE_BYTES", "Preprocessing", "decode_image",
           "load_for_model", "read_bytes", "read_image", "resize"]


def read_bytes(path: str | os.PathLike) -> bytes:
    """Read a regular file of at most MAX_FILE_BYTES; raises ImageReadError with the reason otherwise (devices,
    pipes and sockets are refused before anything is read, so ``/dev/zero`` or a FIFO cannot hang)."""
    try:
        data = read_regular_file(path, MAX_FILE_BYTES)
    except UnsafeFileError as exc:
        raise ImageReadError(str(exc)) from None
    except OSError as exc:
        raise ImageReadError(f"cannot read the file ({exc.strerror or type(exc).__name__})") from None
    if not data:
        raise ImageReadError("empty file")
    return data


def decode_image(data: bytes, suffix: str = "", keep_uint8: bool = False) -> np.ndarray:
    """Decode PNG/JPEG/TIFF/BMP/DICOM bytes into a float32 grey image in [0, 1] (longest side at most
    MAX_DECODE_SIDE); with ``keep_uint8``, 8-bit rasters come back as uint8 0-255 instead. Every failure is an
    ImageReadError with a one-line reason."""
    if not data:
        raise ImageReadError("empty file")
    try:
        grey = _dicom_to_grey(data) if _is_dicom(data, suffix) else _raster_to_grey(data, keep_uint8)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError("out of memory while decoding") from None
    except Exception as exc:  # a decoder failing in a way not foreseen above is still a bad file, not a crash
        raise ImageReadError(f"cannot decode the image ({_reason(exc)})") from None
    if grey.ndim != 2 or min(grey.shape) < 8:
        raise ImageReadError(f"image too small or not 2-D (shape {grey.shape})")
    if not np.isfinite(grey).all():
        raise ImageReadError("image contains NaN or infinite values")
    return grey


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one file into a float32 grey image in [0, 1]."""
    return decode_image(read_bytes(path), Path(path).suffix)


def load_for_model(path_or_bytes, prep: Preprocessing, suffix: str = "") -> np.ndarray:
    """A file path (or raw bytes) -> uint8 (size, size) model input."""
    if isinstance(path_or_bytes, (bytes, bytearray)):
        grey = decode_image(bytes(path_or_bytes), suffix)
    else:
        grey = read_image(path_or_bytes)
    return resize(grey, prep)
