"""Real JupyterLab 4 / Notebook 7 servers on 127.0.0.1 and Debian's Chromium driven by Playwright.

One server, one notebook and one kernel per app (module-scoped), started with token auth on a free port and
stopped by pid. No browser is downloaded: Playwright drives /usr/bin/chromium.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("WB_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/browser" in str(item.fspath):
            item.add_marker(pytest.mark.browser)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(root: Path, dark: bool = False) -> Path:
    """Lab/Notebook user settings: no windowing (every cell rendered), no news/update toasts."""
    d = root / "settings"
    files = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
            "fetchNews": "false",
            "checkForUpdates": False,
        },
        "@jupyterlab/apputils-extension/themes.jupyterlab-settings": {
            "theme": "JupyterLab Dark" if dark else "JupyterLab Light"
        },
    }
    for rel, content in files.items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(content))
    return d


def stop_group(proc: subprocess.Popen, grace: float) -> None:
    """Stop a server started with start_new_session=True: SIGTERM to its process group, SIGKILL after `grace`."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


class Server:
    def __init__(self, app: str, root: Path, python: str | None = None, env: dict[str, str] | None = None):
        self.app = app
        self.root = root
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.log = open(root / f"{app}-server.log", "w")  # noqa: SIM115
        env = dict(os.environ if env is None else env)
        env["JUPYTERLAB_SETTINGS_DIR"] = str(_settings(root))
        env["JUPYTERLAB_WORKSPACES_DIR"] = str(root / "workspaces")
        env["JUPYTER_CONFIG_DIR"] = str(root / "config")
        env["JUPYTER_RUNTIME_DIR"] = str(root / "runtime")
        env["PYTHONUNBUFFERED"] = "1"
        module = "jupyterlab" if app == "lab" else "notebook"
        cmd = [
            python or sys.executable,
            "-m",
            module,
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={root}",
            "--allow-root",
        ]
        cmd.append(
            "--LabApp.expose_app_in_browser=True"
            if app == "lab"
            else "--JupyterNotebookApp.expose_app_in_browser=True"
        )
        self.proc = subprocess.Popen(
            cmd, cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._wait()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, nb: str) -> str:
        path = f"/lab/tree/{nb}" if self.app == "lab" else f"/notebooks/{nb}"
        return f"{self.base}{path}?token={self.token}"

    def _wait(self, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.app} server exited: see {self.log.name}")
            try:
                with urllib.request.urlopen(f"{self.base}/api/status?token={self.token}", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"{self.app} server did not start in {timeout}s")

    def stop(self) -> None:
        stop_group(self.proc, 10)
        self.log.close()


def chromium_context():
    """Debian's Chromium through Playwright (one per test session: `browser_context` in tests/conftest.py
    serves the browser tests and tests/test_wheel.py alike; a second sync Playwright in one process fails)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (make browser-deps installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    profile = Path(tempfile.mkdtemp(prefix="wb-chromium-"))
    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1400, "height": 2200},
            accept_downloads=True,
        )
        ctx.set_default_timeout(30_000)
        try:
            yield ctx
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)


def run_notebook(page, server: Server, name: str, n_views: int) -> None:
    """Open notebook `name`, run all its cells once the kernel is up, and wait until `n_views` views have
    rendered and every view's work is done."""
    page.goto(server.url(name))
    page.wait_for_function(
        "() => window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=60_000
    )
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    page.wait_for_timeout(1500)  # the kernel connects
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(
        f"() => document.querySelectorAll('[data-testid=wb-view]').length >= {n_views}", timeout=240_000
    )
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=wb-status]')]"
        ".every(s => ['done', 'idle'].includes(s.textContent))",
        timeout=120_000,
    )


def start_server(app: str, notebook: dict, name: str = "views.ipynb", **server_args) -> Server:
    """`server_args`: `python=` (another environment's interpreter) and `env=` for `Server`."""
    root = Path(tempfile.mkdtemp(prefix=f"wb-{app}-"))
    (root / name).write_text(json.dumps(notebook))
    return Server(app, root, **server_args)


def make_notebook(cells: list[str]) -> dict:
    return {
        "cells": [
            {"cell_type": "code", "metadata": {}, "source": src, "outputs": [], "execution_count": None}
            for src in cells
        ],
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
