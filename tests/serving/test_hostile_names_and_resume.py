"""Issue 21, rows lost, duplicated or mixed: hostile file names (not UTF-8, a carriage return, all digits, a
spreadsheet formula), a deep tree, --resume onto damaged, foreign or special score files, two writers on one
output folder, and --files-from lists that are FIFOs or hold comments. Every case runs the real scorer on real
radiographs."""
from __future__ import annotations

import json
import os
import shutil
import threading

import numpy as np
import pandas as pd
import pytest

from cxrad.detectors import load_detector
from cxrad.detectors.results import csv_text, json_lines
from cxrad.errors import UserError
from cxrad.files import folder_lock, path_text
from cxrad.serving.streaming import collect_files, read_file_list, read_scores, score_to_files
from hostile_files import finishes


@pytest.fixture(scope="module")
def dae(tiny_model):
    return load_detector(tiny_model("dae")[1], device="cpu")


@pytest.fixture(scope="module")
def other_dae(tmp_path_factory, sample_manifest):
    from cxrad.detectors import DAEDetector
    train = sample_manifest[(sample_manifest["orig_split"] == "train") & (sample_manifest["label"] == 0)]
    det = DAEDetector(image_size=32, width=8, depth=3, epochs=1, seed=7, device="cpu", batch_size=16)
    det.fit(train["path"].head(40).tolist())
    return load_detector(det.save(tmp_path_factory.mktemp("other") / "m"), device="cpu")


def hostile_folder(root, sample_test_files, names, shared_data=None) -> list[str]:
    """Real radiographs copied under ``names`` (str, or bytes for names that are not UTF-8); a name without an
    extension (a PACS export) gets a real DICOM file."""
    os.makedirs(root, exist_ok=True)
    out = []
    for name, src in zip(names, sample_test_files):
        raw = os.path.join(os.fsencode(root), name if isinstance(name, bytes) else os.fsencode(name))
        if "." not in os.fsdecode(os.path.basename(raw)):
            src = shared_data / "dicom_chest" / "cr_chest_mono1_10bit.dcm"
        shutil.copyfile(src, raw)
        out.append(os.fsdecode(raw))
    return out


NAMES = [b"caf\xe9.png", "line\rbreak.png", "001", "=HYPERLINK(\"x\").png", "-2+3.png", "@sum.jpeg",
         "'quoted.png", "plain.png"]


def rows_by_path(out) -> pd.DataFrame:
    table = read_scores(out / "scores.csv")
    assert not table["path"].duplicated().any(), table["path"].tolist()
    return table.set_index("path")


def test_hostile_names_are_scored_written_and_resumed_exactly_once(dae, sample_test_files, shared_data, tmp_path):
    files = hostile_folder(tmp_path / "imgs", sample_test_files, NAMES, shared_data)
    found, ignored = collect_files([tmp_path / "imgs"])  # a non-UTF-8 name no longer ends the run
    assert sorted(found) == sorted(files) and ignored.empty
    out = tmp_path / "out"
    summary = score_to_files(dae, found, out, batch_size=3)
    assert summary.rows == len(files) and summary.errors == 0
    table = rows_by_path(out)
    assert set(table.index) == {path_text(f) for f in files}
    assert path_text(files[0]).endswith("caf\\xe9.png")  # the byte shown, the rest kept
    jsonl = [json.loads(line) for line in (out / "scores.jsonl").read_text("utf-8").splitlines()]
    assert [r["path"] for r in jsonl] == [path_text(f) for f in found]  # text, never the integer 1
    # resuming a finished run scores nothing again and leaves both files as they were
    before = (out / "scores.csv").read_bytes(), (out / "scores.jsonl").read_bytes()
    again = score_to_files(dae, found, out, resume=True, batch_size=3)
    assert again.rows == len(files)
    assert ((out / "scores.csv").read_bytes(), (out / "scores.jsonl").read_bytes()) == before
    # a killed run: the last rows cut off in the middle of a quoted name holding a line break
    text = (out / "scores.csv").read_bytes()  # (bytes: text mode would turn the \r into a \n)
    (out / "scores.csv").write_bytes(text[:text.index(b"line\rbreak") + 4])
    score_to_files(dae, found, out, resume=True, batch_size=3)
    table = rows_by_path(out)
    assert set(table.index) == {path_text(f) for f in files} and len(table) == len(files)
    jsonl = [json.loads(line) for line in (out / "scores.jsonl").read_text("utf-8").splitlines()]
    assert sorted(r["path"] for r in jsonl) == sorted(table.index)


