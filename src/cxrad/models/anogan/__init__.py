"""AnoGAN and f-AnoGAN: score an image by how well a GAN trained on normal images can reproduce it.

Papers:
- Schlegl et al. 2017, "Unsupervised Anomaly Detection with Generative Adversarial Networks to Guide Marker
  Discovery" (IPMI): AnoGAN. A DCGAN learns normal images; a query x is mapped to the latent space by
  back-propagating into z, minimising (1-λ)·Σ|x - G(z)| + λ·Σ|f(x) - f(G(z))| (f: an intermediate
  discriminator layer, λ = 0.1); that loss at the last step is the anomaly score A(x), |x - G(z)| the map.
- Schlegl et al. 2019, "f-AnoGAN: Fast unsupervised anomaly detection with generative adversarial networks"
  (Medical Image Analysis): an encoder E (the izi_f variant) is trained with G and D frozen to minimise
  MSE(x, G(E(x))) + κ·MSE(f(x), f(G(E(x)))); the same quantity is the score, in one forward pass.
- The TB-screening report this project follows applied AnoGAN to healthy 256x256 grey chest X-rays:
  z length 10, RMSprop, lr D 4e-4 / G 2e-4, λ = 0.1, threshold where the normal and abnormal score densities
  cross (``configs/anogan_tb.yaml``).

What differs:
- AnoGAN maps a whole batch at once (Adam on z, ``map_lr``); G and D are in eval mode so images do not
  interact and the result equals mapping one image at a time (tested). z ~ N(0, I) rather than U(-1, 1),
  and the start point of each image is drawn from ``seed``, so scores are reproducible.
- f-AnoGAN uses the same DCGAN (non-saturating loss, BatchNorm) instead of the paper's WGAN-GP.
- A diverging mapping (NaN/inf loss) freezes that image and gives it NaN scores, which the score table
  turns into an error row; the rest of the batch is unaffected.
- The residual is measured in grey levels of [0, 1] (half of |x - G(z)| on the network's [-1, 1] scale).
"""
from .detector import AnoGANDetector, FAnoGANDetector
from .model import Discriminator, Encoder, Generator

__all__ = ["AnoGANDetector", "Discriminator", "Encoder", "FAnoGANDetector", "Generator"]
