"""AE-U: autoencoder with predicted per-pixel uncertainty.

Paper: Mao Y, Xue F-F, Wang R, Zhang J, Zheng W-S, Liu H. "Abnormality detection in chest X-ray images using
uncertainty prediction autoencoders", MICCAI 2020 (code: dbbbbm/UAE).

The network predicts a mean and a log-variance per pixel and is trained with the heteroscedastic loss
mean(exp(-logvar) * (x - mu)^2 + logvar); the anomaly score is the uncertainty-weighted error
mean(exp(-logvar) * (x - mu)^2), which discounts errors where normal images vary anyway (ribs, edges).

What differs from it: log-variance is clamped to [-8, 8] for stability; mild train-time augmentation
(shift +-5%, brightness/contrast +-10%, no flips since the heart is on the left); each image is scaled to
its 1st-99th intensity percentiles before the [-1, 1] mapping; components also report the plain MSE.
"""
from __future__ import annotations

import numpy as np
import torch

from ...detector import Detector
from ...training import Checkpointer, batches, map_batches, progress_bar, resolve_device, seed_everything, to_tensor
from ..augment import jitter, normalise
from .model import AEU


class AEUDetector(Detector):
    kind = "aeu"
    components = ("mse", "weighted_error")

    def __init__(self, epochs: int = 250, lr: float = 5e-4, width: int = 16, latent_dim: int = 16,
                 hidden: int = 2048, augment: bool = True, image_size: int = 64, batch_size: int = 64, **common):
        super().__init__(image_size=image_size, batch_size=batch_size, **common)
        self.epochs, self.lr, self.width, self.latent_dim = epochs, lr, width, latent_dim
        self.hidden, self.augment = hidden, augment

    def _net(self) -> AEU:
        return AEU(self.image_size, self.width, self.latent_dim, self.hidden)

    def _fit(self, train: np.ndarray, val: np.ndarray) -> None:
        gen = seed_everything(self.seed)
        device = resolve_device(self.device)
        model = self._net().to(device)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr, betas=(0.5, 0.999))
        ckpt = Checkpointer(self.checkpoint_dir, every=5, key=self._run_key(train, val))
        state = {"model": model, "opt": opt, "gen": gen}
        start, history = ckpt.resume(state)
        history = history or {"train_loss": [], "val_loss": []}
        train, x_val = normalise(train), to_tensor(normalise(val), 1, device)
        for epoch in progress_bar(range(start, self.epochs), self.progress, desc="AE-U epochs", initial=start,
                                  total=self.epochs):
            model.train()
            total = 0.0
            for idx in batches(len(train), self.batch_size, shuffle=True, generator=gen):
                if len(idx) < 2:
                    continue  # BatchNorm1d needs two samples
                x = to_tensor(train[idx], 1, device)
                if self.augment:
                    x = jitter(x, gen)
                mu, logvar = model(x)
                loss = (torch.exp(-logvar) * (x - mu) ** 2 + logvar).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            model.eval()
            with torch.no_grad():
                mu, logvar = model(x_val)
                history["val_loss"].append((torch.exp(-logvar) * (x_val - mu) ** 2 + logvar).mean().item())
            history["train_loss"].append(total / len(train))
            ckpt.save(epoch, state, history, force=epoch == self.epochs - 1)
        self.model_ = model.eval()
        self.history_ = history

    def _forward(self, images: np.ndarray) -> dict[str, np.ndarray]:
        def fn(x):
            mu, logvar = self.model_(x)
            sq = (x - mu) ** 2
            return {"mse": sq.mean((1, 2, 3)), "weighted": (torch.exp(-logvar) * sq).mean((1, 2, 3)),
                    "map": (torch.exp(-logvar) * sq)[:, 0], "recon": (mu[:, 0] + 1) / 2}
        return map_batches(fn, normalise(images), 128, 1, next(self.model_.parameters()).device)

    def _score(self, images: np.ndarray) -> dict[str, np.ndarray]:
        out = self._forward(images)
        return {"mse": out["mse"].astype(np.float64), "weighted_error": out["weighted"].astype(np.float64),
                "score": out["weighted"].astype(np.float64)}

    def anomaly_map(self, images: np.ndarray) -> np.ndarray:
        return self._forward(images)["map"]

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        return np.clip(self._forward(images)["recon"], 0, 1)

    def features(self, images: np.ndarray) -> np.ndarray:
        return map_batches(lambda x: {"z": self.model_.encoder(x)}, normalise(images), 128, 1,
                           next(self.model_.parameters()).device)["z"]

    def _tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.model_.state_dict())

    def _restore(self, tensors: dict, state: dict) -> None:
        model = self._net()
        model.load_state_dict(tensors)
        self.model_ = model.to(resolve_device(self.device)).eval()
