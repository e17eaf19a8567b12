"""Datasets: manifests, content-hash deduplication, patient-level splits, and the preprocessing cache.

A dataset is a pandas DataFrame (the *manifest*), one row per image, with columns
``path, label (0 normal / 1 abnormal), finding, patient_id, source, orig_split``. Loading it turns the rows
into an :class:`ImageSet` of uint8 arrays at the model's input size, through a disk cache keyed by file
content and preprocessing so that nothing is decoded twice.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrad.errors import DataError, ImageReadError
from cxrad.files import UnsafeFileError, atomic_open, open_regular_file, read_regular_file, regular_file_size, \
    remove_stale_temporaries
from cxrad.io import MAX_FILE_BYTES, Preprocessing, decode_image, read_bytes, resize

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp"}
MANIFEST_COLUMNS = ["path", "label", "finding", "patient_id", "source", "orig_split"]
#: optional manifest columns read from a CSV as they are (``sample_weight``: relative sampling weight in training)
EXTRA_COLUMNS = ("view", "age", "sex", "sample_weight")
NORMAL_WORDS = {"normal", "0", "no finding", "no_finding", "no_findings", "healthy", "negative", "false"}
ABNORMAL_WORDS = {"abnormal", "1", "anomaly", "anomalous", "positive", "true"}
NPZ_SEP = "::"  # "file.npz::test[12]" names one array of a MedMNIST file
SAMPLES = Path(__file__).parent / "samples"
MAX_MANIFEST_BYTES = 1024 * 2**20
MAX_NPZ_BYTES = 4 * 2**30
#: a cache temporary this old is a killed writer's, not a live one's (other processes share the cache)
STALE_CACHE_TMP_S = 3600.0
HASH_CHUNK = 2**20


# ---------------------------------------------------------------------------------------------- manifests
def _empty_manifest() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in MANIFEST_COLUMNS})


def bundled_samples() -> pd.DataFrame:
    """The manifest of the sample images shipped inside the package (CC BY / unrestricted; no TB image)."""
    return from_csv(SAMPLES / "labels.csv", root=SAMPLES)


def _finish(df: pd.DataFrame, source: str) -> pd.DataFrame:
    for col, default in [("finding", ""), ("patient_id", None), ("source", source), ("orig_split", "")]:
        if col not in df:
            df[col] = default
    df["patient_id"] = df["patient_id"].where(df["patient_id"].notna() & (df["patient_id"].astype(str) != ""),
                                              df["path"].map(lambda p: Path(str(p)).stem))
    df["patient_id"] = df["patient_id"].astype(str)
    df["finding"] = df["finding"].fillna("").astype(str)
    df.loc[df["finding"].str.lower() == "no finding", "finding"] = "No finding"  # NIH writes "No Finding"
    df["orig_split"] = df["orig_split"].fillna("").astype(str)
    df["source"] = df["source"].fillna(source).astype(str)
    df["label"] = df["label"].astype(int)
    return df[MANIFEST_COLUMNS + [c for c in df.columns if c not in MANIFEST_COLUMNS]].reset_index(drop=True)


def parse_label(value) -> int:
    text = str(value).strip().lower()
    if text in NORMAL_WORDS:
        return 0
    if text in ABNORMAL_WORDS:
        return 1
    raise DataError(f"label {value!r} is neither normal nor abnormal (use normal/abnormal or 0/1)")


def _image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def from_folder(root, normal: tuple[str, ...] = ("NORMAL",), abnormal: tuple[str, ...] | None = None,
                source: str | None = None) -> pd.DataFrame:
    """Class sub-folders (e.g. ``train/NORMAL``, ``train/PNEUMONIA``).

    An image is normal if one of its parent folders is named in ``normal`` (case-insensitive); abnormal if a
    parent is in ``abnormal`` (any other class folder when ``abnormal`` is None). ``train``/``val``/``test``
    parents become ``orig_split``; the finding is the class folder name.
    """
    root = Path(root)
    normal_set = {n.lower() for n in normal}
    abnormal_set = None if abnormal is None else {a.lower() for a in abnormal}
    rows = []
    for p in _image_files(root):
        parents = [q.lower() for q in p.relative_to(root).parts[:-1]]
        split = next((q for q in parents if q in ("train", "val", "valid", "validation", "test")), "")
        classes = [q for q in parents if q not in ("train", "val", "valid", "validation", "test")]
        if not classes:
            continue
        cls = classes[-1]
        if cls in normal_set:
            label = 0
        elif abnormal_set is None or cls in abnormal_set:
            label = 1
        else:
            continue
        rows.append({"path": str(p), "label": label, "finding": p.parent.name, "orig_split": split,
                     "patient_id": _guess_patient(p.name)})
    if not rows:
        return _empty_manifest()
    return _finish(pd.DataFrame(rows), source or root.name)


def _guess_patient(name: str) -> str:
    """Kermany-style names carry the patient: ``person12_bacteria_45.jpeg``, ``IM-0117-0001.jpeg``."""
    for pattern in (r"^(person\d+)_", r"^((?:NORMAL2-)?IM-\d+)-\d+"):
        m = re.match(pattern, name)
        if m:
            return m.group(1)
    return Path(name).stem


NLM_PATTERN = re.compile(r"^(.*)_([01])$")


def from_nlm(root, source: str | None = None) -> pd.DataFrame:
    """NLM (Shenzhen / Montgomery) naming: ``CHNCXR_0001_0.png`` normal, ``..._1.png`` abnormal."""
    root = Path(root)
    rows = []
    for p in _image_files(root):
        m = NLM_PATTERN.match(p.stem)
        if m:
            label = int(m.group(2))
            rows.append({"path": str(p), "label": label, "patient_id": m.group(1),
                         "finding": "tuberculosis" if label else "No finding"})
    if not rows:
        return _empty_manifest()
    return _finish(pd.DataFrame(rows), source or root.name)


def from_csv(csv_path, root=None, source: str | None = None) -> pd.DataFrame:
    """A CSV manifest with columns path (or file), label, and optionally patient_id, finding, source, split."""
    csv_path = Path(csv_path)
    try:  # a FIFO or /dev/zero named as a manifest must not hang pandas
        raw = read_regular_file(csv_path, MAX_MANIFEST_BYTES)
    except UnsafeFileError as exc:
        raise DataError(f"{csv_path}: {exc}") from None
    df = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False)
    path_col = next((c for c in ("path", "file", "filename", "image") if c in df.columns), None)
    if path_col is None or "label" not in df.columns:
        raise DataError(f"{csv_path}: a manifest needs a 'path' (or 'file') column and a 'label' column")
    base = Path(root) if root is not None else csv_path.parent
    out = pd.DataFrame({
        "path": [p if os.path.isabs(p) or NPZ_SEP in p else str(base / p) for p in df[path_col]],
        "label": [parse_label(v) for v in df["label"]],
    })
    for col in ("finding", "patient_id", "source", *EXTRA_COLUMNS):
        if col in df.columns:
            out[col] = df[col].values
    if "sample_weight" in out:
        out["sample_weight"] = _weights(out["sample_weight"], csv_path)
    split_col = next((c for c in ("orig_split", "split") if c in df.columns), None)
    if split_col:
        out["orig_split"] = df[split_col].values
    return _finish(out, source or base.name)


def _weights(values: pd.Series, where) -> pd.Series:
    weights = pd.to_numeric(values, errors="coerce")
    if weights.isna().any() or not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise DataError(f"{where}: sample_weight must be finite, non-negative numbers, not all zero")
    return weights.astype(float)


def from_npz(npz_path, source: str | None = None) -> pd.DataFrame:
    """A MedMNIST ``.npz`` (``{train,val,test}_images`` and ``_labels``, label 0 = normal)."""
    npz_path = Path(npz_path)
    with _open_npz(npz_path) as data:
        rows = []
        for split in ("train", "val", "test"):
            if f"{split}_images" not in data:
                continue
            labels = data[f"{split}_labels"].reshape(len(data[f"{split}_labels"]), -1)[:, 0]
            for i, lab in enumerate(labels):
                rows.append({"path": f"{npz_path}{NPZ_SEP}{split}[{i}]", "label": int(lab != 0),
                             "orig_split": split, "patient_id": f"{split}{i}"})
    if not rows:
        raise DataError(f"{npz_path}: no '<split>_images' arrays (expected a MedMNIST file)")
    return _finish(pd.DataFrame(rows), source or npz_path.stem)


def open_dataset(path, kind: str = "auto", normal: tuple[str, ...] = ("NORMAL",),
                 abnormal: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Open a dataset of any supported kind; ``kind`` is auto|folder|nlm|csv|npz."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or directory")
    if kind == "auto":
        if p.suffix.lower() == ".csv":
            kind = "csv"
        elif p.suffix.lower() == ".npz":
            kind = "npz"
        elif p.is_dir() and (p / "labels.csv").exists():
            p, kind = p / "labels.csv", "csv"
        elif p.is_dir() and any(NLM_PATTERN.match(f.stem) for f in _image_files(p)[:50]):
            kind = "nlm"
        else:
            kind = "folder"
    loaders = {"csv": lambda: from_csv(p), "npz": lambda: from_npz(p), "nlm": lambda: from_nlm(p),
               "folder": lambda: from_folder(p, normal, abnormal)}
    if kind not in loaders:
        raise DataError(f"unknown dataset kind {kind!r}; use auto, folder, nlm, csv or npz")
    df = loaders[kind]()
    if df.empty:
        raise DataError(f"{path}: no labelled images found (kind={kind})")
    return df


def select_split(df: pd.DataFrame, split: str, where: str = "dataset") -> pd.DataFrame:
    """Rows of publisher split ``split`` (case-insensitive); 'train' also matches 'train (Shenzhen)'."""
    have = df["orig_split"].astype(str).str.strip().str.lower()
    want = split.strip().lower()
    mask = (have == want) | have.str.startswith(want + " (")
    if not mask.any():
        present = sorted(set(df["orig_split"].astype(str)) - {""})
        raise DataError(f"{where}: no images in split {split!r}; its splits are: "
                        f"{', '.join(present) if present else 'none (the data has no split column)'}")
    return df[mask.to_numpy()].reset_index(drop=True)


# ------------------------------------------------------------------------------------- hashing and splits
def file_hash(path: str) -> str:
    """SHA-256 of a file's bytes (of the array, for an npz entry); '' if unreadable. Only regular files of at
    most MAX_FILE_BYTES are hashed (checked before reading, so a device or a FIFO cannot hang it), in chunks."""
    try:
        if NPZ_SEP in path:
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
    return col("source") + "|" + col("orig_split") + "|" + col("patient_id")


def split_by_patient(df: pd.DataFrame, fractions: dict[str, float], seed: int = 0) -> pd.Series:
    """Assign each row to a named part (e.g. {'train': .7, 'val': .1, 'test': .2}) so no patient spans two.

    Patients are shuffled with ``seed`` and parts filled in order until each holds its share of images.
    """
    if not fractions or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    groups = patient_groups(df)
    sizes = groups.value_counts()
    order = np.random.default_rng(seed).permutation(sizes.index.to_numpy())
    cum = np.cumsum(sizes.loc[order].to_numpy()) / len(df)
    bounds = np.cumsum(list(fractions.values()))
    names = list(fractions)
    part_of = {g: names[min(int(np.searchsorted(bounds, c - 1e-9, side="left")), len(names) - 1)]
               for g, c in zip(order, cum - sizes.loc[order].to_numpy() / len(df) / 2)}
    return groups.map(part_of).rename("part")


# ----------------------------------------------------------------------------------- loading and caching
def _open_npz(file):
    """An npz archive that is a regular file within the size cap (np.load on a FIFO would block)."""
    try:
        regular_file_size(file, MAX_NPZ_BYTES)
    except UnsafeFileError as exc:
        raise DataError(f"{file}: {exc}") from None
    return np.load(file, allow_pickle=False)


@functools.lru_cache(maxsize=4)
def _npz_images(file: str, mtime_ns: int, size: int) -> dict[str, np.ndarray]:
    """Every ``*_images`` array of an npz, read once (per file version) instead of once per image."""
    with _open_npz(file) as data:
        return {k: data[k] for k in data.files if k.endswith("_images")}


def _npz_array(spec: str) -> np.ndarray:
    file, _, item = spec.partition(NPZ_SEP)
    m = re.fullmatch(r"(\w+)\[(\d+)\]", item)
    if not m:
        raise ImageReadError(f"bad npz reference {item!r}")
    st = os.stat(file)
    return _npz_images(file, st.st_mtime_ns, st.st_size)[f"{m.group(1)}_images"][int(m.group(2))]


def _decode(path: str) -> np.ndarray:
    if NPZ_SEP in path:
        arr = _npz_array(path)
        return (arr.astype(np.float32) / 255.0) if arr.ndim == 2 else arr.mean(-1).astype(np.float32) / 255.0
    return decode_image(read_bytes(path), Path(path).suffix, keep_uint8=True)


def prep_key(prep: Preprocessing) -> str:
    return f"s{prep.size}-{prep.resize}"


def default_cache_dir() -> Path:
    return Path(os.environ.get("CXRAD_CACHE", Path.home() / ".cache" / "cxrad"))


def atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_open(path) as fh:
        np.save(fh, arr)


def _try_cache(path: Path, arr: np.ndarray) -> None:
    """A cache that cannot be written (read-only or full disk) slows things down; it must not fail a run."""
    try:
        atomic_save_npy(path, arr)
    except OSError:
        pass


def _cached(path: Path, shape: tuple, mmap: bool = False) -> np.ndarray | None:
    """A cache entry if it is intact: a readable uint8 array of ``shape``; None if it is missing
    or damaged in any way (zero bytes, truncated, garbage, another array), so that the caller rebuilds it."""
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception:  # np.load raises ValueError, EOFError, OSError, ... depending on the damage
        return None
    if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.shape != tuple(shape):
        return None
    return arr


@functools.lru_cache(maxsize=64)
def _sweep_cache(folder: str) -> int:
    """Remove temporaries that killed writers left in a cache folder: at most once an hour per folder (a stamp
    file says when), so that a start-up does not walk a large cache. Other processes may be writing there now,
    so only old temporaries go."""
    stamp = Path(folder) / ".swept"
    try:
        if time.time() - stamp.stat().st_mtime < STALE_CACHE_TMP_S:
            return 0
    except OSError:
        pass
    removed = remove_stale_temporaries(folder, older_than_s=STALE_CACHE_TMP_S, recursive=True)
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()
    except OSError:
        pass  # a read-only cache is swept by whoever can write it
    return removed


@dataclass
class ImageSet:
    """Images ready for a model: ``images`` uint8 (N, H, W), ``frame`` their manifest rows (same order),
    ``errors`` the rows that could not be read, with an ``error`` column giving the reason."""

    images: np.ndarray
    frame: pd.DataFrame
    prep: Preprocessing
    errors: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["path", "error"]))

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labels(self) -> np.ndarray:
        return self.frame["label"].to_numpy(dtype=int)

    def subset(self, mask) -> "ImageSet":
        mask = np.asarray(mask)
        idx = np.flatnonzero(mask) if mask.dtype == bool else mask
        return ImageSet(np.asarray(self.images[idx]), self.frame.iloc[idx].reset_index(drop=True), self.prep,
                        self.errors.iloc[0:0])

    @classmethod
    def from_arrays(cls, images: np.ndarray, prep: Preprocessing | None = None, labels=None) -> "ImageSet":
        images = np.asarray(images)
        if images.ndim != 3:
            raise ValueError(f"expected images of shape (N, H, W), got {images.shape}")
        if images.dtype != np.uint8:
            images = np.clip(np.asarray(images, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        n = len(images)
        frame = pd.DataFrame({"path": [f"array[{i}]" for i in range(n)],
                              "label": np.zeros(n, int) if labels is None else np.asarray(labels, int)})
        return cls(images, frame, prep or Preprocessing(size=images.shape[1]))


def load_images(data, prep: Preprocessing, cache_dir=None, workers: int = 4, progress: bool = False,
                cache_set: bool = True) -> ImageSet:
    """Decode and resize a manifest (or a list of paths) into an ImageSet.

    Unreadable files do not stop the batch: they go to ``ImageSet.errors`` with their reason. With a
    ``cache_dir``, each decoded image is stored once as uint8 under its content hash and preprocessing key,
    and (``cache_set``) the whole set as one memory-mapped array, so later epochs and runs never decode again;
    a streaming scorer's batches change from run to run, so it keeps only the per-image entries.
    """
    if isinstance(data, (str, os.PathLike)):
        data = [data]
    frame = data.copy() if isinstance(data, pd.DataFrame) else pd.DataFrame(
        {"path": [str(p) for p in data], "label": 0})
    frame = frame.reset_index(drop=True)
    if "sha256" not in frame:
        frame = add_hashes(frame, workers)
    cache = Path(cache_dir) / prep_key(prep) if cache_dir else None
    if cache is not None:
        _sweep_cache(str(cache))
    square = (prep.size, prep.size)

    set_file = None
    if cache is not None and cache_set and (frame["sha256"] != "").all() and len(frame):
        set_key = hashlib.sha256("\n".join(frame["sha256"]).encode()).hexdigest()[:32]
        set_file = cache / "sets" / f"{set_key}.npy"
        images = _cached(set_file, (len(frame), *square), mmap=True)
        if images is not None:
            return ImageSet(images, frame, prep)  # (a missing or damaged set file is rebuilt below)

    def one(i: int):
        path, digest = frame.at[i, "path"], frame.at[i, "sha256"]
        item = cache / digest[:2] / f"{digest}.npy" if cache is not None and digest else None
        if item is not None:
            arr = _cached(item, square)
            if arr is not None:
                return arr, None
        try:
            arr = resize(_decode(path), prep)
        except ImageReadError as exc:
            return None, str(exc)
        except Exception as exc:  # a reader bug must not lose the rest of the batch
            return None, f"unreadable ({type(exc).__name__}: {exc})"
        if item is not None:
            _try_cache(item, arr)
        return arr, None

    iterator = range(len(frame))
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(one, iterator)
        if progress:
            from tqdm.auto import tqdm
            results = tqdm(results, total=len(frame), desc="reading images", unit="img")
        results = list(results)
    ok = np.array([r[0] is not None for r in results], dtype=bool)
    images = np.stack([r[0] for r in results if r[0] is not None]) if ok.any() else \
        np.zeros((0, prep.size, prep.size), np.uint8)
    errors = frame.loc[~ok].assign(error=[r[1] for r in results if r[0] is None]).reset_index(drop=True)
    if set_file is not None and cache_set and ok.all():
        _try_cache(set_file, images)
    return ImageSet(images, frame[ok].reset_index(drop=True), prep, errors)



def as_imageset(data, prep: Preprocessing, cache_dir=None, progress: bool = False) -> ImageSet:
    """Any supported input as an ImageSet at ``prep``'s size: an ImageSet (resized if its size differs), a
    uint8 or [0, 1] float array (N, H, W) or (H, W), a manifest DataFrame, or paths (unreadable files become
    error rows)."""
    if isinstance(data, ImageSet):
        if data.images.shape[1:] == (prep.size, prep.size):
            return data
        images = np.stack([resize(np.asarray(im, np.uint8), prep) for im in data.images]) \
            if len(data) else np.zeros((0, prep.size, prep.size), np.uint8)
        return ImageSet(images, data.frame, prep, data.errors)
    if isinstance(data, (str, os.PathLike, list, tuple, pd.DataFrame)):
        return load_images(data, prep, cache_dir=cache_dir, progress=progress)
    if hasattr(data, "__array__"):
        arr = np.asarray(data)
        return as_imageset(ImageSet.from_arrays(arr[None] if arr.ndim == 2 else arr), prep)
    raise TypeError(f"cannot read images from a {type(data).__name__}; give an ImageSet, an array (N, H, W), "
                    "a manifest DataFrame or paths")


def with_labels(data, y) -> "ImageSet | pd.DataFrame":
    """``data`` with the labels ``y`` attached row by row before anything is read, so that an unreadable file
    cannot shift the labels of the files after it."""
    y = np.asarray(y, int).ravel()
    if isinstance(data, (str, os.PathLike)):
        data = [data]
    if isinstance(data, (list, tuple)):
        data = pd.DataFrame({"path": [str(p) for p in data]})
    elif not isinstance(data, (pd.DataFrame, ImageSet)):
        arr = np.asarray(data)
        data = ImageSet.from_arrays(arr[None] if arr.ndim == 2 else arr)
    if isinstance(data, ImageSet) and len(data.errors):
        raise ValueError("labels cannot be matched to an ImageSet with unreadable rows; label its manifest")
    if len(data) != len(y):
        raise ValueError(f"{len(data)} images but {len(y)} labels")
    if isinstance(data, pd.DataFrame):
        return data.assign(label=y)
    return ImageSet(data.images, data.frame.assign(label=y), data.prep)


def hold_out_normals(normal: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Split normal images into (train, validation) by patient, ``fraction`` of the images held out (at least
    two, whole patients)."""
    if len(normal) < 10:
        raise DataError(f"need at least 10 normal images to hold out validation ones, got {len(normal)}")
    if "patient_id" not in normal.frame:
        is_val = np.zeros(len(normal), bool)
        is_val[np.random.default_rng(seed).permutation(len(normal))[:max(2, int(round(fraction * len(normal))))]] = True
    else:
        part = split_by_patient(normal.frame, {"train": 1 - fraction, "val": fraction}, seed=seed)
        is_val = (part == "val").to_numpy().copy()
        if is_val.sum() < 2:  # small sets: hold out whole patients, in seeded order, until 2 images
            groups = patient_groups(normal.frame).to_numpy()
            for g in np.random.default_rng(seed).permutation(np.unique(groups)):
                is_val |= groups == g
                if is_val.sum() >= 2:
                    break
    return normal.subset(~is_val), normal.subset(is_val)


def fingerprint(images: ImageSet) -> str:
    """Order-independent hash of a set's image content (the training-data fingerprint of a bundle)."""
    if "sha256" in images.frame and (images.frame["sha256"] != "").all():
        items = sorted(images.frame["sha256"])
    else:
        items = sorted(hashlib.sha256(im.tobytes()).hexdigest() for im in np.asarray(images.images))
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


def describe(df: pd.DataFrame) -> str:
    counts = df.groupby(["source", "label"]).size().unstack(fill_value=0)
    return json.dumps({s: {"normal": int(r.get(0, 0)), "abnormal": int(r.get(1, 0))} for s, r in counts.iterrows()})
