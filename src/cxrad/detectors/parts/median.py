"""An exact k x k median filter as a network of elementwise min/max (fast on CPU, exportable to ONNX)."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=8)
def median_network(n: int) -> tuple[tuple[int, int, bool, bool], ...]:
    """Compare-exchange steps (a, b, keep_min, keep_max) that leave the median of ``n`` (odd) wires on wire
    n // 2: Batcher's odd-even merge sort, minus the steps that cannot reach that wire (for n = 25, 113 of
    140 steps and 202 min/max ops). A step's unused half is skipped: wire a gets the min, wire b the max."""
    size = 1 << (n - 1).bit_length()
    steps, p = [], 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p) and i + j + k < n:  # wires >= n are +inf
                        steps.append((i + j, i + j + k))
            k //= 2
        p *= 2
    needed, kept = {n // 2}, []
    for a, b in reversed(steps):
        if a in needed or b in needed:
            kept.append((a, b, a in needed, b in needed))
            needed |= {a, b}
    return tuple(reversed(kept))


def median_filter(x: torch.Tensor, k: int = 5) -> torch.Tensor:
    """k x k median of (N, 1, H, W) maps, reflect-padded (as scipy.ndimage.median_filter(mode='mirror')).

    A selection network of elementwise min/max over the k*k shifted maps: equal to torch.median over
    unfolded patches for finite inputs, ~4x faster on CPU, and it exports to ONNX as Min/Max nodes."""
    pad, (h, w) = k // 2, x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    wires = [padded[..., i:i + h, j:j + w] for i in range(k) for j in range(k)]
    for a, b, keep_min, keep_max in median_network(k * k):
        lo = torch.minimum(wires[a], wires[b]) if keep_min else None
        if keep_max:
            wires[b] = torch.maximum(wires[a], wires[b])
        if keep_min:
            wires[a] = lo
    return wires[k * k // 2]
