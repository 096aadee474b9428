"""`wb.logit_lens` and `wb.attribution_patch` over a `wb.Dataset`: every example's row equals the single-pair
op at that example's column positions (a role spanning several positions: the lens averages them, the
attribution sums them), on every tiny family and the embedded model; the left-padded batches (attention mask
and explicit position ids, GPT-2's absolute positions included) equal one example at a time; the results plot,
frame and write nnsight code that reproduces them; bad input names the fix."""

from __future__ import annotations

import numpy as np
import pytest

import workbench as wb
from workbench.data import Dataset
from workbench.data.align import alignment
from workbench.engine import fast, fast_attribution
from workbench.errors import WorkbenchError
from workbench.ops.dataset_results import DatasetLensResult, DatasetSweepResult
from workbench.testing import FAMILIES

from .conftest import ATOL, assert_close, run_code, tiny

pytestmark = pytest.mark.usefixtures("_no_bars")


@pytest.fixture
def _no_bars(monkeypatch):
    monkeypatch.setenv("WORKBENCH_PROGRESS", "0")


# Equal length within a pair (tiny tokenizer), 12, 5, 14 and 9 tokens across pairs: every example is padded
# differently in a batch.
PAIRS = [
    ("The cat sat on the mat and the dog sat on the", "The dog sat on the log and the cat sat on the"),
    ("The dog sat on the", "The cat sat on the"),
    (
        "When Mary and John went to the store, John gave a drink to",
        "When Mary and John went to the store, Mary gave a drink to",
    ),
    ("Hello world! The cat sat on the", "Hello world! The dog sat on the"),
]
TARGETS = [(" mat", " log"), (" log", " mat"), (" Mary", " John"), (" mat", " log")]
SITES = ["resid_pre", "attn_out", "mlp_out", "head"]


def _pairs() -> Dataset:
    return Dataset(
        clean=[c for c, _ in PAIRS],
        corrupt=[k for _, k in PAIRS],
        target=[t for t, _ in TARGETS],
        foil=[f for _, f in TARGETS],
    )


def _equal_length() -> Dataset:
    """Same token length in every example (align='exact'): 14 tokens."""
    return Dataset.from_template(
        "When{A} and{B} went to the store,{B} gave a drink to",
        corrupt="When{A} and{B} went to the store,{A} gave a drink to",
        rows=[{"A": " Mary", "B": " John"}, {"A": " John", "B": " Mary"}, {"A": " cat", "B": " dog"}],
        target="{A}",
        foil="{B}",
    )


def _roles() -> Dataset:
    """Different lengths and a field of two tokens (' Eiffel Tower'): roles of several positions."""
    return Dataset.from_template(
        "The{X} sat on the{Y} and the",
        corrupt="The{Y} sat on the{X} and the",
        rows=[
            {"X": " cat", "Y": " mat", "F": " log"},
            {"X": " Eiffel Tower", "Y": " log", "F": " mat"},
            {"X": " dog", "Y": " mat", "F": " log"},
        ],
        target="{Y}",
        foil="{F}",
    )


DATASETS = {"right": (_pairs, "right"), "exact": (_equal_length, "exact"), "roles": (_roles, "roles")}


# ------------------------------------------------------------------------------------------------ the lens


def _single_lens_columns(model, ds, align, prob=True):
    """Each example's single-pair LensResult.prob(target) averaged over each column's positions: [N, L, C]."""
    al = alignment(model, ds, align, corrupt=False)
    out = []
    for i, e in enumerate(ds):
        p = wb.logit_lens(model, e.clean, tokens=[e.target]).prob(e.target).astype(np.float64)
        v = p if prob else np.log(p)
        out.append(np.stack([v[:, col].mean(1) for col in al.positions[i]], axis=1))
    return np.stack(out)


def _check_lens(model, ds, align, what):
    r = wb.logit_lens(model, ds, align=align)
    assert isinstance(r, DatasetLensResult)
    ref = _single_lens_columns(model, ds, align)
    assert r.per_example.shape == ref.shape == (len(ds), model.n_layers, len(r.columns))
    assert_close(r.per_example, ref, ATOL, f"{what} lens per_example")
    assert_close(r.values, r.per_example.mean(0), 1e-6, f"{what} lens values = mean")
    assert_close(r.sem, r.per_example.std(0, ddof=1) / np.sqrt(len(ds)), 1e-6, f"{what} lens sem")
    # the log-probability metric is the same run read sharper (the tiny models' probabilities are small)
    logp = wb.logit_lens(model, ds, metric=wb.logprob(), align=align)
    assert_close(
        logp.per_example, _single_lens_columns(model, ds, align, prob=False), ATOL, f"{what} logprob"
    )
    return r


