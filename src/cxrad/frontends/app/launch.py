"""Starting the Streamlit screening dashboard on localhost (``cxrad app`` calls ``serve``)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("dashboard.py")  # the pages: streamlit_app.py (screening), worklist_page.py
# The launcher hands its settings to the page through the environment (Streamlit owns the script's argv).
ENV_MODEL, ENV_MAX_MB = "CXRAD_APP_MODEL", "CXRAD_APP_MAX_UPLOAD_MB"
ENV_NODE_DB = "CXRAD_APP_NODE_DB"  # the screening node's database (a URL, or its state folder) for the worklist
#: per-file upload cap (MB); the launcher passes the same value to Streamlit's server.maxUploadSize
DEFAULT_MAX_UPLOAD_MB = 32


def streamlit_command(port: int, max_upload_mb: int) -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(SCRIPT),
            "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
            "--browser.gatherUsageStats", "false", "--server.maxUploadSize", str(max_upload_mb),
            "--server.fileWatcherType", "none", "--global.developmentMode", "false",
            "--client.toolbarMode", "minimal", "--server.enableXsrfProtection", "true",
            "--client.showErrorDetails", "none"]  # a bug shows a generic message, never a traceback or a path


def serve(port: int, max_upload_mb: int, model: str | None = None, node_db: str | None = None) -> int:
    """Run the dashboard until it exits; a SIGTERM or Ctrl-C to this process stops the server too."""
    env = dict(os.environ, **{ENV_MAX_MB: str(max_upload_mb)})
    if model is not None:
        env[ENV_MODEL] = str(model)
    if node_db is not None:
        env[ENV_NODE_DB] = str(node_db)
    print(f"cxrad dashboard on http://127.0.0.1:{port} (Ctrl-C stops it)", file=sys.stderr)
    proc = subprocess.Popen(streamlit_command(port, max_upload_mb), env=env)

    def stop(signum, frame):
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
