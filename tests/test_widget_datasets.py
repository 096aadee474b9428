"""Views over a wb.Dataset on a tiny model: PatchView's mean map (per-example grids as float32 buffers), the filter
and its recomputed mean, opening one example as a single pair, DatasetView's rows and the Workbench's Dataset tab."""

from __future__ import annotations

import numpy as np
import pytest

import workbench as wb
import workbench.testing
from workbench.data.predict import predictions
from workbench.widgets import DatasetView, PatchView, Workbench, unpack

# every name is one token of the tiny tokenizer: all examples have the same length (align="exact" works)
ROWS = [
    {"A": " Mary", "B": " John", "C": " cat"},
    {"A": " John", "B": " Mary", "C": " dog"},
    {"A": " Paris", "B": " Rome", "C": " cat"},
    {"A": " cat", "B": " dog", "C": " Mary"},
]
TEMPLATE = "When{A} and{B} went to the store,{B} gave a drink to"
CORRUPT = "When{A} and{B} went to the store,{C} gave a drink to"


@pytest.fixture(scope="module")
def model():
    return workbench.testing.tiny_model("llama")


@pytest.fixture(scope="module")
def ds():
    return wb.Dataset.from_template(TEMPLATE, corrupt=CORRUPT, rows=ROWS, target="{A}", foil="{B}")


@pytest.fixture(scope="module")
def swept(model, ds):
    pv = PatchView(model, ds)
    pv.run_sweep().wait()
    assert pv.status == "done", pv.error
    return pv


