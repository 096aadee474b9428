"""PatchView's sets of cells, path mode and site picker (issue 12), driven through the widget's message handlers
as the view sends them, and checked against direct op calls."""

from __future__ import annotations

import numpy as np
import pytest

import workbench as wb
import workbench.testing
from tests import reference as R
from tests.conftest import run_code
from workbench.engine.edits import Cell
from workbench.engine.sites import SITES
from workbench.engine.sites import site as site_record
from workbench.ops.results import SweepResult
from workbench.widgets import PatchView, unpack

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
METRIC = wb.logit_diff(" Mary", " John")


@pytest.fixture(scope="module")
def model():
    return workbench.testing.tiny_model("llama")  # 6 query heads, 2 key-value heads


def view(model, **kw) -> PatchView:
    pv = PatchView(model, CLEAN, CORRUPT, target=" Mary", foil=" John", **kw)
    pv.wait()
    return pv


def send(pv: PatchView, kind: str, **payload) -> PatchView:
    """What the front end sends: one message with a request id; then wait for the worker."""
    pv._on_msg(pv, {"kind": kind, "id": "r1", **payload}, [])
    pv.wait()
    return pv


def test_shift_clicked_set_patches_jointly_and_equals_wb_patch_cells(model):
    pv = view(model, site="head")
    # the view sets the trait as shift-clicks do: [site, layer, position, head] lists, mixed sites
    pv.cells = [["head", 1, None, 2], ["mlp_out", 0, 3, None], ["q", 2, None, 5]]
    send(pv, "apply_set")
    assert pv.status == "done", pv.error
    want = wb.patch(
        model,
        CLEAN,
        CORRUPT,
        metric=METRIC,
        cells=[Cell("head", 1, head=2), Cell("mlp_out", 0, position=3), Cell("q", 2, head=5)],
    )
    assert pv.result["value"] == pytest.approx(float(want), rel=1e-5, abs=1e-6)
    assert pv.result["clean"] == pytest.approx(want.clean, rel=1e-5)
    assert pv.result["corrupt"] == pytest.approx(want.corrupt, rel=1e-5)
    assert pv.result["top_tokens"] == want.top_tokens
    np.testing.assert_allclose(unpack(pv.result["top_probs"]), want.top_probs, rtol=1e-5)
    assert pv.result["cells"] == pv.cells and pv.result["cell"] is None
    assert pv.result["label"].startswith("patch set of 3: Cell('head', 1, head=2)")
    assert pv.history[-1]["args"]["cells"] == pv.cells
    # the joint patch is not the sum of its parts: each cell alone gives another number
    alone = wb.patch(model, CLEAN, CORRUPT, metric=METRIC, cells=[Cell("head", 1, head=2)])
    assert float(alone) != pytest.approx(float(want), abs=1e-6)
    # the lens of the joint run is drawn: wb.logit_lens(edits=) of the same run, whose last row is its prediction
    lens = wb.logit_lens(
        model, CORRUPT, top_k=5, edits=[wb.Edit(c, "source") for c in want_cells(pv)], source=CLEAN
    )
    check_set_lens(pv, lens, want)
    # the Code button and the history entry: to_code() of the joint patch, which runs and gives its number
    assert pv.code and pv.history[-1]["code"] == pv.code == want.to_code()
    assert run_code(pv.code)["result"] == pytest.approx(float(want), abs=1e-4)
    assert run_code(pv.to_code())["result"] == pytest.approx(float(want), abs=1e-4)


def want_cells(pv: PatchView) -> list[Cell]:
    return [Cell(*c) for c in pv.cells]


def check_set_lens(pv: PatchView, lens, value) -> None:
    """The view's lens after Apply set equals `lens`, and decodes the run `value` scored (its next token)."""
    shown = pv.result["lens"]
    assert shown, "no lens after Apply set"
    assert "lens_note" not in pv.result
    got = unpack(shown["top_probs"])
    assert got.shape == (pv.model.n_layers, len(pv.tokens_clean), 5)
    np.testing.assert_allclose(got, lens.top_probs, rtol=1e-5, atol=1e-6)
    assert np.array_equal(unpack(shown["top_ids"]), lens.top_ids)
    np.testing.assert_allclose(got[-1, -1], value.top_probs, rtol=1e-4, atol=1e-5)
    assert lens.top_tokens[-1][-1] == list(value.top_tokens)


