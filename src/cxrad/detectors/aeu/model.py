"""AE-U network: a small convolutional autoencoder that predicts, per pixel, a mean and a log-variance.

Sizes follow the authors' code (dbbbbm/UAE): 4 x [Conv k4 s2 -> BN -> ReLU] with widths 16m, 32m, 64m, 64m,
a fully connected bottleneck (hidden 2048, latent 16), and a mirrored decoder ending in 2 channels.
"""
from __future__ import annotations

import torch
from torch import nn


def _down(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _up(cin, cout):
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class AEU(nn.Module):
    def __init__(self, image_size: int = 64, width: int = 16, latent_dim: int = 16, hidden: int = 2048):
        super().__init__()
        if image_size % 32:
            raise ValueError(f"AE-U needs image_size divisible by 32, got {image_size}")
        stages = 4 if image_size == 64 else 4 + (image_size // 64).bit_length() - 1
        widths = [width * min(2 ** i, 4) for i in range(stages)]  # 16m, 32m, 64m, 64m, 64m...
        self.side, self.top = image_size // 2 ** stages, widths[-1]
        enc, cin = [], 1
        for w in widths:
            enc.append(_down(cin, w))
            cin = w
        flat = self.top * self.side * self.side
        self.encoder = nn.Sequential(*enc, nn.Flatten(), nn.Linear(flat, hidden), nn.BatchNorm1d(hidden),
                                     nn.ReLU(inplace=True), nn.Linear(hidden, latent_dim))
        self.decoder_fc = nn.Sequential(nn.Linear(latent_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                        nn.Linear(hidden, flat))
        dec = [_up(widths[i], widths[i - 1]) for i in range(stages - 1, 0, -1)]
        self.decoder = nn.Sequential(*dec, nn.ConvTranspose2d(widths[0], 2, 4, 2, 1))

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """latent (N, latent_dim) -> (mean, log-variance), each (N, 1, H, W)."""
        out = self.decoder(self.decoder_fc(z).view(-1, self.top, self.side, self.side))
        return out[:, :1], out[:, 1:].clamp(-8.0, 8.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x in [-1, 1] -> (mean, log-variance), each (N, 1, H, W)."""
        return self.decode(self.encoder(x))
