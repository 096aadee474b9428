"""Joint edits (patch/ablate cells=), wb.intervene, and their generated code, against the independent
hook reference (tests/reference.py `reference_joint`: one plain hook per edit, all at once).

Numbers: float32, max abs diff <= 1e-4, on every family of workbench.testing.FAMILIES and (marked
`embedded`) on the embedded SmolLM2-135M model.
"""

from __future__ import annotations

import math

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
from workbench.engine import fast
from workbench.engine.sites import site as site_record
from workbench.errors import SiteError, TokenizationError, WorkbenchError
from workbench.ops.results import _where
from workbench.testing import FAMILIES, tiny_model

N_TOKENS = 9  # CLEAN, CORRUPT and OTHER on the tiny tokenizer


# The sites the reference's plain hooks know (its table grows with the new sites); pattern edits, whose
# reference needs the live probabilities, are checked through the generated code and the traced path.
REF_SITES = tuple(s for s in getattr(R, "ALL_SITES", R.SITES) if s != "pattern")


def metric():
    return wb.logit_diff(TARGET, FOIL)


def ref_metric(model):
    return R.logit_diff(model.tokenizer, TARGET, FOIL)


def has_site(model, site: str) -> bool:
    """Whether the model has the site (resid_mid does not exist in parallel attention/MLP blocks)."""
    try:
        model.check_site(site)
    except SiteError:
        return False
    return True


def joint_cells(model) -> list[wb.Cell]:
    """Cells across sites, layers, positions and heads (two at one module), each valid on every tiny family;
    the sites the reference knows (REF_SITES)."""
    cells = [
        wb.Cell("head", 1, head=2),
        wb.Cell("mlp_out", 1, position=3),
        wb.Cell("mlp_out", 1, position=6),
        wb.Cell("mlp_out", 2, position=8),
        wb.Cell("resid_pre", 1, position=8),
        wb.Cell("attn_out", 0, position=5),
        wb.Cell("head", 2, position=8, head=0),
        wb.Cell("resid_post", 0, position=2),
        wb.Cell("q", 1, head=1),
        wb.Cell("k", 2, position=6, head=model.n_kv_heads - 1),
        wb.Cell("v", 0, head=0),
        wb.Cell("embed", 0, position=4),
        wb.Cell("resid_mid", 1, position=7),
        wb.Cell("pattern", 2, position=8, head=3),
    ]
    return [c for c in cells if c.site in REF_SITES and has_site(model, c.site)]


def all_site_cells(model) -> list[wb.Cell]:
    """One or two cells of every site the model has (for the engine and the generated code, no reference)."""
    cells = [
        wb.Cell("embed", 0, position=2),
        wb.Cell("q", 0, head=1),
        wb.Cell("resid_post", 0, position=5),
        wb.Cell("k", 1, position=4, head=model.n_kv_heads - 1),
        wb.Cell("v", 1, head=0),
        wb.Cell("head", 1, head=2),
        wb.Cell("resid_mid", 1, position=6),
        wb.Cell("v", 2, position=7, head=0),
        wb.Cell("pattern", 2, head=1),
        wb.Cell("pattern", 2, position=8, head=0),
        wb.Cell("mlp_out", 2, position=3),
    ]
    return [c for c in cells if has_site(model, c.site)]


def as_ref(cells, how="source", arg=None):
    return [(c.site, c.layer, c.position, c.head, how, arg) for c in cells]


def check_against(v, ref, what: str) -> None:
    assert_close(float(v), ref["value"], what=f"{what} value")
    assert_close(v.corrupt, ref["corrupt"], what=f"{what} corrupt")
    assert_close(v.clean, ref["clean"], what=f"{what} clean")
    assert_same_topk(v.top_ids, v.top_probs, ref["top_ids"], ref["top_probs"], what=what)


# =============================================================================================
# joint patch and ablate against the reference


