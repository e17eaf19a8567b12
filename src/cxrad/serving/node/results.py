"""The result objects the node sends back: a DICOM Comprehensive Structured Report per film (score, its
components, percentile, verdict, threshold, model and "not for diagnostic use"), optionally a Secondary
Capture of the heatmap, and the heatmap picture the dashboard's worklist shows.

highdicom builds the report. Building one from scratch costs tens of milliseconds of validation, and pydicom's
encoding several more (more than scoring the film), so ``ReportMaker`` has highdicom build one report per SOP
class and verdict, from a placeholder film whose every per-film value is a marker, encodes it once (sequences
of undefined length, so that no length but an element's own depends on its value), and makes each film's
report by putting the film's encoded values where the markers' elements are. A test checks that a filled
report equals the one highdicom builds for the same film.

Result UIDs are derived from the film's SOP Instance UID and the model's weights, so a result rebuilt after a
crash is the same DICOM instance, never a second one.
"""
from __future__ import annotations

import io
import threading
import uuid
import warnings
from datetime import datetime

import numpy as np

from cxrad.version import __version__

SCHEME = "99CXRAD"  # a private coding scheme for the concepts DICOM has no code for
NOT_FOR_DIAGNOSIS = ("Research use only. NOT FOR DIAGNOSTIC USE. Automated anomaly screening by cxrad "
                     "(unsupervised, trained on normal radiographs only); a radiologist must read the film.")
VERDICT_MEANINGS = {"anomalous": "Flagged for review", "normal": "Not flagged", "error": "Not scored"}
MANUFACTURER = "cxrad"
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902
HEATMAP_SIDE = 256


def _concept(value: str, meaning: str):
    from highdicom.sr import CodedConcept
    return CodedConcept(value, SCHEME, meaning)


def result_uid(film_uid: str, kind: str, model_sha256: str) -> str:
    """The UID of a film's SR or SC (``kind``), or of their series: the same film and model give the same
    UID (so a rebuilt object is the same instance)."""
    # a name-based (version 5) UUID under the 2.25 root (PS3.5 B.2); pydicom's generate_uid(prefix=None)
    # would be random whatever its entropy sources
    name = "\n".join(("cxrad", kind, str(model_sha256), str(film_uid)))
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"


