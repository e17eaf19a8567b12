"""Model bundles: the on-disk format (``format``) and the models shipped with cxrad (``shipped``)."""
from __future__ import annotations

from cxrad.bundles.format import (FORMAT, FORMAT_VERSION, META_FILE, bundle_file_names, read_bundle, read_meta,
                                  write_bundle)
from cxrad.bundles.shipped import PINNED, PRETRAINED_DIR, available, check_pinned, default_name, resolve

__all__ = ["FORMAT", "FORMAT_VERSION", "META_FILE", "PINNED", "PRETRAINED_DIR", "available", "bundle_file_names",
           "check_pinned", "default_name", "read_bundle", "read_meta", "resolve", "write_bundle"]
