"""The from-scratch detectors beyond the seeds (AE-U, coarse-noise DAE): protocol, persistence, resumable
training, and that they learn something real from normal chest X-rays."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrad.bundle import BundleError, detector_class, load_detector
from cxrad.data import load_images
from cxrad.models.dae.detector import coarse_noise, median_filter

KINDS = {"aeu": {"width": 8, "hidden": 64}, "dae": {"width": 8, "depth": 3}}


def _fit(kind, images, epochs=2, **extra):
    cls = detector_class(kind)
    det = cls(image_size=32 if kind == "dae" else 64, epochs=epochs, seed=0, device="cpu", batch_size=16,
              **KINDS[kind], **extra)
    return det.fit(images)


@pytest.fixture(scope="module")
def normals(sample_manifest, cache_dir):
    from cxrad.io import Preprocessing
    train = sample_manifest[sample_manifest["orig_split"] == "train"].head(40)
    return {s: load_images(train, Preprocessing(s), cache_dir=cache_dir) for s in (32, 64)}


@pytest.fixture(scope="module")
def tests(sample_manifest, cache_dir):
    from cxrad.io import Preprocessing
    test = sample_manifest[sample_manifest["orig_split"] == "test"].head(12)
    return {s: load_images(test, Preprocessing(s), cache_dir=cache_dir) for s in (32, 64)}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_protocol_save_load_round_trip(kind, normals, tests, tmp_path):
    det = _fit(kind, normals[32 if kind == "dae" else 64])
    size = det.image_size
    table = det.score(tests[size])
    assert len(table) == 12 and (table["error"] == "").all()
    assert np.isfinite(table["score"]).all()
    for comp in det.components:
        assert np.isfinite(table[comp]).all()
    assert len(det.history_["train_loss"]) == 2 and len(det.history_["val_loss"]) == 2
    maps = det.anomaly_map(np.asarray(tests[size].images))
    recon = det.reconstruct(np.asarray(tests[size].images))
    assert maps.shape == recon.shape == (12, size, size)
    assert det.features(np.asarray(tests[size].images)).shape[0] == 12

    det.save(tmp_path / "m")
    again = load_detector(tmp_path / "m", device="cpu")
    assert type(again) is type(det)
    np.testing.assert_allclose(again.score(tests[size])["score"], table["score"], rtol=1e-5)
    assert again.threshold_ == det.threshold_
    assert (again.predict(tests[size]) == det.predict(tests[size])).all()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_bundle_of_another_size_is_refused(kind, normals, tmp_path):
    det = _fit(kind, normals[32 if kind == "dae" else 64], epochs=1)
    det.save(tmp_path / "m")
    meta = (tmp_path / "m" / "model.json").read_text()
    key = '"width": 8'
    assert key in meta
    (tmp_path / "m" / "model.json").write_text(meta.replace(key, '"width": 16'))
    with pytest.raises(BundleError, match="do not fit"):
        load_detector(tmp_path / "m")


def test_dae_training_resumes_from_its_checkpoint(normals, tmp_path, monkeypatch):
    from cxrad.training import Checkpointer
    ckpt = tmp_path / "ckpt"
    real_save = Checkpointer.save

    def save_then_die(self, epoch, *args, **kwargs):
        real_save(self, epoch, *args, **kwargs)
        if epoch == 4:  # the 5-epoch checkpoint is on disk; the process is killed right after
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _fit("dae", normals[32], epochs=6, checkpoint_dir=str(ckpt))
    monkeypatch.setattr(Checkpointer, "save", real_save)
    resumed = _fit("dae", normals[32], epochs=6, checkpoint_dir=str(ckpt))
    straight = _fit("dae", normals[32], epochs=6)
    assert len(resumed.history_["train_loss"]) == 6
    np.testing.assert_allclose(resumed.history_["train_loss"], straight.history_["train_loss"], rtol=1e-5)
    img = np.asarray(normals[32].images[:4])
    np.testing.assert_allclose(resumed.score(img)["score"], straight.score(img)["score"], rtol=1e-4)


def test_coarse_noise_is_smooth_and_median_filter_removes_speckle():
    g = torch.Generator().manual_seed(0)
    noise = coarse_noise((4, 1, 64, 64), grid=8, std=0.2, generator=g, device="cpu")
    assert noise.shape == (4, 1, 64, 64)
    assert 0.05 < noise.std() < 0.3
    # neighbouring pixels of coarse noise are nearly equal; white noise's are not
    assert (noise[..., 1:] - noise[..., :-1]).abs().mean() < 0.2 * noise.abs().mean()
    speckle = torch.zeros(1, 1, 16, 16)
    speckle[0, 0, 5, 5] = 1.0
    assert median_filter(speckle).abs().max() == 0


def test_dae_localises_a_synthetic_opacity(normals):
    """Trained on normal films, the DAE must 'heal' a bright smooth blob pasted into the lung field: its
    anomaly map rises inside the blob, relative to the same image without it."""
    det = _fit("dae", normals[32], epochs=15)
    clean = np.asarray(normals[32].images[:10]).copy()
    yy, xx = np.mgrid[:32, :32]
    blob = np.exp(-(((yy - 14) / 5.0) ** 2 + ((xx - 10) / 4.0) ** 2))
    opaque = np.clip(clean + 120 * blob, 0, 255).astype(np.uint8)
    inside = blob > 0.5
    gain_inside = (det.anomaly_map(opaque) - det.anomaly_map(clean))[:, inside].mean(1)
    gain_outside = (det.anomaly_map(opaque) - det.anomaly_map(clean))[:, blob < 0.05].mean(1)
    assert (gain_inside > gain_outside).mean() >= 0.8


def test_regional_statistics_detector(normals, tests, tmp_path, shared_data, cache_dir):
    from cxrad.models.regional import RegionalDetector, RegionalStatistics

    stats = RegionalStatistics(grid=4, scales=(1, 2))
    flat = torch.zeros(1, 1, 32, 32)
    ramp = torch.linspace(-1, 1, 32).repeat(32, 1)[None, None]
    f_flat, f_ramp = stats(flat), stats(ramp)
    assert f_flat.shape == (1, 6, 4, 4)
    assert f_flat[:, 1].abs().max() == 0 and f_ramp[:, 1].min() > 0  # gradient energy: none on a flat image

    det = RegionalDetector(image_size=64, seed=0).fit(normals[64])
    table = det.score(tests[64])
    assert np.isfinite(table["score"]).all() and (table["score"] >= 0).all()
    assert det.anomaly_map(np.asarray(tests[64].images)).shape == (12, 64, 64)
    det.save(tmp_path / "m")
    again = load_detector(tmp_path / "m")
    np.testing.assert_allclose(again.score(tests[64])["score"], table["score"], rtol=1e-9)
    meta = (tmp_path / "m" / "model.json").read_text()
    (tmp_path / "m" / "model.json").write_text(meta.replace('"grid": 4', '"grid": 5'))
    with pytest.raises(BundleError, match="do not fit"):
        load_detector(tmp_path / "m")


def test_regional_detector_separates_tb_from_normal(shared_data, cache_dir):
    """On real data it must do clearly better than chance: the tb protocol, patient-disjoint."""
    from sklearn.metrics import roc_auc_score

    from cxrad.models.regional import RegionalDetector
    from cxrad.protocols import load_protocol

    proto = load_protocol("tb", shared_data)
    det = RegionalDetector(image_size=64)
    det.fit(load_images(proto.train, det.prep, cache_dir=cache_dir))
    test = load_images(proto.test, det.prep, cache_dir=cache_dir)
    table = det.score(test)
    assert roc_auc_score(table["label"], table["score"]) > 0.55


def test_thresholds_ignore_a_diverged_validation_score(normals, monkeypatch):
    """A NaN score on a held-out normal image (a mapping that blew up) must not poison the thresholds."""
    from cxrad.models.regional import RegionalDetector
    real = RegionalDetector._score

    def one_nan(self, images):
        out = real(self, images)
        out["score"] = out["score"].copy()
        out["score"][0] = np.nan
        return out

    monkeypatch.setattr(RegionalDetector, "_score", one_nan)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        det = RegionalDetector(image_size=64).fit(normals[64])
    assert np.isfinite(det.normal_scores_).all() and np.isfinite(det.threshold_)
    assert len(det.normal_scores_) == det.n_val_ - 1
