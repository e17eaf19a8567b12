"""Models shipped inside the package (``bundles/pretrained/``), found by name; ``resolve(None)`` is the default."""
from __future__ import annotations

import json
from pathlib import Path

from cxrad.errors import BundleError

PRETRAINED_DIR = Path(__file__).parent / "pretrained"


def available() -> dict[str, Path]:
    """Shipped model name -> bundle folder."""
    if not PRETRAINED_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(PRETRAINED_DIR.iterdir()) if (p / "model.json").exists()}


def default_name() -> str | None:
    index = PRETRAINED_DIR / "default.json"
    if index.exists():
        return json.loads(index.read_text())["default"]
    names = list(available())
    return names[0] if names else None


def resolve(name_or_path: str | Path | None) -> Path:
    """A bundle folder path, a shipped model name, or None for the shipped default."""
    if name_or_path is None:
        name = default_name()
        if name is None:
            raise BundleError("no model given and this cxrad ships no default model; pass --model PATH")
        return available()[name]
    path = Path(name_or_path)
    if path.exists():
        return path
    models = available()
    if str(name_or_path) in models:
        return models[str(name_or_path)]
    raise BundleError(f"{name_or_path}: no such model bundle or shipped model (shipped: "
                      f"{', '.join(models) or 'none'})")
