"""Issue 16, the steering half: wb.steer's positions ("all" / "last"), streaming (on_token), function vectors
(anything with a `.vector`), and wb.steer_sweep (several scales in one batched generation).

Numbers against an independent plain-hook reference (tests/reference.py: a loop of full forwards with no KV
cache, the vector added by a forward pre-hook), and against wb.intervene(wb.Add) at one step; on several
families and the embedded model; max abs diff 1e-4 on probabilities, token ids equal.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import workbench as wb
from tests import reference as R
from tests.conftest import CLEAN, assert_close, assert_same_topk, run_code, tiny

FAMILIES3 = ("gpt2", "llama", "gpt_neox")
SCALE = {"gpt2": 4.0, "llama": 3.0, "gpt_neox": 3.0}


def _vec(model, seed: int = 1) -> torch.Tensor:
    return torch.randn(model.d_model, generator=torch.Generator().manual_seed(seed))


@dataclass
class FunctionVector:
    """Stands in for wb.function_vector's result: the steering code reads only `.vector` (duck-typed)."""

    vector: torch.Tensor
    heads: list[tuple[int, int]]


@pytest.fixture(scope="module")
def embedded():
    return wb.load()


def _check_against_loop(out, ref, what: str) -> None:
    assert out.tokens == ref["ids"], f"{what}: {out.tokens} vs reference {ref['ids']}"
    assert str(out) == ref["text"]
    assert_close(out.token_probs, ref["probs"], what=f"{what} pick probabilities")
    assert_same_topk(out.top_ids, out.top_probs, ref["top_ids"], ref["top_probs"], what=what)


# ------------------------------------------------------------------------------------------ positions


@pytest.mark.parametrize("family", FAMILIES3)
@pytest.mark.parametrize("positions", ["all", "last"])
def test_steer_positions_equal_the_plain_hook_loop(family, positions):
    """Both positions modes against a no-cache loop of full forwards with a pre-hook adding at every position
    ("all") or at positions >= T-1 ("last"): the same tokens and probabilities, at several layers."""
    model = tiny(family)
    vec, scale = _vec(model), SCALE[family]
    differs = []
    for layer in (0, 1, 2):
        out = wb.steer(
            model, CLEAN, vector=vec, layer=layer, scale=scale, max_new_tokens=6, positions=positions
        )
        ref = R.reference_steer_loop(
            model.hf, model.tokenizer, CLEAN, vec, layer, scale, max_new_tokens=6, positions=positions
        )
        _check_against_loop(out, ref, f"{family} L{layer} {positions}")
        base = R.reference_steer_loop(model.hf, model.tokenizer, CLEAN, None, layer, max_new_tokens=6)
        assert out.baseline_tokens == base["ids"] and out.baseline == base["text"]
        assert out.options["positions"] == positions
        differs.append(out.tokens != out.baseline_tokens)
    assert any(differs), f"{family}: the vector never changed the text, so this proves nothing"


@pytest.mark.parametrize("family", FAMILIES3)
def test_last_and_all_are_different_interventions(family):
    """'last' leaves positions 0..T-2 alone: its first-step distribution differs from 'all' (the test vector
    must make them differ, or the two modes were not told apart)."""
    model = tiny(family)
    vec = _vec(model)
    kw = dict(vector=vec, layer=0, scale=SCALE[family], max_new_tokens=1, baseline=False)
    a = wb.steer(model, CLEAN, positions="all", **kw)
    b = wb.steer(model, CLEAN, positions="last", **kw)
    assert np.abs(a.top_probs - b.top_probs).max() > 1e-4 or a.tokens != b.tokens


@pytest.mark.embedded
@pytest.mark.parametrize("positions", ["all", "last"])
def test_embedded_positions_equal_the_plain_hook_loop(embedded, positions):
    model = embedded
    prompt, layer, scale = "I went to the park today and", 6, 1.0
    vec = wb.steering_vector(model, "The food was delicious", "The food was", layer)
    out = wb.steer(model, prompt, vector=vec, layer=layer, scale=scale, max_new_tokens=8, positions=positions)
    ref = R.reference_steer_loop(
        model.hf, model.tokenizer, prompt, vec, layer, scale, max_new_tokens=8, positions=positions
    )
    _check_against_loop(out, ref, f"embedded {positions}")
    assert out.tokens != out.baseline_tokens, "the food vector must change the text at this scale"


# ------------------------------------------------------------------------------------------ wb.steer vs wb.Add


