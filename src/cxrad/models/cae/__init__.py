"""Convolutional autoencoder + latent KDE (the COVID-19 screening seed method)."""
from .detector import CAEDetector
from .model import CAE

__all__ = ["CAE", "CAEDetector"]
