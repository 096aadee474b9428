"""Function vectors (issue 16): wb.Task, wb.head_effects, wb.function_vector, wb.evaluate_vector against an
independent plain-hook computation of the paper's definitions (tests/reference.py: one forward per (head,
prompt)), on three tiny families and the embedded model; the one-request traced body (what a remote model
sends) against the same reference; the traced fallback of the replay; bad input; code, figures, frames,
pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.engine.vectors import add_trace, fv_trace
from workbench.errors import TokenizationError, WorkbenchError

from . import reference as ref
from .conftest import ATOL, assert_close, run_code, tiny

FAMILIES = ("gpt2", "llama", "gpt_neox")
# Words that are single tokens (with a leading space) in the tiny tokenizer.
PAIRS = [
    ("cat", "dog"),
    ("dog", "cat"),
    ("mat", "log"),
    ("log", "mat"),
    ("Paris", "Rome"),
    ("Rome", "Paris"),
    ("Mary", "John"),
    ("John", "Mary"),
]
N_SHOTS, N_PROMPTS = 3, 3


def tiny_task() -> wb.Task:
    return wb.Task(PAIRS, template="{x} -> {y}\n", name="tiny")


def _reference(model, task, n_shots=N_SHOTS, n_prompts=N_PROMPTS, seed=0):
    ds = task.dataset(n_shots, n_prompts, seed=seed)
    return ds, ref.reference_head_effects(model.hf, model.tokenizer, ds.clean, ds.corrupt, ds.target)


def _check_effects(got, want, what: str) -> None:
    assert_close(got.values, want["values"], ATOL, f"{what} values")
    assert_close(got.per_example, want["per_example"], ATOL, f"{what} per_example")
    assert_close(got.clean, want["clean"], ATOL, f"{what} clean")
    assert_close(got.corrupt, want["corrupt"], ATOL, f"{what} corrupt")
    assert_close(got.head_means, want["means"], ATOL, f"{what} head means", rtol=1e-5)


# ------------------------------------------------------------------------------------------- the task
def test_task_prompts_are_the_template_filled_in():
    task = wb.Task([("hot", "cold"), ("big", "small"), ("up", "down")])
    assert task.query("hot") == "Q: hot\nA:" and task.answer("cold") == " cold"
    assert task.demonstration("hot", "cold") == "Q: hot\nA: cold\n\n"
    assert task.prompt([("hot", "cold")], "big") == "Q: hot\nA: cold\n\nQ: big\nA:"
    custom = wb.Task([("a", "b")], template="in {x} out={y};")
    assert custom.query("a") == "in a out=" and custom.answer("b") == "b"


def test_task_datasets_are_seeded_and_shuffle_only_labels():
    task = wb.datasets.task("antonyms")
    ds = task.dataset(5, 20, seed=3)
    assert ds.clean == task.dataset(5, 20, seed=3).clean and ds.corrupt == task.dataset(5, 20, seed=3).corrupt
    assert ds.clean != task.dataset(5, 20, seed=4).clean
    assert task.dataset(5, 8, seed=3).clean == ds.clean[:8]  # more prompts extend fewer
    lookup = dict(task.pairs)
    moved = 0
    for (demos, q, _perm), clean, corrupt, target in zip(
        task.draws(5, 20, 3), ds.clean, ds.corrupt, ds.target, strict=True
    ):
        assert len(set(demos + [q])) == 6  # distinct pairs, the query not among the demonstrations
        x, y = task.pairs[q]
        assert clean.endswith(task.query(x)) and corrupt.endswith(task.query(x)) and target == " " + y
        blocks_c = clean.split("\n\n")[:-1]
        blocks_k = corrupt.split("\n\n")[:-1]
        inputs = [b.split("\n")[0][3:] for b in blocks_c]
        assert inputs == [b.split("\n")[0][3:] for b in blocks_k]  # the inputs stay
        labels_c = [b.split("\n")[1][3:] for b in blocks_c]
        labels_k = [b.split("\n")[1][3:] for b in blocks_k]
        assert all(lookup[i] == label for i, label in zip(inputs, labels_c, strict=True))
        assert sorted(labels_c) == sorted(labels_k)  # the labels are permuted among the demonstrations
        moved += labels_c != labels_k
    assert moved >= 15
    zero = task.zero_shot()
    assert len(zero) == len(task) and zero[0].clean == "Q: hot\nA:" and zero[0].target == " cold"
    assert len(task.zero_shot(10, seed=1)) == 10


def test_task_split_holds_out_pairs():
    task = wb.datasets.task("past_tense")
    train, test = task.split(0.3, seed=0)
    assert len(train) + len(test) == len(task) and abs(len(test) - round(0.3 * len(task))) <= 0
    assert not set(train.pairs) & set(test.pairs)
    assert task.split(0.3, seed=0)[1].pairs == test.pairs != task.split(0.3, seed=1)[1].pairs
    assert len(task.split(10)[1]) == 10


def test_task_bad_input():
    with pytest.raises(WorkbenchError, match=r"\{x\}.*\{y\}"):
        wb.Task([("a", "b")], template="Q: {x}\nA:")
    with pytest.raises(WorkbenchError, match="whitespace between"):
        wb.Task([("a", "b")], template="{x} {y}")
    with pytest.raises(WorkbenchError, match="two strings"):
        wb.Task([("a", 3)])
    with pytest.raises(WorkbenchError, match="each pair is"):
        wb.Task(["ab"])
    with pytest.raises(WorkbenchError, match="empty"):
        wb.Task([])
    with pytest.raises(WorkbenchError, match="list of"):
        wb.Task("hot cold")
    with pytest.raises(WorkbenchError, match="knows 'antonyms'"):
        wb.datasets.task("antonym")
    task = wb.Task(PAIRS[:4])
    with pytest.raises(WorkbenchError, match=r"4 pairs, but n_shots=4 needs at least 5.*n_shots <= 3"):
        task.dataset(4, 2)


def test_answers_that_are_not_one_token_are_named():
    model = tiny("llama")
    task = wb.Task(PAIRS + [("cat", "xylophone"), ("dog", "Quixotic")], template="{x} -> {y}\n", name="bad")
    with pytest.raises(
        TokenizationError, match=r"2 of 10 answers.*\('cat', 'xylophone'\).*\('dog', 'Quixotic'\)"
    ):
        task.answer_ids(model)
    with pytest.raises(TokenizationError, match="xylophone"):
        wb.head_effects(model, task, n_shots=3, n_prompts=2, progress=False)
    with pytest.raises(TokenizationError, match="xylophone"):
        wb.evaluate_vector(model, task, torch.zeros(model.d_model), progress=False)
    assert len(task.single_token(model)) == len(PAIRS)


# ------------------------------------------------------------------------------------------- head effects
@pytest.mark.parametrize("family", FAMILIES)
def test_head_effects_equal_the_reference(family):
    model = tiny(family)
    task = tiny_task()
    ds, want = _reference(model, task)
    got = wb.head_effects(model, task, n_shots=N_SHOTS, n_prompts=N_PROMPTS, progress=False)
    assert got.values.shape == (model.n_layers, model.n_heads) and got.per_example.shape[0] == N_PROMPTS
    assert got.dataset.clean == ds.clean
    _check_effects(got, want, family)
    assert np.abs(want["per_example"]).max() > 1e-6  # the patches act
    assert_close(got.sem, want["per_example"].std(0, ddof=1) / np.sqrt(N_PROMPTS), ATOL, "sem")
    assert_close(got.patched, want["per_example"] + want["corrupt"][:, None, None], ATOL, "patched")
    # each head's mean output, projected and decoded (the view's "click a head")
    for layer, head in [(0, 0), (model.n_layers - 1, model.n_heads - 1)]:
        out = ref.reference_head_output(model.hf, layer, head, torch.from_numpy(want["means"][layer, head]))
        ids, probs = ref.reference_decode(model.hf, out, 10)
        assert_close(got.head_top_probs[layer, head], probs, ATOL, f"{family} head decode")
        assert got.decode_head(layer, head, 3)[0][0] == model.tokenizer.decode([int(ids[0])])


@pytest.mark.parametrize("family", FAMILIES)
def test_one_request_body_equals_the_reference(family):
    """What a remote model sends (`fv_trace` with every patched row in one forward), run locally."""
    model = tiny(family)
    task = tiny_task()
    ds, want = _reference(model, task)
    clean = [model.to_tokens(p) for p in ds.clean]
    corrupt = [model.to_tokens(p) for p in ds.corrupt]
    targets = [model.token_id(t) for t in ds.target]
    out = fv_trace(model, clean, corrupt=corrupt, targets=targets, select=3)
    per = (out["patched"] - out["corrupt_p"][:, None, None]).numpy()
    assert_close(per, want["per_example"], ATOL, f"{family} one-request effects")
    assert_close(out["clean_p"], want["clean"], ATOL, "clean p")
    assert_close(out["z_sum"].numpy() / len(clean), want["means"], ATOL, "means", rtol=1e-5)
    top = np.argsort(-want["values"].reshape(-1), kind="stable")[:3]
    assert out["chosen"].tolist() == top.tolist()
    heads = [(int(i) // model.n_heads, int(i) % model.n_heads) for i in top]
    vec = ref.reference_function_vector(model.hf, torch.from_numpy(want["means"]), heads)
    assert_close(out["vector"], vec, ATOL, "one-request vector", rtol=1e-5)


def test_traced_fallback_equals_the_reference():
    """A user hook on the model turns the replay off: the general traced path gives the same numbers."""
    model = tiny("llama")
    task = tiny_task()
    _, want = _reference(model, task)
    handle = model.hf.model.layers[0].mlp.register_forward_hook(lambda *a: None)
    try:
        got = wb.head_effects(model, task, n_shots=N_SHOTS, n_prompts=N_PROMPTS, progress=False)
    finally:
        handle.remove()
    _check_effects(got, want, "traced fallback")


def test_means_in_chunks_equal_one_forward(monkeypatch):
    model = tiny("gpt2")
    task = tiny_task()
    one = wb.head_effects(model, task, n_shots=N_SHOTS, n_prompts=4, progress=False)
    import workbench.ops.vectors as vectors

    monkeypatch.setattr(vectors, "rows_per_chunk", lambda *a, **k: 1)
    chunked = wb.head_effects(model, task, n_shots=N_SHOTS, n_prompts=4, progress=False)
    assert_close(chunked.head_means, one.head_means, ATOL, "chunked means", rtol=1e-5)
    assert_close(chunked.values, one.values, ATOL, "chunked effects")
    assert_close(chunked.head_top_probs, one.head_top_probs, ATOL, "chunked decode")


# ------------------------------------------------------------------------------------------- the vector
@pytest.mark.parametrize("family", FAMILIES)
def test_function_vector_is_the_sum_of_the_heads_outputs(family):
    model = tiny(family)
    task = tiny_task()
    _, want = _reference(model, task)
    fv = wb.function_vector(model, task, heads=4, n_shots=N_SHOTS, n_prompts=N_PROMPTS, progress=False)
    top = np.argsort(-want["values"].reshape(-1), kind="stable")[:4]
    heads = [(int(i) // model.n_heads, int(i) % model.n_heads) for i in top]
    assert fv.heads == heads
    means = torch.from_numpy(want["means"])
    vec = ref.reference_function_vector(model.hf, means, heads)
    assert fv.vector.shape == (model.d_model,) and fv.vector.dtype == np.float32
    assert_close(fv.vector, vec, ATOL, f"{family} vector", rtol=1e-5)
    for i, (layer, head) in enumerate(heads):
        out = ref.reference_head_output(model.hf, layer, head, means[layer, head])
        assert_close(fv.head_outputs[i], out, ATOL, f"{family} head output {layer},{head}", rtol=1e-5)
    assert_close(fv.head_outputs.sum(0), fv.vector, ATOL, "outputs sum to the vector")
    assert_close(fv.scores, [want["values"][layer, head] for layer, head in heads], ATOL, "scores")
    ids, probs = ref.reference_decode(model.hf, vec, 10)
    got = fv.decode(10)
    assert_close([p for _, p in got], probs, ATOL, "decode")
    assert got[0][0] == model.tokenizer.decode([int(ids[0])])
    # reusing the effects gives the same vector; given heads need no effects
    cie = wb.head_effects(model, task, n_shots=N_SHOTS, n_prompts=N_PROMPTS, progress=False)
    again = wb.function_vector(model, cie, heads=4, progress=False)
    assert again.heads == heads and again.effects is cie
    assert_close(again.vector, fv.vector, ATOL, "from effects")
    given = wb.function_vector(
        model, task, heads=heads[:2], n_shots=N_SHOTS, n_prompts=N_PROMPTS, progress=False
    )
    assert given.effects is None and np.isnan(given.scores).all()
    assert_close(
        given.vector,
        ref.reference_function_vector(model.hf, means, heads[:2]),
        ATOL,
        "given heads",
        rtol=1e-5,
    )


def test_function_vector_with_a_bias_adds_no_bias():
    """GPT-2's output projection has a bias; a head's output is its weight slice alone (summing o_proj(x) per
    head, as the paper's code does for GPT-2, would add the bias once per head)."""
    model = tiny("gpt2")
    bias = model.hf.transformer.h[0].attn.c_proj.bias
    with torch.no_grad():
        saved = bias.clone()
        bias.fill_(5.0)
    try:
        fv = wb.function_vector(
            model, tiny_task(), heads=[(0, 0), (0, 1)], n_shots=N_SHOTS, n_prompts=2, progress=False
        )
        means = torch.from_numpy(
            ref.reference_head_means(model.hf, model.tokenizer, tiny_task().dataset(N_SHOTS, 2).clean).numpy()
        )
        want = ref.reference_function_vector(model.hf, means, [(0, 0), (0, 1)])
        assert_close(fv.vector, want, ATOL, "no bias", rtol=1e-5)
    finally:
        with torch.no_grad():
            bias.copy_(saved)


# ------------------------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize("family", FAMILIES)
def test_evaluate_vector_equals_the_reference(family):
    model = tiny(family)
    task = tiny_task()
    gen = torch.Generator().manual_seed(1)
    vec = torch.randn(model.d_model, generator=gen) * 3
    zero = task.zero_shot()
    want = ref.reference_evaluate_vector(
        model.hf, model.tokenizer, zero.clean, zero.target, vec, range(model.n_layers)
    )
    got = wb.evaluate_vector(model, task, vec, progress=False)
    assert got.layers == list(range(model.n_layers)) and got.probs.shape == (len(task), model.n_layers)
    assert_close(got.probs, want["probs"], ATOL, f"{family} probs")
    assert (got.top_ids == want["top"]).all()
    assert_close(got.baseline_probs, want["base_p"], ATOL, "baseline probs")
    assert (got.baseline_top_ids == want["base_top"]).all()
    t = np.array([model.token_id(a) for a in zero.target])
    assert_close(got.accuracy, (want["top"] == t[:, None]).mean(0), 1e-6, "accuracy")
    assert got.baseline == float((want["base_top"] == t).mean())
    assert np.abs(want["probs"] - want["base_p"][:, None]).max() > 1e-4  # the vector acts
    # one layer, a scale, a subset of prompts
    one = wb.evaluate_vector(model, task, vec, layer=1, scale=0.5, n_prompts=5, seed=2, progress=False)
    z5 = task.zero_shot(5, seed=2)
    w1 = ref.reference_evaluate_vector(model.hf, model.tokenizer, z5.clean, z5.target, 0.5 * vec, [1])
    assert one.layers == [1] and one.best_layer == 1
    assert_close(one.probs, w1["probs"], ATOL, "one layer")
    # the one-request body (remote)
    p, top = add_trace(
        model, [model.to_tokens(q) for q in zero.clean], list(t), list(range(model.n_layers)), vec
    )
    assert_close(p[1:].T, want["probs"], ATOL, "one-request probs")
    assert_close(p[0], want["base_p"], ATOL, "one-request baseline")
    assert (top[1:].T.numpy() == want["top"]).all()


def test_evaluate_accepts_a_function_vector_and_refuses_wrong_sizes():
    model = tiny("llama")
    fv = wb.function_vector(model, tiny_task(), heads=2, n_shots=N_SHOTS, n_prompts=2, progress=False)
    a = wb.evaluate_vector(model, tiny_task(), fv, progress=False)
    b = wb.evaluate_vector(model, tiny_task(), fv.vector, progress=False)
    assert_close(a.probs, b.probs, 0.0, "fv vs its vector")
    with pytest.raises(WorkbenchError, match=rf"shape \(7,\).*{model.d_model} wide"):
        wb.evaluate_vector(model, tiny_task(), torch.zeros(7), progress=False)
    with pytest.raises(WorkbenchError, match="NaN"):
        wb.evaluate_vector(model, tiny_task(), torch.full((model.d_model,), float("nan")), progress=False)
    with pytest.raises(WorkbenchError, match="FunctionVector"):
        wb.evaluate_vector(model, tiny_task(), "not a vector", progress=False)
    with pytest.raises(WorkbenchError, match="layers 0..2"):
        wb.evaluate_vector(model, tiny_task(), fv, layer=3, progress=False)


def test_bad_heads_and_tasks():
    model = tiny("llama")
    task = tiny_task()
    kw = dict(n_shots=N_SHOTS, n_prompts=2, progress=False)
    with pytest.raises(WorkbenchError, match="heads 0..5"):
        wb.function_vector(model, task, heads=[(0, 6)], **kw)
    with pytest.raises(WorkbenchError, match="twice"):
        wb.function_vector(model, task, heads=[(0, 1), (0, 1)], **kw)
    with pytest.raises(WorkbenchError, match=r"heads 0 is out of range: it must be 1..18"):
        wb.function_vector(model, task, heads=0, **kw)
    with pytest.raises(WorkbenchError, match=r"\(layer, head\) pairs"):
        wb.function_vector(model, task, heads=[3], **kw)
    with pytest.raises(WorkbenchError, match="wb.Task"):
        wb.head_effects(model, [("a", "b")], **kw)
    with pytest.raises(WorkbenchError, match="n_shots <= 7"):
        wb.head_effects(model, task, n_shots=8, n_prompts=2, progress=False)
    with pytest.raises(WorkbenchError, match="n_prompts"):
        wb.head_effects(model, task, n_shots=3, n_prompts=0, progress=False)
    other = tiny("gpt2")
    cie = wb.head_effects(other, task, **kw)
    with pytest.raises(WorkbenchError, match="on this model"):
        wb.function_vector(model, cie, heads=3, progress=False)


# ------------------------------------------------------------------------------------------- results
def test_results_code_figures_frames_and_pickles():
    model = tiny("llama")
    task = tiny_task()
    cie = wb.head_effects(model, task, n_shots=N_SHOTS, n_prompts=N_PROMPTS, progress=False)
    fv = wb.function_vector(model, cie, heads=3, progress=False)
    ev = wb.evaluate_vector(model, task, fv, scale=4.0, progress=False)
    # to_code reproduces each
    ns = run_code(cie.to_code())
    assert_close(ns["result"], cie.values, ATOL, "head_effects to_code")
    assert_close(ns["clean_p"], cie.clean, ATOL, "to_code clean")
    ns = run_code(fv.to_code())
    assert_close(ns["result"], fv.vector, ATOL, "function_vector to_code", rtol=1e-5)
    assert ns["top_ids"].tolist() == fv.top_ids[:10].tolist()
    ns = run_code(ev.to_code())
    assert_close(ns["result"], ev.accuracy, 1e-6, "evaluate_vector to_code")
    assert ns["baseline"] == ev.baseline
    # figures and frames
    fig = cie.plot()
    assert len(fig.layout.shapes) == 10 and np.asarray(fig.data[0].z).shape == (model.n_layers, model.n_heads)
    assert len(cie.plot(outline=fv).layout.shapes) == 3 and len(cie.plot(outline=0).layout.shapes) == 0
    cie.plot(what="normalized")
    df = cie.to_frame()
    assert len(df) == model.n_layers * model.n_heads and set(df.columns) >= {
        "layer",
        "head",
        "effect",
        "sem",
        "rank",
    }
    assert df.loc[df["rank"] == 1, ["layer", "head"]].values.tolist() == [list(cie.top_heads(1)[0][0])]
    assert len(cie.to_frame(per_example=True)) == N_PROMPTS * model.n_layers * model.n_heads
    fv.plot()
    assert fv.to_frame()[["layer", "head"]].values.tolist() == [list(h) for h in fv.heads]
    ev.plot()
    ev.plot(what="prob")
    assert (
        len(ev.to_frame()) == model.n_layers
        and len(ev.to_frame(per_example=True)) == len(task) * model.n_layers
    )
    with pytest.raises(WorkbenchError, match="unknown option"):
        cie.plot(bogus=1)
    # reprs
    assert "top heads: L" in repr(cie) and "FunctionVector 'tiny': 3 heads" in repr(fv)
    assert "baseline (no vector)" in repr(ev) and f"best layer {ev.best_layer}" in repr(ev)
    # pickles keep the numbers and the code
    for r in (cie, fv, ev):
        back = pickle.loads(pickle.dumps(r))
        assert back.to_code() == r.to_code()
    back = pickle.loads(pickle.dumps(cie))
    assert_close(back.values, cie.values, 0.0) and back.top_heads(3) == cie.top_heads(3)
    assert back.example(0).values.shape == (model.n_layers, model.n_heads)
    assert_close(np.asarray(fv), fv.vector, 0.0)
    with pytest.raises(WorkbenchError, match="top 100"):
        fv.decode(101)


# ------------------------------------------------------------------------------------------- the embedded model
@pytest.mark.embedded
def test_embedded_head_effects_vector_and_evaluation_equal_the_reference():
    model = wb.load()
    task = wb.datasets.task("antonyms")[:20]
    ds, want = _reference(model, task, n_shots=2, n_prompts=2)
    got = wb.head_effects(model, task, n_shots=2, n_prompts=2, progress=False)
    _check_effects(got, want, "embedded")
    fv = wb.function_vector(model, got, heads=5, progress=False)
    top = np.argsort(-want["values"].reshape(-1), kind="stable")[:5]
    heads = [(int(i) // model.n_heads, int(i) % model.n_heads) for i in top]
    assert fv.heads == heads
    vec = ref.reference_function_vector(model.hf, torch.from_numpy(want["means"]), heads)
    assert_close(fv.vector, vec, ATOL, "embedded vector", rtol=1e-5)
    ids, probs = ref.reference_decode(model.hf, vec, 10)
    assert_close([p for _, p in fv.decode(10)], probs, ATOL, "embedded decode")
    small = task[:6]
    ev = wb.evaluate_vector(model, small, fv, progress=False)
    zero = small.zero_shot()
    w = ref.reference_evaluate_vector(
        model.hf, model.tokenizer, zero.clean, zero.target, vec, range(model.n_layers)
    )
    assert_close(ev.probs, w["probs"], ATOL, "embedded evaluate")
    assert (ev.top_ids == w["top"]).all() and (ev.baseline_top_ids == w["base_top"]).all()


def test_workshop_cache_keys_tasks_and_vectors(tmp_path):
    model = tiny("llama")
    task = tiny_task()
    kw = dict(n_shots=N_SHOTS, n_prompts=2, progress=False)
    with wb.cache(tmp_path) as store:
        a = wb.head_effects(model, task, **kw)
        b = wb.head_effects(model, task, **kw)
        fv = wb.function_vector(model, a, heads=2, progress=False)
        wb.function_vector(model, a, heads=2, progress=False)
        wb.evaluate_vector(model, task, fv, progress=False)
        wb.evaluate_vector(model, task, fv, progress=False)
        assert store.hits == 3 and store.misses == 3
        wb.head_effects(model, tiny_task()[:7], **kw)  # other pairs: computed
        assert store.misses == 4
    assert_close(a.values, b.values, 0.0)
