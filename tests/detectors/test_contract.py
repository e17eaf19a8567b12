"""The estimator contract, run over every registered detector (each trained once with its own ``tiny`` settings):
fit -> score -> save/load round trip equal -> predict -> not-fitted error -> bad-input error, scores that do not
depend on the batch, one forward pass for everything, and the scikit-learn conventions. Adding a detector folder
adds it to every test here."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bundle_tools import resign
from sklearn.base import clone

from cxrad.data import load_images
from cxrad.detectors import discover, load_detector
from cxrad.errors import BundleError, DataError, NotFittedError

KINDS = sorted(discover())
ROOT = Path(__file__).resolve().parents[2]


def test_every_registered_detector_declares_tiny_settings_a_readme_and_a_docs_entry():
    docs = (ROOT / "docs" / "detectors.md").read_text()
    for kind, cls in discover().items():
        assert cls.tiny, f"{kind}: declare tiny settings (the smallest that still train a real model)"
        folder = Path(__import__(cls.__module__, fromlist=["x"]).__file__).parent
        assert (folder / "README.md").exists(), f"{kind}: its folder needs a README.md naming the paper"
        assert f"`{kind}`" in docs, f"docs/detectors.md does not name the {kind} detector"


@pytest.fixture(params=KINDS)
def fitted(request, tiny_model, small_sets):
    det, bundle = tiny_model(request.param)
    return det, bundle, small_sets[det.image_size][1]


def test_score_table_has_one_row_per_image_and_every_component(fitted):
    det, _, test = fitted
    table = det.score(test)
    assert len(table) == len(test) and (table["error"] == "").all()
    for col in ("path", "label", "score", "percentile", "anomalous", "error", *det.components):
        assert col in table, col
    assert np.isfinite(table["score"]).all() and table["percentile"].between(0, 100).all()
    assert (table["anomalous"].astype(bool) == (table["score"] > det.threshold_)).all()
    np.testing.assert_allclose(det.decision_function(test), table["score"])
    assert table["score"].std() > 0  # real scores, so that the comparisons below mean something


def test_save_load_round_trip_scores_equal(fitted):
    det, bundle, test = fitted
    again = load_detector(bundle, device="cpu")
    assert type(again) is type(det) and again.get_params() == det.get_params() | {"device": "cpu"}
    np.testing.assert_allclose(again.decision_function(test), det.decision_function(test), rtol=1e-6, atol=1e-9)
    assert again.threshold_ == det.threshold_ and again.thresholds_ == det.thresholds_
    np.testing.assert_array_equal(again.predict(test), det.predict(test))


def test_scores_do_not_depend_on_the_batch(fitted):
    det, _, test = fitted
    images = np.asarray(test.images)
    together = det.score_arrays(images)
    alone = [det.score_arrays(images[i:i + 1]) for i in range(len(images))]
    for name in ("score", *det.components):
        np.testing.assert_allclose([a[name][0] for a in alone], together[name], rtol=1e-6, atol=1e-12,
                                   err_msg=name)


def test_one_forward_pass_gives_the_score_the_pictures_and_the_table(fitted, monkeypatch):
    det, _, test = fitted
    images = np.asarray(test.images)
    calls = []
    graph_type = type(det.scoring_graph())
    real = graph_type.measure
    monkeypatch.setattr(graph_type, "measure", lambda self, *x: calls.append(1) or real(self, *x))
    table, pictures = det.explain(test)
    assert len(calls) == -(-len(images) // 16)  # one call per chunk of 16 images, pictures included
    np.testing.assert_allclose(table["score"], det.score_arrays(images)["score"], rtol=1e-6)
    for name, value in pictures.items():
        assert len(value) == len(images) and np.isfinite(value).all(), name
        if name in ("map", "recon"):
            assert value.shape[1:] == images.shape[1:], name
    if "recon" in pictures:
        assert 0 <= pictures["recon"].min() and pictures["recon"].max() <= 1


def test_unreadable_inputs_get_no_verdict_and_rows_keep_input_order(fitted, tmp_path):
    det, _, test = fitted
    (tmp_path / "bad.png").write_bytes(b"not an image")
    good = [str(p) for p in test.frame["path"][:3]]
    paths = [good[0], str(tmp_path / "bad.png"), good[1], str(tmp_path / "missing.png"), good[2]]
    table = det.score(paths)
    assert list(table["path"]) == paths
    assert [bool(e) for e in table["error"]] == [False, True, False, True, False]
    assert table["anomalous"].isna().tolist() == [False, True, False, True, False]
    verdicts = det.predict(paths)
    assert np.isnan(verdicts[[1, 3]]).all() and set(verdicts[[0, 2, 4]]) <= {0.0, 1.0}


def test_unfitted_and_bad_input_errors(fitted):
    det, _, _ = fitted
    fresh = clone(det)
    assert not hasattr(fresh, "threshold_")
    with pytest.raises(NotFittedError, match="not fitted"):
        fresh.score(np.zeros((1, 32, 32), np.uint8))
    with pytest.raises(TypeError, match="cannot read images"):
        det.score({"not": "images"})
    with pytest.raises(DataError, match="no normal images"):
        fresh.fit(np.zeros((12, 32, 32), np.uint8), y=np.ones(12, int))


def test_sklearn_conventions_and_settings_checked_at_fit(fitted):
    det, _, _ = fitted
    params = det.get_params()
    twin = clone(det)
    assert twin.get_params() == params and twin is not det
    twin.set_params(seed=7)
    assert twin.seed == 7 and det.seed == 0
    assert all(s["help"] for s in type(det).settings()), "every setting has a help line in the class docstring"
    fitted_attrs = [k for k in vars(det) if k.endswith("_") and not k.startswith("_")]
    assert {"thresholds_", "normal_scores_", "n_train_"} <= set(fitted_attrs) and det.threshold_ is not None
    # as scikit-learn: a bad setting is accepted by set_params and clone, and refused by fit with its name
    bad = clone(det).set_params(image_size="big")
    bad = clone(bad)
    with pytest.raises(ValueError, match="image_size must be int"):
        bad.fit(np.zeros((12, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="batch_size must be between"):
        clone(det).set_params(batch_size=0).check_settings()


def test_a_bundle_that_names_an_unknown_setting_is_refused(fitted, tmp_path):
    det, _, _ = fitted
    det.save(tmp_path / "m")
    meta = (tmp_path / "m" / "model.json")
    meta.write_text(meta.read_text().replace('"params": {', '"params": {"bogus": 1, ', 1))
    resign(tmp_path / "m")
    with pytest.raises(BundleError, match="bogus"):
        load_detector(tmp_path / "m")


def test_labels_given_with_paths_stay_with_their_files(small_sets, tmp_path):
    """y is matched to the paths before reading: an unreadable file does not shift the labels after it."""
    from cxrad.detectors import RegionalDetector
    train, test = small_sets[32]
    normals = list(train.frame["path"][:12])
    abnormal = str(test.frame.loc[test.frame["label"] == 1, "path"].iloc[0])
    paths = normals[:3] + [str(tmp_path / "missing.png")] + normals[3:] + [abnormal]
    det = RegionalDetector(image_size=32).fit(paths, y=[0] * 13 + [1])
    assert det.n_train_ + det.n_val_ == 12  # the abnormal image is not trained on
    with pytest.raises(ValueError, match="14 images but 13 labels"):
        RegionalDetector(image_size=32).fit(paths, y=[0] * 13)


def test_refitting_starts_from_raw_scores(small_sets):
    """A second fit learns its calibration from raw member scores again, not from calibrated ones."""
    from cxrad.detectors import FusionDetector
    train, test = small_sets[32]
    det = FusionDetector(**FusionDetector.tiny, seed=0, device="cpu", batch_size=16).fit(train)
    first = (dict(det.standardise_), det.decision_function(test))
    det.fit(train)
    assert det.standardise_ == first[0]
    np.testing.assert_allclose(det.decision_function(test), first[1], rtol=1e-5)


@pytest.mark.parametrize("kind", ["dae", "opacity"])  # the weighted pool trains both (benchmarks/learning_curves.py)
def test_sample_weights_change_what_is_drawn_not_the_data(small_sets, kind):
    """Weights are a sampling distribution over the images: zero weight means never drawn (so the run differs
    from an unweighted one); detectors without weights refuse them."""
    from cxrad.detectors import RegionalDetector, detector_class
    cls = detector_class(kind)
    assert cls.supports_sample_weight
    train, test = small_sets[32]
    settings = dict(**cls.tiny, seed=0, device="cpu", batch_size=8, augment=False)
    plain = cls(**settings).fit(train)
    weights = np.r_[np.ones(len(train) // 2), np.zeros(len(train) - len(train) // 2)]
    weighted = cls(**settings).fit(train, sample_weight=weights)
    assert not np.allclose(plain.decision_function(test), weighted.decision_function(test))
    frame = train.frame.assign(sample_weight=weights)
    again = cls(**settings).fit(load_images(frame, weighted.prep))
    np.testing.assert_allclose(again.decision_function(test), weighted.decision_function(test), rtol=1e-5)
    with pytest.raises(DataError, match="does not take sampling weights"):
        RegionalDetector(image_size=32).fit(train, sample_weight=weights)
    with pytest.raises(ValueError, match="values of sample_weight"):
        cls(**settings).fit(list(train.frame["path"]), sample_weight=weights[:3])
