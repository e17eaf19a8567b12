"""A detector's scoring as one torch module, and the one loop that runs it.

A ``ScoringGraph`` takes uint8 images (N, S, S) at the model's input size (a fusion takes one input per member
size) and returns every per-image output in one forward pass: the score components, ``score``, and, where the
detector has them, ``map`` (N, S, S), ``recon`` (N, S, S, grey in [0, 1]) and ``features`` (N, D). Intensity
scaling is inside it, so PyTorch scoring, the ONNX export, the report and the dashboard all run the same module.

``measure`` computes the raw outputs; ``combine`` turns raw components into calibrated ones and the score (the
identity for most detectors; the CAE's OR rule and a fusion's standardisation learn theirs from held-out
normals). ``forward`` is ``combine(measure(...))``, in the order of ``outputs``.

``run_graph`` feeds the graph chunks of exactly ``CHUNK`` images (the last one padded with black images), so every
image is computed in a call of the same shape: its scores do not depend on how many images came with it.
"""
from __future__ import annotations

from typing import Callable, Collection, Sequence

import numpy as np
import torch
from torch import nn

from cxrad.detectors.chunks import CHUNK, is_picture, run_chunked


class ScoringGraph(nn.Module):
    """Subclasses set ``outputs`` and implement ``measure``; those that calibrate also implement ``combine``."""

    outputs: tuple[str, ...] = ()
    #: None, or why this graph cannot be exported to ONNX
    not_exportable: str | None = None

    def measure(self, *images: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def combine(self, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return raw

    def forward(self, *images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.combine(self.measure(*images))
        seen: set[int] = set()
        result = []
        for name in self.outputs:  # an output that is another's tensor is copied: ONNX outputs are distinct values
            value = out[name]
            result.append(value.clone() if id(value) in seen else value)
            seen.add(id(value))
        return tuple(result)


def run_graph(fn: Callable[..., dict[str, torch.Tensor]], inputs: Sequence[np.ndarray], device,
              keep: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """``fn`` (a graph's ``measure``, or ``named(graph)``) over uint8 arrays in chunks of CHUNK images; returns the
    outputs named in ``keep`` (all by default) as numpy arrays, per-image scores in float64."""
    def call(chunk):
        with torch.no_grad():
            out = fn(*(torch.from_numpy(c).to(device) for c in chunk))
        return {k: v.detach().cpu().numpy() for k, v in out.items() if keep is None or k in keep}
    return run_chunked(call, inputs, keep, CHUNK)


def graph_device(graph: nn.Module) -> torch.device:
    for t in (*graph.parameters(), *graph.buffers()):
        return t.device
    return torch.device("cpu")


def named(graph: ScoringGraph) -> Callable[..., dict[str, torch.Tensor]]:
    """The graph's forward pass as a dict of its outputs."""
    return lambda *images: dict(zip(graph.outputs, graph(*images)))


def combine_arrays(graph: ScoringGraph, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``graph.combine`` on raw outputs already computed (numpy in, numpy out), so calibrating on held-out
    normals needs one pass over them."""
    tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in raw.items()}
    with torch.no_grad():
        out = graph.combine(tensors)
    return {k: (v.numpy() if is_picture(k) else v.numpy().astype(np.float64)) for k, v in out.items()}


def images_to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, S, S) -> float (N, 1, S, S) in [0, 1]."""
    return (images.float() / 255.0)[:, None]


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, S, S) -> float32 (N, 1, S, S): per image, the 1st-99th intensity percentiles map to [-1, 1]
    (exposure differs between machines). The percentiles interpolate exactly as numpy.percentile does (a full
    sort of each image), in float64, so that the scaling does not depend on the device."""
    x = images.float() / 255.0
    ordered = x.flatten(1).sort(dim=1).values
    n = ordered.shape[1]

    def percentile(q: float):
        pos = q / 100 * (n - 1)  # numpy's 'linear' method, with its two-sided interpolation
        i = int(pos)
        t = pos - i
        a, b = ordered[:, i].double(), ordered[:, min(i + 1, n - 1)].double()
        return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t

    lo, hi = percentile(1), percentile(99)
    span = (hi - lo).clamp_min(1e-3)[:, None, None]
    return ((x.double() - lo[:, None, None]) / span * 2 - 1).clamp(-1.5, 1.5).float()[:, None]


def normalise_array(images: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """``normalise`` over a whole uint8 array (N, S, S) -> float32 (N, S, S), for training on the same input the
    graph scores."""
    out = np.empty(np.shape(images), np.float32)
    with torch.no_grad():
        for i in range(0, len(images), chunk):
            out[i:i + chunk] = normalise(torch.from_numpy(np.array(images[i:i + chunk], np.uint8)))[:, 0].numpy()
    return out
