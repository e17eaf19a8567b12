"""DDAD: two AE-U ensembles, one on normals and one on normals + an unlabelled pool; the benchmark pools hold no
test patient; the CLI takes the pool as --unlabelled."""
from __future__ import annotations

import numpy as np
import pytest

from cxrad.data import DataError, load_images, patient_groups
from cxrad.data.protocols import POOLED, pooled_protocol
from cxrad.detectors import DDADDetector, load_detector
from cxrad.frontends.cli import main

SMALL = dict(image_size=32, epochs=2, width=4, hidden=32, batch_size=16, device="cpu", seed=0)


@pytest.mark.parametrize("name", POOLED)
def test_no_pool_holds_a_test_patient(name, shared_data):
    proto = pooled_protocol(name, shared_data)
    assert len(proto.pool) and len(proto.test) and proto.pool["label"].nunique() >= 1
    # by patient (within source and split, and across splits of one source) and by file content
    assert not set(patient_groups(proto.pool)) & set(patient_groups(proto.test))
    assert not set(proto.pool["source"] + proto.pool["patient_id"]) & set(proto.test["source"] + proto.test["patient_id"]) \
        or name == "kermany224"  # kermany's patient ids are reused between its publisher splits
    assert not set(proto.pool["sha256"]) & set(proto.test["sha256"])
    assert not set(proto.train["sha256"]) & set(proto.test["sha256"])


def test_the_discrepancy_of_the_two_ensembles_is_the_score(small_sets):
    train, test = small_sets[32]
    pool = test  # normal and abnormal films only the unknown ensemble sees
    det = DDADDetector(**{**SMALL, "epochs": 4}, normative=2, unknown=2).fit(train, unlabelled=pool)
    assert len(det.normative_) == len(det.unknown_) == 2
    table = det.score(test)
    assert set(det.components) == {"inter", "intra", "rec"}
    np.testing.assert_allclose(table["score"], table["inter"])
    assert (table["inter"] > 0).all() and (table["intra"] > 0).all()
    # the unknown ensemble saw more images in fewer epochs: the same samples per network
    assert len(det.history_["unknown0.train_loss"]) < len(det.history_["normative0.train_loss"])
    same = DDADDetector(**{**SMALL, "epochs": 4}, normative=2, unknown=2).fit(train, unlabelled=pool)
    np.testing.assert_allclose(same.score(test)["score"], table["score"], rtol=1e-6)  # seeded


def test_a_pool_is_required_for_the_discrepancy_and_refused_by_other_detectors(small_sets):
    from cxrad.detectors import DAEDetector
    train, test = small_sets[32]
    with pytest.raises(ValueError, match="needs unknown >= 1"):
        DDADDetector(**SMALL, unknown=0).fit(train)
    with pytest.raises(DataError, match="needs an unlabelled pool"):
        DDADDetector(**SMALL, unknown=1).fit(train)
    with pytest.raises(DataError, match="does not learn from unlabelled films"):
        DAEDetector(image_size=32, epochs=1, device="cpu").fit(train, unlabelled=test)


def test_held_out_normals_are_left_out_of_the_pool(small_sets, monkeypatch):
    train, _ = small_sets[32]
    seen = {}
    real = DDADDetector.fit_arrays

    def spy(self, tr, val, sample_weight=None, unlabelled=None):
        seen["val"], seen["pool"] = val, unlabelled
        return real(self, tr, val, sample_weight, unlabelled)
    monkeypatch.setattr(DDADDetector, "fit_arrays", spy)
    DDADDetector(**SMALL, normative=1, unknown=1).fit(train, unlabelled=train)
    pool = {bytes(im) for im in seen["pool"]}
    assert len(seen["pool"]) == len(train) - len(seen["val"])
    assert not any(bytes(im) in pool for im in seen["val"])


def test_cli_trains_with_a_folder_of_unlabelled_films(sample_manifest, tmp_path, capsys):
    train = sample_manifest[(sample_manifest["orig_split"] == "train")].head(40)
    data = tmp_path / "train.csv"
    train.to_csv(data, index=False)
    pool = tmp_path / "site_backlog"
    pool.mkdir()
    for p in sample_manifest[sample_manifest["orig_split"] == "test"]["path"].head(12):
        (pool / p.replace("/", "_")).write_bytes(open(p, "rb").read())
    out = tmp_path / "model"
    code = main(["train", "--detector", "ddad", "--data", str(data), "--unlabelled", str(pool), "--out", str(out),
                 "--image-size", "32", "--epochs", "1", "--device", "cpu", "--quiet",
                 "--param", "width=4", "--param", "hidden=32", "--param", "normative=1", "--param", "unknown=1"])
    assert code == 0, capsys.readouterr().err
    assert "learning from 12 unlabelled films" in capsys.readouterr().err
    det = load_detector(out, device="cpu")
    assert det.n_unlabelled_ == 12 and len(det.unknown_) == 1
    images = load_images(train.head(3), det.prep)
    assert np.isfinite(det.score(images)["score"]).all()
