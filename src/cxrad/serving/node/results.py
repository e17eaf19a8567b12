"""The result objects the node sends back: a DICOM Comprehensive Structured Report per film (score, its
components, percentile, verdict, threshold, model and "not for diagnostic use"), optionally a Secondary
Capture of the heatmap, and the heatmap picture the dashboard's worklist shows.

highdicom builds the report. Building one from scratch costs tens of milliseconds of validation (more than
scoring the film), so ``ReportMaker`` has highdicom build one report per verdict when the node starts, from a
placeholder film, and fills each film's report from it: its identifiers, patient and study attributes and
values. A test checks that a filled report equals the one highdicom builds for the same film.

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
# placeholders the templates are built with; every occurrence is replaced per film
_PLACEHOLDER_UIDS = {"sop_instance_uid": "2.25.101", "series_instance_uid": "2.25.103",
                     "study_instance_uid": "2.25.104"}


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
        self._templates: dict[tuple[str, str], tuple[bytes, dict]] = {}
        self._lock = threading.Lock()

    def template(self, sop_class_uid: str, verdict: str) -> tuple[bytes, dict]:
        """The report highdicom builds for a placeholder film of this SOP class and verdict (made once), and
        where in it the per-film values go."""
        with self._lock:
            if (sop_class_uid, verdict) not in self._templates:
                from pydicom import Dataset, dcmread
                placeholder = Dataset()
                for keyword, value in (("PatientName", "PLACEHOLDER^NAME"), ("PatientID", "PLACEHOLDER-ID"),
                                       ("PatientBirthDate", "19000101"), ("PatientSex", "O"),
                                       ("StudyDate", "19000101"), ("StudyTime", "000000"),
                                       ("ReferringPhysicianName", ""), ("StudyID", "0"), ("AccessionNumber", "0"),
                                       ("Modality", "CR")):
                    setattr(placeholder, keyword, value)
                placeholder.SOPClassUID = sop_class_uid
                for key, uid in _PLACEHOLDER_UIDS.items():
                    setattr(placeholder, {"sop_instance_uid": "SOPInstanceUID",
                                          "series_instance_uid": "SeriesInstanceUID",
                                          "study_instance_uid": "StudyInstanceUID"}[key], uid)
                values = {"score": 0.5, "percentile": 50.0, **{c: 0.5 for c in self.components}}
                sr = self.build_with_highdicom(placeholder, verdict, values if verdict != "error" else {},
                                               "placeholder" if verdict == "error" else None, "2.25.105", "2.25.106")
                data = _encode(sr)
                self._templates[(sop_class_uid, verdict)] = data, _locate(dcmread(io.BytesIO(data)), self._codes)
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
        from pydicom import dcmread
        from pydicom.valuerep import DSfloat

        film = _filled(film)
        sr_uid = result_uid(film.SOPInstanceUID, "sr", self.model_sha256)
        series_uid = result_uid(film.SeriesInstanceUID or film.StudyInstanceUID, "sr-series", self.model_sha256)
        template, places = self.template(str(film.SOPClassUID), verdict)
        ds = dcmread(io.BytesIO(template))  # only the elements set below are decoded, so encoding stays quick
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyInstanceUID"):
            ds[keyword].value = film[keyword].value
        for key, keyword in (("sop_instance_uid", "SOPInstanceUID"), ("series_instance_uid", "SeriesInstanceUID"),
                             ("study_instance_uid", "StudyInstanceUID")):
            for path in places["uids"].get(_PLACEHOLDER_UIDS[key], ()):
                _at(ds, path).value = str(film[keyword].value)
        for key, path in places["values"].items():
            if key in values:
                measured = _at(ds, path).MeasuredValueSequence[0]
                value = float(values[key])
                measured.NumericValue = DSfloat(value, auto_format=True)
                measured.FloatingPointValue = value
        if "reason" in places:
            _at(ds, places["reason"]).TextValue = (error or "unknown")[:1000]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sr_uid
        ds.SeriesInstanceUID = series_uid
        now = datetime.now()
        for prefix in ("Content", "Series", "InstanceCreation"):
            if f"{prefix}Date" in ds:
                ds[f"{prefix}Date"].value = now.strftime("%Y%m%d")
                ds[f"{prefix}Time"].value = now.strftime("%H%M%S.%f")
        return sr_uid, _encode(ds)

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


def _locate(ds, codes: dict) -> dict:
    """Paths (keyword/index steps) in a template to the placeholder UIDs, the numeric values by key, and the
    reason a film was not scored."""
    by_code = {v: k for k, v in codes.items()}
    found: dict = {"uids": {}, "values": {}}

    def walk(dataset, path):
        for elem in dataset:
            if elem.VR == "SQ":
                for i, item in enumerate(elem.value):
                    walk(item, (*path, elem.keyword, i))
            elif elem.VR == "UI" and str(elem.value) in _PLACEHOLDER_UIDS.values():
                found["uids"].setdefault(str(elem.value), []).append((*path, elem.keyword))
        if "ConceptNameCodeSequence" in dataset and path:
            code = dataset.ConceptNameCodeSequence[0].CodeValue
            if dataset.get("ValueType") == "NUM" and code in by_code:
                found["values"][by_code[code]] = path
            elif dataset.get("ValueType") == "TEXT" and code == "CXRAD-120":
                found["reason"] = path
    walk(ds, ())
    return found


def _at(ds, path):
    """The dataset (or, for a path ending in a keyword, the element) at ``path``."""
    node = ds
    steps = list(path)
    while steps:
        step = steps.pop(0)
        if isinstance(step, int):
            node = node[step]
        elif steps and isinstance(steps[0], int):
            node = getattr(node, step)
        else:
            return node[step]
    return node


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
