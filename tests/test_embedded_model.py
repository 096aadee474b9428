"""The engine against the independent reference on the real embedded model (SmolLM2-135M-Instruct),
plus known behaviour of that model on the Eiffel Tower / Colosseum pair.

One model load for the whole session; sweeps are computed once per module. Measured (2 Dec 2026,
`--durations`, WORKBENCH_TEST_THREADS=1): 154 s for the 20 tests on 2 CPU cores shared with other jobs
(load about 4), 106 s of CPU; the issue-12 site tests take about 55 s of it, mostly the engine's own
sweeps (the reference's layers cost about 1.5 s per site).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import workbench as wb
from tests import reference as R
from tests.conftest import ATOL, assert_close, assert_same_topk

pytestmark = pytest.mark.embedded

CLEAN = "The Eiffel Tower is located in the city of"
CORRUPT = "The Colosseum is located in the city of"
TARGET, FOIL = " Paris", " Rome"
SUBJECT = (1, 2, 3)  # " E", "iffel", " Tower"
LAST = 9


@pytest.fixture(scope="session")
def model():
    return wb.load()


@pytest.fixture(scope="module")
def ref_metric(model):
    return R.logit_diff(model.tokenizer, TARGET, FOIL)


@pytest.fixture(scope="module")
def resid_sweep(model):
    return wb.patch_sweep(model, CLEAN, CORRUPT, metric=wb.logit_diff(TARGET, FOIL), site="resid_pre")


@pytest.fixture(scope="module")
def ref_resid_sweep(model, ref_metric):
    return R.reference_patch_sweep(
        model.hf, model.tokenizer, CLEAN, CORRUPT, ref_metric, "resid_pre", batch=True
    )


def test_model_facts_and_tokens(model):
    cfg = model.hf.config
    assert (model.n_layers, model.n_heads, model.d_model) == (30, 9, 576)
    assert cfg.model_type == "llama" and cfg.num_key_value_heads == 3
    assert model.d_head == R.d_head(model.hf) == 64
    for prompt in (CLEAN, CORRUPT):
        assert torch.equal(model.to_tokens(prompt), R.tokens(model.tokenizer, prompt))
        assert model.to_tokens(prompt).shape == (1, 10)
    assert [model.to_str_tokens(CLEAN)[p] for p in SUBJECT] == [" E", "iffel", " Tower"]


def test_top1_is_paris(model):
    logits = R.run_logits(model.hf, R.tokens(model.tokenizer, CLEAN))[0, -1]
    assert model.tokenizer.decode([int(logits.argmax())]) == TARGET
    lens = wb.logit_lens(model, CLEAN, top_k=5)
    assert lens.top_tokens[-1][-1][0] == TARGET


@pytest.fixture(scope="module")
def ref_lens64(model):
    """The reference lens computed in float64 (on a float64 copy of the model): the true values."""
    hf64 = copy.deepcopy(model.hf).double()
    try:
        return R.reference_logit_lens(hf64, model.tokenizer, CLEAN, top_k=5)
    finally:
        del hf64


def test_logit_lens_vs_reference(model, ref_lens64):
    tok = model.tokenizer
    ref = R.reference_logit_lens(model.hf, tok, CLEAN, top_k=5)
    lens = wb.logit_lens(model, CLEAN, top_k=5)
    assert lens.top_ids.shape == (30, 10, 5)
    assert_same_topk(lens.top_ids, lens.top_probs, ref["top_ids"], ref["top_probs"], what="lens")
    assert_close(lens.entropy, ref["entropy"], what="lens entropy")
    # KL reaches 40 nats in the early layers, where float32 itself is ~2e-6 relative off: the float32
    # reference is 7e-5 from the float64 one there. So KL is checked against the float64 reference, with
    # a relative allowance on top of ATOL (at KL = 40: 3e-4); small KLs still get 1e-4.
    assert_close(lens.kl, ref_lens64["kl"], what="lens kl vs float64", rtol=5e-6)
    assert_close(lens.entropy, ref_lens64["entropy"], what="lens entropy vs float64")
    assert_close(lens.top_probs, ref_lens64["top_probs"], what="lens top-5 probs vs float64")
    tid = R.single_token(tok, TARGET)
    assert_close(lens.prob(TARGET), R.lens_prob(ref, tid), what="lens prob(' Paris')")
    rank, ref_rank = np.asarray(lens.rank(TARGET)), R.lens_rank(ref, tid)
    # float32 ties can reorder tokens of equal probability; at real probabilities the ranks agree exactly
    solid = R.lens_prob(ref, tid) > 1e-4
    assert np.array_equal(rank[solid], ref_rank[solid]), (rank, ref_rank)
    # last row = the model's own next-token distribution
    own = torch.softmax(R.run_logits(model.hf, model.to_tokens(CLEAN))[0], -1)
    assert_close(lens.prob(TARGET)[-1], own[:, tid], what="last lens row vs model")
    assert_close(
        lens.top_probs[-1], torch.sort(own, -1, descending=True).values[:, :5], what="last row top-k"
    )
    assert rank[-1, LAST] == 0


def test_resid_pre_sweep_vs_reference(resid_sweep, ref_resid_sweep):
    assert resid_sweep.values.shape == (30, 10)
    assert abs(resid_sweep.clean - ref_resid_sweep["clean"]) <= ATOL
    assert abs(resid_sweep.corrupt - ref_resid_sweep["corrupt"]) <= ATOL
    assert_close(resid_sweep.values, ref_resid_sweep["values"], what="embedded resid_pre sweep")


def test_resid_pre_sweep_tells_the_causal_tracing_story(resid_sweep):
    """Meng et al.'s picture: the answer is restored from the subject tokens in early and middle layers,
    and from the last token in late layers.

    Measured (normalised effect): the subject's max over " E"/"iffel"/" Tower" is 0.69-0.90 in layers
    0-23 and <= 0.03 from layer 24 on; the last token is <= 0.07 up to layer 21 and 0.82-0.91 from 24.
    """
    clean, corrupt = resid_sweep.clean, resid_sweep.corrupt
    assert clean > 2 and corrupt < -2, (clean, corrupt)  # Paris vs Rome flips between the prompts
    n = np.asarray(resid_sweep.normalized)
    subject = n[:, list(SUBJECT)].max(1)
    last = n[:, LAST]
    early, middle, late = range(0, 8), range(8, 20), range(25, 30)
    for layers, name in ((early, "early"), (middle, "middle")):
        assert subject[list(layers)].min() > 0.5, f"{name} layers: subject effect {subject[list(layers)]}"
        assert last[list(layers)].max() < 0.25, f"{name} layers: last-token effect {last[list(layers)]}"
    assert last[list(late)].min() > 0.6, f"late layers: last-token effect {last[list(late)]}"
    assert subject[list(late)].max() < 0.2, f"late layers: subject effect {subject[list(late)]}"
    # the first token ("The") is the same in both prompts: patching it changes nothing
    assert np.abs(n[:, 0]).max() < 1e-3


def test_head_sweep_vs_reference(model, ref_metric):
    sweep = wb.patch_sweep(model, CLEAN, CORRUPT, metric=wb.logit_diff(TARGET, FOIL), site="head")
    assert sweep.values.shape == (30, 9)
    # the reference recomputes every third layer and the last (all 9 heads each), to keep CI fast
    layers = [*range(0, 30, 3), 29]
    ref = R.reference_patch_sweep(
        model.hf, model.tokenizer, CLEAN, CORRUPT, ref_metric, "head", batch=True, layers=layers
    )
    assert_close(sweep.values[layers], ref["values"], what="embedded head sweep")


def test_attention_vs_reference(model):
    ref = R.reference_attention(model.hf, model.tokenizer, CLEAN)
    attn = wb.attention(model, CLEAN)
    assert attn.patterns.shape == (30, 9, 10, 10)
    assert_close(attn.patterns, ref, what="embedded attention")
    # grouped-query attention: query heads 3k..3k+2 share key/value head k, but their patterns differ
    assert not np.allclose(attn.patterns[:, 0], attn.patterns[:, 1])


def test_attribution_vs_reference(model, ref_metric, resid_sweep):
    ref = R.reference_attribution_patch(model.hf, model.tokenizer, CLEAN, CORRUPT, ref_metric, "resid_pre")
    approx = wb.attribution_patch(model, CLEAN, CORRUPT, metric=wb.logit_diff(TARGET, FOIL), site="resid_pre")
    # engine values are estimated metrics: corrupt + (clean - corrupt) . grad
    assert abs(approx.corrupt - resid_sweep.corrupt) <= ATOL
    assert_close(approx.values - approx.corrupt, ref.numpy(), what="embedded attribution resid_pre")
    heads = wb.attribution_patch(model, CLEAN, CORRUPT, metric=wb.logit_diff(TARGET, FOIL), site="head")
    ref_heads = R.reference_attribution_patch(model.hf, model.tokenizer, CLEAN, CORRUPT, ref_metric, "head")
    assert heads.values.shape == (30, 9)
    assert_close(heads.values - heads.corrupt, ref_heads.numpy(), what="embedded attribution heads")
    # first-order estimate of (patched - corrupt): it should point the same way as the exact sweep's top cell
    exact = resid_sweep.values - resid_sweep.corrupt
    i = np.unravel_index(np.abs(exact).argmax(), exact.shape)
    assert np.sign(approx.values[i] - approx.corrupt) == np.sign(exact[i])


@pytest.mark.parametrize(
    "method,site,layer,position,head",
    [
        ("zero", "mlp_out", 3, None, None),
        ("mean", "attn_out", 5, LAST, None),
        ("resample", "head", 20, None, 4),
    ],
)
def test_ablation_vs_reference(model, ref_metric, method, site, layer, position, head):
    reference = CORRUPT if method == "resample" else None
    ref = R.reference_ablate(
        model.hf,
        model.tokenizer,
        CLEAN,
        ref_metric,
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
        metric=wb.logit_diff(TARGET, FOIL),
        site=site,
        layer=layer,
        position=position,
        head=head,
        method=method,
        reference=reference,
    )
    assert_close(float(v), ref["value"], what=f"embedded ablate {method} {site}")
    assert_close(v.clean, ref["clean"], what="embedded ablate clean")


def test_to_code_runs_standalone(model):
    """The generated code of a patch loads the default model by itself and reproduces the number."""
    from tests.conftest import run_code

    v = wb.patch(
        model, CLEAN, CORRUPT, metric=wb.logit_diff(TARGET, FOIL), site="resid_pre", layer=3, position=2
    )
    ns = run_code(v.to_code())
    assert_close(float(ns["result"]), float(v), what="embedded patch to_code")


# ------------------------------------------------------------------------------------- issue 12's new sites
NEW_SITE_LAYERS = [0, 14, 29]  # the reference recomputes these layers (all heads / positions each)


@pytest.mark.parametrize("site", ["q", "k", "v", "resid_mid", "pattern", "embed"])
def test_new_site_sweeps_vs_reference(model, ref_metric, site):
    sweep = wb.patch_sweep(model, CLEAN, CORRUPT, metric=wb.logit_diff(TARGET, FOIL), site=site)
    shape = {
        "q": (30, 9),
        "k": (30, 3),
        "v": (30, 3),
        "pattern": (30, 9),
        "resid_mid": (30, 10),
        "embed": (1, 10),
    }
    assert sweep.values.shape == shape[site]
    layers = [0] if site == "embed" else NEW_SITE_LAYERS
    ref = R.reference_patch_sweep(
        model.hf, model.tokenizer, CLEAN, CORRUPT, ref_metric, site, batch=True, layers=layers
    )
    assert_close(sweep.values[layers], ref["values"], what=f"embedded {site} sweep")
    assert abs(sweep.corrupt - ref["corrupt"]) <= ATOL and abs(sweep.clean - ref["clean"]) <= ATOL
    assert np.abs(sweep.values[layers] - sweep.corrupt).max() > 1e-3  # the patches move the metric


def test_new_site_cells_vs_reference(model, ref_metric):
    """One cell each of q/k/v/pattern with a position (patch, zero/resample ablation), and q mean ablation."""
    m = wb.logit_diff(TARGET, FOIL)
    for site, layer, position, head in (("q", 20, LAST, 4), ("k", 5, 3, 2), ("pattern", 25, LAST, 7)):
        kw = dict(site=site, layer=layer, position=position, head=head)
        v = wb.patch(model, CLEAN, CORRUPT, metric=m, **kw)
        ref = R.reference_patch(model.hf, model.tokenizer, CLEAN, CORRUPT, ref_metric, **kw)
        assert_close(float(v), ref["value"], what=f"embedded patch {kw}")
        assert_same_topk(v.top_ids, v.top_probs, ref["top_ids"], ref["top_probs"], what=f"embedded {kw}")
    for site, layer, position, head, method in (
        ("pattern", 12, None, 1, "zero"),
        ("pattern", 27, LAST, 5, "resample"),
        ("v", 8, None, 0, "mean"),
        ("resid_mid", 3, 2, None, "zero"),
    ):
        kw = dict(site=site, layer=layer, position=position, head=head, method=method)
        kw["reference"] = CORRUPT if method == "resample" else None
        v = wb.ablate(model, CLEAN, metric=m, **kw)
        ref = R.reference_ablate(model.hf, model.tokenizer, CLEAN, ref_metric, **kw)
        assert_close(float(v), ref["value"], what=f"embedded ablate {kw}")


def test_new_site_attribution_vs_reference(model, ref_metric):
    """The local fast path and the traced engine (NDIF's) against the reference."""
    from workbench.engine.fast import disabled

    sites = ["embed", "q", "k", "v", "resid_mid", "pattern"]
    m = wb.logit_diff(TARGET, FOIL)
    fast = wb.attribution_patch(model, CLEAN, CORRUPT, metric=m, site=sites)
    with disabled():
        traced = wb.attribution_patch(model, CLEAN, CORRUPT, metric=m, site=sites)
    for s in sites:
        ref = R.reference_attribution_patch(model.hf, model.tokenizer, CLEAN, CORRUPT, ref_metric, s)
        for est in (fast, traced):
            assert est[s].values.shape == tuple(ref.shape)
            assert_close(est[s].values - est[s].corrupt, ref.numpy(), what=f"embedded attribution {s}")
