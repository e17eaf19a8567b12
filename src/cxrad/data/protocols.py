"""The evaluation protocols of the accuracy benchmark, on the shared data folder (``../shared/data``).

Each protocol gives a training manifest (normal images only) and a labelled test manifest. Data splits
are patient-level and fixed by ``split_seed`` (default 0) so that model seeds, not data splits, vary
between repeated runs. Duplicates (same content hash) are removed first.

- ``kermany224``: the ZhangLab protocol: the publisher's train normals -> the publisher's test split.
- ``tb``: tb_shenzhen_montgomery128: 60% of normal patients train, the other 40% + every TB image test.
- ``nih``: nih_cxr14_talo: 60% of "No Finding" patients train, the rest + every pneumonia image test.
- ``covid``: the CAE paper's protocol: train on kermany224 train normals + the nih train normals, test
  held-out nih normals against covid_hannover (cross-site: read with care, see the data README).
- ``nih14``: NIH normal vs any of NIH's 14 findings, one hospital: train on the normals of nih_cxr14_talo and
  nih_cxr14_64, test on nih_cxr14_chexnet (no NIH patient is in two of these folders).

Training pools of shipped models (``training_pool``), none holding a test patient of any protocol or a TB film:

- ``mix``: kermany224 train normals + nih train normals (the ``covid`` protocol's training set; 1,340 paediatric
  films and 120 adult ones);
- ``adult``: every adult normal: nih train normals + the nih_cxr14_64 normals of patients aged 18 or more;
- ``adult-weighted``: ``mix`` + ``adult``, with sampling weights that make adult films half of every epoch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrad.data import deduplicate, from_csv, split_by_patient

PROTOCOLS = ("kermany224", "tb", "nih", "nih14", "covid")
POOLS = ("mix", "adult", "adult-weighted")
TRAIN_FRACTION = 0.6
ADULT_AGE = 18
#: the adult share of every epoch in the ``adult-weighted`` pool
ADULT_SHARE = 0.5


@dataclass
class Protocol:
    name: str
    train: pd.DataFrame  # normal images only
    test: pd.DataFrame   # normal and abnormal
    pool: pd.DataFrame | None = None  # unlabelled films (labels kept only to describe the pool), no test patient

    def summary(self) -> str:
        t = self.test["label"]
        text = (f"{self.name}: train {len(self.train)} normal; test {int((t == 0).sum())} normal + "
                f"{int((t == 1).sum())} abnormal")
        if self.pool is not None:
            text += f"; pool {len(self.pool)} ({100 * self.pool['label'].mean():.0f}% abnormal)"
        return text


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
    elif name == "nih14":
        train = pd.concat([_normals(root, "nih_cxr14_talo"), _normals(root, "nih_cxr14_64")])
        test = _source(root, "nih_cxr14_chexnet")
    elif name == "covid":
        kermany = _source(root, "kermany224")
        nih_train, nih_test = _normal_split(_source(root, "nih_cxr14_talo"), split_seed)
        train = pd.concat([kermany[(kermany["orig_split"] == "train") & (kermany["label"] == 0)], nih_train])
        test = pd.concat([nih_test[nih_test["label"] == 0], _source(root, "covid_hannover")])
    else:
        raise ValueError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    train, _ = deduplicate(train.reset_index(drop=True))
    return Protocol(name, train, test.reset_index(drop=True))


#: the protocols that also have an unlabelled pool (``pooled_protocol``)
POOLED = ("kermany224", "tb", "nih14")


def pooled_protocol(name: str, root=None, split_seed: int = 0) -> Protocol:
    """A protocol with a pool of unlabelled films for detectors that learn from one (DDAD):

    - ``kermany224``: the pool is the publisher's train split with its labels ignored (DDAD's own protocol);
    - ``tb``: the TB films are split by patient, half into the pool, half into the test (the test's normals are
      the tb protocol's);
    - ``nih14``: the pool is every film of the NIH training patients, both classes (nih_cxr14_talo and
      nih_cxr14_64); the test is nih_cxr14_chexnet's, other patients.
    No pool holds a test patient."""
    root = Path(root) if root else default_data_root()
    base = load_protocol(name, root, split_seed)
    if name == "kermany224":
        df = _source(root, "kermany224")
        pool, test = df[df["orig_split"] == "train"], base.test
    elif name == "tb":
        normal_test, abnormal = base.test[base.test["label"] == 0], base.test[base.test["label"] == 1]
        pool, rest = split_halves(abnormal, split_seed)
        test = pd.concat([normal_test, rest])
    elif name == "nih14":
        pool, test = pd.concat([_source(root, "nih_cxr14_talo"), _source(root, "nih_cxr14_64")]), base.test
    else:
        raise ValueError(f"protocol {name!r} has no unlabelled pool; choose from {', '.join(POOLED)}")
    pool, _ = deduplicate(pool.reset_index(drop=True))
    return Protocol(name, base.train, test.reset_index(drop=True), pool.reset_index(drop=True))


def split_halves(df: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two halves of a labelled set by patient, each class split on its own (so both halves hold both)."""
    parts = [], []
    for _, group in df.groupby("label"):
        half = (split_by_patient(group, {"a": 0.5, "b": 0.5}, seed=seed) == "a").to_numpy()
        parts[0].append(group[half])
        parts[1].append(group[~half])
    return tuple(pd.concat(p).reset_index(drop=True) for p in parts)


def _normals(root: Path, folder: str) -> pd.DataFrame:
    df = _source(root, folder)
    return df[df["label"] == 0]


def _adults(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of known age >= 18, or of unknown age from an adult-only source (every NIH folder is mostly adult,
    but its ages are given where they are known)."""
    if "age" not in df:
        return df
    age = pd.to_numeric(df["age"], errors="coerce")
    return df[age.isna() | (age >= ADULT_AGE)]


def training_pool(name: str, root=None, split_seed: int = 0) -> pd.DataFrame:
    """The normal films a shipped model trains on (see the module docstring). No test patient of any protocol
    is in it, and no TB film; duplicates are removed by content hash (weights, not copies, set the mix)."""
    root = Path(root) if root else default_data_root()
    if name not in POOLS:
        raise ValueError(f"unknown training pool {name!r}; choose from {', '.join(POOLS)}")
    mix = load_protocol("covid", root, split_seed).train
    adult = pd.concat([mix[mix["source"] == "nih_cxr14_talo"], _adults(_normals(root, "nih_cxr14_64"))])
    if name == "mix":
        pool = mix
    elif name == "adult":
        pool = adult
    else:
        pool = pd.concat([mix, adult])
    pool, _ = deduplicate(pool.reset_index(drop=True))
    if name == "adult-weighted":
        is_adult = pool["source"].str.startswith("nih_").to_numpy()
        # per image: the adult films share ADULT_SHARE of the weight, the paediatric ones the rest
        pool["sample_weight"] = np.where(is_adult, ADULT_SHARE / is_adult.sum(),
                                         (1 - ADULT_SHARE) / max((~is_adult).sum(), 1)) * len(pool)
    return pool.reset_index(drop=True)


def views(test: pd.DataFrame) -> dict[str, np.ndarray]:
    """Masks of the AP-only and PA-only films of a test split that has a ``view`` column (empty otherwise)."""
    if "view" not in test:
        return {}
    view = test["view"].astype(str).str.upper()
    return {v: (view == v).to_numpy() for v in ("AP", "PA") if (view == v).any()}
