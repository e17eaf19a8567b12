"""HTTP in and out: uploads of PNG, JPEG and DICOM scored as `cxrad score` scores the same files; results
(202 while queued), the worklist with its filters, DICOMweb STOW-RS with good and bad parts, the OpenAPI page,
/healthz and /metrics; bearer tokens, the body cap, and errors without a traceback or a server path."""
from __future__ import annotations

import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dicom_films import encode, film_dataset, sample_images


def stow_body(parts: list[bytes], boundary: str = "cxrad-test-boundary") -> tuple[bytes, dict]:
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                  "Accept": "application/dicom+json"}


def upload(client, data: bytes, name: str = "film"):
    return client.post("/v1/images", files={"file": (name, data, "application/octet-stream")})


def test_uploads_are_scored_like_cxrad_score_and_a_repeat_gets_the_same_id(make_node, client_of, node_model,
                                                                           tmp_path):
    from cxrad.serving.streaming import score_to_files
    node = make_node()
    client = client_of(node)
    jpeg, png = sample_images()[0], sample_images()[-1]
    dicom = tmp_path / "film.dcm"
    film_dataset(sample_images()[1]).save_as(dicom, enforce_file_format=True)
    ids = {}
    for path in (jpeg, png, dicom):
        r = upload(client, path.read_bytes(), "whatever.bin")  # the type comes from the bytes, not the name
        assert r.status_code == 202 and r.json()["status"] == "queued", r.text
        ids[str(path)] = r.json()["id"]
    assert node.wait_idle(120)
    expected = {}
    score_to_files(node_model[0], list(ids), None, on_batch=lambda rows: expected.update(
        {p: s for p, s in zip(rows["path"], rows["score"])}))
    for path, film_id in ids.items():
        r = client.get(f"/v1/results/{film_id}")
        assert r.status_code == 200 and r.json()["score"] == pytest.approx(expected[path], rel=1e-6)
        assert r.json()["model_sha256"] == node.model_sha256 and r.json()["source"] == "http"
    assert client.get(f"/v1/results/{ids[str(dicom)]}").json()["sop_instance_uid"]
    again = upload(client, jpeg.read_bytes())
    assert again.status_code == 200 and again.json() == {"id": ids[str(jpeg)], "status": "scored",
                                                         "result": f"/v1/results/{ids[str(jpeg)]}"}
    assert client.get(f"/v1/results/{ids[str(jpeg)]}/heatmap.png").content.startswith(b"\x89PNG")
    assert node.db.worklist()[0] == 3


def test_bad_uploads_are_refused_with_a_reason(make_node, client_of):
    client = client_of(make_node())
    assert upload(client, b"GIF89a not a radiograph").status_code == 415
    report = film_dataset(sample_images(1)[0], sop_class="1.2.840.10008.5.1.4.1.1.88.33", modality="SR")
    r = upload(client, encode(report))
    assert r.status_code == 415 and "SOP class" in r.json()["detail"]
    r = upload(client, b"\0" * 128 + b"DICM" + b"\xff" * 40)
    assert r.status_code == 400 and r.json()["detail"].startswith("not a readable DICOM file")
    assert client.post("/v1/images").status_code == 422
    assert client.get("/v1/results/not-an-id").status_code == 422
    assert client.get("/v1/results/" + "0" * 32).status_code == 404


def test_a_result_is_202_while_queued_then_200(make_node, client_of):
    node = make_node(start=False)
    gate, real = threading.Event(), node.pipeline._gather
    node.pipeline._gather = lambda: gate.wait() and real()
    node.start()
    client = client_of(node)
    film_id = upload(client, sample_images()[2].read_bytes()).json()["id"]
    r = client.get(f"/v1/results/{film_id}")
    assert r.status_code == 202 and r.json() == {"id": film_id, "status": "queued"}
    gate.set()
    assert node.wait_idle(120)
    assert client.get(f"/v1/results/{film_id}").status_code == 200


def test_worklist_by_score_with_filters_and_paging(make_node, client_of):
    from dicom_films import c_store
    node = make_node()
    client = client_of(node)
    for path in sample_images()[:4]:
        upload(client, path.read_bytes())
    films = [film_dataset(p) for p in sample_images()[4:6]]
    assert c_store(films, node.scp.port, calling="WARD7") == [0, 0]
    assert node.wait_idle(120)
    body = client.get("/v1/worklist").json()
    scores = [i["score"] for i in body["items"]]
    assert body["total"] == 6 and scores == sorted(scores, reverse=True)
    flagged = client.get("/v1/worklist", params={"flagged": True}).json()
    assert all(i["verdict"] == "anomalous" for i in flagged["items"])
    assert flagged["total"] + client.get("/v1/worklist", params={"flagged": False}).json()["total"] == 6
    ward = client.get("/v1/worklist", params={"source_ae": "WARD7"}).json()
    assert ward["total"] == 2 and {i["sop_instance_uid"] for i in ward["items"]} == {f.SOPInstanceUID for f in films}
    page = client.get("/v1/worklist", params={"limit": 2, "offset": 4}).json()
    assert [i["id"] for i in page["items"]] == [i["id"] for i in body["items"][4:6]]
    assert client.get("/v1/worklist", params={"since": "2999-01-01"}).json()["total"] == 0
    assert client.get("/v1/worklist", params={"limit": 0}).status_code == 422
    assert client.get("/v1/worklist", params={"since": "yesterday"}).status_code == 422


