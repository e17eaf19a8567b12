"""The uint8 decode path (no float copy of a full-size image) gives the model the same pixels as the float
path, for every kind of raster the readers meet."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cxrad.data import load_images
from cxrad.imaging import Preprocessing, decode_image, resize


def test_uint8_round_trip_is_exact_for_every_grey_level():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for prep in (Preprocessing(16), Preprocessing(8, "pad"), Preprocessing(40)):
        np.testing.assert_array_equal(resize(levels, prep), resize(levels.astype(np.float32) / 255.0, prep))


def _real_files(shared_data):
    return [sorted((shared_data / "nih_cxr14_fullres").rglob("*.png"))[0],
            sorted((shared_data / "kermany224" / "test" / "NORMAL").glob("*.jpeg"))[0],  # RGB JPEG
            sorted((shared_data / "covid_hannover" / "png").glob("*.png"))[0]]


def _synthetic_files(tmp_path, grey):
    rgba = np.dstack([np.repeat(grey[..., None], 3, 2), np.where(np.arange(grey.shape[1]) < 20, 0, 255)
                      .astype(np.uint8)[None].repeat(grey.shape[0], 0)])
    made = {"rgba.png": Image.fromarray(rgba, "RGBA"), "la.png": Image.fromarray(grey).convert("LA"),
            "palette.png": Image.fromarray(grey).convert("P"), "bilevel.png": Image.fromarray(grey).convert("1"),
            "sixteen.png": Image.fromarray(grey.astype(np.uint16) * 257), "grey.bmp": Image.fromarray(grey)}
    for name, img in made.items():
        img.save(tmp_path / name)
    return [tmp_path / name for name in made]


@pytest.mark.parametrize("prep", [Preprocessing(64), Preprocessing(128, "pad")])
def test_fast_path_equals_float_path_on_real_and_synthetic_files(shared_data, tmp_path, prep):
    grey = np.asarray(Image.open(_real_files(shared_data)[0]).convert("L").resize((96, 80)))
    for path in _real_files(shared_data) + _synthetic_files(tmp_path, grey):
        data = path.read_bytes()
        fast, slow = decode_image(data, path.suffix, keep_uint8=True), decode_image(data, path.suffix)
        assert slow.dtype == np.float32
        if Image.open(io.BytesIO(data)).mode.startswith("I"):
            assert fast.dtype == np.float32  # 16-bit data keeps its precision
        else:
            assert fast.dtype == np.uint8
        np.testing.assert_array_equal(resize(fast, prep), resize(slow, prep), err_msg=path.name)


def test_load_images_matches_the_float_pipeline(shared_data):
    files = _real_files(shared_data)
    prep = Preprocessing(64)
    got = load_images([str(f) for f in files], prep).images
    expected = np.stack([resize(decode_image(f.read_bytes(), f.suffix), prep) for f in files])
    np.testing.assert_array_equal(got, expected)