@pytest.mark.parametrize("family", FAMILIES)
def test_joint_patch(family):
    model = tiny(family)
    cells = joint_cells(model)
    assert {"head", "mlp_out", "resid_pre", "attn_out", "resid_post"} <= {c.site for c in cells}
    v = wb.patch(model, CLEAN, CORRUPT, metric=metric(), cells=cells)
    ref = R.reference_joint(
        model.hf, model.tokenizer, CORRUPT, ref_metric(model), as_ref(cells), source=CLEAN
    )
    check_against(v, ref, f"{family} joint patch")
    assert not math.isclose(float(v), v.corrupt, abs_tol=1e-3), "the joint patch changed nothing"
    for same in (set(cells), tuple(reversed(cells))):  # a set or tuple of cells: the same joint run
        assert_close(
            float(wb.patch(model, CLEAN, CORRUPT, metric=metric(), cells=same)), float(v), what="set"
        )
    one = wb.patch(model, CLEAN, CORRUPT, metric=metric(), cells=cells[0])  # one Cell, not in a list
    assert float(one) == float(wb.patch(model, CLEAN, CORRUPT, metric=metric(), cells=cells[:1]))
    three = wb.patch(model, CLEAN, CORRUPT, metric=metric(), cells=cells[:3])
    ref3 = R.reference_joint(
        model.hf, model.tokenizer, CORRUPT, ref_metric(model), as_ref(cells[:3]), source=CLEAN
    )
    check_against(three, ref3, f"{family} three cells")


@pytest.mark.parametrize("method", ["zero", "mean", "mean_reference", "resample"])
@pytest.mark.parametrize("family", FAMILIES)
def test_joint_ablate(family, method):
    model = tiny(family)
    cells = joint_cells(model)
    tok, m = model.tokenizer, ref_metric(model)
    if method == "zero":
        v = wb.ablate(model, CLEAN, metric=metric(), cells=cells, method="zero")
        ref = R.reference_joint(model.hf, tok, CLEAN, m, as_ref(cells, "zero"))
    elif method == "mean":
        v = wb.ablate(model, CLEAN, metric=metric(), cells=cells, method="mean")
        ref = R.reference_joint(model.hf, tok, CLEAN, m, as_ref(cells, "mean"))
    elif method == "mean_reference":
        refs = [OTHER, CORRUPT_SHORT]  # any lengths: the mean is over every token of the references
        v = wb.ablate(model, CLEAN, metric=metric(), cells=cells, method="mean", reference=refs)
        ref = R.reference_joint(model.hf, tok, CLEAN, m, as_ref(cells, "mean_of", refs))
    else:
        refs = [OTHER, CORRUPT]
        v = wb.ablate(model, CLEAN, metric=metric(), cells=cells, method="resample", reference=refs)
        runs = [R.reference_joint(model.hf, tok, CLEAN, m, as_ref(cells), source=r) for r in refs]
        ref = dict(runs[0], value=float(np.mean([r["value"] for r in runs])))
        ref["clean"] = ref["corrupt"]  # .clean of an ablation is the unablated prompt
    assert_close(float(v), ref["value"], what=f"{family} joint ablate {method}")
    assert_close(v.clean, ref["corrupt"], what=f"{family} joint ablate {method} unablated")
    assert math.isnan(v.corrupt)
    assert_same_topk(v.top_ids, v.top_probs, ref["top_ids"], ref["top_probs"], what=f"{family} {method}")


@pytest.mark.parametrize("family", FAMILIES)
def test_one_cell_equals_single_cell_op(family):
    """cells=[one cell], and intervene with that one edit, give exactly the single-cell op's numbers."""
    model = tiny(family)
    m = metric()
    for c in all_site_cells(model):
        keys = dict(site=c.site, layer=c.layer, position=c.position, head=c.head)
        single = wb.patch(model, CLEAN, CORRUPT, metric=m, **keys)
        joint = wb.patch(model, CLEAN, CORRUPT, metric=m, cells=[c])
        via = wb.intervene(model, CORRUPT, [wb.Edit(c, "source")], metric=m, source=CLEAN)
        for other in (joint, via):
            assert (float(other), other.clean, other.corrupt) == (
                float(single),
                single.clean,
                single.corrupt,
            ), c
            assert np.array_equal(other.top_ids, single.top_ids) and np.array_equal(
                other.top_probs, single.top_probs
            )
        if c.site == "pattern":
            continue  # the mean of a pattern is not a pattern (refused; see test_bad_input)
        for method in ("zero", "mean"):
            a = wb.ablate(model, CLEAN, metric=m, method=method, **keys)
            b = wb.ablate(model, CLEAN, metric=m, method=method, cells=[c])
            e = wb.intervene(model, CLEAN, [wb.Edit(c, method)], metric=m)
            assert float(a) == float(b) == float(e) and a.clean == b.clean == e.corrupt, (c, method)


