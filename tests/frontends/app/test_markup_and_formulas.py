"""Issue 21, the dashboard: nothing from a file is rendered as Markdown (an error reason quoting a DICOM value
cannot make the browser fetch an image), the results download is formula-safe, and a typed relative bundle path
is shown as typed, never as the server's absolute path."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("streamlit")
import streamlit  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from cxrad.frontends.app import logic  # noqa: E402
from cxrad.frontends.app.launch import ENV_MODEL  # noqa: E402
from fuzz import generate as G  # noqa: E402
from tiny_models import tiny_dae  # noqa: E402

SCRIPT = Path(logic.__file__).with_name("streamlit_app.py")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
BEACON = b"![x](http://127.0.0.1:9/p.png)"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_dae(tmp_path_factory)


@pytest.fixture(scope="module")
def uploads(shared_data) -> list[tuple[str, bytes, str]]:
    png = sorted((shared_data / "nih_cxr14_talo" / "No_findings").glob("*.png"))[0]
    grey = np.asarray(Image.open(png).convert("L"))[:128, :128]
    dicom = G.dicom(G.twelve_bit(grey), WindowCenter="2048", WindowWidth="4000", VOILUTFunction="LINEAR")
    beacon = G.patch(dicom, 0x00281056, b"CS", b"LINEAR", BEACON)
    return [("=HYPERLINK(\"http://127.0.0.1:9\").png", png.read_bytes(), "image/png"),
            ("beacon.dcm", beacon, "application/dicom"), ("-plain.png", png.read_bytes(), "image/png")]


def test_error_reasons_are_escaped_and_the_download_is_formula_safe(model, uploads, monkeypatch):
    downloads = []
    real = streamlit.download_button

    def spy(label, data, *args, **kwargs):
        downloads.append(data)
        return real(label, data, *args, **kwargs)
    monkeypatch.setattr(streamlit, "download_button", spy)
    monkeypatch.setenv(ENV_MODEL, str(model))
    at = AppTest.from_file(str(SCRIPT), default_timeout=180).run()
    at.file_uploader(key="uploads").set_value(uploads).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "VOI" in errors[0]
    rendered = " ".join([*errors, *(m.value for m in at.markdown)])
    assert "](" not in rendered and "![" not in rendered, rendered  # no link, no image for the browser to fetch
    assert "\\!\\[x\\]\\(http" in errors[0].lower().replace("\\:", ":")  # shown, escaped
    (text,) = downloads
    cells = [row[0] for row in csv.reader(io.StringIO(text))][1:]
    assert cells[0].startswith("'=HYPERLINK") and cells[2].startswith("'-plain")  # text in a spreadsheet
    assert all(not c.startswith(("=", "+", "-", "@")) for c in cells)


def test_a_typed_relative_bundle_path_is_shown_as_typed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "not_a_model").mkdir(parents=True)
    monkeypatch.setenv(ENV_MODEL, "runs/not_a_model")
    at = AppTest.from_file(str(SCRIPT), default_timeout=120).run()
    shown = " ".join(e.value for e in at.error).replace("\\", "")
    assert "Cannot load the model" in shown and "runs/not_a_model" in shown
    assert str(tmp_path) not in shown  # the server's absolute path stays on the server
