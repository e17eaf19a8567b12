"""DICOM in: a Storage SCP (pynetdicom) for CR, DX and Secondary Capture films, in every transfer syntax the
reader decodes, with C-ECHO.

An association must call the node's AE title and, when an allow-list is set, come from one of its calling AE
titles (others are rejected at association). A C-STORE is answered only after the film is in the spool
(fsync, then rename): 0x0000 then. A full spool, an oversized dataset or a failed write answers 0xA700 (out of
resources) with nothing kept, so the sender keeps the film and retries; nothing acknowledged is ever lost.
"""
from __future__ import annotations

import logging

from cxrad.serving.node.instances import SOP_CLASSES, decodable_transfer_syntaxes, film_id_for_uid, valid_uid
from cxrad.serving.node.spool import SpoolFull

log = logging.getLogger("cxrad.node")
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000


class StorageSCP:
    """``receive(film_id, data, calling_ae)`` spools a film (raising SpoolFull when it cannot)."""

    def __init__(self, config, receive, refused=None):
        self.config, self.receive, self.refused = config, receive, refused
        self.server = None
        self.transfer_syntaxes = decodable_transfer_syntaxes()

    def start(self) -> None:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import Verification

        logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its debug output dumps datasets
        c = self.config
        ae = AE(ae_title=c.ae_title)
        ae.require_called_aet = True
        if c.allowed_aets:
            ae.require_calling_aet = list(c.allowed_aets)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = c.network_timeout_s
        ae.maximum_associations = c.max_associations
        for sop_class in SOP_CLASSES:
            ae.add_supported_context(sop_class, self.transfer_syntaxes)
        ae.add_supported_context(Verification)
        self.server = ae.start_server((c.host, c.dicom_port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        log.info("DICOM Storage SCP %s on %s:%d (%d transfer syntaxes)", c.ae_title, c.host, self.port,
                 len(self.transfer_syntaxes))

    @property
    def port(self) -> int:
        return self.server.server_address[1] if self.server is not None else self.config.dicom_port

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def _refuse(self, reason: str, status: int) -> int:
        if self.refused is not None:
            self.refused(reason)
        return status

    def _on_store(self, event) -> int:
        """Runs in the association's thread; must not raise."""
        try:
            uid = str(event.request.AffectedSOPInstanceUID or "")
            if not valid_uid(uid):
                return self._refuse("invalid SOP Instance UID", CANNOT_UNDERSTAND)
            data = event.encoded_dataset()  # preamble, file meta and the dataset as sent: nothing is decoded
            if len(data) > self.config.max_upload_bytes:
                return self._refuse("too large", OUT_OF_RESOURCES)
            calling = event.assoc.requestor.ae_title
            self.receive(film_id_for_uid(uid), data, calling.strip() if isinstance(calling, str) else None)
        except SpoolFull:
            return self._refuse("spool full", OUT_OF_RESOURCES)
        except Exception as exc:
            log.error("C-STORE could not be spooled (%s)", type(exc).__name__)
            return self._refuse("spool write failed", OUT_OF_RESOURCES)
        return SUCCESS
