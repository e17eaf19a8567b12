"""The evaluation protocols of the accuracy benchmark, on the shared data folder (``../shared/data``).

Each protocol gives a training manifest (normal images only) and a labelled test manifest. Data splits
are patient-level and fixed by ``split_seed`` (default 0) so that model seeds, not data splits, vary
between repeated runs. Duplicates (same content hash) are removed first.

- ``kermany224``: the ZhangLab protocol: the publisher's train normals -> the publisher's test split.
- ``tb``: tb_shenzhen_montgomery128: 60% of normal patients train, the other 40% + every TB image test.
- ``nih``: nih_cxr14_talo: 60% of "No Finding" patients train, the rest + every pneumonia image test.
- ``covid``: the CAE paper's protocol: train on kermany224 train normals + the nih train normals, test
  held-out nih normals against covid_hannover (cross-site: read with care, see the data README).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .data import deduplicate, from_csv, split_by_patient

PROTOCOLS = ("kermany224", "tb", "nih", "covid")
TRAIN_FRACTION = 0.6


@dataclass
class Protocol:
    name: str
    train: pd.DataFrame  # normal images only
    test: pd.DataFrame   # normal and abnormal

    def summary(self) -> str:
        t = self.test["label"]
        return (f"{self.name}: train {len(self.train)} normal; test {int((t == 0).sum())} normal + "
                f"{int((t == 1).sum())} abnormal")


def default_data_root() -> Path:
    """``../shared/data`` beside the checkout, or $CXRAD_DATA."""
    import os
    if os.environ.get("CXRAD_DATA"):
        return Path(os.environ["CXRAD_DATA"])
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return Path("../shared/data")


def _source(root: Path, folder: str) -> pd.DataFrame:
    df, _ = deduplicate(from_csv(root / folder / "labels.csv", source=folder))
    return df


def _normal_split(df: pd.DataFrame, split_seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    normals, abnormal = df[df["label"] == 0], df[df["label"] == 1]
    part = split_by_patient(normals, {"train": TRAIN_FRACTION, "test": 1 - TRAIN_FRACTION}, seed=split_seed)
    train = normals[(part == "train").to_numpy()]
    # abnormal images of a training patient would leak the patient into both sides
    train_patients = set(train["patient_id"])
    test = pd.concat([normals[(part == "test").to_numpy()], abnormal[~abnormal["patient_id"].isin(train_patients)]])
    return train.reset_index(drop=True), test.reset_index(drop=True)


def load_protocol(name: str, root=None, split_seed: int = 0) -> Protocol:
    root = Path(root) if root else default_data_root()
    if name == "kermany224":
        df = _source(root, "kermany224")
        train = df[(df["orig_split"] == "train") & (df["label"] == 0)]
        test = df[df["orig_split"] == "test"]
    elif name == "tb":
        train, test = _normal_split(_source(root, "tb_shenzhen_montgomery128"), split_seed)
    elif name == "nih":
        train, test = _normal_split(_source(root, "nih_cxr14_talo"), split_seed)
    elif name == "covid":
        kermany = _source(root, "kermany224")
        nih_train, nih_test = _normal_split(_source(root, "nih_cxr14_talo"), split_seed)
        train = pd.concat([kermany[(kermany["orig_split"] == "train") & (kermany["label"] == 0)], nih_train])
        test = pd.concat([nih_test[nih_test["label"] == 0], _source(root, "covid_hannover")])
    else:
        raise ValueError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    return Protocol(name, train.reset_index(drop=True), test.reset_index(drop=True))
