"""notebooks/07_remote.ipynb executed top to bottom against the local NDIF server (the model it serves)."""

from __future__ import annotations

import pytest

from tests.test_notebooks import REMOTE, make_kernel_dir, run_notebook

pytestmark = pytest.mark.ndif


@pytest.fixture
def kernel_dir(tmp_path):
    return make_kernel_dir(tmp_path)


def test_remote_notebook_runs_against_local_ndif(ndif_server, kernel_dir, monkeypatch) -> None:
    monkeypatch.setenv("NDIF_API_KEY", "local-notebook-key")  # this server has no auth; the key is only sent
    monkeypatch.setenv("NDIF_HOST", ndif_server.url)
    monkeypatch.setenv("WORKBENCH_REMOTE_MODEL", str(ndif_server.model_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    elapsed = run_notebook(REMOTE, kernel_dir)
    print(f"\n{REMOTE}: {elapsed:.1f} s wall against {ndif_server.url}")
