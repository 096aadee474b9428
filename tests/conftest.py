"""Shared fixtures and comparison helpers for the engine-vs-reference tests."""

from __future__ import annotations

import linecache
import os
import tempfile
import warnings

import numpy as np
import pytest
import torch

# One intra-op thread unless told otherwise: on a busy 2-core machine torch's default (one thread per
# core) spins against the other processes and made the embedded tests ~4x slower (177 s vs 40 s).
torch.set_num_threads(int(os.environ.get("WORKBENCH_TEST_THREADS", "1")))

# Prompts for the tiny models (tiny tokenizer: no BOS). CLEAN and CORRUPT are both 9 tokens;
# CORRUPT_SHORT ("The Colosseum is ...") is 8 tokens there, which the engine must refuse to pair.
CLEAN = "The Eiffel Tower is located in the city of"
CORRUPT = "The Colosseum Tower is located in the city of"
CORRUPT_SHORT = "The Colosseum is located in the city of"
OTHER = "The cat sat is located in the city of"  # 9 tokens: a resample / steering reference
TARGET, FOIL = " Paris", " Rome"

ATOL = 1e-4  # float32, max abs diff


@pytest.fixture(scope="session", autouse=True)
def _quiet():
    import transformers

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


_TINY: dict[str, object] = {}


def tiny(family: str):
    """One workbench Model per family for the whole session (built lazily)."""
    if family not in _TINY:
        from workbench.testing import tiny_model

        _TINY[family] = tiny_model(family)
    return _TINY[family]


def assert_close(actual, expected, atol: float = ATOL, what: str = "", rtol: float = 0.0) -> None:
    """Max abs diff <= atol (+ rtol * |expected|), with the worst cell and its values in the failure message."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != reference {e.shape}"
    if a.size == 0:
        return
    assert np.isfinite(a).all() == np.isfinite(e).all() or np.array_equal(np.isnan(a), np.isnan(e)), (
        f"{what}: non-finite values differ"
    )
    diff = np.abs(np.nan_to_num(a) - np.nan_to_num(e))
    excess = diff - rtol * np.abs(np.nan_to_num(e))
    worst = np.unravel_index(int(excess.argmax()), diff.shape)
    assert excess.max() <= atol, (
        f"{what}: abs diff {diff[worst]:.3g} > {atol:g} + {rtol:g} * |reference| at index "
        f"{tuple(int(i) for i in worst)}: engine {a[worst]!r} vs reference {e[worst]!r}"
    )


def assert_same_topk(ids, probs, ref_ids, ref_probs, atol: float = ATOL, what: str = "") -> None:
    """Top-k probabilities match; ids match except where neighbouring probabilities tie within atol."""
    ids, ref_ids = np.asarray(ids), np.asarray(ref_ids)
    assert_close(probs, ref_probs, atol, f"{what} top_probs")
    assert ids.shape == ref_ids.shape, f"{what}: top_ids shape {ids.shape} != {ref_ids.shape}"
    rp = np.asarray(ref_probs)
    bad = ids != ref_ids
    if bad.any():
        # a mismatch is only acceptable where the reference probabilities of the two candidates tie
        for idx in zip(*np.nonzero(bad), strict=True):
            row = idx[:-1]
            k = idx[-1]
            near = [j for j in range(rp.shape[-1]) if abs(rp[row + (j,)] - rp[row + (k,)]) <= atol]
            assert ids[idx] in ref_ids[row][near] or abs(rp[idx]) <= atol, (
                f"{what}: top_ids differ at {tuple(int(i) for i in idx)}: engine {ids[idx]} vs reference "
                f"{ref_ids[idx]} (p={rp[idx]:.6g})"
            )


def run_code(code: str) -> dict:
    """Exec generated code in a fresh namespace (as a fresh notebook cell would) and return the namespace."""
    assert isinstance(code, str) and code.strip(), "to_code() returned no code"
    # nnsight reads a trace's `with` body back from its source, so (like IPython does for a cell) put the
    # code somewhere linecache can find it: a real file.
    fd, path = tempfile.mkstemp(prefix="wb_to_code_", suffix=".py")
    with os.fdopen(fd, "w") as f:
        f.write(code)
    ns: dict = {"__name__": "__workbench_generated__", "__file__": path}
    try:
        exec(compile(code, path, "exec"), ns)  # noqa: S102
    finally:
        linecache.checkcache(path)
    assert "result" in ns, "generated code does not bind a variable named `result`:\n" + code
    return ns


def as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    if hasattr(x, "values") and not isinstance(x, dict | np.ndarray):
        return np.asarray(x.values, dtype=np.float64)
    return np.asarray(x, dtype=np.float64)


@pytest.fixture(scope="session")
def browser_context():
    """The session's one Chromium context (tests/browser/conftest.py says how it is started)."""
    from tests.browser.conftest import chromium_context

    yield from chromium_context()
