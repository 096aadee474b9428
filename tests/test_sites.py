"""The sites of issue 12 (embed, resid_mid, q, k, v, pattern) in patch, patch_sweep, ablate, ablate_sweep and
attribution_patch, against the independent hook reference (tests/reference.py) on every tiny family, the
replay engine against the traced one for the sites it claims, and the errors for bad cells.

Float32, max abs diff <= 1e-4. The embedded model's checks are in tests/test_embedded_model.py.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

import workbench as wb
from tests import reference as R
from tests.conftest import CLEAN, CORRUPT, FOIL, OTHER, TARGET, assert_close, assert_same_topk, tiny
from workbench.engine import fast_attribution, replay
from workbench.engine.edits import Add, Cell, Edit
from workbench.engine.fast import disabled
from workbench.engine.traced import run_rows
from workbench.errors import SiteError, WorkbenchError
from workbench.ops.patching import pair_tokens
from workbench.testing import FAMILIES, _config, tiny_hf_model, tiny_tokenizer

NEW_SITES = ("embed", "resid_mid", "q", "k", "v", "pattern")
PER_HEAD = ("q", "k", "v", "pattern")
PARALLEL = ("phi", "gpt_neox")  # attention and MLP read the block input: no resid_mid


def sites_of(family: str) -> list[str]:
    return [s for s in NEW_SITES if s != "resid_mid" or family not in PARALLEL]


def metric():
    return wb.logit_diff(TARGET, FOIL)


def ref_metric(model):
    return R.logit_diff(model.tokenizer, TARGET, FOIL)


def n_heads_of(model, site: str) -> int:
    return model.n_kv_heads if site in ("k", "v") else model.n_heads


def site_family_grid(sites=NEW_SITES):
    return [(f, s) for f in FAMILIES for s in sites if s != "resid_mid" or f not in PARALLEL]


def assert_moves(values, base: float, what: str) -> None:
    """The edits changed the metric somewhere (a comparison of two unchanged runs would test nothing)."""
    assert np.abs(np.asarray(values) - base).max() > 1e-4, f"{what}: no cell moved the metric"


# =============================================================================================
# The reference's new sites, checked against plain facts of the forward pass (no engine involved).


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_new_sites(family):
    hf, tok = tiny_hf_model(family), tiny_tokenizer()
    m = R.logit_diff(tok, TARGET, FOIL)
    ids = R.tokens(tok, CLEAN)
    T = ids.shape[1]
    L, H, KV = R.n_layers(hf), R.n_heads(hf), R.n_kv_heads(hf)
    clean_m = float(m(R.run_logits(hf, ids)[:, -1])[0])
    # embed: the block-0 input is the embedding (gpt2: plus the position embeddings)
    emb, pre = R.capture(hf, ids, "embed")[0], R.capture(hf, ids, "resid_pre", [0])[0]
    if family == "gpt2":
        assert_close(pre - emb, hf.transformer.wpe.weight[:T].detach(), 1e-6, "gpt2 resid_pre[0] - embed")
    else:  # granite scales the embedding by config.embedding_multiplier outside the module
        scale = getattr(hf.config, "embedding_multiplier", 1.0) if family == "granite" else 1.0
        assert_close(emb * scale, pre, 0 if scale == 1.0 else 1e-6, f"{family} embed == resid_pre[0]")
    # the whole clean embedding patched into the corrupt run gives the clean run
    full = R.reference_patch(hf, tok, CLEAN, CORRUPT, m, "embed", 0)["value"]
    assert abs(full - clean_m) < 1e-5
    # resid_mid = resid_pre + attn_out, and patching all of it restores the clean metric
    if family in PARALLEL:
        with pytest.raises(KeyError):
            R.capture(hf, ids, "resid_mid")
    else:
        mid, attn = R.capture(hf, ids, "resid_mid"), R.capture(hf, ids, "attn_out")
        pre = R.capture(hf, ids, "resid_pre")
        for layer in range(L):
            s = R.residual_multiplier(hf)  # 1 except for granite
            assert_close(mid[layer], pre[layer] + s * attn[layer], 1e-5, f"{family} resid_mid[{layer}]")
            v = R.reference_patch(hf, tok, CLEAN, CORRUPT, m, "resid_mid", layer)["value"]
            assert abs(v - clean_m) < 1e-5, (family, layer, v, clean_m)
    # q columns: a zero query makes that head attend uniformly over the keys it may see
    layer = 1
    uniform = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]
    for head in range(H):
        zero_q = R._setter(hf, "q", None, head, R.ablation_values(hf, tok, CLEAN, "q", layer, "zero"))
        with R.hooks(hf, [("q", layer, zero_q)]):
            pats = R._patterns(hf, ids)[layer]
        assert_close(pats[head], uniform, 1e-6, f"{family} zero q head {head}")
        others = [h for h in range(H) if h != head]
        assert (pats[others] - uniform).abs().amax((-1, -2)).min() > 1e-3
    # k columns and the GQA mapping: a zero key-value head's keys make its query heads uniform
    for kv in range(KV):
        zero_k = R._setter(hf, "k", None, kv, R.ablation_values(hf, tok, CLEAN, "k", layer, "zero"))
        with R.hooks(hf, [("k", layer, zero_k)]):
            pats = R._patterns(hf, ids)[layer]
        for head in range(H):
            dev = float((pats[head] - uniform).abs().max())
            assert (dev < 1e-6) == (R.kv_head_of(hf, head) == kv), (family, kv, head, dev)
    # v columns: zero values of one key-value head zero exactly its query heads' outputs
    for kv in range(KV):
        zero_v = R._setter(hf, "v", None, kv, R.ablation_values(hf, tok, CLEAN, "v", layer, "zero"))
        out = {}
        with R.hooks(
            hf, [("v", layer, zero_v), ("head", layer, lambda x, out=out: out.setdefault("x", x[0].clone()))]
        ):
            R.run_logits(hf, ids)
        for head in range(H):
            block = out["x"][:, R._cols(hf, "head", head)]
            assert (float(block.abs().max()) == 0) == (R.kv_head_of(hf, head) == kv), (family, kv, head)
    # pattern: each head's own pattern times its own values is its output (the clean pattern patched into
    # the clean run changes nothing, per head, at every query and at one), and a zero pattern = a zero head
    for head in range(H):
        for pos in (None, 5):
            v = R.reference_patch(hf, tok, CLEAN, CLEAN, m, "pattern", layer, position=pos, head=head)[
                "value"
            ]
            assert abs(v - clean_m) < 1e-5, (family, head, pos, v, clean_m)
        for pos in (None, 5):
            a = R.reference_ablate(hf, tok, CLEAN, m, "pattern", layer, position=pos, head=head)["value"]
            b = R.reference_ablate(hf, tok, CLEAN, m, "head", layer, position=pos, head=head)["value"]
            assert abs(a - b) < 1e-5
    # attribution: the estimate of q, v and pattern is the finite difference along (clean - corrupt)
    x_ids = R.tokens(tok, CORRUPT)
    corrupt_m = float(m(R.run_logits(hf, x_ids)[:, -1])[0])
    eps = 1e-3
    for site, head in (("q", 1), ("v", 0), ("pattern", 2), ("embed", None), ("resid_mid", None)):
        if site == "resid_mid" and family in PARALLEL:
            continue
        lyr = 0 if site == "embed" else 1
        attr = R.reference_attribution_patch(hf, tok, CLEAN, CORRUPT, m, site, by_position=True)
        cl, co = R.capture(hf, ids, site, [lyr])[lyr], R.capture(hf, x_ids, site, [lyr])[lyr]
        pos = 6
        if site == "pattern":
            step = co.clone()
            step[head, pos] = co[head, pos] + eps * (cl[head, pos] - co[head, pos])
        else:
            step = co[pos] + eps * (cl[pos] - co[pos])
        with R.hooks(hf, [(site, lyr, R._setter(hf, site, pos, head, step))]):
            fd = (float(m(R.run_logits(hf, x_ids)[:, -1])[0]) - corrupt_m) / eps
        est = float(attr[lyr, pos] if head is None else attr[lyr, pos, head])
        assert abs(fd - est) < 2e-3 * max(1.0, abs(fd)), (family, site, fd, est)


# =============================================================================================
# wb.patch: one cell


PATCH_CELLS = [
    ("embed", 0, 3, None),
    ("embed", 0, None, None),
    ("resid_mid", 1, 4, None),
    ("resid_mid", 2, None, None),
    ("resid_mid", 0, 8, None),
    ("q", 1, 8, 2),
    ("q", 0, None, 3),
    ("k", 1, None, 1),
    ("k", 2, 3, 0),
    ("v", 0, 8, 1),
    ("v", 2, None, 0),
    ("pattern", 1, 8, 3),
    ("pattern", 2, None, 1),
    ("pattern", 0, 4, 0),
]


@pytest.mark.parametrize("family", FAMILIES)
def test_patch_single_cell(family):
    model = tiny(family)
    for site, layer, position, head in PATCH_CELLS:
        if site == "resid_mid" and family in PARALLEL:
            continue
        kw = dict(site=site, layer=layer, position=position, head=head)
        ref = R.reference_patch(model.hf, model.tokenizer, CLEAN, CORRUPT, ref_metric(model), k=5, **kw)
        what = f"{family} patch {kw}"
        for fast in (True, False):
            if fast:
                v = wb.patch(model, CLEAN, CORRUPT, metric=metric(), top_k=5, **kw)
            else:
                with disabled():
                    v = wb.patch(model, CLEAN, CORRUPT, metric=metric(), top_k=5, **kw)
            assert_close(float(v), ref["value"], what=f"{what} fast={fast}")
            assert_close([v.clean, v.corrupt], [ref["clean"], ref["corrupt"]], what=what + " baselines")
            assert_same_topk(v.top_ids, v.top_probs, ref["top_ids"], ref["top_probs"], what=what)
    # the same cells given as cells=[Cell(...)] give the same numbers
    cell = Cell("q", 1, position=8, head=2)
    a = wb.patch(model, CLEAN, CORRUPT, metric=metric(), cells=[cell])
    b = wb.patch(model, CLEAN, CORRUPT, metric=metric(), site="q", layer=1, position=8, head=2)
    assert_close(float(a), float(b), what=f"{family} cells= vs layer=")


DRAGS = [
    dict(site="q", layer=1, position=5, head=1, source_layer=0, source_position=3),
    dict(site="k", layer=1, head=0, source_layer=2),
    dict(site="v", layer=0, position=8, head=1, source_position=2),
    dict(site="resid_mid", layer=1, position=4, source_layer=0, source_position=6),
    dict(site="embed", layer=0, position=2, source_position=5),
    dict(site="pattern", layer=2, position=8, head=1, source_layer=0),
    dict(site="pattern", layer=1, position=7, head=3, source_position=4),
]


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox", "gemma2", "phi3"])
def test_patch_drag_from_other_cell(family):
    """source_layer= / source_position= (a drag in the view) on the new sites, fast and traced."""
    model = tiny(family)
    for kw in DRAGS:
        if kw["site"] == "resid_mid" and family in PARALLEL:
            continue
        ref = R.reference_patch(model.hf, model.tokenizer, CLEAN, CORRUPT, ref_metric(model), **kw)
        v = wb.patch(model, CLEAN, CORRUPT, metric=metric(), **kw)
        with disabled():
            traced = wb.patch(model, CLEAN, CORRUPT, metric=metric(), **kw)
        assert_close([float(v), float(traced)], [ref["value"]] * 2, what=f"{family} drag {kw}")
        plain = {k: x for k, x in kw.items() if not k.startswith("source_")}
        undragged = R.reference_patch(model.hf, model.tokenizer, CLEAN, CORRUPT, ref_metric(model), **plain)
        assert abs(ref["value"] - undragged["value"]) > 1e-6, f"{family} {kw}: the drag changed nothing"


# =============================================================================================
# wb.patch_sweep


@pytest.mark.parametrize("by_position", [False, True])
@pytest.mark.parametrize("family,site", site_family_grid())
def test_patch_sweep(family, site, by_position):
    model = tiny(family)
    if by_position and site not in PER_HEAD:
        pytest.skip("one vector per position: the sweep is [L, T] either way")
    ref = R.reference_patch_sweep(
        model.hf, model.tokenizer, CLEAN, CORRUPT, ref_metric(model), site, by_position=by_position
    )
    sweep = wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site=site, by_position=by_position)
    T = model.to_tokens(CORRUPT).shape[1]
    n_layers = 1 if site == "embed" else model.n_layers
    if site in PER_HEAD:
        n = n_heads_of(model, site)
        shape, axes = (
            ((n_layers, T, n), ("layer", "position", "head"))
            if by_position
            else ((n_layers, n), ("layer", "head"))
        )
    else:
        shape, axes = (n_layers, T), ("layer", "position")
    assert sweep.values.shape == shape and tuple(sweep.axes) == axes
    what = f"{family} {site} sweep by_position={by_position}"
    assert_close(sweep.values, ref["values"], what=what)
    assert_close([sweep.clean, sweep.corrupt], [ref["clean"], ref["corrupt"]], what=what + " baselines")
    assert_moves(sweep.values, sweep.corrupt, what)
    with disabled():
        traced = wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site=site, by_position=by_position)
    assert_close(traced.values, ref["values"], what=what + " traced")


# =============================================================================================
# wb.ablate / wb.ablate_sweep


ABLATE_CELLS = [
    ("embed", 0, 2, None),
    ("resid_mid", 1, None, None),
    ("q", 1, 5, 1),
    ("k", 0, None, 1),
    ("v", 1, 7, 0),
    ("pattern", 1, None, 2),
    ("pattern", 2, 6, 0),
]


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
@pytest.mark.parametrize("family", FAMILIES)
def test_ablate(family, method):
    model = tiny(family)
    reference = OTHER if method == "resample" else None
    for site, layer, position, head in ABLATE_CELLS:
        if site == "resid_mid" and family in PARALLEL:
            continue
        kw = dict(site=site, layer=layer, position=position, head=head, method=method, reference=reference)
        if site == "pattern" and method == "mean":
            with pytest.raises(WorkbenchError, match="zero.*resample"):
                wb.ablate(model, CLEAN, metric=metric(), **kw)
            with pytest.raises(WorkbenchError, match="zero.*resample"):
                wb.ablate(model, CLEAN, metric=metric(), **{**kw, "reference": OTHER})
            continue
        ref = R.reference_ablate(model.hf, model.tokenizer, CLEAN, ref_metric(model), **kw)
        what = f"{family} ablate {kw}"
        v = wb.ablate(model, CLEAN, metric=metric(), **kw)
        assert_close(float(v), ref["value"], what=what)
        assert_close(v.clean, ref["clean"], what=what + " clean")
        assert_same_topk(v.top_ids, v.top_probs, ref["top_ids"], ref["top_probs"], what=what)
        with disabled():
            traced = wb.ablate(model, CLEAN, metric=metric(), **kw)
        assert_close(float(traced), ref["value"], what=what + " traced")
    # mean over reference prompts (not the prompt's own positions)
    if method == "mean":
        kw = dict(site="q", layer=1, position=4, head=2, method="mean", reference=[OTHER, CORRUPT])
        ref = R.reference_ablate(model.hf, model.tokenizer, CLEAN, ref_metric(model), **kw)
        assert_close(float(wb.ablate(model, CLEAN, metric=metric(), **kw)), ref["value"], what="q mean refs")


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
@pytest.mark.parametrize("family,site", site_family_grid())
def test_ablate_sweep(family, site, method):
    model = tiny(family)
    reference = OTHER if method == "resample" else None
    kw = dict(site=site, method=method, reference=reference)
    if site == "pattern" and method == "mean":
        with pytest.raises(WorkbenchError, match="zero.*resample"):
            wb.ablate_sweep(model, CLEAN, metric=metric(), **kw)
        return
    for by_position in (False, True) if site in PER_HEAD else (False,):
        ref = R.reference_ablate_sweep(
            model.hf, model.tokenizer, CLEAN, ref_metric(model), by_position=by_position, **kw
        )
        sweep = wb.ablate_sweep(model, CLEAN, metric=metric(), by_position=by_position, **kw)
        what = f"{family} ablate_sweep {site} {method} by_position={by_position}"
        assert_close(sweep.values, ref["values"], what=what)
        assert_close(sweep.clean, ref["clean"], what=what + " clean")
        assert_moves(sweep.values, sweep.clean, what)


# =============================================================================================
# wb.attribution_patch


@pytest.mark.parametrize("family,site", site_family_grid())
def test_attribution_patch(family, site):
    model = tiny(family)
    for by_position in (False, True):
        ref = R.reference_attribution_patch(
            model.hf, model.tokenizer, CLEAN, CORRUPT, ref_metric(model), site, by_position=by_position
        )
        res = wb.attribution_patch(model, CLEAN, CORRUPT, metric=metric(), site=site, by_position=by_position)
        what = f"{family} attribution {site} by_position={by_position}"
        assert_close(res.values - res.corrupt, ref.numpy(), what=what)
        assert_moves(res.values, res.corrupt, what)
        with disabled():
            traced = wb.attribution_patch(
                model, CLEAN, CORRUPT, metric=metric(), site=site, by_position=by_position
            )
        assert_close(traced.values, res.values, what=what + " traced vs fast")
        assert_close([traced.clean, traced.corrupt], [res.clean, res.corrupt], what=what + " baselines")


@pytest.mark.parametrize("family", FAMILIES)
def test_attribution_patch_many_sites_at_once(family):
    """A list of sites (new and old together) gives each site's numbers from one pass, fast and traced; the
    local fast path takes every new site."""
    model = tiny(family)
    sites = [
        s
        for s in ("embed", "q", "resid_mid", "head", "pattern", "v", "resid_pre", "k")
        if s in sites_of(family) or s in ("head", "resid_pre")
    ]
    c, k = pair_tokens(model, CLEAN, CORRUPT)
    for s in sites:
        assert fast_attribution.attribution(model, c, k, [s], metric().bind(model)) is not None, s
    one = {
        s: wb.attribution_patch(model, CLEAN, CORRUPT, metric=metric(), site=s, by_position=True)
        for s in sites
    }
    for fast in (True, False):
        with contextlib.nullcontext() if fast else disabled():
            many = wb.attribution_patch(model, CLEAN, CORRUPT, metric=metric(), site=sites, by_position=True)
        for s in sites:
            assert_close(
                many[s].values, one[s].values, what=f"{family} attribution {s} in a list, fast={fast}"
            )


# =============================================================================================
# The replay engine (fast path) against the traced engine, for the sites it claims


REPLAY_SITES = ("q", "k", "v", "resid_mid")
KINDS = ("source", "zero", "mean", "set", "add")


def _replay_rows(model, site: str, kind: str, T: int, seed: int) -> list[list[Edit]]:
    """Single-edit runs at `site`: every layer, one position / all positions, several heads."""
    g = torch.Generator().manual_seed(seed)
    width = model.d_head if site in PER_HEAD else model.d_model
    n = n_heads_of(model, site) if site in PER_HEAD else 1
    rows = []
    for layer in range(model.n_layers):
        for position in (None, 0, 4, T - 1):
            for head in [None] if n == 1 else sorted({0, n - 1, layer % n}):
                cell = Cell(site, layer, position, head)
                if kind in ("set", "add"):
                    shape = (width,) if position is not None or layer % 2 else (T, width)
                    t = torch.randn(*shape, generator=g)
                    value = t if kind == "set" else Add(t, scale=0.5 + layer)
                else:
                    value = kind
                rows.append([Edit(cell, value)])
    return rows


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family,site", site_family_grid(REPLAY_SITES))
def test_replay_vs_traced(family, site, kind):
    model = tiny(family)
    c, k = pair_tokens(model, CLEAN, CORRUPT)
    rows = _replay_rows(model, site, kind, k.shape[1], seed=len(family) + KINDS.index(kind))
    bound = metric().bind(model)
    fast = replay.run(model, c, k, rows, bound, top_k=4)
    assert fast is not None, f"{family} {site} {kind}: the replay engine did not take the sweep"
    with disabled():
        traced = run_rows(model, c, k, rows, bound, top_k=4)
    what = f"{family} {site} {kind}"
    assert_close(fast.values, traced.values, what=what)
    assert_close([fast.source, fast.base], [traced.source, traced.base], what=what + " baselines")
    assert_same_topk(fast.top_ids, fast.top_probs, traced.top_ids, traced.top_probs, what=what)
    assert_moves(fast.values, fast.base, what)
    # and run_rows (which tries the replay first) returns the replay's numbers
    again = run_rows(model, c, k, rows, bound, top_k=4)
    assert_close(again.values, fast.values, 0, what + " run_rows")


@pytest.mark.parametrize("family", FAMILIES)
def test_replay_declines_what_it_does_not_claim(family):
    """embed, pattern, mixed sites and joint edits go to the traced engine (and still give its numbers)."""
    model = tiny(family)
    c, k = pair_tokens(model, CLEAN, CORRUPT)
    bound = metric().bind(model)
    for rows in (
        [[Edit(Cell("embed", 0, 3))]],
        [[Edit(Cell("pattern", 1, 4, 2))]],
        [[Edit(Cell("q", 1, 4, 2))], [Edit(Cell("v", 1, 4, 0))]],
        [[Edit(Cell("q", 1, 4, 2)), Edit(Cell("k", 2, None, 1))]],
    ):
        assert replay.run(model, c, k, rows, bound) is None, rows


# =============================================================================================
# Errors


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_error_kv_head_out_of_range(family):
    model = tiny(family)
    kv, H = model.n_kv_heads, model.n_heads
    for site in ("k", "v"):
        for call in (
            lambda site=site: wb.patch(model, CLEAN, CORRUPT, metric=metric(), site=site, layer=1, head=kv),
            lambda site=site: wb.ablate(model, CLEAN, metric=metric(), site=site, layer=1, head=kv),
            lambda site=site: wb.patch(
                model, CLEAN, CORRUPT, metric=metric(), cells=[Cell(site, 1, head=kv)]
            ),
        ):
            with pytest.raises(SiteError) as err:
                call()
            msg = str(err.value)
            assert f"{kv} key-value heads" in msg and f"0..{kv - 1}" in msg, msg
            if kv < H:  # grouped-query attention: the message says which kv head a query head reads
                assert (
                    f"h // {H // kv}" in msg
                    and f"query head {kv} reads key-value head {kv // (H // kv)}" in msg
                ), msg
    # the same index is a fine query head for q
    if kv < H:
        wb.patch(model, CLEAN, CORRUPT, metric=metric(), site="q", layer=1, head=kv)
    with pytest.raises(SiteError, match=f"0..{H - 1}"):
        wb.patch(model, CLEAN, CORRUPT, metric=metric(), site="q", layer=1, head=H)


@pytest.mark.parametrize("family", ["llama", "phi"])
def test_error_head_on_a_site_without_heads(family):
    model = tiny(family)
    for site in ("embed", "resid_mid", "resid_pre", "mlp_out"):
        if site == "resid_mid" and family in PARALLEL:
            continue
        with pytest.raises(SiteError, match="head=2 only makes sense with a per-head site"):
            wb.patch(model, CLEAN, CORRUPT, metric=metric(), site=site, layer=0, position=1, head=2)
        with pytest.raises(SiteError, match="Drop head="):
            wb.ablate(model, CLEAN, metric=metric(), cells=[Cell(site, 0, position=1, head=2)])
    for site in PER_HEAD:
        with pytest.raises(SiteError, match="needs head="):
            wb.patch(model, CLEAN, CORRUPT, metric=metric(), site=site, layer=0, position=1)


@pytest.mark.parametrize("family", PARALLEL)
def test_error_resid_mid_on_parallel_family(family):
    model = tiny(family)
    calls = (
        lambda: wb.patch(model, CLEAN, CORRUPT, metric=metric(), site="resid_mid", layer=1, position=2),
        lambda: wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site="resid_mid"),
        lambda: wb.ablate(model, CLEAN, metric=metric(), site="resid_mid", layer=1),
        lambda: wb.ablate_sweep(model, CLEAN, metric=metric(), site="resid_mid"),
        lambda: wb.attribution_patch(model, CLEAN, CORRUPT, metric=metric(), site="resid_mid"),
        lambda: wb.attribution_patch(model, CLEAN, CORRUPT, metric=metric(), site=["q", "resid_mid"]),
    )
    for call in calls:
        with pytest.raises(SiteError) as err:
            call()
        msg = str(err.value)
        assert "resid_mid" in msg and "parallel attention and MLP" in msg and "resid_pre" in msg, msg
    # the model stays usable
    v = wb.patch(model, CLEAN, CORRUPT, metric=metric(), site="resid_pre", layer=1, position=2)
    assert np.isfinite(float(v))


def test_error_embed_above_layer_0():
    model = tiny("llama")
    for call in (
        lambda: wb.patch(model, CLEAN, CORRUPT, metric=metric(), site="embed", layer=1, position=2),
        lambda: wb.ablate(model, CLEAN, metric=metric(), cells=[Cell("embed", 2)]),
    ):
        with pytest.raises(SiteError, match=r"only at layer 0.*layer=\d.*wb.Cell\('embed', 0"):
            call()
    with pytest.raises(WorkbenchError, match=r"only layer 0 \(source_layer=1\).*source_position="):
        wb.patch(model, CLEAN, CORRUPT, metric=metric(), site="embed", layer=0, position=2, source_layer=1)


def test_resid_mid_on_sequential_gpt_neox():
    """GPT-NeoX with use_parallel_residual=False has a resid_mid (the input of post_attention_layernorm)."""
    import transformers

    torch.manual_seed(3)
    cfg = _config("gpt_neox", len(tiny_tokenizer()))  # the tiny GPT-NeoX, made sequential
    cfg.use_parallel_residual = False
    hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() >= 2:
                p.mul_(3.0)
    model = wb.Model.from_hf(hf.eval(), tiny_tokenizer(), source="tiny:gpt_neox-sequential")
    ref = R.reference_patch_sweep(hf, model.tokenizer, CLEAN, CORRUPT, ref_metric(model), "resid_mid")
    sweep = wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site="resid_mid")
    assert_close(sweep.values, ref["values"], what="sequential gpt_neox resid_mid sweep")
    assert_moves(sweep.values, sweep.corrupt, "sequential gpt_neox resid_mid")
    with disabled():
        traced = wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site="resid_mid")
    assert_close(traced.values, ref["values"], what="sequential gpt_neox resid_mid sweep, traced")
    attr = wb.attribution_patch(model, CLEAN, CORRUPT, metric=metric(), site="resid_mid")
    ref_attr = R.reference_attribution_patch(
        hf, model.tokenizer, CLEAN, CORRUPT, ref_metric(model), "resid_mid"
    )
    assert_close(
        attr.values - attr.corrupt, ref_attr.numpy(), what="sequential gpt_neox resid_mid attribution"
    )


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_pattern_after_qkv_of_its_layer_on_a_fresh_model(family):
    """A pattern read after a q/k/v site of the same layer, in one trace, on a model no earlier trace
    instrumented (nnsight builds an attention module's `.source` on first use; inside the running module
    is too late): a joint patch and a traced attribution, against the reference."""
    from workbench.testing import tiny_model

    model = tiny_model(family, seed=4)
    hf, tok, m = model.hf, model.tokenizer, ref_metric(model)
    c_ids, x_ids = R.tokens(tok, CLEAN), R.tokens(tok, CORRUPT)
    q, pats = R.capture(hf, c_ids, "q", [1])[1], R.capture(hf, c_ids, "pattern", [1])[1]
    specs = [("q", 1, R._setter(hf, "q", 3, 1, q[3])), ("pattern", 1, R._setter(hf, "pattern", 4, 2, pats))]
    with R.hooks(hf, specs):
        want = float(m(R.run_logits(hf, x_ids)[:, -1])[0])
    got = wb.patch(
        model, CLEAN, CORRUPT, metric=metric(), cells=[Cell("q", 1, 3, 1), Cell("pattern", 1, 4, 2)]
    )
    assert_close(float(got), want, what=f"{family} joint q + pattern")
    with disabled():
        est = wb.attribution_patch(
            model, CLEAN, CORRUPT, metric=metric(), site=["k", "pattern"], by_position=True
        )
    for s in ("k", "pattern"):
        ref = R.reference_attribution_patch(hf, tok, CLEAN, CORRUPT, m, s, by_position=True)
        assert_close(est[s].values - est[s].corrupt, ref.numpy(), what=f"{family} traced attribution {s}")


SET_ADD_CELLS = [
    ("embed", 0, 4, None),
    ("resid_mid", 1, None, None),
    ("q", 1, 6, 2),
    ("k", 0, None, 1),
    ("v", 2, 8, 0),
    ("pattern", 1, 8, 3),
    ("pattern", 0, None, 1),
]


def _reference_set_or_add(model, cell: Cell, kind: str, t: torch.Tensor, scale: float) -> float:
    """The reference's metric of the corrupt run with `t` set at (or scale * t added to) the cell."""
    hf, tok = model.hf, model.tokenizer
    x_ids = R.tokens(tok, CORRUPT)
    site, layer, pos, head = cell.site, cell.layer, cell.position, cell.head
    own = R.capture(hf, x_ids, site, [layer])[layer]  # the run's own activation there (pattern [H, T, T])
    if site == "pattern":
        rows = own[head] if pos is None else own[head, pos]
        new = t.expand_as(rows) if kind == "set" else rows + scale * t
        values = own.clone()
        if pos is None:
            values[head] = new
        else:
            values[head, pos] = new
    else:
        cols = R._cols(hf, site, head)
        values = own.clone()
        at = slice(None) if pos is None else pos
        values[at, cols] = t if kind == "set" else values[at, cols] + scale * t
    with R.hooks(hf, [(site, layer, R._setter(hf, site, pos, head, values))]):
        return float(ref_metric(model)(R.run_logits(hf, x_ids)[:, -1])[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_set_and_add_vs_reference(family):
    """Edits that set a tensor or add one (wb.Add) at the new sites, fast and traced, equal the reference."""
    model = tiny(family)
    c, k = pair_tokens(model, CLEAN, CORRUPT)
    T = k.shape[1]
    g = torch.Generator().manual_seed(7)
    bound = metric().bind(model)
    for site, layer, pos, head in SET_ADD_CELLS:
        if site == "resid_mid" and family in PARALLEL:
            continue
        cell = Cell(site, layer, pos, head)
        width = T if site == "pattern" else model.d_head if head is not None else model.d_model
        shape = (width,) if pos is not None else (T, width)
        t = torch.rand(*shape, generator=g) / T if site == "pattern" else torch.randn(*shape, generator=g)
        for kind in ("set", "add"):
            value = t if kind == "set" else Add(t, scale=1.5)
            want = _reference_set_or_add(model, cell, kind, t, 1.5)
            for fast in (True, False):
                with contextlib.nullcontext() if fast else disabled():
                    out = run_rows(model, c, k, [[Edit(cell, value)]], bound)
                assert_close(float(out.values[0]), want, what=f"{family} {kind} at {cell} fast={fast}")
            assert abs(want - float(out.base)) > 1e-5, f"{family} {kind} at {cell} changed nothing"


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_lens_with_a_new_site_intervention(family):
    """A logit lens run with an intervention at a new site: the local lens and the traced one agree, and the
    final row is the patched model's own output (the reference's patched forward)."""
    model = tiny(family)
    ids = R.tokens(model.tokenizer, CORRUPT)
    c_ids = R.tokens(model.tokenizer, CLEAN)
    for site, layer, pos, head in (
        ("q", 1, 8, 2),
        ("pattern", 1, 8, 2),
        ("embed", 0, 3, None),
        ("v", 0, 5, 1),
    ):
        iv = wb.Intervention(site, layer, pos, head, kind="patch", source=CLEAN)
        fast = wb.logit_lens(model, CORRUPT, top_k=4, intervention=iv)
        with disabled():
            traced = wb.logit_lens(model, CORRUPT, top_k=4, intervention=iv)
        what = f"{family} lens with {site}"
        assert_same_topk(fast.top_ids, fast.top_probs, traced.top_ids, traced.top_probs, what=what)
        act = R.capture(model.hf, c_ids, site, [layer])[layer]
        with R.hooks(
            model.hf,
            [(site, layer, R._setter(model.hf, site, pos, head, act if site == "pattern" else act[pos]))],
        ):
            final = torch.softmax(R.run_logits(model.hf, ids)[0, -1], -1)
        top = final.topk(4)
        assert_same_topk(
            fast.top_ids[-1, -1], fast.top_probs[-1, -1], top.indices.numpy(), top.values.numpy(), what=what
        )
