"""ONNX export: onnxruntime reproduces each exportable detector's scores on the bundled sample images
(tiny models trained here), the command writes a checked export, and what cannot be exported says why."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the ONNX tests need the onnx extra: pip install 'cxrad[onnx]'")
pytest.importorskip("onnxscript", reason="the ONNX tests need the onnx extra: pip install 'cxrad[onnx]'")

from cxrad.cli import main  # noqa: E402
from cxrad.cli.common import EXIT_FATAL, EXIT_OK  # noqa: E402
from cxrad.data import load_images  # noqa: E402
from cxrad.errors import ExportError  # noqa: E402
from cxrad.export import OnnxScorer, export_onnx, read_sidecar  # noqa: E402
from cxrad.models import AnoGANDetector, PatchCoreDetector  # noqa: E402
from tiny_models import TINY_SETTINGS  # noqa: E402

EXPORTABLE = ["dae", "aeu", "cae", "fanogan", "regional", "fusion", "opacity", "patchcore"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", EXPORTABLE)
def test_onnxruntime_scores_equal_pytorch_scores(kind, tmp_path, tiny_model, sample_test_files):
    det, _ = tiny_model(kind)
    onnx_path, sidecar = export_onnx(det, tmp_path / "export")
    images = np.asarray(load_images(sample_test_files, det.prep).images)
    assert len(images) == 72
    expected = det.score_arrays(images)
    got = OnnxScorer(tmp_path / "export", threads=1).score_arrays(images)
    assert set(got) == set(expected) == {"score", *det.components}
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-4, err_msg=f"{kind} {name}")
    assert np.std(expected["score"]) > 0  # real, varying scores: the comparison means something
    doc, _ = read_sidecar(onnx_path)
    assert doc["kind"] == kind and doc["threshold"] == det.threshold_
    assert (OnnxScorer(onnx_path).predict(images) == (expected["score"] > det.threshold_)).all()
    if kind == "patchcore":  # its distance matrix grows with the batch: the sidecar caps it
        patches = det._patches(images[:1]).shape[1]
        assert 1 <= doc["max_batch"] <= 64
        assert 4 * doc["max_batch"] * patches * len(det.bank_) <= 2 ** 28 or doc["max_batch"] == 1


@pytest.mark.slow
def test_patchcore_gaussian_export_equals_pytorch(tmp_path, tiny_model, sample_manifest, sample_test_files):
    knn, bundle = tiny_model("patchcore")
    # the same encoder with a per-position Gaussian instead of the memory bank
    det = PatchCoreDetector(**{**TINY_SETTINGS["patchcore"], "method": "gaussian", "backbone": None}, seed=0,
                            device="cpu").set_params(warm_start=True)
    det.encoder_ = knn.encoder_
    normals = sample_manifest[(sample_manifest["orig_split"] == "train") & (sample_manifest["label"] == 0)]
    det.fit(load_images(normals.head(40), det.prep))
    assert det.encoder_ is knn.encoder_ and det.precision_.ndim == 3
    export_onnx(det, tmp_path / "g")
    images = np.asarray(load_images(sample_test_files, det.prep).images)
    expected, got = det.score_arrays(images), OnnxScorer(tmp_path / "g", threads=1).score_arrays(images)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-4, err_msg=name)
    assert np.std(expected["score"]) > 0


@pytest.mark.slow
def test_export_command_writes_a_checked_export_and_refuses_an_altered_one(tmp_path, capsys, tiny_model):
    _, bundle = tiny_model("dae")
    assert main(["export", str(bundle), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == EXIT_OK
    err = capsys.readouterr().err
    assert "checked against PyTorch" in err
    sidecar = json.loads((tmp_path / "m.cxrad.json").read_text())
    assert sidecar["inputs"] == [{"name": "images", "size": 32, "resize": "stretch"}]
    assert sidecar["outputs"] == ["box_residual", "top_residual", "score"]
    data = bytearray((tmp_path / "m.onnx").read_bytes())
    data[-1] ^= 1
    (tmp_path / "m.onnx").write_bytes(bytes(data))
    with pytest.raises(ExportError, match="checksum"):
        OnnxScorer(tmp_path / "m.onnx")


def test_anogan_export_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ExportError, match="gradient steps.*f-AnoGAN"):
        export_onnx(AnoGANDetector(image_size=32), tmp_path / "x")


def test_export_of_a_missing_model_is_a_one_line_error(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == EXIT_FATAL
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cxrad: error:") and "nothing" in err[0]