@pytest.mark.parametrize("family", ("gpt2", "llama", "gpt_neox", "phi3"))
def test_joint_fast_equals_traced(family):
    """Whatever path a joint run takes (the replay fast path handles single edits only), the traced path
    gives the same numbers; and a fresh model (attention source not yet instrumented) runs a joint q/k/v +
    pattern edit at one layer."""
    fresh = tiny_model(family)
    cells = [wb.Cell("v", 2, head=0), wb.Cell("q", 2, position=8, head=1), wb.Cell("pattern", 2, head=1)]
    v = wb.patch(fresh, CLEAN, CORRUPT, metric=metric(), cells=cells)
    again = wb.patch(fresh, CLEAN, CORRUPT, metric=metric(), cells=cells)
    assert float(v) == float(again)
    model = tiny(family)
    for cells in (all_site_cells(model), all_site_cells(model)[:1], [wb.Cell("mlp_out", 1, position=4)]):
        on = wb.patch(model, CLEAN, CORRUPT, metric=metric(), cells=cells)
        with fast.disabled():
            off = wb.patch(model, CLEAN, CORRUPT, metric=metric(), cells=cells)
        assert_close(float(on), float(off), what=f"{family} fast vs traced {cells}")


# =============================================================================================
# intervene


def _tensor(shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_intervene_each_kind(family):
    model = tiny(family)
    tok, m = model.tokenizer, ref_metric(model)
    d, dh, T = model.d_model, model.d_head, N_TOKENS
    cases = [
        (wb.Edit(wb.Cell("resid_pre", 1, position=3), "source"), ("source", None)),
        (wb.Edit(wb.Cell("head", 2, head=1), "source"), ("source", None)),
        (wb.Edit(wb.Cell("mlp_out", 1), "zero"), ("zero", None)),
        (wb.Edit(wb.Cell("head", 1, position=8, head=0), "zero"), ("zero", None)),
        (wb.Edit(wb.Cell("attn_out", 2, position=8), "mean"), ("mean", None)),
        (wb.Edit(wb.Cell("head", 0, head=3), "mean"), ("mean", None)),
        (wb.Edit(wb.Cell("resid_post", 1, position=8), _tensor((d,), 1)), ("set", _tensor((d,), 1))),
        (wb.Edit(wb.Cell("attn_out", 1), _tensor((T, d), 2)), ("set", _tensor((T, d), 2))),
        (wb.Edit(wb.Cell("head", 1, head=2), _tensor((T, dh), 3)), ("set", _tensor((T, dh), 3))),
        (wb.Edit(wb.Cell("resid_pre", 2), wb.Add(_tensor((d,), 4), 3.0)), ("add", 3.0 * _tensor((d,), 4))),
        (
            wb.Edit(wb.Cell("head", 2, position=7, head=0), wb.Add(_tensor((dh,), 5), -2.0)),
            ("add", -2.0 * _tensor((dh,), 5)),
        ),
        (wb.Edit(wb.Cell("mlp_out", 0, position=4), [0.5] * d), ("set", torch.full((d,), 0.5))),
    ]
    for edit, (how, arg) in cases:
        c = edit.cell
        spec = [(c.site, c.layer, c.position, c.head, how, arg)]
        source = OTHER if how == "source" else None
        v = wb.intervene(model, CLEAN, [edit], metric=metric(), source=source)
        check_against(
            v, R.reference_joint(model.hf, tok, CLEAN, m, spec, source=source), f"{family} {edit!r}"
        )
    # every kind at once, in one run
    edits = [e for e, _ in cases]
    spec = [(e.cell.site, e.cell.layer, e.cell.position, e.cell.head, how, arg) for e, (how, arg) in cases]
    v = wb.intervene(model, CLEAN, edits, metric=metric(), source=OTHER)
    check_against(v, R.reference_joint(model.hf, tok, CLEAN, m, spec, source=OTHER), f"{family} all kinds")
    # no metric: NaN, with the run's top-k
    bare = wb.intervene(model, CLEAN, edits, source=OTHER, top_k=7)
    assert math.isnan(float(bare)) and math.isnan(bare.clean) and math.isnan(bare.corrupt)
    ref = R.reference_joint(model.hf, tok, CLEAN, m, spec, source=OTHER, k=7)
    assert_same_topk(
        bare.top_ids, bare.top_probs, ref["top_ids"], ref["top_probs"], what=f"{family} no metric"
    )
    assert bare.top_tokens == model.str_tokens(bare.top_ids.tolist())


@pytest.mark.parametrize("family", FAMILIES)
def test_intervene_new_sites(family):
    """Every site (embed, resid_mid, q, k, v, pattern too) takes every value kind; the reference covers the
    sites it knows (REF_SITES); engine fast vs traced covers all."""
    model = tiny(family)
    T = N_TOKENS
    for c in all_site_cells(model):
        rec = site_record(c.site)
        width = T if rec.pattern else model.d_head if rec.per_head else model.d_model
        shape = (width,) if c.position is not None else (T, width)
        values = ["source", "zero", _tensor(shape, 7), wb.Add(_tensor(shape, 8), 0.5)]
        if not rec.pattern:
            values.append("mean")
        for value in values:
            e = wb.Edit(c, value)
            v = wb.intervene(model, CLEAN, [e], metric=metric(), source=OTHER)
            with fast.disabled():
                off = wb.intervene(model, CLEAN, [e], metric=metric(), source=OTHER)
            assert_close(float(v), float(off), what=f"{family} {e!r} fast vs traced")
            if c.site in REF_SITES:
                how = value if isinstance(value, str) else "add" if isinstance(value, wb.Add) else "set"
                arg = value.tensor * value.scale if isinstance(value, wb.Add) else value
                spec = [
                    (
                        c.site,
                        c.layer,
                        c.position,
                        c.head,
                        how,
                        None if how in ("source", "zero", "mean") else arg,
                    )
                ]
                ref = R.reference_joint(
                    model.hf, model.tokenizer, CLEAN, ref_metric(model), spec, source=OTHER
                )
                check_against(v, ref, f"{family} {e!r}")


@pytest.mark.parametrize("family", FAMILIES)
def test_intervene_add_equals_steer(family):
    """wb.Add at Cell('resid_pre', layer) is what wb.steer adds at every prompt position at its first step:
    the same next token, and the same next-token distribution as the hook reference."""
    model = tiny(family)
    layer, scale = 1, 6.0
    vec = _tensor((model.d_model,), 11)
    v = wb.intervene(
        model, CLEAN, [wb.Edit(wb.Cell("resid_pre", layer), wb.Add(vec, scale))], metric=metric()
    )
    steered = wb.steer(model, CLEAN, vector=vec, layer=layer, scale=scale, max_new_tokens=1, baseline=False)
    assert steered.tokens[0] == int(v.top_ids[0])
    spec = [("resid_pre", layer, None, None, "add", scale * vec)]
    ref = R.reference_joint(model.hf, model.tokenizer, CLEAN, ref_metric(model), spec)
    check_against(v, ref, f"{family} add")
    ref_steer = R.reference_steer(model.hf, model.tokenizer, CLEAN, vec, layer, scale, max_new_tokens=1)
    assert ref_steer["ids"][0] == int(v.top_ids[0])
    assert abs(float(v) - v.corrupt) > 1e-3, "the added vector changed nothing"


# =============================================================================================
# generated code runs and gives the same numbers


CODE_FAMILIES = ("gpt2", "llama", "gpt_neox", "phi3", "gemma2")  # fused split, plain GQA, interleaved, fused


@pytest.mark.parametrize("family", CODE_FAMILIES)
def test_to_code_joint(family):
    model = tiny(family)
    m = metric()
    cells = all_site_cells(model)
    no_pattern = [c for c in cells if c.site != "pattern"]
    results = [
        wb.patch(model, CLEAN, CORRUPT, metric=m, cells=cells),
        wb.patch(model, CLEAN, CORRUPT, metric=m, site="k", layer=2, position=5, head=0, source_layer=1),
        wb.patch(
            model, CLEAN, CORRUPT, metric=m, site="pattern", layer=1, position=8, head=2, source_position=6
        ),
        wb.ablate(model, CLEAN, metric=m, cells=cells, method="zero"),
        wb.ablate(model, CLEAN, metric=m, cells=no_pattern, method="mean"),
        wb.ablate(model, CLEAN, metric=m, cells=no_pattern, method="mean", reference=[OTHER, CORRUPT_SHORT]),
        wb.ablate(model, CLEAN, metric=m, cells=cells, method="resample", reference=[OTHER, CORRUPT]),
        wb.ablate(model, CLEAN, metric=m, site="q", layer=1, head=0, method="resample", reference=OTHER),
    ]
    for v in results:
        assert_close(float(run_code(v.to_code())["result"]), float(v), what=f"{family} {v!r}")


@pytest.mark.parametrize("family", CODE_FAMILIES)
def test_to_code_intervene(family):
    model = tiny(family)
    T = N_TOKENS
    edits = [
        wb.Edit(wb.Cell("embed", 0, position=1), _tensor((model.d_model,), 1)),
        wb.Edit(wb.Cell("resid_pre", 1, position=3), "source"),
        wb.Edit(wb.Cell("q", 1, head=1), wb.Add(_tensor((T, model.d_head), 2), 0.5)),
        wb.Edit(wb.Cell("head", 1, head=0), "mean"),
        wb.Edit(wb.Cell("mlp_out", 0), "zero"),
        wb.Edit(wb.Cell("v", 2, head=0, position=2), "zero"),
        wb.Edit(wb.Cell("pattern", 2, head=1, position=4), "source"),
        wb.Edit(wb.Cell("pattern", 2, head=0, position=8), _tensor((T,), 3).softmax(-1)),
        wb.Edit(wb.Cell("resid_post", 2, position=8), wb.Add(_tensor((model.d_model,), 4))),
    ]
    v = wb.intervene(model, CLEAN, edits, metric=metric(), source=OTHER)
    ns = run_code(v.to_code())
    assert_close(float(ns["result"]), float(v), what=f"{family} intervene")
    assert_close(ns["top_probs"].numpy(), v.top_probs, what=f"{family} intervene top_probs")
    bare = wb.intervene(model, CLEAN, [e for e in edits if e.kind != "source"], top_k=3)
    top_ids, top_probs = run_code(bare.to_code())["result"]
    assert np.array_equal(top_ids.numpy(), bare.top_ids) and top_ids.shape == (3,)
    assert_close(top_probs.numpy(), bare.top_probs, what=f"{family} intervene without metric")


SWEEP_SITES = ("embed", "resid_mid", "q", "k", "v", "pattern", "head", "resid_post")


@pytest.mark.parametrize("site", SWEEP_SITES)
@pytest.mark.parametrize("family", CODE_FAMILIES)
def test_to_code_sweeps_of_every_site(family, site):
    model = tiny(family)
    if not has_site(model, site):
        with pytest.raises(SiteError, match="parallel"):
            wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site=site)
        return
    m = metric()
    pattern = site_record(site).pattern
    sweeps = [
        wb.patch_sweep(model, CLEAN, CORRUPT, metric=m, site=site),
        wb.ablate_sweep(model, CLEAN, metric=m, site=site, method="zero"),
    ]
    if site_record(site).per_head:
        sweeps.append(wb.patch_sweep(model, CLEAN, CORRUPT, metric=m, site=site, by_position=True))
    if not pattern:
        sweeps.append(wb.ablate_sweep(model, CLEAN, metric=m, site=site, method="mean", reference=OTHER))
        sweeps.append(wb.attribution_patch(model, CLEAN, CORRUPT, metric=m, site=site))
        if site_record(site).per_head:
            sweeps.append(wb.attribution_patch(model, CLEAN, CORRUPT, metric=m, site=site, by_position=True))
    for s in sweeps:
        got = run_code(s.to_code())["result"]
        assert_close(np.asarray(got, dtype=np.float64), s.values, what=f"{family} {s.options}")


