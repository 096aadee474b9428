"""The NDIF tier: tests against a real local NDIF server (PyPI ndif 0.1.2).

Run it with `make ndif-test` (or `python3 tools/ndif/stack.py pytest`): that creates a
network namespace with only `lo`, runs pytest for this folder inside it with
WORKBENCH_NDIF=1, and deletes the namespace afterwards. The session fixture below
then starts the server stack in that namespace and stops it by pid at the end.

Outside that driver (e.g. a plain `pytest` of the whole suite) the `ndif`-marked
tests are deselected, so the rest of the suite never starts the stack. Asked for
explicitly (`-m ndif`) outside the namespace they error out loudly: this tier
never skips.

Environment:
  WORKBENCH_NDIF=1        run this tier (set by the driver)
  WORKBENCH_NDIF_URL      reuse a stack that is already running (same namespace),
                          e.g. from `tools/ndif/stack.py run -- ...` or `up NAME`
  WORKBENCH_NDIF_MODEL    its model folder (default .ndif/models/SmolLM2-135M-Instruct)
"""

from __future__ import annotations

import importlib.util
import os
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_stack_module():
    path = REPO / "tools" / "ndif" / "stack.py"
    spec = importlib.util.spec_from_file_location("workbench_ndif_stack", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def pytest_collection_modifyitems(config, items):
    if os.environ.get("WORKBENCH_NDIF") == "1" or "ndif" in (config.option.markexpr or ""):
        return
    drop = [item for item in items if item.get_closest_marker("ndif")]
    if drop:
        keep = [item for item in items if not item.get_closest_marker("ndif")]
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


_TIMINGS: dict = {}


def pytest_terminal_summary(terminalreporter):
    if _TIMINGS:
        parts = ", ".join(f"{k} {v} s" for k, v in _TIMINGS.items())
        terminalreporter.write_line(f"NDIF stack start: {parts}")


@dataclass
class NdifServer:
    url: str  # e.g. "http://127.0.0.1:8001"; pass as remote=url or set nnsight.CONFIG.API.HOST
    model_dir: Path  # the local HF folder the server has deployed (use it as the repo id)
    timings: dict


@pytest.fixture(scope="session", autouse=True)
def same_threads_as_the_server():
    """Local reference runs use the server actor's thread count, so both sides sum in the same order
    (tests/conftest.py picks one thread for the rest of the suite)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(_load_stack_module().server_threads())
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ndif_server():
    stack_mod = _load_stack_module()
    url = os.environ.get("WORKBENCH_NDIF_URL")
    model_dir = Path(os.environ.get("WORKBENCH_NDIF_MODEL", stack_mod.DEFAULT_MODEL)).resolve()
    if url:
        try:
            with urllib.request.urlopen(url + "/connected", timeout=10) as r:
                assert r.status == 200
        except Exception as e:  # loud failure, never a skip
            pytest.fail(f"WORKBENCH_NDIF_URL={url} is not reachable from here: {e!r}", pytrace=False)
        yield NdifServer(url, model_dir, {})
        return
    if not stack_mod.only_loopback():
        pytest.fail(
            "the NDIF tier must run inside its own network namespace: use `make ndif-test` "
            "or `python3 tools/ndif/stack.py pytest` (not a plain pytest run)",
            pytrace=False,
        )
    stack = stack_mod.Stack(model_dir)
    try:
        stack.start()  # raises StackError (with log tails) if anything fails to come up
        _TIMINGS.update(stack.timings)
        yield NdifServer(stack.url, stack.model_dir, stack.timings)
    finally:
        stack.stop()
