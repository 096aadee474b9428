"""Every engine op against the independent hook-based reference (tests/reference.py), on tiny models.

Numbers: max abs diff <= 1e-4 in float32. Families: all of workbench.testing.FAMILIES (the brief's
minimum is gpt2, llama, gpt_neox, gemma2, phi).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import workbench as wb
from tests import reference as R
from tests.conftest import (
    ATOL,
    CLEAN,
    CORRUPT,
    CORRUPT_SHORT,
    FOIL,
    OTHER,
    TARGET,
    assert_close,
    assert_same_topk,
    run_code,
    tiny,
)
from workbench.testing import FAMILIES, tiny_hf_model, tiny_tokenizer

CORE = ("gpt2", "llama", "gpt_neox", "gemma2", "phi")
RESID_SITES = ("resid_pre", "resid_post", "attn_out", "mlp_out")


def ref_metric(model):
    return R.logit_diff(model.tokenizer, TARGET, FOIL)


def ref_corrupt(model):
    ids = R.tokens(model.tokenizer, CORRUPT)
    return ref_metric(model)(R.run_logits(model.hf, ids)[:, -1])[0]


def metric():
    return wb.logit_diff(TARGET, FOIL)


def norm_atol(clean: float, corrupt: float) -> float:
    """Tolerance for normalized effects: ATOL on the raw metric, scaled by the baseline gap."""
    return ATOL / max(abs(clean - corrupt), 1e-6) + ATOL


# =============================================================================================
# The reference itself (no engine involved): checks against plain HF forwards.


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_is_self_consistent(family):
    hf, tok = tiny_hf_model(family), tiny_tokenizer()
    m = R.logit_diff(tok, TARGET, FOIL)
    ids = R.tokens(tok, CLEAN)
    L = R.n_layers(hf)
    # lens last row is HF's own next-token distribution
    lens = R.reference_logit_lens(hf, tok, CLEAN)
    assert_close(lens["probs"][-1], torch.softmax(R.run_logits(hf, ids)[0], -1), 1e-6, "lens last row")
    # residual decomposition: resid_post = resid_pre + s * (attn_out + mlp_out) (s = 1 but for Granite's
    # residual_multiplier); resid_pre[l+1] = resid_post[l]
    pre, post = R.capture(hf, ids, "resid_pre"), R.capture(hf, ids, "resid_post")
    attn, mlp = R.capture(hf, ids, "attn_out"), R.capture(hf, ids, "mlp_out")
    s = R.residual_multiplier(hf)
    for layer in range(L):
        total = pre[layer] + s * (attn[layer] + mlp[layer])
        assert_close(total, post[layer], 1e-5, f"decomposition L{layer}")
        if layer + 1 < L:
            assert_close(pre[layer + 1], post[layer], 0, f"resid_pre[{layer + 1}] == resid_post[{layer}]")
    # patching the clean activation into the clean run changes nothing, at every site
    base = R.reference_patch(hf, tok, CLEAN, CORRUPT, m, "resid_pre", 0)
    for site in R.SITES:
        for pos, head in ((None, None), (3, None), (3, 1), (None, 1)):
            if head is not None and site != "head":
                continue
            v = R.reference_patch(hf, tok, CLEAN, CLEAN, m, site, 1, position=pos, head=head)["value"]
            assert abs(v - base["clean"]) < 1e-6
    # patching a whole residual layer restores the clean metric
    for layer in range(L):
        for site in ("resid_pre", "resid_post"):
            assert (
                abs(R.reference_patch(hf, tok, CLEAN, CORRUPT, m, site, layer)["value"] - base["clean"])
                < 1e-5
            )
    # all heads at once == the attention output
    for layer in range(L):
        a = R.reference_patch(hf, tok, CLEAN, CORRUPT, m, "head", layer, position=4)["value"]
        b = R.reference_patch(hf, tok, CLEAN, CORRUPT, m, "attn_out", layer, position=4)["value"]
        assert abs(a - b) < 1e-5
    # attribution matches a finite difference along (clean - corrupt)
    attr = R.reference_attribution_patch(hf, tok, CLEAN, CORRUPT, m, "resid_pre")
    x_ids = R.tokens(tok, CORRUPT)
    cl, co = R.capture(hf, ids, "resid_pre", [1])[1], R.capture(hf, x_ids, "resid_pre", [1])[1]
    eps = 1e-3
    with R.hooks(hf, [("resid_pre", 1, R._setter(hf, "resid_pre", 2, None, co[2] + eps * (cl[2] - co[2])))]):
        fd = (float(m(R.run_logits(hf, x_ids)[:, -1])[0]) - base["corrupt"]) / eps
    assert abs(fd - float(attr[1, 2])) < 2e-3 * max(1.0, abs(fd))
    # attention weights = HF's output_attentions
    att = R.reference_attention(hf, tok, CLEAN)
    with torch.no_grad():
        oa = hf(input_ids=ids, output_attentions=True).attentions
    assert_close(att, torch.stack([a[0] for a in oa]), 1e-6, "attention")
    # the batched sweep (used on the embedded model for speed) equals the plain loop
    for site, by_pos in (("resid_pre", False), ("head", True)):
        loop = R.reference_patch_sweep(hf, tok, CLEAN, CORRUPT, m, site, by_pos)["values"]
        batched = R.reference_patch_sweep(hf, tok, CLEAN, CORRUPT, m, site, by_pos, batch=True)["values"]
        assert_close(batched, loop, 2e-6, f"batched {site} sweep")
        sub = R.reference_patch_sweep(hf, tok, CLEAN, CORRUPT, m, site, by_pos, batch=True, layers=[2, 0])[
            "values"
        ]
        assert_close(sub, loop[[2, 0]], 2e-6, f"layer subset {site} sweep")
    # steering with a zero vector is plain greedy generation
    assert (
        R.reference_steer(hf, tok, CLEAN, None, 1, max_new_tokens=4)["ids"]
        == R.reference_steer(hf, tok, CLEAN, torch.zeros(hf.config.hidden_size), 1, max_new_tokens=4)["ids"]
    )


# =============================================================================================
# Model facts


@pytest.mark.parametrize("family", FAMILIES)
def test_model_facts(family):
    model = tiny(family)
    hf = model.hf
    assert model.n_layers == R.n_layers(hf)
    assert model.n_heads == R.n_heads(hf)
    assert model.d_head == R.d_head(hf)
    assert model.d_model == hf.config.hidden_size
    assert model.vocab_size == hf.get_output_embeddings().weight.shape[0]
    ids = R.tokens(model.tokenizer, CLEAN)
    assert torch.equal(model.to_tokens(CLEAN), ids)
    assert model.to_str_tokens(CLEAN) == [model.tokenizer.decode([i]) for i in ids[0].tolist()]
    assert hasattr(model.lock, "acquire")


# =============================================================================================
# Patching


@pytest.mark.parametrize("site", RESID_SITES)
@pytest.mark.parametrize("family", FAMILIES)
def test_patch_sweep_sites(family, site):
    model = tiny(family)
    ref = R.reference_patch_sweep(model.hf, model.tokenizer, CLEAN, CORRUPT, ref_metric(model), site)
    sweep = wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site=site)
    T = model.to_tokens(CORRUPT).shape[1]
    assert sweep.values.shape == (model.n_layers, T)
    assert sweep.values.dtype == np.float32
    assert tuple(sweep.axes) == ("layer", "position")
    assert list(sweep.tokens) == model.to_str_tokens(CORRUPT)
    assert abs(sweep.clean - ref["clean"]) <= ATOL and abs(sweep.corrupt - ref["corrupt"]) <= ATOL
    assert_close(sweep.values, ref["values"], what=f"{family} {site} sweep values")
    assert_close(
        sweep.normalized,
        ref["normalized"],
        norm_atol(ref["clean"], ref["corrupt"]),
        f"{family} {site} normalized",
    )


@pytest.mark.parametrize("by_position", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_patch_sweep_heads(family, by_position):
    model = tiny(family)
    ref = R.reference_patch_sweep(
        model.hf, model.tokenizer, CLEAN, CORRUPT, ref_metric(model), "head", by_position=by_position
    )
    sweep = wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site="head", by_position=by_position)
    T = model.to_tokens(CORRUPT).shape[1]
    if by_position:
        assert sweep.values.shape == (model.n_layers, T, model.n_heads)
        assert tuple(sweep.axes) == ("layer", "position", "head")
    else:
        assert sweep.values.shape == (model.n_layers, model.n_heads)
        assert tuple(sweep.axes) == ("layer", "head")
    assert_close(sweep.values, ref["values"], what=f"{family} head sweep by_position={by_position}")
    assert abs(sweep.clean - ref["clean"]) <= ATOL and abs(sweep.corrupt - ref["corrupt"]) <= ATOL


PATCH_CELLS = [
    ("resid_pre", 0, 1, None),
    ("resid_pre", 2, None, None),
    ("resid_post", 1, 8, None),
    ("attn_out", 1, 2, None),
    ("attn_out", 2, None, None),
    ("mlp_out", 0, 1, None),
    ("mlp_out", 2, 8, None),
    ("head", 1, 8, 1),
    ("head", 2, None, 3),
    ("head", 0, 2, 3),
]


@pytest.mark.parametrize("site,layer,position,head", PATCH_CELLS)
@pytest.mark.parametrize("family", CORE)
def test_patch_single(family, site, layer, position, head):
    model = tiny(family)
    ref = R.reference_patch(
        model.hf,
        model.tokenizer,
        CLEAN,
        CORRUPT,
        ref_metric(model),
        site,
        layer,
        position=position,
        head=head,
    )
    v = wb.patch(model, CLEAN, CORRUPT, metric=metric(), site=site, layer=layer, position=position, head=head)
    assert isinstance(v, float)
    what = f"{family} patch {site} L{layer} p{position} h{head}"
    assert_close(float(v), ref["value"], what=what)
    assert_close(v.clean, ref["clean"], what=what + " clean")
    assert_close(v.corrupt, ref["corrupt"], what=what + " corrupt")
    k = len(v.top_ids)
    assert_same_topk(v.top_ids, v.top_probs, ref["top_ids"][:k], ref["top_probs"][:k], what=what)
    assert list(v.top_tokens) == [model.tokenizer.decode([int(i)]) for i in v.top_ids]


def test_patch_head_without_index():
    """site='head' with head=None: the engine refuses and points to attn_out (same numbers as all heads)."""
    model = tiny("llama")
    with pytest.raises(wb.WorkbenchError) as info:
        wb.patch(model, CLEAN, CORRUPT, metric=metric(), site="head", layer=0, position=2)
    assert "attn_out" in str(info.value)
    # and attn_out really is "all heads at once" (reference: patching every head slice)
    all_heads = R.reference_patch(
        model.hf, model.tokenizer, CLEAN, CORRUPT, ref_metric(model), "head", 0, position=2
    )
    v = wb.patch(model, CLEAN, CORRUPT, metric=metric(), site="attn_out", layer=0, position=2)
    assert_close(float(v), all_heads["value"], what="attn_out vs all heads")


DRAG_CELLS = [
    ("resid_pre", 2, 5, 1, 3),  # (site, layer, position, source_layer, source_position)
    ("resid_pre", 1, 8, None, 1),
    ("resid_post", 0, 8, 2, None),
    ("attn_out", 2, 8, 1, 4),
    ("mlp_out", 1, 6, None, 2),
]


@pytest.mark.parametrize("site,layer,position,source_layer,source_position", DRAG_CELLS)
@pytest.mark.parametrize("family", CORE)
def test_patch_drag_from_other_cell(family, site, layer, position, source_layer, source_position):
    model = tiny(family)
    ref = R.reference_patch(
        model.hf,
        model.tokenizer,
        CLEAN,
        CORRUPT,
        ref_metric(model),
        site,
        layer,
        position=position,
        source_layer=source_layer,
        source_position=source_position,
    )
    v = wb.patch(
        model,
        CLEAN,
        CORRUPT,
        metric=metric(),
        site=site,
        layer=layer,
        position=position,
        source_layer=source_layer,
        source_position=source_position,
    )
    assert_close(
        float(v),
        ref["value"],
        what=f"{family} drag {site} L{source_layer}p{source_position}->L{layer}p{position}",
    )


@pytest.mark.parametrize("family", ("llama", "gpt2"))
def test_patch_other_metrics(family):
    model = tiny(family)
    tok = model.tokenizer
    for ours, theirs in (
        (wb.prob(TARGET), R.prob(tok, TARGET)),
        (wb.logprob(TARGET), R.logprob(tok, TARGET)),
        (lambda logits: logits[:, 5] * 2.0 - logits[:, 7], lambda logits: logits[:, 5] * 2.0 - logits[:, 7]),
    ):
        ref = R.reference_patch(model.hf, tok, CLEAN, CORRUPT, theirs, "mlp_out", 1, position=8)
        v = wb.patch(model, CLEAN, CORRUPT, metric=ours, site="mlp_out", layer=1, position=8)
        assert_close(float(v), ref["value"], what=f"{family} metric {ours!r}")
        ref = R.reference_patch_sweep(model.hf, tok, CLEAN, CORRUPT, theirs, "resid_pre")
        sweep = wb.patch_sweep(model, CLEAN, CORRUPT, metric=ours, site="resid_pre")
        assert_close(sweep.values, ref["values"], what=f"{family} sweep metric {ours!r}")
    # KL(clean || patched) of the next-token distributions
    clean_last = R.run_logits(model.hf, R.tokens(tok, CLEAN))[:, -1]

    def kl(logits):
        lc, lp = torch.log_softmax(clean_last, -1), torch.log_softmax(logits.float(), -1)
        return (lc.exp() * (lc - lp)).sum(-1)

    ref = R.reference_patch_sweep(model.hf, tok, CLEAN, CORRUPT, kl, "attn_out")
    sweep = wb.patch_sweep(model, CLEAN, CORRUPT, metric=wb.kl_to_clean(), site="attn_out")
    assert_close(sweep.values, ref["values"], what=f"{family} kl_to_clean sweep")
    assert abs(sweep.clean) < 1e-5


@pytest.mark.parametrize("family", ("llama", "phi"))
def test_patch_negative_position_and_normalized(family):
    model = tiny(family)
    T = model.to_tokens(CORRUPT).shape[1]
    a = wb.patch(model, CLEAN, CORRUPT, metric=metric(), site="resid_pre", layer=1, position=-1)
    b = wb.patch(model, CLEAN, CORRUPT, metric=metric(), site="resid_pre", layer=1, position=T - 1)
    assert_close(float(a), float(b), what="position=-1 is the last token")
    ref = R.reference_patch(
        model.hf, model.tokenizer, CLEAN, CORRUPT, ref_metric(model), "resid_pre", 1, T - 1
    )
    expected = (ref["value"] - ref["corrupt"]) / (ref["clean"] - ref["corrupt"])
    assert_close(b.normalized, expected, norm_atol(ref["clean"], ref["corrupt"]), "Value.normalized")


# =============================================================================================
# Ablation

ABLATE_CELLS = [
    ("mlp_out", 1, None, None),
    ("mlp_out", 0, 3, None),
    ("attn_out", 2, 8, None),
    ("resid_pre", 1, 4, None),
    ("resid_post", 2, None, None),
    ("head", 1, None, 2),
    ("head", 2, 8, 0),
]


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
@pytest.mark.parametrize("family", CORE)
def test_ablate(family, method):
    model = tiny(family)
    reference = OTHER if method == "resample" else None
    for site, layer, position, head in ABLATE_CELLS:
        ref = R.reference_ablate(
            model.hf,
            model.tokenizer,
            CLEAN,
            ref_metric(model),
            site,
            layer,
            position=position,
            head=head,
            method=method,
            reference=reference,
        )
        v = wb.ablate(
            model,
            CLEAN,
            metric=metric(),
            site=site,
            layer=layer,
            position=position,
            head=head,
            method=method,
            reference=reference,
        )
        what = f"{family} ablate {method} {site} L{layer} p{position} h{head}"
        assert_close(float(v), ref["value"], what=what)
        assert_close(v.clean, ref["clean"], what=what + " clean (unablated)")
        k = len(v.top_ids)
        assert_same_topk(v.top_ids, v.top_probs, ref["top_ids"][:k], ref["top_probs"][:k], what=what)


@pytest.mark.parametrize("family", ("llama", "gpt_neox"))
def test_ablate_with_reference_prompts(family):
    """mean over the tokens of reference prompts; resample over several prompts averages the metric."""
    model = tiny(family)
    hf, tok, m = model.hf, model.tokenizer, ref_metric(model)
    refs = [OTHER, CORRUPT_SHORT]
    ref = R.reference_ablate(hf, tok, CLEAN, m, "mlp_out", 1, position=8, method="mean", reference=refs)
    v = wb.ablate(
        model, CLEAN, metric=metric(), site="mlp_out", layer=1, position=8, method="mean", reference=refs
    )
    assert_close(float(v), ref["value"], what="mean over reference prompts")
    same_len = [OTHER, CORRUPT]
    per = [
        R.reference_ablate(hf, tok, CLEAN, m, "head", 2, head=1, method="resample", reference=r)["value"]
        for r in same_len
    ]
    v = wb.ablate(
        model, CLEAN, metric=metric(), site="head", layer=2, head=1, method="resample", reference=same_len
    )
    assert_close(float(v), float(np.mean(per)), what="resample averaged over references")


@pytest.mark.parametrize(
    "site,method,by_position",
    [
        ("mlp_out", "zero", False),
        ("attn_out", "mean", False),
        ("resid_pre", "resample", False),
        ("head", "zero", False),
        ("head", "mean", True),
        ("head", "resample", False),
    ],
)
@pytest.mark.parametrize("family", CORE)
def test_ablate_sweep(family, site, method, by_position):
    model = tiny(family)
    reference = OTHER if method == "resample" else None
    ref = R.reference_ablate_sweep(
        model.hf, model.tokenizer, CLEAN, ref_metric(model), site, method, reference, by_position=by_position
    )
    sweep = wb.ablate_sweep(
        model, CLEAN, metric=metric(), site=site, method=method, reference=reference, by_position=by_position
    )
    assert_close(
        sweep.values, ref["values"], what=f"{family} ablate_sweep {site} {method} by_position={by_position}"
    )
    assert_close(sweep.clean, ref["clean"], what="ablate_sweep clean")


# =============================================================================================
# Attribution patching


@pytest.mark.parametrize("site", [*RESID_SITES, "head"])
@pytest.mark.parametrize("family", FAMILIES)
def test_attribution_patch(family, site):
    model = tiny(family)
    ref = R.reference_attribution_patch(model.hf, model.tokenizer, CLEAN, CORRUPT, ref_metric(model), site)
    approx = wb.attribution_patch(model, CLEAN, CORRUPT, metric=metric(), site=site)
    # the engine reports estimated metric values (corrupt + attribution), on the scale of patch_sweep
    assert_close(approx.corrupt, float(ref_corrupt(model)), what="attribution corrupt baseline")
    assert_close(approx.values - approx.corrupt, ref, what=f"{family} attribution {site}")
    exact = wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site=site)
    assert approx.values.shape == exact.values.shape
    assert tuple(approx.axes) == tuple(exact.axes)


@pytest.mark.parametrize("family", CORE)
def test_attribution_patch_heads_by_position(family):
    model = tiny(family)
    approx = wb.attribution_patch(model, CLEAN, CORRUPT, metric=metric(), site="head", by_position=True)
    ref = R.reference_attribution_patch(
        model.hf, model.tokenizer, CLEAN, CORRUPT, ref_metric(model), "head", by_position=True
    )
    assert_close(approx.values - approx.corrupt, ref, what=f"{family} attribution head by_position")


# =============================================================================================
# Logit lens


@pytest.mark.parametrize("family", FAMILIES)
def test_logit_lens(family):
    model = tiny(family)
    tok = model.tokenizer
    ref = R.reference_logit_lens(model.hf, tok, CLEAN, top_k=5)
    lens = wb.logit_lens(model, CLEAN, top_k=5)
    L, T = model.n_layers, model.to_tokens(CLEAN).shape[1]
    assert lens.tokens == model.to_str_tokens(CLEAN)
    assert lens.top_ids.shape == (L, T, 5) and lens.top_ids.dtype == np.int32
    assert lens.top_probs.dtype == np.float32 and lens.entropy.dtype == np.float32
    assert_same_topk(lens.top_ids, lens.top_probs, ref["top_ids"], ref["top_probs"], what=f"{family} lens")
    assert_close(lens.entropy, ref["entropy"], what=f"{family} lens entropy")
    assert_close(lens.kl, ref["kl"], what=f"{family} lens kl")
    assert np.all(lens.kl[-1] == pytest.approx(0, abs=1e-5))
    assert lens.top_tokens[0][0] == [tok.decode([int(i)]) for i in lens.top_ids[0][0]]
    for token in (TARGET, FOIL, " the"):
        tid = R.single_token(tok, token)
        assert_close(lens.prob(token), R.lens_prob(ref, tid), what=f"{family} lens prob({token!r})")
        rank = np.asarray(lens.rank(token))
        assert rank.dtype == np.int32
        # ranks agree up to tokens whose probability ties with this one within float32 noise
        lo, hi = R.lens_rank_bounds(ref, tid, tol=1e-7)
        bad = (rank < lo) | (rank > hi)
        assert not bad.any(), (
            f"{family} lens rank({token!r}) out of the reference's range at {np.argwhere(bad)[:5].tolist()}: "
            f"{rank[bad][:5]} vs [{lo[bad][:5]}, {hi[bad][:5]}]"
        )
    # tokens= precomputes the same statistics
    pinned = wb.logit_lens(model, CLEAN, top_k=3, tokens=[TARGET, FOIL])
    assert pinned.top_ids.shape == (L, T, 3)
    assert_close(pinned.prob(FOIL), R.lens_prob(ref, R.single_token(tok, FOIL)), what="lens tokens= prob")
    # the last row is the model's own next-token distribution
    own = torch.softmax(R.run_logits(model.hf, model.to_tokens(CLEAN))[0], -1).numpy()
    top = np.sort(own, -1)[:, ::-1][:, :5]
    assert_close(lens.top_probs[-1], top, what=f"{family} lens last row vs model softmax")
    assert_close(lens.prob(TARGET)[-1], own[:, R.single_token(tok, TARGET)], what="last-row prob")


@pytest.mark.parametrize("family", ("llama", "gemma2", "gpt2"))
def test_logit_lens_with_intervention(family):
    model = tiny(family)
    hf, tok = model.hf, model.tokenizer
    # patch: clean resid_pre[1] at position 2 into the corrupt prompt, then lens the corrupt run
    src = R.capture(hf, R.tokens(tok, CLEAN), "resid_pre", [1])[1]
    ref = R.reference_logit_lens(
        hf, tok, CORRUPT, intervention_hooks=[("resid_pre", 1, R._setter(hf, "resid_pre", 2, None, src[2]))]
    )
    lens = wb.logit_lens(
        model, CORRUPT, intervention=wb.Intervention("resid_pre", 1, position=2, kind="patch", source=CLEAN)
    )
    assert_same_topk(lens.top_ids, lens.top_probs, ref["top_ids"], ref["top_probs"], what="lens+patch")
    assert_close(lens.entropy, ref["entropy"], what="lens+patch entropy")
    # zero-ablate mlp_out[0] everywhere
    ref = R.reference_logit_lens(
        hf, tok, CLEAN, intervention_hooks=[("mlp_out", 0, lambda x: torch.zeros_like(x))]
    )
    lens = wb.logit_lens(model, CLEAN, intervention=wb.Intervention("mlp_out", 0, kind="zero"))
    assert_same_topk(lens.top_ids, lens.top_probs, ref["top_ids"], ref["top_probs"], what="lens+zero")
    assert_close(lens.kl, ref["kl"], what="lens+zero kl")


@pytest.mark.parametrize("family", ("llama", "gpt_neox"))
def test_logit_lens_with_ablation_interventions(family):
    model = tiny(family)
    hf, tok = model.hf, model.tokenizer
    cases = [
        (wb.Intervention("head", 1, position=8, head=2, kind="mean"), CLEAN, "head", 1, "mean", 8, 2, None),
        (
            wb.Intervention("attn_out", 0, kind="resample", source=OTHER),
            CLEAN,
            "attn_out",
            0,
            "resample",
            None,
            None,
            OTHER,
        ),
        (wb.Intervention("head", 2, head=0, kind="zero"), CLEAN, "head", 2, "zero", None, 0, None),
    ]
    for iv, prompt, site, layer, method, pos, head, reference in cases:
        values = R.ablation_values(hf, tok, prompt, site, layer, method, reference)
        ref = R.reference_logit_lens(
            hf, tok, prompt, intervention_hooks=[(site, layer, R._setter(hf, site, pos, head, values))]
        )
        lens = wb.logit_lens(model, prompt, intervention=iv)
        what = f"{family} lens + {iv}"
        assert_same_topk(lens.top_ids, lens.top_probs, ref["top_ids"], ref["top_probs"], what=what)
        assert_close(lens.kl, ref["kl"], what=what + " kl")


def test_intervention_drag_fields():
    """Contract: wb.Intervention(..., source_layer=None, source_position=None) (a drag inside the lens)."""
    model = tiny("llama")
    hf, tok = model.hf, model.tokenizer
    iv = wb.Intervention(
        "resid_pre", 2, position=5, kind="patch", source=CLEAN, source_layer=1, source_position=3
    )
    src = R.capture(hf, R.tokens(tok, CLEAN), "resid_pre", [1])[1][3]
    ref = R.reference_logit_lens(
        hf, tok, CORRUPT, intervention_hooks=[("resid_pre", 2, R._setter(hf, "resid_pre", 5, None, src))]
    )
    lens = wb.logit_lens(model, CORRUPT, intervention=iv)
    assert_same_topk(lens.top_ids, lens.top_probs, ref["top_ids"], ref["top_probs"], what="lens + drag")
    # only the layer moves: the source position defaults to the patched position
    iv = wb.Intervention("resid_post", 0, position=8, kind="patch", source=CLEAN, source_layer=2)
    src = R.capture(hf, R.tokens(tok, CLEAN), "resid_post", [2])[2][8]
    ref = R.reference_logit_lens(
        hf, tok, CORRUPT, intervention_hooks=[("resid_post", 0, R._setter(hf, "resid_post", 8, None, src))]
    )
    lens = wb.logit_lens(model, CORRUPT, intervention=iv)
    assert_same_topk(lens.top_ids, lens.top_probs, ref["top_ids"], ref["top_probs"], what="lens + layer drag")


# =============================================================================================
# Attention


@pytest.mark.parametrize("family", FAMILIES)
def test_attention(family):
    model = tiny(family)
    ref = R.reference_attention(model.hf, model.tokenizer, CLEAN)
    attn = wb.attention(model, CLEAN)
    T = model.to_tokens(CLEAN).shape[1]
    assert attn.patterns.shape == (model.n_layers, model.n_heads, T, T)
    assert attn.patterns.dtype == np.float32
    assert attn.tokens == model.to_str_tokens(CLEAN)
    assert_close(attn.patterns, ref, what=f"{family} attention")
    sub = wb.attention(model, CLEAN, layers=[2, 0])
    assert sorted(sub.layers) == [0, 2]
    assert_close(sub.patterns, ref[list(sub.layers)], what=f"{family} attention layers=[2, 0]")
    # the model still gives the same logits afterwards (attention implementation restored)
    lens = wb.logit_lens(model, CLEAN)
    own = torch.softmax(R.run_logits(model.hf, model.to_tokens(CLEAN))[0], -1)
    assert_close(
        lens.top_probs[-1], torch.sort(own, -1, descending=True).values[:, :5], what="after attention"
    )


# =============================================================================================
# Steering


@pytest.mark.parametrize("family", CORE)
def test_steer_vector(family):
    model = tiny(family)
    g = torch.Generator().manual_seed(1)
    vec = torch.randn(model.d_model, generator=g)
    changed = []
    for layer, scale in ((1, 4.0), (0, -2.0), (2, 10.0)):
        ref = R.reference_steer(model.hf, model.tokenizer, CLEAN, vec, layer, scale, max_new_tokens=6)
        base = R.reference_steer(model.hf, model.tokenizer, CLEAN, None, layer, max_new_tokens=6)
        out = wb.steer(model, CLEAN, vector=vec, layer=layer, scale=scale, max_new_tokens=6)
        assert isinstance(out, str)
        assert _generated(out, CLEAN) == ref["text"], (
            f"{family} steered L{layer} x{scale}: {str(out)!r} vs {ref}"
        )
        assert _generated(out.baseline, CLEAN) == base["text"], (
            f"{family} baseline: {out.baseline!r} vs {base}"
        )
        changed.append(ref["ids"] != base["ids"])
    assert any(changed), f"{family}: the test vectors never changed the generation, so prove nothing"


@pytest.mark.parametrize("family", ("llama", "gpt2"))
def test_steer_contrast_pair(family):
    """vector=(positive, negative): the difference of resid_pre[layer] activations of two prompts."""
    model = tiny(family)
    out = wb.steer(
        model, CLEAN, vector=(" Paris Paris Paris", " Rome Rome Rome"), layer=1, scale=6.0, max_new_tokens=6
    )
    vec = getattr(out, "vector", None)
    assert vec is not None, "SteerResult should carry the vector it used"
    # contract (wb.steering_vector): resid_pre[layer] at the last token of positive minus negative
    expected = R.steering_vector(
        model.hf, model.tokenizer, " Paris Paris Paris", " Rome Rome Rome", 1, "last"
    )
    vec = torch.as_tensor(np.asarray(vec), dtype=torch.float32).reshape(-1)
    assert_close(vec, expected, what="steering vector from a contrast pair")
    direct = wb.steering_vector(model, " Paris Paris Paris", " Rome Rome Rome", 1)
    assert_close(torch.as_tensor(np.asarray(direct)).reshape(-1), expected, what="wb.steering_vector")
    ref = R.reference_steer(model.hf, model.tokenizer, CLEAN, vec, 1, 6.0, max_new_tokens=6)
    assert _generated(out, CLEAN) == ref["text"]


def _generated(text: str, prompt: str) -> str:
    """The continuation, whether the engine returns it alone or with the prompt in front."""
    text = str(text)
    return text[len(prompt) :] if text.startswith(prompt) else text


# =============================================================================================
# to_code(): standalone code that reproduces the numbers


TO_CODE_CASES = (
    "patch_head",
    "patch_drag",
    "sweep_mlp_out",
    "sweep_head_by_position",
    "ablate_zero",
    "ablate_mean",
    "ablate_resample",
    "ablate_sweep",
    "attribution",
    "lens",
    "attention",
    "steer",
)


@pytest.mark.parametrize("case", TO_CODE_CASES)
@pytest.mark.parametrize("family", ("llama", "gemma2"))
def test_to_code_reproduces(family, case):
    """Exec the generated code in a fresh namespace; it binds `result`, with the op's numbers."""
    model = tiny(family)
    m = metric()
    if case == "patch_head":
        v = wb.patch(model, CLEAN, CORRUPT, metric=m, site="head", layer=1, position=8, head=2)
        assert_close(float(run_code(v.to_code())["result"]), float(v), what=case)
    elif case == "patch_drag":
        v = wb.patch(
            model,
            CLEAN,
            CORRUPT,
            metric=m,
            site="resid_pre",
            layer=2,
            position=5,
            source_layer=1,
            source_position=3,
        )
        assert_close(float(run_code(v.to_code())["result"]), float(v), what=case)
    elif case == "sweep_mlp_out":
        sweep = wb.patch_sweep(model, CLEAN, CORRUPT, metric=m, site="mlp_out")
        assert_close(_values(run_code(sweep.to_code())["result"]), sweep.values, what=case)
    elif case == "sweep_head_by_position":
        sweep = wb.patch_sweep(model, CLEAN, CORRUPT, metric=m, site="head", by_position=True)
        assert_close(_values(run_code(sweep.to_code())["result"]), sweep.values, what=case)
    elif case.startswith("ablate_") and case != "ablate_sweep":
        method = case.split("_")[1]
        reference = OTHER if method == "resample" else None
        v = wb.ablate(
            model, CLEAN, metric=m, site="attn_out", layer=1, position=8, method=method, reference=reference
        )
        res = run_code(v.to_code())["result"]
        assert res is not None, f"{case}: generated code binds result = None:\n{v.to_code()}"
        assert_close(float(res), float(v), what=case)
    elif case == "ablate_sweep":
        sweep = wb.ablate_sweep(model, CLEAN, metric=m, site="head", method="mean")
        res = run_code(sweep.to_code())["result"]
        assert res is not None, f"{case}: generated code binds result = None:\n{sweep.to_code()}"
        assert_close(_values(res), sweep.values, what=case)
    elif case == "attribution":
        approx = wb.attribution_patch(model, CLEAN, CORRUPT, metric=m, site="resid_pre")
        assert_close(_values(run_code(approx.to_code())["result"]), approx.values, what=case)
    elif case == "lens":
        lens = wb.logit_lens(model, CLEAN)
        res = run_code(lens.to_code())["result"]
        if hasattr(res, "top_probs"):
            assert_close(res.top_probs, lens.top_probs, what=case)
        elif isinstance(res, tuple) and len(res) == 2:  # (top_ids, top_probs)
            assert_close(_values(res[1]), lens.top_probs, what=case + " top_probs")
            assert np.array_equal(_values(res[0]), lens.top_ids), f"{case}: top_ids differ"
        else:  # probabilities [L, T, V]
            probs = np.asarray(res.detach() if isinstance(res, torch.Tensor) else res, dtype=np.float64)
            top = np.sort(probs, -1)[..., ::-1][..., :5]
            assert_close(top, lens.top_probs, what=case)
    elif case == "attention":
        attn = wb.attention(model, CLEAN, layers=[1])
        res = run_code(attn.to_code())["result"]
        assert_close(_values(getattr(res, "patterns", res)), attn.patterns, what=case)
    elif case == "steer":
        vec = torch.randn(model.d_model, generator=torch.Generator().manual_seed(3))
        out = wb.steer(model, CLEAN, vector=vec, layer=1, scale=4.0, max_new_tokens=5)
        assert _generated(str(run_code(out.to_code())["result"]), CLEAN) == _generated(out, CLEAN)


