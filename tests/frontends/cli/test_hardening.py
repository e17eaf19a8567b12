"""``cxrad score`` on things that are not image files (issue #13): devices, FIFOs and symlinks to them give an
error row with the reason, never a hang (each run is a subprocess with a timeout)."""
from __future__ import annotations

import os

import pandas as pd
import pytest

from tiny_models import run_cxrad, tiny_dae


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_dae(tmp_path_factory)


def test_score_dev_zero_fifo_and_symlinks_gives_error_rows(model, tmp_path, shared_data):
    good = sorted((shared_data / "kermany224" / "test" / "NORMAL").glob("*.jpeg"))[0]
    os.mkfifo(tmp_path / "x.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    named = ["/dev/zero", tmp_path / "x.png", tmp_path / "zero.png", good]
    done = run_cxrad(["score", *named, "--model", model, "--out", tmp_path / "out", "--device", "cpu", "--quiet",
                      "--cache-dir", tmp_path / "cache"], timeout=180)
    assert done.returncode == 3, done.stderr[-3000:]  # some files failed; not a crash (1) or a hang
    assert "Traceback" not in done.stderr
    table = pd.read_csv(tmp_path / "out" / "scores.csv", keep_default_na=False)
    reasons = dict(zip(table["path"], table["error"]))
    assert set(reasons) == {str(p) for p in named}
    for p in named[:3]:
        assert "not a regular file" in reasons[str(p)], reasons
    assert reasons[str(good)] == ""


def test_scanning_a_folder_with_a_fifo_does_not_hang(model, tmp_path, shared_data):
    scan = tmp_path / "scan"
    scan.mkdir()
    os.mkfifo(scan / "IM0001")  # no extension: only a DICOM preamble would make it an image
    os.mkfifo(scan / "pipe.dcm")
    (scan / "loop").symlink_to(scan)  # a symlink cycle
    good = sorted((shared_data / "kermany224" / "test" / "NORMAL").glob("*.jpeg"))[0]
    (scan / good.name).write_bytes(good.read_bytes())
    done = run_cxrad(["score", scan, "--model", model, "--out", tmp_path / "out", "--device", "cpu", "--quiet",
                      "--cache-dir", tmp_path / "cache"], timeout=180)
    assert done.returncode == 3 and "Traceback" not in done.stderr, done.stderr[-3000:]
    table = pd.read_csv(tmp_path / "out" / "scores.csv", keep_default_na=False)
    reasons = dict(zip(table["path"], table["error"]))
    assert reasons[str(scan / good.name)] == "" and "not a regular file" in reasons[str(scan / "pipe.dcm")]
    ignored = pd.read_csv(tmp_path / "out" / "ignored.csv")
    assert str(scan / "IM0001") in set(ignored["path"])
