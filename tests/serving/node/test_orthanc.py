"""A real PACS, all on loopback: Debian's Orthanc, started from the project's own configuration
(deploy/orthanc/), receives a chest film from a modality; its routing rule forwards the film to `cxrad serve`;
the node's Structured Report (and heatmap) come back into the same study in Orthanc, read here through Orthanc's
REST API: the score in the report is the score `cxrad score` gives the same file. The report is stored once and
is not routed back to the node."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from dicom_films import c_store, film_dataset, free_port, sample_images

ROOT = Path(__file__).resolve().parents[3]
ORTHANC = Path("/usr/sbin/Orthanc")
USER = ("cxrad-test", "a-test-password")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not ORTHANC.exists() and shutil.which("Orthanc") is None,
                                 reason="Orthanc is not installed (apt-get install orthanc, as root; .ci/run does)")]


def wait_http(url: str, proc, log: Path, timeout: float = 120, auth=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url} exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2, auth=auth).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not come up:\n{log.read_text()[-3000:]}")


def orthanc_config(tmp: Path, http_port: int, dicom_port: int, cxrad_port: int) -> Path:
    """The project's Orthanc configuration, with this test's ports, folders and user."""
    folder = tmp / "orthanc"
    folder.mkdir()
    for f in (ROOT / "deploy" / "orthanc").iterdir():
        shutil.copy(f, folder / f.name)
    config = json.loads((folder / "orthanc.json").read_text())
    config.update(StorageDirectory=str(tmp / "orthanc-db"), IndexDirectory=str(tmp / "orthanc-db"),
                  HttpPort=http_port, DicomPort=dicom_port, RegisteredUsers={USER[0]: USER[1]},
                  LuaScripts=[str(folder / name) for name in config["LuaScripts"]])
    config["DicomModalities"]["cxrad"]["Port"] = cxrad_port
    config["DicomModalities"]["modality"] = {"AET": "MODALITY", "Host": "127.0.0.1", "Port": free_port(),
                                             "AllowStore": True}
    (folder / "orthanc.json").write_text(json.dumps(config, indent=1))
    return folder / "orthanc.json"


def test_orthanc_forwards_a_film_and_gets_the_report_with_the_cxrad_score(tmp_path, shared_data):
    import cxrad
    film = shared_data / "dicom_chest" / "cr_chest_mono2_jpeg_baseline.dcm"
    source = dcmread(film, stop_before_pixels=True)
    o_http, o_dicom, c_dicom, c_http = free_port(), free_port(), free_port(), free_port()
    config = orthanc_config(tmp_path, o_http, o_dicom, c_dicom)
    env = dict(os.environ, PYTHONPATH=str(Path(cxrad.__file__).parents[1]))
    logs = {name: tmp_path / f"{name}.log" for name in ("orthanc", "node")}
    orthanc = subprocess.Popen([str(ORTHANC if ORTHANC.exists() else shutil.which("Orthanc")), str(config)],
                               stdout=open(logs["orthanc"], "wb"), stderr=subprocess.STDOUT)
    node = subprocess.Popen([sys.executable, "-m", "cxrad", "serve", "--state", str(tmp_path / "state"),
                             "--dicom-port", str(c_dicom), "--http-port", str(c_http), "--allow-aet", "ORTHANC",
                             "--destination", f"ORTHANC@127.0.0.1:{o_dicom}", "--send-heatmap"],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(logs["node"], "wb"))
    api = f"http://127.0.0.1:{o_http}"
    try:
        wait_http(f"{api}/system", orthanc, logs["orthanc"], auth=USER)
        wait_http(f"http://127.0.0.1:{c_http}/healthz", node, logs["node"])
        assert httpx.get(f"{api}/system", timeout=5).status_code == 401  # Orthanc's REST API needs its user
        assert httpx.post(f"{api}/modalities/cxrad/echo", json={}, auth=USER, timeout=30).status_code == 200

        assert c_store([film], o_dicom, called="ORTHANC", calling="MODALITY") == [0]  # the modality sends
        query = {"Level": "Instance", "Expand": True, "Query": {"StudyInstanceUID": source.StudyInstanceUID}}
        deadline, found = time.monotonic() + 240, []
        while time.monotonic() < deadline:
            found = httpx.post(f"{api}/tools/find", json=query, auth=USER, timeout=10).json()
            if {"SR", "OT"} <= {f["MainDicomTags"].get("Modality", _modality(api, f["ID"])) for f in found}:
                break
            time.sleep(0.5)
        by_modality = {}
        for f in found:
            by_modality.setdefault(_modality(api, f["ID"]), []).append(f["ID"])
        assert sorted(by_modality) == ["CR", "OT", "SR"], (by_modality, logs["node"].read_text()[-2000:])
        assert len(by_modality["SR"]) == 1 and len(by_modality["OT"]) == 1

        sr = dcmread(io.BytesIO(httpx.get(f"{api}/instances/{by_modality['SR'][0]}/file", auth=USER,
                                          timeout=30).content))
        items = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in sr.ContentSequence}
        reported = float(items["Anomaly score"].MeasuredValueSequence[0].FloatingPointValue)
        referenced = items["Source image for image processing operation"].ReferencedSOPSequence[0]
        assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert sr.PatientID == source.PatientID and sr.StudyInstanceUID == source.StudyInstanceUID
        assert "NOT FOR DIAGNOSTIC USE" in items["Comment"].TextValue
        tags = httpx.get(f"{api}/instances/{by_modality['SR'][0]}/tags?simplify", auth=USER, timeout=10).json()
        assert tags["SOPInstanceUID"] == sr.SOPInstanceUID  # Orthanc parsed and indexed the report

        scored = subprocess.run([sys.executable, "-m", "cxrad", "score", str(film), "--json", "--quiet",
                                 "--cache-dir", str(tmp_path / "cache")], env=env, capture_output=True, text=True,
                                timeout=300)
        assert scored.returncode == 0, scored.stderr
        expected = json.loads(scored.stdout.splitlines()[0])
        assert reported == pytest.approx(expected["score"], rel=1e-6)
        verdict = items["Screening verdict"].ConceptCodeSequence[0].CodeMeaning
        assert verdict == ("Flagged for review" if expected["anomalous"] else "Not flagged")

        time.sleep(3)  # nothing more comes: the report was not routed back to the node and sent again
        again = httpx.post(f"{api}/tools/find", json=query, auth=USER, timeout=10).json()
        assert len(again) == 3
        result = httpx.get(f"http://127.0.0.1:{c_http}/v1/worklist", timeout=10).json()
        assert result["total"] == 1 and result["items"][0]["calling_ae"] == "ORTHANC"
        assert {d["state"] for d in httpx.get(f"http://127.0.0.1:{c_http}/v1/results/{result['items'][0]['id']}",
                                              timeout=10).json()["deliveries"]} == {"sent"}

        # the routing rule's other cases: a chest Secondary Capture is screened, an MR is not
        capture = film_dataset(sample_images(1)[0], sop_class="1.2.840.10008.5.1.4.1.1.7", modality="OT")
        mr = film_dataset(sample_images(1)[0], sop_class="1.2.840.10008.5.1.4.1.1.4", modality="MR")
        assert c_store([capture, mr], o_dicom, called="ORTHANC", calling="MODALITY") == [0, 0]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and httpx.get(f"http://127.0.0.1:{c_http}/v1/worklist",
                                                        timeout=10).json()["total"] < 2:
            time.sleep(0.5)
        time.sleep(2)
        items = httpx.get(f"http://127.0.0.1:{c_http}/v1/worklist", timeout=10).json()["items"]
        assert sorted(i["sop_instance_uid"] for i in items) == sorted([source.SOPInstanceUID,
                                                                       capture.SOPInstanceUID])
    finally:
        for proc in (node, orthanc):
            proc.terminate()
        for proc in (node, orthanc):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _modality(api: str, instance: str) -> str:
    return httpx.get(f"{api}/instances/{instance}/simplified-tags", auth=USER, timeout=10).json().get("Modality", "")
