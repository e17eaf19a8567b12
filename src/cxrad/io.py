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

import contextlib
import io
import math
import os
import re
import struct
import threading
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cxrad.errors import ImageReadError
from cxrad.files import UnsafeFileError, read_regular_file

# Largest image, in pixels, that we agree to decode (for DICOM: per frame). A 4k x 4k radiograph is 16.7 MP;
# anything far beyond is a decompression bomb or not an X-ray.
MAX_PIXELS = 64_000_000
# Largest file we agree to read (bytes).
MAX_FILE_BYTES = 256 * 1024 * 1024
# Largest pixel data a DICOM may declare, all frames together (bytes); only the first frame is decoded.
MAX_DICOM_PIXEL_BYTES = 1024 * 1024 * 1024
# Largest decoded DICOM frame (bytes): 64 MP at 16 bits.
MAX_DICOM_FRAME_BYTES = 128 * 1024 * 1024
# Largest DICOM header (all elements before the pixel data) inflated from a deflated file (bytes).
MAX_DICOM_HEADER_BYTES = 16 * 1024 * 1024
# Longest side an image keeps after decoding; the largest model input (Preprocessing.size) is 2048.
MAX_DECODE_SIDE = 2048
# Memory that decodes running at the same time may reserve together (bytes).
DECODE_MEMORY_BYTES = 512 * 1024 * 1024

DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
# Pillow plugins we let near untrusted bytes (no EPS/Ghostscript, no exotic formats)
RASTER_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")  # JPEG includes MPO (camera multi-picture) files
# modes with a meaning for a radiograph; CMYK, LAB, HSV exports are refused rather than guessed at
GREY_MODES = {"1", "L", "P", "LA", "PA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
COLOUR_MODES = {"RGB", "RGBA", "RGBX", "RGBa", "YCbCr"}
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}  # others: 4
# pixels converted at a time when a large image is reduced
STRIP_PIXELS = 2**19


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


# ------------------------------------------------------------------------------------------ memory budget
class MemoryBudget:
    """Bytes that work running in several threads may hold at once; ``reserve`` waits until its share fits."""

    def __init__(self, total: int):
        self.total, self.used = int(total), 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, nbytes: int):
        nbytes = max(0, min(int(nbytes), self.total))  # larger than the budget: waits to run alone
        with self._cond:
            self._cond.wait_for(lambda: self.used + nbytes <= self.total)
            self.used += nbytes
        try:
            yield
        finally:
            with self._cond:
                self.used -= nbytes
                self._cond.notify_all()


DECODE_BUDGET = MemoryBudget(DECODE_MEMORY_BYTES)


# -------------------------------------------------------------------------------------------------- helpers
def _clean(exc: BaseException) -> str:
    """One short line: readers name the in-memory buffer ("<_io.BytesIO object at 0x...>") and some write
    several lines."""
    text = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(exc)).strip()
    text = (text.splitlines() or [""])[0]
    return text if len(text) <= 160 else text[:157] + "..."


