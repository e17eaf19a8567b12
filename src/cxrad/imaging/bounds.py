"""What a decode may cost: the size limits of untrusted images (their reasons are in docs/security.md), the memory
budget that decodes running at once share, and the helpers that keep large images small and errors short."""
from __future__ import annotations

import contextlib
import math
import re
import threading

import numpy as np

# anything far beyond is a decompression bomb or not an X-ray.
MAX_PIXELS = 64_000_000
# Largest file we agree to read (bytes).
MAX_FILE_BYTES = 256 * 1024 * 1024
# Largest pixel data a DICOM may declare, all frames together (bytes); only the first frame is decoded.
MAX_DICOM_PIXEL_BYTES = 1024 * 1024 * 1024
# Largest decoded DICOM frame (bytes): 64 MP at 16 bits.
MAX_DICOM_FRAME_BYTES = 128 * 1024 * 1024
# Largest DICOM header (all elements before the pixel data) inflated from a deflated file (bytes).
MAX_DICOM_HEADER_BYTES = 16 * 1024 * 1024
# Longest side an image keeps after decoding; the largest model input (Preprocessing.size) is 2048.
MAX_DECODE_SIDE = 2048
# Memory that decodes running at the same time may reserve together (bytes).
DECODE_MEMORY_BYTES = 512 * 1024 * 1024
# Memory that the bytes of files being read and decoded at the same time may take together (bytes).
FILE_MEMORY_BYTES = 512 * 1024 * 1024

# pixels converted at a time when a large image is reduced
STRIP_PIXELS = 2**19

# ------------------------------------------------------------------------------------------ memory budget
class MemoryBudget:
    """Bytes that work running in several threads may hold at once; ``reserve`` waits until its share fits."""

    def __init__(self, total: int):
        self.total, self.used = int(total), 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, nbytes: int):
        nbytes = max(0, min(int(nbytes), self.total))  # larger than the budget: waits to run alone
        with self._cond:
            self._cond.wait_for(lambda: self.used + nbytes <= self.total)
            self.used += nbytes
        try:
            yield
        finally:
            with self._cond:
                self.used -= nbytes
                self._cond.notify_all()


DECODE_BUDGET = MemoryBudget(DECODE_MEMORY_BYTES)
#: held while a file's bytes are in memory (read, hashed, decoded): four threads each reading a 250 MB file wait
#: for each other instead of holding a gigabyte (a decode's own budget comes on top of this one, never under it)
FILE_BUDGET = MemoryBudget(FILE_MEMORY_BYTES)


# -------------------------------------------------------------------------------------------------- helpers
def _clean(exc: BaseException) -> str:
    """One short line: readers name the in-memory buffer ("<_io.BytesIO object at 0x...>") and some write
    several lines."""
    text = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(exc)).strip()
    text = (text.splitlines() or [""])[0]
    return text if len(text) <= 160 else text[:157] + "..."


def _reason(exc: BaseException) -> str:
    text = _clean(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _reduction(width: int, height: int) -> int:
    """Integer factor that brings the longest side to at most MAX_DECODE_SIDE."""
    return max(1, math.ceil(max(width, height) / MAX_DECODE_SIDE))


def _block_mean(arr: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` blocks of an (H, W[, C]) array into float32, without a full-size float
    copy (the ragged edge is dropped)."""
    if factor == 1:
        return arr
    h, w = arr.shape[0] // factor, arr.shape[1] // factor
    blocks = arr[:h * factor, :w * factor].reshape(h, factor, w, factor, *arr.shape[2:])
    return blocks.mean(axis=(1, 3), dtype=np.float32)
