"""Issue 21: DICOM header values that used to ruin the image quietly, and were scored anyway, are now either
decoded correctly or refused with a one-line reason. Each DICOM is written by pydicom from a real radiograph."""
from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest

from cxrad.errors import ImageReadError
from cxrad.imaging import decode_image
from fuzz import generate as G

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def stored(shared_data) -> np.ndarray:
    """12-bit stored values of a real radiograph."""
    ctx = G.Context(shared_data, seed=1, per_source=2)
    return G.twelve_bit(ctx.grey(128))


def grey(data: bytes) -> np.ndarray:
    return decode_image(data, ".dcm")


def test_rescale_intercept_without_slope_is_applied_with_slope_one(stored):
    both = grey(G.dicom(stored, RescaleSlope="1", RescaleIntercept="-1024"))
    alone = grey(G.dicom(stored, RescaleIntercept="-1024"))  # pydicom skips the rescale; the range did not
    np.testing.assert_allclose(alone, both, atol=1e-7)
    slope_alone = grey(G.dicom(stored, RescaleSlope="2"))
    np.testing.assert_allclose(slope_alone, grey(G.dicom(stored, RescaleSlope="2", RescaleIntercept="0")), atol=1e-7)


@pytest.mark.parametrize("attrs", [{"RescaleSlope": "1", "RescaleIntercept": "1e11"},
                                   {"RescaleSlope": "1e300", "RescaleIntercept": "0"},
                                   {"RescaleSlope": "1e-300", "RescaleIntercept": "-5e-297"}])
def test_extreme_but_finite_rescale_values_decode_the_same_image(stored, attrs):
    """The image is the same in any units: float32 left a two-level or blank image; float64 keeps it."""
    plain = grey(G.dicom(stored))
    np.testing.assert_allclose(grey(G.dicom(stored, **attrs)), plain, atol=1e-6)
    assert plain.std() > 0.05


def test_a_window_far_outside_the_pixel_values_falls_back_to_the_modality_range(stored):
    plain = grey(G.dicom(stored))
    for center in ("1e30", "-1e30"):
        got = grey(G.dicom(stored, WindowCenter=center, WindowWidth="400"))
        np.testing.assert_allclose(got, plain, atol=1e-6)  # not a blank image that gets scored
    windowed = grey(G.dicom(stored, WindowCenter="2048", WindowWidth="2000"))
    assert not np.allclose(windowed, plain, atol=1e-3)  # an ordinary window is still applied


def test_a_rescale_that_overflows_every_number_is_refused(stored):
    with pytest.raises(ImageReadError, match="beyond any number"):
        grey(G.dicom(stored, RescaleSlope="1e306", RescaleIntercept="0"))


def test_high_bit_other_than_bits_stored_minus_one_is_refused(stored):
    data = G.dicom(stored)  # HighBit 11 for 12 stored bits
    bad = G.patch(data, 0x00280102, b"US", struct.pack("<H", 11), struct.pack("<H", 15))
    with pytest.raises(ImageReadError, match="HighBit 15"):
        grey(bad)


def test_more_pixel_data_than_the_header_declares_is_refused(stored):
    data = G.dicom(stored)  # 128 x 128
    half = G.patch(data, 0x00280010, b"US", struct.pack("<H", 128), struct.pack("<H", 64))
    with pytest.raises(ImageReadError, match="more than its 1 frame"):
        grey(half)
    padded = G.dicom((stored[:127, :127] // 16).astype(np.uint8), bits=8, stored=8)  # odd length, padded to even
    assert grey(padded).shape == (127, 127)


def _lut_item(bits: int, entries: int = 4096, first: int = 0):
    import pydicom
    item = pydicom.Dataset()
    item.add_new(0x00283002, "US", [entries, first, bits])  # LUTDescriptor
    item.add_new(0x00283006, "US", [int(v) for v in np.minimum(np.arange(entries), 2 ** bits - 1)])  # identity
    item.ModalityLUTType = "US"
    return item


@pytest.mark.parametrize("bits", [10, 12, 14])
def test_modality_luts_of_any_depth_decode(stored, bits):
    import io

    import pydicom
    ds = pydicom.dcmread(io.BytesIO(G.dicom(stored)))
    ds.ModalityLUTSequence = [_lut_item(bits)]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    got = grey(buf.getvalue())  # pydicom asked numpy for 'uint12' here
    expected = np.minimum(stored, 2 ** bits - 1) / (2 ** bits - 1)
    assert got.shape == stored.shape and np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.999
    assert abs(float(got.max()) - float(expected.max())) < 1e-3  # scaled by the LUT's own depth


def test_a_large_private_element_is_skipped_not_copied(stored):
    """A 64 MB private element before the pixel data: the header parse skips it (pydicom would copy it)."""
    import io

    import pydicom
    ds = pydicom.dcmread(io.BytesIO(G.dicom(stored)))
    ds.add_new(0x00091010, "LO", "CXRAD FUZZ")
    ds.add_new(0x00091011, "OB", bytes(64 * 2**20))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    tracemalloc.start()
    try:
        got = grey(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(got, grey(G.dicom(stored)), atol=1e-7)
    assert peak < 24 * 2**20, f"decoding held {peak / 2**20:.0f} MB for a 64 MB element it never needs"
