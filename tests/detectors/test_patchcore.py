"""Patch features on the DAE's encoder: a DAE bundle as the backbone, both ways of modelling the patches."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrad.errors import UserError
from cxrad.detectors import DAEDetector, PatchCoreDetector, load_detector
from cxrad.detectors.patchcore.detector import greedy_coreset

DAE = {"image_size": 32, "width": 8, "depth": 3}


@pytest.fixture(scope="module")
def dae_bundle(small_sets, tmp_path_factory):
    det = DAEDetector(**DAE, epochs=2, batch_size=16, device="cpu").fit(small_sets[32][0])
    return det.save(tmp_path_factory.mktemp("dae") / "dae")


@pytest.mark.parametrize("method", ["knn", "gaussian"])
def test_a_dae_bundle_is_the_backbone_as_it_is(method, dae_bundle, small_sets, tmp_path):
    train, test = small_sets[32]
    det = PatchCoreDetector(**DAE, backbone=str(dae_bundle), method=method, device="cpu").fit(train)
    for k, v in load_detector(dae_bundle).model_.state_dict().items():
        assert torch.equal(det.encoder_.state_dict()[k], v), k  # not trained further
    table = det.score(test)
    assert np.isfinite(table["score"]).all() and (table["top_patches"] <= table["max_patch"] + 1e-9).all()
    assert det.outputs(np.asarray(test.images[:2]))["map"].shape == (2, 32, 32)
    again = load_detector(det.save(tmp_path / "pc"))
    np.testing.assert_allclose(again.decision_function(test), table["score"], rtol=1e-5)


def test_a_training_image_is_in_the_memory_bank_and_a_perturbed_one_is_not(dae_bundle, small_sets):
    train, _ = small_sets[32]
    det = PatchCoreDetector(**DAE, backbone=str(dae_bundle), coreset=1.0, device="cpu").fit(train)
    images = np.asarray(train.images[:8])  # the first images are training images (the hold-out is by patient)
    in_bank = det.decision_function(images) < 0.01  # zero up to the float32 rounding of cdist
    assert in_bank.sum() >= 5  # every patch of a training image has itself as nearest neighbour
    noisy = np.clip(images + np.random.default_rng(0).normal(0, 40, images.shape), 0, 255).astype(np.uint8)
    assert (det.decision_function(noisy)[in_bank] > 0.5).all()


def test_a_backbone_of_another_shape_is_refused(dae_bundle, small_sets):
    with pytest.raises(UserError, match="width"):
        PatchCoreDetector(image_size=32, width=16, depth=3, backbone=str(dae_bundle), device="cpu").fit(
            small_sets[32][0])


def test_greedy_coreset_covers_the_points():
    rng = np.random.default_rng(0)
    clusters = np.concatenate([rng.normal(c, 0.01, size=(50, 4)) for c in (0, 5, 10, -5)]).astype(np.float32)
    chosen = greedy_coreset(torch.from_numpy(clusters), 4, seed=0)
    assert sorted({int(i) // 50 for i in chosen}) == [0, 1, 2, 3]  # one point from every cluster
