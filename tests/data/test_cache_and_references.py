"""Issue 21: the preprocessing cache can be neither poisoned (an entry always holds the pixels of the bytes its
name hashes) nor hung (a FIFO planted at an entry's name), and a real file's name is never taken for an npz
reference (nor can an npz inflate past its bound). Real radiographs throughout."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import zipfile

import numpy as np
import pandas as pd
import pytest

from cxrad.data import load_images, prep_key
from cxrad.imaging import Preprocessing, read_image, resize
from hostile_files import finishes

PREP = Preprocessing(32)


def own_pixels(path) -> np.ndarray:
    return resize(read_image(path), PREP)


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_a_file_replaced_after_hashing_cannot_poison_the_cache(sample_test_files, tmp_path):
    """The manifest's hash says A, but the file now holds B (replaced between deduplicate's hashing and the
    decode): the cache must never file B's pixels under A's hash, so an untouched copy of A still gets A's."""
    a, b = sample_test_files[0], sample_test_files[-1]
    victim, copy_of_a = tmp_path / "victim.jpeg", tmp_path / "copy_of_a.jpeg"
    shutil.copyfile(a, victim)
    shutil.copyfile(a, copy_of_a)
    frame = pd.DataFrame({"path": [str(victim)], "label": [0], "sha256": [sha(victim)]})
    shutil.copyfile(b, victim)  # swapped after hashing
    poisoned = load_images(frame, PREP, cache_dir=tmp_path / "cache", cache_set=False)
    np.testing.assert_array_equal(poisoned.images[0], own_pixels(victim))  # scored as what it now is
    assert poisoned.frame["sha256"].iloc[0] == sha(victim)  # and recorded under the hash of what was decoded
    again = load_images([str(copy_of_a)], PREP, cache_dir=tmp_path / "cache", cache_set=False)
    np.testing.assert_array_equal(again.images[0], own_pixels(copy_of_a))


def test_a_fifo_planted_in_the_cache_neither_hangs_nor_wins(sample_test_files, tmp_path):
    path = sample_test_files[3]
    entry = tmp_path / "cache" / prep_key(PREP) / sha(path)[:2] / f"{sha(path)}.npy"
    entry.parent.mkdir(parents=True)
    os.mkfifo(entry)
    finished, result = finishes(load_images, [path], PREP, tmp_path / "cache", 1, False, False, timeout=20)
    assert finished, "a FIFO in the cache hung the reader"
    np.testing.assert_array_equal(result.images[0], own_pixels(path))
    assert entry.is_file() and not entry.is_symlink()  # replaced by a real entry


def test_a_symlink_to_dev_zero_in_the_cache_is_ignored(sample_test_files, tmp_path):
    path = sample_test_files[4]
    entry = tmp_path / "cache" / prep_key(PREP) / sha(path)[:2] / f"{sha(path)}.npy"
    entry.parent.mkdir(parents=True)
    entry.symlink_to("/dev/zero")
    finished, result = finishes(load_images, [path], PREP, tmp_path / "cache", 1, False, False, timeout=20)
    assert finished and not isinstance(result, BaseException), result
    np.testing.assert_array_equal(result.images[0], own_pixels(path))


def _npz(path, images: np.ndarray) -> None:
    np.savez_compressed(path, train_images=images, train_labels=np.zeros((len(images), 1), np.uint8))


def test_a_real_file_named_like_an_npz_reference_is_read_as_itself(shared_data, sample_test_files, tmp_path):
    dicom = shared_data / "dicom_chest" / "cr_chest_mono1_10bit.dcm"
    decoy = np.full((2, 28, 28), 200, np.uint8)
    _npz(tmp_path / "x.npz", decoy)
    os.replace(tmp_path / "x.npz", tmp_path / "x")  # an npz named x, beside a DICOM named x::train[0]
    shutil.copyfile(dicom, tmp_path / "x::train[0]")
    shutil.copyfile(sample_test_files[5], tmp_path / "scan::1.png")  # once refused as a bad npz reference
    files = [str(tmp_path / "x::train[0]"), str(tmp_path / "scan::1.png")]
    got = load_images(files, PREP)
    assert got.errors.empty, got.errors
    for path, image in zip(files, got.images):
        np.testing.assert_array_equal(image, own_pixels(path))
    # and a genuine reference (no such file) still names the array
    ref = load_images([str(tmp_path / "x") + "::train[1]"], PREP)
    assert ref.errors.empty and (ref.images[0] == 200).all()


def test_an_npz_that_would_inflate_past_its_bound_is_refused_from_its_header(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (100_000, 224, 224)})  # 5 GB declared
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w") as zf:
        zf.writestr("train_images.npy", header.getvalue() + bytes(1024))
        buf = io.BytesIO()
        np.save(buf, np.zeros((100_000, 1), np.uint8))
        zf.writestr("train_labels.npy", buf.getvalue())
    got = load_images([str(tmp_path / "bomb.npz") + "::train[0]"], PREP)
    assert len(got) == 0 and "would inflate" in got.errors["error"].iloc[0]
