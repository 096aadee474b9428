"""wb.future_lens (Future Lens, Pal et al. 2023) against an independent plain-hook reference, its identity
with a patchscope for n_future=1, the accuracy and bigram-baseline definitions by hand, the learned soft
prompt (training lowers its loss; plain-hook reference; save/load), to_code, views and bad input (issue 15).

The reference decodes with full forwards and no KV cache: each forward of the context plus the tokens decoded
so far gets a forward hook overwriting the block output at the context's last position (for a learned prompt
also the embedding output at the soft positions). Without a cache this is the same computation as patching
the prompt pass only and reading its keys and values afterwards, but shares nothing with nnsight's generate.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench as wb
from tests import reference as R
from tests.conftest import CLEAN, assert_close, assert_same_topk, run_code, tiny
from workbench.errors import WorkbenchError
from workbench.ops.future_lens import DEFAULT_CONTEXT, FutureLensPrompt, prompt_loss

FAMILIES = ["gpt2", "llama", "gpt_neox"]
SHORT = "The Eiffel Tower is"


def _eos(hf, tok) -> list[int]:
    eos = getattr(hf.generation_config, "eos_token_id", None)
    eos = tok.eos_token_id if eos is None else eos
    eos = eos if isinstance(eos, list) else [eos]
    vocab = hf.get_output_embeddings().weight.shape[0]
    return [e for e in eos if e is not None and 0 <= e < vocab]


def _greedy(hf, tok, ids: torch.Tensor, n: int, hooks=()) -> tuple[list[int], list[torch.Tensor]]:
    """n greedy tokens (EOS excluded) after ids [1, T] by full forwards (no cache); hooks: (module, fn)
    forward hooks active on every forward. Returns the tokens and each step's softmax."""
    seq, out, dists = ids, [], []
    eos = _eos(hf, tok)
    handles = [m.register_forward_hook(fn) for m, fn in hooks]
    try:
        for _ in range(n):
            with torch.no_grad():
                logits = hf(input_ids=seq, use_cache=False).logits[0, -1].float()
            dists.append(torch.softmax(logits, -1))
            masked = logits.clone()
            masked[eos] = -float("inf")
            nxt = int(masked.argmax())
            out.append(nxt)
            seq = torch.cat([seq, torch.tensor([[nxt]])], 1)
    finally:
        for h in handles:
            h.remove()
    return out, dists


def _overwrite(position: int, state: torch.Tensor):
    def fn(_mod, _args, out):
        h = R._first(out).clone()
        h[:, position] = state
        return R._replace_first(out, h)

    return fn


def _embed_overwrite(vectors: torch.Tensor):
    def fn(_mod, _args, out):
        h = out.clone()
        h[:, : vectors.shape[0]] = vectors.to(h.dtype)
        return h

    return fn


def reference_future_lens(hf, tok, prompt, context=DEFAULT_CONTEXT, n_future=3, layers=None, positions=None,
                          top_k=5, soft=None, placeholder=None):  # fmt: skip
    """Arrays: top_ids/top_probs [L, T, N, k], predicted [L, T, N], own [T, N], bigram [T, N]."""
    ids = R.tokens(tok, prompt)
    ctx = torch.tensor([placeholder]) if soft is not None else R.tokens(tok, context)
    L, T = R.n_layers(hf), ids.shape[1]
    layers = list(range(L)) if layers is None else list(layers)
    positions = list(range(T)) if positions is None else sorted(p % T for p in positions)
    states = R.capture(hf, ids, "resid_post", layers)
    shape = (len(layers), len(positions), n_future)
    top_ids = np.zeros((*shape, top_k), np.int64)
    top_probs = np.zeros((*shape, top_k), np.float32)
    predicted = np.zeros(shape, np.int64)
    embed = R._get(hf, R.family(hf).embed)
    for i, layer in enumerate(layers):
        for j, t in enumerate(positions):
            hooks = [(R.blocks(hf)[layer], _overwrite(ctx.shape[1] - 1, states[layer][t]))]
            if soft is not None:
                hooks.insert(0, (embed, _embed_overwrite(soft)))
            toks, dists = _greedy(hf, tok, ctx, n_future, hooks)
            predicted[i, j] = toks
            for s, d in enumerate(dists):
                top = d.topk(top_k)
                top_ids[i, j, s], top_probs[i, j, s] = top.indices.numpy(), top.values.numpy()
    own = np.array([_greedy(hf, tok, ids[:, : t + 1], n_future)[0] for t in positions])
    bigram = np.array([_greedy(hf, tok, ids[:, t : t + 1], n_future)[0] for t in positions])
    return dict(top_ids=top_ids, top_probs=top_probs, predicted=predicted, own=own, bigram=bigram)


