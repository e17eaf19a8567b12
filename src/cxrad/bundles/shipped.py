"""Models shipped inside the package (``bundles/pretrained/``), found by name; ``resolve(None)`` is the default."""
from __future__ import annotations

import json
from pathlib import Path

from cxrad.bundles.format import document_digest
from cxrad.errors import BundleError

PRETRAINED_DIR = Path(__file__).parent / "pretrained"

#: each shipped bundle's model.json digest (``format.document_digest``) and weights SHA-256: a shipped bundle
#: that differs from what was released is refused (format-2 bundles carry no model.json checksum of their own).
#: tools/ship_model.py prints the entry of a newly shipped model.
PINNED = {
    "dae-cxr-64": ("7a40564c51b0b5b3b1a739cfc45c186ab6f709643322fdfd50de1c1b27a25df0",
                   "8c023c8d4778c494f2c327237b300e7eb27e6a7e82ff9fac45cf326f7787dfc0"),
    "dae-cxr-64-300k": ("e8b6eafcb36694a95131fd62b5f6976e1f894e71274cff919200cf3146855e66",
                        "6fca77961bc7da28e3f92d1a877de3cc359650456e9a11d3cd1bd9ad0f599b99"),
    "dae-cxr-64-fused": ("bc32f8cda8a5bbc7b7ab4f70a595419f00131a3baa65fbc682454743c1eb8ba4",
                         "a83bed2201bb946d7dd65f351ca60a80027a04190d3b0b10a303658ca6eebd8b"),
}


def available() -> dict[str, Path]:
    """Shipped model name -> bundle folder."""
    if not PRETRAINED_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(PRETRAINED_DIR.iterdir()) if (p / "model.json").exists()}


def check_pinned(folder, doc: dict) -> None:
    """Refuse a bundle inside ``pretrained/`` whose model.json or weights differ from the pinned release (or that
    has no pin); bundles elsewhere are not concerned."""
    folder = Path(folder).resolve()
    if folder.parent != PRETRAINED_DIR.resolve():
        return
    pin = PINNED.get(folder.name)
    got = (document_digest(doc), str((doc.get("weights") or {}).get("sha256")))
    if pin is None or got != pin:
        raise BundleError(f"shipped model {folder.name}: " + ("is not pinned in cxrad.bundles.shipped.PINNED"
                          if pin is None else "differs from the released files (altered); reinstall cxrad"))


def default_name(kind: str | None = None) -> str | None:
    """The shipped default model's name. With ``kind``, the shipped model of that kind that commands needing one
    start from (``cxrad adapt`` needs a DAE): the default itself, or the one ``default.json`` names for the kind
    (the default fusion's networks come from the DAE it names)."""
    index = PRETRAINED_DIR / "default.json"
    if index.exists():
        names = json.loads(index.read_text())
        return names["default"] if kind is None else names.get(kind, names["default"])
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
