"""The lens of an intervened run agrees with patch/ablate: its last row at the last position is that run's
prediction (two code paths: the lens trace and the batched engine)."""

from __future__ import annotations

import numpy as np
import pytest

import workbench as wb
from workbench.testing import tiny_model

CLEAN = "The Eiffel Tower is located in the city of"
CORRUPT = "The Colosseum Tower is located in the city of"  # same token count in the tiny tokenizer
METRIC = wb.logit_diff(" Paris", " Rome")


@pytest.fixture(scope="module", params=["llama", "gpt2", "gpt_neox"])
def model(request):
    return tiny_model(request.param)


def _last(lens: wb.LensResult) -> tuple[np.ndarray, np.ndarray]:
    return lens.top_ids[-1, -1], lens.top_probs[-1, -1]


@pytest.mark.parametrize(
    ("site", "layer", "position", "head", "src_layer", "src_pos"),
    [
        ("resid_pre", 1, 2, None, None, None),
        ("mlp_out", 2, None, None, None, None),
        ("head", 1, 3, 1, None, None),
        ("resid_pre", 2, 5, None, 0, 2),  # a drag: another layer and position of the clean run
        ("attn_out", 1, 4, None, None, 1),
    ],
)
def test_patched_lens_ends_in_the_patched_prediction(
    model, site, layer, position, head, src_layer, src_pos
) -> None:
    value = wb.patch(
        model,
        CLEAN,
        CORRUPT,
        metric=METRIC,
        site=site,
        layer=layer,
        position=position,
        head=head,
        source_layer=src_layer,
        source_position=src_pos,
    )
    iv = wb.Intervention(
        site,
        layer,
        position,
        head,
        kind="patch",
        source=CLEAN,
        source_layer=src_layer,
        source_position=src_pos,
    )
    ids, probs = _last(wb.logit_lens(model, CORRUPT, intervention=iv))
    np.testing.assert_array_equal(ids, value.top_ids)
    np.testing.assert_allclose(probs, value.top_probs, atol=1e-5)
    plain_ids, plain_probs = _last(wb.logit_lens(model, CORRUPT))
    assert not np.allclose(plain_probs, probs, atol=1e-6), (
        "the intervention must change something to test anything"
    )


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_ablated_lens_ends_in_the_ablated_prediction(model, method) -> None:
    reference = CORRUPT if method == "resample" else None
    value = wb.ablate(
        model, CLEAN, metric=METRIC, site="mlp_out", layer=1, position=3, method=method, reference=reference
    )
    iv = wb.Intervention("mlp_out", 1, 3, kind=method, source=reference)
    ids, probs = _last(wb.logit_lens(model, CLEAN, intervention=iv))
    np.testing.assert_array_equal(ids, value.top_ids)
    np.testing.assert_allclose(probs, value.top_probs, atol=1e-5)
