"""The seed convolutional autoencoder, layer for layer as the COVID-19 screening write-up gives it.

128x128xC -> [Conv3x3 same -> BN -> LeakyReLU -> MaxPool2] x (8, 16, 32) -> flatten 8192 -> Dense 128
          -> Dense 8192 + LeakyReLU -> reshape 32x16x16
          -> [ConvTranspose3x3 -> BN -> LeakyReLU -> Upsample2] x (32, 16, 8) -> Conv3x3 -> C (sigmoid)

With C = 3 it has 2,127,203 parameters counted as Keras counts them (BatchNorm's running mean and variance
included): 2,126,979 trainable + 224 BatchNorm statistics. The write-up names no output activation; we use a
sigmoid because inputs lie in [0, 1].
"""
from __future__ import annotations

import torch
from torch import nn


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2),
                         nn.MaxPool2d(2))


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2),
                         nn.Upsample(scale_factor=2, mode="nearest"))


class CAE(nn.Module):
    def __init__(self, channels: int = 3, latent_dim: int = 128, image_size: int = 128):
        super().__init__()
        if image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8, got {image_size}")
        side = image_size // 8
        self.bottleneck = (32, side, side)
        self.encoder = nn.Sequential(_down(channels, 8), _down(8, 16), _down(16, 32), nn.Flatten(),
                                     nn.Linear(32 * side * side, latent_dim))
        self.decoder_dense = nn.Sequential(nn.Linear(latent_dim, 32 * side * side), nn.LeakyReLU(0.2))
        self.decoder = nn.Sequential(_up(32, 32), _up(32, 16), _up(16, 8), nn.Conv2d(8, channels, 3, padding=1),
                                     nn.Sigmoid())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.decoder_dense(z).view(-1, *self.bottleneck))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z), z


def keras_parameter_count(model: nn.Module) -> int:
    """Parameters as Keras reports them: trainable weights plus BatchNorm moving mean and variance."""
    bn_stats = sum(m.running_mean.numel() + m.running_var.numel()
                   for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    return sum(p.numel() for p in model.parameters()) + bn_stats
