"""The ``cxrad`` command on tiny real data: help, train (flags / YAML), score with bad files, evaluate, demo,
and one-line errors for user mistakes."""
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
from sklearn.metrics import roc_auc_score

from cxrad.cli import EXIT_FATAL, EXIT_OK, EXIT_SOME_FAILED, main

TINY = ["--image-size", "32", "--epochs", "1", "--device", "cpu"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *words):
    assert code == EXIT_FATAL
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("cxrad: error:")]
    # one error line, last (notes such as "removed 2 duplicates" may come before it), no traceback
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert "Traceback" not in err
    for w in words:
        assert w.lower() in errors[0].lower(), (w, errors[0])


@pytest.fixture(scope="module")
def manifests(tmp_path_factory, sample_manifest):
    """Small CSV manifests over the bundled images: train (normals + a few abnormal), test, abnormal-only."""
    root = tmp_path_factory.mktemp("manifests")
    cols = ["path", "label", "finding", "patient_id", "source", "orig_split"]
    train = pd.concat([sample_manifest[(sample_manifest["orig_split"] == "train") & (sample_manifest["label"] == 0)]
                       .head(24), sample_manifest[sample_manifest["label"] == 1].head(3)])
    test = sample_manifest[sample_manifest["orig_split"] == "test"].groupby(["source", "label"]).head(4)
    abnormal = sample_manifest[sample_manifest["label"] == 1].head(12)
    out = {}
    for name, df in (("train", train), ("test", test), ("abnormal", abnormal)):
        df[cols].to_csv(root / f"{name}.csv", index=False)
        out[name] = root / f"{name}.csv"
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, manifests):
    out = tmp_path_factory.mktemp("model") / "m"
    cache = out.parent / "cache"
    assert main(["train", "--data", str(manifests["train"]), "--out", str(out), "--cache-dir", str(cache),
                 "--quiet", *TINY]) == EXIT_OK
    return out


