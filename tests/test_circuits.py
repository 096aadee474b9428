"""Circuits: edge attribution (EAP, EAP-IG), faithfulness and exact edge patching against the plain-hook
reference (tests/reference.py: one receiver's own input at a time), on several families and the embedded model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench as wb
from tests import reference as ref
from tests.conftest import CLEAN, CORRUPT, FOIL, TARGET, assert_close, tiny
from workbench.errors import WorkbenchError

FAMILIES = ["gpt2", "llama", "gpt_neox", "phi", "qwen2"]
SECOND_CLEAN = "The cat sat on the mat and the city of"
SECOND_CORRUPT = "The dog sat on the log and the city of"


def _metric(model):
    return wb.logit_diff(TARGET, FOIL)


def _ref_metric(model):
    return ref.logit_diff(model.tokenizer, TARGET, FOIL)


def _matrix(graph: wb.Graph, expected: dict) -> tuple[np.ndarray, np.ndarray]:
    got = np.array([graph.score(f"{s} -> {r}") for s, r in expected])
    return got, np.array(list(expected.values()))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_edge_scores_equal_reference(family, method):
    model = tiny(family)
    g = wb.edge_attribution(model, CLEAN, CORRUPT, metric=_metric(model), method=method, steps=3)
    expected = ref.reference_edge_attribution(
        model.hf, model.tokenizer, CLEAN, CORRUPT, _ref_metric(model), steps=3 if method == "eap-ig" else 0
    )
    assert g.n_edges == len(expected)  # the same edge set as the reference's
    got, want = _matrix(g, expected)
    assert_close(got, want, atol=1e-4, rtol=1e-4, what=f"{family} {method} edge scores")
    assert np.abs(want).max() > 1e-3  # the comparison is not of zeros


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_dataset_is_the_mean_of_its_examples(family):
    """Examples of different lengths share padded forwards: each keeps its own numbers."""
    model = tiny(family)
    short_clean, short_corrupt = "The Eiffel Tower is in the city of", "The Colosseum Tower is in the city of"
    ds = wb.Dataset(clean=[CLEAN, short_clean], corrupt=[CORRUPT, short_corrupt], target=TARGET, foil=FOIL)
    assert model.to_tokens(CLEAN).shape[1] != model.to_tokens(short_clean).shape[1]
    g = wb.edge_attribution(model, ds, metric=wb.logit_diff(), align="right")
    rm = _ref_metric(model)
    a = ref.reference_edge_attribution(model.hf, model.tokenizer, CLEAN, CORRUPT, rm)
    b = ref.reference_edge_attribution(model.hf, model.tokenizer, short_clean, short_corrupt, rm)
    mean = {k: (a[k] + b[k]) / 2 for k in a}
    got, want = _matrix(g, mean)
    assert_close(got, want, atol=1e-4, rtol=1e-4, what=f"{family} dataset mean")


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_node_scores_equal_attribution_patch(family):
    model = tiny(family)
    m = _metric(model)
    g = wb.edge_attribution(model, CLEAN, CORRUPT, metric=m)
    heads = wb.attribution_patch(model, CLEAN, CORRUPT, metric=m, site="head")
    mlps = wb.attribution_patch(model, CLEAN, CORRUPT, metric=m, site="mlp_out")
    # attribution_patch reports the estimated patched metric: corrupt + the estimate of each site's effect
    head_effects = np.asarray(heads.values) - heads.corrupt
    mlp_effects = (np.asarray(mlps.values) - mlps.corrupt).sum(-1)  # [L, T] summed over positions
    assert_close(g.node_scores("head"), head_effects, atol=1e-4, rtol=1e-4, what="head nodes")
    assert_close(g.node_scores("mlp_out"), mlp_effects, atol=1e-4, rtol=1e-4, what="mlp nodes")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_by_position_columns_sum_to_the_total(family):
    model = tiny(family)
    m = _metric(model)
    g = wb.edge_attribution(model, CLEAN, CORRUPT, metric=m)
    gp = wb.edge_attribution(model, CLEAN, CORRUPT, metric=m, by_position=True)
    assert gp.matrix.shape == g.matrix.shape + (model.to_tokens(CLEAN).shape[1],)
    assert_close(np.nansum(gp.matrix, -1)[np.isfinite(g.matrix)], g.matrix[np.isfinite(g.matrix)], atol=1e-5)
    e = gp.top(1).edges[0]
    assert e.position is not None and gp.score(e) == pytest.approx(float(gp.matrix[gp.locate(e)]))


@pytest.mark.parametrize("family", FAMILIES)
def test_faithfulness_full_empty_and_random(family):
    model = tiny(family)
    m = _metric(model)
    g = wb.edge_attribution(model, CLEAN, CORRUPT, metric=m)
    full = wb.faithfulness(model, CLEAN, g.top(g.n_edges), CORRUPT, metric=m)
    empty = wb.faithfulness(model, CLEAN, wb.Circuit([]), CORRUPT, metric=m)
    assert full.raw == pytest.approx(g.clean_mean, abs=1e-4) and float(full) == pytest.approx(1.0, abs=1e-3)
    assert empty.raw == pytest.approx(g.corrupt_mean, abs=1e-5) and float(empty) == pytest.approx(
        0.0, abs=1e-3
    )
    rng = np.random.default_rng(0)
    edges = g.edges
    for size in (5, len(edges) // 2, len(edges) - 3):
        chosen = [edges[i] for i in rng.choice(len(edges), size, replace=False)]
        f = wb.faithfulness(model, CLEAN, wb.Circuit(chosen), CORRUPT, metric=m)
        want = ref.reference_edge_ablation(
            model.hf,
            model.tokenizer,
            CLEAN,
            CORRUPT,
            _ref_metric(model),
            {(e.sender, e.receiver) for e in chosen},
        )
        assert f.raw == pytest.approx(want, abs=1e-4), f"{family}: {size} random edges"


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_edge_patch_is_the_exact_single_edge_intervention(family):
    model = tiny(family)
    m = _metric(model)
    g = wb.edge_attribution(model, CLEAN, CORRUPT, metric=m)
    every = {(e.sender, e.receiver) for e in g.edges}
    for e in g.top(3).edges:
        p = wb.edge_patch(model, CLEAN, [e], CORRUPT, metric=m)
        want = ref.reference_edge_ablation(
            model.hf, model.tokenizer, CORRUPT, CLEAN, _ref_metric(model), every - {(e.sender, e.receiver)}
        )
        assert p.raw == pytest.approx(want, abs=1e-4)
        assert p.corrupt == pytest.approx(g.corrupt_mean, abs=1e-5)


def test_faithfulness_curve_sizes_and_area():
    model = tiny("llama")
    m = _metric(model)
    ds = wb.Dataset(clean=[CLEAN], corrupt=[CORRUPT], target=TARGET, foil=FOIL)
    g = wb.edge_attribution(model, ds, metric=m)
    curve = wb.faithfulness_curve(model, ds, g, metric=m, sizes=[10, 50, g.n_edges])
    for n, v in zip(curve.sizes, curve.values, strict=True):
        assert v == pytest.approx(float(wb.faithfulness(model, ds, g.top(int(n)), metric=m)), abs=1e-5)
    assert curve.values[-1] == pytest.approx(1.0, abs=1e-3)
    x = np.array([0, 10, 50, g.n_edges]) / g.n_edges
    y = np.concatenate([[0.0], curve.values])
    assert curve.area == pytest.approx(float(np.trapezoid(y, x)), abs=1e-6)


def test_weights_edited_through_data_are_seen():
    """Nothing is cached across calls: an edit through .data changes the next graph as it changes the reference."""
    model = wb.testing.tiny_model("llama", seed=3)
    m = _metric(model)
    before = wb.edge_attribution(model, CLEAN, CORRUPT, metric=m)
    with torch.no_grad():
        model.hf.model.layers[0].self_attn.q_proj.weight.data.mul_(1.7)
        model.hf.model.layers[1].mlp.down_proj.weight.data.add_(0.05)
    after = wb.edge_attribution(model, CLEAN, CORRUPT, metric=m)
    expected = ref.reference_edge_attribution(model.hf, model.tokenizer, CLEAN, CORRUPT, _ref_metric(model))
    got, want = _matrix(after, expected)
    assert_close(got, want, atol=1e-4, rtol=1e-4, what="after .data edits")
    assert not np.allclose(np.nan_to_num(before.matrix), np.nan_to_num(after.matrix), atol=1e-4)


def test_circuit_and_edge_parsing():
    c = wb.Circuit(
        edges=["embed -> L0H1.q", ("L0H2", "logits"), wb.Edge("MLP0", "L1H0.k"), "L0H1 -> logits @ 3"]
    )
    assert [str(e) for e in c] == [
        "embed -> L0H1.q",
        "L0H2 -> logits",
        "MLP0 -> L1H0.k",
        "L0H1 -> logits @ 3",
    ]
    assert "L0H2 -> logits" in c and len(c) == 4
    assert set(c.nodes) == {"embed", "L0H1", "L0H2", "logits", "MLP0", "L1H0"}
    assert len(wb.Circuit(["embed -> logits", "embed -> logits"])) == 1


def test_bad_input_names_the_fix():
    model = tiny("llama")
    m = _metric(model)
    g = wb.edge_attribution(model, CLEAN, CORRUPT, metric=m)
    with pytest.raises(WorkbenchError, match="No sender"):
        wb.faithfulness(model, CLEAN, wb.Circuit(["L9H0 -> logits"]), CORRUPT, metric=m)
    with pytest.raises(WorkbenchError, match="No receiver"):
        wb.faithfulness(model, CLEAN, wb.Circuit(["embed -> L0H0.z"]), CORRUPT, metric=m)
    with pytest.raises(WorkbenchError, match="does not reach"):
        wb.faithfulness(model, CLEAN, wb.Circuit(["L1H0 -> L0H0.q"]), CORRUPT, metric=m)
    with pytest.raises(WorkbenchError, match="Not an edge"):
        wb.Circuit(["L0H0 L1H0.q"])
    with pytest.raises(WorkbenchError, match="graph.top"):
        wb.faithfulness(model, CLEAN, g, CORRUPT, metric=m)
    with pytest.raises(WorkbenchError, match="only"):
        g.top(g.n_edges + 1)
    with pytest.raises(WorkbenchError, match="method="):
        wb.edge_attribution(model, CLEAN, CORRUPT, metric=m, method="eap_ig")
    with pytest.raises(WorkbenchError, match="steps="):
        wb.edge_attribution(model, CLEAN, CORRUPT, metric=m, method="eap-ig", steps=0)
    ds = wb.Dataset(clean=[CLEAN], corrupt=[CORRUPT], target=TARGET, foil=FOIL)
    gd = wb.edge_attribution(model, ds, metric=m)
    with pytest.raises(WorkbenchError, match="keep sizes"):
        wb.faithfulness_curve(model, ds, gd, metric=m, sizes=[10, gd.n_edges + 5])
    other_ds = wb.Dataset(clean=[SECOND_CLEAN], corrupt=[SECOND_CORRUPT], target=TARGET, foil=FOIL)
    with pytest.raises(WorkbenchError, match="another dataset"):
        wb.faithfulness_curve(model, other_ds, gd, metric=m, sizes=[10])
    other = tiny("qwen2")
    with pytest.raises(WorkbenchError, match="another model"):
        wb.faithfulness_curve(other, ds, gd, metric=m, sizes=[10])
    with pytest.raises(WorkbenchError, match="another model"):
        wb.faithfulness(other, ds, gd.top(5), metric=m)
    with pytest.raises(WorkbenchError, match="sums over positions"):
        g.score("embed -> logits @ 2")
    # the model is untouched and usable afterwards
    again = wb.edge_attribution(model, CLEAN, CORRUPT, metric=m)
    np.testing.assert_array_equal(np.nan_to_num(again.matrix), np.nan_to_num(g.matrix))


def test_unsupported_family_is_refused():
    model = tiny("gemma2")
    with pytest.raises(wb.UnsupportedModelError, match="sum of its heads"):
        wb.edge_attribution(model, CLEAN, CORRUPT, metric=_metric(model))


# ------------------------------------------------------------------------------ the embedded model
@pytest.fixture(scope="module")
def embedded():
    return wb.load()


EMB_CLEAN = "When Mary and John went to the store, John gave a drink to"
EMB_CORRUPT = "When Mary and John went to the store, Paul gave a drink to"


@pytest.mark.embedded
@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_embedded_edge_scores_equal_reference(embedded, method):
    m = wb.logit_diff(" Mary", " John")
    g = wb.edge_attribution(embedded, EMB_CLEAN, EMB_CORRUPT, metric=m, method=method, steps=2)
    rm = ref.logit_diff(embedded.tokenizer, " Mary", " John")
    chosen = ["L0H0.q", "L12H4.k", "L20H2.v", "L23H3.q", "MLP7", "MLP29", "logits"]
    expected = ref.reference_edge_attribution(
        embedded.hf, embedded.tokenizer, EMB_CLEAN, EMB_CORRUPT, rm, steps=2 if method == "eap-ig" else 0,
        receivers=chosen,
    )  # fmt: skip
    got, want = _matrix(g, expected)
    scale = float(np.abs(want).max())
    assert scale > 1e-2
    assert_close(got, want, atol=1e-4 * max(1.0, scale), rtol=1e-3, what=f"embedded {method}")


@pytest.mark.embedded
def test_embedded_faithfulness_random_circuit(embedded):
    m = wb.logit_diff(" Mary", " John")
    g = wb.edge_attribution(embedded, EMB_CLEAN, EMB_CORRUPT, metric=m)
    c = g.top(300)
    f = wb.faithfulness(embedded, EMB_CLEAN, c, EMB_CORRUPT, metric=m)
    rm = ref.logit_diff(embedded.tokenizer, " Mary", " John")
    want = ref.reference_edge_ablation(
        embedded.hf, embedded.tokenizer, EMB_CLEAN, EMB_CORRUPT, rm, {(e.sender, e.receiver) for e in c}
    )
    assert f.raw == pytest.approx(want, abs=2e-3)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_edge_patch_agrees_with_direct_path_patching(family):
    """Exact patching of one head -> receiver edge is wb.path_patch with that sender and receiver and
    direct=True (the traced engine: every other head and every MLP frozen at its corrupt output)."""
    model = tiny(family)
    m = _metric(model)
    top = model.n_layers - 1
    cases = [
        ("L0H1 -> logits", wb.Cell("head", 0, head=1), "logits"),
        (f"L0H2 -> L{top}H3.q", wb.Cell("head", 0, head=2), [wb.Cell("q", top, head=3)]),
        (f"L0H0 -> L{top}H1.k", wb.Cell("head", 0, head=0), [wb.Cell("k", top, head=1)]),
        (f"L{top - 1}H3 -> L{top}H0.v", wb.Cell("head", top - 1, head=3), [wb.Cell("v", top, head=0)]),
    ]
    for edge, sender, receivers in cases:
        exact = wb.edge_patch(model, CLEAN, [edge], CORRUPT, metric=m)
        path = wb.path_patch(
            model, CLEAN, CORRUPT, metric=m, senders=[sender], receivers=receivers, direct=True
        )
        assert exact.raw == pytest.approx(float(path), abs=1e-4), f"{family} {edge}"
    # without direct=True, paths through the MLPs count too: a different (larger) intervention
    loose = wb.path_patch(model, CLEAN, CORRUPT, metric=m, senders=[cases[0][1]], receivers="logits")
    assert float(loose) != pytest.approx(
        wb.edge_patch(model, CLEAN, [cases[0][0]], CORRUPT, metric=m).raw, abs=1e-6
    )


def test_direct_path_patch_code_reproduces():
    from tests.conftest import run_code

    model = tiny("llama")
    m = _metric(model)
    v = wb.path_patch(model, CLEAN, CORRUPT, metric=m, senders=[wb.Cell("head", 0, head=2)],
                      receivers=[wb.Cell("q", 1, head=3)], direct=True)  # fmt: skip
    ns = run_code(v.to_code())
    assert ns["result"] == pytest.approx(float(v), abs=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_by_position_circuit_faithfulness(family):
    """A by-position circuit keeps its edges at their columns only (align='exact': a column is a position)."""
    model = tiny(family)
    m = _metric(model)
    gp = wb.edge_attribution(model, CLEAN, CORRUPT, metric=m, by_position=True)
    c = gp.top(40)
    f = wb.faithfulness(model, CLEAN, c, CORRUPT, metric=m)
    kept = {(e.sender, e.receiver, int(e.position)) for e in c}
    want = ref.reference_edge_ablation(model.hf, model.tokenizer, CLEAN, CORRUPT, _ref_metric(model), kept)
    assert f.raw == pytest.approx(want, abs=1e-4)
    assert f.raw != pytest.approx(gp.corrupt_mean, abs=1e-4)  # the circuit does something


def test_curve_uses_the_graph_metric_by_default():
    """The contract's call: wb.faithfulness_curve(model, ds, g, sizes=[...]) without metric=."""
    import pickle

    model = tiny("llama")
    ds = wb.Dataset(clean=[CLEAN], corrupt=[CORRUPT], target=TARGET, foil=FOIL)
    g = wb.edge_attribution(model, ds, metric=wb.logit_diff())
    curve = wb.faithfulness_curve(model, ds, g, sizes=[10, 50])
    again = wb.faithfulness_curve(model, ds, g, metric=wb.logit_diff(), sizes=[10, 50])
    np.testing.assert_allclose(curve.values, again.values, atol=1e-6)
    assert pickle.loads(pickle.dumps(g)).metric is not None
    custom = wb.edge_attribution(model, ds, metric=lambda logits: logits[:, 5] - logits[:, 7])
    assert pickle.loads(pickle.dumps(custom)).metric is None  # a lambda metric does not pickle: dropped


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox", "phi", "gemma", "olmo", "qwen3", "granite"])
def test_norm_vjp_closed_form_equals_autograd(family):
    """The engine's closed-form LayerNorm / RMSNorm gradient is used (verified) and equals autograd's."""
    from workbench.engine import circuit as engine

    model = tiny(family)
    block = engine._blocks(model)[0]
    torch.manual_seed(0)
    x = torch.randn(2, 5, model.d_model) * 3 + 0.5
    grads = torch.randn(4, 2, 5, model.d_model)
    assert engine._norm_form(block.attn_norm, x) is not None, f"{family}: closed form not used"
    with torch.enable_grad():
        xr = x.unsqueeze(0).expand(4, *x.shape).clone().requires_grad_(True)
        (want,) = torch.autograd.grad(block.attn_norm.forward(xr), xr, grads)
    assert_close(engine._norm_vjp(block.attn_norm, x, grads), want, atol=1e-5, what=f"{family} norm vjp")