@pytest.mark.parametrize("family", FAMILIES)
def test_lens_padded_equals_one_example_at_a_time(family):
    """Examples of 12, 5, 14 and 9 tokens in one left-padded batch (align='right'), every family."""
    model = tiny(family)
    r = _check_lens(model, _pairs(), "right", family)
    assert r.columns == [str(j) for j in range(-5, 0)]


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3_text"])
def test_lens_traced_padded_path_equals_one_example_at_a_time(family):
    """The nnsight path (what a remote model sends as one request) over the padded batch, explicit position ids."""
    model = tiny(family)
    ds = _pairs()
    ref = _single_lens_columns(model, ds, "right")
    with fast.disabled():
        r = wb.logit_lens(model, ds, align="right")
    assert_close(r.per_example, ref, ATOL, f"{family} traced padded lens")


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
@pytest.mark.parametrize("case", ["exact", "roles"])
def test_lens_alignments(family, case):
    make, align = DATASETS[case]
    r = _check_lens(tiny(family), make(), align, f"{family} {case}")
    if case == "roles":
        assert "{X} first" in r.columns and "final" in r.columns


def test_lens_batch_size_does_not_change_the_numbers(monkeypatch):
    from workbench.ops import lens as lens_op

    model, ds = tiny("gpt2"), _pairs()
    whole = wb.logit_lens(model, ds, align="right")
    monkeypatch.setattr(lens_op, "batch_size_for", lambda model, n_tokens: 1)
    one = wb.logit_lens(model, ds, align="right")
    assert_close(whole.per_example, one.per_example, ATOL, "batch of 4 vs batches of 1")


def test_lens_custom_metric_and_kl():
    model, ds = tiny("llama"), _pairs()
    t = model.token_id(" mat")
    r = wb.logit_lens(model, ds, metric=lambda logits: logits[:, t], align="right")
    assert r.per_example.shape == (4, model.n_layers, 5)
    kl = wb.logit_lens(model, ds, metric=wb.kl_to_clean(), align="right")
    al = alignment(model, ds, "right", corrupt=False)
    for i, e in enumerate(ds):  # KL to the model's own output at each position: the single lens's .kl
        single = wb.logit_lens(model, e.clean).kl
        assert_close(kl.per_example[i], single[:, [c[0] for c in al.positions[i]]], ATOL, f"kl example {i}")


def test_lens_result_api():
    model, ds = tiny("llama"), _roles()
    r = wb.logit_lens(model, ds, align="roles", top_k=3)
    one = r.lens(1)
    assert isinstance(one, wb.LensResult) and one.top_ids.shape[2] == 3
    al = alignment(model, ds, "roles", corrupt=False)
    p = one.prob(ds[1].target)
    assert_close(np.stack([p[:, c].mean(1) for c in al.positions[1]], 1), r.per_example[1], ATOL, "lens(1)")
    assert r.lens(1) is one  # computed once
    assert r.examples[1] == model.str_tokens(model.to_tokens(ds[1].clean))
    text = repr(r)
    assert "DatasetLensResult" in text and "3 examples" in text and len(text.splitlines()) <= 4
    fig = r.plot()
    assert np.asarray(fig.data[0].z).shape == r.values.shape
    assert len(fig.data[0].x) == len(r.columns)
    r.plot(example=2)
    with pytest.raises(WorkbenchError, match="example"):
        r.plot(example=7)
    df = r.to_frame()
    assert len(df) == r.values.size and {"layer", "column", "label", "value", "sem", "n"} <= set(df.columns)
    assert_close(df["value"].to_numpy(), r.values.reshape(-1), 0, "frame values")
    long = r.to_frame(per_example=True)
    assert len(long) == r.per_example.size
    import pickle

    back = pickle.loads(pickle.dumps(r))
    assert_close(back.values, r.values, 0, "unpickled") and back.to_code() == r.to_code()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("case", ["right", "roles"])
def test_lens_to_code_reproduces(family, case):
    make, align = DATASETS[case]
    model, ds = tiny(family), make()
    r = wb.logit_lens(model, ds, align=align)
    ns = run_code(r.to_code())
    assert_close(ns["result"], r.values, ATOL, f"{family} {case} lens to_code")
    assert_close(ns["per_example"], r.per_example, ATOL, f"{family} {case} lens to_code per_example")


