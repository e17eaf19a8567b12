"""The screening node: receivers (DICOM SCP, HTTP), the spool, the scoring pipeline, the database and the
sender, put together. ``cxrad serve`` runs one; tests start one in their own process.

Nothing is lost, and nothing is done twice. The crash windows, in the order a film goes through them:

1. *during receipt* (before the spool rename): the film was not acknowledged; the sender still has it and
   retries (C-STORE) or gets an error (HTTP).
2. *acknowledged, not yet recorded*: the film is in the spool; at the next start the spool is replayed and the
   film is scored (scores do not depend on batching, so it is the same score).
3. *result objects written to the outbox, database not committed*: replayed as in 2; the objects are rebuilt
   with the same UIDs and overwrite the old files; orphans are swept at start.
4. *committed, spool file not yet removed*: at replay the film is found recorded and its file is dropped;
   the unique SOP Instance UID (and id) would refuse a second row anyway.
5. *a delivery marked ``sending``, the send under way or done, the outcome not yet committed*: at the next
   start it becomes ``unknown`` and is not sent again (see ``delivery``): a report may be missing, never doubled.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

from cxrad.errors import UserError
from cxrad.serving.node.config import NodeConfig, node_secret, patient_key
from cxrad.serving.node.db import Database, utcnow
from cxrad.serving.node.spool import Outbox, Spool

log = logging.getLogger("cxrad.node")


def _lock_state(state: Path) -> int:
    """An exclusive lock on the state folder for the node's life: two nodes on one spool would score and send
    the same films."""
    import fcntl
    fd = os.open(state, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f"another cxrad serve is using {state}") from None
    return fd


def model_identity(bundle: Path) -> tuple[str, str]:
    """(name, weights SHA-256) of a model bundle, as recorded with every result."""
    from cxrad.bundles import read_meta
    meta = read_meta(bundle)
    return bundle.name, str(meta["weights"]["sha256"])


class Node:
    """One screening node over ``config``, scoring with ``model`` (a bundle folder, a shipped model's name, or
    None for the shipped default) at its stored threshold, or at ``threshold_value`` or ``target_specificity``."""

    def __init__(self, config: NodeConfig, model=None, device: str = "cpu", threshold_value: float | None = None,
                 target_specificity: float | None = None):
        from cxrad.bundles import resolve
        from cxrad.detectors import load_detector
        from cxrad.detectors.thresholds import operating_point
        from cxrad.serving.node.delivery import Sender
        from cxrad.serving.node.metrics import Metrics
        from cxrad.serving.node.results import ReportMaker
        from cxrad.serving.node.worker import Pipeline
        from cxrad.serving.streaming import available_cpus

        self.config = config.check()
        for noisy in ("pynetdicom", "highdicom"):  # their debug and info output names patients and UIDs
            logging.getLogger(noisy).setLevel(logging.WARNING)
        state = Path(config.state_dir)
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = _lock_state(state)
        try:
            self.secret = node_secret(state)
            bundle = resolve(model)
            self.model_name, self.model_sha256 = model_identity(bundle)
            self.det = load_detector(bundle, device)
            if threshold_value is not None:
                self.det.set_operating_point(operating_point(self.det, "fixed", value=threshold_value))
            elif target_specificity is not None:
                self.det.set_operating_point(operating_point(self.det, "specificity", target=target_specificity))
            self.db = Database(config.database_url)
            self.spool = Spool(state / "spool", config.spool_max_bytes, config.spool_min_free_bytes)
            self.outbox = Outbox(state / "spool")
        except BaseException:
            os.close(self._lock_fd)
            raise
        self.reports = ReportMaker(self.model_name, self.model_sha256, self.det.components, self.det.threshold_)
        self._warm_up()
        self.metrics = Metrics(lambda: self.spool.depth, self.db.pending_deliveries,
                               lambda: self.pipeline.current_threads)
        self.decode_workers = config.decode_workers or 1
        self.model_threads = min(config.model_threads, available_cpus()) if config.model_threads else None
        self.pipeline = Pipeline(self.det, self._record, self.db.known, self.spool.remove, config.batch_size,
                                 config.max_wait_ms / 1000, self.decode_workers, self.model_threads)
        self.sender = Sender(self.db, self.outbox, config.destination, config.ae_title, config.webhook,
                             config.delivery_attempts, config.delivery_backoff_s, config.network_timeout_s,
                             self.metrics)
        self.scp = None
        if config.dicom_port:
            from cxrad.serving.node.scp import StorageSCP
            self.scp = StorageSCP(config, lambda film_id, data, ae: self.receive(film_id, data, "dicom", "dcm", ae),
                                  refused=lambda reason: self.metrics.refused.labels(reason).inc())
        self.app = None
        if config.http_port:
            from cxrad.serving.node.api import create_app
            self.app = create_app(self)
        self._started = False

    def _warm_up(self) -> None:
        """Pay the one-off costs before the first film: the model's first pass and the report templates."""
        import numpy as np

        from cxrad.detectors.chunks import CHUNK
        from cxrad.serving.node.instances import SOP_CLASSES
        from cxrad.serving.node.results import VERDICT_MEANINGS

        side = int(self.det.image_size)
        self.det.score_arrays(np.zeros((CHUNK, side, side), np.uint8))
        if self.config.destination is not None:
            for sop_class in SOP_CLASSES:
                for verdict in VERDICT_MEANINGS:
                    self.reports.template(sop_class, verdict)

    # ------------------------------------------------------------------------------------------ life
    def start(self) -> "Node":
        recovered = self.db.recover(self.config.resend_unknown)
        if recovered["unknown"]:
            log.warning("%d delivery(ies) were being sent when the node stopped: marked unknown, not resent "
                        "(--resend-unknown resends them)", recovered["unknown"])
        needed = self.db.outbox_names()
        for name in self.outbox.names() - needed:  # written before a crash, never committed: rebuilt on replay
            self.outbox.remove(name)
        self.pipeline.start()
        self.sender.start()
        replay = self.spool.entries()
        for entry in replay:
            self.pipeline.submit(entry)
        if replay:
            log.info("replaying %d spooled film(s)", len(replay))
        if self.scp is not None:
            self.scp.start()
        self.sender.wake()
        self._started = True
        log.info("node ready: model %s, %d decoding thread(s), %s model thread(s), batch %d", self.model_name,
                 self.decode_workers, self.pipeline.model_threads, self.config.batch_size)
        return self

    def stop(self) -> None:
        if self.scp is not None:
            self.scp.stop()
        if self._started:
            self.pipeline.stop()
            self.sender.stop()
        self.db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def wait_idle(self, timeout: float = 60.0, deliveries: bool = True) -> bool:
        """For tests and benchmarks: wait until the spool is empty (and, with ``deliveries``, nothing waits to
        be sent); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.spool.depth == 0 and self.pipeline.in_flight == 0 and (
                    not deliveries or self.db.pending_deliveries() == 0):
                return True
            time.sleep(0.05)
        return False

    # --------------------------------------------------------------------------------------- receiving
    def receive(self, film_id: str, data: bytes, source: str, ext: str, calling_ae: str | None = None):
        """Spool a film durably (raising SpoolFull when it cannot) and queue it for scoring."""
        entry = self.spool.put(film_id, data, source, ext, calling_ae)
        self.metrics.received.labels(source).inc()
        self.pipeline.submit(entry)
        return entry

    def accept(self, film_id: str, data: bytes, source: str, ext: str) -> str:
        """An HTTP film: 'scored' if its result is already recorded, else spooled and 'queued'."""
        if self.db.known([film_id]):
            return "scored"
        self.receive(film_id, data, source, ext)
        return "queued"

    # --------------------------------------------------------------------------------------- recording
    def _record(self, batch) -> None:
        """Results of a scored batch: report objects into the outbox, then one database transaction, then the
        spool files go (see the crash windows above)."""
        from cxrad.serving.node.results import heatmap_overlay, png_bytes

        config, now, t0 = self.config, utcnow(), time.perf_counter()
        table = batch.table.drop_duplicates("path").set_index("path")
        recorded = self.db.known([e.id for e in batch.entries])  # a race with another receipt of the same film
        fresh = [e for e in batch.entries if e.id not in recorded]
        rows, deliveries, pictures, objects = [], [], [], {}
        for e in fresh:
            r = table.loc[str(e.path)]
            header = batch.headers.get(e.id)
            error = str(r.get("error") or "")
            if isinstance(header, str):  # the header could not be read: the film is known only by its id
                error = error or header
                header = None
            score = r.get("score")
            verdict = "error" if error else ("anomalous" if bool(r.get("anomalous")) else "normal")
            values = {} if error else {"score": float(score), "percentile": float(r.get("percentile")),
                                       **{c: float(r.get(c)) for c in self.det.components}}
            rows.append({
                "id": e.id, "sop_instance_uid": header.sop_instance_uid if header else None,
                "sop_class_uid": header.sop_class_uid if header else None,
                "study_instance_uid": header.study_instance_uid if header else None,
                "series_instance_uid": header.series_instance_uid if header else None,
                "accession_number": header.accession_number if header else None,
                "patient_key": patient_key(self.secret, header.patient_id) if header else None,
                "modality": header.modality if header else None, "source": e.source, "calling_ae": e.calling_ae,
                "score": values.get("score"), "percentile": values.get("percentile"),
                "components": {c: values[c] for c in self.det.components} if values else {},
                "verdict": verdict, "threshold": float(self.det.threshold_), "error": error or None,
                "model_name": self.model_name, "model_sha256": self.model_sha256,
                "received_at": e.received_at, "scored_at": now})
            overlay = None
            if e.id in batch.maps and not error:
                overlay = heatmap_overlay(batch.inputs[e.id], batch.maps[e.id])
                pictures.append({"film_id": e.id, "kind": "heatmap", "png": png_bytes(overlay)})
            if header is not None and config.destination is not None:
                uid, objects[f"{e.id}.sr.dcm"] = self.reports.structured_report(header.dataset, verdict, values,
                                                                                error or None)
                deliveries.append({"film_id": e.id, "kind": "sr", "object_uid": uid})
                if config.send_heatmap and overlay is not None:
                    uid, objects[f"{e.id}.sc.dcm"] = self.reports.secondary_capture(header.dataset, overlay)
                    deliveries.append({"film_id": e.id, "kind": "sc", "object_uid": uid})
            if config.webhook:
                deliveries.append({"film_id": e.id, "kind": "webhook", "object_uid": None})
        self.outbox.put_many(objects)  # durable before the database says they are to be sent
        inserted = self.db.record(rows, deliveries, pictures)
        for e in batch.entries + batch.duplicates:
            self.spool.remove(e)
        done = time.time_ns()
        self.metrics.batch.observe(len(batch.entries))
        received = {e.id: e.received_ns for e in fresh}
        for row in rows:
            if row["id"] not in inserted:
                continue
            self.metrics.films.labels(row["verdict"]).inc()
            if row["error"]:
                self.metrics.error(row["error"])
            self.metrics.latency.observe(max(0, done - received[row["id"]]) / 1e9)
        log.info("recorded %d film(s) (decoding %.0f ms, model %.0f ms, recording %.0f ms)",
                 len(inserted), 1000 * batch.decode_s, 1000 * batch.model_s, 1000 * (time.perf_counter() - t0))
        if deliveries:
            self.sender.wake()

    # ---------------------------------------------------------------------------------------------- run
    def http_server(self):
        """The uvicorn server for the API (not started)."""
        import uvicorn
        c = self.config
        cfg = uvicorn.Config(self.app, host=c.host, port=c.http_port, log_level="warning", access_log=False,
                             server_header=False, timeout_keep_alive=5, limit_concurrency=128,
                             h11_max_incomplete_event_size=64 * 1024,
                             ssl_certfile=str(c.tls_cert) if c.tls_cert else None,
                             ssl_keyfile=str(c.tls_key) if c.tls_key else None)
        return uvicorn.Server(cfg)

    def serve_forever(self) -> None:
        """Start, serve until SIGINT or SIGTERM, stop."""
        self.start()
        try:
            if self.app is not None:
                self.http_server().run()  # handles SIGINT and SIGTERM itself, then returns
            else:
                stop = threading.Event()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, lambda *_: stop.set())
                stop.wait()
        finally:
            self.stop()

