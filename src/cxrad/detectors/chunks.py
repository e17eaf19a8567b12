"""Feeding a scoring graph (PyTorch or its ONNX export) in chunks of a fixed number of images, and its inputs
at each size. numpy only: an ONNX-only scorer runs without torch."""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np

#: images per network call; convolution kernels are chosen by batch shape, so a fixed shape gives fixed results
CHUNK = 16
#: per-image outputs that are pictures or vectors, not scores
PICTURES = ("map", "recon", "features")


def is_picture(name: str) -> bool:
    """Whether an output (possibly a fusion member's, ``"0/map"``) is a picture or vector rather than a score."""
    return name.rpartition("/")[2] in PICTURES


def padded_chunks(inputs: Sequence[np.ndarray], chunk: int = CHUNK) -> Iterator[tuple[list[np.ndarray], int]]:
    """(inputs of exactly ``chunk`` images, how many of them are real): the last chunk is padded with black
    images, so every image is computed in a call of the same shape."""
    for start in range(0, len(inputs[0]), chunk):
        part = [np.array(x[start:start + chunk], np.uint8) for x in inputs]
        m = len(part[0])
        if m < chunk:
            part = [np.concatenate([p, np.zeros((chunk - m, *p.shape[1:]), np.uint8)]) for p in part]
        yield part, m


def run_chunked(fn: Callable[[list[np.ndarray]], dict[str, np.ndarray]], inputs: Sequence[np.ndarray],
                keep=None, chunk: int = CHUNK) -> dict[str, np.ndarray]:
    """``fn`` over padded chunks; its outputs named in ``keep`` (all by default), scores as float64."""
    parts: dict[str, list] = {}
    for part, m in padded_chunks(inputs, chunk):
        for name, value in fn(part).items():
            if keep is None or name in keep:
                parts.setdefault(name, []).append(np.asarray(value)[:m])
    return {name: np.concatenate(v).astype(np.float32 if is_picture(name) else np.float64, copy=False)
            for name, v in parts.items()}


def graph_inputs(images: np.ndarray, specs: list[dict]) -> list[np.ndarray]:
    """The graph's inputs for uint8 images at the first spec's size: each other size (a fusion's members) is
    resized from them with PIL's bilinear filter, as the files were."""
    from cxrad.imaging import Preprocessing, resize
    out = []
    for spec in specs:
        if spec["size"] == specs[0]["size"]:
            out.append(images)
        else:
            prep = Preprocessing(int(spec["size"]), spec["resize"])
            out.append(np.stack([resize(np.asarray(im), prep) for im in images]) if len(images) else
                       np.zeros((0, prep.size, prep.size), np.uint8))
    return out
