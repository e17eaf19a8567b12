"""Nothing lost, nothing twice. `cxrad serve` killed with SIGKILL under load and started again: every
acknowledged film is scored exactly once (the spool is replayed; results are unique by SOP Instance UID) and no
report reaches the PACS twice. The crash windows one by one, in this process: films spooled but not scored, a
result committed whose spool file was not yet removed, result objects written but never committed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from dicom_films import c_store, film_dataset, free_port, sample_images


def test_spooled_films_are_scored_after_a_crash(make_node, tmp_path):
    node = make_node(start=False)
    node.pipeline._gather = lambda: threading.Event().wait()  # the node dies before scoring anything
    node.start()
    films = [film_dataset(p) for p in sample_images()[:4]]
    assert c_store(films, node.scp.port) == [0] * 4
    node.scp.stop()
    os.close(node._lock_fd)  # what a kill leaves: the spool and the database, nothing else
    node._lock_fd, node._started = None, False
    again = make_node()
    assert again.wait_idle(120)
    assert {r["sop_instance_uid"] for r in again.db.worklist()[1]} == {f.SOPInstanceUID for f in films}


def test_a_committed_film_whose_spool_file_survived_is_not_recorded_twice(make_node, receiver, tmp_path):
    pacs = receiver()
    node = make_node(destination=pacs.destination)
    film = film_dataset(sample_images(1)[0])
    assert c_store([film], node.scp.port) == [0]
    assert node.wait_idle(120)
    kept = tmp_path / "kept.dcm"
    film.save_as(kept, enforce_file_format=True)
    node.stop()
    from cxrad.serving.node.instances import film_id_for_uid
    from cxrad.serving.node.spool import Spool
    Spool(tmp_path / "state" / "spool", 10**9).put(film_id_for_uid(film.SOPInstanceUID), kept.read_bytes(),
                                                    "dicom", "dcm", "TESTSCU")  # as if the removal was lost
    (tmp_path / "state" / "spool" / "outbox" / "0123456789abcdef0123456789abcdef.sr.dcm").write_bytes(b"orphan")
    again = make_node(destination=pacs.destination)
    assert again.wait_idle(120)
    assert again.db.worklist()[0] == 1 and again.spool.depth == 0
    assert len(pacs.uids()) == 1 and not list(again.outbox.folder.iterdir())


@pytest.mark.slow
def test_sigkill_under_load_then_restart_scores_every_acknowledged_film_once(node_model, tmp_path, receiver):
    import cxrad
    pacs = receiver()
    state, dicom_port, http_port = tmp_path / "state", free_port(), free_port()
    cmd = [sys.executable, "-m", "cxrad", "serve", "--state", str(state), "--model", str(node_model[1]),
           "--dicom-port", str(dicom_port), "--http-port", str(http_port), "--destination", pacs.destination,
           "--max-wait-ms", "20", "--batch-size", "16", "--log-level", "warning"]
    env = dict(os.environ, PYTHONPATH=str(Path(cxrad.__file__).parents[1]), OMP_NUM_THREADS="1")

    def start():
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "node.log", "ab"))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=2).status_code == 200:
                    return proc
            except httpx.HTTPError:
                time.sleep(0.2)
        proc.kill()
        raise AssertionError((tmp_path / "node.log").read_text()[-2000:])

    images = sample_images()
    films = [[film_dataset(images[(t * 40 + i) % len(images)], patient_id=f"P{t}-{i}") for i in range(40)]
             for t in range(3)]
    acked: dict[str, int] = {}
    lock = threading.Lock()

    def send(batch):
        from pynetdicom import AE
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(batch[0].SOPClassUID, [str(batch[0].file_meta.TransferSyntaxUID)])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        assoc = ae.associate("127.0.0.1", dicom_port, ae_title="CXRAD")
        for ds in batch:
            if not assoc.is_established:
                return
            status = assoc.send_c_store(ds)
            if status and status.get("Status") == 0:
                with lock:
                    acked[ds.SOPInstanceUID] = 1
            time.sleep(0.05)  # a modality's pace: receiving, scoring and sending overlap
        assoc.release()

    proc = start()
    senders = [threading.Thread(target=send, args=(b,)) for b in films]
    for t in senders:
        t.start()
    deadline = time.monotonic() + 120
    while len(pacs.uids()) < 4 and time.monotonic() < deadline:  # under load: receiving, scoring, sending
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    for t in senders:
        t.join(60)
    at_kill = len(acked)
    assert 4 <= len(pacs.uids()) and at_kill < 120, "the kill should land mid-run"

    proc = start()
    try:
        engine = sa.create_engine(f"sqlite:///{state / 'node.db'}")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                recorded = set(conn.exec_driver_sql("select sop_instance_uid from films").scalars())
                busy = conn.exec_driver_sql("select count(*) from deliveries where state in ('pending', 'sending')"
                                            ).scalar()
            if set(acked) <= recorded and not busy and not list((state / "spool" / "queue").iterdir()):
                break
            time.sleep(0.5)
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("select sop_instance_uid from films").scalars().all()
            states = dict(conn.exec_driver_sql("select state, count(*) from deliveries group by state").all())
            sr_uids = set(conn.exec_driver_sql("select object_uid from deliveries").scalars())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert set(acked) <= set(rows), f"{len(set(acked) - set(rows))} acknowledged film(s) lost"
    assert len(rows) == len(set(rows))  # each film once (more than the acknowledged: some were spooled when
    assert len(rows) <= 120  # the kill cut the answer off; the sender would have sent them again)
    received = pacs.uids()
    assert len(received) == len(set(received)), "a report reached the PACS twice"
    assert set(received) <= sr_uids
    assert states.get("sent", 0) + states.get("unknown", 0) == len(rows) and states.get("unknown", 0) <= 16
    assert len(received) >= states["sent"]
