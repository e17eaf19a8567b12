"""Which files are images: one list of suffixes and one DICOM magic check for every reader and folder scan."""
from __future__ import annotations

DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", *DICOM_SUFFIXES}
DICOM_MAGIC_OFFSET = 128


def _is_dicom(data: bytes, suffix: str) -> bool:
    return suffix.lower() in DICOM_SUFFIXES or (len(data) > 132 and data[128:132] == b"DICM")

