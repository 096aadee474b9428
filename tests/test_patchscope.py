"""wb.patchscope against an independent plain-hook reference (tests/reference.py), its known identities,
fast path vs traced, generations, to_code and bad input (issue 15)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench as wb
from tests import reference as R
from tests.conftest import CLEAN, assert_close, assert_same_topk, run_code, tiny
from workbench.engine import fast
from workbench.errors import WorkbenchError

FAMILIES = ["gpt2", "llama", "gpt_neox"]
IDENTITY = "cat -> cat\n1135 -> 1135\nhello -> hello\n?"
SHORT = "The Eiffel Tower is"


def _same(ps, ref, what):
    assert ps.top_ids.dtype == np.int32 and ps.top_ids.shape == ref["top_ids"].shape
    assert_same_topk(ps.top_ids, ps.top_probs, ref["top_ids"], ref["top_probs"], what=what)
    assert_close(ps.entropy, ref["entropy"], what=f"{what} entropy")


@pytest.mark.parametrize("family", FAMILIES)
def test_patchscope_equals_plain_hooks(family):
    model = tiny(family)
    ps = wb.patchscope(model, CLEAN, progress=False)
    ref = R.reference_patchscope(model.hf, model.tokenizer, CLEAN, IDENTITY)
    L, T = model.n_layers, model.to_tokens(CLEAN).shape[1]
    assert ps.top_ids.shape == (L, T, 5) and ps.entropy.shape == (L, T)
    _same(ps, ref, f"{family} patchscope")
    assert np.isnan(ps.kl).all() and ps.kl.shape == (L, T)
    assert ps.tokens == model.to_str_tokens(CLEAN)
    assert ps.top_tokens[1][2] == model.str_tokens(ps.top_ids[1, 2].tolist())
    assert ps.target_position == len(ps.target_tokens) - 1 and ps.target_prompt == IDENTITY


@pytest.mark.parametrize("family", FAMILIES)
def test_patchscope_other_layer_and_position_vs_plain_hooks(family):
    model = tiny(family)
    kw = dict(target_position=-3, target_layer=1, layers=[0, 2], positions=[1, -1], top_k=4)
    ps = wb.patchscope(model, CLEAN, "one two three four five", progress=False, **kw)
    ref = R.reference_patchscope(model.hf, model.tokenizer, CLEAN, "one two three four five", **kw)
    assert ps.layer_ids == [0, 2] and ps.positions == [1, 8]
    _same(ps, ref, f"{family} patchscope target_layer=1")
    # .prob / .rank of a token: the patched runs again, against the reference's full distribution
    tid = int(ref["top_ids"][0, 0, 0])
    p = ps.prob(tid)
    assert p.shape == (2, 2)
    assert_close(p[0, 0], ref["top_probs"][0, 0, 0], what="prob(top-1)")
    assert ps.rank(tid)[0, 0] == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_patchscope_is_the_models_own_next_token(family):
    """Target prompt = the prompt itself, at its last position, same layer: nothing changes, so every
    layer's row (in particular the last layer's) is the model's own next-token distribution."""
    model = tiny(family)
    ids = model.to_tokens(CLEAN)
    ps = wb.patchscope(model, CLEAN, CLEAN, target_position=-1, positions=[-1], top_k=5, progress=False)
    own = torch.softmax(R.run_last_logits(model.hf, ids)[0], -1)
    top = own.topk(5)
    logp = torch.log_softmax(R.run_last_logits(model.hf, ids)[0], -1)
    for row in range(model.n_layers):
        assert_same_topk(ps.top_ids[row, 0], ps.top_probs[row, 0], top.indices.numpy(), top.values.numpy())
        assert_close(ps.entropy[row, 0], float(-(logp.exp() * logp).sum()), what="identity entropy")


@pytest.mark.parametrize("family", FAMILIES)
def test_patchscope_into_last_layer_is_the_logit_lens(family):
    """Each state written into the last block's output at the last position is decoded by the final norm
    and unembedding: the logit lens of that state."""
    model = tiny(family)
    ps = wb.patchscope(model, CLEAN, target_layer=model.n_layers - 1, progress=False)
    lens = wb.logit_lens(model, CLEAN, progress=False)
    assert_same_topk(ps.top_ids, ps.top_probs, lens.top_ids, lens.top_probs, what="patchscope vs lens")
    assert_close(ps.entropy, lens.entropy, what="patchscope vs lens entropy")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_fast_path_equals_traced(family):
    model = tiny(family)
    kw = dict(target_position=-2, layers=[0, 1, 2], positions=[0, 4, 8], max_new_tokens=3, progress=False)
    a = wb.patchscope(model, CLEAN, **kw)
    with fast.disabled():
        b = wb.patchscope(model, CLEAN, **kw)
    assert_same_topk(a.top_ids, a.top_probs, b.top_ids, b.top_probs, what="fast vs traced")
    assert_close(a.entropy, b.entropy, what="fast vs traced entropy")
    assert a.generations == b.generations