def test_stow_rs_stores_the_dicom_parts_and_reports_the_others(make_node, client_of):
    node = make_node()
    client = client_of(node)
    films = [film_dataset(p) for p in sample_images()[:2]]
    report = film_dataset(sample_images(1)[0], sop_class="1.2.840.10008.5.1.4.1.1.88.33", modality="SR")
    body, headers = stow_body([encode(films[0]), encode(report), b"not dicom at all"])
    r = client.post("/dicomweb/studies", content=body, headers=headers)
    assert r.status_code == 202 and r.headers["content-type"].startswith("application/dicom+json")
    stored, failed = r.json()["00081199"]["Value"], r.json()["00081198"]["Value"]
    assert [s["00081155"]["Value"][0] for s in stored] == [films[0].SOPInstanceUID]
    assert sorted(f["00081197"]["Value"][0] for f in failed) == [0x0122, 0xC000]
    body, headers = stow_body([encode(films[1])])
    assert client.post("/dicomweb/studies", content=body, headers=headers).status_code == 200
    r = client.post(f"/dicomweb/studies/{films[0].StudyInstanceUID}", content=body, headers=headers)
    assert r.status_code == 409 and r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC409]
    assert client.post("/dicomweb/studies", content=body,
                       headers={"Content-Type": "application/dicom"}).status_code == 415
    assert node.wait_idle(120)
    rows = node.db.worklist()[1]
    assert {r["sop_instance_uid"] for r in rows} == {f.SOPInstanceUID for f in films}
    assert {r["source"] for r in rows} == {"stow"}


def test_docs_health_and_metrics(make_node, client_of):
    node = make_node()
    client = client_of(node)
    upload(client, sample_images()[0].read_bytes())
    upload(client, b"\x89PNG\r\n\x1a\n" + b"broken" * 10)  # a PNG that is not one: an error result
    assert node.wait_idle(120)
    assert client.get("/healthz").json()["status"] == "ok"
    assert "swagger" in client.get("/docs").text.lower()
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/images", "/v1/results/{film_id}", "/v1/worklist", "/dicomweb/studies", "/healthz",
            "/metrics"} <= set(paths)
    r = client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("cxrad_films_total", (("verdict", "error"),))] == 1
    assert samples[("cxrad_films_received_total", (("source", "http"),))] == 2
    assert samples[("cxrad_queue_depth", ())] == 0
    assert samples[("cxrad_latency_seconds_count", ())] == 2
    assert any(name == "cxrad_film_errors_total" for name, _ in samples)


def test_tokens_guard_everything_but_health_and_docs(make_node, client_of, tmp_path):
    from cxrad.serving.node.config import new_token
    token = new_token(tmp_path / "tokens")
    assert token not in (tmp_path / "tokens").read_text()  # only its hash is kept
    node = make_node(tokens_file=tmp_path / "tokens")
    client = client_of(node)
    r = client.get("/v1/worklist")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/v1/worklist", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics").status_code == 401
    assert upload(client, sample_images()[0].read_bytes()).status_code == 401
    assert client.get("/v1/worklist", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert client.get("/healthz").status_code == 200 and client.get("/openapi.json").status_code == 200


def test_body_cap_and_no_traceback_or_path_in_any_answer(make_node, client_of, monkeypatch):
    node = make_node(max_upload_bytes=10_000)
    client = client_of(node)
    big = sample_images()[0].read_bytes() * 3
    assert len(big) > 10_000
    r = upload(client, big)
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunks():  # no Content-Length: the cap applies as the body streams in
        for _ in range(20):
            yield b"x" * 1000
    body, headers = stow_body([b"x"])
    r = client.post("/dicomweb/studies", content=chunks(), headers=headers)
    assert r.status_code == 413

    def broken(*args, **kwargs):
        raise RuntimeError(f"boom in {node.config.state_dir}")
    monkeypatch.setattr(node.db, "worklist", broken)
    r = client.get("/v1/worklist")
    assert r.status_code == 500 and r.json() == {"detail": "internal error"}
    for answer in (r, client.get("/v1/results/zz"), upload(client, b"\0" * 128 + b"DICM" + b"\xff" * 40)):
        text = answer.text
        assert "Traceback" not in text and str(node.config.state_dir) not in text and "/src/cxrad" not in text