def test_formula_cells_are_neutralised_and_read_back_exactly(dae, sample_test_files, tmp_path, monkeypatch):
    import csv
    hostile_folder(tmp_path / "imgs", sample_test_files, NAMES[3:])
    monkeypatch.chdir(tmp_path / "imgs")  # names given as typed, relative: the cell starts with the name
    files = [n for n in NAMES[3:] if isinstance(n, str)]
    score_to_files(dae, files, tmp_path / "out")
    with open(tmp_path / "out" / "scores.csv", newline="", encoding="utf-8") as fh:
        cells = [row[0] for row in list(csv.reader(fh))[1:]]
    assert all(not c.startswith(("=", "+", "-", "@", "\t", "\r")) for c in cells), cells  # text, not formulas
    assert {c[:2] for c in cells} >= {"'=", "'-", "'@", "''"}
    assert read_scores(tmp_path / "out" / "scores.csv")["path"].tolist() == files  # cxrad reads the names back
    before = (tmp_path / "out" / "scores.csv").read_bytes()
    score_to_files(dae, files, tmp_path / "out", resume=True)
    assert (tmp_path / "out" / "scores.csv").read_bytes() == before  # nothing scored twice


def test_csv_text_quotes_carriage_returns_and_keeps_full_precision():
    table = pd.DataFrame({"path": ["a\rb.png", "=1+1", "x"], "score": [0.1 + 0.2, np.nan, 1e-20],
                          "anomalous": pd.array([True, pd.NA, False], dtype="boolean"), "error": ["", "bad", ""]})
    text = csv_text(table)
    assert '"a\rb.png"' in text and "\n'=1+1," in text and "0.30000000000000004" in text
    lines = json_lines(table).splitlines()
    assert json.loads(lines[0])["score"] == 0.1 + 0.2 and "\\/" not in json_lines(table.assign(path="a/b"))
    assert json.loads(lines[1])["score"] is None and json.loads(lines[1])["anomalous"] is None


@pytest.fixture
def deep_tree(tmp_path):
    """1,100 nested folders: past Python's recursion limit (pathlib's mkdir and shutil.rmtree recurse too, so the
    tree is made and removed here, a level at a time)."""
    deep = tmp_path / "deep"
    levels = [deep]
    deep.mkdir()
    for _ in range(1100):
        levels.append(levels[-1] / "d")
        os.mkdir(levels[-1])
    yield deep, levels[-1]
    for level in reversed(levels):
        for entry in os.scandir(level):
            if not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)
        os.rmdir(level)


def test_a_tree_deeper_than_the_recursion_limit_is_scanned(sample_test_files, deep_tree):
    deep, bottom = deep_tree
    shutil.copyfile(sample_test_files[0], deep / "top.png")
    shutil.copyfile(sample_test_files[1], bottom / "bottom.png")
    files, ignored = collect_files([deep])
    assert files == [str(bottom / "bottom.png"), str(deep / "top.png")] and ignored.empty


