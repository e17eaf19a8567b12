"""Content hashes, duplicates, patient-level splits and the training-data fingerprint."""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from cxrad.data.manifests import _npz_array, npz_reference
from cxrad.files import open_regular_file
from cxrad.imaging import MAX_FILE_BYTES

HASH_CHUNK = 2**20


def file_hash(path: str) -> str:
    """SHA-256 of a file's bytes (of the array, for an npz entry); '' if unreadable. Only regular files of at
    most MAX_FILE_BYTES are hashed (checked before reading, so a device or a FIFO cannot hang it), in chunks."""
    try:
        if npz_reference(path):
            return hashlib.sha256(_npz_array(path).tobytes()).hexdigest()
        digest = hashlib.sha256()
        with open_regular_file(path, MAX_FILE_BYTES) as fh:
            for chunk in iter(lambda: fh.read(HASH_CHUNK), b""):
                digest.update(chunk)
        return digest.hexdigest()
    except (OSError, KeyError, IndexError, ValueError):  # UnsafeFileError and ImageReadError are ValueErrors
        return ""


def add_hashes(df: pd.DataFrame, workers: int = 4) -> pd.DataFrame:
    if "sha256" in df and (df["sha256"] != "").all():
        return df
    df = df.copy()
    with ThreadPoolExecutor(workers) as pool:
        df["sha256"] = list(pool.map(file_hash, df["path"]))
    return df


def deduplicate(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Drop exact duplicate files (same content hash), keeping the first; returns (frame, number dropped).

    If copies of one file carry different labels, every copy is dropped: the label is unknowable.
    """
    df = add_hashes(df)
    known = df[df["sha256"] != ""]
    conflicting = known.groupby("sha256")["label"].nunique()
    bad = set(conflicting[conflicting > 1].index)
    keep = ~df["sha256"].isin(bad) & ~(df["sha256"].duplicated(keep="first") & (df["sha256"] != ""))
    return df[keep].reset_index(drop=True), int((~keep).sum())


def patient_groups(df: pd.DataFrame) -> pd.Series:
    """Grouping key: a patient id is only unique within its source and publisher split."""
    def col(name):  # a user's own manifest may lack source / orig_split
        return df[name].astype(str) if name in df else pd.Series("", index=df.index)
    try:
        return col("source") + "|" + col("orig_split") + "|" + col("patient_id")
    except UnicodeEncodeError:  # a patient id from a file name that is not UTF-8: no Arrow string holds it
        def text(name):
            return [str(v) for v in df[name]] if name in df else [""] * len(df)
        return pd.Series([f"{a}|{b}|{c}" for a, b, c in zip(text("source"), text("orig_split"), text("patient_id"))],
                         index=df.index, dtype=object)


def split_by_patient(df: pd.DataFrame, fractions: dict[str, float], seed: int = 0) -> pd.Series:
    """Assign each row to a named part (e.g. {'train': .7, 'val': .1, 'test': .2}) so no patient spans two.

    Patients are shuffled with ``seed`` and parts filled in order until each holds its share of images.
    """
    if not fractions or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    groups = patient_groups(df)
    sizes = groups.value_counts()
    shuffled = np.random.default_rng(seed).permutation(len(sizes))  # by position: no label lookup of odd names
    order, counts = sizes.index.to_numpy()[shuffled], sizes.to_numpy()[shuffled]
    cum = np.cumsum(counts) / len(df)
    bounds = np.cumsum(list(fractions.values()))
    names = list(fractions)
    part_of = {g: names[min(int(np.searchsorted(bounds, c - 1e-9, side="left")), len(names) - 1)]
               for g, c in zip(order, cum - counts / len(df) / 2)}
    return pd.Series([part_of[g] for g in groups], index=groups.index, name="part")