@pytest.mark.parametrize("family", FAMILIES3)
@pytest.mark.parametrize("positions", ["all", "last"])
def test_steer_equals_intervene_add_at_one_step(family, positions):
    """Adding a function vector via wb.steer equals adding it via wb.intervene(wb.Add) at the first step: the
    same next-token distribution (top-5 probabilities, 1e-4) and greedy token. 'last' is the Add at the
    prompt's last position only."""
    model = tiny(family)
    fv = FunctionVector(vector=_vec(model, 7), heads=[(1, 0), (2, 1)])
    layer, scale = 1, SCALE[family]
    T = model.to_tokens(CLEAN).shape[1]
    cell = wb.Cell("resid_pre", layer) if positions == "all" else wb.Cell("resid_pre", layer, position=T - 1)
    v = wb.intervene(model, CLEAN, [wb.Edit(cell, wb.Add(fv.vector, scale))], top_k=5)
    out = wb.steer(
        model,
        CLEAN,
        vector=fv,
        layer=layer,
        scale=scale,
        max_new_tokens=1,
        positions=positions,
        baseline=False,
    )
    assert out.tokens[0] == int(v.top_ids[0])
    assert_same_topk(out.top_ids[0], out.top_probs[0], v.top_ids, v.top_probs, what=f"{family} {positions}")
    plain = torch.softmax(R.run_last_logits(model.hf, model.to_tokens(CLEAN))[0], -1).topk(5).values
    assert np.abs(np.asarray(v.top_probs) - plain.numpy()).max() > 1e-4, "the vector changed nothing"


@pytest.mark.embedded
def test_embedded_steer_equals_intervene_add_at_one_step(embedded):
    model = embedded
    prompt, layer, scale = "I went to the park today and", 6, 1.0
    fv = FunctionVector(
        vector=wb.steering_vector(model, "The food was delicious", "The food was", layer), heads=[]
    )
    T = model.to_tokens(prompt).shape[1]
    for positions, cell in (
        ("all", wb.Cell("resid_pre", layer)),
        ("last", wb.Cell("resid_pre", layer, position=T - 1)),
    ):
        v = wb.intervene(model, prompt, [wb.Edit(cell, wb.Add(fv.vector, scale))], top_k=5)
        out = wb.steer(
            model, prompt, vector=fv, layer=layer, scale=scale, max_new_tokens=1, positions=positions
        )
        assert out.tokens[0] == int(v.top_ids[0])
        assert_same_topk(
            out.top_ids[0], out.top_probs[0], v.top_ids, v.top_probs, what=f"embedded {positions}"
        )


# ------------------------------------------------------------------------------------------ function vectors


def test_function_vectors_are_read_through_their_vector_attribute():
    model = tiny("llama")
    vec = _vec(model, 3)
    kw = dict(layer=1, scale=3.0, max_new_tokens=5)
    direct = wb.steer(model, CLEAN, vector=vec, **kw)
    fv = wb.steer(model, CLEAN, vector=FunctionVector(vec, [(1, 2)]), **kw)
    assert fv.tokens == direct.tokens and fv.baseline == direct.baseline
    assert_close(fv.vector, vec.numpy(), what="the vector kept")
    with pytest.raises(wb.WorkbenchError, match=r"\.vector is a NoneType"):
        wb.steer(model, CLEAN, vector=FunctionVector(None, []), **kw)
    with pytest.raises(wb.WorkbenchError, match=rf"\({model.d_model},\)"):
        wb.steer(model, CLEAN, vector=FunctionVector(torch.randn(model.d_model + 2), []), **kw)
    with pytest.raises(wb.WorkbenchError, match="positions="):
        wb.steer(model, CLEAN, vector=vec, positions="first", **kw)


# ------------------------------------------------------------------------------------------ streaming


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_streamed_tokens_are_the_results_tokens_and_arrive_step_by_step(family):
    """on_token sees every row's token once, in order; the streamed ids are wb.steer's tokens, the pieces add up to
    its text; and each step arrives while the generation runs: when step s is streamed, the model's first block
    has started exactly s + 1 forward passes (a pre-hook counts them), so step s + 1 had not begun."""
    model = tiny(family)
    vec = _vec(model, 5)
    forwards = []
    handle = R.blocks(model.hf)[0].register_forward_pre_hook(lambda *a: forwards.append(1))
    seen = []

    def on_token(step: wb.SteerStep) -> None:
        seen.append((step, len(forwards)))

    try:
        out = wb.steer(
            model, CLEAN, vector=vec, layer=1, scale=SCALE[family], max_new_tokens=7, on_token=on_token
        )
    finally:
        handle.remove()
    assert [s.step for s, _ in seen] == list(range(7))
    assert [n for _, n in seen] == [s.step + 1 for s, _ in seen], (
        "a step was streamed after the next forward began"
    )
    assert all(s.live and s.rows == ("baseline", "steered") for s, _ in seen)
    for r, (tokens, text) in enumerate([(out.baseline_tokens, out.baseline), (out.tokens, str(out))]):
        ids = [s.ids[r] for s, _ in seen if s.ids[r] is not None]
        assert ids == tokens
        assert "".join(s.pieces[r] for s, _ in seen) == text
    assert out.pieces == [s.pieces[1] for s, _ in seen]
    assert_close([s.probs[1] for s, _ in seen], out.token_probs, what="streamed probabilities")
    # streaming changes nothing: the same call without a callback
    again = wb.steer(model, CLEAN, vector=vec, layer=1, scale=SCALE[family], max_new_tokens=7)
    assert again.tokens == out.tokens and again.baseline_tokens == out.baseline_tokens


