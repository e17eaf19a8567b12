"""AnoGAN (latent mapping by back-propagation) and f-AnoGAN (an izi_f encoder) on one DCGAN; see README.md."""
from cxrad.detectors.anogan.detector import AnoGANDetector, FAnoGANDetector
from cxrad.detectors.anogan.model import Discriminator, Encoder, Generator

__all__ = ["AnoGANDetector", "Discriminator", "Encoder", "FAnoGANDetector", "Generator"]
