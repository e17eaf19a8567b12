"""Fixtures shared by the test files: the shared data folder, the bundled samples, and one tiny trained CAE."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # test helpers (tiny_models, fuzz) import from any test folder
SHARED = Path(os.environ.get("CXRAD_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED / "README.md").exists():
        pytest.fail(f"the shared data folder is missing at {SHARED} (set CXRAD_DATA)")
    return SHARED


@pytest.fixture(scope="session")
def sample_manifest():
    from cxrad.data import bundled_samples, deduplicate
    return deduplicate(bundled_samples())[0]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_cae_bundle(tmp_path_factory, sample_manifest, cache_dir) -> Path:
    """A seed CAE at 32 px trained for 2 epochs on 60 bundled normal images, saved as a bundle."""
    from cxrad.data import load_images
    from cxrad.detectors.cae import CAEDetector

    det = CAEDetector(image_size=32, epochs=2, seed=0, device="cpu", cache_dir=str(cache_dir))
    train = sample_manifest[(sample_manifest["orig_split"] == "train")].head(60)
    det.fit(load_images(train, det.prep, cache_dir=cache_dir))
    return det.save(tmp_path_factory.mktemp("models") / "tiny_cae")


@pytest.fixture(scope="session")
def small_sets(sample_manifest, cache_dir):
    """Bundled normal training images and labelled test images, loaded at 32 and 64 px."""
    from cxrad.data import load_images
    from cxrad.imaging import Preprocessing
    train = sample_manifest[(sample_manifest["orig_split"] == "train") & (sample_manifest["label"] == 0)].head(40)
    test = sample_manifest[sample_manifest["orig_split"] == "test"].groupby("label").head(6)
    return {s: (load_images(train, Preprocessing(s), cache_dir=cache_dir),
                load_images(test, Preprocessing(s), cache_dir=cache_dir)) for s in (32, 64)}


@pytest.fixture
def rewrite_weights():
    """Replace a bundle's tensors with ``change(tensors)`` and record the new checksum, as a tool that edits
    bundles on purpose would: what remains to catch is whether the weights fit the settings."""
    from safetensors.torch import load

    from bundle_tools import resign

    def rewrite(bundle: Path, change) -> None:
        meta = json.loads((bundle / "model.json").read_text())
        resign(bundle, meta, change(load((bundle / meta["weights"]["file"]).read_bytes())))
    return rewrite


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, sample_manifest):
    """``tiny_model(kind)`` -> (fitted detector, its bundle folder): trained for an epoch at 32 px on 40
    bundled normal images, once per kind and session."""
    from cxrad.data import load_images
    from cxrad.detectors import discover
    from tiny_models import TINY_SETTINGS
    made = {}

    def make(kind: str):
        if kind not in made:
            det = discover()[kind](**TINY_SETTINGS[kind], seed=0, device="cpu", batch_size=16)
            train = sample_manifest[(sample_manifest["orig_split"] == "train") & (sample_manifest["label"] == 0)]
            det.fit(load_images(train.head(40), det.prep))
            made[kind] = det, det.save(tmp_path_factory.mktemp("tiny") / kind)
        return made[kind]
    return make


@pytest.fixture(scope="session")
def sample_test_files(sample_manifest) -> list[str]:
    """The bundled test images: normal and abnormal, from three sources."""
    return sample_manifest.loc[sample_manifest["orig_split"] == "test", "path"].tolist()
