"""The dashboard with hostile uploads (issue #13): a batch holding a bad DICOM (RescaleIntercept 'abc',
WindowWidth 0) or a LAB/CMYK TIFF shows an error card for that file and verdicts for the good ones, never a
traceback or a server path; the uploaders filter by type; the server is started locked down."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from cxrad.frontends.app import logic  # noqa: E402
from cxrad.frontends.app.launch import ENV_MODEL, streamlit_command  # noqa: E402
from fuzz import generate as G  # noqa: E402
from tiny_models import tiny_dae  # noqa: E402

SCRIPT = Path(logic.__file__).with_name("streamlit_app.py")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_dae(tmp_path_factory)


@pytest.fixture(scope="module")
def batch(shared_data) -> list[tuple[str, bytes, str]]:
    """Two good radiographs and the bad files of the issue, as (name, bytes, mime) uploads."""
    jpeg = sorted((shared_data / "kermany224" / "test" / "NORMAL").glob("*.jpeg"))[0]
    png = sorted((shared_data / "nih_cxr14_talo" / "No_findings").glob("*.png"))[0]
    grey = np.asarray(Image.open(png).convert("L"))[:128, :128]
    v = G.twelve_bit(grey)
    abc = G.patch(G.dicom(v, RescaleSlope="1.0", RescaleIntercept="0.0"), 0x00281052, b"DS", b"0.0", b"abc")
    ww0 = G.patch(G.dicom(v, WindowCenter="2048", WindowWidth="4000"), 0x00281051, b"DS", b"4000", b"0")
    g = Image.fromarray(grey)
    lab = G.save(Image.merge("LAB", [g, Image.new("L", g.size, 128), Image.new("L", g.size, 128)]), "TIFF")
    cmyk = G.save(g.convert("CMYK"), "TIFF")
    nan = grey.astype(np.float32)
    nan[5, 5] = np.nan
    return [(jpeg.name, jpeg.read_bytes(), "image/jpeg"), ("intercept_abc.dcm", abc, "application/dicom"),
            ("window_width_0.dcm", ww0, "application/dicom"), ("lab.tif", lab, "image/tiff"),
            ("cmyk.tiff", cmyk, "image/tiff"), ("nan.tif", G.save(Image.fromarray(nan, mode="F"), "TIFF"),
                                                 "image/tiff"), (png.name, png.read_bytes(), "image/png")]


EXPECTED_ERRORS = {"intercept_abc.dcm": "RescaleIntercept is not a number",
                   "window_width_0.dcm": "WindowWidth 0 is invalid", "lab.tif": "unsupported colour mode LAB",
                   "cmyk.tiff": "unsupported colour mode CMYK", "nan.tif": "NaN or infinite"}


def test_score_uploads_gives_an_error_per_bad_file_and_scores_the_good_ones(model, batch):
    from cxrad.detectors import load_detector

    det = load_detector(model, device="cpu")
    results = logic.score_uploads(det, [(name, data) for name, data, _ in batch])
    by_name = {r.name: r for r in results}
    for name, reason in EXPECTED_ERRORS.items():
        assert reason in by_name[name].error and by_name[name].score is None, name
    good = [batch[0][0], batch[-1][0]]
    for name in good:
        assert not by_name[name].error and np.isfinite(by_name[name].score)
    # the good files score as they do alone: the bad ones change nothing
    alone = logic.score_uploads(det, [(batch[0][0], batch[0][1])])[0]
    assert alone.score == pytest.approx(by_name[batch[0][0]].score, rel=1e-6)


def test_score_uploads_survives_an_unforeseen_decoder_failure(model, monkeypatch):
    from cxrad.detectors import load_detector

    det = load_detector(model, device="cpu")

    def broken(name, data, max_bytes):
        raise KeyError("/srv/secret/path")
    monkeypatch.setattr(logic, "decode_upload", broken)
    (r,) = logic.score_uploads(det, [("a.png", b"x")])
    assert r.error == "cannot read this file (KeyError)" and "/srv" not in r.error


def test_page_shows_error_cards_and_verdicts_never_a_traceback_or_a_path(model, batch, monkeypatch):
    monkeypatch.setenv(ENV_MODEL, str(model))
    at = AppTest.from_file(str(SCRIPT), default_timeout=180).run()
    uploader = at.file_uploader(key="uploads")
    assert {t.lstrip(".") for t in uploader.proto.type} == set(logic.SUFFIXES)
    uploader.set_value(batch).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == len(EXPECTED_ERRORS)
    plain = [e.replace("\\", "") for e in errors]  # file names are shown Markdown-escaped
    for name, reason in EXPECTED_ERRORS.items():
        assert any(name in e and reason in e for e in plain), (name, errors)
    verdicts = [m.value for m in at.markdown if "Verdict:" in m.value]
    assert len(verdicts) == 2 and all("ANOMALOUS" in v or "NORMAL" in v for v in verdicts)
    table = at.dataframe[0].value
    assert (table["error"] != "").sum() == len(EXPECTED_ERRORS) and table["anomalous"].isna().sum() == len(EXPECTED_ERRORS)
    shown = " ".join([*errors, *(m.value for m in at.markdown), *(w.value for w in at.warning),
                      *(str(v) for v in table["error"])])
    assert "Traceback" not in shown and str(model) not in shown and "/tmp" not in shown and "site-packages" \
        not in shown


def test_calibration_uploader_is_filtered_too(model, monkeypatch):
    monkeypatch.setenv(ENV_MODEL, str(model))
    at = AppTest.from_file(str(SCRIPT), default_timeout=180).run()
    at.radio[0].set_value("sensitivity").run()
    calib = at.file_uploader(key="calibration")
    assert {t.lstrip(".") for t in calib.proto.type} == set(logic.SUFFIXES)


def test_the_server_is_local_with_xsrf_and_hides_error_details():
    cmd = streamlit_command(8600, 12)
    settings = dict(zip(cmd[cmd.index("run") + 2::2], cmd[cmd.index("run") + 3::2]))
    assert settings["--server.address"] == "127.0.0.1"
    assert settings["--server.enableXsrfProtection"] == "true"
    assert settings["--server.maxUploadSize"] == "12"
    assert settings["--client.showErrorDetails"] == "none"
