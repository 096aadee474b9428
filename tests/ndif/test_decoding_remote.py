"""Patchscope and the generation lens on a real local NDIF server: equal to the local numbers."""

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
    assert len(requests) <= 4  # the source states, the target runs, its own top-k, the generations
    want = wb.patchscope(local, PROMPT, layers=[0, 10, 20], positions=[2, -1], max_new_tokens=3)
    assert np.array_equal(ps.top_ids[..., 0], want.top_ids[..., 0])
    assert float(np.abs(ps.top_probs - want.top_probs).max()) <= TOL
    assert float(np.abs(ps.entropy - want.entropy).max()) <= TOL
    assert ps.generations == want.generations


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
    assert len(requests) <= 3  # the states, the decoding, the model's own continuations
    want = wb.future_lens(local, PROMPT, n_future=2, layers=[5, 20], positions=[3, -1])
    assert fl.predicted == want.predicted
    assert float(np.abs(fl.top_probs - want.top_probs).max()) <= TOL
    assert np.allclose(fl.accuracy, want.accuracy)
