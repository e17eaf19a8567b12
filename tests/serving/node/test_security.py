"""Security: loopback by default and no other interface without tokens and an allow-list; tokens kept as
hashes; HTTPS through uvicorn's TLS options; a request that stalls is cut off at its time limit; the patient ID
reaches the database only as a keyed hash, and no patient data reaches the logs."""
from __future__ import annotations

import hashlib
import hmac
import logging
import shutil
import socket
import ssl
import subprocess
import threading
import time

import httpx
import pytest

from cxrad.errors import UserError
from cxrad.serving.node.config import NodeConfig, load_token_hashes, new_token
from dicom_films import c_store, film_dataset, sample_images


def test_other_interfaces_need_tokens_and_an_allow_list(tmp_path):
    (tmp_path / "plain").write_text("my-secret-token\n")
    with pytest.raises(UserError, match="bearer tokens"):
        NodeConfig(tmp_path, host="0.0.0.0").check()
    token_file = tmp_path / "tokens"
    new_token(token_file)
    with pytest.raises(UserError, match="allow-list"):
        NodeConfig(tmp_path, host="0.0.0.0", tokens_file=token_file).check()
    NodeConfig(tmp_path, host="0.0.0.0", tokens_file=token_file, allowed_aets=("PACS",)).check()
    NodeConfig(tmp_path, host="10.1.2.3", http_port=0, allowed_aets=("PACS",)).check()  # DICOM only
    with pytest.raises(UserError, match="not a plain token"):
        load_token_hashes(tmp_path / "plain")
    with pytest.raises(UserError, match="TLS needs both"):
        NodeConfig(tmp_path, tls_cert=tmp_path / "c.pem").check()
    assert NodeConfig(tmp_path).host == "127.0.0.1"


def test_the_node_listens_on_loopback_by_default(make_node):
    node = make_node()
    assert node.scp.server.server_address[0] == "127.0.0.1"
    assert node.http_server().config.host == "127.0.0.1"


def _serve(node):
    server = node.http_server()
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    return server, thread


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed to make a certificate")
def test_https_with_uvicorns_tls_options(make_node, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True, timeout=60)
    node = make_node(tls_cert=cert, tls_key=key, dicom_port=0)
    server, thread = _serve(node)
    try:
        url = f"https://127.0.0.1:{node.config.http_port}"
        trusted = ssl.create_default_context(cafile=str(cert))
        assert httpx.get(f"{url}/healthz", verify=trusted, timeout=10).json()["status"] == "ok"
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{node.config.http_port}/healthz", timeout=5)
        with pytest.raises(httpx.ConnectError):  # an unknown certificate is not trusted
            httpx.get(f"{url}/healthz", timeout=10)
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_stalled_request_is_cut_off_at_its_time_limit(make_node):
    node = make_node(request_timeout_s=1.0, dicom_port=0)
    server, thread = _serve(node)
    try:
        with socket.create_connection(("127.0.0.1", node.config.http_port), timeout=10) as sock:
            sock.sendall(b"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                         b"Content-Type: multipart/related; type=\"application/dicom\"; boundary=b\r\n\r\n--b")
            t0 = time.monotonic()
            answer = sock.recv(4096)
            waited = time.monotonic() - t0
            while b"}" not in answer:
                more = sock.recv(4096)
                if not more:
                    break
                answer += more
        assert answer.startswith(b"HTTP/1.1 408") and b"longer than" in answer
        assert 0.5 < waited < 8
    finally:
        server.should_exit = True
        thread.join(10)


def test_patient_id_is_only_a_keyed_hash_and_no_patient_data_is_logged(make_node, tmp_path, caplog, receiver):
    pacs = receiver()
    caplog.set_level(logging.DEBUG)
    node = make_node(destination=pacs.destination)
    film = film_dataset(sample_images(1)[0], patient_id="PID-7731-SECRET", patient_name="Secretname^Alice")
    assert c_store([film], node.scp.port) == [0]
    assert node.wait_idle(120)
    row = node.db.worklist()[1][0]
    assert "patient_key" not in row
    with node.db.engine.connect() as conn:
        key = conn.exec_driver_sql("select patient_key from films").scalar()
    secret = (node.config.state_dir / "secret.key").read_bytes()
    assert key == hmac.new(secret, b"PID-7731-SECRET", hashlib.sha256).hexdigest()
    node.stop()
    stored = b"".join(p.read_bytes() for p in node.config.state_dir.glob("node.db*"))
    assert b"PID-7731" not in stored and b"Secretname" not in stored
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "PID-7731" not in logged and "Secretname" not in logged
    sr = pacs.received[0][1]  # the report itself goes to the PACS with the patient's attributes, as it must
    assert sr.PatientID == "PID-7731-SECRET"