def test_lens_code_divides_granites_logits():
    """Granite divides the unembedding's output by logits_scaling (2.0 in its tiny model): the generated lens
    code must too (without it, top_probs missed by 0.006)."""
    model = tiny("granite")
    assert model.logit_divisor != 1.0, "the tiny granite must scale its logits, or this test checks nothing"
    lens = wb.logit_lens(model, CLEAN)
    top_ids, top_probs = run_code(lens.to_code())["result"]
    assert_close(_values(top_probs), lens.top_probs, what="granite lens to_code top_probs")
    assert np.array_equal(_values(top_ids), lens.top_ids), "granite lens to_code: top_ids differ"


def _values(res) -> np.ndarray:
    if isinstance(res, torch.Tensor):
        return res.detach().float().cpu().numpy()
    if hasattr(res, "values") and not isinstance(res, dict):
        return np.asarray(res.values, dtype=np.float64)
    return np.asarray(res, dtype=np.float64)


# =============================================================================================
# Progress and cancellation


def test_progress_and_cancel():
    model = tiny("llama")
    seen = []
    wb.patch_sweep(
        model, CLEAN, CORRUPT, metric=metric(), site="resid_pre", progress=lambda f, msg: seen.append(f)
    )
    assert seen and all(0 <= f <= 1 for f in seen) and seen[-1] == pytest.approx(1.0)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(wb.CancelledError):
        wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site="head", by_position=True, cancel=cancel)
    _still_works(model)


