"""DICOM to a grey float image, with every header value checked before anything is decoded."""
from __future__ import annotations

import io
import math
import struct
import zlib

import numpy as np
from PIL import Image

from cxrad.errors import ImageReadError
from cxrad.imaging import bounds
from cxrad.imaging.bounds import (MAX_DICOM_FRAME_BYTES, MAX_DICOM_HEADER_BYTES, MAX_DICOM_PIXEL_BYTES,
                                  MAX_FILE_BYTES, MAX_PIXELS, _block_mean, _reason, _reduction)

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
    with bounds.DECODE_BUDGET.reserve(estimate):
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


