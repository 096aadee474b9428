"""wb.logit_attribution against the plain-hook reference (parts of the final stream from hooks and weight
matrices, the final norm written out per family with its scale frozen) on tiny GPT-2 (with biases), Llama and
GPT-NeoX and on the embedded model; the exact decomposition, datasets, the result type and bad input."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
import torch

import workbench as wb
from tests import reference as ref
from tests.conftest import CLEAN, FOIL, OTHER, TARGET, assert_close, run_code, tiny
from workbench.testing import FAMILIES as ALL_FAMILIES
from workbench.testing import tiny_hf_model, tiny_tokenizer

FAMILIES = ["gpt2", "llama", "gpt_neox"]


def _biased(fam: str) -> wb.Model:
    """A tiny model whose biases (output projections, norms) are random, so `.rest` is not zero."""
    hf = tiny_hf_model(fam, seed=1)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return wb.Model.from_hf(hf, tiny_tokenizer(), source=f"tiny:{fam}")


def _check(got, want, what: str) -> None:
    assert_close(got.heads, want["heads"], what=f"{what} heads")
    assert_close(got.mlps, want["mlps"], what=f"{what} mlps")
    assert_close(got.embed, want["embed"], what=f"{what} embed")
    assert_close(got.rest, want["rest"], what=f"{what} rest")
    assert_close(got.metric, want["metric"], what=f"{what} metric")
    assert want["stream_error"] < 1e-4, "reference: the parts do not rebuild the final stream"


@pytest.mark.parametrize("fam", FAMILIES)
def test_logit_diff_matches_reference_and_adds_up(fam):
    model = _biased(fam) if fam == "gpt2" else tiny(fam)
    got = wb.logit_attribution(model, CLEAN, metric=wb.logit_diff(TARGET, FOIL))
    want = ref.reference_logit_attribution(
        model.hf, model.tokenizer, CLEAN, ref.logit_diff(model.tokenizer, TARGET, FOIL)
    )
    _check(got, want, fam)
    assert got.exact
    total = got.heads.astype(np.float64).sum() + got.mlps.sum() + got.embed + got.rest
    assert abs(total - got.metric) < 1e-4 and abs(got.total - got.metric) < 1e-4
    # the metric is the model's own logit difference
    logits = ref.run_last_logits(model.hf, ref.tokens(model.tokenizer, CLEAN))
    assert abs(got.metric - float(ref.logit_diff(model.tokenizer, TARGET, FOIL)(logits)[0])) < 1e-4
    if fam == "gpt2":
        assert abs(got.rest) > 1e-3, "the biases must show in .rest"
        parts = got.rest_parts
        assert_close(
            parts["attn_bias"].sum() + parts["norm_bias"] + parts["unembed_bias"], got.rest, what="rest parts"
        )


@pytest.mark.parametrize("fam", FAMILIES)
def test_prob_is_first_order(fam):
    model = tiny(fam)
    got = wb.logit_attribution(model, CLEAN, metric=wb.prob(TARGET))
    want = ref.reference_logit_attribution(
        model.hf, model.tokenizer, CLEAN, ref.prob(model.tokenizer, TARGET)
    )
    _check(got, want, fam)
    assert not got.exact and "first-order" in repr(got)


@pytest.mark.parametrize("fam", [f for f in ALL_FAMILIES if f not in ("gemma2", "gemma3_text")])
def test_every_family_adds_up(fam):
    model = tiny(fam)
    got = wb.logit_attribution(model, CLEAN, metric=wb.logit_diff(TARGET, FOIL))
    logits = ref.run_last_logits(model.hf, ref.tokens(model.tokenizer, CLEAN))
    want = float(ref.logit_diff(model.tokenizer, TARGET, FOIL)(logits)[0])
    assert abs(got.total - want) < 1e-4, (fam, got.total, want)
    assert got.checks["decomposition"] < 1e-5 and got.checks["norm"] < 1e-5


def test_dataset_means_per_example_and_sem():
    model = _biased("gpt2")
    prompts = [CLEAN, OTHER, "The Colosseum is located in the city of"]  # two lengths: left padding
    ds = wb.Dataset(clean=prompts, target=[TARGET, FOIL, FOIL], foil=[FOIL, TARGET, TARGET])
    got = wb.logit_attribution(model, ds, metric=wb.logit_diff())
    wants = [
        ref.reference_logit_attribution(model.hf, model.tokenizer, p, ref.logit_diff(model.tokenizer, t, f))
        for p, t, f in zip(prompts, ds.target, ds.foil, strict=True)
    ]
    for i, want in enumerate(wants):
        _check(got.example(i), want, f"example {i}")
    heads = np.stack([w["heads"] for w in wants])
    assert_close(got.heads, heads.mean(0), what="mean heads")
    assert_close(got.per_example["heads"], heads, what="per-example heads")
    assert_close(got.sem["heads"], heads.std(0, ddof=1) / np.sqrt(3), what="sem heads")
    assert_close(got.metric, np.mean([w["metric"] for w in wants]), what="mean metric")
    assert abs(got.total - got.metric) < 1e-4
    assert got.n_examples == 3 and "over 3 examples" in repr(got)
    assert got.to_frame(per_example=True).shape[0] == 3 * (
        model.n_layers * model.n_heads + model.n_layers + 2
    )


@pytest.fixture(scope="module")
def embedded():
    return wb.load()


@pytest.mark.embedded
def test_embedded_model_matches_reference(embedded):
    model = embedded
    got = wb.logit_attribution(model, CLEAN, metric=wb.logit_diff(TARGET, FOIL))
    want = ref.reference_logit_attribution(
        model.hf, model.tokenizer, CLEAN, ref.logit_diff(model.tokenizer, TARGET, FOIL)
    )
    _check(got, want, "embedded")
    assert got.rest == 0.0  # Llama family: no biases anywhere on the way
    assert abs(got.heads.sum() + got.mlps.sum() + got.embed - got.metric) < 1e-4
    ioi = wb.datasets.ioi()[:3]
    got = wb.logit_attribution(model, ioi, metric=wb.logit_diff())
    for i, ex in enumerate(ioi):
        want = ref.reference_logit_attribution(model.hf, model.tokenizer, ex.clean,
                                               ref.logit_diff(model.tokenizer, ex.target, ex.foil))  # fmt: skip
        _check(got.example(i), want, f"ioi {i}")


def test_result_type():
    model = tiny("llama")
    got = wb.logit_attribution(model, CLEAN, metric=wb.logit_diff(TARGET, FOIL))
    top = got.top(5)
    labels, values = got._parts()
    assert [abs(v) for _, v in top] == pytest.approx(sorted(np.abs(values), reverse=True)[:5])
    label, v = top[0]
    if label.startswith("L"):
        layer, head = (int(x) for x in label[1:].split("H"))
        assert got.heads[layer, head] == pytest.approx(v)
    fig = got.plot()
    assert len(fig.data) == 2
    df = got.to_frame()
    assert len(df) == model.n_layers * model.n_heads + model.n_layers + 2
    assert df["value"].sum() == pytest.approx(got.metric, abs=1e-4)
    assert "LogitAttribution" in repr(got) and "exact" in repr(got)
    code = run_code(got.to_code())["result"]
    assert_close(code["heads"], got.heads, what="to_code heads")
    assert_close(code["mlps"], got.mlps, what="to_code mlps")
    assert_close(code["embed"], got.embed, what="to_code embed")
    assert_close(code["metric"], got.metric, what="to_code metric")
    back = pickle.loads(pickle.dumps(got))
    assert_close(back.heads, got.heads)
    assert back.to_code() == got.to_code()
    ds = wb.Dataset(clean=[CLEAN, OTHER], target=[TARGET, FOIL], foil=[FOIL, TARGET])
    d = wb.logit_attribution(model, ds, metric=wb.logit_diff())
    code = run_code(d.to_code())["result"]
    assert_close(code["heads"], d.heads, what="dataset to_code heads")


def test_progress_and_cancel():
    model = tiny("llama")
    seen = []
    ds = wb.Dataset(clean=[CLEAN] * 20, target=TARGET, foil=FOIL)
    wb.logit_attribution(model, ds, metric=wb.logit_diff(), progress=lambda f, msg: seen.append((f, msg)))
    assert seen[-1][0] == 1.0 and "20/20" in seen[-1][1]
    stop = threading.Event()
    stop.set()
    with pytest.raises(wb.CancelledError):
        wb.logit_attribution(model, CLEAN, metric=wb.logit_diff(TARGET, FOIL), cancel=stop)


def test_bad_input():
    model = tiny("llama")
    with pytest.raises(wb.WorkbenchError, match="needs metric=.*logit_diff"):
        wb.logit_attribution(model, CLEAN)
    with pytest.raises(wb.WorkbenchError, match="clean run.*logit_diff"):
        wb.logit_attribution(model, CLEAN, metric=wb.kl_to_clean())
    with pytest.raises(wb.WorkbenchError, match="For one prompt, give the metric its tokens"):
        wb.logit_attribution(model, CLEAN, metric=wb.logit_diff())
    with pytest.raises(wb.WorkbenchError, match="takes a prompt .* or a wb.Dataset"):
        wb.logit_attribution(model, [CLEAN], metric=wb.logit_diff(TARGET, FOIL))
    with pytest.raises(wb.WorkbenchError, match="example 0 has none: give the Dataset target="):
        wb.logit_attribution(model, wb.Dataset(clean=[CLEAN]), metric=wb.logit_diff())
    with pytest.raises(wb.WorkbenchError, match="through a norm first.*attribution_patch"):
        wb.logit_attribution(tiny("gemma2"), CLEAN, metric=wb.logit_diff(TARGET, FOIL))
    got = wb.logit_attribution(model, CLEAN, metric=wb.logit_diff(TARGET, FOIL))
    with pytest.raises(wb.WorkbenchError, match="unknown option"):
        got.plot(colour="red")
