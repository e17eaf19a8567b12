"""The estimator contract, run over every registered detector on small real images: fit -> score -> save/load
round trip equal -> predict -> not-fitted error -> bad-input error, and the scikit-learn conventions."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from cxrad.errors import BundleError, DataError, NotFittedError
from cxrad.models import REGISTRY, load_detector
from tiny_models import TINY_SETTINGS

TINY = TINY_SETTINGS


def test_every_registered_detector_has_tiny_settings():
    assert set(REGISTRY) <= set(TINY), f"add tiny settings for {set(REGISTRY) - set(TINY)}"


@pytest.fixture(scope="module", params=sorted(REGISTRY))
def fitted(request, small_sets):
    kind = request.param
    train, test = small_sets[32]
    det = REGISTRY[kind](**TINY[kind], seed=0, device="cpu", batch_size=16)
    return det.fit(train), test


def test_score_table_has_one_row_per_image_and_every_component(fitted):
    det, test = fitted
    table = det.score(test)
    assert len(table) == len(test) and (table["error"] == "").all()
    for col in ("path", "label", "score", "percentile", "anomalous", "error", *det.components):
        assert col in table, col
    assert np.isfinite(table["score"]).all() and table["percentile"].between(0, 100).all()
    assert (table["anomalous"].astype(bool) == (table["score"] > det.threshold_)).all()
    np.testing.assert_allclose(det.decision_function(test), table["score"])


def test_save_load_round_trip_scores_equal(fitted, tmp_path):
    det, test = fitted
    det.save(tmp_path / "m")
    again = load_detector(tmp_path / "m", device="cpu")
    assert type(again) is type(det) and again.get_params() == det.get_params() | {"device": "cpu"}
    np.testing.assert_allclose(again.decision_function(test), det.decision_function(test), rtol=1e-5, atol=1e-7)
    assert again.threshold_ == det.threshold_ and again.thresholds_ == det.thresholds_
    np.testing.assert_array_equal(again.predict(test), det.predict(test))


def test_predict_marks_unreadable_inputs_and_error_rows_have_no_verdict(fitted, tmp_path):
    det, test = fitted
    (tmp_path / "bad.png").write_bytes(b"not an image")
    paths = [str(test.frame["path"][0]), str(tmp_path / "bad.png")]
    table = det.score(paths)
    assert table["error"].iloc[1] and not table["error"].iloc[0]
    assert pd.isna(table["anomalous"].iloc[1]) and np.isnan(table["score"].iloc[1])
    assert det.predict(paths)[1] == -1 and det.predict(paths)[0] in (0, 1)


def test_unfitted_and_bad_input_errors(fitted):
    det, _ = fitted
    fresh = clone(det)
    assert not hasattr(fresh, "threshold_")
    with pytest.raises(NotFittedError, match="not fitted"):
        fresh.score(np.zeros((1, 32, 32), np.uint8))
    with pytest.raises(TypeError, match="cannot read images"):
        det.score({"not": "images"})
    with pytest.raises(DataError, match="no normal images"):
        fresh.fit(np.zeros((12, 32, 32), np.uint8), y=np.ones(12, int))


def test_sklearn_conventions(fitted):
    det, _ = fitted
    params = det.get_params()
    twin = clone(det)
    assert twin.get_params() == params and twin is not det
    twin.set_params(seed=7)
    assert twin.seed == 7 and det.seed == 0
    names = [s["name"] for s in type(det).settings()]
    assert list(params) == sorted(params) or set(params) == set(names)
    assert all(s["help"] for s in type(det).settings()), "every setting has a help line in the class docstring"
    fitted_attrs = [k for k in vars(det) if k.endswith("_") and not k.startswith("_")]
    assert {"threshold_", "thresholds_", "normal_scores_", "n_train_"} <= set(fitted_attrs)


def test_a_bundle_that_names_an_unknown_setting_is_refused(fitted, tmp_path):
    det, _ = fitted
    det.save(tmp_path / "m")
    meta = (tmp_path / "m" / "model.json")
    meta.write_text(meta.read_text().replace('"params": {', '"params": {"bogus": 1, ', 1))
    with pytest.raises(BundleError, match="bogus"):
        load_detector(tmp_path / "m")


def test_labels_given_with_paths_stay_with_their_files(small_sets, tmp_path):
    """y is matched to the paths before reading: an unreadable file does not shift the labels after it."""
    from cxrad.models import RegionalDetector
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
    from cxrad.models import FusionDetector
    train, test = small_sets[32]
    det = FusionDetector(**TINY["fusion"], seed=0, device="cpu", batch_size=16).fit(train)
    first = (dict(det.standardise_), det.decision_function(test))
    det.fit(train)
    assert det.standardise_ == first[0]
    np.testing.assert_allclose(det.decision_function(test), first[1], rtol=1e-5)
