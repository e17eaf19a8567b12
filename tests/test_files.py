"""cxrad.files: bounded reads of regular files only (no hang on devices and FIFOs, even swapped in after the
check), cleaning up killed writers' temporaries without racing live ones, and the bundle folder lock."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from cxrad import files
from cxrad.files import UnsafeFileError, atomic_write_bytes, folder_lock, read_regular_file, remove_stale_temporaries
from hostile_files import finishes, special_file



@pytest.mark.parametrize("kind", ["dev_zero", "fifo", "symlink_to_dev_zero", "dir", "missing", "big"])
def test_read_regular_file_refuses_what_is_not_a_small_regular_file(tmp_path, kind):
    path = tmp_path / "f.png"
    path = special_file(path, kind) or path
    if kind == "dir":
        path.mkdir()
    elif kind == "big":
        path.write_bytes(b"x" * 101)
    finished, result = finishes(read_regular_file, path, 100)
    assert finished, "read_regular_file hung"
    assert isinstance(result, UnsafeFileError)
    expected = {"dev_zero": "not a regular file", "fifo": "not a regular file", "symlink_to_dev_zero":
                "not a regular file", "dir": "directory", "missing": "not found", "big": "file too large"}[kind]
    assert expected in str(result)


def test_a_fifo_swapped_in_after_the_check_does_not_block(tmp_path, monkeypatch):
    """The path check and the open are two steps; a FIFO put in between is opened non-blocking and refused on
    the descriptor (a plain open would wait for a writer forever)."""
    fifo = tmp_path / "swapped.png"
    os.mkfifo(fifo)
    monkeypatch.setattr(files, "regular_file_size", lambda path, max_bytes: 0)  # the check saw a file
    finished, result = finishes(read_regular_file, fifo, 100, timeout=5)
    if not finished:
        with open(fifo, "wb"):
            pass
    assert finished, "opening a FIFO blocked"
    assert isinstance(result, UnsafeFileError) and "not a regular file" in str(result)


def test_a_regular_file_is_read_whole(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"abc" * 1000)
    assert read_regular_file(path, 3000) == b"abc" * 1000
    with files.open_regular_file(path, 3000) as fh:
        assert fh.read(3) == b"abc"


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_stale_temporaries_by_age_and_depth(tmp_path):
    (tmp_path / "ab").mkdir()
    old_top, old_deep = tmp_path / ".x.npy.1.tmp", tmp_path / "ab" / ".y.npy.2.tmp"
    fresh, keep = tmp_path / "ab" / ".z.npy.3.tmp", tmp_path / "ab" / "z.npy"
    for p in (old_top, old_deep, fresh, keep):
        p.write_bytes(b"partial")
    _age(old_top, 7200)
    _age(old_deep, 7200)
    _age(keep, 7200)
    link = tmp_path / ".link.tmp"
    link.symlink_to(keep)  # not a file a writer made: left alone
    _age(link, 7200)
    assert remove_stale_temporaries(tmp_path, older_than_s=3600) == 1  # top level only
    assert not old_top.exists() and old_deep.exists()
    assert remove_stale_temporaries(tmp_path, older_than_s=3600, recursive=True) == 1
    assert not old_deep.exists() and fresh.exists() and keep.exists() and link.is_symlink()
    assert remove_stale_temporaries(tmp_path, recursive=True) == 1 and not fresh.exists()  # age 0: all


def test_folder_lock_makes_a_second_writer_wait(tmp_path):
    events = []
    inside = threading.Event()

    def first():
        with folder_lock(tmp_path):
            events.append("first in")
            inside.set()
            time.sleep(0.4)
            events.append("first out")

    def second():
        inside.wait(5)
        with folder_lock(tmp_path):
            events.append("second in")
    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert events == ["first in", "first out", "second in"]
    assert os.listdir(tmp_path) == []  # no lock file left behind


def test_atomic_write_leaves_no_temporary_on_error(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with files.atomic_open(target) as fh:
            fh.write(b"new, half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.json"]