# =============================================================================================
# bad input: a WorkbenchError naming the fix, and the model stays usable


def _errors(model):
    d = model.d_model
    cell = wb.Cell("resid_pre", 1, position=3)
    p = dict(metric=metric())
    return [
        (lambda: wb.patch(model, CLEAN, CORRUPT, cells=[], **p), WorkbenchError, "cells= is empty"),
        (lambda: wb.ablate(model, CLEAN, cells=[], **p), WorkbenchError, "cells= is empty"),
        (lambda: wb.patch(model, CLEAN, CORRUPT, cells=[cell], layer=1, **p), WorkbenchError, "not both"),
        (lambda: wb.ablate(model, CLEAN, cells=[cell], head=1, **p), WorkbenchError, "not both"),
        (lambda: wb.patch(model, CLEAN, CORRUPT, cells=[("head", 1)], **p), WorkbenchError, "wb.Cell"),
        (lambda: wb.patch(model, CLEAN, CORRUPT, cells=cell.site, **p), WorkbenchError, "list of wb.Cell"),
        (lambda: wb.patch(model, CLEAN, CORRUPT, **p), SiteError, "layer=.*or cells="),
        (
            lambda: wb.patch(model, CLEAN, CORRUPT, cells=[wb.Cell("mlp_out", 1, head=0)], **p),
            SiteError,
            "Drop head=",
        ),
        (
            lambda: wb.patch(model, CLEAN, CORRUPT, cells=[wb.Cell("k", 1, head=model.n_kv_heads)], **p),
            SiteError,
            "key-value heads",
        ),
        (lambda: wb.patch(model, CLEAN, CORRUPT, cells=[wb.Cell("embed", 1)], **p), SiteError, "layer 0"),
        (lambda: wb.patch(model, CLEAN, CORRUPT, cells=[wb.Cell("q", 1)], **p), SiteError, "needs head="),
        (
            lambda: wb.ablate(model, CLEAN, cells=[wb.Cell("pattern", 1, head=0)], method="mean", **p),
            WorkbenchError,
            "'zero' or 'resample'",
        ),
        (lambda: wb.intervene(model, CLEAN, [], **p), WorkbenchError, "non-empty list"),
        (lambda: wb.intervene(model, CLEAN, [cell], **p), WorkbenchError, r"wb.Edit\(cell, value\)"),
        (
            lambda: wb.intervene(model, CLEAN, [wb.Edit(cell, "zeros")], **p),
            WorkbenchError,
            "'source', 'zero', 'mean'",
        ),
        (
            lambda: wb.intervene(model, CLEAN, [wb.Edit(cell, torch.zeros(d + 1))], **p),
            WorkbenchError,
            "shape",
        ),
        (
            lambda: wb.intervene(model, CLEAN, [wb.Edit(cell, torch.zeros(3, d))], **p),
            WorkbenchError,
            "shape",
        ),
        (
            lambda: wb.intervene(model, CLEAN, [wb.Edit(cell, wb.Add(torch.zeros(model.d_head)))], **p),
            WorkbenchError,
            "shape",
        ),
        (
            lambda: wb.intervene(model, CLEAN, [wb.Edit(cell, torch.full((d,), math.nan))], **p),
            WorkbenchError,
            "NaN",
        ),
        (
            lambda: wb.intervene(model, CLEAN, [wb.Edit(cell, wb.Add(torch.full((d,), math.inf)))], **p),
            WorkbenchError,
            "NaN or inf",
        ),
        (lambda: wb.intervene(model, CLEAN, [wb.Edit(cell, "source")], **p), WorkbenchError, "source="),
        (
            lambda: wb.intervene(model, CLEAN, [wb.Edit(cell, "source")], source=CORRUPT_SHORT, **p),
            TokenizationError,
            "same number of tokens",
        ),
        (lambda: wb.intervene(model, CLEAN, [wb.Edit(cell, "the clean run")], **p), WorkbenchError, "wb.Add"),
        (lambda: wb.intervene(model, CLEAN, [wb.Edit(cell, object())], **p), WorkbenchError, "tensor"),
        (
            lambda: wb.intervene(model, CLEAN, [wb.Edit(("resid_pre", 1), "zero")], **p),
            WorkbenchError,
            "wb.Cell",
        ),
    ]


