"""wb.tuned_lens and wb.logit_lens(lens=) (issue 15): the untrained lens is exactly the logit lens (fast and
traced paths, three families); the read-out equals an independent plain-torch computation (HF hidden states,
translator, final norm, unembedding); training lowers the training loss and beats the logit lens's KL to the
final layer on held-out text at every layer but the last; save/load; a lens for another model; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench as wb
from tests.conftest import assert_close, run_code, tiny
from workbench.engine import fast
from workbench.errors import WorkbenchError
from workbench.model import _get_path
from workbench.ops.tuned_lens import TunedLens, fingerprint

FAMILIES = ["gpt2", "llama", "gpt_neox"]
PROMPT = "The Eiffel Tower is located in the city of"
TRAIN = [
    "The cat sat on the mat and the dog sat on the log",
    "When Mary and John went to the store, John gave a drink to Mary",
    "The Colosseum is located in the city of Rome",
    "Hello world! This is a tiny tokenizer for tests.",
    "The dog sat on the log and the cat sat on the mat",
]
HELD_OUT = ["The Eiffel Tower is located in the city of Paris", "When John and Mary went to the store"]


def _random_lens(model, scale: float = 0.05, seed: int = 0) -> TunedLens:
    """A lens with non-trivial translators (the read-out check must see them do something)."""
    g = torch.Generator().manual_seed(seed)
    n, d = model.n_layers, model.d_model
    w = torch.randn(n - 1, d, d, generator=g) * scale / d**0.5
    b = torch.randn(n - 1, d, generator=g) * scale
    return TunedLens(w, b, fingerprint(model))


def _lenses(model, prompt, lens, **kw):
    """The lens through the fast path and through the traced path (the one remote models take)."""
    a = wb.logit_lens(model, prompt, lens=lens, progress=False, **kw)
    with fast.disabled():
        b = wb.logit_lens(model, prompt, lens=lens, progress=False, **kw)
    return a, b


def _same(a, b, exact: bool = True, what: str = ""):
    if exact:
        assert np.array_equal(a.top_ids, b.top_ids), what
        for name in ("top_probs", "entropy", "kl"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), (what, name)
    else:
        assert (a.top_ids[..., 0] == b.top_ids[..., 0]).mean() > 0.99, what
        for name in ("top_probs", "entropy", "kl"):
            assert_close(getattr(a, name), getattr(b, name), 1e-5, f"{what} {name}")


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_lens_is_the_logit_lens(family):
    model = tiny(family)
    ident = TunedLens.identity(model)
    assert ident.weight.abs().sum() == 0 and ident.bias.abs().sum() == 0
    for path in ("fast", "traced"):
        if path == "fast":
            plain = wb.logit_lens(model, PROMPT, tokens=[" Paris"], progress=False)
            tuned = wb.logit_lens(model, PROMPT, tokens=[" Paris"], lens=ident, progress=False)
        else:
            with fast.disabled():
                plain = wb.logit_lens(model, PROMPT, tokens=[" Paris"], progress=False)
                tuned = wb.logit_lens(model, PROMPT, tokens=[" Paris"], lens=ident, progress=False)
        _same(plain, tuned, what=f"{family} {path}")
        assert np.array_equal(plain.prob(" Paris"), tuned.prob(" Paris"))
        assert np.array_equal(plain.rank(" Rome"), tuned.rank(" Rome"))  # computed on request
        assert tuned.options["lens"]["kind"] == "tuned" and "lens" not in plain.options
    # lens="logit" / None are the logit lens
    _same(
        wb.logit_lens(model, PROMPT, lens="logit", progress=False),
        wb.logit_lens(model, PROMPT, progress=False),
        what="lens='logit'",
    )


def _plain_tuned(model, prompt, lens, k=5):
    """The tuned lens by hand: HF hidden states (hidden_states[l + 1] is block l's output; the last layer is
    the model's own logits), translator h + A h + b, final norm, unembedding, softmax statistics."""
    hf = model.hf
    ids = model.to_tokens(prompt)
    norm, unembed = _get_path(hf, model.arch.final_norm), _get_path(hf, model.arch.unembed)
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True)
        rows = []
        for layer in range(model.n_layers - 1):
            h = out.hidden_states[layer + 1][0]
            h = h + h @ lens.weight[layer].T + lens.bias[layer]
            rows.append(unembed(norm(h)))
        rows.append(out.logits[0])
        logp = torch.log_softmax(torch.stack(rows).double(), -1)  # [L, T, V]
    top = logp.topk(k, dim=-1)
    final = logp[-1]
    kl = (final.exp() * (final - logp)).sum(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return top.indices.numpy(), top.values.exp().numpy(), entropy.numpy(), kl.numpy()


@pytest.mark.parametrize("family", FAMILIES)
def test_read_out_equals_plain_torch(family):
    model = tiny(family)
    lens = _random_lens(model)
    ids, probs, entropy, kl = _plain_tuned(model, PROMPT, lens)
    plain = wb.logit_lens(model, PROMPT, progress=False)
    for res in _lenses(model, PROMPT, lens):
        assert_close(res.top_probs, probs, 1e-5, f"{family} top probs")
        assert_close(res.entropy, entropy, 1e-5, f"{family} entropy")
        assert_close(res.kl, kl, 1e-5, f"{family} kl")
        assert (res.top_ids[..., 0] == ids[..., 0]).mean() > 0.99
        # the translators changed the read-out below the last layer, and not the last layer
        assert np.abs(res.kl[:-1] - plain.kl[:-1]).max() > 1e-3
        assert_close(res.top_probs[-1], plain.top_probs[-1], 1e-6, "last layer")


def test_training_lowers_the_loss_and_beats_the_logit_lens_on_held_out_text():
    model = tiny("llama")
    tl = wb.tuned_lens(model, TRAIN, steps=60, tokens_per_step=32, lr=3e-3, progress=False)
    assert tl.train_loss.shape == (60,) and tl.layer_loss.shape == (60, model.n_layers)
    assert tl.train_loss[-5:].mean() < 0.7 * tl.train_loss[0], tl.train_loss
    assert len(tl.layers) == model.n_layers and not tl.layers[-1].trained and tl.layers[0].trained
    assert "TunedLens" in repr(tl) and "3 layers" in repr(tl)
    tuned = np.mean([wb.logit_lens(model, t, lens=tl, progress=False).kl.mean(1) for t in HELD_OUT], 0)
    logit = np.mean([wb.logit_lens(model, t, progress=False).kl.mean(1) for t in HELD_OUT], 0)
    assert (tuned[:-1] < logit[:-1]).all(), (tuned, logit)
    assert abs(tuned[-1]) < 1e-5 and abs(logit[-1]) < 1e-5


def test_progress_and_cancel():
    import threading

    model = tiny("gpt2")
    seen = []
    wb.tuned_lens(model, TRAIN, steps=3, tokens_per_step=16, progress=lambda f, m: seen.append((f, m)))
    assert seen and seen[-1][0] == 1.0 and any("step 3/3" in m for _, m in seen)
    stop = threading.Event()
    stop.set()
    with pytest.raises(wb.CancelledError):
        wb.tuned_lens(model, TRAIN, steps=3, cancel=stop, progress=False)


def test_default_texts_are_the_models_generations():
    model = tiny("gpt2")
    tl = wb.tuned_lens(model, steps=2, tokens_per_step=16, max_new_tokens=4, progress=False)
    assert tl.options["texts"] == "generated" and tl.options["tokens"] > 12 * 4


def test_save_load_round_trip(tmp_path):
    model = tiny("llama")
    tl = wb.tuned_lens(model, TRAIN, steps=3, tokens_per_step=16, progress=False)
    path = tl.save(tmp_path / "lens.pt")
    assert tl.path == path
    for loaded in (wb.TunedLens.load(path), wb.tuned_lens.load(path, model)):
        assert torch.equal(loaded.weight, tl.weight) and torch.equal(loaded.bias, tl.bias)
        assert np.array_equal(loaded.train_loss, tl.train_loss) and loaded.fingerprint == tl.fingerprint
        _same(
            wb.logit_lens(model, PROMPT, lens=tl, progress=False),
            wb.logit_lens(model, PROMPT, lens=loaded, progress=False),
            what="loaded",
        )
    with pytest.raises(WorkbenchError, match="No tuned lens file"):
        wb.TunedLens.load(tmp_path / "missing.pt")
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(WorkbenchError, match="not a tuned lens file"):
        wb.TunedLens.load(tmp_path / "other.pt")


def test_a_lens_for_another_model_is_refused(tmp_path):
    llama = tiny("llama")
    tl = TunedLens.identity(llama)
    with pytest.raises(WorkbenchError, match="wb.tuned_lens"):
        wb.logit_lens(tiny("gpt2"), PROMPT, lens=tl, progress=False)
    # same family and shapes, other weights (another seed): the read-out's fingerprint differs
    other = wb.testing.tiny_model("llama", seed=1)
    with pytest.raises(WorkbenchError, match="final norm and unembedding"):
        wb.logit_lens(other, PROMPT, lens=tl, progress=False)
    path = tl.save(tmp_path / "lens.pt")
    with pytest.raises(WorkbenchError, match="Train a tuned lens for this model"):
        wb.TunedLens.load(path, other)


def test_bad_input():
    model = tiny("gpt2")
    for texts in ([], [""], "   "):
        with pytest.raises(WorkbenchError, match="texts= is empty"):
            wb.tuned_lens(model, texts, progress=False)
    with pytest.raises(WorkbenchError, match="takes strings"):
        wb.tuned_lens(model, ["ok", 3], progress=False)
    for steps in (0, -1):
        with pytest.raises(WorkbenchError, match="steps"):
            wb.tuned_lens(model, TRAIN, steps=steps, progress=False)
    with pytest.raises(WorkbenchError, match="lr="):
        wb.tuned_lens(model, TRAIN, lr=-1, progress=False)
    with pytest.raises(WorkbenchError, match="lens= takes a wb.TunedLens"):
        wb.logit_lens(model, PROMPT, lens="tuned", progress=False)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_to_code_loads_the_translators(family, tmp_path):
    model = tiny(family)
    lens = _random_lens(model, scale=0.2)
    res = wb.logit_lens(model, PROMPT, lens=lens, progress=False)
    code = res.to_code()
    assert "torch.load(" in code and "translate(l, " in code
    ns = run_code(code)
    ids, probs = ns["result"]
    assert (np.asarray(ids)[..., 0] == res.top_ids[..., 0]).mean() > 0.99
    assert_close(probs, res.top_probs, 1e-5, "to_code top probs")
    # a saved lens: the code loads its own file
    path = lens.save(tmp_path / "saved.pt")
    assert repr(path) in wb.logit_lens(model, PROMPT, lens=lens, progress=False).to_code()
    # the lens of an edited run, with the tuned read-out
    cell = wb.Cell("resid_pre", 1, position=2)
    res = wb.logit_lens(model, PROMPT, edits=[wb.Edit(cell, "zero")], lens=lens, progress=False)
    ns = run_code(res.to_code())
    assert_close(ns["result"][1], res.top_probs, 1e-5, "to_code with edits")


def test_over_a_dataset():
    model = tiny("llama")
    ds = wb.Dataset(clean=[PROMPT, "The Colosseum is located in the city of"], target=" Paris")
    lens = _random_lens(model, scale=0.2)
    plain = wb.logit_lens(model, ds, align="right", progress=False)
    ident = wb.logit_lens(model, ds, lens=TunedLens.identity(model), align="right", progress=False)
    assert np.array_equal(plain.values, ident.values)
    res = wb.logit_lens(model, ds, lens=lens, align="right", progress=False)
    with fast.disabled():
        traced = wb.logit_lens(model, ds, lens=lens, align="right", progress=False)
    assert_close(res.values, traced.values, 1e-6, "dataset fast vs traced")
    one = wb.logit_lens(model, PROMPT, lens=lens, progress=False).prob(" Paris")[:, -1]
    assert_close(res.per_example[0][:, -1], one, 1e-6, "dataset vs one prompt")
    assert np.abs(res.values - plain.values).max() > 1e-4
    assert res.lens(0).options["lens"]["kind"] == "tuned"
    ns = run_code(res.to_code())
    assert_close(ns["result"], res.values, 1e-5, "dataset to_code")


@pytest.mark.embedded
@pytest.mark.slow
def test_embedded_tuned_lens_beats_the_logit_lens_on_held_out_text():
    """Defaults on SmolLM2-135M (its own greedy continuations of GENERIC_PROMPTS, 40 steps x 64 tokens).
    Measured by the same computation outside pytest (mean KL over 3 held-out sentences, nats): logit lens
    14.2 / 20.4 / 7.9 / 1.82 at layers 0 / 10 / 24 / 28, tuned 7.8 / 6.8 / 2.6 / 1.13; 29 of 29 layers lower.
    Training took ~5 min wall on 2 heavily shared cores (load ~6)."""
    model = wb.load()
    held = [
        "The Eiffel Tower is located in the city of Paris, which is the capital of France and home to many museums.",
        "When Mary and John went to the store, John gave a drink to Mary because she was thirsty after the long walk.",
        "Photosynthesis is the process by which green plants use sunlight to make food from carbon dioxide and water.",
    ]
    tl = wb.tuned_lens(model, progress=False)
    tuned = np.mean([wb.logit_lens(model, t, lens=tl, progress=False).kl.mean(1) for t in held], 0)
    logit = np.mean([wb.logit_lens(model, t, progress=False).kl.mean(1) for t in held], 0)
    assert (tuned[:-1] < logit[:-1]).all(), (tuned, logit)