def test_resume_onto_a_score_file_of_another_shape_is_one_clear_error(dae, sample_test_files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for header in ("name,value\nx,1\n", "path,score\nx,1\n", "score,error\n1,\n"):
        (out / "scores.csv").write_text(header)
        with pytest.raises(UserError, match="not a score file of this model"):
            score_to_files(dae, sample_test_files[:2], out, resume=True)


@pytest.mark.parametrize("kind", ["dev_zero", "fifo"])
def test_resume_onto_a_special_scores_csv_is_refused_without_reading(dae, sample_test_files, tmp_path, kind):
    out = tmp_path / "out"
    out.mkdir()
    if kind == "dev_zero":
        (out / "scores.csv").symlink_to("/dev/zero")
    else:
        os.mkfifo(out / "scores.csv")
    finished, result = finishes(score_to_files, dae, sample_test_files[:2], out, True, timeout=20)
    assert finished and isinstance(result, UserError) and "not a regular file" in str(result)


def test_resume_with_another_model_or_operating_point_is_refused(dae, other_dae, sample_test_files, tmp_path):
    out = tmp_path / "out"
    score_to_files(dae, sample_test_files[:4], out)
    with pytest.raises(UserError, match="another model"):
        score_to_files(other_dae, sample_test_files[:8], out, resume=True)
    from cxrad.detectors.thresholds import operating_point
    moved = load_detector(dae.source_, device="cpu")
    moved.set_operating_point(operating_point(moved, "fixed", value=123.0))
    with pytest.raises(UserError, match="another operating point"):
        score_to_files(moved, sample_test_files[:8], out, resume=True)
    assert len(read_scores(out / "scores.csv")) == 4  # nothing was mixed in
    score_to_files(dae, sample_test_files[:8], out, resume=True)  # the same model resumes
    assert len(read_scores(out / "scores.csv")) == 8


def test_a_second_writer_on_one_output_folder_is_refused(dae, sample_test_files, tmp_path):
    out = tmp_path / "out"
    score_to_files(dae, sample_test_files[:3], out)
    with folder_lock(out):  # another run holds the folder
        with pytest.raises(UserError, match="being written by another cxrad run"):
            score_to_files(dae, sample_test_files[:3], out)
    assert len(read_scores(out / "scores.csv")) == 3  # the holder's rows were not deleted


def test_two_cli_runs_at_once_never_write_one_folder_twice(tiny_model, sample_test_files, tmp_path):
    """Two real `cxrad score` processes into one folder: one scores, the other exits 1 at once; the file holds
    every row once."""
    import subprocess
    import sys
    from pathlib import Path

    import cxrad
    files = sample_test_files[:40]
    env = dict(os.environ, PYTHONPATH=str(Path(cxrad.__file__).parents[1]), PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "cxrad", "score", *files, "--model", str(tiny_model("dae")[1]), "--out",
           str(tmp_path / "out"), "--quiet", "--device", "cpu", "--batch-size", "4", "--cache-dir",
           str(tmp_path / "cache")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 1], results
    assert any("being written by another cxrad run" in err for _, err in results)
    table = read_scores(tmp_path / "out" / "scores.csv")
    assert len(table) == len(files) and not table["path"].duplicated().any()


def test_files_from_a_fifo_is_refused_without_hanging(tmp_path):
    os.mkfifo(tmp_path / "list.txt")
    finished, result = finishes(read_file_list, tmp_path / "list.txt")
    assert finished and isinstance(result, UserError) and "not a regular file" in str(result)


def test_files_from_skips_comments_and_keeps_names_that_are_not_utf8(tmp_path):
    (tmp_path / "list.txt").write_bytes(b"# scans of Monday\n\na.png\n  # indented comment\nsub/caf\xe9.dcm\n")
    assert read_file_list(tmp_path / "list.txt") == [str(tmp_path / "a.png"),
                                                     os.fsdecode(os.fsencode(tmp_path) + b"/sub/caf\xe9.dcm")]


def test_jsonl_of_a_run_keeps_the_csv_precision(dae, sample_test_files, tmp_path):
    score_to_files(dae, sample_test_files[:6], tmp_path / "out")
    table = read_scores(tmp_path / "out" / "scores.csv")
    rows = [json.loads(line) for line in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()]
    assert [r["score"] for r in rows] == table["score"].tolist()  # the same floats, to the last bit
    assert [r["percentile"] for r in rows] == table["percentile"].tolist()
