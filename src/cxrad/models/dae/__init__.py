"""Coarse-noise denoising autoencoder (Kascenas et al., MIDL 2022)."""
from .detector import DAEDetector
from .model import UNet

__all__ = ["DAEDetector", "UNet"]
