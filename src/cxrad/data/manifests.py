"""Manifests: one row per image (``path, label, finding, patient_id, source, orig_split``) from class folders, NLM
names, CSV files or MedMNIST arrays."""
from __future__ import annotations

import functools
import io
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from cxrad.errors import DataError, DataWarning, ImageReadError
from cxrad.files import UnsafeFileError, read_regular_file, regular_file_size, walk_files
from cxrad.imaging import IMAGE_SUFFIXES

MANIFEST_COLUMNS = ["path", "label", "finding", "patient_id", "source", "orig_split"]
#: optional manifest columns read from a CSV as they are (``sample_weight``: relative sampling weight in training)
EXTRA_COLUMNS = ("view", "age", "sex", "sample_weight")
NORMAL_WORDS = {"normal", "0", "no finding", "no_finding", "no_findings", "healthy", "negative", "false"}
ABNORMAL_WORDS = {"abnormal", "1", "anomaly", "anomalous", "positive", "true"}
#: publisher split folders of a class-folder dataset (they become ``orig_split``, never a class)
SPLIT_FOLDERS = ("train", "val", "valid", "validation", "test")
#: the CSV files a dataset folder may hold, in the order they are looked for (``all_labels.csv`` joins the
#: ``labels.csv`` of sub-datasets)
LABEL_FILES = ("labels.csv", "all_labels.csv")
NPZ_SEP = "::"  # "file.npz::test[12]" names one array of a MedMNIST file
SAMPLES = Path(__file__).parent / "samples"
MAX_MANIFEST_BYTES = 1024 * 2**20
MAX_NPZ_BYTES = 4 * 2**30
#: most bytes the image arrays of one npz may inflate to (a small zip can hold gigabytes of zeros)
MAX_NPZ_IMAGE_BYTES = 2 * 2**30
_NPZ_ITEM = re.compile(r"(\w+)\[(\d+)\]")
#: a cache temporary this old is a killed writer's, not a live one's (other processes share the cache)
def _empty_manifest() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in MANIFEST_COLUMNS})


def bundled_samples() -> pd.DataFrame:
    """The manifest of the sample images shipped inside the package (CC BY / unrestricted; no TB image)."""
    return from_csv(SAMPLES / "labels.csv", root=SAMPLES)


def _finish(df: pd.DataFrame, source: str) -> pd.DataFrame:
    for col, default in [("finding", ""), ("patient_id", None), ("source", source), ("orig_split", "")]:
        if col not in df:
            df[col] = default
    df["patient_id"] = pd.Series([Path(str(p)).stem if pd.isna(v) or str(v) == "" else str(v)
                                  for v, p in zip(df["patient_id"], df["path"])], index=df.index, dtype=object)
    df["finding"] = _text(df["finding"].fillna(""))
    df.loc[df["finding"].str.lower() == "no finding", "finding"] = "No finding"  # NIH writes "No Finding"
    df["orig_split"] = _text(df["orig_split"].fillna(""))
    df["source"] = _text(df["source"].fillna(source))
    df["label"] = df["label"].astype(int)
    return df[MANIFEST_COLUMNS + [c for c in df.columns if c not in MANIFEST_COLUMNS]].reset_index(drop=True)


def _text(values: pd.Series) -> pd.Series:
    """Text as an object column: names that are not UTF-8 (kept as surrogates) cannot go into Arrow strings."""
    return pd.Series([str(v) for v in values], index=values.index, dtype=object)


def label_word(text) -> str:
    """A label or class folder name compared with NORMAL_WORDS / ABNORMAL_WORDS: case, spaces, '-' and '_' do not
    matter ('No_findings' is 'no findings')."""
    return re.sub(r"[\s_-]+", " ", str(text).strip().lower())


_NORMAL = {label_word(w) for w in NORMAL_WORDS}
_ABNORMAL = {label_word(w) for w in ABNORMAL_WORDS}


def parse_label(value) -> int:
    text = label_word(value)
    if text in _NORMAL:
        return 0
    if text in _ABNORMAL:
        return 1
    raise DataError(f"label {value!r} is neither normal nor abnormal (use normal/abnormal or 0/1)")


def _image_files(root: Path) -> list[Path]:
    files, _ = walk_files(root)  # no recursion limit, no symlinked folders
    return [Path(p) for p in files if Path(p).suffix.lower() in IMAGE_SUFFIXES and os.path.isfile(p)]


