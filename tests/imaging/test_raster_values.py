"""Issue 21: raster files that used to be clipped, blanked, mis-scaled, unrotated or over their memory budget.
Each file is made from a real radiograph."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cxrad.errors import ImageReadError
from cxrad.imaging import bounds, decode_image


@pytest.fixture(scope="module")
def radiograph(shared_data) -> np.ndarray:
    path = sorted((shared_data / "nih_cxr14_talo" / "No_findings").glob("*.png"))[1]
    return np.asarray(Image.open(path).convert("L"))


def tiff(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "TIFF") if mode else Image.fromarray(arr).save(buf, "TIFF")
    return buf.getvalue()


def correlation(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, float).ravel(), np.asarray(b, float).ravel())[0, 1])


@pytest.mark.parametrize("make", [lambda g: g.astype(np.int16) * 16 - 2048,        # signed 16-bit, half negative
                                  lambda g: (g.astype(np.int16) - 128).astype(np.int8),  # int8 range
                                  lambda g: g.astype(np.int32) * 1000,              # past 65535
                                  lambda g: g.astype(np.int32) * -50])              # all negative
def test_signed_and_large_integer_tiffs_keep_their_picture(radiograph, make):
    values = make(radiograph)
    got = decode_image(tiff(values.astype(np.int32)), ".tif")
    assert got.std() > 0.1 and got.min() == 0.0 and got.max() == 1.0  # not clipped to a blank or a mask
    assert correlation(got, values) > 0.999


def test_float_tiffs_near_the_float32_limits_decode(radiograph):
    values = (radiograph.astype(np.float64) / 255.0 * 6e38 - 3e38).astype(np.float32)
    got = decode_image(tiff(values, "F"), ".tif")  # once "contains NaN or infinite values"
    assert correlation(got, radiograph) > 0.999


@pytest.mark.parametrize("size", [(100_000, 1), (1, 100_000), (100_000, 30)])
def test_a_strip_too_thin_to_be_an_image_is_refused_clearly(size):
    buf = io.BytesIO()
    Image.new("L", size, 90).save(buf, "PNG")
    with pytest.raises(ImageReadError, match="too small or too thin"):
        decode_image(buf.getvalue(), ".png")


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(radiograph, orientation):
    wide = radiograph[:, : radiograph.shape[1] // 2]  # not square: a rotation shows in the shape
    img = Image.fromarray(wide)
    exif = img.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, exif=exif)
    plain = io.BytesIO()
    img.save(plain, "JPEG", quality=95)
    upright = decode_image(plain.getvalue(), ".jpg")
    want = {3: np.rot90(upright, 2), 6: np.rot90(upright, -1), 8: np.rot90(upright, 1)}[orientation]
    got = decode_image(buf.getvalue(), ".jpg")
    assert got.shape == want.shape and np.abs(got - want).max() < 0.02


def _reserved(monkeypatch, data: bytes) -> list[int]:
    seen = []
    real = bounds.DECODE_BUDGET.reserve

    def spy(nbytes):
        seen.append(int(nbytes))
        return real(nbytes)
    monkeypatch.setattr(bounds.DECODE_BUDGET, "reserve", spy)
    decode_image(data, ".jpg")
    return seen


def test_a_progressive_jpeg_reserves_its_coefficient_buffers(monkeypatch):
    """libjpeg holds every DCT coefficient of a progressive file at full size, even when it scales the output
    down 4-fold: 2 bytes a coefficient, here 8000 x 8000 x 2 = 128 MB that the budget must count."""
    img = Image.radial_gradient("L").resize((8000, 8000))
    for progressive, low, high in ((True, 120 * 2**20, 10**9), (False, 0, 120 * 2**20)):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=80, progressive=progressive)
        (estimate,) = _reserved(monkeypatch, buf.getvalue())
        assert low <= estimate < high, (progressive, estimate / 2**20)
