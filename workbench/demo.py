"""`make demo`: start JupyterLab on the quickstart notebook, bound to 127.0.0.1, and print the URL."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

NOTEBOOK = "notebooks/01_quickstart.ipynb"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8888)
    args = parser.parse_args()
    root = Path(__file__).resolve().parent.parent
    print("Preparing the embedded model (first time: about 20 s) ...", flush=True)
    import workbench as wb

    wb.load()  # dequantise and cache the default model once, so the notebook's first cell is fast
    print(f"Starting JupyterLab: open the URL printed below (notebook {NOTEBOOK}).", flush=True)
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--ip=127.0.0.1",
        f"--port={args.port}",
        "--no-browser",
        f"--ServerApp.root_dir={root}",
        f"--LabApp.default_url=/lab/tree/{NOTEBOOK}",
    ]
    if (
        hasattr(os, "geteuid") and os.geteuid() == 0
    ):  # containers and CI run as root; Jupyter refuses otherwise
        cmd.append("--allow-root")
    return subprocess.call(cmd, cwd=root)


if __name__ == "__main__":
    sys.exit(main())
