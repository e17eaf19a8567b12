"""Convolutional autoencoder + latent KDE (the COVID-19 screening seed method)."""
from cxrad.models.cae.detector import CAEDetector
from cxrad.models.cae.model import CAE

__all__ = ["CAE", "CAEDetector"]
