"""``cxrad report``: every figure exists at its size and is not blank, the HTML embeds them and the tables,
detectors without reconstructions/features still get a report, and Chromium renders the page."""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

SAMPLES = Path(__file__).resolve().parents[3] / "src" / "cxrad" / "data" / "samples"
EXPECTED_SIZES = {  # pixels (width, height), as promised for the PNGs
    "loss_curves": (900, 480), "examples_normal_most": (1000, 640), "examples_normal_least": (1000, 640),
    "examples_abnormal_most": (1000, 640), "examples_abnormal_least": (1000, 640),
    "score_densities": (1200, 460), "roc_pr": (1200, 540), "tsne": (820, 700), "confusion_matrix": (560, 480),
}
BLUE, RED = (0x1F, 0x77, 0xB4), (0xD6, 0x27, 0x28)  # the class colours


def _assert_not_blank(path: Path, min_colours: int = 30) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB"))
    assert rgb.std() > 10, f"{path.name} looks blank (pixel sd {rgb.std():.1f})"
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    colours = len(np.unique(packed))
    assert colours >= min_colours, f"{path.name} has only {colours} distinct colours"
    return rgb


def _near(rgb: np.ndarray, colour, tol: int = 12) -> int:
    return int((np.abs(rgb.astype(int) - np.array(colour)).max(-1) <= tol).sum())


@pytest.fixture(scope="module")
def cli_report(tiny_cae_bundle, cache_dir, tmp_path_factory):
    """The report made by the CLI, end to end, on the bundled test images (normal, pneumonia, COVID-19)."""
    from cxrad.frontends.cli import main
    out = tmp_path_factory.mktemp("report")
    rc = main(["report", "--model", str(tiny_cae_bundle), "--data", str(SAMPLES), "--split", "test",
               "--out", str(out), "--examples", "3", "--max-tsne", "60", "--cache-dir", str(cache_dir),
               "--quiet", "--device", "cpu"])
    assert rc == 0
    return out


def test_cli_writes_every_figure_at_its_size_and_not_blank(cli_report):
    for name, size in EXPECTED_SIZES.items():
        path = cli_report / f"{name}.png"
        assert path.exists(), f"missing {name}.png"
        assert Image.open(path).size == size, name
        _assert_not_blank(path)
    # the curves and maps are drawn in the class colours
    assert _near(np.asarray(Image.open(cli_report / "score_densities.png").convert("RGB")), RED) > 200
    assert _near(np.asarray(Image.open(cli_report / "tsne.png").convert("RGB")), BLUE, 12) > 100
    # evaluate's outputs sit beside the report
    for name in ("scores.csv", "metrics.json", "by_source.csv", "by_finding.csv", "class_means.csv",
                 "recall_auroc.csv"):
        assert (cli_report / name).exists(), name


def test_html_is_self_contained_and_embeds_every_figure_and_table(cli_report):
    html = (cli_report / "report.html").read_text()
    embedded = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', html)
    assert {name for name, _ in embedded} == set(EXPECTED_SIZES)
    for name, data in embedded:  # each is the PNG written beside it
        assert base64.b64decode(data) == (cli_report / f"{name}.png").read_bytes(), name
    # opens offline: nothing to fetch, no scripts
    assert not re.search(r'(src|href)="(https?:)?//', html) and "<script" not in html and "<link" not in html
    for table in ("recall_auroc", "class_means", "by_source", "by_finding"):
        assert f'id="table-{table}"' in html
    metrics = json.loads((cli_report / "metrics.json").read_text())
    assert f"{metrics['auroc']:.3f}" in html
    assert "not a diagnostic device" in html
    for finding in ("COVID-19", "viral pneumonia", "covid_hannover", "recon_error_mean"):
        assert finding in html


def test_recall_auroc_table_agrees_with_the_scores(cli_report):
    scores = pd.read_csv(cli_report / "scores.csv", keep_default_na=False)
    scores = scores[scores["error"] == ""]
    abnormal = scores.loc[scores["label"] == 1, "score"].astype(float)
    normal = scores.loc[scores["label"] == 0, "score"].astype(float)
    table = pd.read_csv(cli_report / "recall_auroc.csv")
    metrics = json.loads((cli_report / "metrics.json").read_text())
    assert "quantile" in set(table["threshold_rule"]) and table["active"].sum() == 1
    for _, row in table.iterrows():
        assert row["recall"] == pytest.approx((abnormal > row["threshold"]).mean())
        assert row["specificity"] == pytest.approx((normal <= row["threshold"]).mean())
        assert row["auroc"] == pytest.approx(metrics["auroc"])
        assert row["recon_error_above"] > 0  # the CAE's pair of component thresholds