# ----------------------------------------------------------------------------------------- attribution


def _single_attribution(model, ds, align, site, by_position):
    """Each example's single-pair attribution_patch values over its columns (a span: the SUM of its
    positions' estimates, plus the corrupt baseline)."""
    al = alignment(model, ds, align)
    out = []
    for i, e in enumerate(ds):
        s = wb.attribution_patch(
            model, e.clean, e.corrupt, metric=wb.logit_diff(e.target, e.foil), site=site,
            by_position=by_position,
        )  # fmt: skip
        est = s.values.astype(np.float64) - s.corrupt
        if est.ndim == 2 and s.axes == ("layer", "head"):
            out.append(est + s.corrupt)
            continue
        out.append(np.stack([est[:, col].sum(1) for col in al.positions[i]], axis=1) + s.corrupt)
    return np.stack(out)


def _check_attribution(model, ds, align, what, *, sites=SITES, by_position=True):
    got = wb.attribution_patch(
        model, ds, metric=wb.logit_diff(), site=sites, by_position=by_position, align=align
    )
    one = wb.attribution_patch(
        model, ds, metric=wb.logit_diff(), site=sites, by_position=by_position, align=align,
        batched=False,
    )  # fmt: skip
    for s in sites:
        r = got[s]
        assert isinstance(r, DatasetSweepResult)
        ref = _single_attribution(model, ds, align, s, by_position)
        assert_close(r.per_example, ref, ATOL, f"{what} {s} per_example (batched)")
        assert_close(one[s].per_example, ref, ATOL, f"{what} {s} per_example (one at a time)")
        assert_close(r.values, r.per_example.mean(0), 1e-5, f"{what} {s} values = mean")
        assert r.columns == list(alignment(model, ds, align).columns)
    return got


@pytest.mark.parametrize("family", FAMILIES)
def test_attribution_padded_equals_one_example_at_a_time(family):
    """Per site (residual, sub-block outputs, heads by position), examples of four lengths (align='right')."""
    model = tiny(family)
    _check_attribution(model, _pairs(), "right", family)
    if family == "gpt2":  # absolute position embeddings: the padded batch really ran
        assert fast_attribution.applies(model, SITES)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
@pytest.mark.parametrize("case", ["exact", "roles"])
def test_attribution_alignments(family, case):
    make, align = DATASETS[case]
    model, ds = tiny(family), make()
    got = _check_attribution(model, ds, align, f"{family} {case}", sites=["resid_pre", "head"])
    heads = wb.attribution_patch(model, ds, metric=wb.logit_diff(), site="head", align=align)
    assert heads.values.shape == (model.n_layers, model.n_heads)
    assert_close(
        heads.per_example, _single_attribution(model, ds, align, "head", False), ATOL, "heads [L, H]"
    )
    if case == "exact":  # one column per position: the very single-pair grid
        for i, e in enumerate(ds):
            s = wb.attribution_patch(model, e.clean, e.corrupt, metric=wb.logit_diff(e.target, e.foil),
                                     )  # fmt: skip
            assert_close(got["resid_pre"].per_example[i], s.values, ATOL, f"example {i}")
            assert_close(got["resid_pre"].corrupt[i], s.corrupt, ATOL, "corrupt baseline")
            assert_close(got["resid_pre"].clean[i], s.clean, ATOL, "clean baseline")


def test_attribution_pattern_and_embed_over_a_dataset():
    model = tiny("llama")
    _check_attribution(model, _pairs(), "right", "llama pattern/embed", sites=["embed", "pattern", "v"])


def test_attribution_result_api_and_code():
    model, ds = tiny("llama"), _roles()
    r = wb.attribution_patch(model, ds, metric=wb.logit_diff(), align="roles")
    assert "DatasetSweepResult attribution_patch" in repr(r) and "3 examples" in repr(r)
    r.plot()
    assert len(r.to_frame()) == r.values.size
    assert r.example(1).values.shape == r.values.shape


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("site", ["resid_pre", "head"])
def test_attribution_to_code_reproduces(family, site):
    model, ds = tiny(family), _roles()
    for by_position in (True, False) if site == "head" else (False,):
        r = wb.attribution_patch(
            model, ds, metric=wb.logit_diff(), site=site, by_position=by_position, align="roles"
        )
        ns = run_code(r.to_code())
        assert_close(ns["result"], r.values, ATOL, f"{family} {site} attribution to_code")
        assert_close(ns["per_example"], r.per_example, ATOL, f"{family} {site} to_code per_example")


