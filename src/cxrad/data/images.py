"""Manifests to uint8 arrays at the model's size (an ImageSet), through a disk cache keyed by content and
preprocessing so that nothing is decoded twice."""
from __future__ import annotations

import functools
import hashlib
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrad.data.manifests import _npz_array, npz_reference
from cxrad.data.splits import add_hashes, patient_groups, split_by_patient
from cxrad.errors import DataError, ImageReadError
from cxrad.files import UnsafeFileError, atomic_open, open_regular_file, regular_file_size, remove_stale_temporaries
from cxrad.imaging import MAX_FILE_BYTES, Preprocessing, decode_image, read_bytes, resize
from cxrad.imaging.bounds import FILE_BUDGET

#: a manifest column keeping each row's place in the input, so scored and unreadable rows can be merged in order
ORDER = "_input_row"
#: a cache temporary this old is a killed writer's, not a live one's (other processes share the cache)
STALE_CACHE_TMP_S = 3600.0


def read_source(path: str) -> tuple[bytes | np.ndarray, str]:
    """(content, SHA-256 of that content) of a file (its bytes) or of an npz entry (its array): what is hashed is
    what is decoded, so a file replaced between the two can never put its pixels under the other's hash."""
    if npz_reference(path):
        arr = _npz_array(path)
        return arr, hashlib.sha256(arr.tobytes()).hexdigest()
    data = read_bytes(path)
    return data, hashlib.sha256(data).hexdigest()


def decode_source(path: str, content: bytes | np.ndarray) -> np.ndarray:
    if isinstance(content, np.ndarray):  # an npz entry: uint8 grey or RGB
        return (content.astype(np.float32) / 255.0) if content.ndim == 2 else \
            content.mean(-1).astype(np.float32) / 255.0
    return decode_image(content, Path(path).suffix, keep_uint8=True)


def _decode(path: str) -> np.ndarray:
    return decode_source(path, read_source(path)[0])


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
    """A cache entry if it is intact: a regular file holding a uint8 .npy array of ``shape``; None if it is
    missing or damaged in any way (zero bytes, truncated, garbage, another array), so that the caller rebuilds
    it. Anything else at the entry's name (a FIFO, a device, a symlink to one) is never read: no hang."""
    shape = tuple(shape)
    try:
        fh = open_regular_file(path, sys.maxsize)
    except (UnsafeFileError, OSError):
        return None
    with fh:
        try:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            found, fortran, dtype = read_header(fh)
            n = int(np.prod(shape, dtype=np.int64))
            offset = fh.tell()
            if dtype != np.uint8 or tuple(found) != shape or fortran or os.fstat(fh.fileno()).st_size < offset + n:
                return None
            if mmap:
                return np.memmap(fh, dtype=np.uint8, mode="r", offset=offset, shape=shape)
            data = fh.read(n)
        except Exception:  # a damaged header raises ValueError, EOFError, OSError, ... depending on the damage
            return None
    if len(data) != n:
        return None
    return np.frombuffer(bytearray(data), np.uint8).reshape(shape)


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
    # object dtype: pandas' default string dtype (Arrow) cannot hold a file name that is not valid UTF-8
    frame = data.copy() if isinstance(data, pd.DataFrame) else pd.DataFrame(
        {"path": pd.Series([os.fspath(p) for p in data], dtype=object), "label": 0})
    frame = frame.reset_index(drop=True)
    frame[ORDER] = np.arange(len(frame))
    cache = Path(cache_dir) / prep_key(prep) if cache_dir else None
    if cache is not None:
        _sweep_cache(str(cache))
    square = (prep.size, prep.size)

    set_file = None
    if cache is not None and cache_set and len(frame):
        known = add_hashes(frame, workers)
        if (known["sha256"] != "").all():
            set_key = hashlib.sha256("\n".join(known["sha256"]).encode()).hexdigest()[:32]
            images = _cached(cache / "sets" / f"{set_key}.npy", (len(frame), *square), mmap=True)
            if images is not None:
                return ImageSet(images, known, prep)  # (a missing or damaged set file is rebuilt below)

    def one(i: int):
        """(image, error, SHA-256 of the content decoded): the file is read once, and the bytes hashed are the
        bytes decoded, so a cache entry always holds the pixels of the content its name says."""
        path, digest, item = frame.at[i, "path"], "", None
        try:
            try:
                size = 0 if npz_reference(path) else regular_file_size(path, MAX_FILE_BYTES)
            except UnsafeFileError as exc:
                raise ImageReadError(str(exc)) from None
            with FILE_BUDGET.reserve(size):
                content, digest = read_source(path)
                item = cache / digest[:2] / f"{digest}.npy" if cache is not None else None
                if item is not None:
                    arr = _cached(item, square)
                    if arr is not None:
                        return arr, None, digest
                arr = resize(decode_source(path, content), prep)
                del content
        except ImageReadError as exc:
            return None, str(exc), digest
        except Exception as exc:  # a reader bug must not lose the rest of the batch
            return None, f"unreadable ({type(exc).__name__}: {exc})", digest
        if item is not None:
            _try_cache(item, arr)
        return arr, None, digest

    iterator = range(len(frame))
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(one, iterator)
        if progress:
            from tqdm.auto import tqdm
            results = tqdm(results, total=len(frame), desc="reading images", unit="img")
        results = list(results)
    frame["sha256"] = [r[2] for r in results]
    ok = np.array([r[0] is not None for r in results], dtype=bool)
    images = np.stack([r[0] for r in results if r[0] is not None]) if ok.any() else \
        np.zeros((0, prep.size, prep.size), np.uint8)
    errors = frame.loc[~ok].assign(error=[r[1] for r in results if r[0] is None]).reset_index(drop=True)
    if cache is not None and cache_set and ok.all() and len(frame):
        set_key = hashlib.sha256("\n".join(frame["sha256"]).encode()).hexdigest()[:32]  # of what was decoded
        _try_cache(cache / "sets" / f"{set_key}.npy", images)
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


