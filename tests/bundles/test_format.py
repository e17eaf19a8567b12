"""Model bundles: safetensors + JSON round trip, every documented field, and refusal of bad bundles."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil

import numpy as np
import pytest

from bundle_tools import resign
import torch
from safetensors.torch import load

from cxrad.bundles import FORMAT_VERSION, META_FILE, read_bundle, read_meta, write_bundle
from cxrad.data import fingerprint, load_images
from cxrad.errors import BundleError
from cxrad.detectors import load_detector
from cxrad.detectors.cae import CAEDetector


@pytest.fixture(scope="module")
def images(sample_manifest, cache_dir):
    df = sample_manifest[sample_manifest["orig_split"] == "test"].groupby("label").head(6)
    return load_images(df, CAEDetector(image_size=32).prep, cache_dir=cache_dir)


@pytest.fixture
def bundle(tiny_cae_bundle, tmp_path):
    """A private copy of the tiny bundle to damage."""
    return shutil.copytree(tiny_cae_bundle, tmp_path / "copy")


def weights_file(bundle):
    return bundle / json.loads((bundle / META_FILE).read_text())["weights"]["file"]


def _edit_json(path, **changes):
    doc = json.loads((path / META_FILE).read_text())
    for key, value in changes.items():
        *parents, leaf = key.split("__")
        target = doc
        for p in parents:
            target = target[p]
        target[leaf] = value
    (path / META_FILE).write_text(json.dumps(doc))
    if changes.keys() - {"format_version", "kind", "weights__sha256", "weights__file"}:
        resign(path)  # as a tool that knows the format: what is tested is the check of the values


def test_round_trip_gives_identical_scores(tiny_cae_bundle, images, tmp_path):
    det = load_detector(tiny_cae_bundle)
    first = det.score(images)
    again = load_detector(det.save(tmp_path / "again"))
    second = again.score(images)
    for col in ("score", "recon_error", "log_density", "percentile", "anomalous"):
        np.testing.assert_array_equal(first[col].to_numpy(), second[col].to_numpy(), err_msg=col)
    np.testing.assert_array_equal(again.normal_scores_, det.normal_scores_)
    assert again.thresholds_ == det.thresholds_ and again.kde_bandwidth_ == det.kde_bandwidth_
    # model.json and one weights file named by its hash; no temporary files
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == [META_FILE, weights_file(tmp_path / "again").name]


def test_bundle_holds_every_documented_field(tiny_cae_bundle):
    doc = json.loads((tiny_cae_bundle / META_FILE).read_text())
    assert doc["format"] == "cxrad-bundle" and doc["format_version"] == FORMAT_VERSION and doc["kind"] == "cae"
    arch = doc["architecture"]
    assert arch["name"] == "CAE-seed" and arch["channels"] == 3 and arch["latent_dim"] == 128
    assert arch["input_size"] == [32, 32] and arch["parameters"] > 0
    assert doc["preprocessing"] == {"size": 32, "resize": "stretch"}
    assert doc["threshold_rule"] == "quantile" and doc["thresholds"]["quantile"] == doc["threshold"]
    normal = doc["normal_scores"]
    assert len(normal) == doc["training_data"]["n_val"] and normal == sorted(normal)
    assert doc["environment"]["torch"] == torch.__version__ and "cxrad" in doc["environment"]
    assert len(doc["training_data"]["fingerprint"]) == 64 and doc["training_data"]["n_train"] > 0
    assert doc["params"]["epochs"] == 2 and len(doc["history"]["train_loss"]) == 2
    assert "device" not in doc["params"] and "cache_dir" not in doc["params"]  # runtime settings stay out
    data = weights_file(tiny_cae_bundle).read_bytes()
    assert doc["weights"]["sha256"] == hashlib.sha256(data).hexdigest() and doc["weights"]["bytes"] == len(data)
    tensors = load(data)
    assert tensors["model.kde_latents"].shape == (doc["training_data"]["n_train"], 128)  # KDE latents included
    assert any(k.startswith("model.net.encoder") for k in tensors)


def test_fingerprint_follows_the_training_images(sample_manifest, cache_dir):
    _fingerprint = fingerprint
    df = sample_manifest[(sample_manifest["orig_split"] == "train") & (sample_manifest["label"] == 0)]
    prep = CAEDetector(image_size=32).prep
    a = load_images(df.head(12), prep, cache_dir)
    assert _fingerprint(a) == _fingerprint(load_images(df.head(12)[::-1], prep, cache_dir))  # order-free
    assert _fingerprint(a) != _fingerprint(load_images(df.head(11), prep, cache_dir))
    # arrays without file hashes: fingerprinted by pixel content
    arr = np.asarray(a.images)
    from cxrad.data import ImageSet
    assert _fingerprint(ImageSet.from_arrays(arr)) == _fingerprint(ImageSet.from_arrays(arr[::-1]))
    assert _fingerprint(ImageSet.from_arrays(arr)) != _fingerprint(ImageSet.from_arrays(255 - arr))


def test_unknown_format_version_is_refused_clearly(bundle):
    _edit_json(bundle, format_version=FORMAT_VERSION + 1)
    with pytest.raises(BundleError, match=f"format version {FORMAT_VERSION + 1} is not supported"):
        load_detector(bundle)
    _edit_json(bundle, format_version="1")
    with pytest.raises(BundleError, match="not supported"):
        read_meta(bundle)
    _edit_json(bundle, format_version=1)  # the first format had no checksum: refused unless upgrading
    with pytest.raises(BundleError, match="no weights checksum"):
        load_detector(bundle)


def test_pickle_in_place_of_safetensors_is_refused_without_running_it(bundle, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    for payload in (pickle.dumps({"weights": Payload()}), _torch_file()):
        data = payload
        weights_file(bundle).write_bytes(data)
        _edit_json(bundle, weights__sha256=hashlib.sha256(data).hexdigest())  # even with a matching checksum
        with pytest.raises(BundleError, match="safetensors"):
            load_detector(bundle)
    assert not marker.exists()


def _torch_file() -> bytes:
    import io
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)  # a torch (zip + pickle) file
    return buf.getvalue()


@pytest.mark.parametrize("change, message", [
    ({"params__channels": 1}, "do not fit"),
    ({"params__image_size": 64}, "preprocessing"),
    ({"params__image_size": 64, "preprocessing__size": 64}, "do not fit"),
    ({"params__latent_dim": 64}, "do not fit"),
])
def test_wrong_architecture_is_refused(bundle, change, message):
    _edit_json(bundle, **change)
    with pytest.raises(BundleError, match=message) as info:
        load_detector(bundle)
    assert "\n" not in str(info.value)


def test_one_channel_weights_loaded_as_three_channels(sample_manifest, cache_dir, tmp_path):
    df = sample_manifest[(sample_manifest["orig_split"] == "train") & (sample_manifest["label"] == 0)].head(12)
    one = CAEDetector(image_size=32, epochs=1, channels=1, device="cpu")
    path = one.fit(load_images(df, one.prep, cache_dir)).save(tmp_path / "one")
    assert load_detector(path).channels == 1
    _edit_json(path, params__channels=3)
    with pytest.raises(BundleError, match="do not fit a cae"):
        load_detector(path)


def test_other_bad_bundles(bundle, tmp_path):
    with pytest.raises(BundleError, match="no such model bundle or shipped model"):
        load_detector(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="not a cxrad model bundle"):
        load_detector(tmp_path / "empty")
    (tmp_path / "notjson").mkdir()
    (tmp_path / "notjson" / META_FILE).write_text("{oops")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_detector(tmp_path / "notjson")
    for kind in ("cxrad.cli:main", "os"):  # a bundle cannot name code to import
        _edit_json(bundle, kind=kind)
        with pytest.raises(BundleError, match="unknown detector kind"):
            load_detector(bundle)
    _edit_json(bundle, kind="cae", params__evil="x")
    with pytest.raises(BundleError, match="unknown"):
        load_detector(bundle)
    doc = json.loads((bundle / META_FILE).read_text())
    del doc["params"]["evil"], doc["thresholds"]
    resign(bundle, doc)
    with pytest.raises(BundleError, match="malformed"):
        load_detector(bundle)


def test_missing_or_damaged_weights(bundle, rewrite_weights):
    rewrite_weights(bundle, lambda t: {k: v for k, v in t.items() if k != "model.kde_latents"})
    with pytest.raises(BundleError, match="do not fit"):
        load_detector(bundle)
    data = weights_file(bundle).read_bytes()[:1000]
    weights_file(bundle).write_bytes(data)
    _edit_json(bundle, weights__sha256=hashlib.sha256(data).hexdigest())
    with pytest.raises(BundleError, match="unreadable safetensors"):
        load_detector(bundle)
    weights_file(bundle).unlink()
    with pytest.raises(BundleError, match="file not found"):
        load_detector(bundle)


def test_one_flipped_bit_in_the_weights_is_caught(bundle):
    path = weights_file(bundle)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="do not match their checksum"):
        load_detector(bundle)


@pytest.mark.parametrize("change", [{"threshold": float("nan")}, {"thresholds__quantile": float("inf")},
                                    {"normal_scores": [0.1, float("nan")]}, {"normal_scores": [0.1]}])
def test_non_finite_thresholds_or_normal_scores_are_refused(bundle, change):
    _edit_json(bundle, **change)
    with pytest.raises(BundleError, match="finite"):
        load_detector(bundle)


def test_a_kill_between_the_two_writes_leaves_the_previous_bundle(tiny_cae_bundle, tmp_path, monkeypatch, images):
    """Weights are written first under a new name; model.json (the commit point) names them. A kill before the
    commit leaves the old model.json pointing at the old weights, which are still there."""
    import cxrad.bundles.format as bundle_module
    old = load_detector(tiny_cae_bundle)
    path = old.save(tmp_path / "b")
    before = old.decision_function(images)
    other = load_detector(tiny_cae_bundle)
    other.model_.encoder[0][0].weight.data += 1.0  # a different model
    real = bundle_module.atomic_write_text

    def die(p, text):
        raise KeyboardInterrupt
    monkeypatch.setattr(bundle_module, "atomic_write_text", die)
    with pytest.raises(KeyboardInterrupt):
        other.save(path)
    monkeypatch.setattr(bundle_module, "atomic_write_text", real)
    np.testing.assert_array_equal(load_detector(path).decision_function(images), before)
    other.save(path)  # the next write completes and removes the orphaned weights
    assert len(list(path.glob("weights-*.safetensors"))) == 1
    assert not np.array_equal(load_detector(path).decision_function(images), before)


def test_model_json_that_is_not_a_regular_file_is_refused_without_hanging(bundle, tmp_path):
    meta = bundle / META_FILE
    meta.unlink()
    os.mkfifo(meta)
    with pytest.raises(BundleError, match="not a regular file"):
        load_detector(bundle)
    meta.unlink()
    meta.symlink_to("/dev/zero")
    with pytest.raises(BundleError, match="not a regular file"):
        read_meta(bundle)


def test_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(BundleError, match="not a folder"):
        write_bundle(tmp_path / "f", "cae", {}, {})


def test_read_bundle_returns_verified_tensors(tiny_cae_bundle):
    doc, tensors = read_bundle(tiny_cae_bundle)
    assert doc["kind"] == "cae" and "model.kde_latents" in tensors
