"""Model bundles: a folder with ``model.json`` (settings, thresholds, history: everything but arrays) and one
safetensors file of arrays. Loading parses JSON and safetensors only, so a bundle from a stranger executes
nothing.

Integrity: model.json names the weights file and its SHA-256; the weights are verified before they are
parsed, and both files are size-capped before they are read. From format 3, the weights file's safetensors
metadata holds the SHA-256 of model.json itself (its canonical JSON, less the ``weights`` entry, which names the
weights): an edit of any value of model.json is caught, not only an edit of the weights. Format-2 bundles (no
document checksum) still load; the shipped ones are pinned by digest in ``bundles.shipped``. All-or-nothing writes: the weights go to a new
file named by their hash, then model.json is replaced in one rename (the commit point), then the old weights
file is removed. A kill at any moment leaves the previous bundle or the new one, never a mix. Writers hold an
exclusive lock on the folder, so two never interleave and the temporaries a writer finds are a killed one's.
"""
from __future__ import annotations

import hashlib
import json
import platform
import re
from pathlib import Path

import numpy as np

from cxrad.errors import BundleError
from cxrad.files import (UnsafeFileError, atomic_write_bytes, atomic_write_text, folder_lock, read_regular_file,
                         remove_stale_temporaries)

FORMAT = "cxrad-bundle"
FORMAT_VERSION = 3
#: versions this cxrad reads: 1 only to upgrade it (no checksum), 2 (weights checksum), 3 (and model.json's)
READABLE_VERSIONS = (1, 2, 3)
#: the safetensors metadata key holding model.json's canonical SHA-256 (format 3)
DOC_DIGEST_KEY = "cxrad_model_json_sha256"
META_FILE = "model.json"
LEGACY_TENSOR_FILE = "model.safetensors"  # format 1 (no checksum)
MAX_META_BYTES = 32 * 2**20
MAX_WEIGHTS_BYTES = 2 * 2**30
_WEIGHTS_NAME = re.compile(r"^weights-[0-9a-f]{16}\.safetensors$")


def environment() -> dict:
    import torch

    from cxrad.version import __version__
    return {"cxrad": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def write_bundle(path, kind: str, meta: dict, tensors: dict) -> Path:
    """Write (or replace) a bundle folder. ``tensors`` are torch tensors; ``meta`` must be JSON-serialisable."""
    from safetensors.torch import save
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BundleError(f"{path}: exists and is not a folder; choose another output")
    path.mkdir(parents=True, exist_ok=True)
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "environment": environment(), **meta}
    doc = json.loads(json.dumps(doc, default=_json_default))  # as it will read back (tuples as lists, ...)
    data = save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()},
                metadata={DOC_DIGEST_KEY: document_digest(doc)})
    digest = hashlib.sha256(data).hexdigest()
    weights_name = f"weights-{digest[:16]}.safetensors"
    doc = {**{k: doc[k] for k in ("format", "format_version", "kind")},
           "weights": {"file": weights_name, "sha256": digest, "bytes": len(data)}, **doc}
    text = json.dumps(doc, indent=2)
    with folder_lock(path):  # one writer at a time: what it finds half-written is a killed writer's
        remove_stale_temporaries(path)
        atomic_write_bytes(path / weights_name, data)
        atomic_write_text(path / META_FILE, text)
        for old in [*path.glob("weights-*.safetensors"), path / LEGACY_TENSOR_FILE]:
            if old.name != weights_name and old.exists():
                old.unlink()
    return path


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def document_digest(doc: dict) -> str:
    """SHA-256 of a model.json document's canonical JSON (sorted keys, no spaces, UTF-8), less its ``weights``
    entry: what a format-3 weights file records."""
    body = {k: v for k, v in doc.items() if k != "weights"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def safetensors_metadata(data: bytes) -> dict:
    """The ``__metadata__`` of a safetensors file's header (its first 8 bytes give the header's length)."""
    if len(data) < 8:
        return {}
    n = int.from_bytes(data[:8], "little")
    if not 2 <= n <= len(data) - 8:
        return {}
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def read_meta(path) -> dict:
    """model.json of a bundle folder (or the file itself), checked for format and version."""
    path = Path(path)
    meta_file = path / META_FILE if path.is_dir() else path
    try:
        raw = read_regular_file(meta_file, MAX_META_BYTES)
    except UnsafeFileError as exc:
        if str(exc) == "file not found":
            raise BundleError(f"{path}: not a cxrad model bundle (no {META_FILE})") from None
        raise BundleError(f"{meta_file}: {exc}") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{meta_file}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BundleError(f"{meta_file}: not a cxrad model bundle")
    version = doc.get("format_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise BundleError(f"{path}: bundle format version {version!r} is not supported by this cxrad "
                          f"(it reads version {FORMAT_VERSION}); retrain the model or upgrade cxrad")
    if not isinstance(doc.get("kind"), str):
        raise BundleError(f"{meta_file}: names no detector kind")
    return doc


def bundle_file_names(path) -> list[str]:
    """The files of a bundle folder that loading reads: model.json and the weights it names."""
    doc = read_meta(path)
    return [META_FILE, doc["weights"]["file"] if doc["format_version"] != 1 else LEGACY_TENSOR_FILE]


def read_bundle(path, allow_unverified: bool = False) -> tuple[dict, dict]:
    """(model.json, tensors) of a bundle whose weights match their recorded SHA-256.

    Format-1 bundles carry no checksum and are refused unless ``allow_unverified`` (for upgrading them)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    doc = read_meta(path)
    folder = path if path.is_dir() else path.parent
    if doc["format_version"] == 1:
        if not allow_unverified:
            raise BundleError(f"{path}: a format-1 bundle has no weights checksum; upgrade it with "
                              "`python tools/ship_model.py --upgrade PATH` (or retrain)")
        weights = {"file": LEGACY_TENSOR_FILE}
    else:
        weights = doc.get("weights")
        if not isinstance(weights, dict) or not _WEIGHTS_NAME.match(str(weights.get("file", ""))) or \
                not isinstance(weights.get("sha256"), str):
            raise BundleError(f"{path}: model.json does not name a valid weights file and checksum")
    try:
        data = read_regular_file(folder / weights["file"], MAX_WEIGHTS_BYTES)
    except UnsafeFileError as exc:
        raise BundleError(f"{path}: weights file {weights['file']}: {exc}") from None
    if doc["format_version"] != 1 and hashlib.sha256(data).hexdigest() != weights["sha256"]:
        raise BundleError(f"{path}: the weights do not match their checksum in model.json (corrupt or altered "
                          "file); restore the bundle from its source")
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise BundleError(f"{path}: unreadable safetensors file ({exc})") from None
    if doc["format_version"] >= 3 and safetensors_metadata(data).get(DOC_DIGEST_KEY) != document_digest(doc):
        raise BundleError(f"{path}: model.json does not match the checksum its weights file records (an edited "
                          "or mixed-up model.json); restore the bundle from its source")
    return doc, tensors