# =============================================================================================
# Errors (issue 2): a WorkbenchError subclass with a message that names the fix; the model still works.


def _still_works(model):
    ref = R.reference_patch(
        model.hf, model.tokenizer, CLEAN, CORRUPT, ref_metric(model), "attn_out", 1, position=8
    )
    v = wb.patch(model, CLEAN, CORRUPT, metric=metric(), site="attn_out", layer=1, position=8)
    assert_close(float(v), ref["value"], what="patch after an error")
    lens = wb.logit_lens(model, CLEAN)
    ref = R.reference_logit_lens(model.hf, model.tokenizer, CLEAN)
    assert_close(lens.top_probs, ref["top_probs"], what="lens after an error")


def _raises(fn, *needles):
    with pytest.raises(wb.WorkbenchError) as info:
        fn()
    msg = str(info.value)
    assert type(info.value) is not wb.WorkbenchError or msg, "error without a message"
    for needle in needles:
        assert needle in msg, f"error message does not mention {needle!r}: {msg!r}"
    return msg


@pytest.mark.parametrize("family", CORE)
def test_error_empty_prompt(family):
    model = tiny(family)
    for bad in ("", "   "):
        _raises(lambda bad=bad: wb.logit_lens(model, bad))
        _raises(lambda bad=bad: wb.patch_sweep(model, bad, CORRUPT, metric=metric()))
        _raises(lambda bad=bad: wb.patch(model, CLEAN, bad, metric=metric(), layer=0, position=0))
        _raises(lambda bad=bad: wb.attention(model, bad))
    _still_works(model)


