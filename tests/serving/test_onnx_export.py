"""ONNX export, for every registered detector: onnxruntime reproduces its scores and pictures on the bundled sample
images (tiny models trained here), the command writes a checked export, what cannot be exported says why, and
the scorer reads files and refuses tampered sidecars."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the ONNX tests need the onnx extra: pip install 'cxrad[onnx]'")
pytest.importorskip("onnxscript", reason="the ONNX tests need the onnx extra: pip install 'cxrad[onnx]'")

from cxrad.data import load_images  # noqa: E402
from cxrad.detectors import PatchCoreDetector, discover  # noqa: E402
from cxrad.errors import ExportError  # noqa: E402
from cxrad.frontends.cli import main  # noqa: E402
from cxrad.frontends.cli.common import EXIT_FATAL, EXIT_OK  # noqa: E402
from cxrad.serving.onnx_export import OnnxScorer, export_onnx, read_sidecar  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(discover()))
def test_onnxruntime_equals_pytorch_for_every_detector(kind, tmp_path, tiny_model, sample_test_files):
    det, _ = tiny_model(kind)
    reason = det.scoring_graph().not_exportable
    if reason:
        with pytest.raises(ExportError, match="cannot be exported"):
            export_onnx(det, tmp_path / "export")
        return
    onnx_path, sidecar = export_onnx(det, tmp_path / "export")
    images = np.asarray(load_images(sample_test_files, det.prep).images)
    assert len(images) == 72
    expected = det.outputs(images)
    scorer = OnnxScorer(tmp_path / "export", threads=1)
    got = scorer._run(images)
    assert set(got) == set(expected) >= {"score", *det.components}
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-4, err_msg=f"{kind} {name}")
    assert np.std(expected["score"]) > 0  # real, varying scores: the comparison means something
    doc, _ = read_sidecar(onnx_path)
    assert doc["kind"] == kind and doc["threshold"] == det.threshold_
    assert (scorer.predict(images) == (expected["score"] > det.threshold_)).all()
    # the same front door as the detector: files in, the score table out
    table = scorer.score(sample_test_files[:5])
    np.testing.assert_allclose(table["score"], det.score(sample_test_files[:5])["score"], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_patchcore_gaussian_export_equals_pytorch(tmp_path, tiny_model, sample_manifest, sample_test_files):
    knn, bundle = tiny_model("patchcore")
    # the same encoder with a per-position Gaussian instead of the memory bank
    det = PatchCoreDetector(**{**PatchCoreDetector.tiny, "method": "gaussian", "backbone": None}, seed=0,
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
    assert sidecar["outputs"] == ["box_residual", "top_residual", "score", "map", "recon", "features"]
    data = bytearray((tmp_path / "m.onnx").read_bytes())
    data[-1] ^= 1
    (tmp_path / "m.onnx").write_bytes(bytes(data))
    with pytest.raises(ExportError, match="checksum"):
        OnnxScorer(tmp_path / "m.onnx")


def test_anogan_export_is_refused_with_the_reason(tmp_path, tiny_model):
    det, _ = tiny_model("anogan")
    with pytest.raises(ExportError, match="gradient steps.*f-AnoGAN"):
        export_onnx(det, tmp_path / "x")


def test_export_of_a_missing_model_is_a_one_line_error(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == EXIT_FATAL
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cxrad: error:") and "nothing" in err[0]


def test_an_export_streams_two_batches_at_once_in_a_process_without_torch(tmp_path, tiny_model, sample_test_files):
    """`cxrad score` on an export needs cxrad, numpy and onnxruntime only: the streaming scorer, with one batch
    per core at once, runs in a child where importing torch fails, and gives the detector's scores."""
    import subprocess
    import sys
    det, _ = tiny_model("dae")
    export_onnx(det, tmp_path / "export")
    files = sample_test_files[:40]
    (tmp_path / "list.txt").write_text("\n".join(files) + "\n")
    child = f"""
import sys
sys.modules["torch"] = None  # import torch raises ImportError from here on
from cxrad.serving.onnx_export import OnnxScorer
from cxrad.serving.streaming import read_file_list, score_to_files
det = OnnxScorer({str(tmp_path / "export")!r}, threads=1)
summary = score_to_files(det, read_file_list({str(tmp_path / "list.txt")!r}), {str(tmp_path / "out")!r},
                         batch_size=8, threads=2)
assert summary.rows == 40 and summary.errors == 0
"""
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    from cxrad.serving.streaming import read_scores
    got = read_scores(tmp_path / "out" / "scores.csv").set_index("path").loc[files, "score"]
    np.testing.assert_allclose(got, det.score(files)["score"], rtol=1e-4, atol=1e-4)