@pytest.mark.parametrize("family", ("gpt2", "llama", "gemma2"))
def test_bad_input(family):
    model = tiny(family)
    cells = [wb.Cell("head", 1, head=2), wb.Cell("mlp_out", 2, position=3)]
    ref = R.reference_joint(
        model.hf, model.tokenizer, CORRUPT, ref_metric(model), as_ref(cells), source=CLEAN
    )
    for i, (call, error, words) in enumerate(_errors(model)):
        with pytest.raises(error, match=words):
            call()
        if i % 5 == 0:  # the model stays usable: a following op gives the right number
            v = wb.patch(model, CLEAN, CORRUPT, metric=metric(), cells=cells)
            assert_close(float(v), ref["value"], what=f"{family} after error {i}")
    v = wb.intervene(model, CORRUPT, [wb.Edit(c) for c in cells], metric=metric(), source=CLEAN)
    assert_close(float(v), ref["value"], what=f"{family} after the errors")


# =============================================================================================
# the result cache, the repr, figures and frames


def test_result_cache_keys_cells_and_edits(tmp_path):
    model = tiny("llama")
    m = metric()
    vec = _tensor((model.d_model,), 5)
    with wb.cache(tmp_path) as store:
        a = wb.patch(
            model,
            CLEAN,
            CORRUPT,
            metric=m,
            cells=[wb.Cell("head", 1, head=2), wb.Cell("mlp_out", 1, position=3)],
        )
        b = wb.patch(
            model,
            CLEAN,
            CORRUPT,
            metric=m,
            cells=[wb.Cell("head", 1, head=2), wb.Cell("mlp_out", 1, position=3)],
        )
        assert (store.hits, store.misses) == (1, 1) and float(a) == float(b)
        c = wb.patch(
            model,
            CLEAN,
            CORRUPT,
            metric=m,
            cells=[wb.Cell("head", 1, head=2), wb.Cell("mlp_out", 1, position=4)],
        )
        assert (store.hits, store.misses) == (1, 2) and float(c) != float(a)
        edits = [
            wb.Edit(wb.Cell("resid_pre", 1), wb.Add(vec, 2.0)),
            wb.Edit(wb.Cell("head", 0, head=1), "zero"),
        ]
        same = [
            wb.Edit(wb.Cell("resid_pre", 1), wb.Add(vec.clone(), 2.0)),
            wb.Edit(wb.Cell("head", 0, head=1), "zero"),
        ]
        x = wb.intervene(model, CLEAN, edits, metric=m)
        y = wb.intervene(model, CLEAN, same, metric=m)
        assert (store.hits, store.misses) == (2, 3) and float(x) == float(y)
        for other in (
            [wb.Edit(wb.Cell("resid_pre", 1), wb.Add(vec, 3.0)), edits[1]],
            [wb.Edit(wb.Cell("resid_pre", 1), wb.Add(vec + 1, 2.0)), edits[1]],
            [wb.Edit(wb.Cell("resid_pre", 1), vec), edits[1]],
            [edits[0], wb.Edit(wb.Cell("head", 0, head=1), "mean")],
        ):
            wb.intervene(model, CLEAN, other, metric=m)
        assert (store.hits, store.misses) == (2, 7)
        assert_close(float(run_code(y.to_code())["result"]), float(x), what="cached intervene's code")


