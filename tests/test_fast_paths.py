"""The fast paths (workbench/engine: replay, fast_attribution, fast_lens) give the numbers of the plain
computations, on every family of the architecture table (one tiny model per model_type: FAMILIES).

Three-way checks: fast path vs the plain batched engine path (fast path disabled) vs the independent
one-forward-per-cell reference (tests/reference.py). Float32, max abs diff <= 1e-4. No timing here:
speed is measured by `make bench` (benchmarks/).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import workbench as wb
from tests import reference as R
from tests.conftest import ATOL, CLEAN, CORRUPT, FOIL, TARGET, assert_close, assert_same_topk, tiny
from tests.engine_rows import Cell, fast_run, run_batch
from workbench.architectures import ARCHITECTURES, families
from workbench.engine import fast_attribution
from workbench.engine import replay as F
from workbench.ops.patching import pair_tokens, sweep_cells
from workbench.testing import FAMILIES

SWEEPS = [("resid_pre", False), ("resid_post", False), ("attn_out", False), ("mlp_out", False)]
SWEEPS += [("head", False), ("head", True)]


def metric():
    return wb.logit_diff(TARGET, FOIL)


def _fast_used(model) -> bool:
    c, k = pair_tokens(model, CLEAN, CORRUPT)
    out = fast_run(model, c, k, "resid_pre", [Cell(0, 1)], metric().bind(model))
    return out is not None


def test_every_family_in_the_table_has_a_tiny_model():
    """A model_type added to the architecture table gets a tiny model, so every test below runs on it."""
    missing = sorted(set(families()) - set(FAMILIES))
    assert not missing, (
        f"model_type(s) {missing} are in workbench/architectures.py but have no tiny model: add them to "
        "FAMILIES and _config in workbench/testing.py (and to tests/reference.py's FAMILY_TABLE)"
    )
    unknown = sorted(set(FAMILIES) - set(families()))
    assert not unknown, f"tiny models {unknown} have no architecture entry"


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_path_applies(family):
    """Every family takes the fast path (so the checks below test it, not the fallback), unless its Arch
    entry opts out with a reason: then the traced path answers."""
    model = tiny(family)
    fast = not model.arch.replay
    assert _fast_used(model) == fast, (family, model.arch.replay)
    c, k = pair_tokens(model, CLEAN, CORRUPT)
    attribution = fast_attribution.attribution(model, c, k, ["resid_pre"], metric().bind(model))
    assert (attribution is not None) == fast, (family, model.arch.replay)


def test_every_opt_out_says_why():
    """An opt-out is a sentence for the reader of architectures.py, not a flag."""
    for arch in ARCHITECTURES:
        assert arch.replay == "" or len(arch.replay.split()) >= 3, (arch.name, arch.replay)


def test_opt_out_sends_every_op_to_the_traced_path():
    """A family whose Arch entry opts out of the replay gets no replay sweep and no fast attribution (the
    traced path answers, with its numbers); only the Arch entry decides (here: llama's with a reason)."""
    from workbench.testing import tiny_model

    model = tiny_model("llama", seed=3)
    plain_model = tiny_model("llama", seed=3)
    model.arch = dataclasses.replace(model.arch, replay="blocks that the replay cannot call (test)")
    c, k = pair_tokens(model, CLEAN, CORRUPT)
    bound = metric().bind(model)
    assert not F.enabled_for(model, "resid_pre", "source", k.shape[1])
    assert fast_run(model, c, k, "resid_pre", [Cell(0, 1)], bound) is None
    assert fast_attribution.attribution(model, c, k, ["resid_pre"], bound) is None
    assert fast_run(plain_model, c, k, "resid_pre", [Cell(0, 1)], bound) is not None  # the entry decided
    for site in ("resid_pre", "mlp_out", "head"):
        got = wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site=site)
        with F.disabled():
            want = wb.patch_sweep(plain_model, CLEAN, CORRUPT, metric=metric(), site=site)
        assert_close(got.values, want.values, ATOL, f"opted-out {site} sweep")
    got = wb.attribution_patch(model, CLEAN, CORRUPT, metric=metric(), site="resid_pre")
    with F.disabled():
        want = wb.attribution_patch(plain_model, CLEAN, CORRUPT, metric=metric(), site="resid_pre")
    assert_close(got.values, want.values, ATOL, "opted-out attribution")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("site,by_position", SWEEPS)
