"""cxrad.io on real images: PNG 8/16 bit, JPEG, DICOM (pydicom-written from real images), alpha, resizing."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrad.imaging import ImageReadError, Preprocessing, decode_image, load_for_model, read_image, resize


@pytest.fixture(scope="module")
def grey8(shared_data) -> np.ndarray:
    """A real 8-bit grey radiograph (NIH, 512 px), as uint8."""
    path = sorted((shared_data / "nih_cxr14_talo" / "No_findings").glob("*.png"))[0]
    arr = np.asarray(Image.open(path))
    assert arr.dtype == np.uint8 and arr.ndim == 2
    return arr


def write_dicom(path: Path, pixels: np.ndarray, bits_stored: int, photometric: str = "MONOCHROME2",
                slope: float | None = None, intercept: float | None = None, window=None, signed: bool = False,
                shape: tuple[int, int] | None = None) -> Path:
    """A minimal valid DX DICOM (explicit VR little endian, uncompressed) holding ``pixels`` (16-bit)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = shape or pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2" if signed else "<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------------------------- rasters
def test_real_png_jpeg_read_as_grey_unit_range(shared_data, grey8):
    png = read_image(sorted((shared_data / "nih_cxr14_talo" / "No_findings").glob("*.png"))[0])
    np.testing.assert_array_equal(png, grey8.astype(np.float32) / 255.0)

    jpeg_path = sorted((shared_data / "kermany224" / "train" / "NORMAL").glob("*.jpeg"))[0]
    assert Image.open(jpeg_path).mode == "RGB"  # RGB copies of grey: must come back as one channel
    jpeg = read_image(jpeg_path)
    assert jpeg.shape == (224, 224) and jpeg.dtype == np.float32
    expected = np.asarray(Image.open(jpeg_path).convert("L"), np.float32) / 255.0
    np.testing.assert_array_equal(jpeg, expected)

    covid = read_image(sorted((shared_data / "covid_hannover" / "png").glob("*.png"))[0])
    assert covid.shape[1] == 640 and 0.0 <= covid.min() < covid.max() <= 1.0


def test_sixteen_bit_png_scaled_by_bit_depth(tmp_path, grey8):
    full16 = grey8.astype(np.uint16) * 257  # 8 -> 16 bit: 255 -> 65535
    twelve = np.round(grey8.astype(np.float64) * 4095 / 255).astype(np.uint16)  # 12-bit data in 16-bit PNG
    for name, arr in (("full16.png", full16), ("twelve.png", twelve)):
        Image.fromarray(arr).save(tmp_path / name)
        assert Image.open(tmp_path / name).mode.startswith("I")  # really stored as 16-bit
    np.testing.assert_allclose(read_image(tmp_path / "full16.png"), grey8 / 255.0, atol=1e-6)
    # 12-bit-in-16 must not come out dimmed 16x
    np.testing.assert_allclose(read_image(tmp_path / "twelve.png"), grey8 / 255.0, atol=0.5 / 255)


