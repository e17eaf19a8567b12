"""Issue 21: model.json is integrity-checked as a whole (format 3: its digest in the weights' safetensors
metadata; the shipped bundles pinned by digest), every value it holds is checked when it is re-signed by someone
who knows the format, weights of the wrong dtype are refused at load, and format-2 bundles still load."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from bundle_tools import edit, resign
from cxrad.bundles import FORMAT_VERSION, PRETRAINED_DIR, available, read_bundle
from cxrad.bundles.format import DOC_DIGEST_KEY, document_digest, safetensors_metadata
from cxrad.bundles.shipped import PINNED
from cxrad.detectors import load_detector
from cxrad.errors import BundleError


@pytest.fixture
def bundle(tiny_model, tmp_path):
    return shutil.copytree(tiny_model("dae")[1], tmp_path / "copy")


def doc_of(bundle) -> dict:
    return json.loads((bundle / "model.json").read_text())


def test_a_saved_bundle_records_the_digest_of_its_model_json(bundle):
    doc = doc_of(bundle)
    assert doc["format_version"] == FORMAT_VERSION == 3
    weights = (bundle / doc["weights"]["file"]).read_bytes()
    assert safetensors_metadata(weights)[DOC_DIGEST_KEY] == document_digest(doc)


@pytest.mark.parametrize("change", [
    lambda d: d["params"].update(image_size=2048),                          # 2.3 GB an image
    lambda d: d["preprocessing"].update(size=2048),
    lambda d: (d.update(threshold=1e308), d["thresholds"].update(quantile=1e308)),  # every verdict normal
    lambda d: d["normal_scores"].reverse(),
    lambda d: d.update(history={}),
])
def test_editing_only_model_json_is_caught(bundle, change):
    doc = doc_of(bundle)
    change(doc)
    (bundle / "model.json").write_text(json.dumps(doc))  # weights and their checksum untouched
    with pytest.raises(BundleError, match="model.json does not match the checksum its weights file records"):
        load_detector(bundle, device="cpu")


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(params=[1]), "params must be a mapping"),
    (lambda d: d.update(state=[1]), "state must be a mapping"),
    (lambda d: d.update(state="x"), "state must be a mapping"),
    (lambda d: d["state"].update(epochs_done="8"), "epochs_done"),
    (lambda d: d["params"].update(depth=0), "depth must be between"),
    (lambda d: d["params"].update(image_size=64.5), "image_size must be int"),
    (lambda d: d.update(thresholds="x"), "thresholds must map"),
    (lambda d: d["thresholds"].update(quantile="0.5"), "thresholds must map"),
    (lambda d: d["thresholds"].update(quantile=True), "thresholds must map"),
    (lambda d: d.update(normal_scores="xy"), "normal scores must be finite"),
    (lambda d: d.update(normal_scores=[0.1, None]), "normal scores must be finite"),
    (lambda d: d.update(history=[1]), "history must map"),
    (lambda d: d.update(training_data=[1]), "training_data"),
    (lambda d: d["training_data"].update(n_train=-3), "training_data"),
    (lambda d: d.update(preprocessing="x"), "preprocessing must be"),
    (lambda d: d["preprocessing"].update(extra=1), "preprocessing must be"),
    (lambda d: d["preprocessing"].update(size=5000), "preprocessing"),
])
def test_every_value_of_a_re_signed_model_json_is_checked(bundle, change, message):
    """Someone who knows the format can re-sign any model.json: each value must still be checked, with a one-line
    BundleError (these were raw TypeErrors, AttributeErrors or IndexErrors, or were silently accepted)."""
    edit(bundle, change)
    with pytest.raises(BundleError, match=message) as info:
        load_detector(bundle, device="cpu")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_weights_of_another_dtype_are_refused_at_load(bundle, dtype):
    from safetensors.torch import load
    doc = doc_of(bundle)
    tensors = load((bundle / doc["weights"]["file"]).read_bytes())
    resign(bundle, doc, {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()})
    with pytest.raises(BundleError, match=f"is {dtype}, the network needs torch.float32"):
        load_detector(bundle, device="cpu")


def test_a_format_2_bundle_still_loads_and_scores_the_same(bundle, sample_test_files):
    """A bundle written before format 3 (no model.json digest): loaded as it is, with every value checked."""
    from safetensors.torch import load, save
    det = load_detector(bundle, device="cpu")
    expected = det.score(sample_test_files[:6])["score"].to_numpy()
    doc = doc_of(bundle)
    weights = bundle / doc["weights"]["file"]
    data = save(load(weights.read_bytes()))  # no metadata, as format 2 wrote it
    weights.write_bytes(data)
    import hashlib
    doc["format_version"] = 2
    doc["weights"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (bundle / "model.json").write_text(json.dumps(doc))
    again = load_detector(bundle, device="cpu")
    np.testing.assert_array_equal(again.score(sample_test_files[:6])["score"].to_numpy(), expected)


def test_every_shipped_bundle_is_pinned_and_matches_its_pin():
    assert set(PINNED) == set(available())
    for name, path in available().items():
        doc, _ = read_bundle(path)
        assert (document_digest(doc), doc["weights"]["sha256"]) == PINNED[name]


@pytest.mark.parametrize("name", sorted(available()))
def test_an_altered_shipped_bundle_is_refused(name, tmp_path, monkeypatch):
    """Every shipped bundle is pinned. A format-2 one (no model.json digest of its own) relies on its pin to catch
    an edit; a format-3 one refuses an edit by its own digest, and one re-signed after an edit by its pin."""
    import cxrad.bundles.shipped as shipped
    fake = tmp_path / "pretrained"
    shutil.copytree(PRETRAINED_DIR, fake)
    monkeypatch.setattr(shipped, "PRETRAINED_DIR", fake)
    doc = json.loads((fake / name / "model.json").read_text())
    doc["threshold"] = doc["thresholds"][doc["threshold_rule"]] = 1e308
    (fake / name / "model.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="differs from the released files" if doc["format_version"] == 2 else
                       "does not match the checksum its weights file records"):
        load_detector(fake / name, device="cpu")
    resign(fake / name, doc)  # an edit made with the checksums redone: only the pin can tell
    with pytest.raises(BundleError, match="differs from the released files"):
        load_detector(fake / name, device="cpu")
    shutil.copytree(fake / name, fake / "unpinned")
    with pytest.raises(BundleError, match="not pinned"):
        load_detector(fake / "unpinned", device="cpu")
