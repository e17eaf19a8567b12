"""Model bundles: a folder with ``model.json`` (everything but numbers) and ``model.safetensors`` (weights
and arrays). Loading parses JSON and safetensors only, so a bundle from a stranger executes nothing."""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

FORMAT = "cxrad-bundle"
FORMAT_VERSION = 1
META_FILE, TENSOR_FILE = "model.json", "model.safetensors"

# detector kind -> "module:Class"; imported lazily so a bundle never names arbitrary code.
DETECTORS = {
    "cae": "cxrad.models.cae:CAEDetector",
    "aeu": "cxrad.models.aeu:AEUDetector",
    "dae": "cxrad.models.dae:DAEDetector",
    "regional": "cxrad.models.regional:RegionalDetector",
    "anogan": "cxrad.models.anogan:AnoGANDetector",
    "fanogan": "cxrad.models.anogan:FAnoGANDetector",
    "fusion": "cxrad.models.fusion:FusionDetector",
}


class BundleError(ValueError):
    """A bundle that cannot be loaded; the message says why."""


def register(kind: str, target: str) -> None:
    DETECTORS[kind] = target


def detector_class(kind: str):
    if kind not in DETECTORS:
        raise BundleError(f"unknown detector kind {kind!r}; this cxrad knows {', '.join(sorted(DETECTORS))}")
    module, _, cls = DETECTORS[kind].partition(":")
    return getattr(importlib.import_module(module), cls)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# read once at import: os.umask is process-wide, so toggling it later would race with writer threads
FILE_MODE = 0o666 & ~_read_umask()


@contextlib.contextmanager
def atomic_open(path: Path):
    """A binary file handle whose content replaces ``path`` only when the block completes; a crash or an
    error leaves the old file (or none) and no partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
        os.chmod(tmp, FILE_MODE)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path) as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(Path(path), text.encode("utf-8"))


def environment() -> dict:
    from . import __version__
    return {"cxrad": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def save_bundle(path, kind: str, meta: dict, tensors: dict[str, torch.Tensor]) -> Path:
    """Write a bundle folder. Tensors are made contiguous CPU copies; meta must be JSON-serialisable."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    atomic_write_bytes(path / TENSOR_FILE, save(clean))
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "environment": environment(), **meta}
    atomic_write_text(path / META_FILE, json.dumps(doc, indent=2, sort_keys=False, default=_json_default))
    return path


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def read_meta(path) -> dict:
    path = Path(path)
    meta_file = path / META_FILE if path.is_dir() else path
    if not meta_file.exists():
        raise BundleError(f"{path}: not a cxrad model bundle (no {META_FILE})")
    try:
        doc = json.loads(meta_file.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{meta_file}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BundleError(f"{meta_file}: not a cxrad model bundle")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format version {version!r} is not supported by this cxrad "
                          f"(it reads version {FORMAT_VERSION}); retrain the model or upgrade cxrad")
    return doc


def load_bundle(path) -> tuple[dict, dict[str, torch.Tensor]]:
    path = Path(path)
    doc = read_meta(path)
    tensor_file = path / TENSOR_FILE
    if not tensor_file.exists():
        raise BundleError(f"{path}: bundle has no {TENSOR_FILE}")
    try:
        tensors = load_file(str(tensor_file))
    except Exception as exc:
        raise BundleError(f"{tensor_file}: unreadable safetensors file ({exc})") from None
    return doc, tensors


def load_detector(path, device: str = "auto"):
    """Load any bundle into its detector class, on ``device`` (auto|cpu|cuda)."""
    doc = read_meta(path)
    return detector_class(doc["kind"]).load(path, device=device)
