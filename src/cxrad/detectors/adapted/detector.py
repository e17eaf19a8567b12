"""A DAE adapted to a site (method and differences: README.md beside this file)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from cxrad.bundles import default_name
from cxrad.detectors.adapted.graph import SCORES, AdaptedGraph
from cxrad.detectors.base import TrainedDetector
from cxrad.detectors.dae.detector import DAEDetector
from cxrad.detectors.parts.unet import UNet
from cxrad.errors import UserError


@dataclass(repr=False, eq=False)
class AdaptedDetector(TrainedDetector):
    """A DAE trained on normal films (``base``) and a copy of it fine-tuned on a site's unlabelled films; scored by
    how much their reconstructions disagree (DDAD's discrepancy, one network a side), or by either's residual.

    Parameters
    ----------
    base : str
        The DAE to adapt: a bundle folder or a shipped model name (None: the shipped default's DAE).
    score_from : str
        'discrepancy' (the two reconstructions' median-filtered difference), 'site_residual' (the adapted DAE's
        own residual) or 'base_residual' (the base DAE's, as shipped).
    trim : float
        Robust loss of the fine-tuning: each batch leaves out this share of its worst-fitting films.
    """

    kind: ClassVar[str] = "adapted"
    components: ClassVar[tuple[str, ...]] = SCORES
    supports_warm_start: ClassVar[bool] = False
    tiny: ClassVar[dict] = {"image_size": 64, "epochs": 1}  # adapts the shipped DAE, which takes 64 px
    choices: ClassVar[dict] = {**TrainedDetector.choices, "score_from": SCORES}
    bounds: ClassVar[dict] = {**TrainedDetector.bounds, "trim": (0.0, 0.9)}
    fitted_modules: ClassVar[dict] = {"base_": "base.", "site_": "site."}

    image_size: int = 64
    epochs: int = 20
    lr: float = 2e-4
    base: str | None = None
    score_from: str = "discrepancy"
    trim: float = 0.0

    def _load_base(self) -> DAEDetector:
        det = DAEDetector.load(self.base or default_name("dae"), device=self.device)  # None: the shipped DAE
        if det.prep != self.prep:
            raise UserError(f"the base model takes {det.image_size} px ({det.resize}); set image_size and resize "
                            "to match it")
        return det

    def fit_arrays(self, train: np.ndarray, val: np.ndarray, sample_weight=None) -> None:
        base = self._load_base()
        site = self._load_base().set_params(
            epochs=self.epochs, lr=self.lr, trim=self.trim, seed=self.seed, batch_size=self.batch_size,
            progress=self.progress, checkpoint_dir=self.checkpoint_dir, checkpoint_minutes=self.checkpoint_minutes,
            max_minutes=self.max_minutes, warm_start=True)  # fine-tuning starts from the base's weights
        site.fit_arrays(train, val)
        self.base_, self.site_ = base.model_, site.model_
        self.unet_ = (base.width, base.depth)
        self.history_ = dict(site.history_)
        self.epochs_done_, self.training_finished_ = site.epochs_done_, site.training_finished_

    def networks(self) -> dict:
        return {"base_": lambda: UNet(*self.unet_), "site_": lambda: UNet(*self.unet_)}

    def scoring_graph(self) -> AdaptedGraph:
        return AdaptedGraph(self.base_, self.site_, self.score_from)

    def state(self) -> dict:
        return {**super().state(), "unet": list(self.unet_)}

    def restore(self, weights: dict, state: dict) -> None:
        width, depth = (int(v) for v in state["unet"])
        if not (8 <= width <= 512 and 1 <= depth <= 8):
            raise ValueError(f"U-Net width {width} depth {depth} is out of range")
        self.unet_ = (width, depth)
        super().restore(weights, state)

    def architecture(self) -> dict:
        return {**super().architecture(), "name": "base DAE + site-adapted DAE", "unet": list(self.unet_)}
