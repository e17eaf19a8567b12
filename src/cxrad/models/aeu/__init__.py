"""AE-U: uncertainty-predicting autoencoder (Mao et al., MICCAI 2020)."""
from cxrad.models.aeu.detector import AEUDetector
from cxrad.models.aeu.model import AEU

__all__ = ["AEU", "AEUDetector"]
