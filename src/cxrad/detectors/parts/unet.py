"""A small U-Net (GroupNorm, transposed-conv upsampling) that maps a corrupted image to a clean one."""
from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.LeakyReLU(0.1, inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.LeakyReLU(0.1, inplace=True))


class UNet(nn.Module):
    def __init__(self, width: int = 16, depth: int = 4):
        super().__init__()
        widths = [width * 2 ** i for i in range(depth)]
        self.down = nn.ModuleList()
        cin = 1
        for w in widths:
            self.down.append(_block(cin, w))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i], widths[i - 1], 2, stride=2)
                                for i in range(depth - 1, 0, -1))
        self.merge = nn.ModuleList(_block(2 * widths[i - 1], widths[i - 1]) for i in range(depth - 1, 0, -1))
        self.out = nn.Conv2d(widths[0], 1, 1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's feature maps, finest first (the last is the bottleneck)."""
        maps = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            maps.append(x)
        return maps

    def decode(self, skips: list[torch.Tensor]) -> torch.Tensor:
        x = skips[-1]
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1])):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.out(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