def _reason(exc: BaseException) -> str:
    text = _clean(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _reduction(width: int, height: int) -> int:
    """Integer factor that brings the longest side to at most MAX_DECODE_SIDE."""
    return max(1, math.ceil(max(width, height) / MAX_DECODE_SIDE))


def _block_mean(arr: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` blocks of an (H, W[, C]) array into float32, without a full-size float
    copy (the ragged edge is dropped)."""
    if factor == 1:
        return arr
    h, w = arr.shape[0] // factor, arr.shape[1] // factor
    blocks = arr[:h * factor, :w * factor].reshape(h, factor, w, factor, *arr.shape[2:])
    return blocks.mean(axis=(1, 3), dtype=np.float32)


def _is_dicom(data: bytes, suffix: str) -> bool:
    return suffix.lower() in DICOM_SUFFIXES or (len(data) > 132 and data[128:132] == b"DICM")


# -------------------------------------------------------------------------------------------------- DICOM
_PIXEL_TAGS = {0x7FE00010: "Pixel Data", 0x7FE00008: "Float Pixel Data", 0x7FE00009: "Double Float Pixel Data"}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_PHOTOMETRIC = {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"}


class _PixelStop:
    """``stop_when`` for pydicom's readers: stop at the top-level pixel data element, remembering its tag."""

    def __init__(self):
        self.tag = None

    def __call__(self, tag, vr, length) -> bool:
        if int(tag) in _PIXEL_TAGS:
            self.tag = int(tag)
            return True
        return False


class _Inflater(io.RawIOBase):
    """A seekable reader over a raw deflate stream that inflates only as far as it is read, up to ``limit``
    bytes: pydicom inflates a whole deflated file up front, which a tiny file can make gigabytes."""

    def __init__(self, data: bytes, limit: int):
        self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        self._tail, self._buf, self._pos, self.limit = data, bytearray(), 0, limit

    def _fill(self, upto: int) -> None:
        if upto > self.limit:
            raise ImageReadError(f"deflated DICOM: more than {self.limit} bytes would have to be inflated")
        while len(self._buf) < upto and not self._z.eof:
            before = len(self._tail)
            chunk = self._z.decompress(self._tail, max(upto - len(self._buf), 65536))
            self._tail = self._z.unconsumed_tail
            self._buf += chunk
            if not chunk and len(self._tail) == before:  # no progress: the stream is cut short
                break

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 2:
            raise io.UnsupportedOperation("cannot seek from the end of a deflate stream")
        self._pos = max(0, offset if whence == 0 else self._pos + offset)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            raise io.UnsupportedOperation("refusing to inflate a whole deflated DICOM")
        self._fill(self._pos + size)
        out = bytes(self._buf[self._pos:self._pos + size])
        self._pos += len(out)
        return out


def _meta_end(data: bytes) -> int:
    """Offset of the first byte after the File Meta group (group 2 is always explicit VR little endian)."""
    pos = 132 if data[128:132] == b"DICM" else 0
    while pos + 8 <= len(data) and struct.unpack_from("<H", data, pos)[0] == 2:
        if data[pos + 4:pos + 6] in _LONG_VRS:
            pos += 12 + struct.unpack_from("<I", data, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
    return min(pos, len(data))


def _dicom_header(data: bytes):
    """(header dataset without pixel data, stream positioned at the pixel data element, transfer syntax,
    pixel data tag or None)."""
    import pydicom
    from pydicom import uid
    from pydicom.filereader import read_dataset, read_partial

    stop = _PixelStop()
    meta_end = _meta_end(data)
    file_meta = pydicom.dcmread(io.BytesIO(data[:meta_end]), force=True).file_meta if meta_end else None
    tsyntax = (file_meta or {}).get("TransferSyntaxUID")
    if tsyntax == uid.DeflatedExplicitVRLittleEndian:
        stream = _Inflater(data[meta_end:], MAX_DICOM_HEADER_BYTES)
        ds = read_dataset(stream, is_implicit_VR=False, is_little_endian=True, stop_when=stop)
        ds.file_meta = file_meta
        return ds, stream, uid.ExplicitVRLittleEndian, stop.tag
    stream = io.BytesIO(data)
    ds = read_partial(stream, stop_when=stop, force=True)
    if not tsyntax:  # no File Meta: the encoding pydicom recognised
        implicit, little = ds.original_encoding
        tsyntax = uid.ImplicitVRLittleEndian if implicit else (
            uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian)
    return ds, stream, uid.UID(str(tsyntax)), stop.tag


def _header_value(ds, keyword: str, default):
    """An element's value (its first, if multi-valued); pydicom converts lazily, so this may raise."""
    from pydicom.multival import MultiValue

    value = ds.get(keyword, default)
    return value[0] if isinstance(value, (MultiValue, list, tuple)) and len(value) else value


def _header_int(ds, keyword: str, default: int | None = None, low: int = 0, high: int = 2**31) -> int:
    try:
        value = _header_value(ds, keyword, default)
        if value is None or value == "":
            raise ImageReadError(f"DICOM header has no {keyword}")
        value = int(value)
    except ImageReadError:
        raise
    except Exception:
        raise ImageReadError(f"DICOM {keyword} is not a whole number") from None
    if not low <= value <= high:
        raise ImageReadError(f"DICOM {keyword} {value} is out of range ({low} to {high})")
    return value


def _header_float(ds, keyword: str, default: float | None = None) -> float | None:
    """A finite number from a (possibly multi-valued) DICOM element: its first value; None if absent."""
    try:
        value = _header_value(ds, keyword, default)
        if value is None or value == "":
            return None
        number = float(value)
    except Exception:
        raise ImageReadError(f"DICOM {keyword} is not a number") from None
    if not math.isfinite(number):
        raise ImageReadError(f"DICOM {keyword} is not a finite number ({number})")
    return number


def _check_dicom_header(ds, pixel_tag) -> tuple[int, int, int, int, int, str]:
    """Validate what decoding will use, before decoding: (rows, cols, frames, samples, bits, photometric)."""
    if pixel_tag is None:
        raise ImageReadError("DICOM has no pixel data")
    if pixel_tag != 0x7FE00010:
        raise ImageReadError(f"DICOM {_PIXEL_TAGS[pixel_tag]} (floating point) is not supported")
    rows, cols = _header_int(ds, "Rows", low=1, high=2**16 - 1), _header_int(ds, "Columns", low=1, high=2**16 - 1)
    if rows * cols > MAX_PIXELS:
        raise ImageReadError(f"image too large ({cols}x{rows} pixels, limit {MAX_PIXELS})")
    frames = _header_int(ds, "NumberOfFrames", 1, low=1)
    samples = _header_int(ds, "SamplesPerPixel", 1, low=1, high=4)
    if samples not in (1, 3):
        raise ImageReadError(f"DICOM SamplesPerPixel {samples} is not supported (1 or 3)")
    bits = _header_int(ds, "BitsAllocated", low=1, high=64)
    if bits not in (1, 8, 16, 32):
        raise ImageReadError(f"DICOM BitsAllocated {bits} is not supported (1, 8, 16 or 32)")
    _header_int(ds, "BitsStored", bits, low=1, high=bits)
    _header_int(ds, "PixelRepresentation", 0, low=0, high=1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
    if photometric not in _PHOTOMETRIC:
        raise ImageReadError(f"DICOM photometric interpretation {photometric[:20]!r} is not supported")
    if (samples == 1) != photometric.startswith("MONOCHROME"):
        raise ImageReadError(f"DICOM {photometric} with {samples} sample(s) per pixel is inconsistent")
    frame_bytes = math.ceil(rows * cols * samples * bits / 8)
    if frame_bytes > MAX_DICOM_FRAME_BYTES:
        raise ImageReadError(f"DICOM frame too large ({frame_bytes} bytes, limit {MAX_DICOM_FRAME_BYTES})")
    if frame_bytes * frames > MAX_DICOM_PIXEL_BYTES:
        raise ImageReadError(f"DICOM declares too much pixel data ({frames} frames of {cols}x{rows}, "
                             f"{frame_bytes * frames} bytes, limit {MAX_DICOM_PIXEL_BYTES})")
    # values the LUTs will use: refused here rather than turned into NaN (or a blank image) later
    slope = _header_float(ds, "RescaleSlope", 1.0)
    _header_float(ds, "RescaleIntercept", 0.0)
    if slope == 0:
        raise ImageReadError("DICOM RescaleSlope is 0")
    if "WindowCenter" in ds or "WindowWidth" in ds:
        center, width = _header_float(ds, "WindowCenter"), _header_float(ds, "WindowWidth")
        if center is None or width is None:
            raise ImageReadError("DICOM has a WindowCenter or a WindowWidth but not both")
        if width < 1:
            raise ImageReadError(f"DICOM WindowWidth {width:g} is invalid (must be at least 1)")
    for seq in ("ModalityLUTSequence", "VOILUTSequence"):
        if seq in ds:
            _lut_bits(ds, seq)
    return rows, cols, frames, samples, bits, photometric


def _lut_bits(ds, seq: str) -> int:
    try:
        item = ds[seq].value[0]
        bits = int(item.LUTDescriptor[2]) if "LUTDescriptor" in item else 16
    except Exception:
        raise ImageReadError(f"DICOM {seq} is malformed") from None
    if not 1 <= bits <= 16:
        raise ImageReadError(f"DICOM {seq} has {bits}-bit entries (1 to 16 expected)")
    return bits


def _read_exact(stream, n: int) -> bytes:
    out = stream.read(n)
    if len(out) < n:
        raise ImageReadError("DICOM pixel data is truncated")
    return out


def _first_frame_dataset(ds, stream, tsyntax, frames: int):
    """``ds`` with a Pixel Data element holding only the first frame (read from ``stream``, which is at the
    pixel data element), so that decoding never touches the others."""
    from pydicom.encaps import encapsulate, get_frame
    from pydicom.pixels.utils import get_expected_length

    little = tsyntax.is_little_endian
    head = _read_exact(stream, 8)
    if tsyntax.is_implicit_VR:
        length = struct.unpack(("<" if little else ">") + "I", head[4:8])[0]
    else:
        length = struct.unpack(("<" if little else ">") + "H", head[6:8])[0] if head[4:6] not in _LONG_VRS else \
            struct.unpack(("<" if little else ">") + "I", _read_exact(stream, 4))[0]
    ds.NumberOfFrames = 1  # what the new Pixel Data holds
    if isinstance(stream, _Inflater):  # past the header: inflate as far as the first frame, no further
        stream.limit = stream.tell() + MAX_DICOM_FRAME_BYTES
    if not tsyntax.is_encapsulated:
        frame_bytes = get_expected_length(ds, "bytes")
        if length < frame_bytes:  # (an undefined length is 0xFFFFFFFF, never smaller)
            raise ImageReadError("DICOM pixel data is shorter than one frame")
        frame = _read_exact(stream, frame_bytes)
    else:
        if length != 0xFFFFFFFF:
            raise ImageReadError("DICOM encapsulated pixel data must have an undefined length")
        rest = stream.read(MAX_FILE_BYTES)
        try:
            frame = get_frame(rest, 0, number_of_frames=frames)
        except Exception as exc:
            raise ImageReadError(f"DICOM encapsulated pixel data is malformed ({_reason(exc)})") from None
        del rest
        _check_encapsulated_frame(frame, ds, tsyntax)
        frame = encapsulate([frame])
    ds.PixelData = frame
    ds["PixelData"].VR = "OW" if not tsyntax.is_encapsulated and int(ds.BitsAllocated) > 8 else "OB"
    ds.file_meta.TransferSyntaxUID = tsyntax  # a deflated file's frame is plain explicit VR little endian
    return ds


def _check_encapsulated_frame(frame: bytes, ds, tsyntax) -> None:
    """Refuse a compressed frame that would decode to more than the header declares: an RLE stream can
    expand 64-fold, and Pillow decodes a JPEG at the size its own header states."""
    from pydicom import uid

    rows, cols = int(ds.Rows), int(ds.Columns)
    if tsyntax == uid.RLELossless:
        if len(frame) < 64:
            raise ImageReadError("DICOM RLE frame is truncated")
        count, *offsets = struct.unpack("<16I", frame[:64])
        offsets = offsets[:count] + [len(frame)]
        if not 1 <= count <= 15 or any(not 64 <= a <= b <= len(frame) for a, b in zip(offsets, offsets[1:])):
            raise ImageReadError("DICOM RLE header is malformed")
        for a, b in zip(offsets, offsets[1:]):
            if _rle_length(frame, a, b, rows * cols + 1) > rows * cols + 1:
                raise ImageReadError("DICOM RLE segment decodes to more than the declared image size")
    elif tsyntax in (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEG2000Lossless, uid.JPEG2000):
        try:
            size = Image.open(io.BytesIO(frame), formats=("JPEG", "JPEG2000")).size
        except Exception as exc:
            raise ImageReadError(f"DICOM compressed frame is not readable ({_reason(exc)})") from None
        if size != (cols, rows):
            raise ImageReadError(f"DICOM compressed frame is {size[0]}x{size[1]}, header says {cols}x{rows}")


def _rle_length(src: bytes, start: int, end: int, cap: int) -> int:
    """Decoded length of one PackBits segment, counting no further than ``cap``."""
    n, pos = 0, start
    while pos < end and n <= cap:
        header = src[pos]
        if header > 128:
            n, pos = n + 257 - header, pos + 2
        elif header < 128:  # a literal run: only the bytes present count
            n, pos = n + min(header + 1, end - pos - 1), pos + header + 2
        else:
            pos += 1
    return n


def _dicom_to_grey(data: bytes) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

    try:  # pydicom raises many types for corrupt files, some only when an element is first used
        ds, stream, tsyntax, pixel_tag = _dicom_header(data)
        rows, cols, frames, samples, bits, photometric = _check_dicom_header(ds, pixel_tag)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(f"not a readable DICOM file ({_reason(exc)})") from None
    factor = _reduction(cols, rows)
    decoded = rows * cols * samples * max(1, bits // 8)
    estimate = math.ceil(rows * cols * samples * bits / 8) + 2 * decoded + 24 * (rows // factor) * (cols // factor)
    with DECODE_BUDGET.reserve(estimate):
        try:
            ds = _first_frame_dataset(ds, stream, tsyntax, frames)
            del stream
            arr = pixel_array(ds, index=0)
        except ImageReadError:
            raise
        except Exception as exc:
            raise ImageReadError(f"DICOM pixel data cannot be decoded ({_reason(exc)})") from None
        del ds.PixelData
        if arr.shape[:2] != (rows, cols):
            raise ImageReadError(f"DICOM pixel data has shape {arr.shape}, header says {rows}x{cols}")
        if arr.ndim == 3:  # colour (secondary capture): average the channels
            out = _block_mean(arr[..., :3], factor).astype(np.float32).mean(axis=-1)
            lo, hi = 0.0, float(2 ** min(int(ds.get("BitsStored", 8)), bits) - 1)
        else:
            small = _block_mean(arr, factor)
            del arr
            if factor > 1 and ("ModalityLUTSequence" in ds or "VOILUTSequence" in ds):
                small = np.rint(small).astype(np.int64)  # LUT tables are indexed by whole stored values
            has_voi = "WindowCenter" in ds or "VOILUTSequence" in ds
            try:
                out = apply_modality_lut(small, ds).astype(np.float32)  # RescaleSlope / RescaleIntercept
                if has_voi:
                    out = apply_voi_lut(out, ds, index=0).astype(np.float32)
            except Exception as exc:
                raise ImageReadError(f"DICOM modality or VOI transform failed ({_reason(exc)})") from None
            # Scale by the range the header defines (stored bits through the modality LUT, or the VOI LUT's
            # output), not by this image's min/max: a stretch would undo the window and ignore the bit depth.
            lo, hi = _dicom_output_range(ds, voi_lut=has_voi and "WindowCenter" not in ds)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ImageReadError("DICOM header gives no usable value range")
    if not np.isfinite(out).all():
        raise ImageReadError("DICOM pixel values are not finite after the modality and VOI transforms")
    out = np.clip((out - lo) / (hi - lo), 0.0, 1.0)
    if photometric == "MONOCHROME1":  # 0 = white in MONOCHROME1
        out = 1.0 - out
    return out.astype(np.float32)


def _dicom_output_range(ds, voi_lut: bool) -> tuple[float, float]:
    """Value range of a monochrome DICOM after the modality LUT (and a VOI LUT table, when ``voi_lut``)."""
    if voi_lut:
        return 0.0, float(2 ** _lut_bits(ds, "VOILUTSequence") - 1)
    if "ModalityLUTSequence" in ds:
        return 0.0, float(2 ** _lut_bits(ds, "ModalityLUTSequence") - 1)
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if int(ds.get("PixelRepresentation", 0)) else (0, 2 ** bits - 1)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    return float(lo), float(hi)


# ------------------------------------------------------------------------------------ PNG, JPEG, TIFF, BMP
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
    with DECODE_BUDGET.reserve(estimate):
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


# ------------------------------------------------------------------------------------------------- public
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