@pytest.mark.parametrize("family", CORE)
def test_error_different_lengths(family):
    model = tiny(family)
    clean_toks, corrupt_toks = model.to_str_tokens(CLEAN), model.to_str_tokens(CORRUPT_SHORT)
    assert len(clean_toks) != len(corrupt_toks)
    for fn in (
        lambda: wb.patch_sweep(model, CLEAN, CORRUPT_SHORT, metric=metric()),
        lambda: wb.patch(model, CLEAN, CORRUPT_SHORT, metric=metric(), layer=1, position=2),
        lambda: wb.attribution_patch(model, CLEAN, CORRUPT_SHORT, metric=metric()),
    ):
        msg = _raises(fn, str(len(clean_toks)), str(len(corrupt_toks)))
        # both tokenisations are shown, token by token
        assert all(t.strip() in msg for t in clean_toks if t.strip()), msg
        assert all(t.strip() in msg for t in corrupt_toks if t.strip()), msg
    # resampling a whole activation from a reference of another length cannot line up either
    _raises(
        lambda: wb.ablate(
            model, CLEAN, metric=metric(), site="mlp_out", layer=0, method="resample", reference=CORRUPT_SHORT
        )
    )
    _still_works(model)


@pytest.mark.parametrize("family", CORE)
def test_error_out_of_range(family):
    model = tiny(family)
    L, H, T = model.n_layers, model.n_heads, model.to_tokens(CORRUPT).shape[1]
    _raises(lambda: wb.patch(model, CLEAN, CORRUPT, metric=metric(), layer=L, position=0), str(L - 1))
    _raises(lambda: wb.patch(model, CLEAN, CORRUPT, metric=metric(), layer=-L - 5, position=0), str(L - 1))
    _raises(
        lambda: wb.patch(model, CLEAN, CORRUPT, metric=metric(), site="head", layer=0, position=0, head=H),
        str(H - 1),
    )
    _raises(lambda: wb.patch(model, CLEAN, CORRUPT, metric=metric(), layer=0, position=T), str(T - 1))
    _raises(
        lambda: wb.patch(model, CLEAN, CORRUPT, metric=metric(), layer=0, position=0, source_layer=L),
        str(L - 1),
    )
    _raises(
        lambda: wb.patch(model, CLEAN, CORRUPT, metric=metric(), layer=0, position=0, source_position=T + 3)
    )
    _raises(lambda: wb.ablate(model, CLEAN, metric=metric(), site="mlp_out", layer=L), str(L - 1))
    _raises(lambda: wb.ablate(model, CLEAN, metric=metric(), site="head", layer=0, head=H + 1), str(H - 1))
    _raises(
        lambda: wb.steer(
            model, CLEAN, vector=torch.zeros(model.d_model), layer=L, scale=1.0, max_new_tokens=2
        )
    )
    _raises(lambda: wb.attention(model, CLEAN, layers=[0, L]), str(L - 1))
    _still_works(model)


