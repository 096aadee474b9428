"""FunctionVectorView (issue 16) on tiny models and the embedded model: what the view shows equals the ops
(`wb.head_effects`, `wb.function_vector`, `wb.evaluate_vector`, `wb.attention`, `wb.steer`) and the plain-hook
reference (tests/reference.py); clicks (open a head, toggle it, top n, an example, a prompt) give the state the
ops give; bad input shows in the view and the view is never left busy or showing other data than it says."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import workbench as wb
import workbench.ops
from workbench.widgets import FunctionVectorView, unpack
from workbench.widgets.function_vector import _steer_positions

from . import reference as ref
from .conftest import ATOL, assert_close, run_code, tiny

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
OPTS = dict(n_shots=3, n_prompts=3, top_n=4, eval_prompts=8)


def tiny_task() -> wb.Task:
    return wb.Task(PAIRS, template="{x} -> {y}\n", name="tiny")


@pytest.fixture(scope="module")
def model():
    return tiny("llama")


@pytest.fixture(scope="module")
def view(model):
    return FunctionVectorView(model, tiny_task(), wait=True, **OPTS).wait()


def _idle(v):
    v.wait(180)
    assert v.status in ("done", "idle", "error"), v.status
    assert not v.runner.busy_for(v)


def _effects(model, task=None, **kw):
    o = {k: OPTS[k] for k in ("n_shots", "n_prompts")} | kw
    return wb.head_effects(model, task or tiny_task(), **o)


def _heads(v) -> list[tuple[int, int]]:
    return [tuple(h) for h in v.heads]


# ---------------------------------------------------------------------------------------- what it shows
@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox"])
def test_the_view_shows_the_ops_numbers_and_the_reference(family):
    """The heatmap, the top heads, the vector and its accuracy by layer are the ops' and the plain-hook
    reference's (one forward per (head, prompt), per (prompt, layer))."""
    m = tiny(family)
    task = tiny_task()
    v = FunctionVectorView(m, task, wait=True, **OPTS).wait()
    assert v.status == "done" and v.error == "" and v.stale == []
    ds = task.dataset(3, 3, seed=0)
    want = ref.reference_head_effects(m.hf, m.tokenizer, ds.clean, ds.corrupt, ds.target)
    assert_close(unpack(v.effects["values"]), want["values"], ATOL, "heatmap")
    assert abs(v.effects["clean"] - float(np.mean(want["clean"]))) < ATOL
    assert abs(v.effects["corrupt"] - float(np.mean(want["corrupt"]))) < ATOL
    eff = _effects(m)
    assert_close(unpack(v.effects["values"]), eff.values, 1e-6, "heatmap vs op")
    assert_close(unpack(v.effects["sem"]), np.nan_to_num(eff.sem), 1e-6, "sem vs op")
    assert v.effects["top_tokens"][1][2] == eff.head_top_tokens[1][2][0]
    top = [h for h, _ in eff.top_heads(4)]
    assert _heads(v) == top and v.vector["heads"] == [list(h) for h in top]
    vec = ref.reference_function_vector(m.hf, torch.from_numpy(want["means"]), top)
    fv = v.function_vector
    assert_close(fv.vector, vec, ATOL, "vector", rtol=1e-5)
    assert abs(v.vector["norm"] - float(vec.norm())) < 1e-3
    _, probs = ref.reference_decode(m.hf, vec, len(v.vector["tokens"]))
    assert_close(unpack(v.vector["probs"]), probs, ATOL, "decoded")
    zero = task.zero_shot(8, seed=0)
    w = ref.reference_evaluate_vector(m.hf, m.tokenizer, zero.clean, zero.target, vec, range(m.n_layers))
    acc = (w["top"] == np.array([m.token_id(t) for t in zero.target])[:, None]).mean(0)
    assert_close(unpack(v.evaluation["accuracy"]), acc, 1e-6, "accuracy by layer")
    base = float((w["base_top"] == np.array([m.token_id(t) for t in zero.target])).mean())
    assert v.evaluation["baseline"] == pytest.approx(base)
    assert v.evaluation["best_layer"] == int(np.argmax(acc)) and v.evaluation["n"] == 8
    ev = v.evaluation_result
    assert_close(ev.probs, w["probs"], ATOL, "p(answer) by layer")
    assert v.evaluation["heads"] == [list(h) for h in top]
    assert [e["label"].split(" ")[0] for e in v.history] == ["head", "vector"]


