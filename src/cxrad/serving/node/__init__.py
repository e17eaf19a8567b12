"""``cxrad serve``: a screening node that receives films from PACS over DICOM (C-STORE) and HTTP (REST,
DICOMweb STOW-RS), scores them with one model loaded once, records the results in a database and sends a DICOM
Structured Report (and optionally a heatmap Secondary Capture) back. See docs/service.md.

config (settings, tokens, the patient-hash secret) · spool (durable queue) · db (SQLAlchemy, migrations) ·
instances (what is accepted, headers, ids) · scp (pynetdicom) · api (FastAPI) · worker (dynamic batching) ·
results (highdicom SR and SC, heatmaps) · delivery (C-STORE and webhook, retries, never twice) · metrics
(Prometheus) · service (the node).
"""
