"""DICOM in: the Storage SCP takes CR, DX and Secondary Capture films in the transfer syntaxes the reader
decodes (the real JPEG baseline, JPEG-LS and JPEG 2000 chest films of the shared data folder included) and
scores them as `cxrad score` does; only allowed calling AE titles get in; a full spool answers 0xA700 and
nothing acknowledged is lost; the report goes back to the destination, once."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from pydicom import dcmread

from dicom_films import DX, c_store, film_dataset, sample_images, write_films


def scores_by_uid(node) -> dict:
    return {r["sop_instance_uid"]: r for r in node.db.worklist(limit=500)[1]}


def test_real_compressed_films_are_accepted_and_scored_as_cxrad_score_does(make_node, node_model, shared_data,
                                                                           receiver):
    from cxrad.serving.streaming import score_to_files
    pacs = receiver()
    node = make_node(destination=pacs.destination, allowed_aets=("TESTSCU",))
    files = sorted((shared_data / "dicom_chest").glob("cr_*.dcm"))
    syntaxes = {str(dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID) for f in files}
    assert {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.91"} <= syntaxes
    assert c_store(files, node.scp.port) == [0x0000] * len(files)  # each sent in its own transfer syntax
    assert node.wait_idle(180)
    got = scores_by_uid(node)
    expected = {}
    score_to_files(node_model[0], [str(f) for f in files], None, on_batch=lambda rows: expected.update(
        {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): r for p, r in zip(rows["path"], rows.to_dict(
            "records"))}))
    assert set(got) == set(expected)
    for uid, row in got.items():
        assert row["error"] is None and row["score"] == pytest.approx(expected[uid]["score"], rel=1e-6)
        assert row["verdict"] == ("anomalous" if expected[uid]["anomalous"] else "normal")
        assert row["calling_ae"] == "TESTSCU" and row["source"] == "dicom"
    reports = [ds for _, ds in pacs.received if ds.Modality == "SR"]
    assert sorted(r.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
                  .ReferencedSOPSequence[0].ReferencedSOPInstanceUID for r in reports) == sorted(got)
    assert all(node.db.result(r["id"])["sent_at"] for r in got.values())


def test_cr_dx_and_secondary_capture_are_screened_other_classes_and_callers_are_not(make_node, tmp_path):
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage, Verification

    node = make_node(allowed_aets=("MODALITY",))
    image = sample_images(1)[0]
    films = [film_dataset(image, sop_class=c) for c in
             ("1.2.840.10008.5.1.4.1.1.1", DX, "1.2.840.10008.5.1.4.1.1.1.1.1", "1.2.840.10008.5.1.4.1.1.7")]
    assert c_store(films, node.scp.port, calling="MODALITY") == [0] * 4
    assert c_store(films[:1], node.scp.port, calling="INTRUDER") is None  # association rejected
    assert c_store(films[:1], node.scp.port, calling="MODALITY", called="SOMEONE") is None
    mr = film_dataset(image, sop_class=MRImageStorage, modality="MR")
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(MRImageStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.scp.port, ae_title="CXRAD")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    with pytest.raises(ValueError):  # no presentation context for MR was accepted
        assoc.send_c_store(mr)
    assoc.release()
    assert node.wait_idle(120)
    assert sorted(r["sop_class_uid"] for r in node.db.worklist()[1]) == sorted(f.SOPClassUID for f in films)


def test_a_full_spool_answers_out_of_resources_and_loses_nothing(make_node, tmp_path):
    from dicom_films import encode
    films = [film_dataset(sample_images(1)[0], patient_id=f"P{i}") for i in range(5)]
    size = len(encode(films[0]))
    node = make_node(start=False, spool_max_bytes=int(2.5 * size))
    gate, real = threading.Event(), node.pipeline._gather
    node.pipeline._gather = lambda: gate.wait() and real()  # scoring paused: the spool fills up
    node.start()
    statuses = c_store(films, node.scp.port)
    assert statuses == [0x0000, 0x0000, 0xA700, 0xA700, 0xA700]
    assert node.spool.depth == 2
    gate.set()
    assert node.wait_idle(120)
    assert node.spool.depth == 0
    for retry in (films[2:4], films[4:]):  # the sender retries later: accepted as the spool drains
        assert c_store(retry, node.scp.port) == [0x0000] * len(retry)
        assert node.wait_idle(120)
    assert set(scores_by_uid(node)) == {f.SOPInstanceUID for f in films}
    assert 'cxrad_films_refused_total{reason="spool full"} 3.0' in node.metrics.text().decode()


def test_the_same_film_sent_twice_is_scored_and_reported_once(make_node, receiver, tmp_path):
    pacs = receiver()
    node = make_node(destination=pacs.destination)
    films = write_films(tmp_path / "films", 3)
    assert c_store(films + films[:2], node.scp.port) == [0] * 5
    assert node.wait_idle(120)
    assert c_store(films[:1], node.scp.port) == [0]  # once more, after its result was recorded
    assert node.wait_idle(120)
    assert node.db.worklist()[0] == 3
    assert len(pacs.uids()) == len(set(pacs.uids())) == 3


def test_an_unreadable_film_is_an_error_result_and_the_node_keeps_going(make_node, receiver, tmp_path):
    pacs = receiver()
    node = make_node(destination=pacs.destination)
    good = film_dataset(sample_images(1)[0])
    bad = film_dataset(sample_images(1)[0])
    bad.PixelData = bad.PixelData[:100]  # cut short
    assert c_store([bad, good], node.scp.port) == [0, 0]
    assert node.wait_idle(120)
    rows = scores_by_uid(node)
    assert rows[good.SOPInstanceUID]["verdict"] in ("normal", "anomalous")
    assert rows[bad.SOPInstanceUID]["verdict"] == "error" and rows[bad.SOPInstanceUID]["score"] is None
    assert rows[bad.SOPInstanceUID]["error"]
    report = next(ds for _, ds in pacs.received if ds.CurrentRequestedProcedureEvidenceSequence[0]
                  .ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == bad.SOPInstanceUID)
    verdict = next(i for i in report.ContentSequence if i.ValueType == "CODE")
    assert verdict.ConceptCodeSequence[0].CodeMeaning == "Not scored"
    text = node.metrics.text().decode()
    assert 'cxrad_films_total{verdict="error"} 1.0' in text and "cxrad_film_errors_total{reason=" in text
    assert np.isfinite(rows[good.SOPInstanceUID]["score"])
