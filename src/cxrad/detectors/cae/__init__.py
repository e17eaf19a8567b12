"""Convolutional autoencoder + latent KDE (the COVID-19 screening seed method)."""
from cxrad.detectors.cae.detector import CAEDetector
from cxrad.detectors.cae.model import CAE

__all__ = ["CAE", "CAEDetector"]
