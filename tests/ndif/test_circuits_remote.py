"""Circuits on a real local NDIF server: edge attribution (EAP, EAP-IG, by position), faithfulness, the curve and
exact edge patching each in ONE request, equal to the local hook engine (engine/circuit.py) on the same weights.

The remote model has meta weights here: the backward, the receivers' gradients in the stream (projection rows,
the norm's vjp) and the mixed runs all happen inside the trace on the server."""

from __future__ import annotations

import numpy as np
import pytest

import workbench as wb

from .test_workbench_remote import KEY, models, requests  # noqa: F401  (fixtures)

pytestmark = pytest.mark.ndif

TOL = 1e-4
M = wb.logit_diff()


def _ioi() -> wb.Dataset:
    return wb.datasets.ioi(3, template=0)


def _padded() -> wb.Dataset:
    """Two pairs of different lengths (one left-padded batch on the server)."""
    return wb.Dataset(
        clean=[
            "The Eiffel Tower is located in the city of",
            "When Mary and John went to the store, John gave a drink to",
        ],
        corrupt=[
            "The Colosseum is located in the city of",
            "When Mary and John went to the store, Mary gave a drink to",
        ],
        target=[" Paris", " Mary"],
        foil=[" Rome", " John"],
    )


def _same_graph(got: wb.Graph, want: wb.Graph, what: str) -> None:
    assert got.matrix.shape == want.matrix.shape and got.columns == want.columns, what
    assert np.array_equal(np.isnan(got.matrix), np.isnan(want.matrix)), f"{what}: edges differ"
    diff = float(np.nanmax(np.abs(got.matrix - want.matrix)))
    assert diff <= TOL, f"{what}: scores differ by {diff}"
    assert float(np.abs(got.clean - want.clean).max()) <= TOL, what
    assert float(np.abs(got.corrupt - want.corrupt).max()) <= TOL, what
    assert got.options == want.options, what
    assert float(np.nanmax(np.abs(want.matrix))) > 0.1, f"{what}: scores ~0, the comparison cannot fail"


@pytest.fixture(scope="module")
def local_graph(models):  # noqa: F811
    """The hook engine's EAP graph on the local twin (the reference of several tests)."""
    return wb.edge_attribution(models[1], _ioi(), metric=M)


def test_eap_matches_the_local_engine_in_one_request(models, requests, local_graph) -> None:  # noqa: F811
    remote, _ = models
    g = wb.edge_attribution(remote, _ioi(), metric=M)
    assert len(requests) == 1  # every example's forward and backward, the scores summed on the server
    _same_graph(g, local_graph, "EAP")
    assert g.top(10).edges == local_graph.top(10).edges
    code = g.to_code()
    assert "def attribute" in code and KEY not in code and KEY not in repr(g)


def test_eap_ig_matches_the_local_engine_in_one_request(models, requests) -> None:  # noqa: F811
    remote, local = models
    g = wb.edge_attribution(remote, _ioi(), metric=M, method="eap-ig", steps=5)
    assert len(requests) == 1  # the 5 steps of every example are rows of the same request
    _same_graph(g, wb.edge_attribution(local, _ioi(), metric=M, method="eap-ig", steps=5), "EAP-IG")


def test_by_position_matches_the_local_engine_in_one_request(models, requests) -> None:  # noqa: F811
    remote, local = models
    g = wb.edge_attribution(remote, _ioi(), metric=M, by_position=True, align="roles")
    assert len(requests) == 1
    assert g.columns == ["IO", "S1", "S2", "final"]
    _same_graph(g, wb.edge_attribution(local, _ioi(), metric=M, by_position=True, align="roles"), "by roles")
    # examples of different lengths: one left-padded batch on the server
    g = wb.edge_attribution(
        remote, _padded(), metric=M, by_position=True, align="right", method="eap-ig", steps=2
    )
    assert len(requests) == 2
    want = wb.edge_attribution(
        local, _padded(), metric=M, by_position=True, align="right", method="eap-ig", steps=2
    )
    _same_graph(g, want, "by position, padded")


def test_faithfulness_matches_the_local_engine_in_one_request(models, requests, local_graph) -> None:  # noqa: F811
    remote, local = models
    edges = list(local_graph.scores)
    rng = np.random.default_rng(0)
    circuits = {
        "full": wb.Circuit(edges),
        "empty": wb.Circuit([]),
        "random": wb.Circuit([edges[i] for i in rng.choice(len(edges), len(edges) // 2, replace=False)]),
        "top 100": wb.Circuit(local_graph.top(100).edges),  # hand-made: not tied to the local graph's model
    }
    for name, c in circuits.items():
        before = len(requests)
        f = wb.faithfulness(remote, _ioi(), c, metric=M)
        assert len(requests) == before + 1, name
        want = wb.faithfulness(local, _ioi(), c, metric=M)
        assert float(np.abs(f.per_example - want.per_example).max()) <= TOL, name
        assert abs(f.clean - want.clean) <= TOL and abs(f.corrupt - want.corrupt) <= TOL, name
        if name == "full":
            assert np.abs(f.per_example - local_graph.clean).max() <= TOL  # every edge kept: the clean run
            assert abs(float(f) - 1.0) <= 1e-3
        if name == "empty":
            assert np.abs(f.per_example - local_graph.corrupt).max() <= TOL  # no edge: the corrupt run
            assert abs(float(f)) <= 1e-3
        if name == "random":
            assert abs(f.raw - f.clean) > 1e-2 and abs(f.raw - f.corrupt) > 1e-2  # a real mixed run


def test_curve_is_one_request_for_every_size(models, requests, local_graph) -> None:  # noqa: F811
    remote, local = models
    g = wb.edge_attribution(remote, _ioi(), metric=M)
    assert len(requests) == 1
    sizes = [10, 100, 1000]
    curve = wb.faithfulness_curve(remote, _ioi(), g, metric=M, sizes=sizes)
    assert len(requests) == 2  # all sizes' mixed rows in one request
    assert g.top(100).edges == local_graph.top(100).edges  # (near rank 1000, scores equal to 1e-6 may swap)
    # the local engine on the same circuits (cut from the remote graph, hand-made for the local model)
    want = [wb.faithfulness(local, _ioi(), wb.Circuit(g.top(n).edges), metric=M) for n in sizes]
    assert float(np.abs(curve.raw - [f.raw for f in want]).max()) <= TOL
    assert float(np.abs(curve.values - [float(f) for f in want]).max()) <= 1e-3
    assert abs(curve.clean - want[0].clean) <= TOL and abs(curve.corrupt - want[0].corrupt) <= TOL


def test_edge_patch_matches_the_local_engine_in_one_request(models, requests, local_graph) -> None:  # noqa: F811
    remote, local = models
    edges = wb.Circuit(local_graph.top(5).edges)
    p = wb.edge_patch(remote, _ioi(), edges, metric=M)
    assert len(requests) == 1
    want = wb.edge_patch(local, _ioi(), edges, metric=M)
    assert float(np.abs(p.per_example - want.per_example).max()) <= TOL
    assert abs(p.raw - p.corrupt) > 1e-3  # the top edges move the metric
    one = local_graph.top(1).edges[0]
    single = wb.edge_patch(remote, _ioi(), one, metric=M)  # an edge given as such: one request too
    assert len(requests) == 2
    assert (
        float(np.abs(single.per_example - wb.edge_patch(local, _ioi(), one, metric=M).per_example).max())
        <= TOL
    )
