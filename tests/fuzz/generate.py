"""Bad, odd and hostile image files, made at test time from real radiographs (nothing generated is committed;
only kermany224 and nih_cxr14_talo images are used, never the TB sets that may not be redistributed).

    from fuzz.generate import generate, special_files
    cases = generate(folder, n=300, seed=0, data=Path("/work/shared/data"))
    case.path, case.kind, case.expect    # expect: "score" (a valid image), "error" (must not get a score), "any"

Each kind is a function ``make(ctx) -> (suffix, bytes)`` in ``KINDS`` with what scoring it should give and a
weight (a kind may also pick its own file name: ``(suffix, bytes, name)``, for hostile names). ``generate`` makes every kind once, then draws the rest by weight, seeded: the same call gives the same
files. Used by tests/fuzz/test_fuzz.py (CI size) and benchmarks/fuzz.py (10,000 files).
"""
from __future__ import annotations

import collections
import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SOURCES = (("kermany224/test/NORMAL", "*.jpeg"), ("kermany224/test/PNEUMONIA", "*.jpeg"),
           ("nih_cxr14_talo/No_findings", "*.png"), ("nih_cxr14_talo/Pneumonia", "*.png"))


@dataclass(frozen=True)
class Case:
    path: Path
    kind: str
    expect: str  # "score", "error" or "any"


class Context:
    """Real source files and grey arrays, a seeded generator, and a few costly files made once."""

    def __init__(self, data: Path, seed: int, per_source: int = 12):
        self.rng = np.random.default_rng(seed)
        self.files: list[tuple[str, bytes]] = []
        self.greys: list[np.ndarray] = []
        for folder, pattern in SOURCES:
            for path in sorted((Path(data) / folder).glob(pattern))[:per_source]:
                raw = path.read_bytes()
                self.files.append((path.suffix.lower(), raw))
                img = Image.open(io.BytesIO(raw)).convert("L")
                img.thumbnail((256, 256))
                self.greys.append(np.asarray(img))
        if not self.files:
            raise FileNotFoundError(f"no source images under {data}")
        self.dicom_named = {p.name: p.read_bytes() for p in sorted((Path(data) / "dicom_chest").glob("*.dcm"))}
        self.dicoms = list(self.dicom_named.values())
        if not self.dicoms:
            raise FileNotFoundError(f"no real DICOM files under {data}/dicom_chest")
        self._memo: dict[str, bytes] = {}

    def grey(self, side: int | None = None) -> np.ndarray:
        g = self.greys[self.rng.integers(len(self.greys))]
        if side:
            g = np.asarray(Image.fromarray(g).resize((side, side)))
        return g

    def pick(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def once(self, key: str, make) -> bytes:
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]


# ------------------------------------------------------------------------------------------- encoders
def save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def dicom(pixels: np.ndarray, *, bits: int = 16, stored: int = 12, photometric: str = "MONOCHROME2",
          signed: bool = False, tsyntax: str | None = None, frames: int = 1, preamble: bool = True,
          rle: bool = False, big_endian: bool = False, **attrs) -> bytes:
    """A DX DICOM of ``pixels`` (grey (H, W) or RGB (H, W, 3)), written by pydicom."""
    import pydicom
    from pydicom import uid
    from pydicom.dataset import FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, stored, stored - 1
    ds.PixelRepresentation = int(signed)
    if frames > 1:
        ds.NumberOfFrames = frames
    for key, value in attrs.items():
        setattr(ds, key, value)
    dtype = {8: "u1", 16: "u2", 32: "u4"}[bits]
    dtype = ("i" if signed else "u") + dtype[1:]
    frame = np.ascontiguousarray(pixels).astype((">" if big_endian else "<") + dtype).tobytes()
    ds.PixelData = frame * frames
    if rle:
        ds.compress(uid.RLELossless)
    elif tsyntax:
        ds.file_meta.TransferSyntaxUID = tsyntax
    buf = io.BytesIO()
    if not preamble:  # a bare dataset, implicit VR, as some old PACS exports
        del ds.file_meta
        ds.save_as(buf, implicit_vr=True, little_endian=True)
    elif big_endian:
        ds.file_meta.TransferSyntaxUID = uid.ExplicitVRBigEndian
        ds.save_as(buf, enforce_file_format=True)
    else:
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def twelve_bit(grey: np.ndarray) -> np.ndarray:
    return np.round(grey.astype(np.float64) * 4095 / 255).astype(np.uint16)


