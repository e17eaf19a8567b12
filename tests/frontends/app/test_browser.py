"""End to end: `cxrad app` on a free localhost port, driven by Debian's headless Chromium through Playwright.
Uploads a real X-ray and a corrupt file and checks the verdict, the heatmap and the error; saves a screenshot
(to the test's tmp dir, and to $CXRAD_SCREENSHOT_DIR when set).

Also a script for the documentation screenshot:
    python tests/frontends/app/test_browser.py --model BUNDLE --image XRAY --out docs/images/app-screenshot.png
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CORRUPT = {"name": "corrupt_scan.png", "mimeType": "image/png",
           "buffer": b"\x89PNG\r\n\x1a\n" + b"\x00 this upload was cut short" * 8}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(model: Path, log: Path, startup_s: float = 60):
    """Start `cxrad app` in its own process group, wait for its health check, always stop it."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                      os.environ.get("PYTHONPATH")])))
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cxrad", "app", "--model", str(model), "--port",
                                 str(port)], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"cxrad app exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    if r.read() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"cxrad app did not answer within {startup_s} s:\n{log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}"
    finally:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            if proc.poll() is not None:
                break
            os.killpg(proc.pid, sig)  # the launcher and its streamlit child
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                pass


def upload_and_check(url: str, xray: Path, screenshot: Path, width: int = 1400, height: int = 1250,
                     timeout_ms: int = 45_000) -> dict:
    """Open the page, upload ``xray`` and a corrupt file, wait for and read back what the page shows."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(timeout_ms)
            page.goto(url)
            note = page.get_by_text("not a diagnostic device")
            note.wait_for()
            page.locator("input[type=file]").first.set_input_files([
                {"name": xray.name, "mimeType": "image/png" if xray.suffix == ".png" else "image/jpeg",
                 "buffer": xray.read_bytes()}, CORRUPT])
            verdict = page.get_by_text("Verdict:").first
            verdict.wait_for()
            error = page.locator('[data-testid="stAlertContentError"]').first
            error.wait_for()
            heatmap = page.locator('[data-testid="stImage"]').filter(has_text="Anomaly heatmap").locator("img")
            heatmap.wait_for()
            page.wait_for_function("imgs => [...document.querySelectorAll('[data-testid=stImage] img')]"
                                   ".every(i => i.complete && i.naturalWidth > 0)", arg=None)
            seen = {"note": note.is_visible(), "verdict": verdict.inner_text(), "error": error.inner_text(),
                    "heatmap_px": heatmap.evaluate("i => [i.naturalWidth, i.naturalHeight]"),
                    "table_rows": page.locator('[data-testid="stDataFrame"]').count()}
            page.screenshot(path=str(screenshot))
            return seen
        finally:
            browser.close()


@pytest.mark.browser
def test_dashboard_in_chromium(tiny_cae_bundle, shared_data, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (`make browsers` installs Debian's chromium as root)")
    xray = sorted((shared_data / "nih_cxr14_talo" / "No_findings").glob("*.png"))[0]
    shot = tmp_path / "app-screenshot.png"
    with running_app(tiny_cae_bundle, tmp_path / "server.log") as url:
        seen = upload_and_check(url, xray, shot)
    assert seen["note"]
    assert "NORMAL" in seen["verdict"] or "ANOMALOUS" in seen["verdict"]
    assert CORRUPT["name"] in seen["error"] and "not a readable image" in seen["error"]
    assert min(seen["heatmap_px"]) >= 256  # the overlay is drawn on the upload, not at the 32 px model size
    assert seen["table_rows"] == 1
    assert shot.stat().st_size > 10_000
    if os.environ.get("CXRAD_SCREENSHOT_DIR"):
        out = Path(os.environ["CXRAD_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, out / "app-screenshot.png")
    print(f"screenshot: {shot}")


def main() -> None:
    """The documentation screenshot: a real model, a real X-ray and a corrupt file, saved as a small PNG."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", required=True, type=Path)
    parser.add_argument("--out", default="docs/images/app-screenshot.png", type=Path)
    args = parser.parse_args()
    from PIL import Image

    args.out.parent.mkdir(parents=True, exist_ok=True)
    raw = args.out.with_suffix(".raw.png")
    with running_app(Path(args.model), args.out.with_suffix(".log")) as url:
        print(upload_and_check(url, args.image, raw, width=1300, height=1200))
    # a 256-colour palette keeps the committed file small
    Image.open(raw).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    raw.unlink()
    args.out.with_suffix(".log").unlink()
    print(f"{args.out}: {args.out.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
