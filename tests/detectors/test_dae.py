"""The coarse-noise DAE: its noise and filter, that it learns to heal opacities, and that weights must fit."""
from __future__ import annotations

import numpy as np
import pytest

from bundle_tools import resign
import torch

from cxrad.errors import BundleError
from cxrad.detectors import AEUDetector, DAEDetector, load_detector
from cxrad.detectors.dae.detector import coarse_noise
from cxrad.detectors.parts.median import median_filter


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


def test_median_filter_equals_scipy_with_mirrored_edges():
    from scipy.ndimage import median_filter as scipy_median
    x = torch.rand(3, 1, 20, 17, generator=torch.Generator().manual_seed(0))
    expected = np.stack([scipy_median(im[0].numpy(), size=5, mode="mirror") for im in x])
    np.testing.assert_allclose(median_filter(x)[:, 0].numpy(), expected, rtol=0, atol=0)


@pytest.mark.slow
def test_dae_localises_a_synthetic_opacity(small_sets):
    """Trained on normal films, the DAE must 'heal' a bright smooth blob pasted into the lung field: its
    anomaly map rises inside the blob, relative to the same image without it."""
    train, _ = small_sets[32]
    det = DAEDetector(image_size=32, width=8, depth=3, epochs=15, batch_size=16, device="cpu").fit(train)
    clean = np.asarray(train.images[:10]).copy()
    yy, xx = np.mgrid[:32, :32]
    blob = np.exp(-(((yy - 14) / 5.0) ** 2 + ((xx - 10) / 4.0) ** 2))
    opaque = np.clip(clean + 120 * blob, 0, 255).astype(np.uint8)
    gain = det.outputs(opaque)["map"] - det.outputs(clean)["map"]
    assert (gain[:, blob > 0.5].mean(1) > gain[:, blob < 0.05].mean(1)).mean() >= 0.8


@pytest.mark.parametrize("cls, settings", [(DAEDetector, {"width": 8, "depth": 3}),
                                           (AEUDetector, {"width": 4, "hidden": 32})])
def test_a_bundle_whose_settings_do_not_fit_its_weights_is_refused(cls, settings, small_sets, tmp_path):
    det = cls(image_size=32, epochs=1, device="cpu", batch_size=16, **settings).fit(small_sets[32][0])
    det.save(tmp_path / "m")
    meta = tmp_path / "m" / "model.json"
    key = f'"width": {settings["width"]}'
    assert key in meta.read_text()
    text = meta.read_text()
    meta.write_text(text.replace(key, '"width": 4096'))  # out of bounds: refused before anything is built
    resign(tmp_path / "m")
    with pytest.raises(BundleError, match="width must be between"):
        load_detector(tmp_path / "m")
    meta.write_text(meta.read_text().replace('"width": 4096', '"width": 128'))  # in bounds, not what the weights are
    resign(tmp_path / "m")
    with pytest.raises(BundleError, match="do not fit"):
        load_detector(tmp_path / "m")


def test_a_width_the_u_net_cannot_build_is_refused_before_training():
    with pytest.raises(ValueError, match="width must be a multiple of 8, not 12"):
        DAEDetector(width=12).fit(np.zeros((20, 64, 64), np.uint8))
