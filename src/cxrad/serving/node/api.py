"""HTTP in and out (FastAPI; the OpenAPI page is at ``/docs``):

- ``POST /v1/images``: a PNG, JPEG or DICOM file (multipart form field ``file``) -> its id (202, or 200 when
  the film was scored before);
- ``GET /v1/results/{id}`` (202 while queued), ``GET /v1/results/{id}/heatmap.png``;
- ``GET /v1/worklist``: films by score, with filters (flagged, received since/until, source AE) and paging;
- ``POST /dicomweb/studies[/{study}]``: DICOMweb STOW-RS, ``multipart/related; type="application/dicom"``;
- ``GET /healthz``, ``GET /metrics`` (Prometheus text).

Every request passes ``Guard`` first: the bearer token (when the node has tokens; always off loopback), the body
cap (a declared or actual body over ``max_upload_bytes`` gets 413 before it is read further) and the
per-request time limit. Errors are one-line JSON (``{"detail": ...}``): no traceback or server path, ever.
"""
from __future__ import annotations

import asyncio
import json
import logging
from datetime import date

from fastapi import FastAPI, File, HTTPException, Path, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from python_multipart.multipart import MultipartParser, parse_options_header

from cxrad.errors import ImageReadError
from cxrad.serving.node.config import token_ok
from cxrad.serving.node.instances import SOP_CLASSES, film_id_for_bytes, film_id_for_uid, read_header, sniff
from cxrad.serving.node.spool import SpoolFull
from cxrad.version import __version__

log = logging.getLogger("cxrad.node")
OPEN_PATHS = {"/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json"}
FILM_ID = r"^[0-9a-f]{32}$"
DICOM_JSON = "application/dicom+json"
RETRY_AFTER_S = "30"


class Guard:
    """Pure ASGI middleware: bearer token, body cap, time limit, and a generic answer for anything unforeseen."""

    def __init__(self, app, token_hashes: frozenset, max_body: int, timeout_s: float):
        self.app, self.token_hashes, self.max_body, self.timeout_s = app, token_hashes, max_body, timeout_s

    async def _reply(self, send, status: int, detail: str, headers: list | None = None) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            *(headers or [])]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict((k.lower(), v) for k, v in scope.get("headers", []))
        if self.token_hashes and scope.get("path", "") not in OPEN_PATHS:
            auth = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token.strip() or not token_ok(token.strip(), self.token_hashes):
                return await self._reply(send, 401, "a valid bearer token is required",
                                         [(b"www-authenticate", b'Bearer realm="cxrad"')])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_body
            except ValueError:
                return await self._reply(send, 400, "invalid Content-Length")
            if too_big:
                return await self._reply(send, 413, f"request body over the limit ({self.max_body} bytes)")
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise HTTPException(413, f"request body over the limit ({self.max_body} bytes)")
            return message

        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            async with asyncio.timeout(self.timeout_s):
                await self.app(scope, limited_receive, tracking_send)
        except TimeoutError:
            if not started:
                await self._reply(send, 408, f"the request took longer than {self.timeout_s:g} s")
        except Exception:  # the app's own handler answered already; this is the last resort
            log.exception("request failed")
            if not started:
                await self._reply(send, 500, "internal error")


def _dicom_json_ref(sop_class: str | None, sop_uid: str | None, failure: int | None = None) -> dict:
    item = {}
    if sop_class:
        item["00081150"] = {"vr": "UI", "Value": [sop_class]}
    if sop_uid:
        item["00081155"] = {"vr": "UI", "Value": [sop_uid]}
    if failure is not None:
        item["00081197"] = {"vr": "US", "Value": [failure]}
    return item


async def _multipart_parts(request: Request, boundary: bytes) -> list[tuple[str, bytes]]:
    """The (content type, bytes) of each part of a multipart body, parsed as it streams in."""
    parts: list[tuple[str, bytes]] = []
    state = {"data": bytearray(), "headers": {}, "field": b"", "value": b""}

    def on_part_begin():
        state["data"], state["headers"] = bytearray(), {}

    def on_part_data(data, start, end):
        state["data"] += data[start:end]

    def on_header_field(data, start, end):
        state["field"] += data[start:end]

    def on_header_value(data, start, end):
        state["value"] += data[start:end]

    def on_header_end():
        state["headers"][state["field"].strip().lower()] = state["value"].strip()
        state["field"], state["value"] = b"", b""

    def on_part_end():
        ctype = state["headers"].get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        parts.append((ctype, bytes(state["data"])))

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_part_data": on_part_data,
                                        "on_part_end": on_part_end, "on_header_field": on_header_field,
                                        "on_header_value": on_header_value, "on_header_end": on_header_end})
    async for chunk in request.stream():
        parser.write(chunk)
    parser.finalize()
    return parts


