"""``cxrad app``: the screening dashboard on localhost."""
from __future__ import annotations

import argparse
import importlib.util

from cxrad.frontends.app.launch import DEFAULT_MAX_UPLOAD_MB
from cxrad.errors import UserError


def add_parser(sub, argv=None) -> None:
    p = sub.add_parser("app", help="start the screening dashboard (Streamlit) on localhost",
                       description="Start the screening dashboard on http://127.0.0.1:PORT: upload PNG, JPEG, "
                       "TIFF, BMP or DICOM chest X-rays and get a verdict, score, percentile among normal images, "
                       "anomaly heatmap and reconstruction; with --node-state or --node-db, a Worklist page of a "
                       "screening node's films by score. A research tool, not a diagnostic device.")
    p.set_defaults(_subparser=p, func=run)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help="model bundle folder or shipped model name preselected in the "
                   "page (default: the shipped default model)")
    p.add_argument("--port", type=int, default=8501, help="port on 127.0.0.1 (default 8501)")
    p.add_argument("--max-upload-mb", type=int, default=DEFAULT_MAX_UPLOAD_MB,
                   help=f"largest file accepted, in MB (default {DEFAULT_MAX_UPLOAD_MB})")
    node = p.add_mutually_exclusive_group()
    node.add_argument("--node-state", metavar="DIR", help="the Worklist page reads this screening node "
                      "(the folder of `cxrad serve --state`)")
    node.add_argument("--node-db", metavar="URL", help="the Worklist page reads this node database "
                      "(e.g. postgresql+psycopg://user@host/db)")


def run(args) -> int:
    from cxrad.frontends.app.launch import serve

    if importlib.util.find_spec("streamlit") is None:
        raise UserError("the dashboard needs Streamlit: pip install 'cxrad[app]'")
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port must be between 1 and 65535, not {args.port}")
    if not 1 <= args.max_upload_mb <= 1024:
        raise UserError(f"--max-upload-mb must be between 1 and 1024, not {args.max_upload_mb}")
    if args.model is not None:
        from cxrad.bundles import resolve
        from cxrad.serving.onnx_export import is_export
        if is_export(args.model) or str(args.model).lower().endswith(".onnx"):
            raise UserError(f"{args.model} is an ONNX export, not a model bundle: the dashboard needs the bundle "
                            "it was exported from (its heatmaps and reconstructions come from the model)")
        resolve(args.model)  # a wrong path fails here with a clear message, not later in the browser
    node_db = args.node_db
    if args.node_state is not None:
        from pathlib import Path
        if not (Path(args.node_state) / "node.db").is_file():
            raise UserError(f"--node-state {args.node_state}: no node.db in it (the folder of cxrad serve --state)")
        node_db = str(Path(args.node_state).resolve())
    if port_in_use(args.port):
        raise UserError(f"port {args.port} on 127.0.0.1 is already in use (another `cxrad app`, or another "
                        "program); choose a free one with --port")
    return serve(args.port, args.max_upload_mb, args.model, node_db)


def port_in_use(port: int) -> bool:
    """Whether 127.0.0.1:PORT cannot be listened on, checked before Streamlit starts (which would print its
    URL first, then fail)."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Streamlit's server: TIME_WAIT is free
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False
