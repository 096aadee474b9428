"""wb.generation_lens: greedy generation read through the logit lens (issue 15). Its last row against a plain
forward of the model, its tokens against HF's greedy generate, its commit layers against wb.logit_lens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench as wb
from tests import reference as R
from tests.conftest import assert_close, run_code, tiny
from workbench.errors import WorkbenchError
from workbench.ops.generation_lens import commit_layers, confident_layers

FAMILIES = ["gpt2", "llama", "gpt_neox"]
PROMPT = "The Eiffel Tower is located in the city of"


def _full(model, g):
    return torch.cat([model.to_tokens(g.prompt), torch.tensor([g.token_ids])], 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_last_row_is_the_models_probability(family):
    model = tiny(family)
    g = wb.generation_lens(model, PROMPT, max_new_tokens=8, progress=False)
    n = len(g.tokens)
    assert n == 8 and g.prob.shape == (model.n_layers, n) and g.rank.shape == (model.n_layers, n)
    assert g.prob.dtype == np.float32 and g.rank.dtype == np.int32
    ids = model.to_tokens(PROMPT)
    full = _full(model, g)
    assert_close(g.prob[-1], R.reference_token_probs(model.hf, full, ids.shape[1]), what=f"{family} last row")
    assert (g.rank[-1] == 0).all()  # greedy: each token is the top-1 of the last layer
    # the tokens are HF's own greedy continuation
    ref = R.reference_steer(model.hf, model.tokenizer, PROMPT, None, 0, max_new_tokens=8)
    assert g.token_ids == ref["ids"] and g.text == ref["text"]
    assert g.tokens == model.str_tokens(g.token_ids)
    # the lens over prompt + generated: its own rows at the predicting positions
    assert g.lens.top_ids.shape == (model.n_layers, full.shape[1], 5)
    cols = np.arange(ids.shape[1] - 1, full.shape[1] - 1)
    assert (g.lens.top_ids[-1, cols, 0] == np.asarray(g.token_ids)).all()


def _check_against_lens(g, lens_rank, lens_prob, lens_top1, n0, n_layers):
    """g's rank / prob / commit / confident layers against a lens over prompt + generated (arrays [L, T, ...]
    given as functions of a token id), read at the predicting positions."""
    rank = np.stack([lens_rank(t)[:, n0 - 1 + i] for i, t in enumerate(g.token_ids)], 1)
    prob = np.stack([lens_prob(t)[:, n0 - 1 + i] for i, t in enumerate(g.token_ids)], 1)
    assert (rank == g.rank).all()
    assert_close(prob, g.prob, what="prob vs the lens")
    for i in range(len(g.tokens)):  # the definitions, spelled out
        top1 = lens_top1[:, n0 - 1 + i] == g.token_ids[i]
        first = next(lyr for lyr in range(n_layers) if top1[lyr:].all())
        assert g.commit_layer[i] == first
        above = np.nonzero(prob[:, i] > 0.5)[0]
        assert g.confident_layer[i] == (above[0] if above.size else -1)


@pytest.mark.parametrize("family", FAMILIES)
def test_commit_layers_agree_with_a_plain_hook_lens(family):
    """The tiny models generate byte pieces whose text does not retokenize to the same ids, so here the
    lens over prompt + generated ids is the reference's own (block outputs -> final norm -> unembedding);
    `test_embedded_commit_layers_agree_with_logit_lens` compares with wb.logit_lens on the generated text."""
    model = tiny(family)
    g = wb.generation_lens(model, PROMPT, max_new_tokens=8, progress=False)
    full = _full(model, g)
    posts = R.capture(model.hf, full, "resid_post")
    logits = torch.stack([R.unembed(model.hf, posts[lyr]) for lyr in range(model.n_layers)])  # [L, T, V]
    probs = torch.softmax(logits, -1)

    def rank(t):
        return (logits > logits[..., t : t + 1]).sum(-1).numpy()

    n0 = model.to_tokens(PROMPT).shape[1]
    top1 = logits.argmax(-1).numpy()
    _check_against_lens(g, rank, lambda t: probs[..., t].numpy(), top1, n0, model.n_layers)


def test_commit_and_confident_definitions():
    rank = np.array([[0, 3, 1], [2, 0, 0], [0, 0, 1]])
    assert commit_layers(rank).tolist() == [2, 1, -1]
    prob = np.array([[0.6, 0.1], [0.2, 0.4], [0.9, 0.45]], np.float32)
    assert confident_layers(prob).tolist() == [0, -1]


def test_stops_at_eos():
    model = tiny("gpt2")
    first = wb.generation_lens(model, PROMPT, max_new_tokens=6, progress=False)
    stop = first.token_ids[2]
    config = model.hf.generation_config
    saved = config.eos_token_id
    config.eos_token_id = stop
    try:
        g = wb.generation_lens(model, PROMPT, max_new_tokens=6, progress=False)
    finally:
        config.eos_token_id = saved
    cut = first.token_ids.index(stop)
    assert g.token_ids == first.token_ids[: cut + 1] and g.options["stopped_at_eos"]
    assert_close(g.prob, first.prob[:, : cut + 1], what="eos-cut prob")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_to_code_reproduces(family):
    model = tiny(family)
    g = wb.generation_lens(model, PROMPT, max_new_tokens=5, progress=False)
    prob, rank = run_code(g.to_code())["result"]
    assert_close(prob, g.prob, what="to_code prob")
    assert (rank == g.rank).all()
    ids, probs = run_code(g.lens.to_code())["result"]
    assert (ids == g.lens.top_ids).all()
    assert_close(probs, g.lens.top_probs, what="lens to_code")


def test_views_and_repr():
    model = tiny("llama")
    g = wb.generation_lens(model, PROMPT, max_new_tokens=4, progress=False)
    text = repr(g)
    assert "GenerationLens [3 layers x 4 generated tokens]" in text and "commit layers" in text
    assert g.plot().data and g.plot(what="rank").data
    frame = g.to_frame()
    assert len(frame) == 3 * 4 and list(frame.columns[:3]) == ["layer", "index", "token"]
    assert (frame["commit_layer"].to_numpy().reshape(3, 4)[0] == g.commit_layer).all()
    with pytest.raises(WorkbenchError):
        g.plot(what="kl")


@pytest.mark.parametrize(("kwargs", "words"), [(dict(max_new_tokens=0), "max_new_tokens"),
                                               (dict(max_new_tokens=500), "max_new_tokens"),
                                               (dict(prompt=""), "empty")])  # fmt: skip
def test_bad_input(kwargs, words):
    model = tiny("gpt2")
    kwargs = {"prompt": PROMPT, **kwargs}
    with pytest.raises(WorkbenchError, match=words):
        wb.generation_lens(model, progress=False, **kwargs)


@pytest.mark.embedded
def test_embedded_last_row_and_tokens():
    model = wb.load()
    g = wb.generation_lens(model, PROMPT, max_new_tokens=5, progress=False)
    full = _full(model, g)
    n0 = model.to_tokens(PROMPT).shape[1]
    assert_close(g.prob[-1], R.reference_token_probs(model.hf, full, n0), what="embedded last row")
    ref = R.reference_steer(model.hf, model.tokenizer, PROMPT, None, 0, max_new_tokens=5)
    assert g.token_ids == ref["ids"][: len(g.token_ids)]
    assert (g.commit_layer >= 0).all() and (g.commit_layer <= model.n_layers - 1).all()


@pytest.mark.embedded
def test_embedded_commit_layers_agree_with_logit_lens():
    model = wb.load()
    g = wb.generation_lens(
        model, "The Eiffel Tower is located in the city of", max_new_tokens=6, progress=False
    )
    full = _full(model, g)
    text = model.tokenizer.decode(full[0], skip_special_tokens=True)
    # a generated EOS is not text; the lens's last position still predicts it
    shown = full[:, :-1] if g.options["stopped_at_eos"] else full
    assert torch.equal(model.to_tokens(text), shown), (text, g.tokens)
    lens = wb.logit_lens(model, text, progress=False)
    n0 = model.to_tokens(g.prompt).shape[1]
    _check_against_lens(g, lens.rank, lens.prob, lens.top_ids[..., 0], n0, model.n_layers)
