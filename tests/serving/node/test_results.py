"""The result objects: each film's Structured Report, filled from a template highdicom built, is the report
highdicom builds for that film from scratch (times apart); it holds the score, components, percentile,
verdict, threshold, model and "not for diagnostic use", in the film's study; a rebuilt report is the same
instance; the Secondary Capture carries the heatmap."""
from __future__ import annotations

import io

import numpy as np
import pytest
from pydicom import dcmread

from cxrad.serving.node.instances import read_header
from cxrad.serving.node.results import NOT_FOR_DIAGNOSIS, ReportMaker, heatmap_overlay, result_uid

TIMES = {"00080012", "00080013", "00080021", "00080031", "00080023", "00080033", "0040A032"}
EQUIPMENT = "0018A001"  # highdicom's contributing-equipment item carries its own time stamp


def real_headers(shared_data):
    files = sorted((shared_data / "dicom_chest").glob("cr_*.dcm"))
    assert len(files) >= 4
    return [read_header(f.read_bytes()) for f in files]


def without_times(ds) -> dict:
    doc = ds.to_json_dict()
    for tag in TIMES:
        doc.pop(tag, None)
    for item in doc.get(EQUIPMENT, {}).get("Value", []):
        item.pop("0018A002", None)
    return doc


def items_by_meaning(ds) -> dict:
    out = {}
    for item in ds.ContentSequence:
        meaning = item.ConceptNameCodeSequence[0].CodeMeaning
        if item.ValueType == "NUM":
            out[meaning] = float(item.MeasuredValueSequence[0].FloatingPointValue)
        elif item.ValueType == "TEXT":
            out[meaning] = item.TextValue
        elif item.ValueType == "CODE":
            out[meaning] = item.ConceptCodeSequence[0].CodeMeaning
        elif item.ValueType == "IMAGE":
            out["image"] = item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    return out


@pytest.mark.parametrize("verdict", ["anomalous", "normal", "error"])
def test_a_filled_report_is_the_report_highdicom_builds(shared_data, verdict):
    maker = ReportMaker("dae-test", "ab" * 32, components=("box_residual", "top_residual"), threshold=0.0625)
    values = {} if verdict == "error" else {"score": 0.0712345678901234, "percentile": 97.25,
                                            "box_residual": 0.0712345678901234, "top_residual": 0.2}
    error = "cannot decode the image (JPEG 2000 stream cut short)" if verdict == "error" else None
    for header in real_headers(shared_data):
        uid, data = maker.structured_report(header.dataset, verdict, values, error)
        filled = dcmread(io.BytesIO(data))
        series = result_uid(header.series_instance_uid or header.study_instance_uid, "sr-series", "ab" * 32)
        direct = maker.build_with_highdicom(header.dataset, verdict, values, error, uid, series)
        assert without_times(filled) == without_times(dcmread(io.BytesIO(_encode(direct))))
        assert filled.StudyInstanceUID == header.study_instance_uid and filled.Modality == "SR"
        assert filled.PatientID == (header.patient_id or "")
        got = items_by_meaning(filled)
        assert got["image"] == header.sop_instance_uid
        assert got["Comment"] == NOT_FOR_DIAGNOSIS and "NOT FOR DIAGNOSTIC USE" in got["Comment"]
        assert got["Algorithm Name"] == "dae-test" and "ab" * 32 in got["Algorithm Version"]
        if verdict == "error":
            assert got["Screening verdict"] == "Not scored" and got["Reason not scored"] == error
            assert "Anomaly score" not in got
        else:
            assert got["Anomaly score"] == values["score"]  # the float itself (FD), and the DS text near it
            assert got["Anomaly score percentile among normal radiographs"] == 97.25
            assert got["Score component top_residual"] == 0.2 and got["Decision threshold"] == 0.0625
            assert got["Screening verdict"] == ("Flagged for review" if verdict == "anomalous" else "Not flagged")
            num = next(i for i in filled.ContentSequence if i.ValueType == "NUM")
            assert len(str(num.MeasuredValueSequence[0].NumericValue)) <= 16
            assert float(num.MeasuredValueSequence[0].NumericValue) == pytest.approx(values["score"], rel=1e-12)


def test_a_rebuilt_report_is_the_same_instance_and_another_model_makes_another(shared_data):
    header = real_headers(shared_data)[0]
    a = ReportMaker("m", "11" * 32).structured_report(header.dataset, "normal", {"score": 0.1, "percentile": 5})[0]
    b = ReportMaker("m", "11" * 32).structured_report(header.dataset, "normal", {"score": 0.1, "percentile": 5})[0]
    c = ReportMaker("m", "22" * 32).structured_report(header.dataset, "normal", {"score": 0.1, "percentile": 5})[0]
    assert a == b != c and a.startswith("2.25.") and len(a) <= 64


def test_missing_patient_attributes_are_sent_empty_and_a_name_in_another_alphabet_survives(tmp_path):
    from dicom_films import encode, film_dataset, sample_images
    ds = film_dataset(sample_images(1)[0], patient_name="Müller^Zoë", patient_id="ÄÖ-77")
    for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "ReferringPhysicianName"):
        delattr(ds, keyword)
    header = read_header(encode(ds))
    _, data = ReportMaker("m", "0" * 64).structured_report(header.dataset, "anomalous",
                                                           {"score": 1.0, "percentile": 100.0})
    sr = dcmread(io.BytesIO(data))
    assert str(sr.PatientName) == "Müller^Zoë" and sr.PatientID == "ÄÖ-77"
    assert sr.PatientBirthDate == "" and sr.AccessionNumber == ""


def test_the_heatmap_overlay_and_its_secondary_capture(shared_data):
    rng = np.random.default_rng(0)
    grey = np.full((32, 32), 120, np.uint8)
    amap = np.zeros((32, 32))
    amap[20:26, 4:10] = 1.0 + rng.random((6, 6))
    rgb = heatmap_overlay(grey, amap)
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    hot, cold = rgb[22, 6].astype(int), rgb[5, 28].astype(int)
    assert abs(hot - 120).sum() > 60 and abs(cold - 120).sum() < 10  # colour only where the map is high
    header = real_headers(shared_data)[0]
    uid, data = ReportMaker("m", "0" * 64).secondary_capture(header.dataset, rgb)
    sc = dcmread(io.BytesIO(data))
    assert sc.SOPInstanceUID == uid and sc.StudyInstanceUID == header.study_instance_uid
    assert sc.PhotometricInterpretation == "RGB" and sc.pixel_array.shape == (256, 256, 3)
    assert "NOT FOR DIAGNOSTIC USE" in sc.ImageComments


def _encode(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