def test_repr_figures_and_frames_of_joint_results():
    model = tiny("gpt2")
    cells = [
        wb.Cell("head", 1, head=3),
        wb.Cell("mlp_out", 2, position=8),
        wb.Cell("q", 0, head=1),
        wb.Cell("embed", 0),
    ]
    v = wb.patch(model, CLEAN, CORRUPT, metric=metric(), cells=cells)
    text = repr(v)
    assert "patch 4 cells: head L1 H3, mlp_out L2 pos 8, q L0 H1, ..." in text, text
    one = wb.patch(model, CLEAN, CORRUPT, metric=metric(), cells=cells[:1])
    assert "| patch head L1 H3," in repr(one)
    a = wb.ablate(model, CLEAN, metric=metric(), cells=cells[:2])
    assert "ablate 2 cells: head L1 H3, mlp_out L2 pos 8," in repr(a)
    e = wb.intervene(
        model, CLEAN, [wb.Edit(cells[0], "zero"), wb.Edit(cells[1], wb.Add(torch.ones(model.d_model)))]
    )
    assert "intervene 2 edits: head L1 H3 zero, mlp_out L2 pos 8 add" in repr(e)
    for r in (v, a, e):
        fig = r.plot()
        assert fig.data and _where(r.options, shown=6) in fig.layout.title.text
        df = r.to_frame()
        places = r.options.get("cells") or [x[:4] for x in r.options["edits"]]
        assert len(df) == len(places)
        assert list(df["site"]) == [p[0] for p in places] and list(df["layer"]) == [p[1] for p in places]
        assert df["head"].isna().tolist() == [p[3] is None for p in places]
        assert df["position"].isna().tolist() == [p[2] is None for p in places]
        values = df["value"].to_numpy()
        assert (values == float(r)).all() if not math.isnan(float(r)) else np.isnan(values).all()
        assert len(r.to_frame(what="topk")) == len(r.top_probs)


