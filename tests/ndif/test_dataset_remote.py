"""Dataset ops on a real local NDIF server: equal to the local numbers, and ONE request per op (every example's
rows in one left-padded traced forward), over examples of different lengths (align="right")."""

from __future__ import annotations

import numpy as np
import pytest

import workbench as wb
from workbench.data import Dataset

from .test_workbench_remote import models, requests  # noqa: F401  (fixtures)

pytestmark = pytest.mark.ndif

# Token lengths 14, 10 and 8 (SmolLM2); clean and corrupt of one example have equal lengths.
PAIRS = [
    (
        "When Mary and John went to the store, John gave a drink to",
        "When Mary and John went to the store, Mary gave a drink to",
        " Mary",
        " John",
    ),
    (
        "The Eiffel Tower is located in the city of",
        "The Colosseum is located in the city of",
        " Paris",
        " Rome",
    ),
    ("The capital of France is the city of", "The capital of Italy is the city of", " Paris", " Rome"),
]
TOL = 1e-4


def _dataset() -> Dataset:
    return Dataset(
        clean=[p[0] for p in PAIRS],
        corrupt=[p[1] for p in PAIRS],
        target=[p[2] for p in PAIRS],
        foil=[p[3] for p in PAIRS],
    )


def _same(remote, local, what: str) -> None:
    for field in ("per_example", "clean", "corrupt"):
        a, b = np.asarray(getattr(remote, field)), np.asarray(getattr(local, field))
        assert a.shape == b.shape, f"{what} {field}: {a.shape} != {b.shape}"
        assert np.array_equal(np.isnan(a), np.isnan(b)), f"{what} {field}: NaNs differ"
        finite = ~np.isnan(a)  # an ablation has no corrupt run: NaN on both sides
        diff = float(np.abs(a - b)[finite].max()) if finite.any() else 0.0
        assert diff <= TOL, f"{what} {field}: max abs diff {diff:.3g}"


def test_dataset_patch_sweep_and_ablate_match_local_in_one_request_each(models, requests) -> None:  # noqa: F811
    remote, local = models
    ds = _dataset()
    assert len({remote.to_tokens(c).shape[1] for c, *_ in PAIRS}) == len(PAIRS)  # different lengths: padded
    metric = wb.logit_diff()  # each example's own target and foil

    sweep = wb.patch_sweep(remote, ds, metric=metric, site="resid_pre", align="right")
    assert len(requests) == 1  # 3 examples x 30 layers x 8 columns: one request
    local_sweep = wb.patch_sweep(local, ds, metric=metric, site="resid_pre", align="right")
    assert sweep.per_example.shape == (3, 30, 8)
    _same(sweep, local_sweep, "patch_sweep")
    assert np.abs(sweep.values - local_sweep.values).max() <= TOL
    assert (sweep.clean > sweep.corrupt).all()  # the model answers each example's own target

    zero = wb.ablate(remote, ds, metric=metric, site="mlp_out", layer=3, align="right")
    assert len(requests) == 2
    _same(zero, wb.ablate(local, ds, metric=metric, site="mlp_out", layer=3, align="right"), "ablate zero")

    resample = wb.ablate_sweep(remote, ds, metric=metric, site="head", method="resample", align="right")
    assert len(requests) == 3  # each example resampled from its own corrupt prompt, all in one request
    local_resample = wb.ablate_sweep(local, ds, metric=metric, site="head", method="resample", align="right")
    _same(resample, local_resample, "ablate_sweep resample")

    patch = wb.patch(remote, ds, metric=metric, cells=[wb.Cell("resid_pre", 10, position=-2)], align="right")
    assert len(requests) == 4
    local_patch = wb.patch(
        local, ds, metric=metric, cells=[wb.Cell("resid_pre", 10, position=-2)], align="right"
    )
    _same(patch, local_patch, "patch")


def test_filter_correct_on_a_remote_model_is_one_request(models, requests) -> None:  # noqa: F811
    from workbench.data.predict import predictions

    remote, local = models
    ds = _dataset()
    a, b = predictions(remote, ds), predictions(local, ds)
    assert len(requests) == 1
    assert [p.top_id for p in a] == [p.top_id for p in b]
    assert max(abs(p.top_prob - q.top_prob) for p, q in zip(a, b, strict=True)) <= TOL
    kept = ds.filter_correct(remote)
    assert len(requests) == 2
    assert [e.clean for e in kept] == [e.clean for e in ds.filter_correct(local)]


def test_dataset_logit_lens_matches_local_in_one_request(models, requests) -> None:  # noqa: F811
    remote, local = models
    ds = _dataset()
    before = len(requests)
    lens = wb.logit_lens(remote, ds, align="right")  # each example's target probability, padded batch
    assert len(requests) == before + 1  # every example in one request
    want = wb.logit_lens(local, ds, align="right")
    diff = float(np.abs(lens.per_example - want.per_example).max())
    assert diff <= TOL, f"dataset lens: max abs diff {diff:.3g}"


def test_dataset_attribution_and_intervene_match_local_in_one_request_each(models, requests) -> None:  # noqa: F811
    remote, local = models
    ds = _dataset()
    before = len(requests)
    got = wb.attribution_patch(remote, ds, metric=wb.logit_diff(), site=["resid_pre", "head"], align="right")
    assert len(requests) == before + 1  # every example's forward and backward in one request
    want = wb.attribution_patch(local, ds, metric=wb.logit_diff(), site=["resid_pre", "head"], align="right")
    for s in ("resid_pre", "head"):
        _same(got[s], want[s], f"attribution {s}")
    edits = [wb.Edit(wb.Cell("resid_pre", 4, position=-1)), wb.Edit(wb.Cell("mlp_out", 10), "zero")]
    before = len(requests)
    v = wb.intervene(remote, ds, edits, metric=wb.logit_diff(), align="right")
    assert len(requests) == before + 1
    _same(v, wb.intervene(local, ds, edits, metric=wb.logit_diff(), align="right"), "intervene")
