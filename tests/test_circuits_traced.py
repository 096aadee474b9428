"""The traced circuit engine (engine/circuit_traced.py: what a remote model sends to NDIF as ONE request per op)
equals the hook engine (engine/circuit.py) on local models: edge attribution (EAP, EAP-IG, by position),
faithfulness of random / top / empty / full circuits, the faithfulness curve and exact edge patching, on
every family the graph is defined for, over examples of different lengths (left-padded together).

The remote functions run here on local models: `model.remote` is False, so nnsight runs the same trace bodies
locally (no NDIF); tests/ndif/test_circuits_remote.py runs them on a real NDIF server."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.engine.circuit import layout as engine_layout
from workbench.errors import UnsupportedModelError
from workbench.ops import circuits_remote as remote
from workbench.ops.metrics import as_metric

from .conftest import ATOL, assert_close, tiny

# lengths 12, 5, 8 (tiny tokenizer): one padded batch; align="right" keeps the last 5 positions as columns
PAIRS = [
    ("The cat sat on the mat and the dog sat on the", "The dog sat on the log and the cat sat on the"),
    ("The dog sat on the", "The cat sat on the"),
    ("Hello world! The cat sat on the", "Hello world! The dog sat on the"),
]
TARGETS = [(" mat", " log"), (" log", " mat"), (" mat", " log")]
FAMILIES = (
    "gpt2",
    "llama",
    "gpt_neox",
    "gemma",
    "phi",
    "phi3",
    "qwen2",
    "qwen3",
    "mistral",
    "olmo",
    "granite",
)
ALIGN = "right"


def _ds() -> wb.Dataset:
    return wb.Dataset(
        clean=[c for c, _ in PAIRS],
        corrupt=[k for _, k in PAIRS],
        target=[t for t, _ in TARGETS],
        foil=[f for _, f in TARGETS],
    )


def _same_graph(got: wb.Graph, want: wb.Graph, what: str) -> None:
    assert got.matrix.shape == want.matrix.shape, what
    assert np.array_equal(np.isnan(got.matrix), np.isnan(want.matrix)), f"{what}: edges differ"
    assert_close(got.matrix, want.matrix, ATOL, f"{what} scores")
    assert_close(got.clean, want.clean, ATOL, f"{what} clean")
    assert_close(got.corrupt, want.corrupt, ATOL, f"{what} corrupt")
    assert got.options == want.options and got.columns == want.columns
    assert got.senders == want.senders and got.receivers == want.receivers
    assert float(np.nanmax(np.abs(want.matrix))) > 1e-3, (
        f"{what}: the scores are all ~0 (the test cannot fail)"
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_traced_edge_attribution_equals_the_hook_engine(family: str) -> None:
    model, ds, m = tiny(family), _ds(), wb.logit_diff()
    for method, steps in (("eap", 0), ("eap-ig", 3)):
        for by_position in (False, True):
            want = wb.edge_attribution(model, ds, metric=m, method=method, steps=max(steps, 1), by_position=by_position,
                                       align=ALIGN)  # fmt: skip
            got = remote.edge_attribution_remote(
                model, ds, as_metric(m), method, steps, by_position, ALIGN, None, None
            )
            _same_graph(got, want, f"{family} {method} by_position={by_position}")


@pytest.mark.parametrize("family", FAMILIES)
def test_traced_faithfulness_and_edge_patch_equal_the_hook_engine(family: str) -> None:
    model, ds, m = tiny(family), _ds(), wb.logit_diff()
    g = wb.edge_attribution(model, ds, metric=m, align=ALIGN)
    edges = list(g.scores)
    rng = np.random.default_rng(0)
    random = wb.Circuit([edges[i] for i in rng.choice(len(edges), len(edges) // 4, replace=False)])
    circuits = {"random": random, "top 10": g.top(10), "empty": wb.Circuit([]), "full": g.top(g.n_edges)}
    mm = as_metric(m)
    for name, c in circuits.items():
        what = f"{family} {name} circuit"
        want = wb.faithfulness(model, ds, c, metric=m, align=ALIGN)
        got = remote.faithfulness_remote(model, ds, c, mm, ALIGN, None, None)
        assert_close(got.per_example, want.per_example, ATOL, f"{what} faithfulness")
        assert_close([got.clean, got.corrupt], [want.clean, want.corrupt], ATOL, f"{what} baselines")
        assert got.options == want.options and got.n_edges == want.n_edges
        patched = wb.edge_patch(model, ds, c, metric=m, align=ALIGN)
        got_p = remote.edge_patch_remote(model, ds, c, mm, ALIGN, None, None)
        assert_close(got_p.per_example, patched.per_example, ATOL, f"{what} edge patch")
        assert got_p.options == patched.options
    # the known ends: the full graph is the clean run, the empty circuit the corrupt run (and edge patching the
    # reverse), so the random circuit's value in between is a real mixed run
    full = remote.faithfulness_remote(model, ds, circuits["full"], mm, ALIGN, None, None)
    empty = remote.faithfulness_remote(model, ds, circuits["empty"], mm, ALIGN, None, None)
    assert_close(full.per_example, g.clean, ATOL, f"{family} full circuit = clean")
    assert_close(empty.per_example, g.corrupt, ATOL, f"{family} empty circuit = corrupt")
    mid = remote.faithfulness_remote(model, ds, random, mm, ALIGN, None, None)
    assert float(np.abs(mid.per_example - empty.per_example).max()) > 1e-4
    assert float(np.abs(mid.per_example - full.per_example).max()) > 1e-4


@pytest.mark.parametrize("family", ("gpt2", "llama", "phi"))
def test_traced_curve_is_one_run_of_every_size(family: str) -> None:
    model, ds, m = tiny(family), _ds(), wb.logit_diff()
    for by_position in (False, True):
        g = wb.edge_attribution(model, ds, metric=m, align=ALIGN, by_position=by_position)
        sizes = [0, 5, 40, g.n_edges]
        want = wb.faithfulness_curve(model, ds, g, metric=m, sizes=sizes)
        raw, clean, corrupt = remote.faithfulness_runs_remote(model, ds, [g.top(n) for n in sizes], as_metric(m),
                                                              ALIGN, None, None)  # fmt: skip
        assert raw.shape == (len(sizes), len(ds))
        assert_close(raw.mean(1), want.raw, ATOL, f"{family} curve by_position={by_position}")
        assert_close(
            [clean.mean(), corrupt.mean()], [want.clean, want.corrupt], ATOL, f"{family} curve baselines"
        )


def test_traced_path_refuses_a_family_whose_heads_do_not_add_up() -> None:
    model = tiny("gemma2")  # a norm after attention: the stream is not the sum of the heads' outputs
    with pytest.raises(UnsupportedModelError, match="sum of its heads' outputs"):
        remote.edge_attribution_remote(
            model, _ds(), as_metric(wb.logit_diff()), "eap", 0, False, ALIGN, None, None
        )


@pytest.mark.embedded
def test_traced_circuits_equal_the_hook_engine_on_the_embedded_model() -> None:
    model = wb.load()
    ds = wb.datasets.ioi(2, template=0)
    m = wb.logit_diff()
    mm = as_metric(m)
    for method, steps in (("eap", 0), ("eap-ig", 2)):
        want = wb.edge_attribution(model, ds, metric=m, method=method, steps=max(steps, 1))
        got = remote.edge_attribution_remote(model, ds, mm, method, steps, False, "exact", None, None)
        _same_graph(got, want, f"embedded {method}")
    c = want.top(200)
    f_want = wb.faithfulness(model, ds, c, metric=m)
    f_got = remote.faithfulness_remote(model, ds, c, mm, "exact", None, None)
    assert_close(f_got.per_example, f_want.per_example, ATOL, "embedded faithfulness of the top 200")
    p_want = wb.edge_patch(model, ds, want.top(5), metric=m)
    p_got = remote.edge_patch_remote(model, ds, want.top(5), mm, "exact", None, None)
    assert_close(p_got.per_example, p_want.per_example, ATOL, "embedded edge patch of the top 5")


def test_scores_computed_a_few_examples_at_a_time_are_the_same(monkeypatch) -> None:
    from workbench.engine import circuit_traced

    model, ds, mm = tiny("llama"), _ds(), as_metric(wb.logit_diff())
    whole = remote.edge_attribution_remote(model, ds, mm, "eap-ig", 2, True, ALIGN, None, None)
    monkeypatch.setattr(circuit_traced, "SCORE_BYTES", 1)  # one example per chunk
    seen = []
    real = circuit_traced.attribute
    monkeypatch.setattr(
        circuit_traced,
        "attribute",
        lambda m, lay, plan, ms: seen.append(plan.chunks) or real(m, lay, plan, ms),
    )
    parts = remote.edge_attribution_remote(model, ds, mm, "eap-ig", 2, True, ALIGN, None, None)
    assert seen == [
        [(0, 1, 0, 2), (1, 2, 2, 4), (2, 3, 4, 6)]
    ]  # 2 gradient rows per example (steps 1, clean)
    _same_graph(parts, whole, "chunked scores")


def test_mixed_rows_over_the_memory_budget_split_into_requests(monkeypatch) -> None:
    from workbench.engine import circuit_traced

    model, ds, mm = tiny("gpt2"), _ds(), as_metric(wb.logit_diff())
    g = wb.edge_attribution(model, ds, metric=wb.logit_diff(), align=ALIGN)
    circuits = [g.top(n) for n in (3, 30, 200)]
    whole = remote.faithfulness_runs_remote(model, ds, circuits, mm, ALIGN, None, None)
    calls = []
    real = circuit_traced.mixed
    monkeypatch.setattr(
        circuit_traced,
        "mixed",
        lambda m, lay, plan, ms: calls.append(plan.n_circuits) or real(m, lay, plan, ms),
    )
    width = max(model.to_tokens(c).shape[1] for c, _ in PAIRS)
    row = engine_layout(model).n_senders * width * model.d_model * 4
    for fit, want in ((9, [3]), (6, [2, 1]), (3, [1, 1, 1]), (2, [1] * 6)):
        calls.clear()
        monkeypatch.setattr(remote, "MIXED_BYTES", fit * row)
        got = remote.faithfulness_runs_remote(model, ds, circuits, mm, ALIGN, None, None)
        assert calls == want, fit
        for a, b in zip(got, whole, strict=True):
            assert_close(a, b, ATOL, f"{fit} rows per request")


def test_circuits_travel_as_an_index_list_or_a_bitmask_alike() -> None:
    from workbench.engine import circuit_traced
    from workbench.engine.circuit import layout

    model = tiny("llama")
    lay = layout(model)
    pairs = [(model.to_tokens(c), model.to_tokens(k)) for c, k in PAIRS]
    positions = [[[0], [1, 2]] for _ in PAIRS]
    rng = np.random.default_rng(1)
    valid = np.argwhere(lay.valid())
    small = [
        (int(s), int(r), int(k))
        for (s, r), k in zip(valid[rng.choice(len(valid), 5)], rng.integers(0, 3, 5), strict=True)
    ]
    big = [(int(s), int(r), 0) for s, r in valid]
    plan = circuit_traced.mixed_plan(pairs, 0, [small, big], positions, "clean", False, lay)
    assert plan.packed.numel() > 0 and plan.edges.numel() == 0  # the bitmask is smaller here
    listed = circuit_traced.mixed_plan(pairs, 0, [small], positions, "clean", False, lay)
    assert listed.packed.numel() == 0 and listed.edges.shape == (5, 4)
    shape = (2, lay.n_senders, lay.n_receivers, 3)
    dense = circuit_traced.keep_tensor(plan.edges, plan.packed, shape, torch.zeros(0))
    want = torch.zeros(shape)
    for c, edges in enumerate((small, big)):
        for s, r, k in edges:
            want[c, s, r, k] = 1.0
    assert torch.equal(dense, want)
    first = circuit_traced.keep_tensor(listed.edges, listed.packed, (1, *shape[1:]), torch.zeros(0))
    assert torch.equal(first, want[:1])