@pytest.mark.parametrize("family", FAMILIES)
def test_generations_equal_hf_generate_with_a_prompt_pass_hook(family):
    model = tiny(family)
    hf, tok = model.hf, model.tokenizer
    ps = wb.patchscope(model, SHORT, layers=[0, 2], positions=[1, -1], max_new_tokens=4, progress=False)
    ids, target = R.tokens(tok, SHORT), R.tokens(tok, IDENTITY)
    states = R.capture(hf, ids, "resid_post", [0, 2])
    for i, layer in enumerate([0, 2]):
        for j, t in enumerate([1, ids.shape[1] - 1]):

            def overwrite(_mod, _args, out, state=states[layer][t]):
                h = R._first(out)
                if h.shape[1] == target.shape[1]:  # the prompt pass only
                    h = h.clone()
                    h[:, -1] = state
                    return R._replace_first(out, h)
                return None

            handle = R.blocks(hf)[layer].register_forward_hook(overwrite)
            try:
                with torch.no_grad():
                    out = hf.generate(
                        input_ids=target,
                        attention_mask=torch.ones_like(target),
                        max_new_tokens=4,
                        do_sample=False,
                        pad_token_id=tok.pad_token_id,
                    )
            finally:
                handle.remove()
            new = out[0, target.shape[1] :]
            assert ps.generations[i][j] == tok.decode(new, skip_special_tokens=True), (family, layer, t)
            assert int(new[0]) == int(ps.top_ids[i, j, 0])  # the first generated token is the top-1


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_to_code_reproduces(family):
    model = tiny(family)
    ps = wb.patchscope(
        model, SHORT, target_position=-2, layers=[0, 2], positions=[0, -1], max_new_tokens=3, progress=False
    )
    ns = run_code(ps.to_code())
    ids, probs, ent = ns["result"]
    assert_same_topk(ids, probs, ps.top_ids, ps.top_probs, what="to_code")
    assert_close(ent, ps.entropy, what="to_code entropy")
    assert ns["generations"] == ps.generations
    full = wb.patchscope(model, SHORT, target_layer=1, top_k=3, progress=False)
    ids, probs, ent = run_code(full.to_code())["result"]
    assert_same_topk(ids, probs, full.top_ids, full.top_probs, what="to_code target_layer")
    assert_close(ent, full.entropy, what="to_code target_layer entropy")


def test_views_and_repr():
    model = tiny("gpt2")
    ps = wb.patchscope(model, CLEAN, layers=[1, 2], positions=[2, 3], progress=False)
    text = repr(ps)
    assert "PatchscopeResult [2 layers x 2 positions]" in text and "'?'" in text
    fig = ps.plot()
    assert list(fig.layout.yaxis.ticktext) == ["1", "2"]
    frame = ps.to_frame()
    assert sorted(set(frame["layer"])) == [1, 2] and sorted(set(frame["position"])) == [2, 3]
    assert len(ps.to_frame(what="topk")) == 2 * 2 * 5
    assert ps.plot(what="rank").data  # ranks of the last layer's top token: another pass, through .rank
    assert ps.target_top_ids.shape == (5,)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (dict(target_prompt=""), "non-empty"),
        (dict(target_prompt="   "), "non-empty"),
        (dict(target_prompt=None), "non-empty"),
        (dict(target_prompt="a b", target_position=5), "outside the target prompt"),
        (dict(target_prompt="a b", target_position=-9), "outside the target prompt"),
        (dict(top_k=0), "top_k"),
        (dict(top_k=10**6), "top_k"),
        (dict(layers=[]), "empty"),
        (dict(layers=[99]), "layer"),
        (dict(positions=[40]), "position"),
        (dict(target_layer=7), "target_layer"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(layers="all"), "list of integers"),
    ],
)
def test_bad_input(kwargs, words):
    model = tiny("gpt2")
    with pytest.raises(WorkbenchError, match=words):
        wb.patchscope(model, SHORT, progress=False, **kwargs)


@pytest.mark.embedded
def test_embedded_model_vs_plain_hooks():
    model = wb.load()
    kw = dict(layers=[0, 14, 29], positions=[3, -1], top_k=5)
    ps = wb.patchscope(model, CLEAN, progress=False, **kw)
    ref = R.reference_patchscope(model.hf, model.tokenizer, CLEAN, IDENTITY, **kw)
    _same(ps, ref, "embedded patchscope")
    other = dict(kw, target_layer=3, target_position=-2, layers=[10])
    ps = wb.patchscope(model, CLEAN, progress=False, **other)
    ref = R.reference_patchscope(model.hf, model.tokenizer, CLEAN, IDENTITY, **other)
    _same(ps, ref, "embedded patchscope target_layer=3")