@pytest.mark.embedded
def test_embedded_stream_stops_at_eos_and_equals_steer(embedded):
    """The EOS case of tests/test_steering_stops.py, streamed: the steered row ends at its EOS pick (None
    after it) while the baseline runs on; the streamed ids and text are wb.steer's."""
    model = embedded
    prompt, layer, scale, n = "I went to the park today and", 4, 8.0, 24
    vec = wb.steering_vector(
        model, "I talk about weddings constantly", "I do not talk about weddings constantly", layer
    )
    seen: list[wb.SteerStep] = []
    out = wb.steer(
        model, prompt, vector=vec, layer=layer, scale=scale, max_new_tokens=n, on_token=seen.append
    )
    assert out.stopped_at_eos and len(out.tokens) < n
    ids = [s.ids[1] for s in seen]
    stop = len(out.tokens)
    assert ids[:stop] == out.tokens and all(t is None for t in ids[stop:])
    assert "".join(s.pieces[1] for s in seen) == str(out)
    assert "".join(s.pieces[0] for s in seen) == out.baseline


def test_cancel_during_generation_stops_it_and_the_model_stays_usable():
    model = tiny("llama")
    vec = _vec(model, 2)
    kw = dict(vector=vec, layer=1, scale=3.0, max_new_tokens=8)
    want = wb.steer(model, CLEAN, **kw)
    cancel = threading.Event()
    steps = []

    def on_token(step):
        steps.append(step.step)
        if step.step == 2:
            cancel.set()

    with pytest.raises(wb.CancelledError):
        wb.steer(model, CLEAN, on_token=on_token, cancel=cancel, **kw)
    assert steps == [0, 1, 2], "the generation ran on after the cancel"
    after = wb.steer(model, CLEAN, **kw)
    assert after.tokens == want.tokens and after.baseline == want.baseline
    assert not model.lock._is_owned()


def test_remote_path_replays_the_steps_after_the_one_request(monkeypatch):
    """A remote model runs the generation with no callback inside the trace (NDIF runs it) and hands the steps to
    on_token afterwards, live=False. Simulated on a local model flagged remote (the trace still runs here)."""
    model = tiny("llama")
    remote = copy.copy(model)
    remote.remote = True
    vec = _vec(model, 4)
    calls = []
    import workbench.ops.steering as S

    real = S._generate

    def spy(m, ids, layer, adds, positions, n, emit):
        calls.append(emit)
        return real(m, ids, layer, adds, positions, n, emit)

    monkeypatch.setattr(S, "_generate", spy)
    seen: list[wb.SteerStep] = []
    got = wb.steer(remote, CLEAN, vector=vec, layer=1, scale=3.0, max_new_tokens=5, on_token=seen.append)
    local = wb.steer(model, CLEAN, vector=vec, layer=1, scale=3.0, max_new_tokens=5)
    assert calls[0] is None and calls[1] is not None, "the remote trace must not call back into this process"
    assert got.tokens == local.tokens and got.baseline == local.baseline
    assert [s.step for s in seen] == list(range(5)) and not any(s.live for s in seen)
    assert [s.ids[1] for s in seen] == got.tokens


# ------------------------------------------------------------------------------------------ scale sweeps


@pytest.mark.parametrize("family", FAMILIES3)
@pytest.mark.parametrize("positions", ["all", "last"])
def test_sweep_rows_equal_separate_steer_calls(family, positions):
    """One batched generation of several scales gives each scale what wb.steer(scale=s) gives: the tokens,
    the baseline, and the per-step top-5 probabilities (1e-4)."""
    model = tiny(family)
    vec = _vec(model, 9)
    scales = [0.5, SCALE[family], -SCALE[family], 2 * SCALE[family]]
    sw = wb.steer_sweep(
        model, CLEAN, vector=vec, layer=1, scales=scales, max_new_tokens=6, positions=positions
    )
    assert len(sw) == 4 and sw.scales == scales
    for s, r in zip(scales, sw, strict=True):
        one = wb.steer(model, CLEAN, vector=vec, layer=1, scale=s, max_new_tokens=6, positions=positions)
        assert r.tokens == one.tokens, f"{family} scale {s}"
        assert r.baseline == one.baseline == sw.baseline
        assert_same_topk(r.top_ids, r.top_probs, one.top_ids, one.top_probs, what=f"{family} scale {s}")
        assert r.options["scale"] == s and abs(r.relative - one.relative) < 1e-6
    assert len({tuple(r.tokens) for r in sw}) > 1, "every scale gave the same text: nothing was compared"