def _same(fl, ref, what):
    assert fl.top_ids.dtype == np.int32 and fl.top_ids.shape == ref["top_ids"].shape
    a, b = fl.top_ids.reshape(-1, fl.top_ids.shape[-1]), ref["top_ids"].reshape(-1, fl.top_ids.shape[-1])
    pa, pb = fl.top_probs.reshape(a.shape), ref["top_probs"].reshape(a.shape)
    assert_same_topk(a, pa, b, pb, what=what)
    np.testing.assert_array_equal(fl.predicted_ids, ref["predicted"], err_msg=what)
    np.testing.assert_array_equal(fl.own_ids, ref["own"], err_msg=what)
    np.testing.assert_array_equal(fl.bigram_ids, ref["bigram"], err_msg=what)


@pytest.mark.parametrize("family", FAMILIES)
def test_fixed_equals_plain_hooks(family):
    model = tiny(family)
    fl = wb.future_lens(model, CLEAN, n_future=3, progress=False)
    ref = reference_future_lens(model.hf, model.tokenizer, CLEAN)
    L, T = model.n_layers, model.to_tokens(CLEAN).shape[1]
    assert (
        fl.top_ids.shape == (L, T, 3, 5) and fl.accuracy.shape == (L, 3) and fl.bigram_baseline.shape == (3,)
    )
    _same(fl, ref, f"{family} future lens")
    assert fl.accuracy.dtype == np.float32
    assert_close(fl.accuracy, (ref["predicted"] == ref["own"][None]).mean(1), what="accuracy")
    assert_close(fl.bigram_baseline, (ref["bigram"] == ref["own"]).mean(0), what="bigram baseline")
    assert fl.predicted[1][2] == model.str_tokens(fl.predicted_ids[1, 2].tolist())
    assert fl.top_tokens[0][1][2] == model.str_tokens(fl.top_ids[0, 1, 2].tolist())
    assert fl.tokens == model.to_str_tokens(CLEAN)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_other_context_layers_positions_vs_plain_hooks(family):
    model = tiny(family)
    kw = dict(layers=[0, 2], positions=[1, -1], top_k=3, n_future=2)
    fl = wb.future_lens(model, CLEAN, context="one two three", progress=False, **kw)
    ref = reference_future_lens(model.hf, model.tokenizer, CLEAN, "one two three", **kw)
    assert fl.layer_ids == [0, 2] and fl.positions == [1, 8]
    _same(fl, ref, f"{family} future lens, other context")


@pytest.mark.parametrize("family", FAMILIES)
def test_n_future_1_is_the_patchscope_with_the_context_as_target(family):
    model = tiny(family)
    fl = wb.future_lens(model, CLEAN, n_future=1, context="one two three", progress=False)
    ps = wb.patchscope(model, CLEAN, "one two three", target_position=-1, progress=False)
    assert_same_topk(
        fl.top_ids[:, :, 0], fl.top_probs[:, :, 0], ps.top_ids, ps.top_probs, what="vs patchscope"
    )