def test_a_click_opens_a_head_its_decoding_and_its_attention(model, view):
    eff = view.effects_result
    view.request("head", layer=1, head=2)
    _idle(view)
    assert view.status == "done" and view.error == ""
    hd = view.head
    assert (hd["layer"], hd["head"]) == (1, 2) and view.selected == [1, 2]
    decoded = eff.decode_head(1, 2)
    assert hd["tokens"] == [t for t, _ in decoded]
    assert_close(unpack(hd["probs"]), [p for _, p in decoded], 1e-7, "head decoding")
    flat = eff.values.reshape(-1)
    assert hd["rank"] == 1 + int((flat > eff.values[1, 2]).sum())
    assert hd["effect"] == pytest.approx(float(eff.values[1, 2]))
    p = view.pattern
    prompt = eff.dataset.clean[0]
    want = ref.reference_attention(model.hf, model.tokenizer, prompt)[1, 2]
    assert (p["layer"], p["head"], p["example"]) == (1, 2, 0)
    assert p["tokens"] == model.to_str_tokens(prompt) and p["target"] == eff.dataset.target[0]
    assert_close(unpack(p["data"]), want, ATOL, "attention pattern")
    # another example: that prompt's pattern (one wb.attention run per example, kept)
    view.example = 2
    _idle(view)
    want2 = ref.reference_attention(model.hf, model.tokenizer, eff.dataset.clean[2])[1, 2]
    assert view.pattern["example"] == 2 and view.pattern["tokens"] == model.to_str_tokens(
        eff.dataset.clean[2]
    )
    assert_close(unpack(view.pattern["data"]), want2, ATOL, "attention pattern, example 2")
    # another head on a cached example: no new run
    calls = []
    real = workbench.ops.attention
    try:
        workbench.ops.attention = lambda *a, **k: calls.append(1) or real(*a, **k)
        view.open_head(0, 1)
        _idle(view)
    finally:
        workbench.ops.attention = real
    assert calls == [] and (view.pattern["layer"], view.pattern["head"], view.pattern["example"]) == (0, 1, 2)
    assert_close(
        unpack(view.pattern["data"]),
        ref.reference_attention(model.hf, model.tokenizer, eff.dataset.clean[2])[0, 1],
        ATOL,
    )
    view.example = 0
    _idle(view)


def test_toggling_a_head_rebuilds_the_vector_and_back_comes_from_the_cache(model, view, monkeypatch):
    eff = view.effects_result
    start = _heads(view)
    extra = next(
        (lyr, h) for lyr in range(model.n_layers) for h in range(model.n_heads) if (lyr, h) not in start
    )
    view.request("toggle", layer=extra[0], head=extra[1])
    _idle(view)
    assert _heads(view) == [*start, extra] and view.stale == [] and view.status == "done"
    fv = wb.function_vector(model, eff, heads=[*start, extra])
    assert_close(view.function_vector.vector, fv.vector, 1e-6, "toggled vector")
    ev = wb.evaluate_vector(model, tiny_task(), fv, n_prompts=8, seed=0)
    assert_close(unpack(view.evaluation["accuracy"]), ev.accuracy, 1e-6, "toggled accuracy")
    assert_close(view.evaluation_result.probs, ev.probs, 1e-6, "toggled p(answer)")
    assert view.evaluation["heads"] == [list(h) for h in [*start, extra]]
    calls = []
    real = workbench.ops.evaluate_vector
    monkeypatch.setattr(workbench.ops, "evaluate_vector", lambda *a, **k: calls.append(1) or real(*a, **k))
    view.toggle_head(*extra)  # out again: the first vector, from the cache
    _idle(view)
    assert calls == [] and _heads(view) == start and view.stale == []
    assert view.vector["heads"] == [list(h) for h in start] and view.evaluation["heads"] == [
        list(h) for h in start
    ]
    # top n resets the choice to the top n heads
    view.top_n = 2
    _idle(view)
    assert _heads(view) == [h for h, _ in eff.top_heads(2)] and view.vector["heads"] == view.heads
    assert len(calls) == 1
    view.top_n = 4
    _idle(view)
    assert _heads(view) == start and len(calls) == 1


