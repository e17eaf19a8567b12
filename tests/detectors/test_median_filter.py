"""The DAE's median filter (a min/max selection network) equals the torch.median-over-patches filter it
replaced, on real images (many ties: uint8 grey levels) and on continuous values."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrad.data import load_images
from cxrad.imaging import Preprocessing
from cxrad.detectors.parts.median import median_filter, median_network


def reference_median(x: torch.Tensor, k: int) -> torch.Tensor:
    """The previous implementation: unfold k x k patches and take torch.median."""
    pad = k // 2
    patches = F.pad(x, (pad, pad, pad, pad), mode="reflect").unfold(2, k, 1).unfold(3, k, 1)
    return patches.reshape(*x.shape, k * k).median(dim=-1).values


@pytest.fixture(scope="module")
def real_maps(sample_manifest) -> torch.Tensor:
    files = sample_manifest["path"].head(24).tolist()
    images = load_images(files, Preprocessing(64)).images
    assert len(images) == 24
    return torch.from_numpy(np.asarray(images, np.float32) / 255.0)[:, None]


@pytest.mark.parametrize("k", [3, 5, 7])
def test_median_filter_equals_torch_median_on_real_images(real_maps, k):
    # grey levels (many equal neighbours) and differences of two images (signed, like residuals)
    for x in (real_maps, (real_maps - real_maps.roll(1, 0)).abs(), real_maps[:, :, 5:47, 3:64]):
        assert torch.equal(median_filter(x, k), reference_median(x, k))


def test_median_filter_equals_torch_median_on_continuous_values():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 33, 40, generator=g)
    assert torch.equal(median_filter(x), reference_median(x, 5))
    y = torch.randint(0, 3, (8, 1, 16, 16), generator=g).float()  # heavy ties
    assert torch.equal(median_filter(y), reference_median(y, 5))


def test_selection_network_is_pruned():
    steps = median_network(25)
    assert len(steps) < 140  # Batcher's full network on 25 wires has 140 steps
    assert all(a < b < 25 for a, b, *_ in steps)
