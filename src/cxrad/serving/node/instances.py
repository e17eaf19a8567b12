"""What the node accepts and what it reads from a film before scoring it: the SOP classes (CR, DX for
presentation and for processing, Secondary Capture), the transfer syntaxes the reader decodes, the film's id,
and the few header attributes a result needs.

A film's id is derived from its SOP Instance UID (a DICOM film) or from its bytes (a PNG or JPEG upload), so
that the same film sent twice gets the same id, and its result is recorded once.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from cxrad.errors import ImageReadError

CR = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: the storage SOP classes the node screens
SOP_CLASSES = {CR: "CR", DX_PRESENTATION: "DX (for presentation)", DX_PROCESSING: "DX (for processing)",
               SECONDARY_CAPTURE: "Secondary Capture"}
UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
PNG_MAGIC, JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"
#: header attributes copied into the Structured Report and Secondary Capture (patient and study modules)
REPORT_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                     "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


def valid_uid(uid) -> bool:
    return isinstance(uid, str) and 0 < len(uid) <= 64 and bool(UID.match(uid))


def film_id_for_uid(sop_instance_uid: str) -> str:
    return hashlib.sha256(b"sop:" + sop_instance_uid.encode("ascii")).hexdigest()[:32]


def film_id_for_bytes(data: bytes) -> str:
    return hashlib.sha256(b"bytes:" + hashlib.sha256(data).digest()).hexdigest()[:32]


def sniff(data: bytes) -> str | None:
    """'dcm', 'png' or 'jpg' from the bytes themselves (never from a client's file name), or None."""
    if data[128:132] == b"DICM":
        return "dcm"
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpg"
    return None


def decodable_transfer_syntaxes() -> list[str]:
    """The transfer syntaxes the DICOM reader can decode here: the uncompressed ones and each compressed one
    whose pydicom pixel decoder has a working plugin installed (pylibjpeg, pyjpegls, ...). The SCP offers
    only these, so a PACS that holds a film in another one converts it or is told no."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID as DicomUID
    from pynetdicom import ALL_TRANSFER_SYNTAXES

    out = []
    for ts in ALL_TRANSFER_SYNTAXES:
        try:
            if get_decoder(DicomUID(ts)).is_available:
                out.append(ts)
        except NotImplementedError:  # pydicom has no decoder at all for it (video, JPIP, ...)
            continue
    return out


@dataclass
class Header:
    """What the node keeps of a DICOM film's header besides its pixels; ``dataset`` (patient and study
    attributes) goes only into the result objects sent back, never into the database or the logs."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    accession_number: str | None
    patient_id: str | None
    modality: str | None
    dataset: object  # pydicom Dataset of REPORT_ATTRIBUTES and the UIDs


def _text(ds, keyword: str, limit: int = 64) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # pydicom converts lazily: a malformed value raises here
        return None
    if value is None:
        return None
    text = str(value).strip()
    return text[:limit] or None


def read_header(data: bytes) -> Header:
    """The identifying attributes of DICOM bytes, read without decoding pixels and with the reader's bounds
    (a deflated file is inflated only as far as its header). Raises ImageReadError with the reason."""
    from pydicom import Dataset

    from cxrad.imaging.dicom import dicom_header

    try:
        ds = dicom_header(data)[0]
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(f"not a readable DICOM header ({type(exc).__name__})") from None
    sop_class, sop_uid = _text(ds, "SOPClassUID"), _text(ds, "SOPInstanceUID")
    if not valid_uid(sop_uid):
        raise ImageReadError("DICOM has no valid SOP Instance UID")
    if not valid_uid(sop_class):
        raise ImageReadError("DICOM has no valid SOP Class UID")
    kept = Dataset()
    for keyword in (*REPORT_ATTRIBUTES, "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "Modality",
                    "SpecificCharacterSet"):
        try:
            if keyword in ds:
                kept[keyword] = ds[keyword]
        except Exception:  # a malformed element is left out: the result objects then carry it empty
            continue
    study, series = _text(ds, "StudyInstanceUID"), _text(ds, "SeriesInstanceUID")
    return Header(sop_class_uid=sop_class, sop_instance_uid=sop_uid,
                  study_instance_uid=study if valid_uid(study) else None,
                  series_instance_uid=series if valid_uid(series) else None,
                  accession_number=_text(ds, "AccessionNumber", 16), patient_id=_text(ds, "PatientID"),
                  modality=_text(ds, "Modality", 16), dataset=kept)