# =============================================================================================
# the embedded model (a few cases)


@pytest.fixture(scope="module")
def embedded():
    return wb.load()


@pytest.mark.embedded
def test_embedded_joint_and_intervene(embedded):
    model = embedded
    clean, corrupt = "The Eiffel Tower is located in the city of", "The Colosseum is located in the city of"
    tok, m = model.tokenizer, R.logit_diff(model.tokenizer, TARGET, FOIL)
    cells = [
        wb.Cell("head", 14, head=3),
        wb.Cell("mlp_out", 5, position=3),
        wb.Cell("resid_pre", 20, position=9),
        wb.Cell("attn_out", 25, position=9),
    ]
    v = wb.patch(model, clean, corrupt, metric=metric(), cells=cells)
    check_against(
        v, R.reference_joint(model.hf, tok, corrupt, m, as_ref(cells), source=clean), "embedded patch"
    )
    a = wb.ablate(model, clean, metric=metric(), cells=cells, method="mean")
    ref = R.reference_joint(model.hf, tok, clean, m, as_ref(cells, "mean"))
    assert_close(float(a), ref["value"], what="embedded joint mean ablation")
    one = wb.patch(model, clean, corrupt, metric=metric(), cells=cells[:1])
    single = wb.patch(model, clean, corrupt, metric=metric(), site="head", layer=14, head=3)
    assert float(one) == float(single)
    vec = _tensor((model.d_model,), 3)
    add = wb.intervene(model, clean, [wb.Edit(wb.Cell("resid_pre", 10), wb.Add(vec, 4.0))], metric=metric())
    steered = wb.steer(model, clean, vector=vec, layer=10, scale=4.0, max_new_tokens=1, baseline=False)
    assert steered.tokens[0] == int(add.top_ids[0])
    spec = [("resid_pre", 10, None, None, "add", 4.0 * vec)]
    check_against(add, R.reference_joint(model.hf, tok, clean, m, spec), "embedded add")
    # one standalone run of generated code (loading the GGUF takes about a minute): grouped-query sites too
    gqa = [wb.Cell("k", 12, head=2), wb.Cell("q", 12, head=8), wb.Cell("pattern", 13, position=9, head=4)]
    edits = [wb.Edit(c, "source") for c in cells + gqa] + [
        wb.Edit(wb.Cell("resid_pre", 10), wb.Add(vec, 4.0))
    ]
    joint = wb.intervene(model, corrupt, edits, metric=metric(), source=clean)
    assert_close(float(run_code(joint.to_code())["result"]), float(joint), ATOL, "embedded intervene code")
