"""Voila and marimo servers for the browser tests: 127.0.0.1 only, a free port, token auth, stopped by pid.

Their kernels inherit this process's environment (PYTHONPATH included), so they import the Workbench under test.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .conftest import _settings, free_port


class AppServer:
    """One server process in its own session (so stop() ends it and its kernels), logging to root/<name>.log."""

    def __init__(self, name: str, root: Path, cmd: list[str], env: dict[str, str], ready: str):
        self.root = root
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.log = open(root / f"{name}-server.log", "w")  # noqa: SIM115
        self.name = name
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        cmd = [c.format(port=self.port, token=self.token) for c in cmd]
        self.proc = subprocess.Popen(
            cmd, cwd=root, env=full_env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._wait(ready.format(port=self.port, token=self.token))

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _wait(self, path: str, timeout: float = 90) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} server exited: see {self.log.name}")
            try:
                with urllib.request.urlopen(f"{self.base}{path}", timeout=2) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as e:  # the server answers: it is up
                if e.code < 500:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} server did not start in {timeout}s: see {self.log.name}")

    def stop(self) -> None:
        from .conftest import stop_group

        stop_group(self.proc, 15)
        self.log.close()


def voila(root: Path, notebook: str) -> AppServer:
    """`voila <notebook>` on 127.0.0.1 with a token; the page is at .base + '/?token=' + .token."""
    env = {
        "JUPYTERLAB_SETTINGS_DIR": str(_settings(root)),
        "JUPYTER_CONFIG_DIR": str(root / "config"),
        "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
    }
    cmd = [
        sys.executable,
        "-m",
        "voila",
        notebook,
        "--no-browser",
        "--Voila.ip=127.0.0.1",
        "--port={port}",
        "--Voila.port_retries=0",
        "--token={token}",
        "--show_tracebacks=True",
    ]
    return AppServer("voila", root, cmd, env, ready="/voila/static/voila.js?token={token}")


def marimo_run(root: Path, app: str) -> AppServer:
    """`marimo run <app>` (the app view, code hidden) on 127.0.0.1 with a token, headless."""
    cmd = [
        sys.executable,
        "-m",
        "marimo",
        "-y",
        "run",
        app,
        "--headless",
        "--host=127.0.0.1",
        "--port={port}",
        "--token",
        "--token-password={token}",
        "--no-sandbox",
    ]
    env = {
        "MARIMO_SKIP_UPDATE_CHECK": "1",
        "XDG_CONFIG_HOME": str(root / "xdg"),
        "HOME": os.environ.get("HOME", ""),
    }
    return AppServer("marimo", root, cmd, env, ready="/health")
