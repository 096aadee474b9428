"""Many examples per forward (issue 13, "Batching"): the replay engine runs the examples of one length
together (`replay.run_many`) and replays runs that edit several positions of one site and layer (a role's
tokens, align="roles"). Both must give exactly each example's single-pair numbers and the traced path's,
also after the edits users make to a model (DESIGN.md trust rules)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import workbench as wb
from tests.conftest import ATOL, CLEAN, CORRUPT, FOIL, OTHER, TARGET, assert_close, tiny
from tests.test_trust import EDITS, apply_edit
from workbench.data.dataset import Dataset
from workbench.engine import replay as F
from workbench.engine.edits import Add, Cell, Edit
from workbench.engine.fast import switched_off
from workbench.ops.patching import pair_tokens
from workbench.testing import tiny_model

# Equal-length (9-token) pairs for the tiny tokenizer; each example has its own target and foil.
PAIRS = [(CLEAN, CORRUPT, TARGET, FOIL), (CORRUPT, OTHER, FOIL, TARGET), (OTHER, CLEAN, TARGET, " Mary")]
FAMILY_SAMPLE = ("gpt2", "llama", "gemma2", "qwen3", "phi", "gpt_neox", "granite")
SITES = ("resid_pre", "attn_out", "mlp_out", "head", "resid_post")


def dataset() -> Dataset:
    return Dataset(*[list(x) for x in zip(*PAIRS, strict=True)])


def roles_dataset() -> Dataset:
    """Role spans of two tokens ("{A}" is ' Eiffel Tower' etc.): align='roles' cells edit both at once."""
    rows = [
        {"A": " Eiffel Tower", "B": " Colosseum Tower"},
        {"A": " Colosseum Tower", "B": " cat sat"},
        {"A": " cat sat", "B": " Eiffel Tower"},
    ]
    tpl, ctpl = "The{A} is located in the city of", "The{B} is located in the city of"
    return Dataset.from_template(tpl, rows=rows, corrupt=ctpl, target=TARGET, foil=FOIL)


def spy_many(monkeypatch) -> list:
    """Record what `replay.run_many` returns for stacks of several examples."""
    seen: list = []
    original = F.run_many

    def spy(model, pairs, *a, **kw):
        out = original(model, pairs, *a, **kw)
        if len(pairs) > 1 and not switched_off():  # (under F.disabled() the traced path runs)
            seen.append(out is not None)
        return out

    monkeypatch.setattr(F, "run_many", spy)
    return seen


def single(model, i: int, site: str, by_position: bool):
    clean, corrupt, target, foil = PAIRS[i]
    return wb.patch_sweep(
        model, clean, corrupt, metric=wb.logit_diff(target, foil), site=site, by_position=by_position
    )


@pytest.mark.parametrize("family", FAMILY_SAMPLE)
def test_stacked_sweep_equals_each_single_pair(family, monkeypatch):
    """per_example[i] of a dataset sweep (the examples stacked) == example i's own sweep, 1e-4, every site."""
    model = tiny(family)
    seen = spy_many(monkeypatch)
    for site in SITES:
        by_position = site == "head"
        got = wb.patch_sweep(model, dataset(), metric=wb.logit_diff(), site=site, by_position=by_position)
        for i in range(len(PAIRS)):
            one = single(model, i, site, by_position)
            assert_close(got.per_example[i], one.values, ATOL, f"{family} {site} example {i}")
            assert abs(got.clean[i] - one.clean) <= ATOL and abs(got.corrupt[i] - one.corrupt) <= ATOL
        assert_close(got.values, got.per_example.mean(0), 1e-6, f"{family} {site} mean")
    assert seen and all(seen), f"{family}: the stacked replay did not run ({seen})"


@pytest.mark.parametrize("family", ("gpt2", "llama", "gemma3_text"))
def test_stacked_patch_equals_each_single_pair(family, monkeypatch):
    """wb.patch over a Dataset (one run per example, stacked, with top-k) == each example's own patch."""
    model = tiny(family)
    seen = spy_many(monkeypatch)
    got = wb.patch(model, dataset(), metric=wb.logit_diff(), site="resid_pre", layer=1, position=4, top_k=3)
    for i, (clean, corrupt, target, foil) in enumerate(PAIRS):
        one = wb.patch(model, clean, corrupt, metric=wb.logit_diff(target, foil), site="resid_pre", layer=1,
                       position=4, top_k=3)  # fmt: skip
        assert abs(got.per_example[i] - float(one)) <= ATOL, (family, i)
        np.testing.assert_array_equal(got.per_example_values[i].top_ids, one.top_ids)
    assert seen == [True]


