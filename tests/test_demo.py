"""`make demo` runs `python -m workbench.demo`: JupyterLab on 127.0.0.1 serving a working copy of the notebooks.

The tracked notebooks must stay byte-identical whatever the user does in the demo (JupyterLab autosaves), and
the launcher must not keep a copy of the model in memory while the server runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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

from workbench import demo

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


def test_working_copy_is_refreshed_without_losing_edits(tmp_path: Path) -> None:
    src, work = tmp_path / "notebooks", tmp_path / "work"
    src.mkdir()
    (src / "a.ipynb").write_text('{"a": 1}')
    (src / "b.ipynb").write_text('{"b": 1}')
    tracked = _digests(src)

    _, messages = demo.prepare_workdir(src, work)
    assert (work / "a.ipynb").read_text() == '{"a": 1}' and (work / "b.ipynb").read_text() == '{"b": 1}'
    assert messages == []

    (work / "a.ipynb").write_text('{"a": 1, "outputs": "mine"}')  # the user ran and saved a
    _, messages = demo.prepare_workdir(src, work)
    assert (work / "a.ipynb").read_text() == '{"a": 1, "outputs": "mine"}' and messages == []  # kept

    (src / "b.ipynb").write_text('{"b": 2}')  # upstream changed b, which the user never edited
    (src / "c.ipynb").write_text('{"c": 1}')  # and added c
    _, messages = demo.prepare_workdir(src, work)
    assert (work / "b.ipynb").read_text() == '{"b": 2}' and (work / "c.ipynb").read_text() == '{"c": 1}'
    assert len(messages) == 1 and "b.ipynb: updated" in messages[0]

    (src / "a.ipynb").write_text('{"a": 2}')  # upstream changed a, which the user edited: set aside, say so
    _, messages = demo.prepare_workdir(src, work)
    assert (work / "a.ipynb").read_text() == '{"a": 2}'
    kept = list(work.glob("a.edited-*.ipynb"))
    assert len(kept) == 1 and kept[0].read_text() == '{"a": 1, "outputs": "mine"}'
    assert len(messages) == 1 and str(kept[0]) in messages[0]

    (work / "b.ipynb").unlink()  # a deleted working copy comes back
    demo.prepare_workdir(src, work)
    assert (work / "b.ipynb").read_text() == '{"b": 2}'
    assert _digests(src) == {**tracked, **_digests(src)} and (src / "a.ipynb").read_text() == '{"a": 2}'


def test_server_command_is_loopback_and_rooted_at_the_working_copy(tmp_path: Path) -> None:
    cmd = demo.server_command(tmp_path, 8123)
    assert "--ip=127.0.0.1" in cmd and "--port=8123" in cmd and "--no-browser" in cmd
    assert f"--ServerApp.root_dir={tmp_path.resolve()}" in cmd
    assert "--LabApp.default_url=/lab/tree/01_quickstart.ipynb" in cmd
    assert not any(str(NOTEBOOKS) in part or part.endswith(f"root_dir={ROOT}") for part in cmd)


def test_launcher_never_loads_the_model_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache is warmed in a child process and the launcher then becomes the server: it holds no model."""
    import workbench
    from workbench import loading

    def loaded(*args, **kwargs):
        raise AssertionError("the launcher loaded the model in its own process")

    for target, name in [(workbench, "load"), (loading, "load"), (loading, "_load_gguf_cached")]:
        monkeypatch.setattr(target, name, loaded)
    children: list[list[str]] = []
    monkeypatch.setattr(subprocess, "call", lambda cmd, **kw: children.append(list(cmd)) or 0)
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: children.append(list(cmd)))

    class Exec(Exception):  # os.execv never returns
        pass

    def execv(path, cmd):
        children.append(list(cmd))
        raise Exec

    monkeypatch.setattr(os, "execv", execv)
    monkeypatch.setattr(os, "chdir", lambda path: None)
    monkeypatch.setenv("WORKBENCH_DEMO_DIR", str(tmp_path / "work"))
    monkeypatch.setattr(sys, "argv", ["workbench.demo", "--port", "8123"])
    with contextlib.suppress(Exec):
        demo.main()
    assert [c[:2] for c in children] == [[sys.executable, "-c"], [sys.executable, "-m"]], children
    assert "warm_default_cache" in children[0][2] and children[1][2] == "jupyterlab"


def _session_rss_mb(sid: int) -> float:
    """Resident memory of every process in the demo's session (it was started with start_new_session)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:  # field 6 of /proc/pid/stat: the session id
                total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # field 24: rss in pages
    return total / 2**20


@pytest.mark.embedded
def test_demo_serves_a_working_copy_and_never_touches_the_tracked_notebooks(tmp_path: Path) -> None:
    port = _free_port()
    log = tmp_path / "demo.log"
    work = tmp_path / "work"
    env = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"),
        "WORKBENCH_DEMO_DIR": str(work),
        "WORKBENCH_CACHE": str(tmp_path / "cache"),
    }
    tracked = {p: p.read_bytes() for p in sorted(NOTEBOOKS.iterdir()) if p.is_file()}
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
        deadline = time.time() + 300
        while time.time() < deadline and url is None:
            assert proc.poll() is None, log.read_text()[-3000:]
            match = re.search(rf"http://127\.0\.0\.1:{port}/lab/tree/(\S+?)\?token=(\w+)", log.read_text())
            url = match if match else None
            time.sleep(1)
        assert url, log.read_text()[-3000:]
        path, token = url.group(1), url.group(2)
        assert path.endswith("01_quickstart.ipynb"), path
        api = f"http://127.0.0.1:{port}/api/contents/{path}"

        def call(method: str, address: str, body: dict | None = None) -> dict:
            data = None if body is None else json.dumps(body).encode()
            req = urllib.request.Request(
                address, data=data, method=method, headers={"Authorization": f"token {token}"}
            )
            with urllib.request.urlopen(req, timeout=30) as resp:
                assert resp.status in (200, 201), resp.status
                return json.loads(resp.read() or b"{}")

        # what JupyterLab does when the user opens the notebook, runs a cell and it autosaves + checkpoints
        model = call("GET", f"{api}?content=1")
        assert model["type"] == "notebook"
        nb = model["content"]
        cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
        cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "explored\n"}]
        cell["execution_count"] = 1
        call("PUT", api, {"type": "notebook", "format": "json", "content": nb})
        call("POST", f"{api}/checkpoints")
        time.sleep(0.5)

        assert {p: p.read_bytes() for p in sorted(NOTEBOOKS.iterdir()) if p.is_file()} == tracked
        assert not (NOTEBOOKS / ".ipynb_checkpoints").exists() or not any(
            (NOTEBOOKS / ".ipynb_checkpoints").glob("01_quickstart*")
        )
        assert b"explored" in (work / "01_quickstart.ipynb").read_bytes()  # the save went to the copy
        assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(
            p.name for p in work.glob("*.ipynb")
        )

        rss = _session_rss_mb(proc.pid)  # the launcher keeps no model: only the server is left (~100 MB)
        print(f"demo processes: {rss:.0f} MB")
        assert rss < 450, f"the demo's processes use {rss:.0f} MB with no kernel running"
        text = log.read_text()
        assert "0.0.0.0" not in text and str(work) in text
    finally:  # stop the server and anything it started (its own process group), by pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        for p, data in tracked.items():  # never leave the checkout dirty, even when the test fails
            if p.read_bytes() != data:
                p.write_bytes(data)