def test_detector_without_reconstruction_features_or_history(tiny_cae_bundle, sample_manifest, cache_dir,
                                                             tmp_path):
    """Anomaly maps stand in for reconstructions; t-SNE and loss curves are skipped with a note."""
    from cxrad.data import load_images
    from cxrad.detectors.cae import CAEDetector
    from cxrad.detectors.thresholds import operating_point
    from cxrad.frontends.report import build_report

    class MapOnly(CAEDetector):  # a scoring graph with a map but no reconstruction and no features
        def scoring_graph(self):
            graph = super().scoring_graph()
            graph.outputs = ("recon_error", "log_density", "score", "map")
            return graph

    det = MapOnly.load(tiny_cae_bundle, device="cpu")
    det.history_ = {}
    det.set_operating_point(operating_point(det, "specificity", target=0.8))  # a second stored threshold, active
    test = sample_manifest[sample_manifest["orig_split"] == "test"]
    part = pd.concat([test[test["label"] == 0].head(10), test[test["label"] == 1].head(10)])
    images = load_images(part, det.prep, cache_dir=cache_dir)
    rep = build_report(det, images, tmp_path, examples=2)
    assert "tsne" not in rep.figures and "loss_curves" not in rep.figures
    assert not (tmp_path / "tsne.png").exists()
    notes = " ".join(rep.notes)
    assert "exposes no features" in notes and "anomaly map" in notes and "no training history" in notes
    path = rep.figures["examples_abnormal_most"]
    assert Image.open(path).size == EXPECTED_SIZES["examples_abnormal_most"]
    rgb = _assert_not_blank(path)
    assert _near(rgb, (252, 255, 164), 40) + _near(rgb, (0, 0, 4), 10) > 50  # inferno heatmap colours
    assert rep.metrics["n"] == 20 and "not a diagnostic device" in rep.html.read_text()
    table = rep.tables["recall_auroc"]
    assert set(table["threshold_rule"]) == {"quantile", "specificity@0.8"}
    assert table.loc[table["active"], "threshold_rule"].tolist() == ["specificity@0.8"]


def test_report_rejects_images_at_the_wrong_size(tiny_cae_bundle, tmp_path):
    from cxrad.data import ImageSet
    from cxrad.frontends.report import build_report
    images = ImageSet.from_arrays(np.zeros((4, 64, 64), np.uint8), labels=[0, 0, 1, 1])
    with pytest.raises(ValueError, match="expects 32x32"):
        build_report(str(tiny_cae_bundle), images, tmp_path)


@pytest.mark.browser
def test_report_renders_in_headless_chromium(cli_report, tmp_path):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("Debian's chromium is not installed (`make browsers` installs it as root)")
    shot = tmp_path / "shot.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--hide-scrollbars", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
           "--window-size=1280,2000", (cli_report / "report.html").resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert shot.exists(), "chromium wrote no screenshot"
    rgb = np.asarray(Image.open(shot).convert("RGB"))
    assert rgb.shape[:2] == (2000, 1280)
    assert rgb.std() > 20
    assert _near(rgb, (0xFF, 0xF4, 0xD6), 3) > 5000  # the research-tool notice box: the CSS was applied
    assert _near(rgb, BLUE, 25) > 300  # the loss curve and figures were decoded and drawn
    assert _near(rgb, (0, 0, 4), 12) + _near(rgb, (252, 255, 164), 40) > 500  # residual heatmaps


def test_tsne_subsample_keeps_class_proportions(sample_manifest):
    from cxrad.frontends.report import _tsne_sample
    ok = sample_manifest.reset_index(drop=True)
    idx = _tsne_sample(ok, 40, seed=0)
    assert len(idx) <= 41 and len(set(idx)) == len(idx)
    share = ok.loc[idx, "label"].mean()
    assert abs(share - ok["label"].mean()) < 0.05
    assert (_tsne_sample(ok, 10_000, seed=0) == ok.index.to_numpy()).all()


def test_a_dae_report_does_not_borrow_the_cae_write_ups_words(tiny_model, sample_manifest, cli_report, tmp_path):
    """The seed write-up's tables and the CAE's component captions belong to a CAE report only."""
    from cxrad.data import load_images
    from cxrad.frontends.report import build_report
    det, _ = tiny_model("dae")
    test = sample_manifest[sample_manifest["orig_split"] == "test"]
    part = pd.concat([test[test["label"] == 0].head(8), test[test["label"] == 1].head(8)])
    html = build_report(det, load_images(part, det.prep), tmp_path, examples=2, max_tsne=0).html.read_text()
    html = re.sub(r"data:image/png;base64,[^\"]+", "", html)  # the words, not the pictures
    assert "seed write-up" not in html and "CAE" not in html and "log-density" not in html
    assert "box_residual" in html  # its own components' table
    cae = (cli_report / "report.html").read_text()
    assert "The seed write-up&#x27;s table" in cae and "log-density below" in cae