def test_accuracy_by_hand():
    """gpt2 tiny, 4-token prompt, n_future=2: the own continuation of prompt[:t+1] computed step by step
    with plain forwards (for the last position it runs past the prompt), then the fractions counted."""
    model = tiny("gpt2")
    hf, tok = model.hf, model.tokenizer
    fl = wb.future_lens(model, SHORT, n_future=2, layers=[1], progress=False)
    ids = R.tokens(tok, SHORT)
    T = ids.shape[1]
    full = R.run_logits(hf, ids)[0]
    for t in range(T):
        first = int(full[t].argmax())  # the model's next token after prompt[:t+1], from one full forward
        seq = torch.cat([ids[:, : t + 1], torch.tensor([[first]])], 1)
        second = int(R.run_logits(hf, seq)[0, -1].argmax())
        assert fl.own_ids[t].tolist() == [first, second], t
        alone = R.run_logits(hf, ids[:, t : t + 1])[0, -1]
        b1 = int(alone.argmax())
        b2 = int(R.run_logits(hf, torch.tensor([[int(ids[0, t]), b1]]))[0, -1].argmax())
        assert fl.bigram_ids[t].tolist() == [b1, b2], t
    hits = [[int(fl.predicted_ids[0, t, s] == fl.own_ids[t, s]) for s in range(2)] for t in range(T)]
    assert fl.accuracy[0].tolist() == pytest.approx([sum(h[s] for h in hits) / T for s in range(2)])
    base = [[int(fl.bigram_ids[t, s] == fl.own_ids[t, s]) for s in range(2)] for t in range(T)]
    assert fl.bigram_baseline.tolist() == pytest.approx([sum(b[s] for b in base) / T for s in range(2)])
    # the last layer's state in its own layer at the context's end reproduces the next token: t+1 is exact
    last = wb.future_lens(model, SHORT, n_future=2, layers=[model.n_layers - 1], progress=False)
    assert last.accuracy[0, 0] == 1.0


def test_learned_training_lowers_its_loss_and_matches_plain_hooks():
    model = tiny("llama")
    texts = [
        "The cat sat on the mat and the dog sat on the log",
        "The Eiffel Tower is located in the city of Paris",
    ]
    start = wb.train_future_lens(model, texts, n_future=2, n_soft=4, steps=1, lr=1e-9, progress=False)
    trained = wb.train_future_lens(model, texts, n_future=2, n_soft=4, steps=40, batch_size=8, lr=0.05,
                                   progress=False)  # fmt: skip
    before, after = prompt_loss(model, start, texts), prompt_loss(model, trained, texts)
    assert after < before - 0.05, (before, after)
    assert len(trained.losses) == 40 and trained.vectors.shape == (4, model.d_model)
    fl = wb.future_lens(model, CLEAN, n_future=2, method="learned", context=trained, progress=False)
    ref = reference_future_lens(model.hf, model.tokenizer, CLEAN, n_future=2, soft=trained.vectors,
                                placeholder=trained.placeholder_ids)  # fmt: skip
    _same(fl, ref, "learned future lens")
    assert fl.method == "learned" and "learned soft prompt" in repr(fl)


def test_learned_default_trains_on_own_generations_and_save_load(tmp_path):
    model = tiny("gpt2")
    p = wb.train_future_lens(model, n_future=2, steps=3, batch_size=4, gen_tokens=8, progress=False)
    assert p.options["texts"] is None and len(p.losses) == 3 and "FutureLensPrompt" in repr(p)
    path = p.save(tmp_path / "fl.pt")
    q = FutureLensPrompt.load(path)
    assert torch.equal(q.vectors, p.vectors) and q.placeholder_ids == p.placeholder_ids
    a = wb.future_lens(model, SHORT, n_future=2, method="learned", context=p, progress=False)
    b = wb.future_lens(model, SHORT, n_future=2, method="learned", context=q, progress=False)
    np.testing.assert_array_equal(a.top_ids, b.top_ids)
    with pytest.raises(WorkbenchError, match="train_future_lens"):
        wb.future_lens(tiny("llama"), SHORT, method="learned", context=p, progress=False)


