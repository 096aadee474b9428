"""Patchscope, Future Lens and the generation lens on a real local NDIF server: equal to the local numbers.

A patchscope and a Future Lens are ONE request each (an nnsight session holding the source trace, whose
states stay on the server, the patched runs and the generations)."""

from __future__ import annotations

import numpy as np
import pytest

import workbench as wb

from .test_workbench_remote import models, requests  # noqa: F401  (fixtures)

pytestmark = pytest.mark.ndif

PROMPT = "The Eiffel Tower is located in the city of"
TOL = 1e-4


def test_patchscope_matches_local(models, requests) -> None:  # noqa: F811
    remote, local = models
    ps = wb.patchscope(remote, PROMPT, layers=[0, 10, 20], positions=[2, -1], max_new_tokens=3)
    assert len(requests) == 1  # the source states, the target runs, its own top-k, the generations
    want = wb.patchscope(local, PROMPT, layers=[0, 10, 20], positions=[2, -1], max_new_tokens=3)
    assert np.array_equal(ps.top_ids, want.top_ids)
    assert float(np.abs(ps.top_probs - want.top_probs).max()) <= TOL
    assert float(np.abs(ps.entropy - want.entropy).max()) <= TOL
    assert ps.generations == want.generations
    assert np.array_equal(ps.target_top_ids, want.target_top_ids)
    assert float(np.abs(ps.target_top_probs - want.target_top_probs).max()) <= TOL
    # a token followed on request: one more request for all its cells
    assert float(np.abs(ps.prob(" Paris") - want.prob(" Paris")).max()) <= TOL
    assert np.array_equal(ps.rank(" Paris"), want.rank(" Paris"))
    assert len(requests) == 2


def test_patchscope_into_an_earlier_layer_is_one_request(models, requests) -> None:  # noqa: F811
    """States of layers 12 and 25 written into layer 3 of the target: they flow from the source trace to an
    earlier layer of the target run inside the one request."""
    remote, local = models
    kw = dict(layers=[12, 25], positions=[1, 4, -1], target_layer=3, max_new_tokens=2)
    ps = wb.patchscope(remote, PROMPT, **kw)
    assert len(requests) == 1
    want = wb.patchscope(local, PROMPT, **kw)
    assert np.array_equal(ps.top_ids, want.top_ids)
    assert float(np.abs(ps.top_probs - want.top_probs).max()) <= TOL
    assert ps.generations == want.generations
    other = wb.patchscope(local, PROMPT, **dict(kw, max_new_tokens=0), target_prompt="cat -> cat\n?")
    assert float(np.abs(other.top_probs - want.top_probs).max()) > 1e-3  # the target prompt matters


def test_generation_lens_matches_local(models, requests) -> None:  # noqa: F811
    remote, local = models
    g = wb.generation_lens(remote, "The capital of France is", max_new_tokens=5)
    want = wb.generation_lens(local, "The capital of France is", max_new_tokens=5)
    assert g.tokens == want.tokens
    assert float(np.abs(g.prob - want.prob).max()) <= TOL
    assert list(g.commit_layer) == list(want.commit_layer)


def test_future_lens_fixed_matches_local(models, requests) -> None:  # noqa: F811
    remote, local = models
    fl = wb.future_lens(remote, PROMPT, n_future=2, layers=[5, 20], positions=[3, -1])
    assert len(requests) == 1  # the states, the decoding, the model's own continuations
    want = wb.future_lens(local, PROMPT, n_future=2, layers=[5, 20], positions=[3, -1])
    assert fl.predicted == want.predicted
    assert np.array_equal(fl.top_ids, want.top_ids)
    assert float(np.abs(fl.top_probs - want.top_probs).max()) <= TOL
    assert np.array_equal(fl.own_ids, want.own_ids) and np.array_equal(fl.bigram_ids, want.bigram_ids)
    assert np.allclose(fl.accuracy, want.accuracy)
    assert np.allclose(fl.bigram_baseline, want.bigram_baseline)


def test_future_lens_learned_matches_local_in_one_request(models, requests) -> None:  # noqa: F811
    """A soft prompt trained on the local copy (a few steps: any vectors do) reads the remote model: the
    vectors go over the context's embedding output in the same one request."""
    remote, local = models
    texts = [
        PROMPT + " Paris, the capital of France.",
        "The Colosseum is located in the city of Rome, Italy.",
    ]
    soft = wb.train_future_lens(local, texts, n_future=2, steps=2, batch_size=4, layers=[5, 20])
    fl = wb.future_lens(remote, PROMPT, n_future=2, method="learned", context=soft, layers=[5, 20])
    assert len(requests) == 1
    want = wb.future_lens(local, PROMPT, n_future=2, method="learned", context=soft, layers=[5, 20])
    assert fl.predicted == want.predicted
    assert np.array_equal(fl.top_ids, want.top_ids)
    assert float(np.abs(fl.top_probs - want.top_probs).max()) <= TOL
    assert np.allclose(fl.accuracy, want.accuracy)
    fixed = wb.future_lens(local, PROMPT, n_future=2, layers=[5, 20])
    assert float(np.abs(fixed.top_probs - want.top_probs).max()) > 1e-3  # the soft prompt was applied
