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
#: header elements larger than this are skipped, never copied (a 250 MB private tag would otherwise be read
#: into memory a second time); LUTs (at most 65,536 16-bit entries) and every value decoding uses are smaller
DEFER_BYTES = 1024 * 1024
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_PHOTOMETRIC = {"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT",
                "YBR_RCT"}
_ONE_SAMPLE = {"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR"}


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


def dicom_header(data: bytes):
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
        ds = read_dataset(stream, is_implicit_VR=False, is_little_endian=True, stop_when=stop,
                          defer_size=DEFER_BYTES)
        ds.file_meta = file_meta
        return ds, stream, uid.ExplicitVRLittleEndian, stop.tag
    stream = io.BytesIO(data)
    ds = read_partial(stream, stop_when=stop, force=True, defer_size=DEFER_BYTES)
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
    stored = _header_int(ds, "BitsStored", bits, low=1, high=bits)
    high_bit = _header_int(ds, "HighBit", stored - 1, low=0, high=bits - 1)
    if high_bit != stored - 1:  # pydicom reads the low BitsStored bits whatever HighBit says
        raise ImageReadError(f"DICOM HighBit {high_bit} is not BitsStored - 1 ({stored - 1}); such a bit layout "
                             "is not supported")
    _header_int(ds, "PixelRepresentation", 0, low=0, high=1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
    if photometric not in _PHOTOMETRIC:
        raise ImageReadError(f"DICOM photometric interpretation {photometric[:20]!r} is not supported")
    if (samples == 1) != (photometric in _ONE_SAMPLE):
        raise ImageReadError(f"DICOM {photometric} with {samples} sample(s) per pixel is inconsistent")
    if photometric == "PALETTE COLOR":
        for colour in ("Red", "Green", "Blue"):
            descriptor = ds.get(f"{colour}PaletteColorLookupTableDescriptor")
            if descriptor is None or f"{colour}PaletteColorLookupTableData" not in ds:
                raise ImageReadError("DICOM PALETTE COLOR image has no palette (its colour lookup tables)")
            try:
                entry_bits = int(descriptor[2])
            except Exception:
                raise ImageReadError("DICOM PALETTE COLOR lookup table descriptor is malformed") from None
            if entry_bits not in (8, 16):
                raise ImageReadError(f"DICOM PALETTE COLOR lookup table has {entry_bits}-bit entries (8 or 16)")
    frame_bytes = math.ceil(rows * cols * samples * bits / 8)
    if frame_bytes > MAX_DICOM_FRAME_BYTES:
        raise ImageReadError(f"DICOM frame too large ({frame_bytes} bytes, limit {MAX_DICOM_FRAME_BYTES})")
    if frame_bytes * frames > MAX_DICOM_PIXEL_BYTES:
        raise ImageReadError(f"DICOM declares too much pixel data ({frames} frames of {cols}x{rows}, "
                             f"{frame_bytes * frames} bytes, limit {MAX_DICOM_PIXEL_BYTES})")
    # values the LUTs will use: refused here rather than turned into NaN (or a blank image) later
    slope, intercept = _header_float(ds, "RescaleSlope"), _header_float(ds, "RescaleIntercept")
    if slope == 0:
        raise ImageReadError("DICOM RescaleSlope is 0")
    if (slope is None) != (intercept is None):
        # the standard requires both; one alone means the other's default. Set it, so that pydicom (which
        # skips the rescale unless both are there) and the value range below apply the same transform
        if slope is None:
            ds.RescaleSlope = "1"
        else:
            ds.RescaleIntercept = "0"
    elif slope is None and ("RescaleSlope" in ds or "RescaleIntercept" in ds):
        for keyword in ("RescaleSlope", "RescaleIntercept"):  # both empty: no rescale
            if keyword in ds:
                del ds[keyword]
    slope, intercept = 1.0 if slope is None else slope, 0.0 if intercept is None else intercept
    lo, hi = _stored_range(ds, bits)
    if not all(math.isfinite(v) for v in (lo * slope + intercept, hi * slope + intercept)):
        raise ImageReadError(f"DICOM RescaleSlope {slope:g} and RescaleIntercept {intercept:g} take the pixel "
                             "values beyond any number")
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


def _stored_range(ds, bits: int) -> tuple[int, int]:
    stored = int(ds.get("BitsStored", bits) or bits)
    if int(ds.get("PixelRepresentation", 0) or 0):
        return -(2 ** (stored - 1)), 2 ** (stored - 1) - 1
    return 0, 2 ** stored - 1


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
    if not tsyntax.is_encapsulated:
        total = get_expected_length(ds, "bytes")  # all the frames the header declares
        # a few bytes of padding are common; more is pixel data that does not have the declared geometry
        if length != 0xFFFFFFFF and length > total + max(total % 2, total // 16):
            raise ImageReadError(f"DICOM pixel data holds {length} bytes, more than its {frames} frame(s) of "
                                 f"{ds.Columns}x{ds.Rows} ({total} bytes)")
    ds.NumberOfFrames = 1  # what the new Pixel Data holds
    if isinstance(stream, _Inflater):  # past the header: inflate as far as the first frame, no further
        stream.limit = stream.tell() + MAX_DICOM_FRAME_BYTES
    if not tsyntax.is_encapsulated:
        frame_bytes = get_expected_length(ds, "bytes")
        if length < frame_bytes:  # (an undefined length is 0xFFFFFFFF, never smaller)
            raise ImageReadError("DICOM pixel data is shorter than one frame")
        frame = _read_exact(stream, frame_bytes)
    else:
        # encapsulated data normally has an undefined length; a defined one (some writers) bounds it
        rest = stream.read(MAX_FILE_BYTES if length == 0xFFFFFFFF else length)
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
    """Refuse a compressed frame that would decode to more than the header declares, before a decoder sees it:
    an RLE stream can expand 64-fold, and JPEG, JPEG-LS and JPEG 2000 decoders allocate what their own
    codestream states (its size, components and precision must be the header's). Syntaxes not checked here
    are not decoded."""
    from pydicom import uid

    rows, cols, samples, bits = int(ds.Rows), int(ds.Columns), int(ds.SamplesPerPixel), int(ds.BitsAllocated)
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
        return
    if tsyntax in JPEG_SYNTAXES:
        geometry = jpeg_geometry(frame)
    elif tsyntax in J2K_SYNTAXES:
        geometry = j2k_geometry(frame)
    else:
        raise ImageReadError(f"DICOM transfer syntax {tsyntax.name or str(tsyntax)[:64]} is not supported")
    if geometry is None:
        raise ImageReadError(f"DICOM compressed frame is not a readable {tsyntax.name} codestream")
    width, height, components, precision = geometry
    if (width, height) != (cols, rows):
        raise ImageReadError(f"DICOM compressed frame is {width}x{height}, header says {cols}x{rows}")
    if components != samples:
        raise ImageReadError(f"DICOM compressed frame has {components} component(s), header says {samples}")
    if not 1 <= precision <= min(bits, 16):
        raise ImageReadError(f"DICOM compressed frame has {precision}-bit samples, header allocates {bits} bits")


def _syntaxes(*names: str) -> frozenset:
    from pydicom import uid
    return frozenset(getattr(uid, n) for n in names if hasattr(uid, n))


#: encapsulated syntaxes decoded (through pylibjpeg, pyjpegls or Pillow) once their codestream is checked
JPEG_SYNTAXES = _syntaxes("JPEGBaseline8Bit", "JPEGExtended12Bit", "JPEGLossless", "JPEGLosslessSV1",
                          "JPEGLSLossless", "JPEGLSNearLossless")
J2K_SYNTAXES = _syntaxes("JPEG2000Lossless", "JPEG2000", "HTJ2KLossless", "HTJ2KLosslessRPCL", "HTJ2K")
#: JPEG frame headers: SOF0-3, 5-7, 9-11, 13-15, and JPEG-LS SOF55 (each: precision, height, width, components)
_SOF_MARKERS = {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7}
_NO_LENGTH = {0x01, *range(0xD0, 0xD9)}  # TEM, RSTn, SOI


def jpeg_geometry(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, components, precision) from a JPEG or JPEG-LS codestream's frame header; None if there
    is none before the first scan (or it declares no height: a DNL marker would set it later)."""
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _NO_LENGTH:
            pos += 2
            continue
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if marker in _SOF_MARKERS:
            if length < 8 or pos + 10 > len(data):
                return None
            precision, height, width, components = struct.unpack_from(">BHHB", data, pos + 4)
            return (width, height, components, precision) if height and width else None
        if marker == 0xDA or length < 2:  # a scan before any frame header
            return None
        pos += 2 + length
    return None


def j2k_geometry(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, components, precision of the first) from a JPEG 2000 codestream's SIZ segment (also
    inside a JP2 file); None if it has none."""
    if data[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n":  # a JP2 file: find the contiguous codestream box
        pos = 0
        while pos + 8 <= len(data):
            size, kind = struct.unpack_from(">I4s", data, pos)
            header = 8
            if size == 1 and pos + 16 <= len(data):
                size, header = struct.unpack_from(">Q", data, pos + 8)[0], 16
            if kind == b"jp2c":
                data = data[pos + header:]
                break
            if size < header:
                return None
            pos += size
        else:
            return None
    if data[:4] != b"\xff\x4f\xff\x51" or len(data) < 4 + 38 + 3:
        return None
    xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", data, 8)
    components = struct.unpack_from(">H", data, 40)[0]
    if not components or len(data) < 42 + 3 * components or xsiz <= xo or ysiz <= yo:
        return None
    return xsiz - xo, ysiz - yo, components, (data[42] & 0x7F) + 1


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


def _lut_for_pydicom(ds, seq: str) -> None:
    """pydicom reads LUT entries as uint<bits> (no 'uint12') and a VOI table only at 8 or 10-16 bits: give it the
    container width (8 or 16 bits) that the entries are stored in; the value range keeps the real depth."""
    item = ds[seq].value[0]
    if "LUTDescriptor" in item:
        n, first, bits = (int(v) for v in item.LUTDescriptor)
        if bits not in (8, 16) and not (seq == "VOILUTSequence" and 10 <= bits <= 16):
            item.LUTDescriptor = [n, first, 8 if bits < 8 else 16]


def _dicom_to_grey(data: bytes) -> np.ndarray:
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

    try:  # pydicom raises many types for corrupt files, some only when an element is first used
        ds, stream, tsyntax, pixel_tag = dicom_header(data)
        if not tsyntax.is_transfer_syntax:
            raise ImageReadError(f"DICOM transfer syntax {str(tsyntax)[:64]!r} is not a known transfer syntax")
        rows, cols, frames, samples, bits, photometric = _check_dicom_header(ds, pixel_tag)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(f"not a readable DICOM file ({_reason(exc)})") from None
    factor = _reduction(cols, rows)
    decoded = rows * cols * samples * max(1, bits // 8)
    estimate = math.ceil(rows * cols * samples * bits / 8) + 2 * decoded + 24 * (rows // factor) * (cols // factor)
    if tsyntax.is_encapsulated:  # the decoders' own buffers: 32-bit samples (OpenJPEG, libjpeg)
        estimate += 4 * rows * cols * samples
    if photometric == "PALETTE COLOR":  # the RGB the palette gives, 16 bits a channel at most
        estimate += 6 * rows * cols
    with bounds.DECODE_BUDGET.reserve(estimate):
        try:
            ds = _first_frame_dataset(ds, stream, tsyntax, frames)
            del stream
            arr = pixel_array(ds, index=0)
            if photometric == "PALETTE COLOR":
                arr = apply_color_lut(arr, ds)
        except ImageReadError:
            raise
        except Exception as exc:
            raise ImageReadError(f"DICOM pixel data cannot be decoded ({_reason(exc)})") from None
        del ds.PixelData
        if arr.shape[:2] != (rows, cols):
            raise ImageReadError(f"DICOM pixel data has shape {arr.shape}, header says {rows}x{cols}")
        if arr.ndim == 3:  # colour (secondary capture, palette): average the channels
            out = _block_mean(arr[..., :3], factor).astype(np.float64).mean(axis=-1)
            if photometric == "PALETTE COLOR":  # the palette's entries: 8 or 16 bits
                lo, hi = 0.0, float(np.iinfo(arr.dtype).max if arr.dtype.kind == "u" else 1.0)
            else:
                lo, hi = 0.0, float(2 ** min(int(ds.get("BitsStored", 8)), bits) - 1)
            contrast_in = False  # no value transform to check
        else:
            small = _block_mean(arr, factor)
            del arr
            uses_lut = "ModalityLUTSequence" in ds or "VOILUTSequence" in ds
            if factor > 1 and uses_lut:
                small = np.rint(small).astype(np.int64)  # LUT tables are indexed by whole stored values
            contrast_in = float(np.ptp(small)) > 0
            has_voi = "WindowCenter" in ds or "VOILUTSequence" in ds
            try:
                lo, hi = _dicom_output_range(ds, voi_lut="VOILUTSequence" in ds)  # (pydicom prefers the table)
                for seq in ("ModalityLUTSequence", "VOILUTSequence"):
                    if seq in ds:
                        _lut_for_pydicom(ds, seq)
                # float64 throughout: float32 cannot hold a large intercept and a 16-bit range at once
                out = apply_modality_lut(small, ds)  # RescaleSlope / RescaleIntercept, or the LUT
                out = out.astype(np.float64) if out.dtype != np.float64 else out
                if has_voi:
                    voi = np.rint(out).astype(np.int64) if "VOILUTSequence" in ds else out  # a table: whole values
                    voi = np.asarray(apply_voi_lut(voi, ds, index=0), np.float64)
                    if contrast_in and np.ptp(voi) == 0:
                        # a window or table that maps every pixel to one value (a window far outside the
                        # pixel values, say) is no view of this image: show the modality values instead
                        lo, hi = _dicom_output_range(ds, voi_lut=False)
                    else:
                        out = voi
                    del voi
            except ImageReadError:
                raise
            except Exception as exc:
                raise ImageReadError(f"DICOM modality or VOI transform failed ({_reason(exc)})") from None
            # Scale by the range the header defines (stored bits through the modality LUT, or the VOI LUT's
            # output), not by this image's min/max: a stretch would undo the window and ignore the bit depth.
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ImageReadError("DICOM header gives no usable value range")
    if not np.isfinite(out).all():
        raise ImageReadError("DICOM pixel values are not finite after the modality and VOI transforms")
    out = np.clip((out - lo) / (hi - lo), 0.0, 1.0)
    if contrast_in and np.ptp(out) == 0:  # header values that flatten a real image
        raise ImageReadError("DICOM rescale values leave a blank image (every pixel one value); the header is "
                             "wrong for this pixel data")
    if photometric == "MONOCHROME1":  # 0 = white in MONOCHROME1
        out = 1.0 - out
    return out.astype(np.float32)


def _dicom_output_range(ds, voi_lut: bool) -> tuple[float, float]:
    """Value range of a monochrome DICOM after the modality LUT (and a VOI LUT table, when ``voi_lut``)."""
    if voi_lut:
        return 0.0, float(2 ** _lut_bits(ds, "VOILUTSequence") - 1)
    if "ModalityLUTSequence" in ds:
        return 0.0, float(2 ** _lut_bits(ds, "ModalityLUTSequence") - 1)
    lo, hi = _stored_range(ds, int(ds.get("BitsAllocated", 16)))
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    return float(lo), float(hi)
