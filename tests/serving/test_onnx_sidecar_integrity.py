"""Issue 21: an ONNX export's sidecar is integrity-checked (format 3: its digest in the ONNX file's metadata) and
every value in it is checked with a one-line ExportError naming it; special files in an export are refused
without being read; format-2 exports still score."""
from __future__ import annotations

import copy
import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the ONNX tests need the onnx extra: pip install 'cxrad[onnx]'")
pytest.importorskip("onnxscript", reason="the ONNX tests need the onnx extra: pip install 'cxrad[onnx]'")

from cxrad.errors import ExportError  # noqa: E402
from cxrad.serving.onnx_export import (FORMAT_VERSION, SIDECAR_DIGEST_KEY, OnnxScorer, export_onnx,  # noqa: E402
                                       sidecar_digest)
from hostile_files import finishes  # noqa: E402


@pytest.fixture(scope="module")
def export(tiny_model, tmp_path_factory):
    det, _ = tiny_model("dae")
    folder = tmp_path_factory.mktemp("export") / "e"
    export_onnx(det, folder)
    return folder


@pytest.fixture
def copy_of(export, tmp_path):
    return shutil.copytree(export, tmp_path / "e")


def sidecar(folder) -> dict:
    return json.loads((folder / "model.cxrad.json").read_text())


def test_the_onnx_file_records_the_sidecar_digest(export):
    import onnx
    doc = sidecar(export)
    props = {p.key: p.value for p in onnx.load(str(export / "model.onnx")).metadata_props}
    assert doc["format_version"] == FORMAT_VERSION == 3 and props[SIDECAR_DIGEST_KEY] == sidecar_digest(doc)


@pytest.mark.parametrize("key, value", [("threshold", 1e308), ("normal_scores", [0.0, 1e9]),
                                        ("chunk", 1), ("components", [])])
def test_an_edited_sidecar_with_valid_values_is_caught(copy_of, key, value):
    doc = sidecar(copy_of)
    doc[key] = value
    if key == "threshold":
        doc["thresholds"][doc["threshold_rule"]] = value
    (copy_of / "model.cxrad.json").write_text(json.dumps(doc))
    with pytest.raises(ExportError, match="sidecar does not match the checksum"):
        OnnxScorer(copy_of)


@pytest.mark.parametrize("key, value, message", [
    ("threshold", float("nan"), "finite numbers"), ("threshold", float("inf"), "finite numbers"),
    ("normal_scores", [], "finite numbers"), ("normal_scores", [float("nan")] * 3, "finite numbers"),
    ("normal_scores", ["0.1", "0.2"], "finite numbers"), ("thresholds", [], "finite numbers"),
    ("inputs", [], "inputs must be"), ("inputs", [1], "inputs must be"), ("chunk", "x", "chunk"),
    ("chunk", True, "chunk"), ("components", [1], "components must be"), ("preprocessing", None, "preprocessing"),
    ("onnx", {"file": 1}, "onnx must name"), ("outputs", "score", "outputs must be"),
    ("threshold_rule", "other", "active threshold"),
])
def test_every_sidecar_value_is_checked_with_one_line(copy_of, key, value, message):
    doc = copy.deepcopy(sidecar(copy_of))
    doc[key] = value
    (copy_of / "model.cxrad.json").write_text(json.dumps(doc))
    with pytest.raises(ExportError, match=message) as info:
        OnnxScorer(copy_of)
    text = str(info.value)
    assert "\n" not in text and "Error:" not in text  # a reason, not an exception's name


@pytest.mark.parametrize("what", ["model.onnx", "model.cxrad.json"])
@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_special_files_in_an_export_are_refused_without_reading(copy_of, what, kind):
    target = copy_of / what
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/zero")
    finished, result = finishes(OnnxScorer, copy_of, timeout=20)
    assert finished and isinstance(result, ExportError) and "not a regular file" in str(result)


def test_a_format_2_export_still_scores(copy_of, tiny_model):
    """Exports written before format 3 carry no sidecar digest: they load as they are."""
    import onnx
    det, _ = tiny_model("dae")
    model = onnx.load(str(copy_of / "model.onnx"))
    del model.metadata_props[:]
    data = model.SerializeToString()
    (copy_of / "model.onnx").write_bytes(data)
    import hashlib
    doc = sidecar(copy_of)
    doc["format_version"] = 2
    doc["onnx"]["sha256"] = hashlib.sha256(data).hexdigest()
    (copy_of / "model.cxrad.json").write_text(json.dumps(doc))
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32), dtype=np.uint8)
    np.testing.assert_allclose(OnnxScorer(copy_of).score_arrays(images)["score"], det.score_arrays(images)["score"],
                               rtol=1e-4)
