"""Editing a bundle as a tool (or an attacker) that knows the format would: change model.json, then re-sign it
(the model.json digest in the weights' safetensors metadata, and the weights checksum in model.json), so that
what a test exercises is the check of the values, not the integrity check that an unsigned edit meets first."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cxrad.bundles.format import DOC_DIGEST_KEY, META_FILE, document_digest, safetensors_metadata


def resign(bundle: Path, doc: dict | None = None, tensors: dict | None = None) -> dict:
    """Rewrite ``bundle`` with ``doc`` (default: its model.json as it is now) and ``tensors`` (default: its weights),
    re-signed; returns the document written."""
    from safetensors.torch import load, save

    bundle = Path(bundle)
    doc = json.loads((bundle / META_FILE).read_text()) if doc is None else doc
    weights = bundle / doc["weights"]["file"]
    raw = weights.read_bytes()
    metadata = {k: str(v) for k, v in safetensors_metadata(raw).items()}
    if doc.get("format_version", 0) >= 3:
        metadata[DOC_DIGEST_KEY] = document_digest(doc)
    data = save(load(raw) if tensors is None else tensors, metadata=metadata or None)
    weights.write_bytes(data)
    doc["weights"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (bundle / META_FILE).write_text(json.dumps(doc))
    return doc


def edit(bundle: Path, change) -> dict:
    """Apply ``change(doc)`` to model.json and re-sign the bundle."""
    doc = json.loads((Path(bundle) / META_FILE).read_text())
    change(doc)
    return resign(bundle, doc)
