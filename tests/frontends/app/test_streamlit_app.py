"""The dashboard page, driven by Streamlit's AppTest (no browser): note, model choice, operating points,
uploads, table and errors; and the `cxrad app` command's checks."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from cxrad.frontends.app import logic  # noqa: E402
from cxrad.frontends.app.launch import ENV_MAX_MB, ENV_MODEL, streamlit_command  # noqa: E402

SCRIPT = Path(logic.__file__).with_name("streamlit_app.py")
CORRUPT = b"\x89PNG\r\n\x1a\n" + b"truncated garbage" * 30


@pytest.fixture
def app(tiny_cae_bundle, monkeypatch):
    monkeypatch.setenv(ENV_MODEL, str(tiny_cae_bundle))
    return AppTest.from_file(str(SCRIPT), default_timeout=120).run()


@pytest.fixture(scope="module")
def xray(shared_data) -> tuple[str, bytes]:
    path = shared_data / "kermany224" / "test" / "NORMAL"
    first = sorted(path.glob("*.jpeg"))[0]
    return first.name, first.read_bytes()


def _metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_page_shows_the_note_and_the_model_from_the_environment(app, tiny_cae_bundle):
    assert not app.exception
    assert any("not a diagnostic device" in w.value for w in app.warning)
    (path_box,) = [t for t in app.text_input if t.label == "Bundle folder"]
    assert path_box.value == str(tiny_cae_bundle)
    (radio,) = app.radio
    assert radio.value == "stored"
    assert radio.options == ["Model's stored threshold", "Target specificity", "Target sensitivity"]
    stored = [s for s in app.selectbox if s.label == "Stored threshold"][0]
    assert stored.value == "quantile"
    assert len(app.file_uploader) == 1 and app.file_uploader[0].accept_multiple_files
    assert app.file_uploader[0].proto.max_upload_size_mb == logic.DEFAULT_MAX_UPLOAD_MB


def test_the_upload_cap_reaches_the_page(tiny_cae_bundle, monkeypatch, xray):
    monkeypatch.setenv(ENV_MODEL, str(tiny_cae_bundle))
    monkeypatch.setenv(ENV_MAX_MB, "1")
    at = AppTest.from_file(str(SCRIPT), default_timeout=120).run()
    assert at.file_uploader[0].proto.max_upload_size_mb == 1
    big = xray[1] + b"\0" * (1024 * 1024)  # a valid JPEG padded past 1 MB
    at.file_uploader[0].set_value((xray[0], big, "image/jpeg")).run()
    assert any("too large" in e.value for e in at.error)


def test_upload_gives_verdict_heatmap_table_and_an_error_beside_the_bad_file(app, xray, tiny_cae_bundle):
    from cxrad.detectors import load_detector

    app.file_uploader(key="uploads").set_value([(xray[0], xray[1], "image/jpeg"),
                                               ("broken.png", CORRUPT, "image/png")]).run()
    assert not app.exception
    det = load_detector(tiny_cae_bundle)
    (expected,) = logic.score_uploads(det, [xray])
    verdict = "ANOMALOUS" if expected.score > det.threshold_ else "NORMAL"
    assert any(f"Verdict: {verdict}" in m.value for m in app.markdown)
    assert _metric(app, "Anomaly score") == f"{expected.score:.4g}"
    assert _metric(app, "Percentile among normals") == f"{expected.percentile:.0f}"
    captions = [c for im in app.image for c in im.captions]
    assert "Anomaly heatmap" in captions and "Uploaded image" in captions
    assert any(c.startswith("Reconstruction") for c in captions)
    (err,) = app.error
    assert "broken\\.png" in err.value and "not a readable image" in err.value and "BytesIO" not in err.value
    table = app.dataframe[0].value
    assert list(table["path"]) == [xray[0], "broken.png"] and table["error"].iloc[1]
    assert table["anomalous"].iloc[0] == (verdict == "ANOMALOUS") and pd.isna(table["anomalous"].iloc[1])
    assert any(b.label == "Download results (CSV)" for b in app.get("download_button"))


def test_target_specificity_moves_the_threshold(app, xray, tiny_cae_bundle):
    from cxrad.detectors import load_detector
    from cxrad.detectors.thresholds import quantile_threshold

    det = load_detector(tiny_cae_bundle)
    app.file_uploader(key="uploads").set_value((xray[0], xray[1], "image/jpeg"))
    app.radio[0].set_value("specificity").run()
    box = [n for n in app.number_input if n.label == "Target specificity"][0]
    box.set_value(0.5).run()
    t = quantile_threshold(det.normal_scores_, 0.5)
    assert (det.normal_scores_ <= t).mean() >= 0.5 > (det.normal_scores_ < t).mean()
    assert _metric(app, "Threshold") == f"{t:.4g}"
    score = float(_metric(app, "Anomaly score"))
    assert any(("ANOMALOUS" if score > t else "NORMAL") in m.value for m in app.markdown)
    assert not app.dataframe  # one file: no table


def test_target_sensitivity_needs_abnormal_calibration_images(app, xray, shared_data):
    app.file_uploader(key="uploads").set_value((xray[0], xray[1], "image/jpeg"))
    app.radio[0].set_value("sensitivity").run()
    assert any("known to be abnormal" in w.value for w in app.warning)
    assert not any("Verdict: ANOMALOUS" in m.value or "Verdict: NORMAL" in m.value for m in app.markdown)
    labels = pd.read_csv(shared_data / "all_labels.csv", dtype=str, keep_default_na=False)
    abn = labels[(labels.source == "kermany224") & (labels.label == "abnormal") & (labels.orig_split == "train")]
    files = [(Path(f).name, (shared_data / f).read_bytes(), "image/jpeg") for f in abn.file.head(6)]
    app.file_uploader(key="calibration").set_value(files).run()
    assert not app.exception and not any("known to be abnormal" in w.value for w in app.warning)
    assert any("Verdict:" in m.value and "no operating point" not in m.value for m in app.markdown)
    assert "6 abnormal" in next(m.help for m in app.metric if m.label == "Threshold")


def test_a_bad_bundle_path_is_reported(app, tmp_path):
    (path_box,) = [t for t in app.text_input if t.label == "Bundle folder"]
    path_box.set_value(str(tmp_path)).run()
    assert any("Cannot load the model" in e.value and "not a cxrad model bundle" in e.value for e in app.error)
    assert not app.file_uploader  # the page stops before the uploader


def test_without_a_model_setting_the_shipped_default_is_used(monkeypatch):
    from cxrad.bundles import available, default_name

    monkeypatch.delenv(ENV_MODEL, raising=False)
    at = AppTest.from_file(str(SCRIPT), default_timeout=120).run()
    assert not at.exception
    model = [s for s in at.selectbox if s.label == "Model"][0]
    if available():
        assert model.value == default_name() and len(at.file_uploader) == 1
    else:  # nothing shipped yet: the page asks for a bundle folder
        assert model.value == "A bundle folder (path)" and not at.file_uploader
        assert any("bundle" in i.value for i in at.info)


def test_cxrad_app_rejects_a_missing_model_before_starting(tmp_path, capsys):
    from cxrad.frontends.cli import main

    assert main(["app", "--model", str(tmp_path / "nope")]) == 1
    assert "no such model bundle" in capsys.readouterr().err
    assert main(["app", "--port", "0"]) == 1
    cmd = streamlit_command(8600, 12)  # what `cxrad app` runs: local only, uploads capped
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--server.maxUploadSize") + 1] == "12"
