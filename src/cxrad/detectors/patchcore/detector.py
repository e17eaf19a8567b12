"""Patch-feature modelling on an in-domain encoder (paper and differences: README.md beside this file)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from cxrad.detectors.base import TrainedDetector
from cxrad.detectors.dae.detector import DAEDetector
from cxrad.detectors.graph import normalise, run_graph
from cxrad.detectors.parts.unet import UNet
from cxrad.detectors.patchcore.graph import PatchCoreGraph, patch_features
from cxrad.errors import UserError

METHODS = ("knn", "gaussian")


def greedy_coreset(features: torch.Tensor, n: int, seed: int, projection: int = 32) -> torch.Tensor:
    """Indices of ``n`` points chosen by greedy k-center selection (each next point the farthest from those
    chosen), on a random projection of the features, as PatchCore selects its memory bank."""
    g = torch.Generator().manual_seed(seed)
    if features.shape[1] > projection:
        features = features @ (torch.randn(features.shape[1], projection, generator=g) / projection ** 0.5)
    chosen = [int(torch.randint(len(features), (1,), generator=g))]
    nearest = torch.cdist(features, features[chosen]).squeeze(1)
    for _ in range(n - 1):
        i = int(torch.argmax(nearest))
        chosen.append(i)
        nearest = torch.minimum(nearest, torch.cdist(features, features[i:i + 1]).squeeze(1))
    return torch.tensor(chosen)


@dataclass(repr=False, eq=False)
class PatchCoreDetector(TrainedDetector):
    """Patch features of the coarse-noise DAE's encoder, trained on the same normals (or taken from a DAE
    bundle), modelled by nearest neighbours in a coreset memory bank (PatchCore) or by one Gaussian per
    position (PaDiM).

    Parameters
    ----------
    backbone : str
        A DAE bundle (folder or shipped name) whose encoder is used as it is; None trains one first.
    width : int
        Channels of the DAE U-Net's first level (must match the backbone's).
    depth : int
        Levels of the DAE U-Net (must match the backbone's).
    noise_std : float
        Coarse-noise standard deviation when the DAE is trained here.
    noise_grid : int
        Coarse-noise lattice when the DAE is trained here.
    levels : tuple
        Encoder levels whose feature maps are concatenated (0 is the full-resolution level).
    method : str
        'knn' (distance to the nearest memory-bank patch) or 'gaussian' (Mahalanobis distance per position).
    coreset : float
        Share of the training patches kept in the k-NN memory bank (greedy k-center selection).
    top_fraction : float
        The image score is the mean of this top share of patch scores inside the central box.
    """

    kind: ClassVar[str] = "patchcore"
    components: ClassVar[tuple[str, ...]] = ("max_patch", "top_patches")
    tiny: ClassVar[dict] = {"image_size": 32, "epochs": 1, "width": 8, "depth": 3}
    choices: ClassVar[dict] = {**TrainedDetector.choices, "method": METHODS}
    fitted_modules: ClassVar[dict] = {"encoder_": "encoder."}
    fitted_arrays: ClassVar[dict] = {"bank_": "bank", "mean_": "mean", "precision_": "precision"}
    bounds: ClassVar[dict] = {**TrainedDetector.bounds, "width": (8, 512), "depth": (1, 8), "coreset": (0.0, 1.0),
                              "top_fraction": (0.0, 1.0)}

    image_size: int = 64
    epochs: int = 100
    backbone: str | None = None
    width: int = 16
    depth: int = 4
    noise_std: float = 0.2
    noise_grid: int = 8
    levels: tuple[int, ...] = (1, 2)
    method: str = "knn"
    coreset: float = 0.01
    top_fraction: float = 0.1

    def network(self) -> UNet:
        return UNet(self.width, self.depth)

    # ------------------------------------------------------------------------------------------- fit
    def fit_arrays(self, train: np.ndarray, val: np.ndarray, sample_weight=None) -> None:
        self.encoder_ = self._backbone(train, val)
        feats = self._patches(train)                                   # (N, P, D)
        n, p, d = feats.shape
        if self.method == "gaussian":
            from sklearn.covariance import LedoitWolf
            flat = feats.transpose(1, 0, 2).astype(np.float64)         # (P, N, D)
            self.mean_ = flat.mean(1).astype(np.float32)
            self.precision_ = np.stack([LedoitWolf().fit(x).precision_ for x in flat]).astype(np.float32)
        else:
            bank = torch.from_numpy(feats.reshape(-1, d))
            keep = max(1, int(round(self.coreset * len(bank))))
            self.bank_ = bank[greedy_coreset(bank, keep, self.seed)].numpy() if keep < len(bank) else bank.numpy()
        self.history_ = {**getattr(self, "history_", {}), "memory_bank": [int(getattr(self, "bank_", feats).shape[0])]}

    def _backbone(self, train: np.ndarray, val: np.ndarray) -> UNet:
        """The encoder: this detector's own when warm-starting (only the patch model is refitted: a new site's
        normals in seconds), a DAE bundle's as it is, or a DAE trained here on the same normals."""
        if self.warm_start and hasattr(self, "encoder_"):
            return self.encoder_
        if self.backbone is not None:
            dae = DAEDetector.load(self.backbone, device=self.device)
            mismatch = {k: getattr(dae, k) for k in ("image_size", "width", "depth") if getattr(dae, k) != getattr(self, k)}
            if mismatch:
                raise UserError(f"the backbone {self.backbone} has {mismatch}; set these settings to match it")
            return dae.model_
        dae = DAEDetector(image_size=self.image_size, resize=self.resize, width=self.width, depth=self.depth,
                          epochs=self.epochs, lr=self.lr, seed=self.seed, batch_size=self.batch_size,
                          noise_std=self.noise_std, noise_grid=self.noise_grid, device=self.device,
                          progress=self.progress, checkpoint_dir=self.checkpoint_dir,
                          checkpoint_minutes=self.checkpoint_minutes, max_minutes=self.max_minutes,
                          snapshot_every=self.snapshot_every)
        dae.fit_arrays(train, val)
        self.history_ = dict(dae.history_)
        self.epochs_done_, self.training_finished_ = dae.epochs_done_, dae.training_finished_
        return dae.model_

    # ---------------------------------------------------------------------------------------- features
    def _patches(self, images: np.ndarray) -> np.ndarray:
        """(N, P, D) patch features (``patch_features``)."""
        device = next(self.encoder_.parameters()).device
        return run_graph(lambda x: {"features": patch_features(self.encoder_, normalise(x), self.levels)}, [images],
                         device)["features"]

    def scoring_graph(self) -> PatchCoreGraph:
        if self.method == "gaussian":
            return PatchCoreGraph(self.encoder_, self.levels, self.top_fraction, mean=self.mean_,
                                  precision=self.precision_)
        return PatchCoreGraph(self.encoder_, self.levels, self.top_fraction, bank=self.bank_)

    # ------------------------------------------------------------------------------------ persistence
    def networks(self) -> dict:
        return {"encoder_": self.network}

    def architecture(self) -> dict:
        return {**super().architecture(), "name": f"DAE encoder width {self.width} depth {self.depth}, "
                f"levels {list(self.levels)}, {self.method}"}