def from_folder(root, normal: tuple[str, ...] | None = None, abnormal: tuple[str, ...] | None = None,
                source: str | None = None) -> pd.DataFrame:
    """Class sub-folders (e.g. ``train/NORMAL``, ``train/PNEUMONIA``), or a folder of normal images.

    An image's class folder is its nearest parent that is not a split folder (``train``, ``val``, ``test``...;
    those become ``orig_split``); the finding is its name. It is normal if named in ``normal`` (default: the
    words of NORMAL_WORDS, as CSV labels: ``NORMAL``, ``No_findings``, ``healthy``...; case, spaces, '-' and
    '_' ignored), abnormal if named in ``abnormal`` (default: every other class folder). A folder with no class
    sub-folders at all (its images directly in it, or in split folders only) is a folder of normal images, as
    anomalib's ``normal_dir``; a DataWarning says so. ``.`` in ``normal`` makes images with no class folder
    normal in any folder.
    """
    root = Path(root)
    normal_set = {label_word(n) for n in normal} if normal else set(_NORMAL)
    abnormal_set = None if abnormal is None else {label_word(a) for a in abnormal}
    found = []
    for p in _image_files(root):
        parents = p.relative_to(root).parts[:-1]
        split = next((q.lower() for q in parents if q.lower() in SPLIT_FOLDERS), "")
        classes = [q for q in parents if q.lower() not in SPLIT_FOLDERS]
        found.append((p, split, classes[-1] if classes else None))
    flat = bool(found) and all(cls is None for _, _, cls in found)
    rows, unclassed = [], 0
    for p, split, cls in found:
        if cls is None:
            if not (flat or "." in normal_set):
                unclassed += 1
                continue
            label = 0
        elif label_word(cls) in normal_set:
            label = 0
        elif abnormal_set is None or label_word(cls) in abnormal_set:
            label = 1
        else:
            continue
        rows.append({"path": str(p), "label": label, "finding": cls or "", "orig_split": split,
                     "patient_id": _guess_patient(p.name)})
    if flat:
        warnings.warn(f"{root}: no class sub-folders, so its {len(rows)} image(s) are all taken as normal (a folder "
                      "of normal images); for labelled data use class folders, NLM names or a CSV", DataWarning,
                      stacklevel=2)
    elif unclassed:
        warnings.warn(f"{root}: {unclassed} image(s) lie outside any class folder and were left out "
                      "(--normal . takes them as normal)", DataWarning, stacklevel=2)
    if not rows:
        return _empty_manifest()
    # object columns: a file name that is not UTF-8 (kept as surrogates) cannot go into an Arrow string column
    frame = pd.DataFrame({k: pd.Series([r[k] for r in rows], dtype=int if k == "label" else object)
                          for k in rows[0]})
    return _finish(frame, source or root.name)


def class_folders(root) -> list[str]:
    """The class folder names of a class-folder dataset (split folders left out), sorted."""
    root = Path(root)
    names = set()
    for p in _image_files(root):
        classes = [q for q in p.relative_to(root).parts[:-1] if q.lower() not in SPLIT_FOLDERS]
        names.update(classes[-1:])
    return sorted(names, key=str.lower)


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
        "path": [p if os.path.isabs(p) or npz_reference(p) else str(base / p) for p in df[path_col]],
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


def dataset_kind(path, kind: str = "auto") -> tuple[Path, str]:
    """(the file or folder to read, its kind) for ``open_dataset``: ``kind`` auto is guessed from the path (a
    folder's ``labels.csv`` or ``all_labels.csv``, NLM names, else class folders)."""
    p = Path(path)
    if kind != "auto":
        return p, kind
    if p.suffix.lower() == ".csv":
        return p, "csv"
    if p.suffix.lower() == ".npz":
        return p, "npz"
    if p.is_dir():
        for name in LABEL_FILES:
            if (p / name).is_file():
                return p / name, "csv"
        if any(NLM_PATTERN.match(f.stem) for f in _image_files(p)[:50]):
            return p, "nlm"
    return p, "folder"