def test_sweep_fast_vs_plain_vs_reference(family, site, by_position):
    model = tiny(family)
    fast = wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site=site, by_position=by_position)
    with F.disabled():
        plain = wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site=site, by_position=by_position)
    what = f"{family} {site} by_position={by_position}"
    assert_close(fast.values, plain.values, ATOL, what + " fast vs plain")
    assert abs(fast.clean - plain.clean) <= ATOL and abs(fast.corrupt - plain.corrupt) <= ATOL
    if by_position and family not in ("gpt2", "llama", "gemma2"):
        return  # one forward per cell for L x T x H cells: the plain-path check above covers the rest
    ref = R.reference_patch_sweep(
        model.hf,
        model.tokenizer,
        CLEAN,
        CORRUPT,
        R.logit_diff(model.tokenizer, TARGET, FOIL),
        site,
        by_position,
    )
    assert_close(fast.values, ref["values"], ATOL, what + " fast vs reference")
    assert abs(fast.clean - ref["clean"]) <= ATOL and abs(fast.corrupt - ref["corrupt"]) <= ATOL


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["copy", "zero", "mean"])
def test_run_batch_modes_and_top_k(family, mode):
    """Mixed cells (with and without positions, every site) in each mode, with top-k, equal the plain path."""
    model = tiny(family)
    c, k = pair_tokens(model, CLEAN, CORRUPT)
    bound = metric().bind(model)
    for site in ("resid_pre", "resid_post", "attn_out", "mlp_out", "head"):
        head = 1 if site == "head" else None
        last = model.n_layers - 1
        cells = [
            Cell(0, 0, head),
            Cell(last, k.shape[1] - 1, head),
            Cell(1, None, head),
            Cell(last, None, head),
        ]
        cells += [Cell(1, 3, head), Cell(0, 5, head)]
        fast = run_batch(model, c, k, site, cells, bound, mode=mode, top_k=3)
        with F.disabled():
            plain = run_batch(model, c, k, site, cells, bound, mode=mode, top_k=3)
        what = f"{family} {site} {mode}"
        assert_close(fast.values, plain.values, ATOL, what)
        assert_close(fast.top_probs, plain.top_probs, ATOL, what + " top_probs")
        assert abs(fast.source - plain.source) <= ATOL and abs(fast.base - plain.base) <= ATOL


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox", "gemma2", "phi"])
def test_single_patch_and_moved_source(family):
    """wb.patch (one cell, cached baselines) and a drag (value mode) equal the reference."""
    model = tiny(family)
    ref_m = R.logit_diff(model.tokenizer, TARGET, FOIL)
    for kwargs in (
        dict(site="resid_pre", layer=1, position=4),
        dict(site="attn_out", layer=0, position=2),
        dict(site="mlp_out", layer=2, position=8),
        dict(site="head", layer=1, head=2),
        dict(site="resid_pre", layer=2, position=6, source_layer=0, source_position=3),
    ):
        for _ in range(2):  # cold, then warm (cached baselines)
            v = wb.patch(model, CLEAN, CORRUPT, metric=metric(), **kwargs)
            ref = R.reference_patch(model.hf, model.tokenizer, CLEAN, CORRUPT, ref_m, **kwargs)
            assert abs(float(v) - ref["value"]) <= ATOL, (family, kwargs, float(v), ref["value"])
            assert abs(v.clean - ref["clean"]) <= ATOL and abs(v.corrupt - ref["corrupt"]) <= ATOL


def test_baseline_cache_invalidated_by_weight_edit():
    """An in-place weight edit (e.g. a user's ablation of a weight) invalidates the cached runs."""
    from workbench.testing import tiny_model

    model = tiny_model("llama", seed=1)
    before = wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site="resid_pre")
    with torch.no_grad():
        model.hf.model.layers[1].mlp.down_proj.weight.mul_(0.5)
    after = wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site="resid_pre")
    with F.disabled():
        plain = wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site="resid_pre")
    assert_close(after.values, plain.values, ATOL, "after weight edit")
    assert np.abs(after.values - before.values).max() > 1e-3
    # a module hook added by the user (e.g. a steering hook) also invalidates them, and is honoured
    handle = model.hf.model.layers[0].register_forward_hook(lambda _m, _a, out: out * 1.5)
    try:
        hooked = wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site="attn_out")
        with F.disabled():
            plain = wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site="attn_out")
    finally:
        handle.remove()
    assert_close(hooked.values, plain.values, ATOL, "with a user hook")


