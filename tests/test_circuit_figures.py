"""Circuit figures and frames (workbench/figures/circuits.py): they build, carry one row / one drawn edge per edge,
and show the results' own numbers; the result types pickle, have short reprs and key the workshop cache."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import workbench as wb
from workbench import result_cache as C

from .conftest import CLEAN, CORRUPT, FOIL, OTHER, TARGET, assert_close, tiny

DS_CLEAN = [CLEAN, OTHER]  # 9 tokens each for the tiny tokenizer
DS_CORRUPT = [CORRUPT, CLEAN]


@pytest.fixture(scope="module")
def model():
    return tiny("llama")  # 3 layers, 6 query heads, 2 key-value heads: grouped-query attention


@pytest.fixture(scope="module")
def metric():
    return wb.logit_diff(TARGET, FOIL)


@pytest.fixture(scope="module")
def ds():
    return wb.Dataset(clean=DS_CLEAN, corrupt=DS_CORRUPT)


@pytest.fixture(scope="module")
def graph(model, ds, metric):
    return wb.edge_attribution(model, ds, metric=metric)


@pytest.fixture(scope="module")
def pos_graph(model, metric):
    return wb.edge_attribution(
        model, CLEAN, CORRUPT, metric=metric, method="eap-ig", steps=2, by_position=True
    )


@pytest.fixture(scope="module")
def faith(model, ds, graph, metric):
    return wb.faithfulness(model, ds, graph.top(40), metric=metric)


@pytest.fixture(scope="module")
def curve(model, ds, graph, metric):
    return wb.faithfulness_curve(model, ds, graph, metric=metric, sizes=[0, 5, 40, graph.n_edges])


def _edge_traces(fig) -> list:
    return [t for t in fig.data if t.mode == "lines"]


def _hover_points(fig):
    (pts,) = [t for t in fig.data if t.name == "edges"]
    return pts


def test_graph_frame_has_every_edge_with_its_score(graph, model):
    df = graph.to_frame()
    assert len(df) == graph.n_edges
    scores = graph.scores
    assert df["sender"].tolist() == [e.sender for e in scores]
    assert_close(df["score"].to_numpy(), np.array(list(scores.values())), 0.0, "frame scores")
    # rank 1 is the graph's top edge; ranks are a permutation ordered by |score|
    top = graph.top(5)
    by_rank = df.sort_values("rank")
    assert [f"{s} -> {r}" for s, r in zip(by_rank.sender[:5], by_rank.receiver[:5], strict=True)] == [
        str(e) for e in top
    ]
    assert sorted(df["rank"]) == list(range(1, graph.n_edges + 1))
    assert (np.diff(np.abs(by_rank["score"].to_numpy())) <= 0).all()
    # the node columns: kinds, layers (embed -1, logits n_layers) and heads (k/v: the key-value head)
    kinds = set(df["receiver_kind"])
    assert kinds == {"q", "k", "v", "mlp", "logits"}
    assert set(df["sender_kind"]) == {"embed", "head", "mlp"}
    assert df.loc[df.sender == "embed", "sender_layer"].eq(-1).all()
    assert df.loc[df.receiver == "logits", "receiver_layer"].eq(model.n_layers).all()
    kv = df[df.receiver_kind.isin(["k", "v"])]
    assert kv["receiver_head"].max() == model.n_kv_heads - 1
    assert df[df.receiver_kind == "q"]["receiver_head"].max() == model.n_heads - 1
    assert (df.sender_layer <= df.receiver_layer).all()
    assert df.attrs["options"]["method"] == "eap"
    assert len(graph.to_frame(n=7)) == 7 and graph.to_frame(n=7)["rank"].tolist() == list(range(1, 8))


def test_graph_figure_draws_the_top_n_edges(graph):
    fig = graph.plot(n=25)
    assert len(_edge_traces(fig)) == 25
    pts = _hover_points(fig)
    top = graph.top(25)
    want = {str(e): graph.score(e) for e in top}
    shown = {}
    for text, c in zip(pts.hovertext, pts.marker.color, strict=True):
        name = text.split("<br>")[0].replace("&gt;", ">")
        shown[name] = c
    assert set(shown) == set(want)
    for name, s in want.items():
        assert shown[name] == pytest.approx(s)
    m = max(abs(s) for s in want.values())
    assert pts.marker.cmin == pytest.approx(-m) and pts.marker.cmax == pytest.approx(m)
    assert "top 25 of" in fig.layout.title.text
    # the strongest edge is the widest
    widths = [t.line.width for t in _edge_traces(fig)]
    assert widths[-1] == max(widths)
    assert len(_edge_traces(graph.plot(n=10_000))) == graph.n_edges  # n larger than the graph: every edge
    with pytest.raises(wb.WorkbenchError, match="n="):
        graph.plot(n=-1)
    with pytest.raises(wb.WorkbenchError, match="unknown option"):
        graph.plot(colour="red")


def test_layout_puts_embed_at_the_bottom_and_logits_on_top(graph, model):
    fig = graph.plot(n=graph.n_edges)
    nodes = next(t for t in fig.data if t.name == "nodes")
    ys = dict(zip([t.split("</b>")[0][3:] for t in nodes.hovertext], nodes.y, strict=True))
    assert ys["embed"] == 0 and ys["logits"] == model.n_layers + 1
    # a sequential block's MLP (it reads the block's heads) sits above its heads, below the next layer
    assert ys["L0H0"] == 1 and model.n_layers < ys[f"MLP{model.n_layers - 1}"] < model.n_layers + 1
    # every line runs upward (or flat within a layer: a head into its own block's MLP)
    for t in _edge_traces(fig):
        assert t.y[1] >= t.y[0] - 0.3


def test_by_position_graph_draws_one_block_per_column(pos_graph):
    df = pos_graph.to_frame()
    assert len(df) == pos_graph.n_edges and df["position"].notna().all()
    fig = pos_graph.plot(n=30)
    assert len(_edge_traces(fig)) == 30
    nodes = next(t for t in fig.data if t.name == "nodes")
    assert len(nodes.x) == len(pos_graph.nodes)
    assert "eap-ig (2 steps)" in fig.layout.title.text


def test_circuit_frame_and_figure(graph):
    c = graph.top(12)
    df = c.to_frame()
    assert len(df) == 12
    assert_close(df["score"].to_numpy(), [graph.score(e) for e in c], 0.0, "circuit scores")
    fig = c.plot()
    assert len(_edge_traces(fig)) == 12
    assert "12 edges" in fig.layout.title.text
    hand = wb.Circuit(["embed -> L0H1.q", "L0H1 -> MLP2", "MLP2 -> logits"])
    df = hand.to_frame()
    assert len(df) == 3 and df["score"].isna().all()
    assert df["receiver_kind"].tolist() == ["q", "mlp", "logits"]
    fig = hand.plot()
    assert len(_edge_traces(fig)) == 3 and "3 edges" in fig.layout.title.text


def test_faithfulness_frame_and_figure_show_its_numbers(faith, ds):
    df = faith.to_frame()
    assert len(df) == len(ds)
    assert_close(df["metric"].to_numpy(), faith.per_example, 0.0, "per example")
    assert df["clean"].mean() == pytest.approx(faith.clean, abs=1e-6)
    assert df["corrupt"].mean() == pytest.approx(faith.corrupt, abs=1e-6)
    assert df["normalized"].mean() == pytest.approx(float(faith), abs=1e-5)
    fig = faith.plot()
    (circuit,) = [t for t in fig.data if t.name == "circuit"]
    assert_close(np.array(circuit.y), faith.per_example, 0.0, "figure points")
    assert f"{float(faith):.3g}" in fig.layout.title.text


def test_curve_frame_and_figure(curve, graph):
    df = curve.to_frame()
    assert df["edges"].tolist() == [0, 5, 40, graph.n_edges]
    assert_close(df["faithfulness"].to_numpy(), curve.values, 0.0, "curve")
    assert_close(df["fraction"].to_numpy(), np.array([0, 5, 40, graph.n_edges]) / graph.n_edges, 1e-12)
    assert df.attrs["area"] == curve.area
    fig = curve.plot()  # log x: the empty circuit cannot be shown
    assert list(fig.data[0].x) == [5, 40, graph.n_edges] and fig.layout.xaxis.type == "log"
    lin = curve.plot(log_x=False, x="fraction")
    assert_close(np.array(lin.data[0].y), curve.values, 0.0, "linear")
    assert f"area {curve.area:.3g}" in fig.layout.title.text
    with pytest.raises(wb.WorkbenchError, match="x="):
        curve.plot(x="size")


def test_results_pickle_with_code_and_short_reprs(graph, faith, curve):
    for r in (graph, graph.top(9), faith, curve):
        again = pickle.loads(pickle.dumps(r))
        assert again.to_code() == r.to_code()
        assert len(repr(again)) < 200 and "\n" not in repr(again)
    g = pickle.loads(pickle.dumps(graph))
    assert np.array_equal(g.matrix, graph.matrix, equal_nan=True) and g.top(5).edges == graph.top(5).edges
    f = pickle.loads(pickle.dumps(faith))
    assert float(f) == float(faith) and np.array_equal(f.per_example, faith.per_example)
    assert np.array_equal(f.clean_per_example, faith.clean_per_example)
    c = pickle.loads(pickle.dumps(graph.top(9)))
    assert c.edges == graph.top(9).edges and c.graph is not None


def test_circuit_and_graph_arguments_key_the_cache(tmp_path, ds, metric):
    from workbench.testing import tiny_model

    model = tiny_model("llama", seed=11)
    with wb.cache(tmp_path / "results") as store:
        g = wb.edge_attribution(model, ds, metric=metric)
        assert store.misses == 1
        g2 = wb.edge_attribution(model, ds, metric=metric)
        assert store.hits == 1 and np.array_equal(g2.matrix, g.matrix, equal_nan=True)
        f = wb.faithfulness(model, ds, g.top(10), metric=metric)
        again = wb.faithfulness(model, ds, g2.top(10), metric=metric)  # an equal circuit of an equal graph
        assert store.hits == 2 and float(again) == float(f)
        by_hand = wb.faithfulness(model, ds, wb.Circuit([str(e) for e in g.top(10)]), metric=metric)
        assert float(by_hand) == float(f)  # same edges without a graph: its own entry, the same number
        wb.faithfulness(model, ds, g.top(11), metric=metric)  # one more edge: computed
        assert store.hits == 2
        curve = wb.faithfulness_curve(model, ds, g, metric=metric, sizes=[3, 10])
        assert float(curve.values[1]) == pytest.approx(float(f), abs=1e-6)
        wb.faithfulness_curve(model, ds, g2, metric=metric, sizes=[3, 10])
        assert store.hits == 3
        p = wb.edge_patch(model, ds, g.top(2), metric=metric)
        q = wb.edge_patch(model, ds, [str(e) for e in g.top(2)], metric=metric)
        assert float(p) == float(q)
        # another process (here: another model object with the same weights) reads the graph as its own
        twin = tiny_model("llama", seed=11)
        g3 = wb.edge_attribution(twin, ds, metric=metric)
        assert store.hits == 4 and np.array_equal(g3.matrix, g.matrix, equal_nan=True)
        hits = store.hits
        # computed (new sizes): no "another model" error
        c3 = wb.faithfulness_curve(twin, ds, g3, metric=metric, sizes=[4, 10])
        assert store.hits == hits and c3.values[1] == pytest.approx(curve.values[1], abs=1e-6)
        wb.faithfulness(twin, ds, g3.top(12), metric=metric)
    keys = {C.canonical(g.top(4)) == C.canonical(g2.top(4)), C.canonical(g) == C.canonical(g2)}
    assert keys == {True}
    assert C.canonical(g.top(4)) != C.canonical(g.top(5))
    assert C.canonical(wb.Edge("embed", "logits")) == C.canonical(wb.Edge("embed", "logits"))