def reference_mean(model, c: Cell):
    """The mean over the reference (corrupt) prompt's tokens at a cell's place, from plain hooks."""
    acts = R.capture(model.hf, R.tokens(model.tokenizer, CORRUPT), c.site, [c.layer])[c.layer]
    return acts.mean(0)[R._cols(model.hf, c.site, c.head)]


def test_a_set_of_one_cell_equals_the_click_on_that_cell(model):
    pv = view(model, site="resid_pre")
    pv.click(1, 9).wait()
    clicked, clicked_lens = pv.result["value"], pv.result["lens"]
    pv.toggle(1, 9)  # as a shift-click does
    assert pv.cells == [["resid_pre", 1, 9, None]]
    pv.apply_set().wait()
    assert pv.result["value"] == pytest.approx(clicked, rel=1e-6)
    np.testing.assert_allclose(
        unpack(pv.result["lens"]["top_probs"]), unpack(clicked_lens["top_probs"]), rtol=1e-5, atol=1e-6
    )
    pv.toggle(1, 9)
    assert pv.cells == []


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_a_set_ablates_jointly_and_equals_wb_ablate_cells(model, method):
    pv = view(model, mode="ablate", method=method, site="attn_out")
    pv.toggle(1, 4)
    pv.site = "head"
    pv.toggle(0, 3)
    assert pv.cells == [["attn_out", 1, 4, None], ["head", 0, None, 3]]
    send(pv, "apply_set")
    assert pv.status == "done", pv.error
    want = wb.ablate(
        model,
        CLEAN,
        metric=METRIC,
        cells=[Cell("attn_out", 1, position=4), Cell("head", 0, head=3)],
        method=method,
        reference=CORRUPT if method != "zero" else None,
    )
    assert pv.result["value"] == pytest.approx(float(want), rel=1e-5, abs=1e-6)
    assert pv.result["label"].startswith(f"{method}-ablate set of 2")
    # the lens of the ablated run: mean ablation takes the reference prompt's mean, resample copies from it
    cells = want_cells(pv)
    if method == "zero":
        edits, source = [wb.Edit(c, "zero") for c in cells], None
    elif method == "resample":
        edits, source = [wb.Edit(c, "source") for c in cells], CORRUPT
    else:
        edits, source = [wb.Edit(c, reference_mean(model, c)) for c in cells], None
    check_set_lens(pv, wb.logit_lens(model, CLEAN, top_k=5, edits=edits, source=source), want)
    assert run_code(pv.code)["result"] == pytest.approx(float(want), abs=1e-4)


def test_the_picker_offers_every_site_of_the_table(model):
    pv = view(model)
    names = [s["name"] for s in pv.sites]
    assert names == list(SITES)  # llama blocks are sequential: resid_mid too
    by_name = {s["name"]: s for s in pv.sites}
    assert by_name["embed"]["layers"] == 1 and by_name["resid_pre"]["layers"] == model.n_layers
    assert (
        by_name["k"]["heads"] == "kv"
        and by_name["q"]["heads"] == "query"
        and by_name["mlp_out"]["heads"] is None
    )
    assert pv.n_kv_heads == model.n_kv_heads == 2 and pv.n_heads == 6
    parallel = workbench.testing.tiny_model("gpt_neox")
    assert not parallel._sequential()
    pn = PatchView(parallel, CLEAN, CORRUPT, target=" Mary", foil=" John")
    assert [s["name"] for s in pn.sites] == [s for s in SITES if s != "resid_mid"]
    pn.site = "resid_mid"  # not offered: the model's own reason shows
    assert pn.status == "error" and "SiteError" in pn.error and "parallel" in pn.error
    pn.site = "resid_pre"
    assert pn.status != "error"


@pytest.mark.parametrize("name", SITES)
def test_a_click_on_every_site_equals_wb_patch(model, name):
    rec = site_record(name)
    pv = view(model, site=name)
    layer = 0 if rec.embed_only else 1
    col = (model.n_kv_heads if rec.heads == "kv" else model.n_heads) - 1 if rec.per_head else 4
    kw = {"head": col} if rec.per_head else {"position": col}
    try:
        want = wb.patch(model, CLEAN, CORRUPT, metric=METRIC, site=name, layer=layer, **kw)
    except wb.WorkbenchError as exc:  # the widget must show the op's own error, readably
        pv.click(layer, col).wait()
        assert pv.status == "error" and type(exc).__name__ in pv.error and str(exc)[:40] in pv.error
        return
    except Exception as exc:  # noqa: BLE001 - an engine failure (not a WorkbenchError) still shows in the view
        pv.click(layer, col).wait()
        assert pv.status == "error" and type(exc).__name__ in pv.error
        return
    pv.click(layer, col).wait()
    assert pv.status == "done", pv.error
    assert pv.result["value"] == pytest.approx(float(want), rel=1e-5, abs=1e-6)
    assert pv.result["cells"] == [[name, layer, kw.get("position"), kw.get("head")]]