@pytest.mark.parametrize("family", CORE)
def test_error_metric_token_not_one_token(family):
    model = tiny(family)
    for bad in (" Parisian", " Paris Rome", "Paris"):
        assert len(model.tokenizer(bad, add_special_tokens=False).input_ids) != 1
        _raises(
            lambda bad=bad: wb.patch_sweep(model, CLEAN, CORRUPT, metric=wb.logit_diff(bad, FOIL)), repr(bad)
        )
        _raises(
            lambda bad=bad: wb.ablate(model, CLEAN, metric=wb.prob(bad), site="mlp_out", layer=0), repr(bad)
        )
        _raises(lambda bad=bad: wb.logit_lens(model, CLEAN).prob(bad), repr(bad))
    _still_works(model)


@pytest.mark.parametrize("family", CORE)
def test_error_unknown_site(family):
    model = tiny(family)
    _raises(
        lambda: wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site="resid_middle"),
        "resid_pre",
        "mlp_out",
    )
    _raises(
        lambda: wb.patch(model, CLEAN, CORRUPT, metric=metric(), site="MLP", layer=0, position=0), "mlp_out"
    )
    _raises(lambda: wb.ablate(model, CLEAN, metric=metric(), site="attn", layer=0), "attn_out")
    _raises(
        lambda: wb.ablate(model, CLEAN, metric=metric(), site="mlp_out", layer=0, method="banana"), "zero"
    )
    _still_works(model)


