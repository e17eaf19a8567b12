"""Denoising autoencoder with coarse noise.

Paper: Kascenas A, Pugeault N, O'Neil AQ. "Denoising autoencoders for unsupervised anomaly detection in brain
MRI", MIDL 2022 (code: AntanasKascenas/DenoisingAE).

A U-Net learns to remove *coarse* Gaussian noise (drawn on a low-resolution grid, upsampled and randomly
shifted) from normal images. Coarse noise looks like a large, smooth brightness change, which is what lobar
opacities look like on a radiograph; at test time the clean image goes in and what the network "heals" is
the anomaly: score = mean of the median-filtered absolute residual inside the central lung box.

What differs from it: chest X-rays instead of brain MRI (noise everywhere, no brain mask); a smaller U-Net
(width 16, depth 4) so it trains on CPU at 64 px; images scaled per image to their 1st-99th intensity
percentiles; the image score is taken inside a fixed central box (rows 10-90%, columns 10-90%) that holds the
lung fields of a squashed frontal film, instead of over a brain mask.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...detector import Detector
from ...training import Checkpointer, batches, map_batches, progress_bar, resolve_device, seed_everything, to_tensor
from ..augment import jitter, normalise
from .model import UNet


def coarse_noise(shape, grid: int, std: float, generator: torch.Generator, device) -> torch.Tensor:
    """Gaussian noise on a grid x grid lattice, upsampled bilinearly to the image and rolled by a random shift."""
    n, _, h, w = shape
    low = torch.randn(n, 1, grid, grid, generator=generator) * std
    noise = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    dy, dx = (int(v) for v in torch.randint(0, h, (2,), generator=generator))
    return torch.roll(noise, shifts=(dy, dx), dims=(2, 3)).to(device)


def median_filter(x: torch.Tensor, k: int = 5) -> torch.Tensor:
    pad = k // 2
    patches = F.unfold(F.pad(x, (pad, pad, pad, pad), mode="reflect"), k)
    return patches.median(dim=1).values.view(x.shape)


class DAEDetector(Detector):
    kind = "dae"
    components = ("box_residual", "top_residual")

    def __init__(self, epochs: int = 100, lr: float = 1e-3, width: int = 16, depth: int = 4,
                 noise_std: float = 0.2, noise_grid: int = 8, augment: bool = True, image_size: int = 64,
                 batch_size: int = 32, **common):
        super().__init__(image_size=image_size, batch_size=batch_size, **common)
        self.epochs, self.lr, self.width, self.depth = epochs, lr, width, depth
        self.noise_std, self.noise_grid, self.augment = noise_std, noise_grid, augment

    def _fit(self, train: np.ndarray, val: np.ndarray) -> None:
        gen = seed_everything(self.seed)
        device = resolve_device(self.device)
        model = UNet(self.width, self.depth).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=1e-5)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(self.epochs, 1))
        ckpt = Checkpointer(self.checkpoint_dir, every=5, key=self._run_key(train, val))
        state = {"model": model, "opt": opt, "sched": sched, "gen": gen}
        start, history = ckpt.resume(state)
        history = history or {"train_loss": [], "val_loss": []}
        train, x_val = normalise(train), to_tensor(normalise(val), 1, device)
        val_noise = coarse_noise(x_val.shape, self.noise_grid, self.noise_std, torch.Generator().manual_seed(1),
                                 device)
        for epoch in progress_bar(range(start, self.epochs), self.progress, desc="DAE epochs", initial=start,
                                  total=self.epochs):
            model.train()
            total = 0.0
            for idx in batches(len(train), self.batch_size, shuffle=True, generator=gen):
                x = to_tensor(train[idx], 1, device)
                if self.augment:
                    x = jitter(x, gen)
                noisy = x + coarse_noise(x.shape, self.noise_grid, self.noise_std, gen, device)
                loss = F.mse_loss(model(noisy), x)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            sched.step()
            model.eval()
            with torch.no_grad():
                history["val_loss"].append(F.mse_loss(model(x_val + val_noise), x_val).item())
            history["train_loss"].append(total / len(train))
            ckpt.save(epoch, state, history, force=epoch == self.epochs - 1)
        self.model_ = model.eval()
        self.history_ = history

    def _forward(self, images: np.ndarray) -> dict[str, np.ndarray]:
        s = self.image_size
        lo, hi = int(0.1 * s), int(0.9 * s)

        def fn(x):
            recon = self.model_(x)
            res = median_filter((x - recon).abs())
            box = res[:, :, lo:hi, lo:hi].flatten(1)
            top = box.topk(max(1, box.shape[1] // 20), dim=1).values.mean(1)
            return {"box": box.mean(1), "top": top, "map": res[:, 0], "recon": (recon[:, 0] + 1) / 2}
        return map_batches(fn, normalise(images), 64, 1, next(self.model_.parameters()).device)

    def _score(self, images: np.ndarray) -> dict[str, np.ndarray]:
        out = self._forward(images)
        box = out["box"].astype(np.float64)
        return {"box_residual": box, "top_residual": out["top"].astype(np.float64), "score": box}

    def anomaly_map(self, images: np.ndarray) -> np.ndarray:
        return self._forward(images)["map"]

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        return np.clip(self._forward(images)["recon"], 0, 1)

    def features(self, images: np.ndarray) -> np.ndarray:
        def fn(x):
            for i, block in enumerate(self.model_.down):
                x = block(x if i == 0 else self.model_.pool(x))
            return {"f": x.mean((2, 3))}
        return map_batches(fn, normalise(images), 64, 1, next(self.model_.parameters()).device)["f"]

    def _tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.model_.state_dict())

    def _restore(self, tensors: dict, state: dict) -> None:
        model = UNet(self.width, self.depth)
        model.load_state_dict(tensors)
        self.model_ = model.to(resolve_device(self.device)).eval()