@pytest.mark.parametrize("family", FAMILIES)
def test_attribution_fast_vs_traced(family):
    model = tiny(family)
    sites = ["resid_pre", "attn_out", "mlp_out", "head", "resid_post"]
    for p in model.hf.parameters():
        p.grad = None
    fast = wb.attribution_patch(model, CLEAN, CORRUPT, metric=metric(), site=sites, by_position=True)
    # the parameters are trainable again afterwards, and no gradient was left on them
    assert all(p.requires_grad for p in model.hf.parameters())
    assert all(p.grad is None for p in model.hf.parameters())
    with F.disabled():
        plain = wb.attribution_patch(model, CLEAN, CORRUPT, metric=metric(), site=sites, by_position=True)
    for s in sites:
        assert_close(fast[s].values, plain[s].values, ATOL, f"{family} attribution {s}")
        assert abs(fast[s].clean - plain[s].clean) <= ATOL


def test_short_sliding_window_is_replayed_exactly():
    """A sliding window shorter than the prompt (every Mistral layer here; Gemma-3's tiny model has one on
    two of its three layers) is replayed, with the numbers of the plain path and the reference."""
    from workbench.testing import tiny_model

    model = tiny_model("mistral", seed=2)
    model.config.sliding_window = 4
    c, k = pair_tokens(model, CLEAN, CORRUPT)
    assert fast_run(model, c, k, "resid_pre", [Cell(0, 1)], metric().bind(model)) is not None
    ref_m = R.logit_diff(model.tokenizer, TARGET, FOIL)
    unwindowed = wb.patch_sweep(tiny_model("mistral", seed=2), CLEAN, CORRUPT, metric=metric())
    for site, by_position in (("resid_pre", False), ("attn_out", False), ("head", True)):
        fast = wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site=site, by_position=by_position)
        with F.disabled():
            plain = wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site=site, by_position=by_position)
        ref = R.reference_patch_sweep(model.hf, model.tokenizer, CLEAN, CORRUPT, ref_m, site, by_position)
        assert_close(fast.values, plain.values, ATOL, f"window 4 {site} fast vs plain")
        assert_close(fast.values, ref["values"], ATOL, f"window 4 {site} fast vs reference")
        if site == "resid_pre":  # the window changed the numbers (else this would test nothing)
            assert np.abs(fast.values - unwindowed.values).max() > 1e-3


def test_granite_scalings_are_read_when_used():
    """Granite's residual multiplier (a block attribute) and logits scaling (a config value) are read when a
    fast path runs, as the model's forward reads them: changed after a warm sweep, fast still equals plain."""
    from workbench.testing import tiny_model

    model = tiny_model("granite", seed=4)
    before = wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site="mlp_out")
    model.hf.model.layers[1].residual_multiplier = 0.9
    model.hf.config.logits_scaling = 3.0
    fast = wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site="mlp_out")
    fast_lens = wb.logit_lens(model, CORRUPT, top_k=3, tokens=[TARGET])
    with F.disabled():
        plain = wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site="mlp_out")
        plain_lens = wb.logit_lens(model, CORRUPT, top_k=3, tokens=[TARGET])
    assert_close(fast.values, plain.values, ATOL, "granite mlp_out sweep after the change")
    assert_close(fast_lens.top_probs, plain_lens.top_probs, ATOL, "granite lens after the change")
    assert_close(fast_lens.prob(TARGET), plain_lens.prob(TARGET), ATOL, "granite lens prob after the change")
    assert np.abs(fast.values - before.values).max() > 1e-3  # the change mattered