@pytest.mark.parametrize("family", ("gpt2", "llama", "gemma2", "qwen2"))
def test_role_runs_are_replayed_exactly(family, monkeypatch):
    """align='roles': a run edits a role's tokens (several positions of one site and layer) jointly; the
    replay serves it (starting at the first edited position) and equals the traced engine, per example."""
    model = tiny(family)
    ds = roles_dataset()
    seen = spy_many(monkeypatch)
    for site in ("resid_pre", "attn_out", "mlp_out", "head"):
        by_position = site == "head"
        fast = wb.patch_sweep(
            model, ds, metric=wb.logit_diff(), site=site, align="roles", by_position=by_position
        )
        with F.disabled():
            plain = wb.patch_sweep(model, ds, metric=wb.logit_diff(), site=site, align="roles",
                                   by_position=by_position)  # fmt: skip
        assert_close(fast.per_example, plain.per_example, ATOL, f"{family} {site} roles")
        assert_close(fast.clean, plain.clean, ATOL, f"{family} {site} clean")
    assert seen and all(seen)
    # one pair: a joint edit of two positions is the replay's too, and equals the traced engine
    c, k = pair_tokens(model, CLEAN, CORRUPT)
    rows = [[Edit(Cell("resid_pre", 1, 2)), Edit(Cell("resid_pre", 1, 5))], [Edit(Cell("attn_out", 0, 3))]]
    bound = wb.logit_diff(TARGET, FOIL).bind(model)
    assert F.run(model, c, k, rows, bound) is None  # two sites: not the replay's
    rows = [[Edit(Cell("mlp_out", 1, 2)), Edit(Cell("mlp_out", 1, 5))], [Edit(Cell("mlp_out", 0, 3))]]
    fast_one = F.run(model, c, k, rows, bound)
    assert fast_one is not None
    from workbench.engine.traced import run_rows

    with F.disabled():
        plain_one = run_rows(model, c, k, rows, bound)
    assert_close(fast_one.values, plain_one.values, ATOL, f"{family} joint mlp_out")


def test_replay_declines_repeated_places():
    """Two edits of one place in a run (an 'add' applied twice) or of two layers stay with the traced path."""
    add = Edit(Cell("resid_pre", 1, 2), Add(torch.ones(4)))
    assert F.one_site([[add, add]]) is None
    assert F.one_site([[Edit(Cell("resid_pre", 1, 2)), Edit(Cell("resid_pre", 2, 3))]]) is None
    assert F.one_site([[Edit(Cell("head", 1, 2, 0)), Edit(Cell("head", 1, 2, 1))]]) == ("head", "source")


BUDGET = settings(
    max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.mark.parametrize("family", ("gpt2", "llama", "gemma2", "phi3"))
@BUDGET
@given(kind=st.sampled_from(EDITS), seed=st.integers(0, 2**16), site=st.sampled_from(SITES[:4]))
def test_stacked_replay_sees_every_edit(family, kind, seed, site):
    """Warm the caches, edit the model as users do, then the stacked dataset sweep (fast) == traced."""
    model = tiny_model(family, seed=seed % 5)
    wb.patch_sweep(model, dataset(), metric=wb.logit_diff(), site=site)  # warm: packed weights, baselines
    what = f"{family} {apply_edit(model, kind, np.random.default_rng(seed))} {site}"
    fast = wb.patch_sweep(model, dataset(), metric=wb.logit_diff(), site=site)
    roles = wb.patch_sweep(model, roles_dataset(), metric=wb.logit_diff(), site=site, align="roles")
    with F.disabled():
        plain = wb.patch_sweep(model, dataset(), metric=wb.logit_diff(), site=site)
        plain_roles = wb.patch_sweep(model, roles_dataset(), metric=wb.logit_diff(), site=site, align="roles")
    assert_close(fast.per_example, plain.per_example, ATOL, what)
    assert_close(fast.clean, plain.clean, ATOL, what + " clean")
    assert_close(fast.corrupt, plain.corrupt, ATOL, what + " corrupt")
    assert_close(roles.per_example, plain_roles.per_example, ATOL, what + " roles")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_stacked_replay_with_an_in_place_metric_equals_traced(family, monkeypatch):
    """A metric that edits its logits in place (and reads them after) gives the same numbers on the stacked
    replay as on the traced path: every example's metric receives its own copy."""
    model = tiny_model(family)
    t, f = model.token_id(TARGET), model.token_id(FOIL)

    def metric(logits):
        logits.mul_(0.5)  # in place: must not leak into another example's or the baseline's logits
        return logits[:, t] - logits[:, f]

    seen = spy_many(monkeypatch)
    fast = wb.patch_sweep(model, dataset(), metric=metric, site="resid_pre")
    assert seen and all(seen), "the stacked replay did not run"
    with F.disabled():
        plain = wb.patch_sweep(model, dataset(), metric=metric, site="resid_pre")
    np.testing.assert_allclose(fast.per_example, plain.per_example, atol=1e-4)
    np.testing.assert_allclose(fast.clean, plain.clean, atol=1e-4)
    np.testing.assert_allclose(fast.corrupt, plain.corrupt, atol=1e-4)