# ------------------------------------------------------------------------------------------- bad input


def test_lens_without_targets_names_the_fix():
    model = tiny("llama")
    ds = Dataset(clean=[c for c, _ in PAIRS])
    with pytest.raises(WorkbenchError, match=r"target=") as info:
        wb.logit_lens(model, ds, align="right")
    assert "metric=" in str(info.value)
    r = wb.logit_lens(model, ds, metric=wb.prob(" mat"), align="right")  # a fixed token works
    assert r.per_example.shape[0] == 4


def test_bad_dataset_calls():
    model, ds = tiny("llama"), _pairs()
    with pytest.raises(WorkbenchError, match="intervention"):
        wb.logit_lens(model, ds, intervention=wb.Intervention("resid_pre", 0))
    with pytest.raises(WorkbenchError, match="Dataset"):
        wb.logit_lens(model, PAIRS[0][0], metric=wb.prob(" mat"))
    with pytest.raises(WorkbenchError, match="align='right'"):
        wb.logit_lens(model, ds)  # different lengths under align='exact'
    with pytest.raises(WorkbenchError, match="corrupt"):
        wb.attribution_patch(model, ds, PAIRS[0][1], metric=wb.logit_diff(), align="right")
    with pytest.raises(WorkbenchError, match="corrupt"):
        wb.attribution_patch(model, Dataset(clean=[c for c, _ in PAIRS], target=" mat", foil=" log"),
                             metric=wb.logit_diff(), align="right")  # fmt: skip
    with pytest.raises(WorkbenchError, match="target"):
        wb.attribution_patch(model, Dataset(clean=[c for c, _ in PAIRS], corrupt=[k for _, k in PAIRS]),
                             metric=wb.logit_diff(), align="right")  # fmt: skip


# --------------------------------------------------------------------------------------- embedded model


@pytest.mark.embedded
def test_embedded_model_lens_and_attribution():
    model = wb.load()
    names = [(" Mary", " John", " Tom"), (" John", " Mary", " Sarah"), (" Tom", " Sarah", " John")]
    ds = Dataset.from_template(
        "When{A} and{B} went to the store,{B} gave a drink to",
        corrupt="When{A} and{B} went to the store,{C} gave a drink to",
        rows=[{"A": a, "B": b, "C": c} for a, b, c in names],
        target="{A}",
        foil="{B}",
    )
    lens = _check_lens(model, ds, "roles", "embedded")
    assert "{B}#2" in lens.columns
    _check_attribution(model, ds, "roles", "embedded", sites=["resid_pre", "head"])
    _check_attribution(model, ds, "right", "embedded right", sites=["mlp_out"])


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2", "gpt_neox"])
def test_attribution_traced_padded_path_equals_one_example_at_a_time(family, monkeypatch):
    """The one-request path of remote models (one traced forward and backward over every example, left-padded)
    forced locally: each example's estimate is its single-pair one, residual, head and pattern sites."""
    from workbench.ops import attribution, over_dataset

    model = tiny(family)
    monkeypatch.setattr(over_dataset, "one_request", lambda m: True)
    monkeypatch.setattr("workbench.ops.attribution.one_request", lambda m: True)
    calls = []
    real = attribution._trace_examples
    monkeypatch.setattr(attribution, "_trace_examples", lambda *a: calls.append(1) or real(*a))
    sites = ["resid_pre", "mlp_out", "head", "pattern"]
    ds = _pairs()
    got = wb.attribution_patch(
        model, ds, metric=wb.logit_diff(), site=sites, by_position=True, align="right", batched=False
    )
    assert calls == [1]  # every example in one traced forward and backward
    for s in sites:
        ref = _single_attribution(model, ds, "right", s, True)
        assert_close(got[s].per_example, ref, ATOL, f"{family} {s} per_example (traced, padded)")
    monkeypatch.undo()
    one = wb.attribution_patch(
        model, ds, metric=wb.logit_diff(), site="resid_pre", align="right", batched=False
    )
    assert_close(got["resid_pre"].clean, one.clean, ATOL, f"{family} clean baselines")
    assert_close(got["resid_pre"].corrupt, one.corrupt, ATOL, f"{family} corrupt baselines")
