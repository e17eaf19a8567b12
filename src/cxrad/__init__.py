"""cxrad: unsupervised anomaly detection on chest X-rays, trained on normal images only."""
__version__ = "0.1.0"

from .data import DataError, ImageSet, load_images, open_dataset  # noqa: E402
from .detector import Detector  # noqa: E402
from .io import ImageReadError, Preprocessing, read_image  # noqa: E402

__all__ = ["DataError", "Detector", "ImageReadError", "ImageSet", "Preprocessing", "__version__", "load_images",
           "open_dataset", "read_image"]
