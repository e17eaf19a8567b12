"""Tiny real models for the scale tests (export, streaming, Ray): trained for an epoch or two at 32 px on the
bundled normal samples, so they score real images with real weights in seconds."""
from __future__ import annotations

from pathlib import Path

from cxrad.data import bundled_samples, load_images

# the smallest settings of each kind that still train a real network
TINY = {
    "dae": {"image_size": 32, "epochs": 1, "width": 8, "depth": 3},
    "cae": {"image_size": 32, "epochs": 1, "latent_dim": 16},
    "aeu": {"image_size": 32, "epochs": 1, "width": 4, "hidden": 32},
    "fanogan": {"image_size": 32, "epochs": 1, "width": 8, "z_dim": 8},
    "anogan": {"image_size": 32, "epochs": 1, "width": 8, "z_dim": 8, "map_iters": 3},
    "regional": {"image_size": 32},
    "fusion": {"image_size": 32, "epochs": 1,
               "member_params": {"dae": {"width": 8, "depth": 3, "image_size": 32}}},
}


def sample_files(split: str = "test") -> list[str]:
    """Bundled sample images of a split (test: normal and abnormal from three sources)."""
    df = bundled_samples()
    return df.loc[df["orig_split"] == split, "path"].tolist()


def train_tiny(kind: str, out: Path, n_train: int = 40, **params):
    """A fitted detector of ``kind`` saved to ``out``; returns the detector."""
    from cxrad.models import REGISTRY
    det = REGISTRY[kind](**{**TINY[kind], **params}, seed=0, device="cpu", batch_size=16)
    df = bundled_samples()
    train = df[(df["orig_split"] == "train") & (df["label"] == 0)].head(n_train)
    det.fit(load_images(train, det.prep))
    det.save(out)
    return det
