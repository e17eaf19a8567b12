"""Patch-feature modelling on an in-domain encoder (paper and differences: README.md beside this file)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from cxrad.detector import TrainedDetector
from cxrad.errors import UserError
from cxrad.training import load_module, map_batches
from cxrad.models.augment import normalise
from cxrad.models.dae.detector import DAEDetector
from cxrad.models.dae.model import UNet

METHODS = ("knn", "gaussian")
SCORE_BOX = (0.1, 0.9)


# The scoring steps, in torch: the detector and its ONNX graph both score with these.
def patch_features(encoder: UNet, x: torch.Tensor, levels) -> torch.Tensor:
    """(N, P, D) patch features: the chosen encoder levels, each averaged over a 3x3 neighbourhood (as
    PatchCore aggregates), resized to the coarsest level's grid and concatenated."""
    maps = encoder.encode(x)
    chosen = [maps[i] for i in levels]
    side = chosen[-1].shape[-1]
    out = [F.adaptive_avg_pool2d(F.avg_pool2d(f, 3, stride=1, padding=1, count_include_pad=False), side)
           for f in chosen]
    return torch.cat(out, 1).flatten(2).transpose(1, 2)


def knn_patch_scores(feats: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """(N, P) distance of each patch to its nearest memory-bank patch."""
    return torch.cdist(feats, bank[None]).min(2).values


def gaussian_patch_scores(feats: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(N, P) squared Mahalanobis distance of each patch to its position's Gaussian."""
    diff = feats - mean[None]
    return torch.einsum("npd,pde,npe->np", diff, precision, diff)


def image_scores(patch: torch.Tensor, top_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(max, mean of the top share) of the patch scores (N, side, side) inside the score box."""
    side = patch.shape[-1]
    lo, hi = int(SCORE_BOX[0] * side), max(int(SCORE_BOX[0] * side) + 1, int(round(SCORE_BOX[1] * side)))
    box = patch[:, lo:hi, lo:hi].flatten(1)
    k = max(1, int(box.shape[1] * top_fraction))
    return box.max(1).values, box.topk(k, dim=1).values.mean(1)


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

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")

    def network(self) -> UNet:
        return UNet(self.width, self.depth)

    # ------------------------------------------------------------------------------------------- fit
    def fit_arrays(self, train: np.ndarray, val: np.ndarray) -> None:
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
        return map_batches(lambda x: {"f": patch_features(self.encoder_, x, self.levels)}, normalise(images), 64,
                           1, next(self.encoder_.parameters()).device)["f"]

    def _patch_scores(self, images: np.ndarray) -> np.ndarray:
        """(N, side, side) anomaly score of every patch."""
        feats = torch.from_numpy(self._patches(images))
        n, p, _ = feats.shape
        if self.method == "gaussian":
            scores = gaussian_patch_scores(feats, torch.from_numpy(self.mean_), torch.from_numpy(self.precision_))
        else:
            bank = torch.from_numpy(self.bank_)
            scores = torch.cat([knn_patch_scores(f[None], bank) for f in feats])  # one image at a time: memory
        side = int(round(p ** 0.5))
        return scores.reshape(n, side, side).numpy()

    def score_components(self, images: np.ndarray) -> dict[str, np.ndarray]:
        worst, top = image_scores(torch.from_numpy(self._patch_scores(images)), self.top_fraction)
        top = top.numpy().astype(np.float64)
        return {"max_patch": worst.numpy().astype(np.float64), "top_patches": top, "score": top}

    def anomaly_map(self, images: np.ndarray) -> np.ndarray:
        patch = torch.from_numpy(self._patch_scores(images).astype(np.float32))[:, None]
        return F.interpolate(patch, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)[:, 0].numpy()

    def features(self, images: np.ndarray) -> np.ndarray:
        return self._patches(images).mean(1)

    # ------------------------------------------------------------------------------------ persistence
    def weights(self) -> dict[str, torch.Tensor]:
        t = {f"encoder.{k}": v for k, v in self.encoder_.state_dict().items()}
        if self.method == "gaussian":
            t.update(mean=torch.from_numpy(self.mean_), precision=torch.from_numpy(self.precision_))
        else:
            t["bank"] = torch.from_numpy(self.bank_)
        return t

    def restore(self, weights: dict, state: dict) -> None:
        self.encoder_ = load_module(self.network, {k[len("encoder."):]: v for k, v in weights.items()
                                                   if k.startswith("encoder.")}, self.device)
        if self.method == "gaussian":
            self.mean_, self.precision_ = weights["mean"].numpy(), weights["precision"].numpy()
        else:
            self.bank_ = weights["bank"].numpy()

    def architecture(self) -> dict:
        return {**super().architecture(), "name": f"DAE encoder width {self.width} depth {self.depth}, "
                f"levels {list(self.levels)}, {self.method}"}
