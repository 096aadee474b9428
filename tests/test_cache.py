"""The workshop cache (`wb.cache`): a stored result equals the live one, any change of model or argument
computes live, and inputs with no exact key are never cached."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import workbench as wb
from tests.conftest import CLEAN, CORRUPT, FOIL, TARGET, assert_close
from workbench import result_cache as C
from workbench.testing import tiny_model


def metric():
    return wb.logit_diff(TARGET, FOIL)


@pytest.fixture
def store(tmp_path):
    with wb.cache(tmp_path / "results") as c:
        yield c


def _sweep(model, **kw):
    return wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site="resid_pre", **kw)


def test_second_call_reads_the_cache_and_equals_live(store):
    model = tiny_model("llama", seed=1)
    live = _sweep(model)
    assert (store.hits, store.misses) == (0, 1)
    again = _sweep(model)
    assert (store.hits, store.misses) == (1, 1)
    assert np.array_equal(again.values, live.values) and again.clean == live.clean
    assert again.to_code() == live.to_code()
    lens = wb.logit_lens(model, CLEAN, top_k=3)
    assert np.array_equal(wb.logit_lens(model, CLEAN, top_k=3).top_ids, lens.top_ids)
    v = wb.patch(model, CLEAN, CORRUPT, metric=metric(), site="head", layer=1, head=2)
    w = wb.patch(model, CLEAN, CORRUPT, metric=metric(), site="head", layer=1, head=2)
    assert float(v) == float(w) and w.top_tokens == v.top_tokens
    assert store.hits == 3


def test_a_new_process_reads_the_same_entries(store, tmp_path):
    """The key is process-independent: a fresh Python with the same model reads what this one stored."""
    import subprocess
    import sys

    model = tiny_model("gpt2", seed=2)
    live = _sweep(model)
    code = (
        "import workbench as wb, numpy as np, sys\n"
        "from workbench.testing import tiny_model\n"
        f"c = wb.cache({str(store.path)!r})\n"
        f"s = wb.patch_sweep(tiny_model('gpt2', seed=2), {CLEAN!r}, {CORRUPT!r}, "
        f"metric=wb.logit_diff({TARGET!r}, {FOIL!r}), site='resid_pre')\n"
        "np.save(sys.argv[1], s.values); print(c.hits, c.misses)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "v.npy")], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["1", "0"], out.stdout
    assert np.array_equal(np.load(tmp_path / "v.npy"), live.values)


def test_any_change_computes_live(store):
    model = tiny_model("llama", seed=3)
    _sweep(model)
    _sweep(model, by_position=False)  # the same arguments spelled out: a hit
    assert store.hits == 1
    wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site="attn_out")  # another argument
    wb.patch_sweep(model, CLEAN, CORRUPT, metric=wb.logit_diff(FOIL, TARGET), site="resid_pre")
    assert store.hits == 1 and store.misses == 3
    # a write through .data (no version counter moves) is a new model
    model.hf.model.layers[1].mlp.down_proj.weight.data[:, :10] = 0
    edited = _sweep(model)
    assert store.hits == 1
    with C.disabled():
        want = _sweep(model)
    assert_close(edited.values, want.values, 1e-6, "after a .data edit")
    # a swapped parameter-free module is a new model too
    model.hf.model.layers[0].mlp.act_fn = torch.nn.Tanh()
    hits = store.hits
    _sweep(model)
    assert store.hits == hits


def test_inputs_without_an_exact_key_always_compute(store):
    model = tiny_model("llama", seed=4)
    t, f = model.token_id(TARGET), model.token_id(FOIL)

    def custom(logits):
        return logits[:, t] - logits[:, f]

    for _ in range(2):
        wb.patch_sweep(model, CLEAN, CORRUPT, metric=custom, site="resid_pre")
    handle = model.hf.model.layers[0].register_forward_hook(lambda _m, _a, out: out)
    try:
        for _ in range(2):
            _sweep(model)
    finally:
        handle.remove()
    assert store.hits == 0 and not list(store.path.glob("*.pkl"))
    _sweep(model)
    _sweep(model)
    assert store.hits == 1


def test_damaged_entry_is_recomputed(store):
    model = tiny_model("llama", seed=5)
    live = _sweep(model)
    (entry,) = store.path.glob("*.pkl")
    entry.write_bytes(b"not a pickle")
    again = _sweep(model)
    assert store.hits == 0 and np.array_equal(again.values, live.values)
    assert _sweep(model) is not None and store.hits == 1


def test_environment_variable_and_disabling(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "_active", C._UNSET)
    monkeypatch.setenv("WORKBENCH_CACHE_RESULTS", str(tmp_path / "env"))
    assert C.active() is not None and C.active().path == tmp_path / "env"
    wb.cache(None)
    assert C.active() is None


def test_bad_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(wb.WorkbenchError, match="result cache"):
        wb.cache(blocker / "sub")
    assert C.active() is None or C.active().path != blocker / "sub"


@pytest.mark.embedded
def test_cached_sweep_is_fast_and_equal(tmp_path):
    """On the embedded model a cached sweep returns in under 5% of its compute time and equals it."""
    model = wb.load()
    clean, corrupt = "The Eiffel Tower is located in the city of", "The Colosseum is located in the city of"
    m = wb.logit_diff(" Paris", " Rome")
    with wb.cache(tmp_path / "r") as store:
        t0 = time.perf_counter()
        live = wb.patch_sweep(model, clean, corrupt, metric=m, site="resid_pre")
        compute = time.perf_counter() - t0
        reads = []
        for _ in range(3):
            t0 = time.perf_counter()
            hit = wb.patch_sweep(model, clean, corrupt, metric=m, site="resid_pre")
            reads.append(time.perf_counter() - t0)
        assert store.hits == 3
    assert np.array_equal(hit.values, live.values)
    assert sorted(reads)[1] < 0.05 * compute, (reads, compute)
