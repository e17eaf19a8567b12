"""Models shipped inside the package, found by name; ``resolve(None)`` gives the default one."""
from __future__ import annotations

from pathlib import Path

from cxrad.bundle import PRETRAINED_DIR, available, default_name, resolve
from cxrad.models import Detector, load_detector

__all__ = ["PRETRAINED_DIR", "available", "default_name", "load_model", "resolve"]

def load_model(model: str | Path | Detector | None = None, device: str = "auto") -> Detector:
    """A detector from a bundle folder, a shipped model name, (None) the shipped default, or itself."""
    if isinstance(model, Detector):
        return model
    return load_detector(resolve(model), device=device)