def element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element with a short (16-bit) length."""
    if len(value) % 2:
        value += b"\0" if vr in (b"OB", b"UI") else b" "
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr + struct.pack("<H", len(value)) + value


def patch(data: bytes, tag: int, vr: bytes, old: bytes, new: bytes) -> bytes:
    """Replace an element's value in an explicit VR little endian file, whatever the new value says."""
    before = element(tag, vr, old)
    if before not in data:
        raise ValueError(f"element {tag:08X} with value {old!r} not found")
    return data.replace(before, element(tag, vr, new), 1)


def mode_image(grey: np.ndarray, mode: str) -> Image.Image:
    img = Image.fromarray(grey)
    if mode == "I;16":
        return Image.fromarray(grey.astype(np.uint16) * 257)
    if mode == "I;16-12bit":
        return Image.fromarray(twelve_bit(grey))
    if mode == "F":
        return Image.fromarray(grey.astype(np.float32) * 3.5 - 100.0, mode="F")
    if mode == "P+transparency":
        out = img.convert("P")
        out.info["transparency"] = 0
        return out
    if mode in ("LA", "RGBA"):
        alpha = np.full(grey.shape, 255, np.uint8)
        alpha[: grey.shape[0] // 4] = 0
        base = np.dstack([grey] * (1 if mode == "LA" else 3) + [alpha])
        return Image.fromarray(base, mode)
    return img.convert(mode)


# ------------------------------------------------------------------------------------------- valid kinds
def real_file(ctx):
    return ctx.pick(ctx.files)


def png_mode(ctx):
    mode = ctx.pick(["1", "L", "P", "LA", "RGB", "RGBA", "P+transparency", "I;16", "I;16-12bit"])
    side = int(ctx.rng.integers(40, 300))
    return ".png", save(mode_image(ctx.grey(side), mode), "PNG")


def tiff_mode(ctx):
    mode = ctx.pick(["1", "L", "P", "RGB", "RGBA", "I;16", "F"])
    compression = ctx.pick([None, "tiff_deflate", "tiff_lzw", "packbits"])
    img = mode_image(ctx.grey(int(ctx.rng.integers(40, 300))), mode)
    return ctx.pick([".tif", ".tiff"]), save(img, "TIFF", compression=compression)


def bmp(ctx):
    return ".bmp", save(mode_image(ctx.grey(int(ctx.rng.integers(40, 300))), ctx.pick(["L", "RGB", "P", "1"])),
                        "BMP")


def jpeg_grey(ctx):
    img = Image.fromarray(ctx.grey(int(ctx.rng.integers(40, 300))))
    return ctx.pick([".jpg", ".jpeg"]), save(img, "JPEG", quality=int(ctx.rng.integers(30, 95)),
                                             progressive=bool(ctx.rng.integers(2)))


def dicom_ok(ctx):
    from pydicom import uid
    grey = ctx.grey(int(ctx.rng.integers(32, 200)))
    v = twelve_bit(grey)
    variant = ctx.pick(["12bit", "16bit", "8bit", "mono1", "signed", "rescale", "window", "frames", "rle",
                        "deflate", "no_meta", "big_endian", "rgb", "jpeg", "no_suffix"])
    suffix = ".dcm"
    if variant == "12bit":
        data = dicom(v)
    elif variant == "16bit":
        data = dicom(grey.astype(np.uint16) * 257, stored=16)
    elif variant == "8bit":
        data = dicom(grey, bits=8, stored=8)
    elif variant == "mono1":
        data = dicom(4095 - v, photometric="MONOCHROME1")
    elif variant == "signed":
        data = dicom(v.astype(np.int16) - 2048, signed=True)
    elif variant == "rescale":
        data = dicom(v, RescaleSlope="2.0", RescaleIntercept="-1024")
    elif variant == "window":
        data = dicom(v, WindowCenter="2000", WindowWidth="1500")
    elif variant == "frames":
        data = dicom(v, frames=3)
    elif variant == "rle":
        data = dicom(v, rle=True)
    elif variant == "deflate":
        data = dicom(v, tsyntax=uid.DeflatedExplicitVRLittleEndian)
    elif variant == "no_meta":
        data = dicom(v, preamble=False)
    elif variant == "big_endian":
        data = dicom(v, big_endian=True)
    elif variant == "rgb":
        data = dicom(np.dstack([grey] * 3), bits=8, stored=8, photometric="RGB")
    elif variant == "jpeg":
        from pydicom.encaps import encapsulate
        frame = save(Image.fromarray(grey), "JPEG", quality=90)
        data = dicom(grey, bits=8, stored=8)
        data = data[: data.index(b"\xe0\x7f\x10\x00")]  # drop the native pixel data element
        data = data.replace(element(0x00020010, b"UI", uid.ExplicitVRLittleEndian.encode()),
                            element(0x00020010, b"UI", uid.JPEGBaseline8Bit.encode()), 1)
        enc = encapsulate([frame])
        data += struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\0\0" + struct.pack("<I", 0xFFFFFFFF) + enc + \
            struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    else:  # PACS exports often have no extension: found by the DICM preamble
        data, suffix = dicom(v), ""
    return suffix, data


def big_png(ctx):  # 7999 x 8000: within MAX_PIXELS, decoded downscaled
    return ".png", ctx.once("big_png", lambda: save(Image.new("L", (7999, 8000), 40), "PNG", compress_level=1))


def big_jpeg(ctx):
    return ".jpg", ctx.once("big_jpeg", lambda: save(Image.new("RGB", (8000, 7999), (90, 90, 90)), "JPEG"))


def big_tiff(ctx):
    return ".tif", ctx.once("big_tiff", lambda: save(Image.new("L", (8000, 7000), 7), "TIFF",
                                                     compression="tiff_deflate"))


def raw_deflate(chunk: bytes, final: bool = False) -> bytes:
    """``chunk`` as a raw deflate block of its own, ending in a full flush (or the stream's end): such blocks
    concatenate into one valid stream."""
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(chunk) + c.flush(zlib.Z_FINISH if final else zlib.Z_FULL_FLUSH)


def deflated_preamble() -> bytes:
    """Preamble, DICM and the file meta of a Deflated Explicit VR Little Endian file: what precedes its
    deflated data set."""
    import pydicom
    from pydicom import uid
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
    meta_buf = DicomBytesIO()
    meta_buf.is_little_endian, meta_buf.is_implicit_VR = True, False
    write_file_meta_info(meta_buf, meta, enforce_standard=True)
    return b"\0" * 128 + b"DICM" + meta_buf.getvalue()


def deflated_dicom(rows: int, cols: int, frames: int, value: int = 0) -> bytes:
    """A Deflated Explicit VR Little Endian DICOM whose pixel data really inflates to frames x rows x cols
    16-bit pixels, without ever holding them: equal deflate blocks, each ending in a full flush, are
    concatenated."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = pydicom.Dataset()
    ds.Modality = "DX"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    frame_bytes = rows * cols * 2
    head = body.getvalue() + struct.pack("<HH", 0x7FE0, 0x0010) + b"OW\0\0" + struct.pack("<I", frame_bytes * frames)
    block = raw_deflate(struct.pack("<H", value) * (frame_bytes // 2))
    return deflated_preamble() + raw_deflate(head) + block * frames + raw_deflate(b"", True)


def deflate_frames(ctx):  # 10 frames of 4000 x 4000 (320 MB inflated): only the first is inflated
    return ".dcm", ctx.once("deflate_frames", lambda: deflated_dicom(4000, 4000, 10, 1000))


# ------------------------------------------------------------------------------------------- bad kinds
def empty(ctx):
    return ctx.pick([".png", ".jpg", ".dcm", ".tif"]), b""


def text(ctx):
    return ctx.pick([".png", ".jpg", ".dcm"]), b"patient notes, not an image\n" * int(ctx.rng.integers(1, 50))


def random_bytes(ctx):
    return ctx.pick([".png", ".jpg", ".dcm", ".tif", ".bmp"]), ctx.rng.bytes(int(ctx.rng.integers(1, 20000)))


MAGICS = {".png": b"\x89PNG\r\n\x1a\n", ".jpg": b"\xff\xd8\xff\xe0", ".tif": b"II*\0", ".bmp": b"BM",
          ".dcm": b"\0" * 128 + b"DICM"}


def magic_garbage(ctx):
    suffix = ctx.pick(list(MAGICS))
    return suffix, MAGICS[suffix] + ctx.rng.bytes(int(ctx.rng.integers(0, 5000)))


VALID = None  # filled below: the valid kinds, whose files get truncated and bit-flipped


def truncated(ctx):
    suffix, data = VALID[int(ctx.rng.integers(len(VALID)))](ctx)
    return suffix, data[: int(ctx.rng.integers(1, max(2, len(data) - 1)))]


def bitflip(ctx):
    suffix, data = VALID[int(ctx.rng.integers(len(VALID)))](ctx)
    buf = bytearray(data)
    for _ in range(int(ctx.rng.integers(1, 24))):
        i = int(ctx.rng.integers(len(buf)))
        buf[i] ^= 1 << int(ctx.rng.integers(8))
    return suffix, bytes(buf)


def png_bomb_header(ctx):
    w, h = ctx.pick([(9000, 9000), (60000, 60000), (2**31 - 1, 2**31 - 1), (1, 100_000_000), (65535, 65535)])
    data = bytearray(save(Image.new("L", (16, 16)), "PNG"))
    at = data.index(b"IHDR")
    data[at + 4: at + 12] = struct.pack(">II", w, h)
    data[at + 17: at + 21] = struct.pack(">I", zlib.crc32(bytes(data[at: at + 17])))
    return ".png", bytes(data)


def jpeg_bomb_header(ctx):
    data = bytearray(save(Image.fromarray(ctx.grey(64)), "JPEG"))
    at = data.index(b"\xff\xc0")  # baseline SOF: length(2) precision(1) height(2) width(2)
    data[at + 5: at + 9] = struct.pack(">HH", 60000, 60000)
    return ".jpg", bytes(data)


def tiff_bomb_header(ctx):
    img = Image.fromarray(ctx.grey(64))
    data = bytearray(save(img, "TIFF"))
    # ImageWidth (256) and ImageLength (257) as SHORT or LONG entries of the first IFD
    ifd = struct.unpack_from("<I", data, 4)[0]
    for k in range(struct.unpack_from("<H", data, ifd)[0]):
        at = ifd + 2 + 12 * k
        tag, typ = struct.unpack_from("<HH", data, at)
        if tag in (256, 257):
            struct.pack_into("<HHII", data, at, tag, 4, 1, 200_000)
    return ".tif", bytes(data)


def unsupported_mode(ctx):
    grey = ctx.grey(int(ctx.rng.integers(40, 200)))
    kind = ctx.pick(["LAB", "CMYK-tiff", "CMYK-jpeg"])
    if kind == "LAB":
        return ".tif", save(Image.merge("LAB", [Image.fromarray(grey)] + [Image.new("L", grey.shape[::-1], 128)] * 2),
                            "TIFF")
    img = Image.fromarray(grey).convert("CMYK")
    return (".tif", save(img, "TIFF")) if kind == "CMYK-tiff" else (".jpg", save(img, "JPEG"))


def float_nonfinite(ctx):
    arr = ctx.grey(int(ctx.rng.integers(40, 200))).astype(np.float32)
    idx = ctx.rng.integers(0, arr.size, int(ctx.rng.integers(1, 10)))
    arr.flat[idx] = ctx.pick([np.nan, np.inf, -np.inf])
    return ".tif", save(Image.fromarray(arr, mode="F"), "TIFF")


def other_format(ctx):
    img = Image.fromarray(ctx.grey(64))
    fmt = ctx.pick(["GIF", "ICO", "PPM", "TGA", "PCX"])
    return ctx.pick([".png", ".jpg"]), save(img, fmt)


def tiny(ctx):
    return ".png", save(Image.fromarray(ctx.grey(4)), "PNG")


# (keyword tag, VR, placeholder written by pydicom, hostile value)
DICOM_BAD_VALUES = [
    (0x00281053, b"DS", "nan"), (0x00281053, b"DS", "inf"), (0x00281053, b"DS", "-inf"), (0x00281053, b"DS", "0"),
    (0x00281053, b"DS", "abc"), (0x00281053, b"DS", "1e400"),
    (0x00281052, b"DS", "1e400"), (0x00281052, b"DS", "abc"), (0x00281052, b"DS", "nan"),
    (0x00281052, b"DS", "-1e999"), (0x00281051, b"DS", "0"), (0x00281051, b"DS", "-5"), (0x00281051, b"DS", "x"),
    (0x00281051, b"DS", "nan"), (0x00281050, b"DS", "nan"), (0x00281050, b"DS", "1e400"), (0x00281050, b"DS", "abc"),
    (0x00280008, b"IS", "0"), (0x00280008, b"IS", "-1"), (0x00280008, b"IS", "abc"), (0x00280008, b"IS", "99999999"),
    (0x00281056, b"CS", "WEIRD"),
]
DICOM_BAD_SHORTS = [(0x00280010, 0), (0x00280011, 0), (0x00280100, 0), (0x00280100, 13), (0x00280100, 64),
                    (0x00280101, 40), (0x00280002, 0), (0x00280002, 2), (0x00280002, 3), (0x00280103, 7),
                    (0x00280011, 65535), (0x00280010, 40000)]
PLACEHOLDERS = {0x00281053: "1.0", 0x00281052: "0.0", 0x00281051: "4000", 0x00281050: "2048", 0x00280008: "1",
                0x00281056: "LINEAR"}
KEYWORDS = {0x00281053: "RescaleSlope", 0x00281052: "RescaleIntercept", 0x00281051: "WindowWidth",
            0x00281050: "WindowCenter", 0x00280008: "NumberOfFrames", 0x00281056: "VOILUTFunction"}


def dicom_bad_value(ctx):
    v = twelve_bit(ctx.grey(int(ctx.rng.integers(32, 160))))
    if ctx.rng.random() < 0.6:
        tag, vr, bad = DICOM_BAD_VALUES[int(ctx.rng.integers(len(DICOM_BAD_VALUES)))]
        attrs = {KEYWORDS[t]: PLACEHOLDERS[t] for t in (0x00281053, 0x00281052)}
        if tag in (0x00281051, 0x00281050, 0x00281056):
            attrs.update(WindowCenter="2048", WindowWidth="4000", VOILUTFunction="LINEAR")
        attrs[KEYWORDS[tag]] = PLACEHOLDERS[tag]
        data = dicom(v, **attrs)
        return ".dcm", patch(data, tag, vr, PLACEHOLDERS[tag].encode(), bad.encode())
    tag, bad = DICOM_BAD_SHORTS[int(ctx.rng.integers(len(DICOM_BAD_SHORTS)))]
    data = dicom(v)
    import pydicom
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    old = int(ds[tag].value)
    return ".dcm", patch(data, tag, b"US", struct.pack("<H", old), struct.pack("<H", bad))


def dicom_bad_structure(ctx):
    from pydicom import uid
    v = twelve_bit(ctx.grey(int(ctx.rng.integers(32, 160))))
    data = dicom(v)
    pixel_at = data.index(b"\xe0\x7f\x10\x00")
    variant = ctx.pick(["no_pixels", "short_pixels", "unknown_ts", "jpeg_ts_native", "palette", "photometric",
                        "float_pixels", "lut_garbage", "rgb_with_grey_data"])
    if variant == "no_pixels":
        return ".dcm", data[:pixel_at]
    if variant == "short_pixels":
        return ".dcm", data[: pixel_at + 12 + int(ctx.rng.integers(0, v.size))]
    if variant in ("unknown_ts", "jpeg_ts_native"):
        new = b"1.2.3.4.5.6" if variant == "unknown_ts" else uid.JPEGBaseline8Bit.encode()
        return ".dcm", data.replace(element(0x00020010, b"UI", uid.ExplicitVRLittleEndian.encode()),
                                    element(0x00020010, b"UI", new), 1)
    if variant in ("palette", "photometric"):
        new = b"PALETTE COLOR" if variant == "palette" else b"GARBAGE"
        return ".dcm", patch(data, 0x00280004, b"CS", b"MONOCHROME2", new)
    if variant == "float_pixels":  # Float Pixel Data (7FE0,0008) instead of Pixel Data
        pixels = v.astype("<f4").tobytes()
        return ".dcm", data[:pixel_at] + struct.pack("<HH", 0x7FE0, 0x0008) + b"OF\0\0" + \
            struct.pack("<I", len(pixels)) + pixels
    if variant == "lut_garbage":
        import pydicom
        ds = pydicom.dcmread(io.BytesIO(data))
        item = pydicom.Dataset()
        item.add_new(0x00283002, "US", [4096, 0, 40])  # LUTDescriptor: 40-bit entries
        item.add_new(0x00283006, "US", [0] * 4096)  # LUTData
        ds.VOILUTSequence = [item]
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return ".dcm", buf.getvalue()
    return ".dcm", patch(dicom(v, photometric="RGB"), 0x00280002, b"US", struct.pack("<H", 1), struct.pack("<H", 3))


def deflate_bomb(ctx):  # 100 frames of 4000 x 4000, 16 bit: 3.2 GB once inflated, 3 MB on disk
    return ".dcm", ctx.once("deflate_bomb", lambda: deflated_dicom(4000, 4000, 100))


def deflate_header_bomb(ctx):  # a header element that inflates to 200 MB, before any pixel data
    def build():
        head = struct.pack("<HH", 0x0009, 0x0010) + b"LO" + struct.pack("<H", 4) + b"XX  " + \
            struct.pack("<HH", 0x0009, 0x1000) + b"OB\0\0" + struct.pack("<I", 200 * 2**20)
        return deflated_preamble() + raw_deflate(head) + raw_deflate(bytes(2**20)) * 200 + raw_deflate(b"", True)
    return ".dcm", ctx.once("deflate_header_bomb", build)


def rle_bomb(ctx):  # declares 16 x 16 pixels; its one segment expands to 64 MB
    from pydicom import uid
    data = dicom(np.zeros((16, 16), np.uint8), bits=8, stored=8, rle=True)
    segment = b"\x81\x07" * (2**20 // 2)  # each pair: 128 copies of 7
    frame = struct.pack("<16I", 1, 64, *[0] * 14) + segment
    from pydicom.encaps import encapsulate
    at = data.index(b"\xe0\x7f\x10\x00")
    assert uid.RLELossless.encode() in data
    enc = encapsulate([frame])
    return ".dcm", data[:at] + struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\0\0" + struct.pack("<I", 0xFFFFFFFF) + \
        enc + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def jpeg_size_mismatch(ctx):  # header says 16 x 16; the JPEG inside is 6000 x 6000
    from pydicom import uid
    from pydicom.encaps import encapsulate
    frame = ctx.once("jpeg6000", lambda: save(Image.new("L", (6000, 6000), 50), "JPEG"))
    base = dicom(np.zeros((16, 16), np.uint8), bits=8, stored=8)
    base = base[: base.index(b"\xe0\x7f\x10\x00")].replace(
        element(0x00020010, b"UI", uid.ExplicitVRLittleEndian.encode()),
        element(0x00020010, b"UI", uid.JPEGBaseline8Bit.encode()), 1)
    return ".dcm", base + struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\0\0" + struct.pack("<I", 0xFFFFFFFF) + \
        encapsulate([frame]) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def dicom_huge_declared(ctx):
    data = dicom(np.zeros((16, 16), np.uint16))
    data = patch(data, 0x00280010, b"US", struct.pack("<H", 16), struct.pack("<H", 60000))
    return ".dcm", patch(data, 0x00280011, b"US", struct.pack("<H", 16), struct.pack("<H", 60000))




# ------------------------------------------------------------------------------------------- round 2 (issue 21)
#: names that once lost or mixed rows: not UTF-8, control characters, all digits (PACS), spreadsheet formulas,
#: a name that looks like an npz reference
HOSTILE_NAMES = [b"caf\xe9", b"\xff\xfe", "line\rbreak", "new\nline", "tab\tname", "=HYPERLINK(\"127.0.0.1\")",
                 "+1", "-2", "@sum", "'quote", "scan::1", "x::train[0]", "\u202eevil", "a,b;c\"d"]


def hostile_name(ctx):
    """A valid radiograph (a real file) under a hostile name; an all-digit name gets a real DICOM, as a PACS
    export would (no extension: found by its preamble)."""
    name = ctx.pick(HOSTILE_NAMES + ["0012345"])
    if name == "0012345":
        return "", ctx.pick(ctx.dicoms), name
    suffix, data = real_file(ctx)
    return suffix, data, name


def real_dicom(ctx):
    """A real compressed or uncompressed DICOM from ../shared/data/dicom_chest (JPEG 2000, JPEG-LS, JPEG
    baseline, LUT sequences)."""
    return ".dcm", ctx.pick(ctx.dicoms)


def dicom_header_fixed(ctx):
    """Header values that once quietly ruined the image and are now decoded correctly."""
    v = twelve_bit(ctx.grey(int(ctx.rng.integers(32, 160))))
    variant = ctx.pick(["intercept_only", "slope_only", "intercept_1e11", "slope_1e300", "slope_1e-300",
                        "window_1e30", "window_-1e30", "modality_lut_12", "padded"])
    if variant == "intercept_only":
        return ".dcm", dicom(v, RescaleIntercept="-1024")
    if variant == "slope_only":
        return ".dcm", dicom(v, RescaleSlope="2")
    if variant == "intercept_1e11":
        return ".dcm", dicom(v, RescaleSlope="1", RescaleIntercept="1e11")
    if variant in ("slope_1e300", "slope_1e-300"):
        return ".dcm", dicom(v, RescaleSlope=variant[6:], RescaleIntercept="0")
    if variant.startswith("window"):
        return ".dcm", dicom(v, WindowCenter=variant[7:], WindowWidth="400")
    if variant == "padded":  # odd pixel data padded to an even length: a few bytes over, not a wrong geometry
        side = v.shape[0] - (1 - v.shape[0] % 2)
        return ".dcm", dicom((v[:side, :side] // 16).astype(np.uint8), bits=8, stored=8)
    import pydicom
    ds = pydicom.dcmread(io.BytesIO(dicom(v)))
    item = pydicom.Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 12])
    item.add_new(0x00283006, "US", list(range(4096)))
    item.ModalityLUTType = "US"
    ds.ModalityLUTSequence = [item]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return ".dcm", buf.getvalue()


def dicom_header_refused(ctx):
    """Header values that cannot describe this pixel data: refused, never scored."""
    v = twelve_bit(ctx.grey(int(ctx.rng.integers(32, 160))))
    variant = ctx.pick(["high_bit", "excess_pixels", "overflow", "voi_markup", "jls_bigger", "j2k_bigger"])
    if variant == "high_bit":
        return ".dcm", patch(dicom(v), 0x00280102, b"US", struct.pack("<H", 11), struct.pack("<H", 15))
    if variant == "excess_pixels":
        rows = v.shape[0]
        return ".dcm", patch(dicom(v), 0x00280010, b"US", struct.pack("<H", rows), struct.pack("<H", rows // 2))
    if variant == "overflow":
        return ".dcm", dicom(v, RescaleSlope="1e306", RescaleIntercept="0")
    if variant == "voi_markup":  # a VOI LUT Function that the error reason quotes: Markdown for the dashboard
        data = dicom(v, WindowCenter="2048", WindowWidth="4000", VOILUTFunction="LINEAR")
        return ".dcm", patch(data, 0x00281056, b"CS", b"LINEAR", b"![x](http://127.0.0.1:9/p.png)")
    import pydicom
    from pydicom.encaps import encapsulate, generate_frames
    name = "cr_chest_mono1_jpegls_near_lossless.dcm" if variant == "jls_bigger" else "cr_chest_mono1_j2k_lossy.dcm"
    ds = pydicom.dcmread(io.BytesIO(ctx.dicom_named[name]))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    marker, at, size = (b"\xff\xf7", 5, 2) if variant == "jls_bigger" else (b"\xff\x51", 6, 4)
    i = frame.index(marker) + at
    ds.PixelData = encapsulate([frame[:i] + (int.from_bytes(frame[i:i + size], "big") * 3).to_bytes(size, "big")
                                + frame[i + size:]])
    buf = io.BytesIO()
    ds.save_as(buf)
    return ".dcm", buf.getvalue()


def dicom_private_tag_big(ctx):  # a 250 MB private element before the pixel data (pydicom used to copy it)
    def build():
        import pydicom
        ds = pydicom.dcmread(io.BytesIO(dicom(twelve_bit(ctx.grey(256)))))
        ds.add_new(0x00091010, "LO", "CXRAD FUZZ")
        ds.add_new(0x00091011, "OB", bytes(250 * 2**20))
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()
    return ".dcm", ctx.once("private_tag_big", build)


def tiff_signed(ctx):
    g = ctx.grey(int(ctx.rng.integers(40, 300))).astype(np.int64)
    values = ctx.pick([g * 16 - 2048, g - 128, g * 1000, -50 * g, g * 2**20 - 2**27])
    return ".tif", save(Image.fromarray(values.astype(np.int32)), "TIFF")


def raster_odd(ctx):
    """Rasters once mis-read: float TIFFs near the float32 limits, EXIF-rotated JPEGs (score)."""
    g = ctx.grey(int(ctx.rng.integers(40, 300)))
    if ctx.rng.random() < 0.5:
        return ".tif", save(Image.fromarray((g.astype(np.float64) / 255 * 6e38 - 3e38).astype(np.float32), "F"),
                            "TIFF")
    img = Image.fromarray(g[:, : max(8, g.shape[1] // 2)])
    exif = img.getexif()
    exif[0x0112] = int(ctx.pick([2, 3, 4, 5, 6, 7, 8]))
    return ".jpg", save(img, "JPEG", quality=90, exif=exif)


def raster_thin(ctx):  # a strip too thin to be an image, even once reduced
    return ".png", save(Image.new("L", ctx.pick([(100_000, 1), (1, 100_000), (100_000, 30)]), 90), "PNG")


def big_progressive_jpeg(ctx):  # 8000 x 7999 4:4:4 colour, progressive: libjpeg holds ~330 MB of coefficients
    def build():
        g = np.asarray(Image.fromarray(ctx.greys[0]).resize((8000, 7999)))
        return save(Image.merge("RGB", [Image.fromarray(g)] * 3), "JPEG", quality=85, progressive=True,
                    subsampling=0)
    return ".jpg", ctx.once("big_progressive_jpeg", build)


# name: (make, expect, weight); weights are relative frequencies after every kind has been made once
KINDS = {
    "real_file": (real_file, "score", 8), "png_mode": (png_mode, "score", 6), "tiff_mode": (tiff_mode, "score", 5),
    "bmp": (bmp, "score", 2), "jpeg_grey": (jpeg_grey, "score", 2), "dicom_ok": (dicom_ok, "score", 10),
    "big_png": (big_png, "score", 0.05), "big_jpeg": (big_jpeg, "score", 0.05),
    "big_tiff": (big_tiff, "score", 0.05), "deflate_frames": (deflate_frames, "score", 0.05),
    "empty": (empty, "error", 1), "text": (text, "error", 1), "random_bytes": (random_bytes, "error", 4),
    "magic_garbage": (magic_garbage, "error", 4), "truncated": (truncated, "any", 10), "bitflip": (bitflip, "any", 10),
    "png_bomb_header": (png_bomb_header, "error", 2), "jpeg_bomb_header": (jpeg_bomb_header, "error", 1),
    "tiff_bomb_header": (tiff_bomb_header, "error", 1), "unsupported_mode": (unsupported_mode, "error", 2),
    "float_nonfinite": (float_nonfinite, "error", 2), "other_format": (other_format, "error", 1),
    "tiny": (tiny, "error", 1), "dicom_bad_value": (dicom_bad_value, "error", 12),
    "dicom_bad_structure": (dicom_bad_structure, "error", 6), "deflate_bomb": (deflate_bomb, "error", 0.2),
    "deflate_header_bomb": (deflate_header_bomb, "error", 0.2), "rle_bomb": (rle_bomb, "error", 0.5),
    "jpeg_size_mismatch": (jpeg_size_mismatch, "error", 0.2), "dicom_huge_declared": (dicom_huge_declared, "error", 1),
    # round 2 (issue 21)
    "hostile_name": (hostile_name, "score", 3), "real_dicom": (real_dicom, "score", 2),
    "dicom_header_fixed": (dicom_header_fixed, "score", 4), "dicom_header_refused": (dicom_header_refused, "error", 3),
    "dicom_private_tag_big": (dicom_private_tag_big, "score", 0.03), "tiff_signed": (tiff_signed, "score", 2),
    "raster_odd": (raster_odd, "score", 2), "raster_thin": (raster_thin, "error", 0.5),
    "big_progressive_jpeg": (big_progressive_jpeg, "score", 0.04),
}
VALID = [png_mode, tiff_mode, bmp, jpeg_grey, dicom_ok, real_file, real_dicom]


def generate(folder, n: int, seed: int = 0, data: Path | None = None) -> list[Case]:
    """Write ``n`` files into ``folder`` (every kind at least once when ``n`` allows), named
    ``<index>_<kind><suffix>``; returns them in order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ctx = Context(data or Path(os.environ.get("CXRAD_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")),
                  seed)
    names = list(KINDS)
    weights = np.array([KINDS[k][2] for k in names], float)
    order = names[:n] + list(ctx.rng.choice(names, size=max(0, n - len(names)), p=weights / weights.sum()))
    cases = []
    for i, kind in enumerate(order):
        make, expect, _ = KINDS[kind]
        suffix, blob, *name = make(ctx)
        if name:  # a hostile name: bytes where it is not UTF-8
            raw = name[0] if isinstance(name[0], bytes) else name[0].encode("utf-8")
            path = Path(os.fsdecode(os.path.join(os.fsencode(folder), f"{i:05d}_".encode() + raw + suffix.encode())))
        else:
            path = folder / f"{i:05d}_{kind}{suffix}"
        path.write_bytes(blob)
        cases.append(Case(path, kind, expect))
    return cases


def special_files(folder) -> list[Case]:
    """Things that are not regular files, under image names: each must give an error row, never a hang."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    fifo = folder / "fifo.png"
    os.mkfifo(fifo)
    cases.append(Case(fifo, "fifo", "error"))
    for name, target in (("zero.png", "/dev/zero"), ("urandom.dcm", "/dev/urandom"), ("dangling.jpg", "missing")):
        (folder / name).symlink_to(target)
        cases.append(Case(folder / name, f"symlink_{Path(target).name}", "error"))
    return cases


#: the reason decode_image gives a failure nobody foresaw; a fuzz file that gets it names a missing check
UNFORESEEN = "cannot decode the image"


def check_table(table, cases) -> tuple[collections.Counter, list[str]]:
    """The fuzz invariants on a ``cxrad score`` table (read with ``keep_default_na=False``): every file has
    exactly one row; a score row has a finite score, an error row a one-line reason and no score; kinds that
    must be scored or must fail did. Returns ((kind, "score"|"error") counts, the problems found)."""
    import pandas as pd

    problems = []
    rows = {}
    for r in table.itertuples(index=False):
        if r.path in rows:
            problems.append(f"{r.path}: two rows")
        rows[r.path] = r
    from cxrad.files import path_text
    wanted = {path_text(c.path) for c in cases}
    problems += [f"{p}: no row" for p in sorted(wanted - set(rows))]
    problems += [f"{p}: row for a file not generated" for p in sorted(set(rows) - wanted)]
    outcome = collections.Counter()
    for c in cases:
        r = rows.get(path_text(c.path))
        if r is None:
            continue
        error = r.error if isinstance(r.error, str) else ""
        got = "error" if error else "score"
        score = pd.to_numeric(pd.Series([r.score]), errors="coerce").iloc[0]
        if got == "score" and not np.isfinite(score):
            problems.append(f"{c.path.name}: no error and no finite score")
        if got == "error" and ("\n" in error or len(error) > 300 or UNFORESEEN in error or pd.notna(score)):
            problems.append(f"{c.path.name}: bad error row ({error!r}, score {score})")
        if c.expect != "any" and got != c.expect:
            problems.append(f"{c.path.name}: expected {c.expect}, got {got} {error!r}")
        outcome[(c.kind, got)] += 1
    return outcome, problems
