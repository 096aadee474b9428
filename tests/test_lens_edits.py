"""The logit lens of a run with several edits applied jointly (`wb.logit_lens(model, prompt, edits=[...],
source=)`), against the independent hook reference (tests/reference.py `reference_joint_lens`), fast vs
traced, and its generated code executed. Numbers: float32, max abs diff <= 1e-4."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import workbench as wb
from tests import reference as R
from tests.conftest import CLEAN, CORRUPT, FOIL, TARGET, assert_close, assert_same_topk, run_code, tiny
from tests.test_interventions import joint_cells
from workbench.engine import fast
from workbench.errors import WorkbenchError

FAMILIES = (
    "gpt2",
    "llama",
    "gpt_neox",
    "gemma2",
    "phi3",
    "qwen3",
)  # absolute/rotary, fused qkv, softcap, GQA


def edits_of(model) -> tuple[list[wb.Edit], list[tuple]]:
    """Edits of every kind at once (copied from the source run, zero, mean, set, add), and the same edits as
    the reference's tuples."""
    cells = joint_cells(model)
    g = torch.Generator().manual_seed(0)
    d = model.d_model
    vec, add = torch.randn(d, generator=g), torch.randn(d, generator=g)
    edits = [wb.Edit(c, "source") for c in cells]
    edits += [
        wb.Edit(wb.Cell("mlp_out", 0, position=4), "zero"),
        wb.Edit(wb.Cell("attn_out", 2, position=5), "mean"),  # the prompt's own (unedited) mean
        wb.Edit(wb.Cell("resid_post", 1, position=1), vec),
        wb.Edit(wb.Cell("resid_pre", 2, position=7), wb.Add(add, scale=2.0)),
    ]
    ref = [(c.site, c.layer, c.position, c.head, "source", None) for c in cells]
    ref += [
        ("mlp_out", 0, 4, None, "zero", None),
        ("attn_out", 2, 5, None, "mean", None),
        ("resid_post", 1, 1, None, "set", vec),
        ("resid_pre", 2, 7, None, "add", 2.0 * add),
    ]
    return edits, ref


def check_lens(lens, ref, what: str) -> None:
    assert_same_topk(lens.top_ids, lens.top_probs, ref["top_ids"], ref["top_probs"], what=what)
    assert_close(lens.entropy, ref["entropy"], what=f"{what} entropy")
    assert_close(lens.kl, ref["kl"], what=f"{what} kl")


@pytest.mark.parametrize("family", FAMILIES)
def test_lens_of_joint_edits_equals_the_reference(family):
    model = tiny(family)
    edits, ref_edits = edits_of(model)
    tid = model.token_id(TARGET)
    lens = wb.logit_lens(model, CORRUPT, edits=edits, source=CLEAN, tokens=[TARGET])
    ref = R.reference_joint_lens(model.hf, model.tokenizer, CORRUPT, ref_edits, source=CLEAN)
    check_lens(lens, ref, f"{family} lens of joint edits")
    assert_close(lens.prob(TARGET), R.lens_prob(ref, tid), what=f"{family} prob(target)")
    plain = R.reference_logit_lens(model.hf, model.tokenizer, CORRUPT)
    assert np.abs(lens.top_probs - plain["top_probs"]).max() > 1e-3, "the edits changed nothing"
    with fast.disabled():
        traced = wb.logit_lens(model, CORRUPT, edits=edits, source=CLEAN, tokens=[TARGET])
    check_lens(traced, ref, f"{family} traced lens of joint edits")
    assert_close(traced.prob(TARGET), lens.prob(TARGET), what=f"{family} fast vs traced")
    ids, probs = run_code(lens.to_code())["result"]
    assert_same_topk(ids, probs, ref["top_ids"], ref["top_probs"], what=f"{family} to_code")
    # the decoded run is intervene's: its last row is the edited run's next-token prediction
    v = wb.intervene(model, CORRUPT, edits=edits, source=CLEAN, top_k=5)
    assert_same_topk(lens.top_ids[-1, -1], lens.top_probs[-1, -1], v.top_ids, v.top_probs, what="intervene")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_pattern_edits_in_the_lens_fast_traced_and_code(family):
    """Pattern edits (which the hook reference does not do) through the traced path and the generated code;
    with them, the lens's last row is still intervene's prediction."""
    model = tiny(family)
    edits = [
        wb.Edit(wb.Cell("pattern", 2, position=8, head=3), "source"),
        wb.Edit(wb.Cell("head", 1, head=2), "zero"),
    ]
    lens = wb.logit_lens(model, CORRUPT, edits=edits, source=CLEAN)
    with fast.disabled():
        traced = wb.logit_lens(model, CORRUPT, edits=edits, source=CLEAN)
    assert_same_topk(lens.top_ids, lens.top_probs, traced.top_ids, traced.top_probs, what=f"{family} traced")
    ids, probs = run_code(lens.to_code())["result"]
    assert_same_topk(ids, probs, lens.top_ids, lens.top_probs, what=f"{family} to_code")
    v = wb.intervene(model, CORRUPT, edits=edits, source=CLEAN, top_k=5)
    assert_same_topk(lens.top_ids[-1, -1], lens.top_probs[-1, -1], v.top_ids, v.top_probs, what="intervene")


