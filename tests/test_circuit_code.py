"""`to_code()` of the circuit results (workbench/codegen_circuits.py): the generated nnsight + torch code, run in
a fresh namespace, reproduces the op's numbers (1e-4) on three families and on the embedded model."""

from __future__ import annotations

import numpy as np
import pytest

import workbench as wb

from .conftest import CLEAN, CORRUPT, FOIL, OTHER, TARGET, assert_close, run_code, tiny

FAMILIES = ["llama", "gpt2", "gpt_neox"]  # GQA and separate q/k/v; fused q|k|v; parallel blocks, interleaved


def _ds() -> wb.Dataset:
    return wb.Dataset(clean=[CLEAN, OTHER], corrupt=[CORRUPT, CLEAN])


def _metric() -> wb.Metric:
    return wb.logit_diff(TARGET, FOIL)


def _same_matrix(got, graph) -> None:
    got = np.asarray(got, np.float64)
    assert got.shape == graph.matrix.shape
    assert np.array_equal(np.isnan(got), np.isnan(graph.matrix)), "the edges (NaN pattern) differ"
    assert_close(np.nan_to_num(got), np.nan_to_num(graph.matrix), 1e-4, "edge scores")


def _same_value(ns: dict, f) -> None:
    assert_close(ns["per_example"], f.per_example, 1e-4, "per example")
    assert_close(ns["clean_metric"], f.clean_per_example, 1e-4, "clean")
    assert_close(ns["corrupt_metric"], f.corrupt_per_example, 1e-4, "corrupt")
    assert ns["raw"] == pytest.approx(f.raw, abs=1e-4)
    # normalised: the same raw numbers over the same baselines (so within 1e-4 of the metric over their gap)
    denom = max(1e-3, abs(f.clean - f.corrupt))
    assert ns["result"] == pytest.approx(float(f), abs=3e-4 / denom)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "kw", [{}, {"method": "eap-ig", "steps": 3}, {"by_position": True}], ids=["eap", "eap-ig", "by_position"]
)
def test_edge_attribution_code_reproduces_the_matrix(family, kw):
    model = tiny(family)
    g = wb.edge_attribution(model, _ds(), metric=_metric(), **kw)
    ns = run_code(g.to_code())
    _same_matrix(ns["result"], g)
    assert_close(ns["clean_metric"], g.clean, 1e-4, "clean")
    assert_close(ns["corrupt_metric"], g.corrupt, 1e-4, "corrupt")


@pytest.mark.parametrize("family", FAMILIES)
def test_faithfulness_and_edge_patch_code(family):
    model = tiny(family)
    ds = _ds()
    g = wb.edge_attribution(model, ds, metric=_metric())
    f = wb.faithfulness(model, ds, g.top(25), metric=_metric())
    ns = run_code(f.to_code())
    _same_value(ns, f)
    p = wb.edge_patch(model, ds, g.top(3), metric=_metric())
    ns = run_code(p.to_code())
    _same_value(ns, p)
    assert p.raw != pytest.approx(p.corrupt, abs=1e-6)  # the patch changes something: the check can fail


def test_by_position_circuit_and_eap_ig_code():
    model = tiny("llama")
    ds = _ds()
    g = wb.edge_attribution(model, ds, metric=_metric(), method="eap-ig", steps=2, by_position=True)
    c = g.top(40)
    assert all(e.position is not None for e in c)
    f = wb.faithfulness(model, ds, c, metric=_metric())
    ns = run_code(f.to_code())
    _same_value(ns, f)
    p = wb.edge_patch(model, ds, ["L0H1 -> logits @ 8", "embed -> L1H0.v @ -1"], metric=_metric())
    _same_value(run_code(p.to_code()), p)


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_faithfulness_curve_code(family):
    model = tiny(family)
    ds = _ds()
    g = wb.edge_attribution(model, ds, metric=_metric())
    curve = wb.faithfulness_curve(model, ds, g, metric=_metric(), sizes=[0, 7, 60, g.n_edges])
    ns = run_code(curve.to_code())
    assert_close(ns["raw"].numpy(), curve.raw, 1e-4, "raw")
    denom = max(1e-3, abs(curve.clean - curve.corrupt))
    assert_close(ns["result"], curve.values, 1e-4 / denom, "normalised")
    assert curve.values[-1] == pytest.approx(1.0, abs=1e-4) and abs(curve.values[0]) < 1e-4


def test_per_example_metric_and_right_alignment():
    """A metric reading each example's own target/foil, and examples of different lengths (align='right')."""
    model = tiny("llama")
    ds = wb.Dataset(
        clean=[CLEAN, "The cat is located in the city of"],
        corrupt=[CORRUPT, "The dog is located in the city of"],
        target=[TARGET, " Rome"],
        foil=[FOIL, " Paris"],
    )
    g = wb.edge_attribution(model, ds, metric=wb.logit_diff(), by_position=True, align="right")
    _same_matrix(run_code(g.to_code())["result"], g)
    f = wb.faithfulness(model, ds, g.top(30), metric=wb.logit_diff(), align="right")
    _same_value(run_code(f.to_code()), f)


@pytest.mark.embedded
def test_embedded_model_code_reproduces_edge_attribution_and_faithfulness():
    model = wb.load()
    ds = wb.datasets.ioi(2)
    m = wb.logit_diff()
    g = wb.edge_attribution(model, ds, metric=m)
    ns = run_code(g.to_code())
    _same_matrix(ns["result"], g)
    f = wb.faithfulness(model, ds, g.top(200), metric=m)
    _same_value(run_code(f.to_code()), f)
