"""Bundles against hostile files and concurrent writers (issue #13): model.json or weights that are devices,
FIFOs or symlinks to them are refused without reading; two writers on one folder never leave a mix."""
from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from cxrad.bundles import format as bundle
from cxrad.bundles import read_bundle, read_meta, write_bundle
from cxrad.errors import BundleError
from hostile_files import finishes



def _write(path, value: float):
    return write_bundle(path, "dae", {"note": value}, {"model.w": torch.full((64,), value)})


@pytest.mark.parametrize("what, kind", [("model.json", "fifo"), ("model.json", "dev_zero"),
                                        ("weights", "fifo"), ("weights", "dev_zero")])
def test_special_files_in_a_bundle_are_refused_without_reading(tmp_path, what, kind):
    folder = _write(tmp_path / "b", 1.0)
    target = folder / "model.json" if what == "model.json" else next(folder.glob("weights-*.safetensors"))
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/zero")
    finished, result = finishes(read_bundle, folder)
    if not finished:
        with open(target, "wb"):
            pass
    assert finished, "reading the bundle hung"
    assert isinstance(result, BundleError) and "not a regular file" in str(result)


def test_a_model_json_path_to_dev_zero_is_refused(tmp_path):
    (tmp_path / "link.json").symlink_to("/dev/zero")
    finished, result = finishes(read_meta, tmp_path / "link.json")
    assert finished and isinstance(result, BundleError) and "not a regular file" in str(result)


def test_two_writers_on_one_folder_never_leave_a_mix(tmp_path, monkeypatch):
    """Writer A pauses after its commit point (model.json) and before removing older weights; writer B then
    writes. Without the folder lock, A's clean-up deleted B's committed weights (or B deleted A's); with it,
    B waits and the folder ends as B's whole bundle."""
    folder = _write(tmp_path / "b", 0.0)
    paused, go = threading.Event(), threading.Event()
    real = bundle.atomic_write_text

    def slow_commit(path, text):
        real(path, text)
        if threading.current_thread().name == "A":
            paused.set()
            go.wait(10)
    monkeypatch.setattr(bundle, "atomic_write_text", slow_commit)
    a = threading.Thread(target=_write, args=(folder, 1.0), name="A")
    b = threading.Thread(target=_write, args=(folder, 2.0), name="B")
    a.start()
    assert paused.wait(10)
    b.start()
    time.sleep(0.5)  # long enough for B to finish, were it not made to wait
    go.set()
    a.join(10)
    b.join(10)
    doc, tensors = read_bundle(folder)  # checksum verified
    assert doc["note"] == 2.0 and float(tensors["model.w"][0]) == 2.0
    assert [p.name for p in folder.glob("weights-*")] == [doc["weights"]["file"]]


def test_a_killed_writers_temporaries_are_removed_by_the_next_write(tmp_path):
    folder = _write(tmp_path / "b", 1.0)
    leftovers = [folder / ".model.json.x1.tmp", folder / ".weights-0123456789abcdef.safetensors.x2.tmp"]
    for p in leftovers:
        p.write_bytes(b"half written")
    _write(folder, 2.0)
    assert not any(p.exists() for p in leftovers)
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith("weights-")) == ["model.json"]