def test_a_joint_patch_lens_is_the_lens_of_wb_patch_cells():
    """The lens the PatchView shows after "Apply set" decodes the run wb.patch(cells=) scores."""
    model = tiny("llama")
    cells = joint_cells(model)
    v = wb.patch(model, CLEAN, CORRUPT, metric=wb.logit_diff(TARGET, FOIL), cells=cells)
    lens = wb.logit_lens(model, CORRUPT, edits=[wb.Edit(c, "source") for c in cells], source=CLEAN)
    assert_same_topk(lens.top_ids[-1, -1], lens.top_probs[-1, -1], v.top_ids, v.top_probs, what="patch")
    one = wb.logit_lens(model, CORRUPT, edits=[wb.Edit(cells[0], "source")], source=CLEAN)
    c = cells[0]
    iv = wb.Intervention(c.site, c.layer, position=c.position, head=c.head, source=CLEAN)
    single = wb.logit_lens(model, CORRUPT, intervention=iv)
    assert_same_topk(one.top_ids, one.top_probs, single.top_ids, single.top_probs, what="one edit")


def test_bad_edits_say_what_to_do():
    model = tiny("llama")
    e = wb.Edit(wb.Cell("head", 1, head=2), "source")
    iv = wb.Intervention("resid_pre", 1, position=3, source=CLEAN)
    cases = [
        (dict(edits=[e]), "source="),
        (dict(edits=[e], source=CLEAN, intervention=iv), "not both"),
        (dict(source=CLEAN), "needs edits="),
        (dict(edits=[]), "non-empty list"),
        (dict(edits=[wb.Cell("head", 1, head=2)]), "wb.Edit(cell, value)"),
        (dict(edits=[wb.Edit(wb.Cell("head", 1, head=99), "zero")]), "head"),
        (dict(edits=[e], source="The Eiffel Tower"), "same number of tokens"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(WorkbenchError, match=None) as info:
            wb.logit_lens(model, CORRUPT, **kwargs)
        assert needle in str(info.value), (kwargs, str(info.value))
    assert wb.logit_lens(model, CORRUPT, edits=e, source=CLEAN).options["edits"] == [
        ("head", 1, None, 2, "source")
    ]


def test_the_result_cache_keys_the_edits(tmp_path):
    model = tiny("llama")
    a = [wb.Edit(wb.Cell("head", 1, head=2), "zero")]
    b = [wb.Edit(wb.Cell("head", 1, head=1), "zero")]
    with wb.cache(tmp_path / "r") as store:
        first = wb.logit_lens(model, CORRUPT, edits=a)
        other = wb.logit_lens(model, CORRUPT, edits=b)
        again = wb.logit_lens(model, CORRUPT, edits=a)
        assert (store.hits, store.misses) == (1, 2)
    assert np.array_equal(again.top_probs, first.top_probs)
    assert not np.array_equal(other.top_probs, first.top_probs)
    assert again.to_code() == first.to_code()


@pytest.mark.embedded
def test_embedded_lens_of_joint_edits():
    model = wb.load()
    clean, corrupt = "The Eiffel Tower is located in the city of", "The Colosseum is located in the city of"
    cells = [
        wb.Cell("head", 14, head=3),
        wb.Cell("mlp_out", 5, position=3),
        wb.Cell("resid_pre", 20, position=9),
        wb.Cell("k", 12, head=2),  # a key-value head (3 of them, 9 query heads)
    ]
    edits = [wb.Edit(c, "source") for c in cells] + [wb.Edit(wb.Cell("attn_out", 25, position=9), "mean")]
    ref_edits = [(c.site, c.layer, c.position, c.head, "source", None) for c in cells]
    ref_edits.append(("attn_out", 25, 9, None, "mean", None))
    ref = R.reference_joint_lens(model.hf, model.tokenizer, corrupt, ref_edits, source=clean)
    # KL reaches ~25 nats in early layers, where float32 itself is ~1e-5 relative off (as in
    # test_embedded_model's lens test): KL is checked against the reference on a float64 copy, with a
    # relative allowance on top of ATOL; everything else against the float32 reference at 1e-4.
    hf64 = copy.deepcopy(model.hf).double()
    try:
        ref64 = R.reference_joint_lens(hf64, model.tokenizer, corrupt, ref_edits, source=clean)
    finally:
        del hf64
    lens = wb.logit_lens(model, corrupt, edits=edits, source=clean)
    with fast.disabled():
        traced = wb.logit_lens(model, corrupt, edits=edits, source=clean)
    for got, what in ((lens, "embedded lens of joint edits"), (traced, "embedded traced lens")):
        assert_same_topk(got.top_ids, got.top_probs, ref["top_ids"], ref["top_probs"], what=what)
        assert_close(got.entropy, ref["entropy"], what=f"{what} entropy")
        assert_close(got.kl, ref64["kl"], what=f"{what} kl vs float64", rtol=5e-6)
        assert_close(got.top_probs, ref64["top_probs"], what=f"{what} top-5 probs vs float64")
    ids, probs = run_code(lens.to_code())["result"]  # loads the GGUF: about a minute
    assert_same_topk(ids, probs, ref["top_ids"], ref["top_probs"], what="embedded to_code")
