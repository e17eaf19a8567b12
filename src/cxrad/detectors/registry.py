"""Detector kinds -> classes. Each folder of ``cxrad.detectors`` (but ``parts``) holds detectors that register
themselves by their ``kind`` when imported; ``discover`` imports them all, once, on first use."""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from cxrad.errors import BundleError

#: kind -> detector class, filled as detector folders are imported
REGISTRY: dict = {}
_FOLDER = Path(__file__).parent
_SHARED = {"parts"}


def discover() -> dict:
    """Import every detector folder (each registers its kinds); returns the registry."""
    for info in pkgutil.iter_modules([str(_FOLDER)]):
        if info.ispkg and info.name not in _SHARED:
            importlib.import_module(f"cxrad.detectors.{info.name}")
    return REGISTRY


def detector_class(kind: str):
    """The registered class of a detector kind."""
    if kind not in discover():
        raise BundleError(f"unknown detector kind {kind!r}; this cxrad knows {', '.join(sorted(REGISTRY)) or 'none'}")
    return REGISTRY[kind]
