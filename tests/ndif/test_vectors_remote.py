"""Function vectors on a real local NDIF server: each op in one request, equal to the local numbers."""

from __future__ import annotations

import numpy as np
import pytest

import workbench as wb

from .test_workbench_remote import models, requests  # noqa: F401  (fixtures)

pytestmark = pytest.mark.ndif

TOL = 1e-4
KW = dict(n_shots=3, n_prompts=2, seed=0)  # 2 prompts x (30 x 9 + 2) rows of ~30 tokens in the request


def _task():
    return wb.datasets.task("antonyms")[:20]


def test_head_effects_match_local_in_one_request(models, requests) -> None:  # noqa: F811
    remote, local = models
    cie = wb.head_effects(remote, _task(), **KW)
    assert len(requests) == 1
    want = wb.head_effects(local, _task(), **KW)
    assert float(np.abs(cie.per_example - want.per_example).max()) <= TOL
    assert float(np.abs(cie.clean - want.clean).max()) <= TOL
    assert float(np.abs(cie.head_means - want.head_means).max()) <= TOL
    assert np.array_equal(cie.head_top_ids[..., 0], want.head_top_ids[..., 0])


def test_function_vector_matches_local_in_one_request(models, requests) -> None:  # noqa: F811
    remote, local = models
    fv = wb.function_vector(remote, _task(), heads=5, **KW)
    assert len(requests) == 1  # effects, ranking, projections and decoding in the same request
    want = wb.function_vector(local, _task(), heads=5, **KW)
    assert fv.heads == want.heads
    assert float(np.abs(fv.vector - want.vector).max()) <= TOL * max(1.0, float(np.abs(want.vector).max()))
    assert [t for t, _ in fv.decode(5)] == [t for t, _ in want.decode(5)]
    given = wb.function_vector(remote, fv.effects, heads=5)
    assert len(requests) == 2  # from the effects: one more request (the projections)
    assert float(np.abs(given.vector - fv.vector).max()) <= TOL * max(1.0, float(np.abs(fv.vector).max()))


def test_evaluate_vector_matches_local_in_one_request(models, requests) -> None:  # noqa: F811
    remote, local = models
    fv = wb.function_vector(local, _task(), heads=5, **KW)
    requests.clear()
    ev = wb.evaluate_vector(remote, _task()[:8], fv)
    assert len(requests) == 1
    want = wb.evaluate_vector(local, _task()[:8], fv)
    assert float(np.abs(ev.probs - want.probs).max()) <= TOL
    assert np.array_equal(ev.top_ids, want.top_ids) and ev.baseline == want.baseline
