"""`make demo`: JupyterLab on a working copy of the notebooks, bound to 127.0.0.1; prints the URL.

The tracked `notebooks/` are never served, so exploring (JupyterLab autosaves outputs) cannot dirty the
checkout. The server's root is a working copy, `workspace/` at the repository root (git-ignored; another
folder with `--dir` or $WORKBENCH_DEMO_DIR). Each start refreshes it from `notebooks/`:

- a notebook missing from the working copy is copied;
- a working copy the user has not changed is replaced when the tracked notebook changed (e.g. after a pull);
- a working copy the user changed is kept while the tracked notebook is unchanged; when both changed, the
  user's version is moved to `<name>.edited-<date-time>.ipynb` next to it (never deleted or overwritten),
  the new tracked version is copied, and the launcher says so.

What was copied is recorded in `<dir>/.workbench-demo.json` (the SHA-256 of each tracked file and of the copy).

The embedded model's dequantised-weights cache is warmed in a child process (nothing is loaded in this one),
then this process becomes JupyterLab (exec), so the launcher keeps no second copy of the model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
NOTEBOOK = "01_quickstart.ipynb"
STATE = ".workbench-demo.json"
WARM = "from workbench.loading import warm_default_cache; warm_default_cache()"


def default_workdir() -> Path:
    """$WORKBENCH_DEMO_DIR, else `workspace/` next to `notebooks/` (git-ignored)."""
    env = os.environ.get("WORKBENCH_DEMO_DIR")
    return Path(env).expanduser() if env else ROOT / "workspace"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _copy(src: Path, dst: Path) -> None:
    """Copy through a temporary file and a rename: an interrupted copy never leaves half a notebook."""
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def prepare_workdir(source: Path = NOTEBOOKS, workdir: Path | None = None) -> tuple[Path, list[str]]:
    """Bring the working copy up to date with `source` (the policy in the module docstring).

    Returns the working folder and one message per file that was replaced or set aside. Only files in the
    working folder are written; `source` is only read."""
    workdir = default_workdir() if workdir is None else Path(workdir)
    if not source.is_dir():
        raise SystemExit(f"No notebooks at {source}: run `make demo` from a checkout of the repository.")
    if workdir.resolve() == source.resolve():
        raise SystemExit("The demo's working folder must not be the tracked notebooks/ folder.")
    workdir.mkdir(parents=True, exist_ok=True)
    state_path = workdir / STATE
    try:
        state = json.loads(state_path.read_text())
        files = state["files"] if isinstance(state.get("files"), dict) else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        files = {}
    messages: list[str] = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for src in sorted(source.iterdir()):
        if not src.is_file() or src.name.startswith("."):
            continue
        dst, src_sha = workdir / src.name, _sha256(src)
        record = files.get(src.name) if isinstance(files.get(src.name), dict) else None
        if not dst.exists():
            _copy(src, dst)
        elif record is not None and record.get("source") == src_sha:
            continue  # the tracked file did not change: the working copy (edited or not) stays
        else:
            dst_sha = _sha256(dst)
            if dst_sha == src_sha:
                pass
            elif record is not None and dst_sha == record.get("copy"):
                _copy(src, dst)  # not edited here: take the new tracked version
                messages.append(f"{dst.name}: updated from {src} (it had not been edited here).")
            else:
                kept = dst.with_name(f"{dst.stem}.edited-{stamp}{dst.suffix}")
                dst.rename(kept)
                _copy(src, dst)
                messages.append(
                    f"{dst.name}: the tracked notebook changed, so the new version is in place; your edited "
                    f"copy is kept as {kept}."
                )
        files[src.name] = {"source": src_sha, "copy": _sha256(dst)}
    tmp = state_path.with_name(f"{STATE}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"files": files}, indent=1))
    os.replace(tmp, state_path)
    return workdir, messages


def server_command(workdir: Path, port: int, notebook: str = NOTEBOOK) -> list[str]:
    """The JupyterLab command line: loopback only, rooted at the working copy, opening `notebook`."""
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--no-browser",
        f"--ServerApp.root_dir={Path(workdir).resolve()}",
        f"--LabApp.default_url=/lab/tree/{notebook}",
    ]
    if (
        hasattr(os, "geteuid") and os.geteuid() == 0
    ):  # containers and CI run as root; Jupyter refuses otherwise
        cmd.append("--allow-root")
    return cmd


def warm_model_cache() -> int:
    """Dequantise and cache the embedded model in a child process, so the notebook's first load is fast and
    this process never holds the model. Returns the child's exit code (a failure only costs speed)."""
    return subprocess.call([sys.executable, "-c", WARM])


def launch(cmd: list[str], cwd: Path) -> int:
    """Become the server (POSIX exec: nothing of the launcher stays in memory), else run it as a child."""
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        os.chdir(cwd)
        os.execv(cmd[0], cmd)
    return subprocess.call(cmd, cwd=cwd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("--dir", type=Path, default=None, help="the working copy (default: workspace/)")
    parser.add_argument("--no-warm", action="store_true", help="do not prepare the embedded model first")
    args = parser.parse_args(argv)
    workdir, messages = prepare_workdir(NOTEBOOKS, args.dir)
    print(f"Working copy of notebooks/: {workdir} (the tracked notebooks are not served).", flush=True)
    for message in messages:
        print("  " + message, flush=True)
    if not args.no_warm:
        print("Preparing the embedded model (first time: about 20 s) ...", flush=True)
        if warm_model_cache() != 0:
            print("  (could not prepare it; the notebook's first cell will say why)", flush=True)
    print(f"Starting JupyterLab: open the URL printed below (notebook {workdir / NOTEBOOK}).", flush=True)
    return launch(server_command(workdir, args.port), workdir)


if __name__ == "__main__":
    sys.exit(main())