def test_heads_set_from_the_view_are_checked(view):
    before = list(view.heads)
    shown = dict(view.vector)
    for bad in ([[0, 99]], [[0, 0], [0, 0]], [["a", 1]], [[True, 1]], "L1H2"):
        view.heads = bad
        _idle(view)
        assert view.status == "error" and view.error, bad
        assert view.heads == before and view.vector == shown
    view.request("toggle", layer=99, head=0)
    _idle(view)
    assert view.status == "error" and "layer" in view.error and view.heads == before
    view.request("head", layer=0, head=-1)
    _idle(view)
    assert view.status == "error" and "No such head" in view.error
    view.top_n = 0
    _idle(view)
    assert view.status == "error" and view.top_n == 4
    view.eval_prompts = 100
    _idle(view)
    assert view.status == "error" and "queries" in view.error and view.eval_prompts == 8
    view.example = 7
    _idle(view)
    assert view.status == "error" and "Example 7" in view.error and view.example == 0
    view.request("head", layer=0, head=0)  # the next good click works and clears the error
    _idle(view)
    assert view.status == "done" and view.error == ""


def test_no_heads_chosen_empties_the_vector_and_says_so(model):
    v = FunctionVectorView(model, tiny_task(), wait=True, **{**OPTS, "top_n": 1}).wait()
    (layer, head) = _heads(v)[0]
    v.toggle_head(layer, head)
    _idle(v)
    assert v.heads == [] and v.vector == {} and v.evaluation == {} and v.stale == [] and v.status != "running"
    with pytest.raises(wb.WorkbenchError, match="No vector"):
        v.steer("cat ->", layer=0)
    assert v.status == "error" and "No vector" in v.error and v.trial == {}
    v.toggle_head(layer, head)
    _idle(v)
    assert v.heads == [[layer, head]] and v.vector["heads"] == [[layer, head]] and v.status == "done"


# ---------------------------------------------------------------------------------------- the prompt box
def test_the_prompt_box_is_wb_steer_after_block_layer(model, view):
    fv = view.function_vector
    modes = _steer_positions()
    assert view.position_modes == modes and view.positions == modes[0]
    view.request("steer", prompt="cat ->", layer=1, scale=2.0, max_new_tokens=4, positions="all")
    _idle(view)
    assert view.status == "done" and view.error == ""
    t = view.trial
    kw = {"positions": "all"} if "last" in modes else {}
    res = wb.steer(model, "cat ->", vector=fv.vector, layer=2, scale=2.0, max_new_tokens=4, **kw)
    assert (t["layer"], t["steer_layer"], t["scale"], t["max_new_tokens"]) == (1, 2, 2.0, 4)
    assert t["text"] == str(res) and t["baseline"] == res.baseline
    assert t["heads"] == view.heads and "".join(t["pieces"]) == str(res)
    # the plain-hook reference: the vector added to block 2's input at every position
    want = ref.reference_steer(model.hf, model.tokenizer, "cat ->", torch.from_numpy(fv.vector), 2, 2.0, 4)
    plain = ref.reference_steer(model.hf, model.tokenizer, "cat ->", None, 2, 1.0, 4)
    assert t["text"] == want["text"] and t["baseline"] == plain["text"]
    assert (view.prompt, view.layer, view.scale, view.max_new_tokens) == ("cat ->", 1, 2.0, 4)
    assert view.history[-1]["label"].startswith("steer 'cat ->' after block 1")
    code = view.to_code()
    assert "wb.steer at layer 2 = after block 1" in code and code == view.code


@pytest.mark.skipif("last" not in _steer_positions(), reason="wb.steer here adds at every position only")
def test_the_prompt_box_at_the_last_position_predicts_what_evaluate_vector_measures(model, view):
    """positions='last' after block l is evaluate_vector's edit at layer l: the first steered token is the
    evaluation's top-1 at that layer, for a task query."""
    ev = view.evaluation_result
    for i in range(3):
        prompt = ev.prompts[i]
        for layer in (0, model.n_layers - 2):
            view.steer(prompt, layer=layer, max_new_tokens=1, positions="last", scale=1.0)
            _idle(view)
            assert view.trial["pieces"][0] == ev.top_tokens[i][ev.layers.index(layer)], (i, layer)
            assert view.trial["baseline_pieces"][0] == ev.baseline_top_tokens[i]


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        (dict(prompt="  "), "Type a prompt"),
        (dict(prompt="cat ->", layer=3), "layer"),  # the last block has no next block to add before
        (dict(prompt="cat ->", layer=-1), "layer"),
        (dict(prompt="cat ->", max_new_tokens=0), "max_new_tokens"),
        (dict(prompt="cat ->", scale=float("nan")), "scale"),
        (dict(prompt="cat ->", scale="big"), "scale"),
        (dict(prompt="cat ->", positions="first"), "positions"),
        (dict(prompt=3), "text"),
    ],
)
def test_bad_prompt_box_requests_show_an_error_and_keep_the_last_try(model, view, msg, match):
    view.request("steer", prompt="cat ->", layer=0, max_new_tokens=2)
    _idle(view)
    before = dict(view.trial)
    assert view.status == "done" and before
    view.request("steer", **msg)
    _idle(view)
    assert view.status == "error" and match in view.error, view.error
    assert view.trial == before


