"""A tiny trained model for tests that need one to score with (robustness tests: what matters is that files
become score rows or error rows, not how good the model is). Trained once per test session."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CXRAD_DATA", ROOT.parent / "shared" / "data"))
_TRAINED: dict[str, Path] = {}


def tiny_settings() -> dict[str, dict]:
    """Each registered detector's own ``tiny`` settings (a few seconds of training at 32 px)."""
    from cxrad.detectors import discover
    return {kind: dict(cls.tiny) for kind, cls in sorted(discover().items())}


TINY_SETTINGS = tiny_settings()


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
        from cxrad.detectors import DAEDetector

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