def test_kv_sites_have_n_kv_heads_columns_and_say_so(model):
    pv = view(model, site="k")
    pv.run_sweep().wait()
    assert pv.status == "done", pv.error
    assert pv.sweep["values"]["shape"] == [model.n_layers, model.n_kv_heads]
    ref = wb.patch_sweep(model, CLEAN, CORRUPT, metric=METRIC, site="k")
    np.testing.assert_allclose(unpack(pv.sweep["values"]), ref.values, rtol=1e-4, atol=1e-5)
    send(pv, "patch", layer=1, head=model.n_kv_heads, position=None)  # a query-head index: out of range here
    assert pv.status == "error" and f"outside 0..{model.n_kv_heads - 1}" in pv.error
    pv.click(1, 1).wait()
    assert pv.status == "done"  # still usable


def test_embed_has_one_layer_row(model):
    pv = view(model, site="embed")
    pv.run_sweep().wait()
    assert pv.sweep["values"]["shape"] == [1, len(pv.tokens_corrupt)]
    send(pv, "patch", layer=1, position=2)
    assert pv.status == "error" and "layer=1, outside 0..0" in pv.error


def test_bad_sets_say_what_to_do_and_leave_the_view_usable(model):
    pv = view(model)
    send(pv, "apply_set")
    assert pv.status == "error" and "The set is empty" in pv.error and "shift-click" in pv.error
    pv.cells = [["head", "1", None, 2]]
    send(pv, "apply_set")
    assert "MessageError" in pv.error and "cells layer='1'" in pv.error
    pv.cells = ["head"]
    send(pv, "apply_set")
    assert "[site, layer, position, head]" in pv.error
    pv.cells = [["k", 1, None, 5]]  # a query-head index for a key-value site
    send(pv, "apply_set")
    assert pv.status == "error" and "SiteError" in pv.error and "key-value heads" in pv.error
    assert pv.result == {}
    pv.cells = [["k", 1, None, 1]]
    send(pv, "apply_set")
    assert pv.status == "done" and pv.error == ""


def test_the_set_mode_and_receivers_survive_export(model):
    pv = view(model, cells=[Cell("head", 1, head=2)], mode="path", receivers=[Cell("q", 2, head=1)])
    assert pv.cells == [["head", 1, None, 2]] and pv.receivers == [["q", 2, None, 1]]
    state = pv.get_state()
    assert state["cells"] == pv.cells and state["mode"] == "path" and state["receivers"] == pv.receivers
    html = pv.to_html()
    assert '"cells": [["head", 1, null, 2]]' in html and '"receivers": [["q", 2, null, 1]]' in html


def _without_path_ops(monkeypatch):
    for mod in (wb.ops, wb):
        for name in ("path_patch", "path_patch_sweep"):
            if hasattr(mod, name):
                monkeypatch.delattr(mod, name)


def test_path_mode_without_the_op_shows_a_readable_message(model, monkeypatch):
    _without_path_ops(monkeypatch)
    pv = view(model, mode="path")
    pv.run_sweep().wait()
    assert pv.status == "error" and "wb.path_patch_sweep" in pv.error and "Switch mode" in pv.error
    pv.toggle(1, 2)
    pv.apply_set().wait()
    assert "wb.path_patch," in pv.error or "wb.path_patch " in pv.error
    pv.mode = "patch"  # the set works there, and the view is usable
    pv.apply_set().wait()
    assert pv.status == "done", pv.error


