"""``cxrad serve``: the screening node (DICOM and HTTP in, scores into a database, reports back to PACS)."""
from __future__ import annotations

import sys

from cxrad.errors import UserError
from cxrad.frontends.cli.common import EXIT_OK, add_operating_point_flags

MB = 1024 * 1024


def add_parser(sub, argv=None) -> None:
    p = sub.add_parser("serve", help="run a screening node: films in over DICOM and HTTP, results back to PACS",
                       description="Receive chest radiographs from a PACS or modality (DICOM C-STORE, CR/DX/"
                       "Secondary Capture) and over HTTP (POST /v1/images, DICOMweb STOW-RS), score each once with "
                       "one model, keep the results in a database (SQLite in STATE, or --database URL) and send a "
                       "DICOM Structured Report (and with --send-heatmap a Secondary Capture) to --destination. "
                       "Listens on 127.0.0.1 unless --host says otherwise; then HTTP needs --tokens and DICOM "
                       "--allow-aet. A research tool, not a diagnostic device (docs/service.md).")
    p.set_defaults(_subparser=p, func=run)
    p.add_argument("--config", help="YAML file of settings (keys = long flag names); flags override it")
    p.add_argument("--state", help="the node's folder: spool, outbox, SQLite database, secret key (required)")
    p.add_argument("--model", default=None, help="model bundle folder or shipped model name (default: the "
                   "shipped default model)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    add_operating_point_flags(p)
    net = p.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    net.add_argument("--http-port", type=int, default=8080, help="HTTP port (8080; 0: no HTTP)")
    net.add_argument("--dicom-port", type=int, default=11112, help="DICOM port (11112; 0: no DICOM)")
    net.add_argument("--ae-title", default="CXRAD", help="the node's AE title (CXRAD)")
    net.add_argument("--allow-aet", action="append", default=None, metavar="AET",
                     help="calling AE title allowed to send (repeat; default on loopback: any)")
    net.add_argument("--destination", metavar="AET@HOST:PORT", help="where reports go by C-STORE "
                     "(e.g. ORTHANC@127.0.0.1:4242); none: results stay in the database and the API")
    net.add_argument("--send-heatmap", action="store_true", help="also send a Secondary Capture of the heatmap")
    net.add_argument("--webhook", metavar="URL", help="POST each result as JSON to this URL")
    sec = p.add_argument_group("security")
    sec.add_argument("--tokens", metavar="FILE", help="bearer tokens for HTTP (hashes, one sha256:HEX a line)")
    sec.add_argument("--new-token", metavar="FILE", help="make a token, add its hash to FILE, print it, exit")
    sec.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate (and --tls-key)")
    sec.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    sec.add_argument("--max-upload-mb", type=float, default=256, help="largest request body, in MB (256, the "
                     "reader's limit)")
    sec.add_argument("--request-timeout", type=float, default=60.0, help="seconds a request may take (60)")
    run_ = p.add_argument_group("scoring and delivery")
    run_.add_argument("--database", metavar="URL", help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db "
                      "(default: sqlite in STATE)")
    run_.add_argument("--batch-size", type=int, default=16, help="largest model batch (16)")
    run_.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits to fill (5 ms)")
    run_.add_argument("--workers", type=int, default=None, help="decoding threads (1)")
    run_.add_argument("--threads", type=int, default=None, help="the model's threads: it scores that many batches "
                      "at once, one thread each (default: one per core)")
    run_.add_argument("--spool-max-mb", type=float, default=4096, help="spool size cap in MB; over it, new "
                      "films are refused (C-STORE 0xA700, HTTP 503) until it drains (4096)")
    run_.add_argument("--delivery-attempts", type=int, default=6, help="tries per report before giving up (6)")
    run_.add_argument("--resend-unknown", action="store_true", help="resend reports whose delivery was cut off "
                      "by a crash or a timeout (they may arrive twice)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="how much the node logs to stderr (info); no patient data at any level")


def config_from(args):
    from pathlib import Path

    from cxrad.serving.node.config import Destination, NodeConfig
    if not args.state:
        raise UserError("--state is required: the node's folder (spool, database, secret)")
    for flag in ("batch_size", "workers", "threads", "delivery_attempts"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.max_upload_mb <= 0 or args.spool_max_mb <= 0 or args.request_timeout <= 0:
        raise UserError("--max-upload-mb, --spool-max-mb and --request-timeout must be positive")
    return NodeConfig(
        state_dir=Path(args.state), host=args.host, http_port=args.http_port, dicom_port=args.dicom_port,
        ae_title=args.ae_title, allowed_aets=tuple(args.allow_aet or ()),
        destination=Destination.parse(args.destination) if args.destination else None,
        send_heatmap=args.send_heatmap, webhook=args.webhook, database=args.database,
        tokens_file=Path(args.tokens) if args.tokens else None,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None, tls_key=Path(args.tls_key) if args.tls_key else None,
        max_upload_bytes=int(args.max_upload_mb * MB), request_timeout_s=args.request_timeout,
        spool_max_bytes=int(args.spool_max_mb * MB), batch_size=args.batch_size, max_wait_ms=args.max_wait_ms,
        decode_workers=args.workers, model_threads=args.threads, delivery_attempts=args.delivery_attempts,
        resend_unknown=args.resend_unknown).check()


def run(args) -> int:
    import importlib.util
    import logging

    if args.new_token:
        from cxrad.serving.node.config import new_token
        token = new_token(args.new_token)
        print(token)
        print(f"added its hash to {args.new_token}; give the token to the client (it is not stored)",
              file=sys.stderr)
        return EXIT_OK
    missing = [m for m in ("pynetdicom", "highdicom", "fastapi", "uvicorn", "sqlalchemy", "prometheus_client")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"cxrad serve needs {', '.join(missing)}: pip install 'cxrad[serve]'")
    config = config_from(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cxrad.serving.node.service import Node

    node = Node(config, model=args.model, device=args.device, threshold_value=args.threshold_value,
                target_specificity=args.target_specificity)
    where = []
    if config.http_port:
        where.append(f"HTTP{'S' if config.tls_cert else ''} {config.host}:{config.http_port}")
    if config.dicom_port:
        where.append(f"DICOM {config.ae_title}@{config.host}:{config.dicom_port}")
    print(f"cxrad serve: {', '.join(where)}; results in {config.database_url.split('://')[0]}"
          f"{' -> ' + str(config.destination) if config.destination else ''} (Ctrl-C stops it)", file=sys.stderr)
    node.serve_forever()
    return EXIT_OK

