"""Datasets: manifests, content-hash deduplication, patient-level splits, and the preprocessing cache.

A dataset is a pandas DataFrame (the *manifest*), one row per image, with columns
``path, label (0 normal / 1 abnormal), finding, patient_id, source, orig_split``. Loading it turns the rows
into an :class:`ImageSet` of uint8 arrays at the model's input size, through a disk cache keyed by file
content and preprocessing so that nothing is decoded twice.
"""
from __future__ import annotations

from cxrad.data.images import (ImageSet, as_imageset, default_cache_dir, fingerprint, hold_out_normals, load_images,
                               prep_key, with_labels)
from cxrad.data.manifests import (ABNORMAL_WORDS, EXTRA_COLUMNS, MANIFEST_COLUMNS, NORMAL_WORDS, NPZ_SEP,
                                  bundled_samples, class_folders, dataset_kind, describe, from_csv, from_folder,
                                  from_nlm, from_npz, open_dataset, parse_label, select_split)
from cxrad.data.splits import add_hashes, deduplicate, file_hash, patient_groups, split_by_patient
from cxrad.errors import DataError

__all__ = ["ABNORMAL_WORDS", "DataError", "EXTRA_COLUMNS", "ImageSet", "MANIFEST_COLUMNS", "NORMAL_WORDS", "NPZ_SEP",
           "add_hashes", "as_imageset", "bundled_samples", "class_folders", "dataset_kind", "deduplicate",
           "default_cache_dir", "describe", "file_hash", "fingerprint", "from_csv", "from_folder", "from_npz",
           "from_nlm", "hold_out_normals", "load_images", "open_dataset", "parse_label", "patient_groups",
           "prep_key", "select_split", "split_by_patient", "with_labels"]
