"""Many examples in one left-padded traced forward (`traced.run_examples`, what a remote dataset op sends as ONE
NDIF request) equal one example at a time, on families with absolute (GPT-2) and rotary positions, over
examples of different lengths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.data import Dataset, predict
from workbench.engine import traced
from workbench.engine.edits import Add, Cell, Edit
from workbench.ops import over_dataset

from .conftest import ATOL, assert_close, assert_same_topk, tiny

# Pairs of equal length within a pair (tiny tokenizer), lengths 12, 5, 14, 9 across pairs.
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
FAMILIES = ("gpt2", "llama", "gemma2", "gpt_neox", "phi")


def _examples(model, seed: int = 0) -> list:
    """Every edit kind the engine has, at single positions, whole sites, heads and attention patterns."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for (clean, corrupt), (target, foil) in zip(PAIRS, TARGETS, strict=True):
        c, k = model.to_tokens(clean), model.to_tokens(corrupt)
        n = c.shape[1]
        assert k.shape[1] == n

        def cell(site, layer, position=None, head=None, n=n):
            return Cell(site, layer, position, head).checked(model, n)

        rows = [[Edit(cell("resid_pre", lyr, p))] for lyr in range(model.n_layers) for p in range(n)]
        rows += [
            [Edit(cell("mlp_out", 1, n - 2), "zero"), Edit(cell("attn_out", 0), "mean")],
            [Edit(cell("head", 1, head=1), "zero")],
            [Edit(cell("head", 0, 1, head=0))],
            [Edit(cell("v", 1, n - 1, head=0))],
            [Edit(cell("resid_post", 0, 2), Add(torch.randn(model.d_model, generator=gen), 0.5))],
            [Edit(cell("mlp_out", 0, 1), torch.randn(model.d_model, generator=gen))],
            [Edit(cell("pattern", 1, head=0))],
            [Edit(cell("pattern", 0, n - 1, head=1), "zero")],
        ]
        out.append((c, k, rows, wb.logit_diff(target, foil).bind(model)))
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("chunk", [None, 9])
def test_padded_examples_equal_one_example_at_a_time(family: str, chunk: int | None) -> None:
    model = tiny(family)
    examples = _examples(model)
    single = [traced.run_rows(model, *e, top_k=3) for e in examples]
    multi = traced.run_examples(model, examples, top_k=3, chunk=chunk)
    assert len({e[0].shape[1] for e in examples}) == len(examples)  # every example padded differently
    assert len(multi) == len(examples)
    for i, (s, m) in enumerate(zip(single, multi, strict=True)):
        what = f"{family} example {i} (chunk {chunk})"
        assert_close(m.values, s.values, ATOL, what)
        assert_close(m.source, s.source, ATOL, f"{what} source")
        assert_close(m.base, s.base, ATOL, f"{what} base")
        assert_same_topk(m.top_ids, m.top_probs, s.top_ids, s.top_probs, ATOL, what)
    # the edits act: the patched runs differ from the unedited base
    assert max(float((s.values - s.base).abs().max()) for s in single) > 1e-3


def test_example_without_rows_gives_its_baselines() -> None:
    model = tiny("gpt2")
    examples = _examples(model)
    examples[1] = (*examples[1][:2], [], examples[1][3])
    multi = traced.run_examples(model, examples)
    single = traced.run_rows(model, *examples[1])
    assert multi[1].values.numel() == 0
    assert_close(multi[1].source, single.source, ATOL, "source")
    assert_close(multi[1].base, single.base, ATOL, "base")


def _dataset() -> Dataset:
    return Dataset(
        clean=[c for c, _ in PAIRS],
        corrupt=[k for _, k in PAIRS],
        target=[t for t, _ in TARGETS],
        foil=[f for _, f in TARGETS],
    )


@pytest.fixture
def batched(monkeypatch):
    """Dataset ops take the remote path (all examples through `run_examples`) on a local model; counts calls."""
    calls: list[int] = []
    real = over_dataset.run_examples

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(over_dataset, "one_request", lambda model: True)
    monkeypatch.setattr(over_dataset, "run_examples", counting)
    return calls


def _ops(model, ds):
    metric = wb.logit_diff()
    return {
        "patch_sweep": wb.patch_sweep(model, ds, metric=metric, site="resid_pre", align="right"),
        "head_sweep": wb.patch_sweep(model, ds, metric=metric, site="head", by_position=True, align="right"),
        "patch": wb.patch(
            model, ds, metric=metric, cells=[wb.Cell("resid_pre", 1, position=-2)], align="right"
        ),
        "ablate_sweep": wb.ablate_sweep(model, ds, metric=metric, site="mlp_out", align="right"),
        "ablate_resample": wb.ablate(
            model, ds, metric=metric, site="attn_out", layer=1, method="resample", align="right"
        ),
        "ablate_mean": wb.ablate(
            model, ds, metric=metric, site="mlp_out", layer=0, method="mean", align="right"
        ),
    }


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_dataset_ops_in_one_batch_equal_per_example(family: str, batched) -> None:
    model = tiny(family)
    ds = _dataset()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(over_dataset, "one_request", lambda model: False)
        local = _ops(model, ds)
    assert batched == []
    one = _ops(model, ds)
    assert len(batched) == len(one)  # each op: one run_examples call over every example
    for name, r in one.items():
        ref = local[name]
        assert_close(r.per_example, ref.per_example, ATOL, f"{family} {name} per_example")
        assert_close(r.clean, ref.clean, ATOL, f"{family} {name} clean")
        assert_close(r.corrupt, ref.corrupt, ATOL, f"{family} {name} corrupt")
        assert_close(np.asarray(r.values if hasattr(r, "values") else float(r)),
                     np.asarray(ref.values if hasattr(ref, "values") else float(ref)), ATOL, name)  # fmt: skip
    # and per_example[i] is example i's own single-pair sweep over the last K positions (align="right")
    k = one["patch_sweep"].per_example.shape[-1]
    for i, ((clean, corrupt), (target, foil)) in enumerate(zip(PAIRS, TARGETS, strict=True)):
        pair = wb.patch_sweep(model, clean, corrupt, metric=wb.logit_diff(target, foil), site="resid_pre")
        assert_close(one["patch_sweep"].per_example[i], pair.values[:, -k:], ATOL, f"{family} pair {i}")


def test_predictions_in_one_padded_trace_equal_local() -> None:
    """The remote predictions' trace (nnsight over the padded batch) gives the local forward's logits."""
    model = tiny("gpt2")
    ids = [model.to_tokens(c) for c, _ in PAIRS]
    assert_close(predict._remote_final_logits(model, ids), predict.final_logits(model, ids), ATOL, "logits")
    one_at_a_time = torch.cat([model.hf(t).logits[:, -1] for t in ids]).detach()
    assert_close(predict.final_logits(model, ids), one_at_a_time, ATOL, "padded vs alone")
