"""Results back: reports go by C-STORE with retries and backoff while the destination is busy or away, are
given up when it refuses them for good, and never go twice: a send whose outcome is unknown (no answer, or a
crash) is left unknown, not resent, unless the operator asks. The JSON webhook follows the same rules."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from dicom_films import c_store, film_dataset, free_port, sample_images


def wait_for(predicate, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def films(n: int):
    return [film_dataset(p) for p in sample_images()[:n]]


def test_a_busy_destination_gets_each_report_once_after_retries(make_node, receiver):
    pacs = receiver(fail=[0xA700, 0xA700, 0xA701])  # out of resources, three times
    node = make_node(destination=pacs.destination, delivery_backoff_s=0.05, send_heatmap=True)
    sent = films(2)
    assert c_store(sent, node.scp.port) == [0, 0]
    assert node.wait_idle(120)
    assert pacs.requests == 3 + 4 and len(pacs.uids()) == len(set(pacs.uids())) == 4  # 2 SR + 2 SC
    assert {ds.Modality for _, ds in pacs.received} == {"SR", "OT"}
    assert node.db.counts()["deliveries"] == {("sr", "sent"): 2, ("sc", "sent"): 2}
    assert not list(node.outbox.folder.iterdir())  # sent objects leave the outbox


def test_a_destination_that_refuses_for_good_is_not_retried(make_node, receiver):
    pacs = receiver(fail=[0xC000])
    node = make_node(destination=pacs.destination, delivery_backoff_s=0.05)
    assert c_store(films(1), node.scp.port) == [0]
    assert node.wait_idle(120)
    assert pacs.requests == 1 and node.db.counts()["deliveries"] == {("sr", "failed"): 1}


def test_a_destination_that_is_away_is_retried_until_it_comes_back(make_node, receiver):
    port = free_port()
    node = make_node(destination=f"LATEPACS@127.0.0.1:{port}", delivery_backoff_s=0.2, delivery_attempts=20)
    assert c_store(films(2), node.scp.port) == [0, 0]
    assert node.wait_idle(120, deliveries=False)
    assert wait_for(lambda: all(d["attempts"] >= 2 for d in _all(node)), 60)  # tried, and tried again
    pacs = receiver(ae_title="LATEPACS", port=port)
    assert node.wait_idle(120)
    assert len(pacs.uids()) == 2 and node.db.counts()["deliveries"] == {("sr", "sent"): 2}


def test_no_answer_leaves_a_report_unknown_and_it_is_not_sent_again(make_node, receiver, tmp_path):
    pacs = receiver(delay=4.0)  # keeps the report, answers too late
    node = make_node(destination=pacs.destination, network_timeout_s=1.0, delivery_backoff_s=0.05)
    assert c_store(films(1), node.scp.port) == [0]
    assert wait_for(lambda: node.db.counts()["deliveries"] == {("sr", "unknown"): 1}, 60)
    node.stop()
    pacs.delay = 0
    again = make_node(destination=pacs.destination)  # a restart does not resend it
    time.sleep(1.5)
    assert again.db.counts()["deliveries"] == {("sr", "unknown"): 1} and len(pacs.uids()) == 1
    again.stop()
    third = make_node(destination=pacs.destination, resend_unknown=True)  # the operator asks
    assert third.wait_idle(60)
    assert third.db.counts()["deliveries"] == {("sr", "sent"): 1}
    assert len(pacs.uids()) == 2 and len(set(pacs.uids())) == 1  # the same SR instance: one report in PACS


def _all(node):
    import sqlalchemy as sa

    from cxrad.serving.node.db import deliveries as table
    with node.db.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(table))]


def test_webhook_gets_each_result_once_after_a_refusal(make_node):
    posts, answers = [], [503]

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            code = answers.pop(0) if answers else 200
            if code == 200:
                posts.append((self.headers["Idempotency-Key"], json.loads(body)))
            self.send_response(code)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        node = make_node(webhook=f"http://127.0.0.1:{server.server_address[1]}/hook", delivery_backoff_s=0.05)
        sent = films(2)
        assert c_store(sent, node.scp.port) == [0, 0]
        assert node.wait_idle(120)
        assert sorted(p["sop_instance_uid"] for _, p in posts) == sorted(f.SOPInstanceUID for f in sent)
        assert all(key == p["id"] and p["event"] == "result" and "score" in p for key, p in posts)
        assert all("patient" not in json.dumps(p).lower() for _, p in posts)
        assert node.db.counts()["deliveries"] == {("webhook", "sent"): 2}
    finally:
        server.shutdown()


def test_reports_go_out_on_a_socket_that_sends_each_pdu_at_once(make_node, receiver, monkeypatch):
    """TCP_NODELAY on the node's own associations: without it, each report's last segment waited for the
    destination's delayed ACK (about 40 ms a store on Linux loopback)."""
    import socket

    import cxrad.serving.node.delivery as delivery
    seen, real = [], delivery.no_delay

    def recording(event):  # the node's handler, then what the socket says
        real(event)
        seen.append(event.assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    monkeypatch.setattr(delivery, "no_delay", recording)
    pacs = receiver()
    node = make_node(destination=pacs.destination)
    assert c_store(films(1), node.scp.port) == [0]
    assert node.wait_idle(120) and len(pacs.uids()) == 1
    assert seen and all(v == 1 for v in seen)
