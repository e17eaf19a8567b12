"""How a decoded image becomes model input: a square of ``size`` pixels, stretched or padded."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes model input: square side in pixels, and how the aspect ratio is handled.

    resize='stretch' squashes to a square (as the CAE paper did); 'pad' keeps the aspect ratio and pads
    the short side with black.
    """

    size: int = 128
    resize: str = "stretch"

    def __post_init__(self):
        if self.resize not in ("stretch", "pad"):
            raise ValueError(f"resize must be 'stretch' or 'pad', not {self.resize!r}")
        if not 8 <= int(self.size) <= 2048:
            raise ValueError(f"size must be between 8 and 2048 pixels, not {self.size}")

    def to_dict(self) -> dict:
        return asdict(self)


def resize(grey: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """Resize a float grey image in [0, 1] (or a uint8 one) to prep.size square and return uint8 (H, W)."""
    if grey.dtype == np.uint8:  # the same pixels as the float path: round(v / 255 * 255) == v
        img = Image.fromarray(grey)
    else:
        img = Image.fromarray(np.clip(grey * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    s = prep.size
    if prep.resize == "stretch":
        return np.asarray(img.resize((s, s), Image.BILINEAR, reducing_gap=3.0), dtype=np.uint8)
    scale = s / max(img.width, img.height)
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    canvas = Image.new("L", (s, s), 0)
    canvas.paste(img.resize((w, h), Image.BILINEAR, reducing_gap=3.0), ((s - w) // 2, (s - h) // 2))
    return np.asarray(canvas, dtype=np.uint8)


