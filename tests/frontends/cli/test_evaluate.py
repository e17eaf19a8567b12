"""``cxrad evaluate`` and ``cxrad demo``."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxrad.frontends.cli.common import EXIT_OK, EXIT_SOME_FAILED


def test_evaluate_writes_csv_and_json(cli, trained, manifests, tmp_path):
    code, out, err = cli("evaluate", "--data", manifests["test"], "--model", trained, "--out", tmp_path / "ev",
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
    assert set(pd.read_csv(tmp_path / "ev" / "by_source.csv")["source"]) == set(scores["source"])
    findings = set(pd.read_csv(tmp_path / "ev" / "by_finding.csv")["finding"])
    assert findings == set(scores["finding"]) and "No Finding" not in findings  # NIH's spelling is unified
    means = pd.read_csv(tmp_path / "ev" / "class_means.csv")
    assert {"recon_error_mean", "log_density_mean", "score_mean"} <= set(means.columns)
    assert len((tmp_path / "ev" / "scores.jsonl").read_text().splitlines()) == len(scores)


def test_evaluate_with_unreadable_rows_exits_3_and_one_class_is_an_error(cli, trained, manifests, tmp_path):
    df = pd.read_csv(manifests["test"])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    pd.concat([df, pd.DataFrame([{"path": str(tmp_path / "broken.png"), "label": "abnormal"}])]).to_csv(
        tmp_path / "m.csv", index=False)
    code, out, err = cli("evaluate", "--data", tmp_path / "m.csv", "--model", trained, "--quiet", "--out",
                         tmp_path / "ev")
    assert code == EXIT_SOME_FAILED and "1 unreadable" in out
    assert (pd.read_csv(tmp_path / "ev" / "scores.csv", keep_default_na=False)["error"] != "").sum() == 1
    df[df["label"] == 1].to_csv(tmp_path / "ab.csv", index=False)
    cli.one_line_error(cli("evaluate", "--data", tmp_path / "ab.csv", "--model", trained, "--quiet"),
                       "needs both normal and abnormal")
    cli.one_line_error(cli("evaluate", "--data", tmp_path / "missing.csv", "--model", trained), "no such file")


def test_demo_runs_and_writes_outputs(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("CXRAD_CACHE", str(tmp_path / "shared_cache"))  # the demo uses the cache the user set
    code, out, err = cli("demo", "--epochs", "1", "--out", tmp_path / "demo", "--quiet", "--device", "cpu")
    assert code == EXIT_OK, err
    assert "AUROC" in out and "shipped default model" in out
    assert (tmp_path / "demo" / "cae" / "model.json").exists()
    metrics = json.loads((tmp_path / "demo" / "cae_eval" / "metrics.json").read_text())
    assert 0 <= metrics["auroc"] <= 1 and metrics["n_abnormal"] > 0 and metrics["n_normal"] > 0
    assert (tmp_path / "demo" / "default_eval" / "scores.csv").exists()
    assert list((tmp_path / "shared_cache").rglob("*.npy")) and not (tmp_path / "demo" / "cache").exists()


def test_protocol_by_name_and_a_warning_when_the_model_trained_on_the_test_images(cli, shared_data, tmp_path):
    """A new user got 0.875 with the default model on nih_cxr14_talo, which it had trained on 60 % of: the bundle
    records its training images' hashes, so evaluate says so; --protocol gives the held-out test split instead."""
    code, out, err = cli("evaluate", "--data", shared_data / "nih_cxr14_talo", "--quiet", "--device", "cpu")
    assert code == 0
    warning = out.splitlines()[0]
    assert warning.startswith("warning:") and "among the model's training images" in warning
    assert int(warning.split()[1]) > 100  # the 60 % of the 200 normals that it trained on, less its hold-out
    code, out, err = cli("evaluate", "--protocol", "nih", "--quiet", "--device", "cpu", "--out", tmp_path)
    assert code == 0 and "warning" not in out and "nih: train 120 normal; test 80 normal + 98 abnormal" in err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n"] == 178 and metrics["n_training_images"] == 0
    result = cli("evaluate", "--protocol", "nope")
    cli.one_line_error(result, "not a protocol", "nih14")
