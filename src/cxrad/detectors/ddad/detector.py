"""Dual-distribution discrepancy anomaly detection (paper and differences: README.md beside this file)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from cxrad.detectors.aeu.detector import AEUDetector
from cxrad.detectors.base import TrainedDetector
from cxrad.detectors.ddad.graph import SCORES, DDADGraph
from cxrad.errors import DataError
from cxrad.training import load_module


@dataclass(repr=False, eq=False)
class DDADDetector(TrainedDetector):
    """Two ensembles of uncertainty autoencoders: one trained on the normal images, one on the normal images plus
    an unlabelled pool (``cxrad train --unlabelled``); an image is anomalous where the two disagree.

    Parameters
    ----------
    normative : int
        AE-U networks trained on the normal images only.
    unknown : int
        AE-U networks trained on the normal images plus the unlabelled pool (0: no pool, score 'rec' or 'intra').
    score_from : str
        'inter' (the discrepancy between the ensembles, DDAD's score), 'intra' (the spread within the normative
        ensemble) or 'rec' (the normative ensemble's uncertainty-weighted reconstruction error).
    width : int
        Width multiplier of each AE-U's convolutional stages.
    latent_dim : int
        Length of each AE-U's bottleneck vector.
    hidden : int
        Width of each AE-U's fully connected layers.
    augment : bool
        Random shift, scale, brightness and contrast while training (DDAD uses none).
    """

    kind: ClassVar[str] = "ddad"
    components: ClassVar[tuple[str, ...]] = SCORES
    supports_sample_weight: ClassVar[bool] = True
    supports_unlabelled: ClassVar[bool] = True
    supports_warm_start: ClassVar[bool] = False
    tiny: ClassVar[dict] = {"image_size": 32, "epochs": 1, "width": 4, "hidden": 32, "normative": 2, "unknown": 0,
                            "score_from": "rec"}
    choices: ClassVar[dict] = {**TrainedDetector.choices, "score_from": SCORES}
    bounds: ClassVar[dict] = {**AEUDetector.bounds, "normative": (1, 32), "unknown": (0, 32)}
    fitted_modules: ClassVar[dict] = {}

    image_size: int = 64
    batch_size: int = 64
    epochs: int = 250
    lr: float = 5e-4
    normative: int = 3
    unknown: int = 3
    score_from: str = "inter"
    width: int = 16
    latent_dim: int = 16
    hidden: int = 2048
    augment: bool = False

    def check_settings(self):
        super().check_settings()
        if self.unknown == 0 and self.score_from == "inter":
            raise ValueError("score_from 'inter' needs unknown >= 1 networks trained with an unlabelled pool")
        return self

    def _member(self, index: int, part: str, epochs: int | None = None) -> AEUDetector:
        """The settings of one AE-U: its own seed and checkpoint folder, the ensemble's training settings."""
        shared = {k: getattr(self, k) for k in ("image_size", "resize", "batch_size", "epochs", "lr", "width",
                                                 "latent_dim", "hidden", "augment", "device", "progress",
                                                 "checkpoint_minutes", "max_minutes", "snapshot_every")}
        folder = str(Path(self.checkpoint_dir) / f"{part}-{index}") if self.checkpoint_dir else None
        seed = self.seed * 1000 + index + (500 if part == "unknown" else 0)
        return AEUDetector(**{**shared, "epochs": epochs or self.epochs}, seed=seed, checkpoint_dir=folder)

    def fit_arrays(self, train: np.ndarray, val: np.ndarray, sample_weight=None, unlabelled=None) -> None:
        if self.unknown and (unlabelled is None or not len(unlabelled)):
            raise DataError(f"the ddad detector with unknown={self.unknown} needs an unlabelled pool "
                            "(cxrad train --unlabelled DATA), or set unknown=0 and score_from rec or intra")
        pooled = np.concatenate([train, unlabelled]) if self.unknown else train
        pooled_weights = None if sample_weight is None else \
            np.concatenate([sample_weight, np.full(len(pooled) - len(train), np.mean(sample_weight))])
        self.normative_, self.unknown_, self.history_ = [], [], {}
        finished = True
        # every network sees the same number of samples: the unknown ensemble's larger set gets fewer epochs
        pooled_epochs = max(1, round(self.epochs * len(train) / len(pooled)))
        for part, count, images, weights, epochs in (
                ("normative", self.normative, train, sample_weight, self.epochs),
                ("unknown", self.unknown, pooled, pooled_weights, pooled_epochs)):
            for i in range(count):
                member = self._member(i, part, epochs)
                member.fit_arrays(images, val, sample_weight=weights)
                getattr(self, f"{part}_").append(member.model_)
                self.history_.update({f"{part}{i}.{k}": v for k, v in member.history_.items()})
                finished &= member.training_finished_
        self.epochs_done_, self.training_finished_ = self.epochs, finished
        self.n_unlabelled_ = 0 if unlabelled is None else len(unlabelled)

    def scoring_graph(self) -> DDADGraph:
        return DDADGraph(self.normative_, self.unknown_, self.score_from)

    def weights(self) -> dict[str, torch.Tensor]:
        return {f"{part}.{i}.{k}": v for part in ("normative", "unknown")
                for i, net in enumerate(getattr(self, f"{part}_")) for k, v in net.state_dict().items()}

    def restore(self, weights: dict, state: dict) -> None:
        build = self._member(0, "normative").network
        for part, count in (("normative", self.normative), ("unknown", self.unknown)):
            nets = []
            for i in range(count):
                prefix = f"{part}.{i}."
                nets.append(load_module(build, {k[len(prefix):]: v for k, v in weights.items()
                                                if k.startswith(prefix)}, self.device))
            setattr(self, f"{part}_", nets)
        self.n_unlabelled_ = int(state.get("n_unlabelled", 0))

    def state(self) -> dict:
        return {**super().state(), "n_unlabelled": int(getattr(self, "n_unlabelled_", 0))}

    def architecture(self) -> dict:
        return {**super().architecture(), "name": f"DDAD: {self.normative} + {self.unknown} AE-U (width "
                f"{self.width}, latent {self.latent_dim})"}