def test_dataset_sweep_is_the_mean_with_every_example_as_binary(model, ds, swept):
    want = wb.patch_sweep(model, ds, metric=wb.logit_diff())
    sw = swept.sweep
    for name in ("values", "per_example", "clean_each", "corrupt_each", "ids"):
        assert set(sw[name]) == {"shape", "dtype", "data"} and isinstance(sw[name]["data"], bytes), name
    assert sw["per_example"]["dtype"] == "float32" and sw["per_example"]["shape"] == [4, *want.values.shape]
    np.testing.assert_allclose(unpack(sw["values"]), want.values, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(unpack(sw["per_example"]), want.per_example, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(unpack(sw["normalized"]), want.normalized, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(unpack(sw["clean_each"]), want.clean)
    assert unpack(sw["ids"]).tolist() == [0, 1, 2, 3]
    assert sw["clean"] == pytest.approx(want.clean_mean) and sw["columns"] == want.columns
    assert swept.dataset["columns"] == [str(i) for i in range(14)]
    assert swept.dataset["aligns"] == {"exact": "", "right": "", "roles": ""}
    assert swept.history[-1]["label"] == "patch sweep resid_pre over 4 examples"


def test_the_filter_narrows_the_examples_and_the_mean_recomputes(model, ds, swept):
    swept.filter_text = "MARY"  # case-insensitive, clean or corrupt text
    swept.wait()
    assert swept.dataset["shown"] == [0, 1, 3] and swept.status != "error", swept.error
    want = wb.patch_sweep(model, ds[[0, 1, 3]], metric=wb.logit_diff())
    np.testing.assert_allclose(unpack(swept.sweep["values"]), want.values, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(unpack(swept.sweep["normalized"]), want.normalized, rtol=1e-5, atol=1e-5)
    assert unpack(swept.sweep["ids"]).tolist() == [0, 1, 3]
    assert swept.subset().clean == ds[[0, 1, 3]].clean
    swept.filter_text = "no such text"
    swept.wait()
    assert swept.status == "error" and "No example of the 4 matches" in swept.error and swept.sweep == {}
    swept.filter_text = ""
    swept.wait()
    assert swept.error == "" and unpack(swept.sweep["ids"]).tolist() == [0, 1, 2, 3]


def test_correct_only_uses_the_models_predictions(model, ds, swept):
    correct = [i for i, p in enumerate(predictions(model, ds)) if p.correct]
    swept.correct_only = True
    swept.wait()
    assert swept.dataset["predictions"]["correct"]["dtype"] == "int32"
    assert unpack(swept.dataset["predictions"]["correct"]).astype(bool).tolist() == [
        p.correct for p in predictions(model, ds)
    ]
    if correct:
        assert swept.dataset["shown"] == correct
    else:  # a random tiny model may get none right: the view says so
        assert "correct only" in swept.error
    swept.correct_only = False
    swept.wait()
    assert swept.dataset["shown"] == [0, 1, 2, 3] and swept.error == ""


def test_opening_an_example_shows_its_single_pair(model, ds, swept):
    swept.open_example(1).wait()
    e = ds[1]
    assert (swept.clean, swept.corrupt, swept.target, swept.foil) == (e.clean, e.corrupt, " John", " Mary")
    assert swept.tokens_clean == model.to_str_tokens(e.clean) and not swept.over_dataset
    one = wb.patch_sweep(model, e.clean, e.corrupt, metric=wb.logit_diff(" John", " Mary"))
    # filled from the dataset sweep (per_example[1] is the single-pair result), no new run
    np.testing.assert_allclose(unpack(swept.sweep["values"]), one.values, rtol=1e-5, atol=1e-6)
    assert "per_example" not in swept.sweep
    swept.click(2, 5).wait()
    want = wb.patch(model, e.clean, e.corrupt, metric=wb.logit_diff(" John", " Mary"), layer=2, position=5)
    assert swept.result["value"] == pytest.approx(float(want), rel=1e-5)
    swept.example = -1  # back to the dataset: its mean map again
    swept.wait()
    assert swept.over_dataset and unpack(swept.sweep["ids"]).tolist() == [0, 1, 2, 3]
    assert swept.tokens_clean == [] and swept.result == {}


def test_a_click_before_a_sweep_patches_every_example(model, ds):
    pv = PatchView(model, ds, site="attn_out")
    pv.click(1, 2).wait()
    assert pv.status == "done", pv.error
    want = wb.patch(model, ds, metric=wb.logit_diff(), site="attn_out", layer=1, position=2)
    assert pv.result["value"] == pytest.approx(float(want), rel=1e-5)
    np.testing.assert_allclose(unpack(pv.result["per_example"]), want.per_example, rtol=1e-5, atol=1e-6)
    assert pv.result["clean"] == pytest.approx(want.clean_mean)
    assert unpack(pv.result["ids"]).tolist() == [0, 1, 2, 3]


def test_align_picker_roles_and_ablation_over_a_dataset(model, ds):
    pv = PatchView(model, ds, mode="ablate", method="zero", site="mlp_out")
    pv.align = "roles"
    pv.run_sweep().wait()
    assert pv.status == "done", pv.error
    want = wb.ablate_sweep(model, ds, method="zero", site="mlp_out", metric=wb.logit_diff(), align="roles")
    assert pv.dataset["columns"] == want.columns and "{A}" in want.columns
    np.testing.assert_allclose(unpack(pv.sweep["per_example"]), want.per_example, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(unpack(pv.sweep["clean_each"]), want.clean, rtol=1e-6)


def test_a_dataset_that_needs_another_alignment_says_so(model):
    uneven = wb.Dataset(["When Mary and John went to the store", "When Mary went"], target=" Mary")
    pv = PatchView(model, uneven, mode="ablate")
    assert pv.align == "right" and pv.dataset["aligns"]["exact"]  # exact does not work: why is kept
    pv.align = "exact"
    assert pv.status == "error" and "align" in pv.error
    pv.align = "right"
    assert pv.error == "" and pv.dataset["columns"] == ["-3", "-2", "-1"]
    pv.mode = "patch"
    assert pv.status == "error" and "corrupt prompts" in pv.error


def test_cancel_a_dataset_sweep(model, ds):
    pv = PatchView(model, ds)
    pv.run_sweep()
    pv.cancel()
    pv.wait()
    assert pv.status in ("idle", "done") and pv.error == ""
    pv.run_sweep().wait()  # the kernel stays usable
    assert pv.status == "done" and "per_example" in pv.sweep


def test_dataset_view_rows_predictions_and_filter(model, ds):
    dv = DatasetView(ds, model)
    dv.wait()
    assert dv.status == "done", dv.error
    rows = dv.dataset["examples"]
    assert len(rows) == 4 and rows[0]["tokens"] == model.to_str_tokens(ds[0].clean)
    assert rows[0]["corrupt_tokens"] == model.to_str_tokens(ds[0].corrupt) and rows[0]["target"] == " Mary"
    preds = predictions(model, ds)
    p = dv.predictions
    assert p["top_prob"]["dtype"] == "float32" and isinstance(p["top_prob"]["data"], bytes)
    np.testing.assert_allclose(unpack(p["top_prob"]), [x.top_prob for x in preds], rtol=1e-5)
    assert p["top_token"] == [x.top_token for x in preds]
    dv.filter_text = "paris"
    assert dv.shown == [2] and dv.subset().clean == [ds[2].clean]
    dv.filter_text = ""
    dv.correct_only = True
    assert dv.shown == [i for i, x in enumerate(preds) if x.correct]
    assert DatasetView(model, ds).dataset["n"] == 4  # either argument order


def test_workbench_has_a_dataset_tab(model, ds):
    w = Workbench(model, ds)
    w.patch.wait()
    assert [w.tabs.get_title(i) for i in range(4)] == ["Logit lens", "Patching", "Attention", "Dataset"]
    assert w.patch.over_dataset and w.lens.prompt == ds[0].clean
    w2 = Workbench(model, ds[0].clean, ds[0].corrupt, target=" Mary", dataset=ds)
    assert isinstance(w2.dataset, DatasetView) and w2.tabs.get_title(3) == "Dataset"
    w2.patch.wait()