def create_app(node) -> FastAPI:
    """The node's HTTP API over ``node`` (a ``service.Node``)."""
    config = node.config
    app = FastAPI(title="cxrad screening node", version=__version__, docs_url="/docs", redoc_url=None,
                  description="Anomaly screening of chest radiographs: send films, read results and the "
                  "worklist. Research use only, not for diagnostic use.")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        fields = sorted({".".join(str(p) for p in e.get("loc", ())[1:]) or "request" for e in exc.errors()})
        return JSONResponse({"detail": f"invalid {', '.join(fields)}"}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal(request, exc):  # never a traceback or a path in the answer
        log.error("request %s failed (%s)", request.url.path, type(exc).__name__)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    def receive(film_id: str, data: bytes, source: str, ext: str):
        try:
            return node.accept(film_id, data, source, ext)
        except SpoolFull:
            node.metrics.refused.labels("spool full").inc()
            raise HTTPException(503, "the node's spool is full; try again later",
                                headers={"Retry-After": RETRY_AFTER_S}) from None

    def dicom_film(data: bytes) -> tuple[str, object]:
        try:
            header = read_header(data)
        except ImageReadError as exc:
            raise HTTPException(400, f"not a readable DICOM file: {exc}") from None
        if header.sop_class_uid not in SOP_CLASSES:
            raise HTTPException(415, f"SOP class {header.sop_class_uid} is not one this node screens (CR, DX, "
                                "Secondary Capture)")
        return film_id_for_uid(header.sop_instance_uid), header

    @app.post("/v1/images", status_code=202, summary="Send a film (PNG, JPEG or DICOM) to be scored")
    async def post_image(file: UploadFile = File(..., description="the film: PNG, JPEG or DICOM Part 10")):
        data = await file.read()
        ext = sniff(data)
        if ext is None:
            raise HTTPException(415, "not a PNG, JPEG or DICOM file (a DICOM file needs its preamble and DICM)")
        if ext == "dcm":
            film_id, _ = await run_in_threadpool(dicom_film, data)
        else:
            film_id = film_id_for_bytes(data)
        status = await run_in_threadpool(receive, film_id, data, "http", ext)
        return JSONResponse({"id": film_id, "status": status, "result": f"/v1/results/{film_id}"},
                            status_code=200 if status == "scored" else 202)

    @app.get("/v1/results/{film_id}", summary="A film's result (202 while it waits to be scored)")
    def get_result(film_id: str = Path(pattern=FILM_ID)):
        result = node.db.result(film_id)
        if result is not None:
            return result
        if node.spool.holds(film_id):
            return JSONResponse({"id": film_id, "status": "queued"}, status_code=202)
        raise HTTPException(404, "no such film")

    @app.get("/v1/results/{film_id}/heatmap.png", summary="The film's anomaly heatmap over the model's input",
             response_class=Response)
    def get_heatmap(film_id: str = Path(pattern=FILM_ID)):
        png = node.db.picture(film_id)
        if png is None:
            raise HTTPException(404, "no heatmap for this film")
        return Response(png, media_type="image/png")

    @app.get("/v1/worklist", summary="Films by score, highest first")
    def worklist(flagged: bool | None = Query(None, description="only anomalous (true) or normal (false) films"),
                 since: date | None = Query(None, description="received on or after this day (UTC)"),
                 until: date | None = Query(None, description="received on or before this day (UTC)"),
                 source_ae: str | None = Query(None, max_length=16, description="sent by this calling AE title"),
                 limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=10**7)):
        total, items = node.db.worklist(flagged, since, until, source_ae, limit, offset)
        return {"total": total, "limit": limit, "offset": offset, "items": items}

    async def stow(request: Request, study_uid: str | None = None):
        mtype, params = parse_options_header(request.headers.get("content-type", ""))
        if mtype != b"multipart/related" or params.get(b"type", b"application/dicom").lower() != b"application/dicom":
            raise HTTPException(415, 'STOW-RS takes multipart/related; type="application/dicom"')
        if not params.get(b"boundary"):
            raise HTTPException(400, "the multipart body has no boundary")
        try:
            parts = await _multipart_parts(request, params[b"boundary"])
        except HTTPException:
            raise
        except Exception:
            raise HTTPException(400, "malformed multipart body") from None
        stored, failed, full = [], [], 0
        for ctype, data in parts:
            if ctype not in ("", "application/dicom") or sniff(data) != "dcm":
                failed.append(_dicom_json_ref(None, None, 0xC000))
                continue
            try:
                film_id, header = await run_in_threadpool(dicom_film, data)
            except HTTPException as exc:
                failed.append(_dicom_json_ref(None, None, 0x0122 if exc.status_code == 415 else 0xC000))
                continue
            ref = (header.sop_class_uid, header.sop_instance_uid)
            if study_uid is not None and header.study_instance_uid != study_uid:
                failed.append(_dicom_json_ref(*ref, 0xC409))
                continue
            try:
                await run_in_threadpool(node.accept, film_id, data, "stow", "dcm")
            except SpoolFull:
                node.metrics.refused.labels("spool full").inc()
                failed.append(_dicom_json_ref(*ref, 0xA700))
                full += 1
                continue
            stored.append({**_dicom_json_ref(*ref), "00081190": {"vr": "UR", "Value": [
                f"{request.base_url}v1/results/{film_id}"]}})
        body = {}
        if stored:
            body["00081199"] = {"vr": "SQ", "Value": stored}
        if failed:
            body["00081198"] = {"vr": "SQ", "Value": failed}
        if not stored and full and full == len(failed):
            return JSONResponse(body, status_code=503, media_type=DICOM_JSON, headers={"Retry-After": RETRY_AFTER_S})
        status = 200 if stored and not failed else 202 if stored else 409
        return JSONResponse(body, status_code=status, media_type=DICOM_JSON)

    @app.post("/dicomweb/studies", summary="DICOMweb STOW-RS: store instances (multipart/related)")
    async def stow_any(request: Request):
        return await stow(request)

    @app.post("/dicomweb/studies/{study_uid}", summary="DICOMweb STOW-RS into one study")
    async def stow_study(request: Request, study_uid: str = Path(pattern=r"^[0-9]+(\.[0-9]+)*$", max_length=64)):
        return await stow(request, study_uid)

    @app.get("/healthz", summary="Liveness")
    def healthz():
        return {"status": "ok", "version": __version__}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def metrics():
        from cxrad.serving.node.metrics import CONTENT_TYPE_LATEST
        return Response(node.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(Guard, token_hashes=config.token_hashes, max_body=config.max_upload_bytes,
                       timeout_s=config.request_timeout_s)
    return app
