"""cxrad.data against hostile input (issue #13): hashing and manifests never hang on devices or FIFOs, and a
damaged preprocessing cache is rebuilt whatever its damage; killed writers' temporaries are swept."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrad.data import images as data_mod, splits as splits_mod
from cxrad.data import file_hash, from_csv, load_images
from cxrad.errors import DataError
from cxrad.imaging import Preprocessing
from hostile_files import finishes, special_file

PREP = Preprocessing(32)



@pytest.fixture
def good(shared_data) -> list[Path]:
    return sorted((shared_data / "nih_cxr14_talo" / "No_findings").glob("*.png"))[:4]


# ------------------------------------------------------------------------------------------------ hashing
def test_file_hash_is_chunked_sha256_and_needs_no_file_digest(good, monkeypatch):
    expected = hashlib.sha256(good[0].read_bytes()).hexdigest()
    monkeypatch.delattr(hashlib, "file_digest", raising=False)  # Python 3.10 has none
    monkeypatch.setattr(splits_mod, "HASH_CHUNK", 1000)  # many chunks
    assert file_hash(str(good[0])) == expected


@pytest.mark.parametrize("kind", ["dev_zero", "fifo", "symlink_to_dev_zero", "too_large"])
def test_file_hash_checks_the_file_before_reading(tmp_path, kind):
    path = tmp_path / "x.png"
    path = special_file(path, kind) or path
    if kind == "too_large":
        with open(path, "wb") as fh:
            fh.truncate(300 * 2**20)  # sparse: over MAX_FILE_BYTES, nothing on disk
    finished, digest = finishes(file_hash, str(path), timeout=20)
    if not finished and kind == "fifo":
        with open(path, "wb"):
            pass
    assert finished, "file_hash hung"
    assert digest == ""


def test_manifest_rows_pointing_at_devices_and_fifos_become_error_rows(tmp_path, good):
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    rows = [str(good[0]), "/dev/zero", str(tmp_path / "pipe.png"), str(tmp_path / "zero.png"), str(good[1])]
    pd.DataFrame({"path": rows, "label": "normal"}).to_csv(tmp_path / "m.csv", index=False)
    manifest = from_csv(tmp_path / "m.csv")
    finished, out = finishes(load_images, manifest, PREP, str(tmp_path / "cache"), timeout=20)
    assert finished, "load_images hung"
    assert len(out) == 2 and list(out.frame["path"]) == [str(good[0]), str(good[1])]
    reasons = dict(zip(out.errors["path"], out.errors["error"]))
    assert set(reasons) == set(rows[1:4])
    assert all("not a regular file" in r for r in reasons.values()), reasons


def test_a_manifest_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / "labels.csv")
    finished, result = finishes(from_csv, tmp_path / "labels.csv", timeout=20)
    if not finished:
        with open(tmp_path / "labels.csv", "wb"):
            pass
    assert finished and isinstance(result, DataError) and "not a regular file" in str(result)


# ------------------------------------------------------------------------------------------------- cache
def _refuse_decodes(monkeypatch):
    def refuse(path, content):
        raise AssertionError(f"decoded {path} although its cache entry is intact")
    monkeypatch.setattr(data_mod, "decode_source", refuse)


def _damage(path: Path, how: str) -> None:
    if how == "zero_bytes":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:-7])
    elif how == "garbage":
        path.write_bytes(os.urandom(200))
    elif how == "header_only":
        path.write_bytes(path.read_bytes()[:128])
    elif how == "wrong_shape":
        np.save(path, np.zeros((16, 16), np.uint8))
    elif how == "wrong_dtype":
        np.save(path, np.zeros((32, 32), np.float64))
    elif how == "pickle":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)


DAMAGE = ["zero_bytes", "truncated", "garbage", "header_only", "wrong_shape", "wrong_dtype", "pickle"]


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_image_entry_is_rebuilt(tmp_path, good, how, monkeypatch):
    cache = tmp_path / "cache"
    first = load_images([str(p) for p in good], PREP, cache_dir=cache)
    entries = sorted((cache / "s32-stretch").glob("??/*.npy"))
    assert len(entries) == len(good)
    for f in (cache / "s32-stretch" / "sets").glob("*.npy"):
        f.unlink()  # per-image entries are what is read now
    _damage(entries[1], how)
    again = load_images([str(p) for p in good], PREP, cache_dir=cache)
    assert len(again.errors) == 0
    np.testing.assert_array_equal(np.asarray(again.images), first.images)
    assert np.load(entries[1]).shape == (32, 32)  # rewritten intact
    for f in (cache / "s32-stretch" / "sets").glob("*.npy"):
        f.unlink()
    _refuse_decodes(monkeypatch)  # later runs read the rebuilt entry
    np.testing.assert_array_equal(load_images([str(p) for p in good], PREP, cache_dir=cache).images, first.images)


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_set_file_is_rebuilt(tmp_path, good, how, monkeypatch):
    cache = tmp_path / "cache"
    first = load_images([str(p) for p in good], PREP, cache_dir=cache)
    (set_file,) = (cache / "s32-stretch" / "sets").glob("*.npy")
    if how == "wrong_shape":  # a set of the wrong length, the damage a mix-up of two files would give
        np.save(set_file, np.zeros((len(good) - 1, 32, 32), np.uint8))
    else:
        _damage(set_file, how)
    again = load_images([str(p) for p in good], PREP, cache_dir=cache)
    np.testing.assert_array_equal(np.asarray(again.images), first.images)
    _refuse_decodes(monkeypatch)
    third = load_images([str(p) for p in good], PREP, cache_dir=cache)
    assert isinstance(third.images, np.memmap)  # the rebuilt set file is used again
    np.testing.assert_array_equal(np.asarray(third.images), first.images)


def test_stale_cache_temporaries_are_swept_once_and_live_ones_kept(tmp_path, good):
    cache = tmp_path / "cache"
    load_images([str(good[0])], PREP, cache_dir=cache)
    folder = next((cache / "s32-stretch").glob("??"))
    stale, live = folder / ".abc.npy.kill.tmp", cache / "s32-stretch" / "sets" / ".def.npy.live.tmp"
    live.parent.mkdir(exist_ok=True)
    for p in (stale, live):
        p.write_bytes(b"half")
    t = time.time() - 2 * data_mod.STALE_CACHE_TMP_S
    os.utime(stale, (t, t))
    data_mod._sweep_cache.cache_clear()  # a new process, within the hour: the folder was swept recently
    load_images([str(p) for p in good[:2]], PREP, cache_dir=cache)
    assert stale.exists()
    stamp = cache / "s32-stretch" / ".swept"
    os.utime(stamp, (t, t))
    data_mod._sweep_cache.cache_clear()  # a new process, hours later
    load_images([str(p) for p in good[:2]], PREP, cache_dir=cache)
    assert not stale.exists()  # a killed writer's, an hour old
    assert live.exists()  # may be another process writing right now