def open_dataset(path, kind: str = "auto", normal: tuple[str, ...] | None = None,
                 abnormal: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Open a dataset of any supported kind; ``kind`` is auto|folder|nlm|csv|npz (see ``dataset_kind``).

    A folder read as class folders or NLM names whose sub-folders hold their own label files (sub-datasets
    flattened into one) gives a DataWarning naming them."""
    if not Path(path).exists():
        raise DataError(f"{path}: no such file or directory")
    p, kind = dataset_kind(path, kind)
    loaders = {"csv": lambda: from_csv(p), "npz": lambda: from_npz(p), "nlm": lambda: from_nlm(p),
               "folder": lambda: from_folder(p, normal, abnormal)}
    if kind not in loaders:
        raise DataError(f"unknown dataset kind {kind!r}; use auto, folder, nlm, csv or npz")
    if kind in ("folder", "nlm") and p.is_dir():
        _warn_nested(p)
    df = loaders[kind]()
    if df.empty:
        empty = p.is_dir() and not _image_files(p)
        raise DataError(f"{path}: no labelled images found (kind={kind})"
                        + (f": no image files in it ({', '.join(sorted(IMAGE_SUFFIXES))})" if empty else ""))
    return df


def _warn_nested(root: Path) -> None:
    """Sub-folders with their own label files are datasets of their own: reading their parent as one folder
    ignores their labels and sources and mixes their images (copies of the same films among them)."""
    nested = sorted({f.parent.relative_to(root).as_posix() for name in LABEL_FILES for f in root.rglob(name)
                     if f.parent != root and f.is_file()})
    if nested:
        shown = ", ".join(f"{n}/" for n in nested[:6]) + (f" and {len(nested) - 6} more" if len(nested) > 6 else "")
        warnings.warn(f"{root}: holds {len(nested)} sub-dataset(s) with their own labels.csv ({shown}), read here as "
                      "one folder of class sub-folders: their labels and sources are ignored and their images mixed; "
                      "give one sub-dataset, or a CSV manifest of the ones you mean", DataWarning, stacklevel=3)


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


def _open_npz(file):
    """An npz archive that is a regular file within the size cap (np.load on a FIFO would block)."""
    try:
        regular_file_size(file, MAX_NPZ_BYTES)
    except UnsafeFileError as exc:
        raise DataError(f"{file}: {exc}") from None
    return np.load(file, allow_pickle=False)


def npz_reference(path: str) -> tuple[str, str, int] | None:
    """(npz file, split, index) if ``path`` names one image of an npz (``file.npz::test[12]``), else None. A path
    that exists as a file (or a link) is always that file, whatever its name: ``scan::1.png`` or a file named
    ``x::train[0]`` beside an npz ``x`` is read as itself, never as an array."""
    path = str(path)
    if NPZ_SEP not in path or os.path.lexists(path):
        return None
    file, _, item = path.rpartition(NPZ_SEP)
    m = _NPZ_ITEM.fullmatch(item)
    if not m or not file or not os.path.isfile(file):
        return None
    return file, m.group(1), int(m.group(2))


def _npz_image_arrays(data) -> list[str]:
    """The ``*_images`` members of an open npz, checked from their headers (before inflating anything) to hold
    uint8 arrays of at most MAX_NPZ_IMAGE_BYTES together."""
    names, total = [k for k in data.files if k.endswith("_images")], 0
    for name in names:
        with data.zip.open(f"{name}.npy") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(fh)
        if dtype != np.uint8 or len(shape) not in (3, 4):
            raise DataError(f"npz array {name} is {dtype} {shape}, not uint8 images")
        total += int(np.prod(shape, dtype=np.int64))
    if total > MAX_NPZ_IMAGE_BYTES:
        raise DataError(f"npz image arrays would inflate to {total} bytes (limit {MAX_NPZ_IMAGE_BYTES})")
    return names


@functools.lru_cache(maxsize=4)
def _npz_images(file: str, mtime_ns: int, size: int) -> dict[str, np.ndarray]:
    """Every ``*_images`` array of an npz, read once (per file version) instead of once per image."""
    with _open_npz(file) as data:
        return {k: data[k] for k in _npz_image_arrays(data)}


def _npz_array(spec: str) -> np.ndarray:
    ref = npz_reference(spec)
    if ref is None:
        raise ImageReadError(f"not an npz reference: {spec!r}")
    file, split, index = ref
    st = os.stat(file)
    try:
        images = _npz_images(file, st.st_mtime_ns, st.st_size)
    except DataError as exc:
        raise ImageReadError(str(exc)) from None
    except Exception as exc:  # a damaged archive
        raise ImageReadError(f"unreadable npz ({type(exc).__name__}: {exc})") from None
    key = f"{split}_images"
    if key not in images or not 0 <= index < len(images[key]):
        raise ImageReadError(f"npz has no image {split}[{index}]")
    return images[key][index]


def describe(df: pd.DataFrame) -> str:
    counts = df.groupby(["source", "label"]).size().unstack(fill_value=0)
    return json.dumps({s: {"normal": int(r.get(0, 0)), "abnormal": int(r.get(1, 0))} for s, r in counts.iterrows()})
