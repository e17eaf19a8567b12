"""Scoring a training snapshot (learning curves): each snapshot gets its own post-training fit (feature
Gaussian, latent KDE, calibration, normal scores), learnt from the same images as ``fit`` used."""
from __future__ import annotations

import numpy as np
import pytest

from cxrad.data import hold_out_normals
from cxrad.detectors import CAEDetector, DAEDetector, OpacityDetector, RegionalDetector


@pytest.mark.parametrize("cls, settings", [
    (OpacityDetector, {"width": 8, "depth": 3, "anatomy": True, "score_from": "both"}),
    (CAEDetector, {"latent_dim": 16}),
    (DAEDetector, {"width": 8, "depth": 3}),
])
def test_a_snapshot_is_scored_with_its_own_post_training_fit(cls, settings, small_sets, tmp_path):
    train, test = small_sets[32]
    det = cls(image_size=32, epochs=3, batch_size=16, device="cpu", checkpoint_dir=str(tmp_path / "run"),
              snapshot_every=30, **settings).fit(train)
    final = det.score_arrays(np.asarray(test.images))["score"]
    final_normals = det.normal_scores_.copy()
    fit_train, fit_val = hold_out_normals(train, det.val_fraction, det.seed)  # the split fit made
    arrays = (np.asarray(fit_train.images), np.asarray(fit_val.images))
    snaps = sorted((tmp_path / "run" / "snapshots").glob("samples-*.safetensors"))
    assert len(snaps) == 3

    meta = det.use_snapshot(snaps[0], *arrays)
    assert meta["epoch"] == 0
    assert not np.allclose(det.score_arrays(np.asarray(test.images))["score"], final, atol=1e-4)
    # the normal scores are the first snapshot's own, not the last epoch's
    assert not np.allclose(det.normal_scores_, final_normals, atol=1e-4)

    det.use_snapshot(snaps[-1], *arrays)  # the last epoch's weights: everything fit learnt comes back
    np.testing.assert_allclose(det.score_arrays(np.asarray(test.images))["score"], final, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(det.normal_scores_, final_normals, rtol=1e-4, atol=1e-5)


def test_a_detector_that_cannot_relearn_its_fitted_arrays_refuses_other_weights(small_sets):
    train, _ = small_sets[32]
    det = RegionalDetector(**RegionalDetector.tiny).fit(train)
    with pytest.raises(NotImplementedError, match="relearn"):
        det.use_weights({}, np.asarray(train.images), np.asarray(train.images))
