"""`make demo` runs `python -m workbench.demo`: JupyterLab on 127.0.0.1 serving the quickstart notebook."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.embedded
def test_demo_serves_the_quickstart_on_loopback(tmp_path: Path) -> None:
    port = _free_port()
    log = tmp_path / "demo.log"
    env = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
    }
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workbench.demo", "--port", str(port)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        url = None
        deadline = time.time() + 240
        while time.time() < deadline and url is None:
            assert proc.poll() is None, log.read_text()[-3000:]
            match = re.search(rf"(http://127\.0\.0\.1:{port}/lab\S*\?token=\w+)", log.read_text())
            url = match.group(1) if match else None
            time.sleep(1)
        assert url, log.read_text()[-3000:]
        token = url.rsplit("token=", 1)[1]
        nb = f"http://127.0.0.1:{port}/api/contents/notebooks/01_quickstart.ipynb?token={token}"
        with urllib.request.urlopen(nb, timeout=30) as resp:
            assert resp.status == 200 and b'"type": "notebook"' in resp.read().replace(
                b'"type":"notebook"', b'"type": "notebook"'
            )
        text = log.read_text()
        assert "0.0.0.0" not in text and "notebooks/01_quickstart.ipynb" in text
    finally:  # stop the server and anything it started (its own process group), by pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