def test_to_code_reproduces():
    model = tiny("gpt2")
    fl = wb.future_lens(model, SHORT, n_future=2, layers=[0, 2], positions=[0, -1], top_k=3, progress=False)
    ids, probs, acc = run_code(fl.to_code())["result"]
    assert_same_topk(ids.reshape(-1, 3), probs.reshape(-1, 3), fl.top_ids.reshape(-1, 3),
                     fl.top_probs.reshape(-1, 3), what="to_code")  # fmt: skip
    assert_close(acc, fl.accuracy, what="to_code accuracy")
    model = tiny("gpt_neox")
    p = wb.train_future_lens(model, [CLEAN], n_future=2, n_soft=3, steps=2, progress=False)
    fl = wb.future_lens(model, SHORT, n_future=2, method="learned", context=p, layers=[1], progress=False)
    ids, probs, acc = run_code(fl.to_code())["result"]
    assert_same_topk(ids.reshape(-1, 5), probs.reshape(-1, 5), fl.top_ids.reshape(-1, 5),
                     fl.top_probs.reshape(-1, 5), what="to_code learned")  # fmt: skip
    assert_close(acc, fl.accuracy, what="to_code learned accuracy")


def test_views_and_repr():
    model = tiny("gpt2")
    fl = wb.future_lens(model, CLEAN, layers=[1, 2], positions=[2, 3], progress=False)
    text = repr(fl)
    assert "FutureLensResult [2 layers x 2 positions] x n_future=3" in text and "bigram baseline" in text
    fig = fl.plot()
    assert list(fig.layout.yaxis.ticktext) == ["1", "2"]
    assert fl.plot(what="accuracy").data and fl.plot(step=3).data
    frame = fl.to_frame()
    assert len(frame) == 2 * 2 * 3 and sorted(set(frame["layer"])) == [1, 2]
    assert (frame["correct"] == (frame["predicted_id"] == frame["own_id"])).all()
    assert len(fl.to_frame(what="topk")) == 2 * 2 * 3 * 5
    acc = fl.to_frame(what="accuracy")
    assert len(acc) == 2 * 3 and acc["accuracy"].tolist() == pytest.approx(fl.accuracy.reshape(-1).tolist())


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (dict(n_future=0), "n_future=1 or more"),
        (dict(n_future=-2), "n_future=1 or more"),
        (dict(n_future="3"), "n_future"),
        (dict(context=""), "non-empty"),
        (dict(context="   "), "non-empty"),
        (dict(context=7), "non-empty"),
        (dict(top_k=0), "top_k"),
        (dict(top_k=10**6), "top_k"),
        (dict(method="tuned"), "method="),
        (dict(method="learned", context="a prompt"), "FutureLensPrompt"),
        (dict(layers=[]), "empty"),
        (dict(layers=[99]), "layer"),
        (dict(positions=[40]), "position"),
    ],
)
def test_bad_input(kwargs, words):
    model = tiny("gpt2")
    with pytest.raises(WorkbenchError, match=words):
        wb.future_lens(model, SHORT, progress=False, **kwargs)


def test_bad_training_input():
    model = tiny("gpt2")
    with pytest.raises(WorkbenchError, match="n_future=1 or more"):
        wb.train_future_lens(model, n_future=0, progress=False)
    with pytest.raises(WorkbenchError, match="too short"):
        wb.train_future_lens(model, ["The"], n_future=3, progress=False)
    with pytest.raises(WorkbenchError, match="list of strings"):
        wb.train_future_lens(model, "just one string", progress=False)
    with pytest.raises(WorkbenchError, match="learning rate"):
        wb.train_future_lens(model, [CLEAN], lr=0, progress=False)


@pytest.mark.embedded
def test_embedded_model_vs_plain_hooks():
    model = wb.load()
    kw = dict(layers=[5, 15], positions=[2, -1], top_k=5, n_future=3)
    fl = wb.future_lens(model, CLEAN, progress=False, **kw)
    ref = reference_future_lens(model.hf, model.tokenizer, CLEAN, **kw)
    _same(fl, ref, "embedded future lens")
