"""AE-U: uncertainty-predicting autoencoder (Mao et al., MICCAI 2020)."""
from cxrad.detectors.aeu.detector import AEUDetector
from cxrad.detectors.aeu.model import AEU

__all__ = ["AEU", "AEUDetector"]
