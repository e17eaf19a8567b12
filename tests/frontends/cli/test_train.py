"""``cxrad train``: flags, configs, detector settings, thresholds, time boxes, fine-tuning and user mistakes."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from cxrad.frontends.cli.common import EXIT_OK
from cxrad.detectors import load_detector

TINY = ["--image-size", "32", "--epochs", "1", "--device", "cpu"]


def test_train_by_flags_writes_a_bundle_and_no_checkpoint(trained):
    doc = json.loads((trained / "model.json").read_text())
    assert doc["kind"] == "cae" and doc["params"]["image_size"] == 32 and doc["params"]["epochs"] == 1
    assert doc["training_data"]["n_train"] + doc["training_data"]["n_val"] == 24  # abnormal rows ignored
    assert (trained / doc["weights"]["file"]).exists()
    assert not (trained / "checkpoint").exists()  # a finished run keeps no resumable state unless asked


def test_train_by_yaml_config_with_flag_override(cli, tmp_path, manifests, monkeypatch):
    monkeypatch.setenv("CXRAD_CACHE", str(tmp_path / "default_cache"))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data: {manifests['train']}\ndetector: cae\nout: {tmp_path / 'm'}\nimage-size: 32\nepochs: 1\n"
                   f"device: cpu\nseed: 5\nspecificity: 0.9\nparams:\n  latent_dim: 16\n")
    code, out, err = cli("train", "--config", cfg, "--seed", "7")
    assert code == EXIT_OK, err
    assert "saved cae model" in out and "CAE epochs" in err  # a progress bar (no --quiet)
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    assert doc["params"]["latent_dim"] == 16 and doc["params"]["specificity"] == 0.9
    assert doc["params"]["seed"] == 7  # the command line wins over the file
    assert list((tmp_path / "default_cache").rglob("*.npy"))  # no --cache-dir: the default place
    cfg.write_text("data: x.csv\nlearning_speed: 3\n")
    cli.one_line_error(cli("train", "--config", cfg), "unknown settings")


def test_flags_not_given_leave_the_detectors_defaults(cli, tmp_path, manifests):
    code, _, err = cli("train", "--data", manifests["train"], "--detector", "dae", "--epochs", "1", "--quiet",
                       "--param", "width=8", "--out", tmp_path / "d", "--device", "cpu")
    assert code == EXIT_OK, err
    det = load_detector(tmp_path / "d")
    assert det.image_size == 64 and det.batch_size == 32  # the DAE's own defaults, not the CAE's 128 px


def test_unknown_settings_are_named_with_the_ones_that_exist(cli, tmp_path, manifests):
    cli.one_line_error(cli("train", "--data", manifests["train"], "--detector", "dae", "--param", "latentdim=16",
                           "--out", tmp_path / "o"), "no setting 'latentdim'", "noise_grid")
    cli.one_line_error(cli("train", "--data", manifests["train"], "--detector", "regional", "--epochs", "2",
                           "--out", tmp_path / "o"), "no setting 'epochs'")
    cli.one_line_error(cli("train", "--data", manifests["train"], "--detector", "nope", "--out", tmp_path / "o"),
                       "unknown detector kind 'nope'", "dae")


def test_detector_help_lists_its_settings(cli):
    with pytest.raises(SystemExit):
        cli("train", "--detector", "dae", "--help")
    out = " ".join(cli.capsys.readouterr().out.split())
    assert "noise_grid int default 8" in out and "Standard deviation of the coarse noise" in out
    code, out, _ = cli("detectors", "aeu")
    assert code == EXIT_OK and "latent_dim" in out and "Length of the bottleneck vector" in out
    code, out, _ = cli("detectors")
    assert {"cae", "dae", "aeu", "anogan", "fanogan", "regional", "fusion"} <= {line.split()[0] for line in
                                                                               out.splitlines() if line.strip()}


def test_train_labelled_threshold_rules_and_calibration_overlap(cli, tmp_path, manifests):
    code, out, err = cli("train", "--data", manifests["train"], "--out", tmp_path / "m", "--quiet", *TINY,
                         "--threshold", "youden", "--calibration-data", manifests["test"])
    assert code == EXIT_OK, err
    assert "also training images" not in err
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    assert doc["threshold_rule"] == "youden" and doc["threshold"] == doc["thresholds"]["youden"]
    assert "quantile" in doc["thresholds"]
    # calibrating on the training data itself is allowed, with a warning
    code, _, err = cli("train", "--data", manifests["train"], "--out", tmp_path / "m2", "--quiet", *TINY,
                       "--threshold", "max-f1", "--calibration-data", manifests["train"])
    assert code == EXIT_OK and "24 calibration image(s) are also training images" in err
    code, out, err = cli("train", "--data", manifests["train"], "--out", tmp_path / "f", "--quiet", *TINY,
                         "--threshold", "fixed", "--threshold-value", "1.5")
    assert code == EXIT_OK and json.loads((tmp_path / "f" / "model.json").read_text())["threshold"] == 1.5
    cli.one_line_error(cli("train", "--data", manifests["train"], "--out", tmp_path / "c", "--quiet", *TINY,
                           "--threshold", "crossing"), "calibration-data")


def test_calibration_data_is_read_with_the_same_class_folders(cli, tmp_path, sample_manifest):
    """--normal/--abnormal apply to --calibration-data as they do to --data."""
    import shutil
    root = tmp_path / "folders"
    for _, row in sample_manifest[sample_manifest["source"] == "kermany224"].iterrows():
        dest = root / row["orig_split"] / ("HEALTHY" if row["label"] == 0 else "SICK")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(row["path"], dest)
    code, _, err = cli("train", "--data", root, "--split", "train", "--normal", "HEALTHY", "--out", tmp_path / "m",
                       "--quiet", *TINY, "--threshold", "crossing", "--calibration-data", root,
                       "--calibration-split", "test")
    assert code == EXIT_OK, err
    assert json.loads((tmp_path / "m" / "model.json").read_text())["threshold_rule"] == "crossing"


def test_splits_match_by_their_first_word_and_a_bad_one_lists_them(cli, tmp_path, shared_data):
    code, _, err = cli("train", "--data", shared_data / "tb_shenzhen_montgomery128", "--split", "train",
                       "--detector", "regional", "--image-size", "32", "--out", tmp_path / "tb", "--quiet")
    assert code == EXIT_OK, err
    n = json.loads((tmp_path / "tb" / "model.json").read_text())["training_data"]
    assert n["n_train"] + n["n_val"] == 256  # train (Shenzhen) 205 + train (Montgomery) 51 normals
    cli.one_line_error(cli("train", "--data", shared_data / "tb_shenzhen_montgomery128", "--split", "val",
                           "--out", tmp_path / "o"), "train (Shenzhen)", "test (Montgomery)")


def test_time_box_saves_a_valid_bundle_and_the_same_command_continues(cli, tmp_path, manifests):
    args = ["train", "--data", manifests["train"], "--detector", "dae", "--image-size", "32", "--param",
            "width=8", "--param", "depth=3", "--epochs", "3", "--out", tmp_path / "m", "--quiet", "--device", "cpu",
            "--max-minutes", "0.000001"]
    code, out, err = cli(*args)
    assert code == EXIT_OK and "stopped by --max-minutes after epoch 1 of 3" in err
    first = load_detector(tmp_path / "m")
    assert first.epochs_done_ == 1 and not first.training_finished_
    assert (tmp_path / "m" / "checkpoint" / "last.safetensors").exists()
    cli(*args)
    code, out, err = cli(*args[:-2])
    final = load_detector(tmp_path / "m")
    assert code == EXIT_OK and final.training_finished_ and len(final.history_["train_loss"]) == 3
    assert not (tmp_path / "m" / "checkpoint").exists()


def test_fine_tuning_starts_from_a_bundle(cli, tmp_path, manifests, trained):
    base = load_detector(trained)
    # with a learning rate of 0 the weights cannot move: a fine-tuned model keeps the base's exactly
    code, _, err = cli("train", "--data", manifests["train"], "--init", trained, "--epochs", "1", "--param", "lr=0",
                       "--out", tmp_path / "ft", "--quiet", "--device", "cpu")
    assert code == EXIT_OK and "fine-tuning cae" in err
    tuned = load_detector(tmp_path / "ft")
    assert tuned.image_size == base.image_size and tuned.latent_dim == base.latent_dim and tuned.lr == 0
    for a, b in zip(tuned.model_.parameters(), base.model_.parameters()):
        assert torch.equal(a, b)
    code, _, _ = cli("train", "--data", manifests["train"], "--epochs", "1", "--param", "lr=0", "--image-size",
                     "32", "--seed", "3", "--out", tmp_path / "scratch", "--quiet", "--device", "cpu")
    scratch = load_detector(tmp_path / "scratch")
    assert not all(torch.equal(a, b) for a, b in zip(scratch.model_.parameters(), base.model_.parameters()))
    cli.one_line_error(cli("train", "--data", manifests["train"], "--init", trained, "--image-size", "64",
                           "--out", tmp_path / "x"), "cannot be changed")
    cli.one_line_error(cli("train", "--data", manifests["train"], "--init", trained, "--detector", "dae",
                           "--out", tmp_path / "x"), "is a cae model")


def test_user_mistakes_give_one_line_errors(cli, tmp_path, manifests):
    cli.one_line_error(cli("train", "--data", tmp_path / "missing", "--out", tmp_path / "o", *TINY), "no such file")
    (tmp_path / "empty").mkdir()
    cli.one_line_error(cli("train", "--data", tmp_path / "empty", "--out", tmp_path / "o", *TINY),
                       "no labelled images")
    cli.one_line_error(cli("train", "--data", manifests["abnormal"], "--out", tmp_path / "o", *TINY),
                       "no normal images")
    bad = tmp_path / "bad" / "NORMAL"  # a training set whose every image is unreadable
    bad.mkdir(parents=True)
    for i, content in enumerate((b"", b"GIF89a", b"\x89PNG\r\n\x1a\n")):
        (bad / f"{i}.png").write_bytes(content)
    cli.one_line_error(cli("train", "--data", tmp_path / "bad", "--out", tmp_path / "o", "--quiet", *TINY), "empty")
    cli.one_line_error(cli("train", "--out", tmp_path / "o"), "--data is required")
    cli.one_line_error(cli("train", "--config", tmp_path / "nope.yaml"), "not found")
    cli.one_line_error(cli("train", "--data", manifests["train"], "--out", tmp_path / "o", "--param", "latent_dim"),
                       "key=value")
    for epochs in ("0", "-1"):
        cli.one_line_error(cli("train", "--data", manifests["train"], "--out", tmp_path / "o", "--epochs", epochs),
                           "at least 1")
    (tmp_path / "file").write_text("x")
    cli.one_line_error(cli("train", "--data", manifests["train"], "--out", tmp_path / "file"), "is a file")
    assert not list(tmp_path.glob("o*"))


def test_rows_outside_the_manifest_folder_are_counted_unless_absolute(cli, tmp_path, manifests):
    """Relative paths that climb out of the manifest's folder get a note; absolute paths (the writer's own choice,
    as in this manifest) do not."""
    code, _, err = cli("train", "--data", manifests["train"], "--out", tmp_path / "m", "--quiet", *TINY)
    assert code == EXIT_OK and "outside" not in err, err
    local = pd.read_csv(manifests["train"]).head(12)
    import shutil
    (tmp_path / "images").mkdir()
    (tmp_path / "here").mkdir()
    for p in local["path"]:
        shutil.copy(p, tmp_path / "images")
    names = [p.split("/")[-1] for p in local["path"]]
    local.assign(path=[f"../images/{n}" for n in names]).to_csv(tmp_path / "here" / "up.csv", index=False)
    code, _, err = cli("train", "--data", tmp_path / "here" / "up.csv", "--out", tmp_path / "m2", "--quiet", *TINY)
    assert code == EXIT_OK and "12 row(s) of" in err and "point outside its folder" in err
    local.assign(path=names).to_csv(tmp_path / "images" / "m.csv", index=False)
    code, _, err = cli("train", "--data", tmp_path / "images" / "m.csv", "--out", tmp_path / "m3", "--quiet", *TINY)
    assert code == EXIT_OK and "outside" not in err