def test_error_unsupported_family():
    import transformers

    cfg = transformers.OPTConfig(
        vocab_size=len(tiny_tokenizer()),
        hidden_size=16,
        num_hidden_layers=1,
        ffn_dim=32,
        num_attention_heads=2,
        max_position_embeddings=64,
        word_embed_proj_dim=16,
    )
    hf = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    Model = getattr(wb, "Model", None)
    if Model is None:
        from workbench.model import Model
    msg = _raises(lambda: Model.from_hf(hf, tiny_tokenizer()), "opt")
    for fam in ("gpt2", "llama", "gpt_neox", "gemma2", "phi"):
        assert fam in msg, f"unsupported-family message does not list {fam!r}: {msg!r}"
    _still_works(tiny("llama"))


@pytest.mark.parametrize("family", CORE)
def test_error_prompt_longer_than_context(family):
    model = tiny(family)
    n_ctx = model.hf.config.max_position_embeddings
    long = " ".join(["the cat sat on the mat"] * 60)
    assert model.tokenizer(long, return_tensors="pt").input_ids.shape[1] > n_ctx
    _raises(lambda: wb.logit_lens(model, long), str(n_ctx))
    _raises(lambda: wb.patch_sweep(model, long, long, metric=metric()), str(n_ctx))
    _raises(lambda: wb.attention(model, long), str(n_ctx))
    _raises(
        lambda: wb.steer(
            model, long, vector=torch.zeros(model.d_model), layer=0, scale=1.0, max_new_tokens=2
        ),
        str(n_ctx),
    )
    _still_works(model)
