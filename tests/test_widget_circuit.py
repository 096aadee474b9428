"""CircuitView (issue 17) on the tiny Llama (grouped-query attention: 6 query heads, 2 key-value heads) and the
embedded model: what the view draws and measures equals the ops (`graph.top(n)`, `wb.faithfulness`,
`wb.faithfulness_curve`, `wb.patch`, `wb.edge_patch`, `graph.node_scores`, `graph.score`); the slider, pins,
columns and clicks give the state the ops give; a newer circuit cancels the older computation and a late answer
for an old circuit is never drawn; bad input shows in the view."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import workbench as wb
import workbench.ops
from workbench.widgets import CircuitView, unpack
from workbench.widgets.circuit import PIN_FRACTION

from .conftest import assert_close, run_code, tiny

CLEAN = [
    "When Mary and John went to the store, John gave a drink to",
    "When John and Mary went to the store, Mary gave a drink to",
]
CORRUPT = [
    "When Mary and John went to the store, Mary gave a drink to",
    "When John and Mary went to the store, John gave a drink to",
]
METRIC = wb.logit_diff()
TOL = 1e-6


def tiny_ds() -> wb.Dataset:
    return wb.Dataset(clean=CLEAN, corrupt=CORRUPT, target=[" Mary", " John"], foil=[" John", " Mary"])


@pytest.fixture(scope="module")
def model():
    return tiny("llama")


@pytest.fixture(scope="module")
def ds():
    return tiny_ds()


@pytest.fixture(scope="module")
def graph(model, ds):
    return wb.edge_attribution(model, ds, metric=METRIC)


@pytest.fixture(scope="module")
def pgraph(model, ds):
    return wb.edge_attribution(model, ds, metric=METRIC, by_position=True)


def _idle(v):
    v.wait(300)
    assert v.status in ("done", "idle", "error"), v.status
    assert not v.runner.busy_for(v)


def _view(model, ds, graph, **kw):
    v = CircuitView(model, ds, graph, wait=True, **kw)
    _idle(v)
    return v


def _faith(model, ds, circuit):
    return wb.faithfulness(model, ds, circuit, metric=METRIC)


def _drawn(v, graph):
    """The drawn edges as Edge objects, with their scores."""
    c = v.circuit
    s, r, col, sc = (unpack(c[k]) for k in ("s", "r", "c", "score"))
    out = []
    for a, b, k, x in zip(s, r, col, sc, strict=True):
        pos = None if graph.columns is None else graph.columns[k]
        out.append((wb.Edge(graph.senders[a], graph.receivers[b], pos), float(x)))
    return out


# ---------------------------------------------------------------------------------------- the circuit drawn
def test_the_view_draws_the_top_n_and_measures_its_faithfulness(model, ds, graph):
    v = _view(model, ds, graph, n=10)
    top = graph.top(10)
    assert v.circuit_result.edges == top.edges and v.circuit["size"] == 10 and v.circuit["drawn"] == 10
    drawn = _drawn(v, graph)
    assert [e for e, _ in drawn] == list(top.edges)  # largest |score| first, as graph.top orders them
    for e, x in drawn:
        assert x == pytest.approx(graph.score(e), abs=TOL)
    f = _faith(model, ds, top)
    assert v.faithfulness["value"] == pytest.approx(float(f), abs=TOL)
    assert (
        v.faithfulness["raw"] == pytest.approx(f.raw, abs=TOL) and v.faithfulness["key"] == v.circuit["key"]
    )
    assert v.faithfulness_result.n_edges == 10 and v.status == "done" and v.error == ""


def test_node_totals_are_the_sums_of_the_graph_and_of_the_kept_edges(model, ds, graph):
    v = _view(model, ds, graph, n=25)
    g = v.graph
    names = g["names"]
    assert names[0] == "embed" and names[-1] == "logits" and g["gqa"] is True
    assert sum(k == "kv" for k in g["kinds"]) == model.n_layers * model.n_kv_heads
    node_in, node_out, node_kv = (unpack(g[k])[:, 0] for k in ("node_in", "node_out", "node_in_kv"))
    scores = graph.scores
    kept = set(graph.top(25).edges)
    for i, name in enumerate(names):

        def into(e, name=name):
            base = e.receiver.split(".")[0]
            if "KV" in name:  # a port: the key-value head's .k and .v inputs
                layer, kv = name[1:].split("KV")
                return e.receiver in (f"L{layer}H{kv}.k", f"L{layer}H{kv}.v")
            return base == name and not e.receiver.endswith((".k", ".v"))

        exp_out = sum(x for e, x in scores.items() if e.sender == name)
        exp_in = sum(x for e, x in scores.items() if into(e))
        assert node_out[i] == pytest.approx(exp_out, abs=1e-5), name
        assert node_in[i] == pytest.approx(exp_in, abs=1e-5), name
        assert unpack(v.circuit["node_out"])[i] == pytest.approx(
            sum(x for e, x in scores.items() if e.sender == name and e in kept), abs=1e-5
        )
        assert unpack(v.circuit["node_in"])[i] == pytest.approx(
            sum(x for e, x in scores.items() if into(e) and e in kept), abs=1e-5
        )
        if "KV" in name:
            assert node_kv[i] == pytest.approx(exp_in, abs=1e-5)
    # a head's out total is its node score (graph.node_scores)
    heads = graph.node_scores("head")
    assert node_out[names.index("L1H2")] == pytest.approx(float(heads[1, 2]), abs=1e-5)


def test_the_slider_recomputes_and_an_earlier_size_comes_from_the_cache(model, ds, graph, monkeypatch):
    v = _view(model, ds, graph, n=10)
    v.n = 40  # what the slider does (the view sets the trait, debounced)
    _idle(v)
    assert v.circuit_result.edges == graph.top(40).edges
    assert v.faithfulness["value"] == pytest.approx(float(_faith(model, ds, graph.top(40))), abs=TOL)
    monkeypatch.setattr(workbench.ops, "faithfulness", lambda *a, **k: pytest.fail("recomputed"))
    v.n = 10
    _idle(v)
    assert v.faithfulness["value"] == pytest.approx(float(_faith(model, ds, graph.top(10))), abs=TOL)
    assert v.faithfulness["key"] == v.circuit["key"] and v.status == "done"


def test_max_drawn_caps_the_drawing_and_says_so(model, ds, graph):
    v = _view(model, ds, graph, n=60, max_drawn=7)
    assert v.circuit["drawn"] == 7 and v.circuit["in_column"] == 60 and v.circuit["size"] == 60
    assert [e for e, _ in _drawn(v, graph)] == list(graph.top(7).edges)
    v.max_drawn = 500
    assert v.circuit["drawn"] == 60


def test_the_curve_is_wb_faithfulness_curve_at_its_sizes(model, ds, graph):
    v = _view(model, ds, graph, n=10)
    assert v.curve["done"] is True
    sizes = [10, 20, 50, 100, 200, graph.n_edges]
    assert v.curve["target"] == sizes and list(unpack(v.curve["sizes"])) == sizes
    ref = wb.faithfulness_curve(model, ds, graph, metric=METRIC, sizes=sizes)
    assert_close(unpack(v.curve["values"]), ref.values, TOL, "curve")
    assert_close(unpack(v.curve["raw"]), ref.raw, TOL, "curve raw")
    assert v.curve_result.area == pytest.approx(ref.area, abs=TOL)
    assert unpack(v.curve["values"])[-1] == pytest.approx(1.0, abs=1e-4)  # the full graph is the clean model


def test_curve_sizes_given(model, ds, graph):
    v = _view(model, ds, graph, n=5, sizes=[3, 30])
    assert v.curve["target"] == [3, 30] and v.curve["done"]
    ref = wb.faithfulness_curve(model, ds, graph, metric=METRIC, sizes=[3, 30])
    assert_close(unpack(v.curve["values"]), ref.values, TOL, "curve")


# ---------------------------------------------------------------------------------------- pins
def _expected_pins(graph, n, pin_in=(), pin_out=()):
    """The pin rule written out independently over graph.scores."""
    top = list(graph.top(n).edges)
    scores = graph.scores
    cut = abs(scores[top[-1]]) if n else max(abs(x) for x in scores.values())

    def node_of(name):
        if name.endswith((".k", ".v")) and graph.n_kv_heads != graph.n_heads:
            layer, kv = name.split(".")[0][1:].split("H")
            return f"L{layer}KV{kv}"
        return name.split(".")[0]

    def touches(e, nodes):
        return e.sender in nodes or node_of(e.receiver) in nodes

    kept = [e for e in top if not touches(e, pin_out)]
    extra = [e for e, x in scores.items() if e not in set(top) and touches(e, pin_in)
             and not touches(e, pin_out) and abs(x) >= PIN_FRACTION * cut]  # fmt: skip
    return kept, extra


def test_pinned_out_drops_every_edge_of_the_node(model, ds, graph):
    v = _view(model, ds, graph, n=30)
    node = graph.top(1).edges[0].sender if graph.top(1).edges[0].sender != "embed" else "MLP0"
    v.pin(node, "out")
    _idle(v)
    kept, extra = _expected_pins(graph, 30, pin_out=[node])
    assert extra == [] and list(v.circuit_result.edges) == kept and v.circuit["dropped"] == 30 - len(kept) > 0
    assert all(node not in (e.sender, e.receiver.split(".")[0]) for e in v.circuit_result.edges)
    assert v.faithfulness["value"] == pytest.approx(float(_faith(model, ds, wb.Circuit(kept))), abs=TOL)
    assert v.pinned_out == [node]


def test_pinned_in_adds_its_edges_above_a_tenth_of_the_cut(model, ds, graph):
    v = _view(model, ds, graph, n=15)
    v.pinned_in = ["L2H4"]  # as the view's Pin in button sets it
    _idle(v)
    kept, extra = _expected_pins(graph, 15, pin_in=["L2H4"])
    assert list(v.circuit_result.edges[: len(kept)]) == kept and set(
        v.circuit_result.edges[len(kept) :]
    ) == set(extra)
    assert v.circuit["added"] == len(extra) > 0 and v.circuit["pin_threshold"] == pytest.approx(
        PIN_FRACTION * abs(graph.score(graph.top(15).edges[-1])), rel=1e-6
    )
    f = _faith(model, ds, wb.Circuit([*kept, *extra]))
    assert v.faithfulness["value"] == pytest.approx(float(f), abs=TOL)
    # a key-value port pinned out as well, then unpinned
    v.pin("L1KV0", "out")
    _idle(v)
    kept, extra = _expected_pins(graph, 15, pin_in=["L2H4"], pin_out=["L1KV0"])
    assert list(v.circuit_result.edges) == kept + sorted(extra, key=lambda e: -abs(graph.score(e)))
    assert not any(e.receiver in ("L1H0.k", "L1H0.v") for e in v.circuit_result.edges)
    v.pin("L1KV0", None)
    v.pin("L2H4", None)
    _idle(v)
    assert v.circuit_result.edges == graph.top(15).edges and v.pinned_in == v.pinned_out == []


def test_bad_pins_show_an_error_and_keep_the_pins(model, ds, graph):
    v = _view(model, ds, graph, n=10)
    v.pinned_in = ["L9H9"]
    assert "not a node" in v.error and v.pinned_in == [] and v.status == "error"
    v.pinned_in = ["L1H1"]
    _idle(v)
    assert v.error == ""
    v.pinned_out = ["L1H1"]
    assert "unpin it first" in v.error and v.pinned_out == [] and v.pinned_in == ["L1H1"]
    with pytest.raises(wb.WorkbenchError, match="not a node"):
        v.pin("L0H99", "in")
    with pytest.raises(wb.WorkbenchError, match="mode"):
        v.pin("L0H1", "maybe")


# ---------------------------------------------------------------------------------------- clicks: exact checks
@pytest.mark.parametrize(
    ("node", "cells", "estimate"),
    [
        ("L1H3", [wb.Cell("head", 1, head=3)], lambda g: g.node_scores("head")[1, 3]),
        ("MLP0", [wb.Cell("mlp_out", 0)], lambda g: g.node_scores("mlp_out")[0]),
        ("embed", [wb.Cell("embed", 0)], lambda g: g.node_scores("embed")),
        ("L2KV1", [wb.Cell("k", 2, head=1), wb.Cell("v", 2, head=1)],
         lambda g: sum(x for e, x in g.scores.items() if e.receiver in ("L2H1.k", "L2H1.v"))),
    ],
)  # fmt: skip
def test_a_node_click_is_wb_patch_beside_the_estimate(model, ds, graph, node, cells, estimate):
    v = _view(model, ds, graph, n=10)
    v.request("node", node=node)
    _idle(v)
    p = wb.patch(model, ds, metric=METRIC, cells=cells)
    x = v.inspected
    assert x["kind"] == "node" and x["name"] == node and v.status == "done"
    assert x["exact"] == pytest.approx(float(p) - p.corrupt_mean, abs=TOL)
    assert x["raw"] == pytest.approx(float(p), abs=TOL) and x["corrupt"] == pytest.approx(
        p.corrupt_mean, abs=TOL
    )
    assert x["estimate"] == pytest.approx(float(estimate(graph)), abs=1e-5)
    assert v.checks[-1] == x and float(v.inspected_result) == pytest.approx(float(p), abs=TOL)


def test_an_edge_click_is_wb_edge_patch_beside_graph_score(model, ds, graph):
    v = _view(model, ds, graph, n=10)
    edge = graph.top(3).edges[2]
    s, r = graph.locate(edge)
    v.request("edge", sender=s, receiver=r)
    _idle(v)
    f = wb.edge_patch(model, ds, [edge], metric=METRIC)
    x = v.inspected
    assert x["kind"] == "edge" and x["name"] == str(edge) and x["edge"] == [s, r, -1]
    assert x["exact"] == pytest.approx(f.raw - f.corrupt, abs=TOL)
    assert x["estimate"] == pytest.approx(graph.score(edge), abs=TOL)
    assert x["receiver_kind"] == edge.receiver.split(".")[-1] if "." in edge.receiver else True
    v.patch_edge(str(graph.top(1).edges[0]), wait=True)
    assert len(v.checks) == 2 and v.checks[-1]["name"] == str(graph.top(1).edges[0])


@pytest.mark.parametrize(
    ("kind", "payload", "match"),
    [
        ("node", {"node": "L7H0"}, "does not have"),
        ("node", {"node": 3}, "does not have"),
        ("node", {"node": "logits"}, "nothing to patch"),
        ("edge", {"sender": 0, "receiver": 999}, "outside"),
        ("edge", {"sender": "embed", "receiver": 0}, "integer"),
        ("edge", {"sender": 21, "receiver": 0}, "does not reach"),
        ("nonsense", {}, "Unknown request"),
    ],
)
def test_bad_clicks_show_an_error_in_the_view(model, ds, graph, kind, payload, match):
    v = _view(model, ds, graph, n=10)
    shown = dict(v.inspected)
    v.request(kind, **payload)
    _idle(v)
    assert match in v.error and v.status == "error"
    assert v.inspected == shown


def test_bad_settings_go_back_with_an_error(model, ds, graph):
    v = _view(model, ds, graph, n=10)
    key = v.circuit["key"]
    v.n = graph.n_edges + 1
    assert v.n == 10 and "keep 0.." in v.error and v.circuit["key"] == key
    v.n = 12
    _idle(v)
    assert v.error == "" and v.status == "done"
    v.column = 3
    assert v.column == -1 and "no columns" in v.error
    v.max_drawn = 0
    assert v.max_drawn == 500 and "max_drawn" in v.error


# ---------------------------------------------------------------------------------------- live: cancel, stale
def test_a_newer_circuit_cancels_the_older_computation(model, ds, graph, monkeypatch):
    v = _view(model, ds, graph, n=10)
    real = workbench.ops.faithfulness
    started = threading.Event()
    calls: list[int] = []

    def slow(m, d, circuit, **k):
        calls.append(len(circuit))
        if len(circuit) == 11:
            started.set()
            while not k["cancel"].wait(0.01):
                pass
            raise wb.CancelledError("cancelled")
        return real(m, d, circuit, **k)

    monkeypatch.setattr(workbench.ops, "faithfulness", slow)
    shown: list[str] = []
    v.observe(lambda ch: shown.append(ch["new"].get("key")), names=["faithfulness"])
    v.n = 11
    assert started.wait(60)
    v.n = 12  # the newer value: the running computation of 11 edges is cancelled
    _idle(v)
    assert calls[:2] == [11, 12] and v.status == "done" and v.error == ""
    assert v.faithfulness["value"] == pytest.approx(
        float(real(model, ds, graph.top(12), metric=METRIC)), abs=TOL
    )
    assert all("(11," not in k for k in shown)
    assert all(e["args"].get("n") != 11 for e in v.history)


def test_a_late_answer_for_an_old_circuit_is_not_drawn(model, ds, graph, monkeypatch):
    v = _view(model, ds, graph, n=10)
    real = workbench.ops.faithfulness
    started, gate = threading.Event(), threading.Event()

    def deaf(m, d, circuit, **k):  # ignores cancel: answers for 13 edges after 14 was asked for
        if len(circuit) == 13:
            started.set()
            assert gate.wait(60)
            return real(m, d, circuit, **{**k, "cancel": None})
        return real(m, d, circuit, **k)

    monkeypatch.setattr(workbench.ops, "faithfulness", deaf)
    shown: list[str] = []
    v.observe(lambda ch: shown.append(ch["new"].get("key")), names=["faithfulness"])
    v.n = 13
    assert started.wait(60)
    v.n = 14
    gate.set()
    _idle(v)
    assert all("(13," not in k for k in shown) and v.faithfulness["key"] == v.circuit["key"]
    assert v.faithfulness["value"] == pytest.approx(
        float(real(model, ds, graph.top(14), metric=METRIC)), abs=TOL
    )
    assert (13, (), ()) in v._faith  # kept: going back to 13 edges shows it at once
    v.n = 13
    assert v.faithfulness["key"] == v.circuit["key"] == repr((13, (), ()))


def test_cancel_stops_the_measurement_and_measure_runs_it(model, ds, graph, monkeypatch):
    v = _view(model, ds, graph, n=10)
    real = workbench.ops.faithfulness
    started = threading.Event()

    def slow(m, d, circuit, **k):
        started.set()
        while not k["cancel"].wait(0.01):
            pass
        raise wb.CancelledError("cancelled")

    monkeypatch.setattr(workbench.ops, "faithfulness", slow)
    v.n = 17
    assert started.wait(60)
    v.cancel()
    _idle(v)
    assert v.status == "idle" and v.progress_text == "cancelled" and v.error == ""
    assert v.faithfulness["key"] != v.circuit["key"]  # the view says the number is not this circuit's
    monkeypatch.setattr(workbench.ops, "faithfulness", real)
    v.request("measure")
    _idle(v)
    assert v.faithfulness["key"] == v.circuit["key"] and v.status == "done"


# ---------------------------------------------------------------------------------------- by position
def test_a_by_position_graph_draws_one_column_and_patches_there(model, ds, pgraph):
    v = _view(model, ds, pgraph, n=40)
    top = pgraph.top(40)
    counts = np.bincount(
        [pgraph.columns.index(str(e.position)) for e in top.edges], minlength=len(pgraph.columns)
    )
    assert v.column == int(np.argmax(counts)) and v.circuit["per_column"] == counts.tolist()
    col = int(np.argsort(-counts)[1])
    v.column = col
    drawn = _drawn(v, pgraph)
    assert [e for e, _ in drawn] == [e for e in top.edges if str(e.position) == pgraph.columns[col]]
    assert v.faithfulness["value"] == pytest.approx(float(_faith(model, ds, top)), abs=TOL)
    v.request("node", node="L1H3")
    _idle(v)
    p = wb.patch(model, ds, metric=METRIC, cells=[wb.Cell("head", 1, position=col, head=3)])
    assert v.inspected["exact"] == pytest.approx(float(p) - p.corrupt_mean, abs=TOL)
    assert v.inspected["estimate"] == pytest.approx(float(pgraph.node_scores("head")[1, 3, col]), abs=1e-5)
    e = drawn[0][0]
    s, r, c = pgraph.locate(e)
    v.request("edge", sender=s, receiver=r, column=c)
    _idle(v)
    f = wb.edge_patch(model, ds, [e], metric=METRIC)
    assert v.inspected["exact"] == pytest.approx(f.raw - f.corrupt, abs=TOL)
    assert v.inspected["estimate"] == pytest.approx(pgraph.score(e), abs=TOL)
    v.column = 99
    assert v.column == col and "columns are 0.." in v.error


# ---------------------------------------------------------------------------------------- code, export, errors
def test_to_code_reproduces_the_circuit_and_its_faithfulness(model, ds, graph):
    v = _view(model, ds, graph, n=20)
    ns = run_code(v.to_code())
    assert float(ns["result"]) == pytest.approx(v.faithfulness["value"], abs=1e-5)
    v.pin("L2H4", "in")
    v.pin("MLP0", "out")
    _idle(v)
    code = v.to_code()
    ns = run_code(code)
    assert list(ns["circuit"].edges) == list(v.circuit_result.edges)
    assert float(ns["result"]) == pytest.approx(v.faithfulness["value"], abs=1e-5)
    assert v.code == code
    html = v.to_html()
    assert '"_view_kind": "circuit"' in html


def test_constructor_errors(model, ds, graph):
    with pytest.raises(wb.WorkbenchError, match="another dataset"):
        CircuitView(
            model, wb.Dataset(clean=CLEAN[:1], corrupt=CORRUPT[:1], target=[" Mary"], foil=[" John"]), graph
        )
    with pytest.raises(wb.WorkbenchError, match="another model"):
        CircuitView(tiny("gpt2"), ds, graph)
    with pytest.raises(wb.WorkbenchError, match="wb.edge_attribution"):
        CircuitView(model, ds, graph.top(5))
    with pytest.raises(wb.WorkbenchError, match="wb.Dataset"):
        CircuitView(model, CLEAN[0], graph)
    with pytest.raises(wb.WorkbenchError, match="n"):
        CircuitView(model, ds, graph, n=graph.n_edges + 1)
    with pytest.raises(wb.WorkbenchError, match="sizes="):
        CircuitView(model, ds, graph, sizes=[5, graph.n_edges + 1])
    with pytest.raises(wb.WorkbenchError, match="by_position=False"):
        CircuitView(model, ds, graph, column=2)
    pg = wb.edge_attribution(model, ds, metric=wb.prob(" Mary"))
    with pytest.raises(wb.WorkbenchError, match="metric="):
        CircuitView(model, ds, pg)


# ---------------------------------------------------------------------------------------- the embedded model
@pytest.mark.embedded
def test_embedded_view_on_ioi_equals_the_ops():
    model = wb.load()
    ds = wb.datasets.ioi(4)
    graph = wb.edge_attribution(model, ds, metric=METRIC)
    v = CircuitView(model, ds, graph, n=30, sizes=[10], wait=True)
    _idle(v)
    assert v.status == "done" and v.error == ""
    assert len(v.graph["names"]) == 1 + model.n_layers * (model.n_heads + model.n_kv_heads + 1) + 1
    f = wb.faithfulness(model, ds, graph.top(30), metric=METRIC)
    assert v.faithfulness["value"] == pytest.approx(float(f), abs=1e-5)
    ref = wb.faithfulness_curve(model, ds, graph, metric=METRIC, sizes=[10])
    assert_close(unpack(v.curve["values"]), ref.values, 1e-5, "embedded curve")
    v.request("node", node="L23H3")
    _idle(v)
    p = wb.patch(model, ds, metric=METRIC, cells=[wb.Cell("head", 23, head=3)])
    assert v.inspected["exact"] == pytest.approx(float(p) - p.corrupt_mean, abs=1e-5)
    assert v.inspected["estimate"] == pytest.approx(float(graph.node_scores("head")[23, 3]), abs=1e-5)