def test_rgb_rgba_la_become_grey(tmp_path, grey8):
    rgb = np.repeat(grey8[..., None], 3, axis=2)
    Image.fromarray(rgb, "RGB").save(tmp_path / "rgb.png")
    opaque = np.dstack([rgb, np.full(grey8.shape, 255, np.uint8)])
    Image.fromarray(opaque, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.dstack([grey8, np.full(grey8.shape, 255, np.uint8)]), "LA").save(tmp_path / "la.png")
    for name in ("rgb.png", "rgba.png", "la.png"):
        np.testing.assert_allclose(read_image(tmp_path / name), grey8 / 255.0, atol=1 / 255, err_msg=name)

    # transparent pixels carry no anatomy: they come out black, opaque ones keep their value
    alpha = np.full(grey8.shape, 255, np.uint8)
    alpha[:, : grey8.shape[1] // 2] = 0
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "half.png")
    Image.fromarray(np.dstack([grey8, alpha]), "LA").save(tmp_path / "half_la.png")
    for name in ("half.png", "half_la.png"):
        out = read_image(tmp_path / name)
        assert out[:, : grey8.shape[1] // 2].max() == 0.0, name
        np.testing.assert_allclose(out[:, grey8.shape[1] // 2:], grey8[:, grey8.shape[1] // 2:] / 255.0,
                                   atol=1 / 255)


def test_real_rgba_file_if_present(shared_data):
    rgba = [p for p in sorted((shared_data / "nih_cxr14_fullres").rglob("*.png")) if Image.open(p).mode == "RGBA"]
    if not rgba:
        pytest.skip("this copy of nih_cxr14_fullres has no RGBA file")
    out = read_image(rgba[0])
    assert out.ndim == 2 and out.shape == (1024, 1024) and out.max() > 0.5


# ----------------------------------------------------------------------------------------------- DICOM
def test_dicom_12_and_16_bit_match_the_8_bit_source(tmp_path, grey8):
    # clip the range so that a per-image min-max stretch would give different values than bit-depth scaling
    v = np.clip(grey8, 20, 200).astype(np.float64)
    d12 = write_dicom(tmp_path / "a12.dcm", np.round(v * 4095 / 255), 12)
    d16 = write_dicom(tmp_path / "a16.dcm", np.round(v * 65535 / 255), 16)
    np.testing.assert_allclose(read_image(d12), v / 255, atol=0.5 / 4095 + 1e-6)
    np.testing.assert_allclose(read_image(d16), v / 255, atol=1e-5)
    # the DICOM magic is enough: no suffix needed
    no_suffix = tmp_path / "IM0001"
    no_suffix.write_bytes(d12.read_bytes())
    np.testing.assert_array_equal(read_image(no_suffix), read_image(d12))


def test_dicom_signed_pixels(tmp_path, grey8):
    v = np.clip(grey8, 20, 200).astype(np.float64)
    signed = write_dicom(tmp_path / "s.dcm", np.round(v * 4095 / 255) - 2048, 12, signed=True)
    np.testing.assert_allclose(read_image(signed), v / 255, atol=0.5 / 4095 + 1e-6)


def test_dicom_claiming_huge_size_is_refused_before_decoding(tmp_path):
    path = write_dicom(tmp_path / "bomb.dcm", np.zeros((16, 16)), 12, shape=(60000, 60000))
    with pytest.raises(ImageReadError, match="too large"):
        read_image(path)


def test_file_too_large_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.png"
    with open(path, "wb") as fh:
        fh.truncate(300 * 1024 * 1024)  # sparse: 300 MB by size, nothing on disk
    with pytest.raises(ImageReadError, match="file too large"):
        read_image(path)


def test_dicom_monochrome1_is_inverted(tmp_path, grey8):
    p2 = np.round(grey8.astype(np.float64) * 4095 / 255)
    mono2 = read_image(write_dicom(tmp_path / "m2.dcm", p2, 12, "MONOCHROME2"))
    mono1 = read_image(write_dicom(tmp_path / "m1.dcm", 4095 - p2, 12, "MONOCHROME1"))
    np.testing.assert_allclose(mono1, mono2, atol=1e-6)
    np.testing.assert_allclose(mono2, grey8 / 255.0, atol=0.5 / 4095 + 1e-6)


def test_dicom_rescale_slope_intercept_applied(tmp_path, grey8):
    stored = np.round(grey8.astype(np.float64) * 4095 / 255)
    plain = read_image(write_dicom(tmp_path / "plain.dcm", stored, 12))
    # a linear modality LUT maps stored values and the stored range alike: same picture
    rescaled = read_image(write_dicom(tmp_path / "resc.dcm", stored, 12, slope=2.0, intercept=-1024.0))
    np.testing.assert_allclose(rescaled, plain, atol=1e-5)
    # a negative slope flips the picture
    flipped = read_image(write_dicom(tmp_path / "neg.dcm", stored, 12, slope=-1.0, intercept=4095.0))
    np.testing.assert_allclose(flipped, 1.0 - plain, atol=1e-5)


def test_dicom_window_center_width_applied(tmp_path, grey8):
    stored = np.round(grey8.astype(np.float64) * 4095 / 255)

    def expected(c, w):  # DICOM PS3.3 C.11.2.1.2 linear window, output scaled to [0, 1]
        return np.clip((stored - (c - 0.5)) / (w - 1) + 0.5, 0, 1)

    narrow = read_image(write_dicom(tmp_path / "narrow.dcm", stored, 12, window=(2000, 1000)))
    np.testing.assert_allclose(narrow, expected(2000, 1000), atol=1e-4)
    assert (narrow[stored <= 1499] == 0).all() and (narrow[stored >= 2500] == 1).all()  # clipped
    # a window wider than the data lowers contrast: it must not be stretched back to full range
    wide = read_image(write_dicom(tmp_path / "wide.dcm", stored, 12, window=(2048, 8192)))
    np.testing.assert_allclose(wide, expected(2048, 8192), atol=1e-4)
    assert wide.max() < 0.8 and wide.min() > 0.2
    # windowing and MONOCHROME1 together: the window applies to stored values, then the picture inverts
    inv = read_image(write_dicom(tmp_path / "inv.dcm", stored, 12, "MONOCHROME1", window=(2000, 1000)))
    np.testing.assert_allclose(inv, 1.0 - expected(2000, 1000), atol=1e-4)


# -------------------------------------------------------------------------------------------- bad input
def _bomb_png(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width x height`` pixels (IHDR patched, CRC recomputed)."""
    import struct
    import zlib
    buf = io.BytesIO()
    Image.new("L", (16, 16), 0).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4: ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17: ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr: ihdr + 17])))
    return bytes(data)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the garbage it is fed
@pytest.mark.parametrize("case, reason", [
    ("empty", "empty file"), ("text", "not a readable image"), ("truncated", "not a readable image"),
    ("bomb", "too large"), ("bomb_huge", "too large"), ("missing", "not found"), ("dir", "directory"),
    ("bad_dicom", "DICOM"),
])
def test_bad_files_raise_image_read_error_with_reason(tmp_path, shared_data, case, reason):
    good = sorted((shared_data / "nih_cxr14_talo" / "No_findings").glob("*.png"))[0].read_bytes()
    path = tmp_path / f"{case}.png"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("patient notes, not an image\n" * 20)
    elif case == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif case == "bomb":
        path.write_bytes(_bomb_png(9000, 9000))  # 81 MP: above cxrad's limit, below Pillow's own
    elif case == "bomb_huge":
        path.write_bytes(_bomb_png(60000, 60000))
    elif case == "dir":
        path.mkdir()
    elif case == "bad_dicom":
        path = tmp_path / "bad.dcm"
        path.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage" * 10)
    with pytest.raises(ImageReadError, match=reason) as info:
        read_image(path)
    assert "\n" not in str(info.value)


def test_decompression_bomb_made_by_pil_is_refused_without_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (12000, 12000), 0).save(path)  # 144 MP, tiny on disk
    assert path.stat().st_size < 1_000_000
    with pytest.raises(ImageReadError, match="too large"):
        read_image(path)


# --------------------------------------------------------------------------------------------- resizing
def test_stretch_and_pad_resizing(shared_data):
    path = sorted((shared_data / "covid_hannover" / "png").glob("*.png"))[0]
    grey = read_image(path)
    h, w = grey.shape
    assert h != w  # a non-square real image
    stretched = load_for_model(path, Preprocessing(64, "stretch"))
    assert stretched.shape == (64, 64) and stretched.dtype == np.uint8
    padded = load_for_model(path, Preprocessing(64, "pad"))
    assert padded.shape == (64, 64)
    # aspect kept: the long side fills 64 px, the short side is centred between black bands
    short = round(min(h, w) * 64 / max(h, w))
    off = (64 - short) // 2
    content = padded[off: off + short, :] if w > h else padded[:, off: off + short]
    bands = np.r_[padded[:off].ravel(), padded[off + short:].ravel()] if w > h else \
        np.r_[padded[:, :off].ravel(), padded[:, off + short:].ravel()]
    assert (bands == 0).all() and len(bands) > 0
    ref = Image.fromarray(np.clip(grey * 255 + 0.5, 0, 255).astype(np.uint8)).resize(
        (64, short) if w > h else (short, 64), Image.BILINEAR, reducing_gap=3.0)
    np.testing.assert_array_equal(content, np.asarray(ref))
    # stretching a square picture is the same as padding it
    square = load_for_model(sorted((shared_data / "kermany224" / "test" / "NORMAL").glob("*.jpeg"))[0].read_bytes(),
                            Preprocessing(32, "pad"), ".jpeg")
    assert square.shape == (32, 32) and square.min() < square.max()
    np.testing.assert_array_equal(resize(np.ones((40, 40), np.float32), Preprocessing(16)), 255)


def test_preprocessing_validates():
    with pytest.raises(ValueError, match="resize"):
        Preprocessing(64, "crop")
    with pytest.raises(ValueError, match="size"):
        Preprocessing(4)
    assert Preprocessing(64, "pad").to_dict() == {"size": 64, "resize": "pad"}


def test_decode_image_from_bytes_and_tiny_images(tmp_path):
    buf = io.BytesIO()
    Image.new("L", (4, 4), 128).save(buf, "PNG")
    with pytest.raises(ImageReadError, match="too small"):
        decode_image(buf.getvalue())
    with pytest.raises(ImageReadError, match="empty"):
        decode_image(b"")


def test_error_messages_do_not_name_the_in_memory_buffer():
    with pytest.raises(ImageReadError) as err:
        decode_image(b"this is not an image at all", ".png")
    assert "not a readable image" in str(err.value) and "BytesIO" not in str(err.value)