# ---------------------------------------------------------------------------------------- settings, cancel
def test_new_settings_recompute_and_bad_ones_go_back(model):
    v = FunctionVectorView(model, tiny_task(), wait=True, **OPTS).wait()
    shown = bytes(v.effects["values"]["data"])
    v.n_shots = 7  # 8 pairs: 7 demonstrations and a query is the most there is
    _idle(v)
    assert v.status == "done" and v.effects["settings"]["n_shots"] == 7 and v.stale == []
    eff = wb.head_effects(model, tiny_task(), n_shots=7, n_prompts=3)
    assert_close(unpack(v.effects["values"]), eff.values, 1e-6)
    assert _heads(v) == [h for h, _ in eff.top_heads(4)]
    v.n_shots = 8
    _idle(v)
    assert v.status == "error" and "n_shots" in v.error and "back to the settings" in v.error
    assert v.n_shots == 7 and v.stale == [] and v.effects["settings"]["n_shots"] == 7
    v.n_shots = 3
    _idle(v)
    assert bytes(v.effects["values"]["data"]) == shown and v.status == "done"


def test_cancel_stops_the_heatmap_and_compute_runs_it_again(model, monkeypatch):
    started = threading.Event()
    real = workbench.ops.head_effects

    def slow(*a, **k):
        started.set()
        while not k["cancel"].wait(0.01):
            pass
        raise wb.CancelledError("cancelled")

    monkeypatch.setattr(workbench.ops, "head_effects", slow)
    v = FunctionVectorView(model, tiny_task(), **OPTS)
    assert started.wait(60)
    assert v.status == "running"
    v.cancel()
    _idle(v)
    assert v.status == "idle" and v.progress_text == "cancelled" and v.error == ""
    assert v.effects == {} and v.vector == {} and v.evaluation == {}
    monkeypatch.setattr(workbench.ops, "head_effects", real)
    v.request("recompute")
    _idle(v)
    assert v.status == "done" and v.effects and v.vector and v.evaluation and v.stale == []


def test_cancel_during_the_evaluation_keeps_the_heatmap_and_the_vector(model, monkeypatch):
    started = threading.Event()
    real = workbench.ops.evaluate_vector

    def slow(*a, **k):
        started.set()
        while not k["cancel"].wait(0.01):
            pass
        raise wb.CancelledError("cancelled")

    monkeypatch.setattr(workbench.ops, "evaluate_vector", slow)
    v = FunctionVectorView(model, tiny_task(), **OPTS)
    assert started.wait(120)
    v.cancel()
    _idle(v)
    assert v.status == "idle" and v.effects and v.vector and v.evaluation == {}
    assert v.vector["heads"] == v.heads and v.stale == []
    monkeypatch.setattr(workbench.ops, "evaluate_vector", real)
    v.top_n = 3  # the next change measures again
    _idle(v)
    assert v.evaluation and v.evaluation["heads"] == v.heads and v.status == "done"


def test_head_effects_given_are_used_as_they_are(model, monkeypatch):
    eff = _effects(model, seed=2)
    monkeypatch.setattr(workbench.ops, "head_effects", lambda *a, **k: pytest.fail("recomputed"))
    v = FunctionVectorView(model, eff, top_n=3, eval_prompts=5, wait=True).wait()
    assert (v.n_shots, v.n_prompts, v.seed) == (3, 3, 2) and v.task["name"] == "tiny"
    assert_close(unpack(v.effects["values"]), eff.values, 0.0)
    assert _heads(v) == [h for h, _ in eff.top_heads(3)] and v.evaluation["n"] == 5


