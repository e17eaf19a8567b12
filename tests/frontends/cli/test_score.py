"""``cxrad score``: folders (extension-less DICOM included), bad files, streaming output, resume, verdicts."""
from __future__ import annotations

import io
import json
import shutil
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrad.frontends.cli.common import EXIT_OK, EXIT_SOME_FAILED


def _bomb_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (16, 16)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    i = data.index(b"IHDR")
    data[i + 4: i + 12] = struct.pack(">II", 50000, 50000)  # claims 2.5 gigapixels
    data[i + 17: i + 21] = struct.pack(">I", zlib.crc32(bytes(data[i: i + 17])))
    return bytes(data)


def _dicom(path, png):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
    arr = np.asarray(Image.open(png).convert("L"))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = arr.tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def test_score_folder_with_bad_files_and_files_that_are_not_images(cli, trained, tmp_path, shared_data):
    folder = tmp_path / "in"
    (folder / "pacs").mkdir(parents=True)
    good = sorted((shared_data / "nih_cxr14_talo" / "No_findings").glob("*.png"))[0]
    shutil.copy(good, folder / "good.png")
    _dicom(folder / "pacs" / "IM000001", good)  # a PACS export: no extension, DICM preamble
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.png").write_bytes(good.read_bytes()[:3000])
    (folder / "text.png").write_text("this is a radiology report, not a picture")
    (folder / "bomb.png").write_bytes(_bomb_png())
    (folder / "readme.txt").write_text("not an image: listed as ignored")
    code, out, err = cli("score", folder, "--model", trained, "--out", tmp_path / "res", "--device", "cpu")
    assert code == EXIT_SOME_FAILED
    assert "4 of 6 file(s) could not be scored" in err
    assert f"ignored {folder / 'readme.txt'}: not an image" in err
    table = pd.read_csv(tmp_path / "res" / "scores.csv", keep_default_na=False).set_index("path")
    assert len(table) == 6
    reasons = {k.split("/")[-1]: v for k, v in table["error"].items()}
    assert reasons["good.png"] == "" and reasons["IM000001"] == ""
    assert "empty" in reasons["empty.png"]
    assert "not a readable image" in reasons["truncated.png"] and "not a readable image" in reasons["text.png"]
    assert "too large" in reasons["bomb.png"]
    assert np.isfinite(float(table.loc[str(folder / "good.png"), "score"]))
    # an error row has no verdict: empty in the CSV, null in JSON Lines
    assert table.loc[str(folder / "empty.png"), "anomalous"] == "" and table.loc[str(folder / "empty.png"), "score"] == ""
    records = [json.loads(line) for line in (tmp_path / "res" / "scores.jsonl").read_text().splitlines()]
    assert len(records) == 6 and {"score", "recon_error", "log_density", "percentile", "anomalous", "error"} <= set(
        records[0])
    bad = next(r for r in records if r["path"].endswith("empty.png"))
    assert bad["anomalous"] is None and bad["score"] is None
    ignored = pd.read_csv(tmp_path / "res" / "ignored.csv")
    assert list(ignored["path"]) == [str(folder / "readme.txt")]


def lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_score_good_files_json_and_operating_points(cli, trained, shared_data):
    files = sorted((shared_data / "nih_cxr14_talo" / "No_findings").glob("*.png"))[:3]
    code, out, err = cli("score", *files, "--model", trained, "--json", "--device", "cpu", "--quiet")
    assert code == EXIT_OK, err
    rows = lines(out)
    assert [r["path"] for r in rows] == [str(f) for f in files] and all(r["error"] == "" for r in rows)
    assert "label" not in rows[0]  # scoring plain files: no label column
    code, out, _ = cli("score", *files, "--model", trained, "--json", "--threshold-value=-1e9", "--quiet")
    assert code == EXIT_OK and all(r["anomalous"] for r in lines(out))
    code, out, _ = cli("score", *files, "--model", trained, "--json", "--target-specificity", "0.5", "--quiet")
    assert code == EXIT_OK
    code, out, _ = cli("score", files[0], files[0].parent / "nope.png", "--model", trained, "--json", "--quiet")
    assert code == EXIT_SOME_FAILED and "not found" in lines(out)[1]["error"]


def test_progress_unless_quiet(cli, trained, shared_data):
    files = sorted((shared_data / "nih_cxr14_talo" / "No_findings").glob("*.png"))[:2]
    _, _, err = cli("score", *files, "--model", trained)
    assert "scoring" in err and "2/2" in err
    _, _, err = cli("score", *files, "--model", trained, "--quiet")
    assert "scoring" not in err


def test_resume_skips_what_a_killed_run_scored(cli, trained, shared_data, tmp_path):
    files = sorted((shared_data / "nih_cxr14_talo" / "No_findings").glob("*.png"))[:6]
    out = tmp_path / "res"
    cli("score", *files[:4], "--model", trained, "--out", out, "--quiet", "--batch-size", "2")
    text = (out / "scores.csv").read_text()
    (out / "scores.csv").write_text(text[:-15])  # a kill mid-row: the partial row is dropped and rescored
    code, stdout, _ = cli("score", *files, "--model", trained, "--out", out, "--quiet", "--resume", "--json",
                          "--batch-size", "2")
    assert code == EXIT_OK
    table = pd.read_csv(out / "scores.csv")
    assert sorted(table["path"]) == sorted(map(str, files)) and table["path"].is_unique
    jsonl = lines((out / "scores.jsonl").read_text())
    assert [r["path"] for r in jsonl] == list(table["path"])  # both files hold the same rows after the resume
    cli("score", *files, "--model", trained, "--out", tmp_path / "all", "--quiet")
    fresh = pd.read_csv(tmp_path / "all" / "scores.csv")
    merged = table.set_index("path").loc[fresh["path"]]
    np.testing.assert_allclose(merged["score"], fresh["score"], rtol=1e-6)


def test_without_out_nothing_is_written_and_the_table_is_cut(cli, trained, shared_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = sorted((shared_data / "nih_cxr14_talo" / "No_findings").glob("*.png"))[:3]
    from cxrad.serving.streaming import score_to_files
    from cxrad.detectors import load_detector
    summary = score_to_files(load_detector(trained), [str(f) for f in files], None, head=2)
    assert summary.rows == 3 and summary.errors == 0 and len(summary.head) == 2
    assert not list(tmp_path.iterdir())


def test_device_flag_is_honoured(cli, trained, shared_data):
    f = sorted((shared_data / "nih_cxr14_talo" / "No_findings").glob("*.png"))[0]
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: --device cuda would work")
    for command in (["score", f], ["evaluate", "--data", f.parent.parent / "labels.csv"]):
        cli.one_line_error(cli(*command, "--model", trained, "--device", "cuda"), "CUDA")


def test_score_mistakes(cli, trained, tmp_path, manifests):
    cli.one_line_error(cli("score", manifests["train"], "--model", tmp_path / "nomodel"), "no such model")
    (tmp_path / "empty").mkdir()
    cli.one_line_error(cli("score", tmp_path / "empty", "--model", trained), "no image files")
    cli.one_line_error(cli("score", "x.png", "--model", trained, "--resume"), "--resume needs --out")