def test_in_place_metric_is_harmless():
    """A metric that edits the logits it gets in place gives the same graph and faithfulness as a pure one."""
    model = tiny("llama")
    t, f = model.token_id(TARGET), model.token_id(FOIL)

    def pure(logits):
        return logits[:, t] - logits[:, f]

    def in_place(logits):
        logits[:, t] += 1.0  # edits the logits it was given (a reused tensor would drift by 1 per use)
        return logits[:, t] - 1.0 - logits[:, f]

    a = wb.edge_attribution(model, CLEAN, CORRUPT, metric=pure)
    b = wb.edge_attribution(model, CLEAN, CORRUPT, metric=in_place)
    np.testing.assert_allclose(np.nan_to_num(b.matrix), np.nan_to_num(a.matrix), atol=1e-5)
    assert b.clean_mean == pytest.approx(a.clean_mean, abs=1e-5)
    fa = wb.faithfulness(model, CLEAN, a.top(30), CORRUPT, metric=pure)
    fb = wb.faithfulness(model, CLEAN, a.top(30), CORRUPT, metric=in_place)
    assert fb.raw == pytest.approx(fa.raw, abs=1e-5) and fb.clean == pytest.approx(fa.clean, abs=1e-5)


def test_another_thread_using_the_model():
    """While edge_attribution runs (its hooks in place), another thread's submodule call computes its true
    numbers and its whole-model forward waits; the graph equals one computed alone."""
    import threading

    model = wb.testing.tiny_model("llama", seed=5)
    m = _metric(model)
    alone = wb.edge_attribution(model, CLEAN, CORRUPT, metric=m)
    ids = model.to_tokens(CLEAN)
    with torch.no_grad():
        want = model.hf(ids).logits.clone()
        x = torch.randn(3, model.d_model)
        want_q = model.hf.model.layers[1].self_attn.q_proj(x).clone()
    seen: dict = {}

    def progress(_fraction, _message):
        if seen:
            return
        box: dict = {}

        def sub():
            with torch.no_grad():
                box["q"] = model.hf.model.layers[1].self_attn.q_proj(x).clone()

        def whole():
            with torch.no_grad():
                box["logits"] = model.hf(ids).logits.clone()

        t1, t2 = threading.Thread(target=sub), threading.Thread(target=whole)
        t1.start()
        t1.join(30)
        t2.start()
        t2.join(0.3)
        seen.update(box=box, waiting=t2.is_alive(), thread=t2)

    busy = wb.edge_attribution(model, CLEAN, CORRUPT, metric=m, progress=progress)
    seen["thread"].join(30)
    np.testing.assert_array_equal(np.nan_to_num(busy.matrix), np.nan_to_num(alone.matrix))
    assert seen["waiting"], "the other thread's forward ran while the op held the model"
    torch.testing.assert_close(seen["box"]["q"], want_q)
    torch.testing.assert_close(seen["box"]["logits"], want)
