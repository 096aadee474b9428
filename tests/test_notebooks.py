"""Execute the teaching notebooks top to bottom (nbclient, a kernel on this interpreter) and fail on any error.

Each notebook checks its own claims about the embedded model with assert cells, so executing it is the test.
07_remote runs only when an NDIF API key is configured (env NDIF_API_KEY or nnsight's saved config). Against
the local NDIF stack (tests/ndif/README.md), as root:

    .venv/bin/python tools/ndif/stack.py run bash -c 'NDIF_API_KEY=local NDIF_HOST="$WORKBENCH_NDIF_URL" \
        WORKBENCH_REMOTE_MODEL="$WORKBENCH_NDIF_MODEL" HF_HUB_OFFLINE=1 \
        .venv/bin/python -m pytest -q -s tests/test_notebooks.py -k remote'

Wall times are printed (run pytest with -s to see them).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.notebooks

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
LOCAL = [
    "01_quickstart.ipynb",
    "02_logit_lens.ipynb",
    "03_causal_tracing.ipynb",
    "04_circuits.ipynb",
    "05_attention_and_induction.ipynb",
    "06_steering.ipynb",
    "08_function_vectors.ipynb",
    "09_circuits_from_data.ipynb",
]
REMOTE = "07_remote.ipynb"
CELL_TIMEOUT = int(os.environ.get("WORKBENCH_NOTEBOOK_CELL_TIMEOUT", "600"))
# On a small shared machine torch's OpenMP threads fight other processes; one thread is steadier there.
THREADS = os.environ.get("WORKBENCH_NOTEBOOK_THREADS", "1")

_times: dict[str, float] = {}


def make_kernel_dir(root: Path) -> Path:
    """A `python3` kernelspec under `root` that runs this very interpreter (the project venv)."""
    spec = root / "python3"
    spec.mkdir()
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (workbench tests)",
                "language": "python",
            }
        )
    )
    return root


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory) -> Path:
    """A `python3` kernelspec that runs this very interpreter (the project venv), whatever else is installed."""
    return make_kernel_dir(tmp_path_factory.mktemp("kernels"))


def run_notebook(name: str, kernel_dir: Path) -> float:
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    path = NOTEBOOKS / name
    nb = nbformat.read(path, as_version=4)
    ksm = KernelSpecManager(kernel_dirs=[str(kernel_dir)])
    km = KernelManager(kernel_name="python3", kernel_spec_manager=ksm)
    client = NotebookClient(
        nb,
        km=km,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        allow_errors=False,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    env = dict(os.environ, OMP_NUM_THREADS=THREADS, MKL_NUM_THREADS=THREADS, PYTHONWARNINGS="ignore")
    env.pop("JPY_PARENT_PID", None)
    start = time.perf_counter()
    client.execute(env=env)  # raises CellExecutionError (with the cell and traceback) on any error
    return time.perf_counter() - start


@pytest.mark.parametrize("name", LOCAL)
def test_notebook_runs(name: str, kernel_dir: Path) -> None:
    elapsed = run_notebook(name, kernel_dir)
    _times[name] = elapsed
    print(f"\n{name}: {elapsed:.1f} s wall")


def _ndif_configured() -> str | None:
    """None when an NDIF key is configured (env or nnsight's saved config), else the reason to skip."""
    if os.environ.get("NDIF_API_KEY"):
        return None
    try:
        from nnsight import CONFIG
    except Exception as exc:  # pragma: no cover - nnsight is a dependency
        return f"nnsight is not importable ({exc})"
    if getattr(CONFIG.API, "APIKEY", None):
        return None
    return (
        "no NDIF API key configured (set NDIF_API_KEY or run nnsight's login / CONFIG.set_default_api_key); "
        f"host would be {getattr(CONFIG.API, 'HOST', '?')}. 07_remote.ipynb needs a server, so it is not a local notebook."
    )


def test_remote_notebook(kernel_dir: Path) -> None:
    reason = _ndif_configured()
    if reason is not None:
        pytest.skip(reason)
    elapsed = run_notebook(REMOTE, kernel_dir)
    print(f"\n{REMOTE}: {elapsed:.1f} s wall")


def test_notebooks_are_stripped() -> None:
    """Outputs are not committed: every code cell has no outputs and no execution count."""
    import nbformat

    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata.get("kernelspec", {}).get("name") == "python3", path.name
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: outputs not stripped"


def test_zz_report_times() -> None:
    """Print the total wall time of the local notebooks executed in this session."""
    if _times:
        total = sum(_times.values())
        lines = "\n".join(f"  {k}: {v:.1f} s" for k, v in _times.items())
        print(f"\nnotebook wall times:\n{lines}\n  total: {total:.1f} s")
