"""Sending results: Structured Reports and Secondary Captures by C-STORE to the configured destination, and
the optional JSON webhook, each with retries and backoff, and never twice.

Every delivery is claimed (``sending``, committed) before it goes out. Then:

- the peer stored it (C-STORE success or warning; HTTP 2xx) -> ``sent``;
- it certainly did not arrive (no association, association rejected, the association was gone before this
  object's request; a C-STORE "out of resources" 0xA7xx status; connection refused; HTTP 429/5xx) ->
  ``pending`` again, due after ``backoff * 2**(attempt-1)`` seconds (at most 5 minutes), until ``attempts``
  are spent -> ``failed``;
- the peer refused it for good (another failure status; HTTP 4xx) -> ``failed``;
- the request went out and no answer came (timeout, abort mid-request) -> ``unknown``: it may have arrived, so
  it is not sent again unless an operator asks (``cxrad serve --resend-unknown``).

A report rebuilt or resent keeps its SOP Instance UID, so even a resend after ``unknown`` is the same instance to
the PACS, never a second report.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import urllib.error
import urllib.request

from cxrad.version import __version__

log = logging.getLogger("cxrad.node")
MAX_BACKOFF_S = 300.0
STORED = {0x0000, 0xB000, 0xB006, 0xB007}  # success, and the warnings under which the object was stored


def no_delay(event) -> None:
    """An association's handler (EVT_CONN_OPEN) that sends each PDU at once. pynetdicom leaves Nagle's algorithm
    on, so a C-STORE's last segment waited for the peer's delayed ACK (about 40 ms on Linux): 58 ms a report on
    loopback instead of 14, with pynetdicom's threads polling meanwhile (benchmarks/node_floor.py)."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Sender:
    """A thread that sends due deliveries; ``wake()`` after recording new ones."""

    def __init__(self, db, outbox, destination=None, calling_ae: str = "CXRAD", webhook: str | None = None,
                 attempts: int = 6, backoff_s: float = 2.0, network_timeout_s: float = 30.0, metrics=None):
        self.db, self.outbox, self.destination = db, outbox, destination
        self.calling_ae, self.webhook = calling_ae, webhook
        self.attempts, self.backoff_s, self.timeout = attempts, backoff_s, network_timeout_s
        self.metrics = metrics
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cxrad-send", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                while not self._stop.is_set() and self.send_due():
                    pass
            except Exception:  # a database hiccup: the deliveries stay where they are and are tried again
                log.exception("sending results failed; retrying")
                self._stop.wait(2.0)

    def send_due(self) -> int:
        """Send what is due now; returns how many deliveries were claimed."""
        n = 0
        if self.destination is not None:
            claimed = self.db.claim(("sr", "sc"))
            n += len(claimed)
            if claimed:
                self._store(claimed)
        if self.webhook:
            claimed = self.db.claim(("webhook",))
            n += len(claimed)
            for d in claimed:
                self._post(d)
        return n

    # ------------------------------------------------------------------------------------------ outcomes
    def _finish(self, d: dict, state: str, error: str | None = None, retry_in_s: float = 0.0) -> None:
        self.db.finish(d, state, error, retry_in_s)
        if self.metrics is not None:
            self.metrics.delivered(d["kind"], state)
        if state == "sent" and d["kind"] in ("sr", "sc"):
            self.outbox.remove(f"{d['film_id']}.{d['kind']}.dcm")
        if state in ("failed", "unknown"):
            log.warning("delivery %s of film %s: %s (%s)", d["kind"], d["film_id"], state, error)

    def _retry(self, d: dict, reason: str) -> None:
        if d["attempts"] >= self.attempts:
            self._finish(d, "failed", f"{reason} (gave up after {d['attempts']} attempts)")
        else:
            self._finish(d, "pending", reason, min(MAX_BACKOFF_S, self.backoff_s * 2 ** (d["attempts"] - 1)))

    # ----------------------------------------------------------------------------------------- C-STORE
    def _store(self, claimed: list[dict]) -> None:
        from pydicom import dcmread
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE, _config, evt
        from pynetdicom.sop_class import ComprehensiveSRStorage, SecondaryCaptureImageStorage

        _config.STORE_SEND_CHUNKED_DATASET = True  # only changes how files given by path are sent

        dest = self.destination
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.connection_timeout = self.timeout
        for sop_class in (ComprehensiveSRStorage, SecondaryCaptureImageStorage):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        try:
            assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title,
                                 evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)])
        except Exception as exc:
            assoc = None
            reason = f"cannot reach {dest} ({type(exc).__name__})"
        else:
            reason = f"{dest} did not accept the association" + (" (rejected)" if assoc.is_rejected else "")
        if assoc is None or not assoc.is_established:
            for d in claimed:
                self._retry(d, reason)
            return
        # the objects are written in Explicit VR Little Endian: where the peer takes that, the file goes as it is
        # (pynetdicom streams it without decoding and encoding it again); otherwise it is converted
        as_written = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts
                      if str(cx.transfer_syntax[0]) == ExplicitVRLittleEndian}
        sop_classes = {"sr": ComprehensiveSRStorage, "sc": SecondaryCaptureImageStorage}
        try:
            for d in claimed:
                path = self.outbox.path(f"{d['film_id']}.{d['kind']}.dcm")
                try:
                    if str(sop_classes[d["kind"]]) in as_written and path.is_file():
                        item = path
                    else:
                        item = dcmread(path)
                except Exception as exc:
                    self._finish(d, "failed", f"the result object is missing or unreadable ({type(exc).__name__})")
                    continue
                if not assoc.is_established:  # the peer went away before this request: it was not sent
                    self._retry(d, f"{dest} closed the association")
                    continue
                try:
                    status = assoc.send_c_store(item)
                except ValueError as exc:  # no accepted presentation context for it: nothing was sent
                    self._finish(d, "failed", f"{dest} accepts no {d['kind'].upper()} ({exc})")
                    continue
                except Exception as exc:
                    self._finish(d, "unknown", f"sending to {dest} broke off ({type(exc).__name__})")
                    continue
                code = getattr(status, "Status", None) if status else None
                if code is None:
                    self._finish(d, "unknown", f"no answer from {dest}")
                elif code in STORED:
                    self._finish(d, "sent")
                elif code & 0xFF00 == 0xA700:
                    self._retry(d, f"{dest} is out of resources (0x{code:04X})")
                else:
                    self._finish(d, "failed", f"{dest} refused it (status 0x{code:04X})")
        finally:
            if assoc.is_established:
                assoc.release()

    # ----------------------------------------------------------------------------------------- webhook
    def _post(self, d: dict) -> None:
        result = self.db.result(d["film_id"])
        if result is None:
            self._finish(d, "failed", "the film's result is missing")
            return
        result.pop("deliveries", None)
        body = json.dumps({"event": "result", **result}).encode("utf-8")
        request = urllib.request.Request(self.webhook, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": f"cxrad/{__version__}",
            "Idempotency-Key": d["film_id"]})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                code = response.status
        except urllib.error.HTTPError as exc:
            code = exc.code
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (ConnectionRefusedError, socket.gaierror)):
                self._retry(d, f"webhook unreachable ({type(exc.reason).__name__})")
            else:
                self._finish(d, "unknown", f"webhook request broke off ({type(exc.reason).__name__})")
            return
        except (TimeoutError, OSError) as exc:
            self._finish(d, "unknown", f"webhook request broke off ({type(exc).__name__})")
            return
        if 200 <= code < 300:
            self._finish(d, "sent")
        elif code == 429 or code >= 500:
            self._retry(d, f"webhook answered HTTP {code}")
        else:
            self._finish(d, "failed", f"webhook answered HTTP {code}")