def test_cells_share_sweep_order():
    """The fast path returns values in the order of the cells it was given (not its internal order)."""
    model = tiny("llama")
    c, k = pair_tokens(model, CLEAN, CORRUPT)
    cells, _ = sweep_cells(model, "resid_pre", k.shape[1], True)
    shuffled = [cells[i] for i in np.random.default_rng(0).permutation(len(cells))]
    bound = metric().bind(model)
    a = run_batch(model, c, k, "resid_pre", shuffled, bound)
    with F.disabled():
        b = run_batch(model, c, k, "resid_pre", shuffled, bound)
    assert_close(a.values, b.values, ATOL, "shuffled cells")


LENS_INTERVENTIONS = [
    None,
    wb.Intervention("resid_pre", 1, 3, kind="patch", source=CLEAN),
    wb.Intervention("head", 2, None, 1, kind="patch", source=CLEAN),
    wb.Intervention("mlp_out", 0, None, kind="zero"),
    wb.Intervention("attn_out", 1, 5, kind="mean"),
    wb.Intervention("resid_post", 2, 4, kind="patch", source=CLEAN, source_layer=0, source_position=2),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("which", range(len(LENS_INTERVENTIONS)))
def test_lens_fast_vs_traced(family, which):
    """The local lens (`_fast_lens`: hooks, oneDNN, fused statistics) equals the traced one remote models use."""
    model = tiny(family)
    iv = LENS_INTERVENTIONS[which]
    fast = wb.logit_lens(model, CORRUPT, top_k=4, tokens=[TARGET, FOIL], intervention=iv)
    with F.disabled():
        traced = wb.logit_lens(model, CORRUPT, top_k=4, tokens=[TARGET, FOIL], intervention=iv)
    what = f"{family} lens {iv}"
    assert_same_topk(fast.top_ids, fast.top_probs, traced.top_ids, traced.top_probs, what=what)
    assert_close(fast.entropy, traced.entropy, what=what + " entropy")
    assert_close(fast.kl, traced.kl, what=what + " kl")
    for token in (TARGET, FOIL, " the"):  # " the" is not pinned: computed on request, by the same path
        assert_close(fast.prob(token), traced.prob(token), what=f"{what} prob({token!r})")
        assert np.array_equal(np.asarray(fast.rank(token)), np.asarray(traced.rank(token))), what
    if iv is not None:  # the intervention changed the lens (else this would test nothing)
        plain = wb.logit_lens(model, CORRUPT, top_k=4)
        assert np.abs(plain.top_probs - fast.top_probs).max() > 1e-4, what


def test_lens_top_k_chunk_search_is_exact():
    """`_top` (chunk maxima, then candidates) returns torch.topk's values and indices on hard rows:
    several winners in one chunk, winners at chunk edges, and a row of equal values but one."""
    from workbench.engine.fast_lens import _top

    g = torch.Generator().manual_seed(0)
    rows = torch.randn(6, 64 * 12, generator=g)
    rows[0, 5:10] = 50.0 + torch.arange(5.0)  # all five in one chunk
    rows[1, [63, 64, 127, 128, 767]] = 40.0 + torch.arange(5.0)  # chunk edges
    rows[2] = 0.0
    rows[2, 300] = 1.0
    rows[3] = -1e3 - 0.5 * torch.randperm(64 * 12, generator=g).float()  # very negative, distinct
    for k in (1, 5, 12):
        values, ids = _top(rows, k)
        want = rows.topk(k, dim=-1)
        assert torch.equal(values, want.values), k
        exact = [0, 1, 3, 4, 5]  # row 2 ties everywhere below its max: only the values are defined
        assert torch.equal(ids[exact], want.indices[exact]), k
        assert torch.equal(rows.gather(1, ids), values)


def test_fast_paths_only_on_cpu_models():
    """A model whose weights are elsewhere (here: the meta device) takes the traced paths."""
    from workbench.engine import fast_lens as _fast_lens
    from workbench.testing import tiny_model

    model = tiny_model("llama", seed=8)
    assert F.enabled_for(model, "resid_pre", "source", 5) and _fast_lens.enabled(model)
    model.hf.to("meta")
    assert not F.enabled_for(model, "resid_pre", "source", 5)
    assert not _fast_lens.enabled(model)
    c, k = torch.ones(1, 5, dtype=torch.long), torch.ones(1, 5, dtype=torch.long)
    assert fast_attribution.attribution(model, c, k, ["resid_pre"], metric().bind(model)) is None
