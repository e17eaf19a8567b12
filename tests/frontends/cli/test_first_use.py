"""What a new user meets first (issue 22): a folder of normals, NIH's ``No_findings`` folders, an ONNX export
given to ``score``, ``--json | head``, one table whichever engine, settings checked before loading, resume and
changed-run messages, a busy port, the default detector, the run's length, the losses' CSV, the best epoch,
heatmaps from the command line and the threshold's confidence."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrad.frontends.cli.common import EXIT_BROKEN_PIPE, EXIT_OK, EXIT_SOME_FAILED, score_rows_text
from cxrad.serving.streaming import read_scores

TINY_DAE = ["--detector", "dae", "--image-size", "32", "--param", "width=8", "--param", "depth=2", "--device", "cpu"]


def _copy(files, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, folder / f.name)
    return [folder / f.name for f in files]


def _nih(shared_data, n_normal: int, n_abnormal: int):
    src = shared_data / "nih_cxr14_talo"
    return (sorted((src / "No_findings").glob("*.png"))[:n_normal],
            sorted((src / "Pneumonia").glob("*.png"))[:n_abnormal])


# --------------------------------------------------------------------------------------------- data folders
def test_a_folder_of_normals_fine_tunes_the_shipped_model(cli, tmp_path, shared_data):
    """README: `cxrad train --data site_normals/ --init dae-cxr-64-300k` on a folder of .jpeg files."""
    _copy(sorted((shared_data / "kermany224" / "train" / "NORMAL").glob("*.jpeg"))[:30], tmp_path / "site_normals")
    code, out, err = cli("train", "--data", tmp_path / "site_normals", "--init", "dae-cxr-64-300k", "--epochs", "1",
                         "--out", tmp_path / "site", "--quiet", "--device", "cpu", "--cache-dir", tmp_path / "cache")
    assert code == EXIT_OK, err
    assert "warning: " in err and "no class sub-folders, so its 30 image(s) are all taken as normal" in err
    doc = json.loads((tmp_path / "site" / "model.json").read_text())
    assert doc["kind"] == "dae" and doc["training_data"]["n_train"] + doc["training_data"]["n_val"] == 30


def test_no_findings_folders_are_normal_and_a_folder_without_normals_lists_its_classes(cli, tmp_path, shared_data,
                                                                                      trained):
    normal, abnormal = _nih(shared_data, 8, 4)
    _copy(normal, tmp_path / "nih" / "No_findings")  # a copy of the NIH folder without its labels.csv
    _copy(abnormal, tmp_path / "nih" / "Pneumonia")
    code, out, err = cli("evaluate", "--data", tmp_path / "nih", "--model", trained, "--quiet", "--device", "cpu")
    assert code == EXIT_OK, err
    assert "images: 12 (8 normal, 4 abnormal)" in out
    _copy(normal, tmp_path / "site" / "Well")
    _copy(abnormal, tmp_path / "site" / "Sick")
    for command in (["train", "--out", tmp_path / "m"], ["evaluate", "--model", trained]):
        cli.one_line_error(cli(*command, "--data", tmp_path / "site", "--quiet"), "no normal images",
                           "class folders found: Sick, Well", "--normal")
    code, _, err = cli("evaluate", "--data", tmp_path / "site", "--normal", "Well", "--model", trained, "--quiet")
    assert code == EXIT_OK, err


# ------------------------------------------------------------------------------------------------ scoring
def test_score_and_evaluate_take_an_onnx_export(cli, tmp_path, tiny_model, sample_test_files, manifests):
    pytest.importorskip("onnxruntime", reason="the ONNX tests need the onnx extra: pip install 'cxrad[onnx]'")
    pytest.importorskip("onnxscript", reason="the ONNX tests need the onnx extra: pip install 'cxrad[onnx]'")
    _, bundle = tiny_model("dae")
    assert cli("export", bundle, "--out", tmp_path / "export", "--quiet")[0] == EXIT_OK
    files = sample_test_files[:5]
    code, out, err = cli("score", *files, "--model", bundle, "--json", "--quiet", "--device", "cpu")
    expected = [json.loads(line) for line in out.splitlines()]
    for model in (tmp_path / "export" / "model.onnx", tmp_path / "export"):
        code, out, err = cli("score", *files, "--model", model, "--json", "--quiet")
        assert code == EXIT_OK, err
        rows = [json.loads(line) for line in out.splitlines()]
        assert [r["path"] for r in rows] == files
        np.testing.assert_allclose([r["score"] for r in rows], [r["score"] for r in expected], rtol=1e-4)
        assert [r["anomalous"] for r in rows] == [r["anomalous"] for r in expected]
    code, out, err = cli("evaluate", "--model", tmp_path / "export" / "model.onnx", "--data", manifests["test"],
                         "--quiet")
    assert code == EXIT_OK and "AUROC" in out, err
    for command in (["report", "--data", manifests["test"], "--out", tmp_path / "r", "--model"],
                    ["export", "--out", tmp_path / "again"], ["train", "--data", manifests["train"], "--init"]):
        cli.one_line_error(cli(*command, tmp_path / "export" / "model.onnx"), "is an ONNX export",
                           "needs the bundle it was exported from")
    cli.one_line_error(cli("app", "--model", tmp_path / "export"), "is an ONNX export")


def test_json_into_a_pipe_closed_early_exits_quietly(trained, sample_test_files, tmp_path):
    """`cxrad score ... --json | head -1`: no 'Broken pipe' error, the exit status of a tool stopped by SIGPIPE."""
    import cxrad
    env = dict(os.environ, PYTHONPATH=str(Path(cxrad.__file__).parents[1]), CXRAD_CACHE=str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "-m", "cxrad", "score", *sample_test_files[:40], "--model", str(trained),
                             "--json", "--batch-size", "1", "--quiet", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first = proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == EXIT_BROKEN_PIPE, err
    assert json.loads(first)["path"] == sample_test_files[0]
    assert err == "", err


def test_the_terminal_table_is_the_scores_file_rendered_once(cli, trained, sample_test_files, tmp_path):
    """The local engine's table is what the Ray engine prints from the merged scores.csv: one renderer, the same
    precision, and empty cells for an error row (not NaN and <NA>)."""
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    files = [*sample_test_files[:3], str(bad), sample_test_files[3]]
    code, out, err = cli("score", *files, "--model", trained, "--out", tmp_path / "o", "--quiet", "--device", "cpu")
    assert code == EXIT_SOME_FAILED, err
    table = score_rows_text(read_scores(tmp_path / "o" / "scores.csv"))
    assert table in out
    error_line = next(line for line in out.splitlines() if "broken.png" in line)
    assert "NaN" not in error_line and "<NA>" not in error_line and "not a readable image" in error_line
    row = read_scores(tmp_path / "o" / "scores.csv").iloc[0]
    assert f"{row['score']:.6g}" in out.splitlines()[1]


def test_maps_are_written_as_overlays_from_the_same_pass(cli, trained, shared_data, tmp_path):
    normal, abnormal = _nih(shared_data, 2, 1)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    twin = _copy(normal[:1], tmp_path / "elsewhere")[0]  # the same name in another folder: its own map
    files = [*normal, str(bad), *abnormal, str(twin)]
    code, out, err = cli("score", *files, "--model", trained, "--maps", tmp_path / "maps", "--quiet", "--device",
                         "cpu", "--out", tmp_path / "o")
    assert code == EXIT_SOME_FAILED, err
    maps = sorted((tmp_path / "maps").glob("*.png"))
    assert len(maps) == 4 and "wrote 4 anomaly map(s)" in err  # not for the unreadable file
    assert {p.name.rsplit("-", 1)[0] for p in maps} == {Path(f).stem for f in (*normal, *abnormal)}
    for p in maps:
        rgb = np.asarray(Image.open(p))
        assert rgb.shape == (512, 512, 3)  # drawn over the film at display size, not the model's 32 px
        assert np.abs(rgb[..., 0].astype(int) - rgb[..., 2]).max() > 30  # colour over a grey film
    cli.one_line_error(cli("score", *files, "--model", trained, "--maps", tmp_path / "o" / "scores.csv"), "is a file")


def test_help_names_every_image_format(cli):
    for command in ("score", "app"):
        with pytest.raises(SystemExit):
            cli(command, "--help")
        text = " ".join(cli.capsys.readouterr().out.split())
        assert all(f in text for f in ("PNG", "JPEG", "TIFF", "BMP", "DICOM")), (command, text)


def test_a_busy_port_is_one_error_line_before_anything_starts(cli):
    pytest.importorskip("streamlit", reason="the dashboard needs Streamlit")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("app", "--port", port)
    cli.one_line_error(result, f"port {port}", "already in use", "--port")
    assert "http://" not in result[2]  # no URL printed for a server that never starts


# ------------------------------------------------------------------------------------------------ training
def test_a_wrong_setting_is_refused_before_any_image_is_read(cli, tmp_path, manifests):
    cache = tmp_path / "cache"
    for param, words in (("epochs=abc", ("setting epochs must be int", "'abc'")),
                         ("lr=fast", ("setting lr must be float",)),
                         ("noise_std=-1", ("setting noise_std must be between",))):
        cli.one_line_error(cli("train", "--data", manifests["train"], "--out", tmp_path / "m", "--cache-dir", cache,
                               "--param", param, *TINY_DAE), *words)
    cli.one_line_error(cli("train", "--data", manifests["train"], "--out", tmp_path / "m", "--cache-dir", cache,
                           "--detector", "cae", "--param", "score_mode=maybe"), "score_mode must be one of")
    assert not list(cache.rglob("*.npy"))  # no image was decoded


def test_train_defaults_to_the_shipped_kind_says_how_long_and_logs_its_losses(cli, tmp_path, manifests):
    code, out, err = cli("train", "--data", manifests["train"], "--image-size", "32", "--param", "width=8",
                         "--param", "depth=2", "--epochs", "2", "--out", tmp_path / "m", "--device", "cpu")
    assert code == EXIT_OK, err
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    assert doc["kind"] == json.loads((Path(__import__("cxrad").__file__).parent / "bundles" / "pretrained" /
                                      "default.json").read_text())["default"].split("-")[0] == "dae"
    assert "training dae on 24 normal images for 2 epochs" in err
    assert "DAE epochs: about " in err and " for 2 epochs (~" in err  # the estimate, before the run is over
    assert "img/s" in err and "<" in err  # the bar shows the time left
    log = pd.read_csv(tmp_path / "m" / "losses.csv")
    assert list(log["epoch"]) == [1, 2] and list(log["samples"]) == [22, 44]
    np.testing.assert_array_equal(log["train_loss"], doc["history"]["train_loss"])
    np.testing.assert_array_equal(log["val_loss"], doc["history"]["val_loss"])
    # 2 held-out normals: the threshold's interval is stated, with a warning
    assert "threshold quantile: 95% CI of the threshold" in err
    assert "warning: the threshold rests on only 2 held-out normal image(s) (fewer than 50)" in err


def test_resume_and_another_runs_checkpoint_are_said(cli, tmp_path, manifests, sample_manifest):
    args = ["train", "--data", manifests["train"], "--epochs", "3", "--out", tmp_path / "m", "--quiet",
            *TINY_DAE, "--cache-dir", tmp_path / "cache"]
    code, _, err = cli(*args, "--max-minutes", "0.000001")
    assert code == EXIT_OK and "stopped by --max-minutes after epoch 1 of 3" in err
    code, _, err = cli(*args, "--max-minutes", "0.000001")
    assert code == EXIT_OK and "resuming from epoch 1 of 3" in err and "another run" not in err
    code, _, err = cli(*args, "--max-minutes", "0.000001", "--param", "lr=0.0005")
    assert code == EXIT_OK and "resuming" not in err
    assert "holds another run's training state (it differs in setting lr 0.001 -> 0.0005)" in err
    assert "starts afresh at epoch 0" in err
    # one more training file
    more = pd.concat([pd.read_csv(manifests["train"]),
                      sample_manifest[(sample_manifest["orig_split"] == "train") & (sample_manifest["label"] == 0)]
                      .iloc[[30]][["path", "label", "finding", "patient_id", "source", "orig_split"]]])
    more.to_csv(tmp_path / "more.csv", index=False)
    code, _, err = cli(*args[:2], tmp_path / "more.csv", *args[3:], "--param", "lr=0.0005")
    assert code == EXIT_OK and "another run's training state" in err and "the training images (22 -> 23)" in err


def test_keep_best_and_early_stopping_from_the_command_line(cli, tmp_path, manifests):
    code, _, err = cli("train", "--data", manifests["train"], "--epochs", "4", "--keep", "best", "--patience", "1",
                       "--out", tmp_path / "m", "--quiet", *TINY_DAE)
    assert code == EXIT_OK, err
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    val = doc["history"]["val_loss"]
    best = int(np.argmin(val)) + 1
    assert doc["params"]["keep"] == "best" and doc["state"]["best_epoch"] == best and doc["state"]["kept"] == "best"
    assert len(val) == min(4, best + 1)  # patience 1: one epoch without improvement ends it
    assert f"the weights of epoch {best}" in err
    cli.one_line_error(cli("train", "--data", manifests["train"], "--out", tmp_path / "x", "--patience", "0"),
                       "--patience must be at least 1")


def test_a_target_specificity_on_few_normals_is_warned_about(cli, trained, sample_test_files):
    code, _, err = cli("score", *sample_test_files[:2], "--model", trained, "--target-specificity", "0.9", "--quiet")
    assert code == EXIT_OK and "warning: --target-specificity: the threshold rests on only 2 held-out normal" in err
    from cxrad.detectors.thresholds import threshold_confidence
    many = threshold_confidence(np.linspace(0, 1, 200), 0.95)
    assert many.warning() is None and many.specificity == 190 / 200
    lo, hi = many.specificity_ci
    assert lo < 0.95 < hi and hi - lo < 0.1 and many.threshold_ci[0] < 0.95 < many.threshold_ci[1]