@pytest.mark.embedded
def test_embedded_sweep_rows_equal_separate_steer_calls(embedded):
    model = embedded
    prompt, layer = "My friend told me that", 6
    vec = wb.steering_vector(model, "The food was delicious", "The food was", layer)
    scales = [0.25, 0.5, 1.0]
    sw = wb.steer_sweep(model, prompt, vector=vec, layer=layer, scales=scales, max_new_tokens=12)
    for s, r in zip(scales, sw, strict=True):
        one = wb.steer(model, prompt, vector=vec, layer=layer, scale=s, max_new_tokens=12)
        assert r.tokens == one.tokens and r.baseline == one.baseline
        assert_same_topk(r.top_ids, r.top_probs, one.top_ids, one.top_probs, what=f"embedded scale {s}")
    ref = R.reference_steer_loop(model.hf, model.tokenizer, prompt, vec, layer, 1.0, max_new_tokens=12)
    assert sw[2].tokens == ref["ids"]


def test_sweep_checks_its_scales():
    model = tiny("llama")
    vec = _vec(model)
    with pytest.raises(wb.WorkbenchError, match="empty"):
        wb.steer_sweep(model, CLEAN, vector=vec, layer=1, scales=[])
    with pytest.raises(wb.WorkbenchError, match="at most 16"):
        wb.steer_sweep(model, CLEAN, vector=vec, layer=1, scales=list(range(17)))
    with pytest.raises(wb.WorkbenchError, match=r"scales\[1\]"):
        wb.steer_sweep(model, CLEAN, vector=vec, layer=1, scales=[1.0, float("nan")])


def test_sweep_figure_frame_and_repr():
    model = tiny("gpt2")
    sw = wb.steer_sweep(
        model, CLEAN, vector=(" Paris Paris", " Rome Rome"), layer=1, scales=[2.0, 8.0], max_new_tokens=4
    )
    fig = sw.plot()
    run, text = fig.data[0].cells.values
    assert run[:2] == ["prompt", "baseline"] and run[2].startswith("scale 2") and len(run) == 4
    df = sw.to_frame()
    assert list(df.run) == ["prompt", "baseline", "steered", "steered"]
    assert list(df.text[2:]) == sw.texts and df.scale.tolist()[2:] == [2.0, 8.0]
    assert "SteerSweepResult" in repr(sw) and "scale 8" in repr(sw)
    assert sw.options["pair"] == (" Paris Paris", " Rome Rome")


# ------------------------------------------------------------------------------------------ to_code


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generated_code_reproduces_steer_last_sweep_and_pairs(family):
    model = tiny(family)
    vec = _vec(model, 6)
    last = wb.steer(
        model, CLEAN, vector=vec, layer=1, scale=SCALE[family], max_new_tokens=5, positions="last"
    )
    ns = run_code(last.to_code())
    assert ns["result"] == str(last) and ns["baseline"] == last.baseline
    alone = wb.steer(model, CLEAN, vector=vec, layer=2, scale=2.0, max_new_tokens=4, baseline=False)
    assert run_code(alone.to_code())["result"] == str(alone)
    sw = wb.steer_sweep(
        model,
        CLEAN,
        vector=(" Paris Paris Paris", " Rome Rome Rome"),
        layer=1,
        scales=[2.0, 6.0],
        max_new_tokens=4,
    )
    ns = run_code(sw.to_code())
    assert ns["result"] == sw.texts and ns["baseline"] == sw.baseline
    assert "resid_last(positive) - resid_last(negative)" in sw.to_code()


def test_pair_vectors_equal_steering_vector_at_every_layer():
    from workbench.ops.steering import pair_vectors

    model = tiny("llama")
    every = pair_vectors(model, " Paris Paris", " Rome Rome")
    assert sorted(every) == list(range(model.n_layers))
    for layer, v in every.items():
        ref = R.steering_vector(model.hf, model.tokenizer, " Paris Paris", " Rome Rome", layer)
        assert_close(v, ref, what=f"pair vector L{layer}")