def _filled(header_ds):
    """A copy of the film's patient and study attributes with the Type 2 ones it lacks present and empty (the
    result objects must carry them; highdicom requires them)."""
    from pydicom import Dataset

    from cxrad.serving.node.instances import REPORT_ATTRIBUTES
    ds = Dataset()
    for keyword in (*REPORT_ATTRIBUTES, "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "Modality"):
        if keyword in header_ds and header_ds[keyword].value is not None:
            ds[keyword] = header_ds[keyword]
        else:
            setattr(ds, keyword, "")
    ds.SpecificCharacterSet = "ISO_IR 192"  # values are str already; the results are written in UTF-8
    return ds


class ReportMaker:
    """Structured Reports (and Secondary Captures) for one model."""

    def __init__(self, model_name: str, model_sha256: str, components=(), threshold: float | None = None):
        self.model_name, self.model_sha256 = model_name, model_sha256
        self.components = tuple(components)
        self.threshold = threshold
        self._codes = {"score": "CXRAD-101", "percentile": "CXRAD-102", "threshold": "CXRAD-103",
                       **{c: f"CXRAD-2{i:02d}" for i, c in enumerate(self.components)}}
        self._templates: dict[tuple[str, str], _ByteTemplate] = {}
        self._lock = threading.Lock()

    def template(self, sop_class_uid: str, verdict: str) -> "_ByteTemplate":
        """The report highdicom builds for a placeholder film of this SOP class and verdict, as a byte
        template (made once)."""
        with self._lock:
            if (sop_class_uid, verdict) not in self._templates:
                from pydicom import Dataset
                placeholder = Dataset()
                for keyword, _vr, marker in _FILM_FIELDS:  # highdicom takes only M, F, O as a sex: marked later
                    setattr(placeholder, keyword, "O" if keyword == "PatientSex" else marker)
                placeholder.Modality = "CR"
                placeholder.SOPClassUID = sop_class_uid
                for keyword, marker in (("SOPInstanceUID", _UID_MARKERS["film"]),
                                        ("SeriesInstanceUID", _UID_MARKERS["film_series"]),
                                        ("StudyInstanceUID", _UID_MARKERS["film_study"])):
                    setattr(placeholder, keyword, marker)
                keys = ["score", "percentile", *self.components]
                values = {k: _value_marker(i) for i, k in enumerate(keys)} if verdict != "error" else {}
                sr = self.build_with_highdicom(placeholder, verdict, values, _REASON_MARKER if verdict == "error"
                                               else None, _UID_MARKERS["sr"], _UID_MARKERS["sr_series"])
                self._templates[(sop_class_uid, verdict)] = _ByteTemplate(sr, keys if verdict != "error" else [])
            return self._templates[(sop_class_uid, verdict)]

    # -------------------------------------------------------------------------------------- highdicom
    def build_with_highdicom(self, film, verdict: str, values: dict, error: str | None, sr_uid: str,
                             series_uid: str):
        """The report highdicom builds for ``film`` (its header dataset) from scratch."""
        import highdicom as hd
        from pydicom.sr.codedict import codes

        def num(key: str, meaning: str, unit):
            return hd.sr.NumContentItem(name=_concept(self._codes[key], meaning), value=float(values[key]),
                                        unit=unit, relationship_type="CONTAINS")

        def text(name, value: str):
            return hd.sr.TextContentItem(name=name, value=value, relationship_type="CONTAINS")

        film = _filled(film)
        items = [
            hd.sr.ImageContentItem(name=codes.DCM.SourceImageForImageProcessingOperation,
                                   referenced_sop_class_uid=film.SOPClassUID,
                                   referenced_sop_instance_uid=film.SOPInstanceUID, relationship_type="CONTAINS"),
            hd.sr.CodeContentItem(name=_concept("CXRAD-110", "Screening verdict"),
                                  value=_concept(f"CXRAD-11{list(VERDICT_MEANINGS).index(verdict) + 1}",
                                                 VERDICT_MEANINGS[verdict]), relationship_type="CONTAINS"),
        ]
        if verdict != "error":
            items += [num("score", "Anomaly score", codes.UCUM.NoUnits),
                      num("percentile", "Anomaly score percentile among normal radiographs", codes.UCUM.Percent)]
            items += [num(c, f"Score component {c}", codes.UCUM.NoUnits) for c in self.components]
            if self.threshold is not None:
                items.append(hd.sr.NumContentItem(name=_concept(self._codes["threshold"], "Decision threshold"),
                                                  value=float(self.threshold), unit=codes.UCUM.NoUnits,
                                                  relationship_type="CONTAINS"))
        else:
            items.append(text(_concept("CXRAD-120", "Reason not scored"), error or "unknown"))
        items += [text(codes.DCM.AlgorithmName, self.model_name),
                  text(codes.DCM.AlgorithmVersion, f"cxrad {__version__}, weights sha256 {self.model_sha256}"),
                  text(codes.DCM.Comment, NOT_FOR_DIAGNOSIS)]
        root = hd.sr.ContainerContentItem(name=_concept("CXRAD-100", "Chest X-ray anomaly screening"),
                                          template_id=None)
        root.ContentSequence = hd.sr.ContentSequence(items)
        with warnings.catch_warnings():  # highdicom warns about one-component person names; they are copied as sent
            warnings.simplefilter("ignore", UserWarning)
            return hd.sr.ComprehensiveSR(
                evidence=[film], content=root, series_instance_uid=series_uid, series_number=SR_SERIES_NUMBER,
                sop_instance_uid=sr_uid, instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
                series_description="cxrad anomaly screening (not for diagnostic use)")

    # ---------------------------------------------------------------------------------------- per film
    def structured_report(self, film, verdict: str, values: dict, error: str | None = None) -> tuple[str, bytes]:
        """(SOP Instance UID, encoded Part 10 file) of ``film``'s report, filled from the template."""
        film = _filled(film)
        sr_uid = result_uid(film.SOPInstanceUID, "sr", self.model_sha256)
        series_uid = result_uid(film.SeriesInstanceUID or film.StudyInstanceUID, "sr-series", self.model_sha256)
        now = datetime.now()
        fields = {keyword: _text(film[keyword].value) for keyword, _vr, _marker in _FILM_FIELDS}
        fields.update(film=str(film.SOPInstanceUID), film_series=str(film.SeriesInstanceUID),
                      film_study=str(film.StudyInstanceUID), sr=sr_uid, sr_series=series_uid,
                      date=now.strftime("%Y%m%d"), time=now.strftime("%H%M%S.%f"),
                      datetime=now.strftime("%Y%m%d%H%M%S.%f"), reason=(error or "unknown")[:1000])
        return sr_uid, self.template(str(film.SOPClassUID), verdict).fill(fields, values)

    def secondary_capture(self, film, heatmap_rgb: np.ndarray) -> tuple[str, bytes]:
        """(SOP Instance UID, encoded file) of a Secondary Capture of the heatmap overlay (enlarged to
        HEATMAP_SIDE pixels for viewing), made by highdicom."""
        import highdicom as hd

        film = _filled(film)
        sc_uid = result_uid(film.SOPInstanceUID, "sc", self.model_sha256)
        series_uid = result_uid(film.SeriesInstanceUID or film.StudyInstanceUID, "sc-series", self.model_sha256)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            sc = hd.sc.SCImage.from_ref_dataset(
                ref_dataset=film, pixel_array=np.ascontiguousarray(enlarged(heatmap_rgb), np.uint8),
                photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
                series_instance_uid=series_uid, series_number=SC_SERIES_NUMBER, sop_instance_uid=sc_uid,
                instance_number=1, manufacturer=MANUFACTURER, patient_orientation=("L", "F"),
                transfer_syntax_uid="1.2.840.10008.1.2.1")
        sc.SeriesDescription = "cxrad anomaly heatmap (not for diagnostic use)"
        sc.ImageComments = NOT_FOR_DIAGNOSIS
        sc.BurnedInAnnotation = "NO"
        return sc_uid, _encode(sc)


# The per-film fields of a report and their markers in the templates: each marker is valid for its VR, and an
# element is found by its tag, VR, length and marker together, so nothing else in the file can match.
_FILM_FIELDS = (("PatientName", "PN", "QXMARK01^QX"), ("PatientID", "LO", "QXMARK02QX"),
                ("PatientBirthDate", "DA", "18010101"), ("PatientSex", "CS", "QXMARK04QX"),
                ("StudyDate", "DA", "18020202"), ("StudyTime", "TM", "010203.040506"),
                ("ReferringPhysicianName", "PN", "QXMARK07^QX"), ("StudyID", "SH", "QXMARK08QX"),
                ("AccessionNumber", "SH", "QXMARK09QX"))
_UID_MARKERS = {"film": "2.25.9101", "film_series": "2.25.9103", "film_study": "2.25.9104",
                "sr": "2.25.9105", "sr_series": "2.25.9106"}
_REASON_MARKER = "QXMARK-REASON-QX"
_TIME_MARKERS = {"date": "18030303", "time": "030303.030303", "datetime": "18030303030303.030303"}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def _value_marker(i: int) -> float:
    return 7310.0 + i + 0.125  # exact in binary and in a decimal string


def _text(value) -> str:
    from pydicom.multival import MultiValue
    if value is None:
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v) for v in value)
    return str(value)


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One data element, explicit VR little endian."""
    import struct
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in _LONG_VRS:
        return head + b"\0\0" + struct.pack("<I", len(value)) + value
    if len(value) > 0xFFFF:
        raise ValueError("value too long for its VR")
    return head + struct.pack("<H", len(value)) + value


def _encoded(vr: bytes, value) -> bytes:
    import struct
    if vr == b"FD":
        return struct.pack("<d", float(value))
    data = str(value).encode("ascii" if vr == b"UI" else "utf-8")
    if len(data) % 2:
        data += b"\0" if vr == b"UI" else b" "
    return data


class _ByteTemplate:
    """A report encoded once, with the byte spans of its per-film elements."""

    def __init__(self, sr, value_keys: list[str]):
        from pydicom import dcmread
        from pydicom.datadict import dictionary_VR, tag_for_keyword
        from pydicom.valuerep import DSfloat

        ds = dcmread(io.BytesIO(_encode(sr)))
        for keyword, _vr, marker in _FILM_FIELDS:
            ds[keyword].value = marker
        for prefix, marker in (("Content", "date"), ("Series", "date"), ("InstanceCreation", "date")):
            if f"{prefix}Date" in ds:
                ds[f"{prefix}Date"].value = _TIME_MARKERS[marker]
                ds[f"{prefix}Time"].value = _TIME_MARKERS["time"]
        for item in ds.get("ContributingEquipmentSequence", []):
            if "ContributionDateTime" in item:
                item.ContributionDateTime = _TIME_MARKERS["datetime"]

        def undefined_lengths(dataset):  # no sequence or item length then depends on the values inside
            for elem in dataset:
                if elem.VR == "SQ":
                    elem.is_undefined_length = True
                    for child in elem.value:
                        child.is_undefined_length_sequence_item = True
                        undefined_lengths(child)
        undefined_lengths(ds)
        self.data = _encode(ds)
        # (tag, VR, marker value, field) of every element to fill, found by its whole encoding
        wanted = [(tag_for_keyword(k), vr.encode(), m, k) for k, vr, m in _FILM_FIELDS]
        for field, marker in _UID_MARKERS.items():
            for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "ReferencedSOPInstanceUID",
                            "MediaStorageSOPInstanceUID"):
                wanted.append((tag_for_keyword(keyword), b"UI", marker, field))
        for field, marker in _TIME_MARKERS.items():
            for keyword in ("ContentDate", "SeriesDate", "InstanceCreationDate", "ContentTime", "SeriesTime",
                            "InstanceCreationTime", "ContributionDateTime"):
                vr = dictionary_VR(keyword).encode()
                if (vr, field) in ((b"DA", "date"), (b"TM", "time"), (b"DT", "datetime")):
                    wanted.append((tag_for_keyword(keyword), vr, marker, field))
        wanted.append((tag_for_keyword("TextValue"), b"UT", _REASON_MARKER, "reason"))
        for i, key in enumerate(value_keys):
            marker = _value_marker(i)
            wanted.append((tag_for_keyword("NumericValue"), b"DS", str(DSfloat(marker, auto_format=True)),
                           ("ds", key)))
            wanted.append((tag_for_keyword("FloatingPointValue"), b"FD", marker, ("fd", key)))
        self.spans: list[tuple[int, int, int, bytes, object]] = []  # (start, end, tag, VR, field)
        for tag, vr, marker, field in wanted:
            pattern = _element(tag, vr, _encoded(vr, marker))
            start = self.data.find(pattern)
            while start != -1:
                self.spans.append((start, start + len(pattern), tag, vr, field))
                start = self.data.find(pattern, start + 1)
        self.spans.sort()
        found = {f if isinstance(f, str) else f[1] for *_, f in self.spans}
        missing = ({k for k, _, _ in _FILM_FIELDS} | {"film", "sr", "date"} | set(value_keys)) - found
        if missing:  # highdicom changed what it writes: fail loudly at start, not with a wrong report
            raise RuntimeError(f"report template: no place for {sorted(missing)}")
        self.meta_end = 132 + 12 + int.from_bytes(self.data[140:144], "little")

    def fill(self, fields: dict, values: dict) -> bytes:
        from pydicom.valuerep import DSfloat

        out, pos, meta_delta = [], 0, 0
        for start, end, tag, vr, field in self.spans:
            if isinstance(field, tuple):
                kind, key = field
                value = float(values[key])
                raw = _encoded(vr, DSfloat(value, auto_format=True) if kind == "ds" else value)
            else:
                raw = _encoded(vr, fields[field])
            element = _element(tag, vr, raw)
            out += [self.data[pos:start], element]
            if end <= self.meta_end:
                meta_delta += len(element) - (end - start)
            pos = end
        out.append(self.data[pos:])
        data = b"".join(out)
        group_length = int.from_bytes(data[140:144], "little") + meta_delta  # the file meta group's own length
        return data[:140] + group_length.to_bytes(4, "little") + data[144:]


def _encode(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ heatmap
def heatmap_overlay(grey_u8: np.ndarray, amap: np.ndarray) -> np.ndarray:
    """The model-size input with its anomaly map over it (smoothed, scaled to its own 99th percentile, the
    dashboard's colours) as RGB uint8 at the model's size: where in this film the model disagrees most."""
    import matplotlib
    from scipy.ndimage import gaussian_filter

    amap = np.nan_to_num(np.asarray(amap, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    amap = gaussian_filter(amap, sigma=max(0.5, 0.015 * amap.shape[0]))
    lo, hi = float(amap.min()), float(np.percentile(amap, 99))
    heat = np.zeros_like(amap, np.float32) if hi - lo < 1e-12 else np.clip((amap - lo) / (hi - lo), 0, 1)
    grey = np.asarray(grey_u8, np.float32) / 255.0
    colours = matplotlib.colormaps["inferno"](heat)[..., :3]
    a = (0.6 * heat)[..., None]
    out = (1 - a) * grey[..., None] + a * colours
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def enlarged(rgb: np.ndarray, side: int = HEATMAP_SIDE) -> np.ndarray:
    from PIL import Image
    if rgb.shape[0] >= side:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((side, side), Image.BILINEAR))


def png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