def test_path_mode_picks_receivers_and_sweeps_them_by_the_contract(model, monkeypatch):
    """The widget side of path patching against the contract (wb.path_patch_sweep(model, clean, corrupt,
    metric=, receivers="logits" | [cells]) -> SweepResult [L, H], NaN where a sender is at/above its receiver)."""
    calls = []

    def fake_sweep(m, clean, corrupt, *, metric, receivers, progress=None, cancel=None):
        calls.append((clean, corrupt, receivers))
        values = np.arange(m.n_layers * m.n_heads, dtype=np.float32).reshape(m.n_layers, m.n_heads)
        if receivers != "logits":
            values[max(c.layer for c in receivers) :] = np.nan
        return SweepResult(
            values=values,
            clean=2.0,
            corrupt=0.0,
            axes=("layer", "head"),
            tokens=[],
            options={},
            _code="# path",
        )

    def fake_path_patch(m, clean, corrupt, *, metric, senders, receivers, progress=None, cancel=None):
        calls.append(("one", senders, receivers))
        return wb.patch(m, clean, corrupt, metric=metric, cells=senders)  # a Value to show

    monkeypatch.setattr(wb.ops, "path_patch_sweep", fake_sweep, raising=False)
    monkeypatch.setattr(wb.ops, "path_patch", fake_path_patch, raising=False)
    pv = view(model, mode="path")
    assert pv.receivers == "logits"
    pv.run_sweep().wait()
    assert pv.status == "done", pv.error
    assert calls[-1] == (CLEAN, CORRUPT, "logits")
    logits_sweep = pv.sweep
    assert logits_sweep["mode"] == "path" and logits_sweep["receivers"] == "logits"
    assert logits_sweep["values"]["shape"] == [model.n_layers, model.n_heads]
    pv.click(2, 4)  # path mode: a click picks a receiver, computes nothing
    assert pv.receivers == [["head", 2, None, 4]] and pv.sweep == {}
    pv.receiver_site = "k"
    pv.click(2, 5)  # query head 5 reads key-value head 5 // 3 = 1
    assert pv.receivers == [["head", 2, None, 4], ["k", 2, None, 1]]
    pv.run_sweep().wait()
    assert calls[-1][2] == [Cell("head", 2, head=4), Cell("k", 2, head=1)]
    vals = unpack(pv.sweep["values"])
    assert np.isnan(vals[2:]).all() and np.isfinite(vals[:2]).all()  # NaN crosses as float32, not JSON
    assert pv.sweep["normalized"] is not None
    pv.click(2, 3)  # key-value head 1 again (query heads 3..5): out
    pv.receiver_site = "head"
    pv.click(2, 4)
    assert pv.receivers == "logits" and pv.sweep is logits_sweep  # one sweep per receivers: kept
    pv.toggle(0, 1)  # senders
    assert pv.cells == [["head", 0, None, 1]]
    pv.apply_set().wait()
    assert pv.status == "done", pv.error
    assert calls[-1] == ("one", [Cell("head", 0, head=1)], "logits")
    assert pv.result["label"].startswith("path-patch set of 1: Cell('head', 0, head=1) → logits")
    assert pv.result["lens"] == {} and "no lens" in pv.result["lens_note"]


@pytest.mark.skipif(not hasattr(wb, "path_patch_sweep"), reason="wb.path_patch_sweep has not landed yet")
def test_path_sweep_in_the_view_equals_wb_path_patch_sweep(model):
    pv = view(model, mode="path", receivers=[Cell("q", 2, head=1)])
    pv.run_sweep().wait()
    assert pv.status == "done", pv.error
    want = wb.path_patch_sweep(model, CLEAN, CORRUPT, metric=METRIC, receivers=[Cell("q", 2, head=1)])
    np.testing.assert_allclose(unpack(pv.sweep["values"]), want.values, rtol=1e-5, atol=1e-6, equal_nan=True)
    vals = unpack(pv.sweep["values"])
    assert np.isnan(vals[2:]).all() and np.isfinite(vals[:2]).all()  # no path from layer 2 on: NaN, not 0
    # Apply senders: wb.path_patch of the set into those receivers, its code in the history and Code button
    pv.toggle(0, 3)
    pv.toggle(1, 0)
    pv.apply_set().wait()
    assert pv.status == "done", pv.error
    senders = [Cell("head", 0, head=3), Cell("head", 1, head=0)]
    one = wb.path_patch(
        model, CLEAN, CORRUPT, metric=METRIC, senders=senders, receivers=[Cell("q", 2, head=1)]
    )
    assert pv.result["value"] == pytest.approx(float(one), rel=1e-5, abs=1e-6)
    assert pv.code == pv.history[-1]["code"] == one.to_code()
    assert run_code(pv.code)["result"] == pytest.approx(float(one), abs=1e-4)
