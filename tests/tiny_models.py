"""A tiny trained model for tests that need one to score with (robustness tests: what matters is that files
become score rows or error rows, not how good the model is). Trained once per test session."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CXRAD_DATA", ROOT.parent / "shared" / "data"))
_TRAINED: dict[str, Path] = {}
# the smallest settings of each kind that still train a real network (a couple of epochs at 32 px)
TINY_SETTINGS = {
    "cae": {"image_size": 32, "epochs": 1, "latent_dim": 16},
    "dae": {"image_size": 32, "epochs": 1, "width": 8, "depth": 3},
    "aeu": {"image_size": 32, "epochs": 1, "width": 4, "hidden": 32},
    "regional": {"image_size": 32},
    "anogan": {"image_size": 32, "epochs": 1, "width": 8, "z_dim": 8, "map_iters": 3},
    "fanogan": {"image_size": 32, "epochs": 1, "width": 8, "z_dim": 8},
    "fusion": {"image_size": 32, "epochs": 1, "member_params": {"dae": {"width": 8, "depth": 3, "image_size": 32}}},
    "patchcore": {"image_size": 32, "epochs": 1, "width": 8, "depth": 3},
    "opacity": {"image_size": 32, "epochs": 1, "width": 8, "depth": 3},
}


def normal_images(n: int = 40) -> list[str]:
    """``n`` normal kermany224 training images (never the TB sets)."""
    folder = SHARED / "kermany224" / "train" / "NORMAL"
    files = sorted(str(p) for p in folder.glob("*.jpeg"))[:n]
    if len(files) < n:
        raise FileNotFoundError(f"expected {n} images under {folder}")
    return files


def tiny_dae(tmp_path_factory) -> Path:
    """A DAE bundle at 32 px (width 8, depth 2), one epoch on 40 normal images: trains in seconds."""
    if "dae" not in _TRAINED:
        from cxrad.models import DAEDetector

        root = tmp_path_factory.mktemp("tiny_dae")
        det = DAEDetector(image_size=32, width=8, depth=2, epochs=1, batch_size=16, device="cpu", seed=0,
                          cache_dir=str(root / "cache"))
        det.fit(normal_images())
        _TRAINED["dae"] = det.save(root / "model")
    return _TRAINED["dae"]


def run_cxrad(args: list[str], timeout: float, cache_dir=None):
    """``python -m cxrad ARGS`` in a fresh process (this checkout's cxrad), killed after ``timeout`` seconds:
    a hang fails the test instead of stalling it. Returns the CompletedProcess."""
    import subprocess
    import sys

    import cxrad

    env = dict(os.environ, PYTHONPATH=str(Path(cxrad.__file__).parents[1]), PYTHONWARNINGS="ignore",
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    if cache_dir is not None:
        env["CXRAD_CACHE"] = str(cache_dir)
    return subprocess.run([sys.executable, "-m", "cxrad", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)