def test_constructor_errors(model):
    with pytest.raises(wb.TokenizationError, match="not one token"):
        FunctionVectorView(
            model, wb.Task([("cat", "dog"), ("dog", "a cat"), ("mat", "log")], template="{x} -> {y}\n")
        )
    with pytest.raises(wb.WorkbenchError, match="n_shots"):
        FunctionVectorView(model, tiny_task(), n_shots=8)
    with pytest.raises(wb.WorkbenchError, match="top_n"):
        FunctionVectorView(model, tiny_task(), n_shots=3, top_n=0)
    with pytest.raises(wb.WorkbenchError, match="eval_prompts"):
        FunctionVectorView(model, tiny_task(), n_shots=3, eval_prompts=9)
    with pytest.raises(wb.WorkbenchError, match="layer"):
        FunctionVectorView(model, tiny_task(), n_shots=3, layer=model.n_layers - 1)
    with pytest.raises(wb.WorkbenchError, match="task="):
        FunctionVectorView(model, 3)
    with pytest.raises(wb.WorkbenchError, match="knows"):
        FunctionVectorView(model, "antonym")
    other = _effects(tiny("gpt2"))  # 3 layers x 4 heads; the tiny llama has 6 heads
    with pytest.raises(wb.WorkbenchError, match="this model"):
        FunctionVectorView(model, other)


# ---------------------------------------------------------------------------------------- code and export
def test_to_code_reproduces_what_the_view_shows(model, view):
    view.request("steer", prompt="dog ->", layer=0, max_new_tokens=3, positions="all")
    _idle(view)
    code = view.to_code()
    for title in ("head effects (wb.head_effects)", "the function vector (wb.function_vector)",
                  "zero-shot accuracy by layer (wb.evaluate_vector)", "the vector tried on a prompt"):  # fmt: skip
        assert f"# ---- {title}" in code, title
    parts = [part.split("\n", 1)[1] for part in code.split("# ---- ")[1:]]
    assert len(parts) == 4
    assert_close(run_code(parts[0])["result"], view.effects_result.values, ATOL, "code: head effects")
    assert_close(run_code(parts[1])["result"], view.function_vector.vector, ATOL, "code: vector", rtol=1e-5)
    assert_close(run_code(parts[2])["result"], unpack(view.evaluation["accuracy"]), 0.0, "code: accuracy")
    assert str(run_code(parts[3])["result"]) == view.trial["text"]
    html = view.to_html()
    assert '"_view_kind": "function_vector"' in html and "<img" not in html.split("wb-state")[1][:200]


# ---------------------------------------------------------------------------------------- the embedded model
@pytest.mark.embedded
def test_embedded_view_equals_the_ops_on_a_shipped_task():
    model = wb.load()
    task = wb.datasets.task("antonyms")
    v = FunctionVectorView(model, task, n_shots=3, n_prompts=2, top_n=5, eval_prompts=6, wait=True).wait(900)
    assert v.status == "done" and v.error == "" and v.stale == []
    eff = wb.head_effects(model, task, n_shots=3, n_prompts=2)
    assert_close(unpack(v.effects["values"]), eff.values, 1e-6, "embedded heatmap")
    assert _heads(v) == [h for h, _ in eff.top_heads(5)]
    fv = wb.function_vector(model, eff, heads=5)
    assert_close(v.function_vector.vector, fv.vector, 1e-6, "embedded vector")
    ev = wb.evaluate_vector(model, task, fv, n_prompts=6, seed=0)
    assert_close(unpack(v.evaluation["accuracy"]), ev.accuracy, 1e-6, "embedded accuracy")
    layer = min(ev.best_layer, model.n_layers - 2)
    v.steer(task.query("hot"), layer=layer, max_new_tokens=3, positions="all")
    _idle(v)
    kw = {"positions": "all"} if "last" in v.position_modes else {}
    res = wb.steer(model, task.query("hot"), vector=fv.vector, layer=layer + 1, max_new_tokens=3, **kw)
    assert v.trial["text"] == str(res) and v.trial["baseline"] == res.baseline
    v.open_head(*_heads(v)[0])
    _idle(v)
    want = ref.reference_attention(model.hf, model.tokenizer, eff.dataset.clean[0])[_heads(v)[0]]
    assert_close(unpack(v.pattern["data"]), want, ATOL, "embedded pattern")
