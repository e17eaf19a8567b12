"""The detectors under their earlier import path (``cxrad.models``); they live in ``cxrad.detectors``."""
from cxrad.detectors import __getattr__, load_detector  # noqa: F401
