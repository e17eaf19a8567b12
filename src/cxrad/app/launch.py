"""``cxrad app``: start the Streamlit screening dashboard on localhost."""
from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

from .logic import DEFAULT_MAX_UPLOAD_MB

SCRIPT = Path(__file__).with_name("streamlit_app.py")
# The launcher hands its settings to the page through the environment (Streamlit owns the script's argv).
ENV_MODEL, ENV_MAX_MB = "CXRAD_APP_MODEL", "CXRAD_APP_MAX_UPLOAD_MB"


def add_app_command(sub) -> None:
    p = sub.add_parser("app", help="start the screening dashboard (Streamlit) on localhost",
                       description="Start the screening dashboard on http://127.0.0.1:PORT: upload PNG, JPEG or "
                       "DICOM chest X-rays and get a verdict, score, percentile among normal images, anomaly "
                       "heatmap and reconstruction. A research tool, not a diagnostic device.")
    p.set_defaults(_subparser=p, func=cmd_app)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help="model bundle folder or shipped model name preselected in the "
                   "page (default: the shipped default model)")
    p.add_argument("--port", type=int, default=8501, help="port on 127.0.0.1 (default 8501)")
    p.add_argument("--max-upload-mb", type=int, default=DEFAULT_MAX_UPLOAD_MB,
                   help=f"largest file accepted, in MB (default {DEFAULT_MAX_UPLOAD_MB})")


def streamlit_command(port: int, max_upload_mb: int) -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(SCRIPT),
            "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
            "--browser.gatherUsageStats", "false", "--server.maxUploadSize", str(max_upload_mb),
            "--server.fileWatcherType", "none", "--global.developmentMode", "false",
            "--client.toolbarMode", "minimal"]


def cmd_app(args) -> int:
    from ..cli import UserError

    if importlib.util.find_spec("streamlit") is None:
        raise UserError("the dashboard needs Streamlit: pip install 'cxrad[app]'")
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port must be between 1 and 65535, not {args.port}")
    if not 1 <= args.max_upload_mb <= 1024:
        raise UserError(f"--max-upload-mb must be between 1 and 1024, not {args.max_upload_mb}")
    if args.model is not None:
        from ..pretrained import resolve
        resolve(args.model)  # a wrong path fails here with a clear message, not later in the browser
    env = dict(os.environ, **{ENV_MAX_MB: str(args.max_upload_mb)})
    if args.model is not None:
        env[ENV_MODEL] = str(args.model)
    print(f"cxrad dashboard on http://127.0.0.1:{args.port} (Ctrl-C stops it)", file=sys.stderr)
    proc = subprocess.Popen(streamlit_command(args.port, args.max_upload_mb), env=env)

    def stop(signum, frame):  # a SIGTERM to the launcher must not leave the server running
        proc.terminate()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=10)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
