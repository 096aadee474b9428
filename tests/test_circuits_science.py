"""What edge attribution finds for indirect object identification on the embedded model (SmolLM2-135M), over
`wb.datasets.ioi()` (its default: 32 prompts, ABC corruption) with `wb.logit_diff()` (IO name - subject) and
EAP-IG with 5 steps. Notebook 09 states these as checked claims.

Measured (the graph has 70,651 edges; clean logit diff 5.07, corrupt 0.29):
- Faithfulness of the top-n EAP-IG edges: 10: 0.14, 100: 0.15, 500: 0.37, 1000: 0.25, 2000: 0.35, 3000: 0.42,
  5000: 0.62, 7000: 0.80, 10000: 0.90, 15000: 0.97, 20000: 0.97. The smallest size of that list reaching 0.8 is
  7,000 edges, 9.9% of the graph: issue 17's "0.8 with a small fraction" holds at ~10% here, not below 5% (at
  3,000 edges = 4.2% it is 0.42). The test asserts 0.8 at 10,000 edges (14%), where it is 0.90 (7,000 sits on
  the threshold), and keeps the "< 5%" claim as a strict xfail.
- Top heads by outgoing effect (node_scores("head")): L23H3 +2.74 (the name mover head patching finds, notebook
  04), L24H4 -1.98, L29H1 +1.49, L19H2 +1.28, L17H4 +1.05, L29H0 -1.01, L20H0 +0.87. The head patching sweep over
  the same 32 prompts (wb.patch_sweep(site="head"), 8,640 runs, ~6 min: not run here) ranks L23H3 +0.63, L24H4 -0.45,
  L29H1, L20H0, L19H2, L17H4, L29H0 first; EAP's node scores correlate with it at 0.98.
- 10,000 random edges: faithfulness -0.00; EAP's (not IG's) top 10,000: 0.67 (EAP curve: 3000: 0.35, 5000: 0.52,
  7000: 0.51, 10000: 0.67, 20000: 0.90).
- The top 10 edges' estimates against exact patching (wb.edge_patch, raw - corrupt): every sign agrees;
  embed -> MLP0 4.46 vs 4.61, L23H3 -> logits 2.47 vs 2.52, MLP0 -> L23H1.v 1.44 vs 0.63, L29H1 -> logits 1.42 vs
  1.46, L24H4 -> logits -1.24 vs -1.28, L20H0 -> MLP20 -1.17 vs -0.50, L23H3 -> L24H4.q -1.05 vs -0.94,
  MLP0 -> L8H1.q 1.03 vs 0.15, MLP18 -> L20H0.v -0.94 vs -1.64, L23H0 -> logits 0.91 vs 0.94.
"""

from __future__ import annotations

import numpy as np
import pytest

import workbench as wb

pytestmark = pytest.mark.embedded

SIZE = 10_000  # edges: faithfulness 0.90 measured (0.80 at 7,000, 0.62 at 5,000)


@pytest.fixture(scope="module")
def model():
    return wb.load()


@pytest.fixture(scope="module")
def ioi():
    return wb.datasets.ioi()


@pytest.fixture(scope="module")
def graph(model, ioi):
    return wb.edge_attribution(model, ioi, metric=wb.logit_diff(), method="eap-ig", steps=5, progress=False)


def test_the_dataset_shows_the_behaviour(graph, ioi):
    assert len(ioi) == 32 and graph.n_edges == 70_651
    assert graph.clean_mean > 4 and graph.corrupt_mean < 1  # measured 5.07 and 0.29


def test_a_small_fraction_of_the_edges_is_faithful(model, ioi, graph):
    f = wb.faithfulness(model, ioi, graph.top(SIZE), metric=wb.logit_diff(), progress=False)
    assert SIZE / graph.n_edges < 0.15
    assert float(f) >= 0.8, float(f)  # measured 0.90
    # the circuit is a cut, not the whole model: the same number of random edges does much worse
    rng = np.random.default_rng(0)
    edges = graph.edges
    random = wb.Circuit([edges[i] for i in rng.choice(len(edges), SIZE, replace=False)])
    r = wb.faithfulness(model, ioi, random, metric=wb.logit_diff(), progress=False)
    assert float(r) < float(f) - 0.3, (float(r), float(f))


@pytest.mark.xfail(strict=True, reason="measured: 0.42 at 3,000 edges (4.2%); 0.8 needs ~7,000 edges (9.9%)")
def test_issue_claim_under_five_percent_of_the_edges(model, ioi, graph):
    n = int(0.05 * graph.n_edges)
    f = wb.faithfulness(model, ioi, graph.top(n), metric=wb.logit_diff(), progress=False)
    assert float(f) >= 0.8, float(f)


def test_the_top_heads_include_the_name_mover(graph):
    h = graph.node_scores("head")
    order = np.argsort(-np.abs(h).ravel())
    top = [divmod(int(i), h.shape[1]) for i in order[:5]]
    assert top[0] == (23, 3) and h[23, 3] > 0, top  # measured +2.74, the largest |node score|
    assert h[24, 4] < 0 and (24, 4) in top  # the negative head notebook 04 sees over many prompts (-1.98)


def test_exact_patching_confirms_the_top_edges_signs(model, ioi, graph):
    for e in graph.top(10).edges:
        p = wb.edge_patch(model, ioi, [e], metric=wb.logit_diff(), progress=False)
        exact = p.raw - p.corrupt
        estimate = graph.score(e)
        assert np.sign(exact) == np.sign(estimate) and abs(exact) > 0.1, (str(e), estimate, exact)
