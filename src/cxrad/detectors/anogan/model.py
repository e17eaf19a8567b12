"""DCGAN for one-channel images (32 to 1024 px, powers of two) and the f-AnoGAN encoder.

Generator: z -> ConvTranspose 4x4 -> [ConvTranspose 4x4 stride 2 -> BN -> ReLU] ... -> 1 channel, tanh.
Discriminator: [Conv 4x4 stride 2 -> (BN) -> LeakyReLU 0.2] ... down to 4x4 -> Conv 4x4 -> one logit.
``Discriminator.features`` is the flattened 4x4 block before the last layer: the layer AnoGAN's
feature-matching loss and the t-SNE maps use. Widths follow DCGAN (``width`` 64 at 64 px gives
512-256-128-64), capped at ``8 * width`` so 256 px stays affordable. Images are in [-1, 1].
"""
from __future__ import annotations

import torch
from torch import nn


def check_size(image_size: int) -> int:
    if image_size < 32 or image_size > 1024 or image_size & (image_size - 1):
        raise ValueError(f"the DCGAN needs a power-of-two image_size from 32 to 1024, got {image_size}")
    return image_size


def _widths(image_size: int, width: int) -> list[tuple[int, int]]:
    """(side, channels) of the hidden maps from 4x4 up to image_size/2, DCGAN style."""
    sides = [4 * 2 ** i for i in range((check_size(image_size) // 8).bit_length())]
    return [(s, min(width * image_size // (2 * s), 8 * width)) for s in sides]


class Generator(nn.Module):
    def __init__(self, image_size: int = 64, z_dim: int = 100, width: int = 64):
        super().__init__()
        self.z_dim = z_dim
        chans = [c for _, c in _widths(image_size, width)]
        layers: list[nn.Module] = [nn.ConvTranspose2d(z_dim, chans[0], 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(chans[0]), nn.ReLU(True)]
        for cin, cout in zip(chans, chans[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(chans[-1], 1, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(-1, self.z_dim, 1, 1))  # -1, not len(z): keeps the batch dynamic in exports


class _DownTrunk(nn.Sequential):
    """image -> 4x4 map: the shared body of the discriminator and the encoder."""

    def __init__(self, image_size: int, width: int):
        chans = [c for _, c in reversed(_widths(image_size, width))]
        layers: list[nn.Module] = [nn.Conv2d(1, chans[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for cin, cout in zip(chans, chans[1:]):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, True)]
        super().__init__(*layers)
        self.out_channels = chans[-1]


class Discriminator(nn.Module):
    def __init__(self, image_size: int = 64, width: int = 64):
        super().__init__()
        self.trunk = _DownTrunk(image_size, width)
        self.head = nn.Conv2d(self.trunk.out_channels, 1, 4, 1, 0, bias=False)
        self.apply(dcgan_init)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The intermediate layer (N, 16 * channels) used for feature matching."""
        return self.trunk(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One real/fake logit per image."""
        return self.head(self.trunk(x)).flatten()


class Encoder(nn.Module):
    """f-AnoGAN's izi_f encoder: image -> z, the discriminator's architecture with a linear head."""

    def __init__(self, image_size: int = 64, z_dim: int = 100, width: int = 64):
        super().__init__()
        self.trunk = _DownTrunk(image_size, width)
        self.head = nn.Linear(16 * self.trunk.out_channels, z_dim)
        self.apply(dcgan_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x).flatten(1))


def dcgan_init(m: nn.Module) -> None:
    """DCGAN's initialisation: conv weights N(0, 0.02), BN weights N(1, 0.02)."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