# ----------------------------------------------------------------------------------------------- help
@pytest.mark.parametrize("command, words", [
    (None, ["train", "score", "evaluate", "normal images"]),
    ("train", ["normal images", "--config", "--device", "--threshold", "resumes", "--resize"]),
    ("score", ["error row", "exit code 3", "percentile", "--out", "--json"]),
    ("evaluate", ["AUROC", "confusion matrix", "per source", "--out"]),
    ("demo", ["bundled", "--epochs"]),
])
def test_help_explains_each_command(capsys, command, words):
    with pytest.raises(SystemExit) as info:
        main(([command] if command else []) + ["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for w in words:
        assert w in text, w


# ---------------------------------------------------------------------------------------------- train
def test_train_by_flags_writes_a_bundle(trained):
    doc = json.loads((trained / "model.json").read_text())
    assert doc["kind"] == "cae" and doc["params"]["image_size"] == 32 and doc["params"]["epochs"] == 1
    assert doc["training_data"]["n_train"] + doc["training_data"]["n_val"] == 24  # abnormal rows ignored
    assert (trained / "model.safetensors").exists()


def test_train_by_yaml_config_with_flag_override(tmp_path, manifests, capsys, monkeypatch):
    monkeypatch.setenv("CXRAD_CACHE", str(tmp_path / "default_cache"))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data: {manifests['train']}\nout: {tmp_path / 'm'}\nimage-size: 32\nepochs: 1\n"
                   f"device: cpu\nseed: 5\nspecificity: 0.9\nparams:\n  latent_dim: 16\n")
    code, out, err = run(capsys, "train", "--config", cfg, "--seed", "7")
    assert code == EXIT_OK, err
    assert "saved cae model" in out
    assert "CAE epochs" in err  # a progress bar (no --quiet)
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    assert doc["params"]["latent_dim"] == 16 and doc["params"]["specificity"] == 0.9
    assert doc["params"]["seed"] == 7  # the command line wins over the file
    # no --cache-dir: images were cached in the default place ($CXRAD_CACHE)
    assert list((tmp_path / "default_cache").rglob("*.npy"))
    cfg.write_text("data: x.csv\nlearning_speed: 3\n")
    assert_one_line_error(*run(capsys, "train", "--config", cfg)[::2], "unknown settings")


def test_train_labelled_threshold_rules(tmp_path, manifests, capsys):
    code, out, err = run(capsys, "train", "--data", manifests["train"], "--out", tmp_path / "m", "--quiet", *TINY,
                         "--threshold", "youden", "--calibration-data", manifests["test"])
    assert code == EXIT_OK, err
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    assert doc["threshold_rule"] == "youden" and doc["threshold"] == doc["thresholds"]["youden"]
    assert "quantile" in doc["thresholds"]
    code, out, err = run(capsys, "train", "--data", manifests["train"], "--out", tmp_path / "f", "--quiet", *TINY,
                         "--threshold", "fixed", "--threshold-value", "1.5")
    assert code == EXIT_OK and json.loads((tmp_path / "f" / "model.json").read_text())["threshold"] == 1.5
    assert_one_line_error(*run(capsys, "train", "--data", manifests["train"], "--out", tmp_path / "c", "--quiet",
                               *TINY, "--threshold", "crossing")[::2], "calibration-data")


# ---------------------------------------------------------------------------------------------- score
def _bomb_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (16, 16)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    i = data.index(b"IHDR")
    data[i + 4: i + 12] = struct.pack(">II", 50000, 50000)  # claims 2.5 gigapixels
    data[i + 17: i + 21] = struct.pack(">I", zlib.crc32(bytes(data[i: i + 17])))
    return bytes(data)


def test_score_folder_with_bad_files(trained, tmp_path, shared_data, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    good = sorted((shared_data / "nih_cxr14_talo" / "No_findings").glob("*.png"))[0]
    shutil.copy(good, folder / "good.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.png").write_bytes(good.read_bytes()[:3000])
    (folder / "text.png").write_text("this is a radiology report, not a picture")
    (folder / "bomb.png").write_bytes(_bomb_png())
    (folder / "readme.txt").write_text("not an image suffix: ignored in a folder")
    code, out, err = run(capsys, "score", folder, "--model", trained, "--out", tmp_path / "res", "--device", "cpu")
    assert code == EXIT_SOME_FAILED
    assert "4 of 5 file(s) could not be scored" in err
    table = pd.read_csv(tmp_path / "res" / "scores.csv", keep_default_na=False).set_index("path")
    assert len(table) == 5
    reasons = {k.split("/")[-1]: v for k, v in table["error"].items()}
    assert reasons["good.png"] == ""
    assert "empty" in reasons["empty.png"]
    assert "not a readable image" in reasons["truncated.png"]
    assert "not a readable image" in reasons["text.png"]
    assert "too large" in reasons["bomb.png"]
    good_row = table.loc[str(folder / "good.png")]
    assert np.isfinite(float(good_row["score"])) and 0 <= float(good_row["percentile"]) <= 100
    records = json.loads((tmp_path / "res" / "scores.json").read_text())
    assert len(records) == 5 and {"score", "recon_error", "log_density", "percentile", "anomalous", "error"} <= set(
        records[0])


def test_score_good_files_json_and_operating_points(trained, shared_data, capsys):
    files = sorted((shared_data / "nih_cxr14_talo" / "No_findings").glob("*.png"))[:3]
    code, out, err = run(capsys, "score", *files, "--model", trained, "--json", "--device", "cpu")
    assert code == EXIT_OK, err
    rows = json.loads(out)
    assert [r["path"] for r in rows] == [str(f) for f in files] and all(r["error"] == "" for r in rows)
    code, out, _ = run(capsys, "score", *files, "--model", trained, "--json", "--threshold-value=-1e9")
    assert code == EXIT_OK and all(r["anomalous"] for r in json.loads(out))
    code, out, _ = run(capsys, "score", *files, "--model", trained, "--json", "--target-specificity", "0.5")
    assert code == EXIT_OK
    # a missing file is an error row too, not a crash
    code, out, _ = run(capsys, "score", files[0], files[0].parent / "nope.png", "--model", trained, "--json")
    assert code == EXIT_SOME_FAILED and "not found" in json.loads(out)[1]["error"]


def test_device_flag_is_honoured(trained, shared_data, capsys):
    f = sorted((shared_data / "nih_cxr14_talo" / "No_findings").glob("*.png"))[0]
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: --device cuda would work")
    for command in (["score", f], ["evaluate", "--data", f.parent.parent / "labels.csv"]):
        assert_one_line_error(*run(capsys, *command, "--model", trained, "--device", "cuda")[::2], "CUDA")


# ------------------------------------------------------------------------------------------- evaluate
def test_evaluate_writes_csv_and_json(trained, manifests, tmp_path, capsys):
    code, out, err = run(capsys, "evaluate", "--data", manifests["test"], "--model", trained, "--out", tmp_path / "ev",
                         "--quiet", "--device", "cpu", "--cache-dir", tmp_path / "cache")
    assert code == EXIT_OK, err
    assert "AUROC" in out and "confusion matrix" in out
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for key in ("auroc", "auroc_ci", "auprc", "sensitivity", "specificity", "precision", "f1", "accuracy",
                "confusion_matrix", "threshold", "components"):
        assert key in metrics, key
    scores = pd.read_csv(tmp_path / "ev" / "scores.csv")
    assert metrics["auroc"] == pytest.approx(roc_auc_score(scores["label"], scores["score"]))
    assert sum(metrics["confusion_matrix"].values()) == len(scores) == metrics["n"]
    flagged = scores["score"] > metrics["threshold"]
    assert metrics["confusion_matrix"]["tp"] == int((flagged & (scores["label"] == 1)).sum())
    by_source = pd.read_csv(tmp_path / "ev" / "by_source.csv")
    assert set(by_source["source"]) == set(scores["source"])
    assert set(pd.read_csv(tmp_path / "ev" / "by_finding.csv")["finding"]) == set(scores["finding"])
    means = pd.read_csv(tmp_path / "ev" / "class_means.csv")
    assert {"recon_error_mean", "log_density_mean", "score_mean"} <= set(means.columns)
    assert (tmp_path / "ev" / "scores.json").exists()


def test_evaluate_with_unreadable_rows_exits_3(trained, manifests, tmp_path, capsys):
    df = pd.read_csv(manifests["test"])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    df = pd.concat([df, pd.DataFrame([{"path": str(tmp_path / "broken.png"), "label": "abnormal"}])])
    df.to_csv(tmp_path / "m.csv", index=False)
    code, out, err = run(capsys, "evaluate", "--data", tmp_path / "m.csv", "--model", trained, "--quiet",
                         "--out", tmp_path / "ev")
    assert code == EXIT_SOME_FAILED and "1 unreadable" in out
    scores = pd.read_csv(tmp_path / "ev" / "scores.csv", keep_default_na=False)
    assert (scores["error"] != "").sum() == 1


# --------------------------------------------------------------------------------------- user mistakes
def test_user_mistakes_give_one_line_errors(tmp_path, manifests, trained, capsys, shared_data):
    assert_one_line_error(*run(capsys, "train", "--data", tmp_path / "missing", "--out", tmp_path / "o", *TINY)[::2],
                          "no such file")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(*run(capsys, "train", "--data", tmp_path / "empty", "--out", tmp_path / "o", *TINY)[::2],
                          "no labelled images")
    assert_one_line_error(*run(capsys, "train", "--data", manifests["abnormal"], "--out", tmp_path / "o",
                               *TINY)[::2], "no normal images")
    # a training set whose every image is unreadable
    bad = tmp_path / "bad" / "NORMAL"
    bad.mkdir(parents=True)
    for i, content in enumerate((b"", b"GIF89a", b"\x89PNG\r\n\x1a\n")):
        (bad / f"{i}.png").write_bytes(content)
    assert_one_line_error(*run(capsys, "train", "--data", tmp_path / "bad", "--out", tmp_path / "o", "--quiet",
                               *TINY)[::2], "empty")
    assert_one_line_error(*run(capsys, "train", "--out", tmp_path / "o")[::2], "--data is required")
    assert_one_line_error(*run(capsys, "evaluate", "--data", tmp_path / "missing.csv", "--model", trained)[::2],
                          "no such file")
    assert_one_line_error(*run(capsys, "score", manifests["train"], "--model", tmp_path / "nomodel")[::2],
                          "no such model")
    assert_one_line_error(*run(capsys, "score", tmp_path / "empty", "--model", trained)[::2], "no image files")
    assert_one_line_error(*run(capsys, "train", "--config", tmp_path / "nope.yaml")[::2], "not found")
    assert_one_line_error(*run(capsys, "train", "--data", manifests["train"], "--out", tmp_path / "o",
                               "--param", "latent_dim")[::2], "key=value")


# ----------------------------------------------------------------------------------------------- demo
def test_demo_runs_and_writes_outputs(tmp_path, capsys):
    code, out, err = run(capsys, "demo", "--epochs", "1", "--out", tmp_path / "demo", "--quiet", "--device", "cpu")
    assert code == EXIT_OK, err
    assert "AUROC" in out
    assert (tmp_path / "demo" / "cae" / "model.json").exists()
    metrics = json.loads((tmp_path / "demo" / "cae_eval" / "metrics.json").read_text())
    assert 0 <= metrics["auroc"] <= 1 and metrics["n_abnormal"] > 0 and metrics["n_normal"] > 0
    assert (tmp_path / "demo" / "cae_eval" / "scores.csv").exists()
