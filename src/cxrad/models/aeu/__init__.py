"""AE-U: uncertainty-predicting autoencoder (Mao et al., MICCAI 2020)."""
from .detector import AEUDetector
from .model import AEU

__all__ = ["AEU", "AEUDetector"]
