"""Head detectors and direct logit attribution on a real local NDIF server: each op in one request, equal to the
local numbers."""

from __future__ import annotations

import numpy as np
import pytest

import workbench as wb

from .test_workbench_remote import models, requests  # noqa: F401  (fixtures)

pytestmark = pytest.mark.ndif

TOL = 1e-4


def test_head_detectors_match_local_in_one_request(models, requests) -> None:  # noqa: F811
    remote, local = models
    got = wb.head_detectors(remote, n_seqs=3)
    assert len(requests) == 1
    want = wb.head_detectors(local, n_seqs=3)
    for name in want:
        assert float(np.abs(got[name] - want[name]).max()) <= TOL, name
    prompts = ["The cat sat on the mat and the cat sat", "hello world"]  # ragged: one padded request
    got = wb.head_detectors(remote, prompts)
    assert len(requests) == 2
    want = wb.head_detectors(local, prompts)
    for name in want:
        assert float(np.abs(got[name] - want[name]).max()) <= TOL, name
    assert got.excluded == want.excluded


def test_logit_attribution_matches_local_in_one_request(models, requests) -> None:  # noqa: F811
    remote, local = models
    ds = wb.datasets.ioi()[:3]
    got = wb.logit_attribution(remote, ds, metric=wb.logit_diff())
    assert len(requests) == 1
    want = wb.logit_attribution(local, ds, metric=wb.logit_diff())
    for part in ("heads", "mlps", "embed", "metric"):
        assert float(np.abs(got.per_example[part] - want.per_example[part]).max()) <= TOL, part
    assert abs(got.total - got.metric) < TOL
    one = wb.logit_attribution(remote, ds[0].clean, metric=wb.prob(ds[0].target))
    assert len(requests) == 2
    ref = wb.logit_attribution(local, ds[0].clean, metric=wb.prob(ds[0].target))
    assert float(np.abs(one.heads - ref.heads).max()) <= TOL
