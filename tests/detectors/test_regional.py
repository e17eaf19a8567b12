"""Regional statistics + Gaussian: the statistics, real separation of TB from normal, and diverged scores."""
from __future__ import annotations

import numpy as np
import pytest

from bundle_tools import resign
import torch

from cxrad.data import load_images
from cxrad.errors import BundleError
from cxrad.detectors import RegionalDetector, load_detector
from cxrad.detectors.regional import RegionalStatistics


def test_statistics_see_edges_and_refuse_a_bundle_of_another_grid(small_sets, tmp_path):
    stats = RegionalStatistics(grid=4, scales=(1, 2))
    f_flat = stats(torch.zeros(1, 1, 32, 32))
    f_ramp = stats(torch.linspace(-1, 1, 32).repeat(32, 1)[None, None])
    assert f_flat.shape == (1, 6, 4, 4)
    assert f_flat[:, 1].abs().max() == 0 and f_ramp[:, 1].min() > 0  # gradient energy: none on a flat image

    det = RegionalDetector(image_size=64).fit(small_sets[64][0])
    det.save(tmp_path / "m")
    meta = tmp_path / "m" / "model.json"
    meta.write_text(meta.read_text().replace('"grid": 4', '"grid": 5'))
    resign(tmp_path / "m")
    with pytest.raises(BundleError, match="do not fit"):
        load_detector(tmp_path / "m")


def test_regional_detector_separates_tb_from_normal(shared_data, cache_dir):
    """On real data it must do clearly better than chance: the tb protocol, patient-disjoint."""
    from sklearn.metrics import roc_auc_score

    from cxrad.data.protocols import load_protocol

    proto = load_protocol("tb", shared_data)
    det = RegionalDetector(image_size=64)
    det.fit(load_images(proto.train, det.prep, cache_dir=cache_dir))
    table = det.score(load_images(proto.test, det.prep, cache_dir=cache_dir))
    assert roc_auc_score(table["label"], table["score"]) > 0.55


def test_thresholds_ignore_a_diverged_validation_score(small_sets, monkeypatch):
    """A NaN score on a held-out normal image (a mapping that blew up) must not poison the thresholds."""
    from cxrad.detectors.regional.graph import RegionalGraph
    real = RegionalGraph.measure
    first = []

    def one_nan(self, images):
        out = real(self, images)
        if not first:  # the first held-out image of the first chunk
            first.append(1)
            out["score"] = out["score"].clone()
            out["score"][0] = float("nan")
        return out

    monkeypatch.setattr(RegionalGraph, "measure", one_nan)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        det = RegionalDetector(image_size=64).fit(small_sets[64][0])
    assert np.isfinite(det.normal_scores_).all() and np.isfinite(det.threshold_)
    assert len(det.normal_scores_) == det.n_val_ - 1
