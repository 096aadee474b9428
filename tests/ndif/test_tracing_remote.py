"""Causal tracing on a real local NDIF server: equal to the local numbers (the replay engine), one request for
a prompt's whole trace and two for a dataset of facts (the pooled noise scale, then every fact's runs)."""

from __future__ import annotations

import numpy as np
import pytest

import workbench as wb

from .test_workbench_remote import models, requests  # noqa: F401  (fixtures)

pytestmark = pytest.mark.ndif

PROMPT = "The capital of France is the city of"  # 8 tokens on SmolLM2
TOL = 1e-5


def _close(remote, local, what: str) -> None:
    diff = float(np.abs(remote.values - local.values).max())
    assert diff <= TOL, f"{what}: max abs diff {diff:.3g}"
    assert abs(remote.high - local.high) <= TOL and abs(remote.low - local.low) <= TOL, what
    assert remote.target_id == local.target_id, what


def test_causal_trace_matches_local_in_one_request_per_kind(models, requests) -> None:  # noqa: F811
    remote, local = models
    for i, (kind, sever) in enumerate([("resid", None), ("resid", "mlp")]):  # windows: the dataset test
        tr = wb.causal_trace(remote, PROMPT, subject="France", kind=kind, sever=sever, samples=2, window=4)
        assert len(requests) == i + 1, f"{kind}/{sever}: {len(requests)} requests"
        want = wb.causal_trace(local, PROMPT, subject="France", kind=kind, sever=sever, samples=2, window=4)
        _close(tr, want, f"{kind} sever={sever}")
        assert np.allclose(tr.noise.numpy(), want.noise.numpy(), atol=1e-6)  # the std came from the server
    assert tr.target == " Paris"
    assert "remote=True" in tr.to_code()


def test_dataset_causal_trace_matches_local_in_two_requests(models, requests) -> None:  # noqa: F811
    remote, local = models
    ds = wb.datasets.facts()[:3]
    tr = wb.causal_trace(remote, ds, kind="attn", samples=2, window=4)
    assert len(requests) == 2  # the facts' pooled embedding std, then every fact's trace in one request
    want = wb.causal_trace(local, ds, kind="attn", samples=2, window=4)
    assert abs(tr.noise_std - want.noise_std) <= 1e-6
    for i, (a, b) in enumerate(zip(tr.per_example, want.per_example, strict=True)):
        _close(a, b, f"fact {i}")
    assert np.allclose(tr.values, want.values, atol=TOL, equal_nan=True)
