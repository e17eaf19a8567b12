"""Fixtures shared by the test files: the shared data folder, the bundled samples, and one tiny trained CAE."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CXRAD_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED / "README.md").exists():
        pytest.fail(f"the shared data folder is missing at {SHARED} (set CXRAD_DATA)")
    return SHARED


@pytest.fixture(scope="session")
def sample_manifest():
    from cxrad.data import deduplicate
    from cxrad.demo import sample_manifest
    return deduplicate(sample_manifest())[0]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_cae_bundle(tmp_path_factory, sample_manifest, cache_dir) -> Path:
    """A seed CAE at 32 px trained for 2 epochs on 60 bundled normal images, saved as a bundle."""
    from cxrad.data import load_images
    from cxrad.models.cae import CAEDetector

    det = CAEDetector(image_size=32, epochs=2, seed=0, device="cpu", cache_dir=str(cache_dir))
    train = sample_manifest[(sample_manifest["orig_split"] == "train")].head(60)
    det.fit(load_images(train, det.prep, cache_dir=cache_dir))
    return det.save(tmp_path_factory.mktemp("models") / "tiny_cae")
