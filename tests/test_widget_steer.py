"""SteerView on tiny models: a Generate request streams "start" and one "step" message per token, the finished run
(`run` trait) equals wb.steer / wb.steer_sweep with the same settings, cancel keeps the tokens so far, bad input
shows in the view and never leaves it busy, to_code() is the code of the current settings."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

import workbench as wb
import workbench.ops
import workbench.testing
from tests import reference as R
from tests.conftest import run_code
from workbench.widgets import SteerView, unpack

PROMPT = "The Eiffel Tower is located in the city of"
POS, NEG = " Paris Paris", " Rome Rome"


@pytest.fixture(scope="module")
def model():
    return workbench.testing.tiny_model("llama")


def _idle(v):
    v.wait(120)
    assert v.status in ("done", "idle", "error"), v.status
    assert not v.runner.busy_for(v)


class Sent:
    """Records what the view sends (content and buffers), as the front end would receive it."""

    def __init__(self, view):
        self.items = []
        view.send = lambda content, buffers=None: self.items.append((content, buffers))

    def stream(self, event=None):
        return [
            c for c, _ in self.items if c.get("kind") == "stream" and (event is None or c["event"] == event)
        ]


def _row_ids(run, r):
    return unpack(run["rows"][r]["ids"]).tolist()


def test_generate_streams_each_token_and_the_run_equals_steer(model):
    v = SteerView(model, PROMPT, positive=POS, negative=NEG, layer=1, scale=3.0, max_new_tokens=6)
    _idle(v)
    sent = Sent(v)
    v.request("generate")
    _idle(v)
    assert v.status == "done" and v.error == ""
    start, steps = sent.stream("start"), sent.stream("step")
    assert (
        len(start) == 1
        and start[0]["live"]
        and [r["label"] for r in start[0]["rows"]] == ["unsteered", "scale 3"]
    )
    assert [s["step"] for s in steps] == list(range(6)) and all(s["run"] == start[0]["run"] for s in steps)
    probs = [np.frombuffer(b[0], np.float32) for c, b in sent.items if c.get("event") == "step"]
    assert all(p.shape == (2,) for p in probs)
    want = wb.steer(model, PROMPT, vector=(POS, NEG), layer=1, scale=3.0, max_new_tokens=6)
    run = v.run
    assert run["id"] == start[0]["run"] and run["state"] == "done" and run["text"] == str(want)
    assert _row_ids(run, 1) == want.tokens and _row_ids(run, 0) == want.baseline_tokens
    assert [s["ids"][1] for s in steps] == want.tokens
    assert "".join(s["pieces"][1] for s in steps) == str(want) == "".join(run["rows"][1]["pieces"])
    assert run["rows"][1]["diverges_at"] == want.diverges_at
    np.testing.assert_allclose(unpack(run["rows"][1]["probs"]), want.token_probs, atol=1e-6)
    np.testing.assert_allclose([p[1] for p in probs], want.token_probs, atol=1e-6)
    assert unpack(run["rows"][1]["top_ids"]).shape == (6, 5)
    assert v.first_token_s is not None and 0 < v.first_token_s < 60
    assert v.history[-1]["label"].startswith("L1 ×3") and v.history[-1]["args"]["scale"] == 3.0
    ns = run_code(v.to_code())
    assert ns["result"] == str(want) and ns["baseline"] == want.baseline


def test_sweep_rows_equal_steer_sweep_and_the_settings_code(model):
    vec = torch.randn(model.d_model, generator=torch.Generator().manual_seed(3))
    v = SteerView(
        model,
        PROMPT,
        vector=vec,
        layer=2,
        scale=2.0,
        sweep=[-2.0, 5.0, 2.0],
        max_new_tokens=5,
        positions="last",
    )
    _idle(v)
    v.request("generate")
    _idle(v)
    run = v.run
    assert [r["label"] for r in run["rows"]] == [
        "unsteered",
        "scale 2",
        "scale -2",
        "scale 5",
    ]  # duplicate dropped
    sw = wb.steer_sweep(
        model, PROMPT, vector=vec, layer=2, scales=[2.0, -2.0, 5.0], max_new_tokens=5, positions="last"
    )
    for i, r in enumerate(sw, start=1):
        assert _row_ids(run, i) == r.tokens
        assert abs(run["rows"][i]["relative"] - r.relative) < 1e-6
    assert _row_ids(run, 0) == sw.baseline_tokens
    ns = run_code(v.to_code())
    assert ns["result"] == sw.texts and "h.shape[1] - step - 1" in v.code
    # the code follows the settings before any run
    v.positions = "all"
    assert "h += adds" in v.code and "h.shape[1] - step - 1" not in v.code


def test_function_vector_layer_and_vector_info(model):
    class FV:
        def __init__(self, vector):
            self.vector, self.heads, self.layer = vector, [(1, 2), (2, 0)], 2

    fv = FV(torch.randn(model.d_model, generator=torch.Generator().manual_seed(1)))
    v = SteerView(model, PROMPT, vector=fv, max_new_tokens=3)
    assert (
        v.layer == 2
        and v.vector_info["kind"] == "function vector"
        and v.vector_info["heads"] == [[1, 2], [2, 0]]
    )
    resid = unpack(v.norms["resid"])
    ref = [
        float(R.capture(model.hf, model.to_tokens(PROMPT), "resid_pre", [x])[x].norm(dim=-1).median())
        for x in range(3)
    ]
    np.testing.assert_allclose(resid, ref, rtol=1e-5)
    np.testing.assert_allclose(unpack(v.norms["vector"]), [float(fv.vector.norm())] * 3, rtol=1e-6)
    assert v.scale_min < 0 < v.scale_max and v.scale_min <= -abs(v.scale)
    v.request("generate")
    _idle(v)
    want = wb.steer(model, PROMPT, vector=fv.vector, layer=2, scale=1.0, max_new_tokens=3)
    assert v.run["text"] == str(want)


def test_pair_vectors_follow_the_layer(model):
    v = SteerView(model, PROMPT, positive=POS, negative=NEG, max_new_tokens=2)
    same = SteerView(model, PROMPT, vector=(POS, NEG), max_new_tokens=2)  # the pair as wb.steer takes it
    assert same.vector_info["kind"] == "pair" and same.to_code() == v.to_code()
    for layer in range(model.n_layers):
        torch.testing.assert_close(
            v.vector_at(layer),
            R.steering_vector(model.hf, model.tokenizer, POS, NEG, layer),
            atol=1e-5,
            rtol=0,
        )
    np.testing.assert_allclose(
        unpack(v.norms["vector"]), [float(v.vector_at(x).norm()) for x in range(model.n_layers)], rtol=1e-6
    )


def test_cancel_keeps_the_tokens_so_far_and_the_view_works_after(model, monkeypatch):
    v = SteerView(model, PROMPT, positive=POS, negative=NEG, layer=1, scale=3.0, max_new_tokens=40)
    _idle(v)
    real = workbench.ops.steer
    started = threading.Event()

    def slow(*a, on_token=None, **k):
        def hold(step):
            on_token(step)
            if step.step == 2:
                started.set()
                k["cancel"].wait(30)

        return real(*a, on_token=hold, **k)

    monkeypatch.setattr(workbench.ops, "steer", slow)
    v.generate()
    assert started.wait(60)
    assert v.status == "running"
    v.cancel()
    _idle(v)
    assert v.status == "idle" and v.progress_text == "cancelled" and v.error == ""
    assert v.run["state"] == "cancelled" and len(_row_ids(v.run, 1)) == 3
    monkeypatch.setattr(workbench.ops, "steer", real)
    v.generate()
    _idle(v)
    assert v.status == "done" and v.run["state"] == "done" and len(_row_ids(v.run, 1)) == 40


def test_bad_input_shows_in_the_view_and_never_leaves_it_busy(model):
    v = SteerView(model, PROMPT, positive=POS, negative=NEG, layer=1, max_new_tokens=4)
    _idle(v)
    v.request("generate")
    _idle(v)
    good = dict(v.run)
    v.prompt = "   "  # empty: shown when Generate runs it
    v.request("generate")
    _idle(v)
    assert v.status == "error" and "empty" in v.error and v.run == good
    v.prompt = PROMPT
    v.max_new_tokens = 500
    v.request("generate")
    _idle(v)
    assert v.status == "error" and "max_new_tokens" in v.error
    v.max_new_tokens = 4
    v.layer = 99
    assert v.status == "error" and "layer 99" in v.error
    v.request("generate")
    _idle(v)
    assert v.status == "error" and "layer 99" in v.error
    v.layer = 1
    v.positions = "first"
    v.request("generate")
    _idle(v)
    assert v.status == "error" and "positions" in v.error
    v.positions = "all"
    v.scale = 1e39  # overflows float32 inside the op
    v.request("generate")
    _idle(v)
    assert v.status == "error" and "overflow" in v.error and v.run == good
    v.scale = 2.0
    v.request("nope")
    assert v.status == "error" and "Unknown request" in v.error
    v.request("generate")
    _idle(v)
    assert v.status == "done" and v.error == "" and v.run["settings"]["scale"] == 2.0


def test_constructor_errors(model):
    vec = torch.randn(model.d_model)
    with pytest.raises(wb.WorkbenchError, match="needs a direction"):
        SteerView(model, PROMPT)
    with pytest.raises(wb.WorkbenchError, match="not both"):
        SteerView(model, PROMPT, vector=vec, positive="a", negative="b")
    with pytest.raises(wb.WorkbenchError, match="both prompts"):
        SteerView(model, PROMPT, positive="a")
    with pytest.raises(wb.WorkbenchError, match=rf"\({model.d_model},\)"):
        SteerView(model, PROMPT, vector=torch.randn(model.d_model + 1))
    with pytest.raises(wb.WorkbenchError, match="positions"):
        SteerView(model, PROMPT, vector=vec, positions="middle")
    with pytest.raises(wb.WorkbenchError, match="at most 8"):
        SteerView(model, PROMPT, vector=vec, sweep=list(range(9)))
    with pytest.raises(wb.WorkbenchError, match="lo < hi"):
        SteerView(model, PROMPT, vector=vec, scale_range=(2, 1))
    with pytest.raises(wb.SiteError):
        SteerView(model, PROMPT, vector=vec, layer=7)


def test_a_new_prompt_recomputes_the_norms_in_the_background(model):
    v = SteerView(model, PROMPT, positive=POS, negative=NEG, max_new_tokens=2)
    before = unpack(v.norms["resid"]).copy()
    v.prompt = "Hello world! This is a tiny tokenizer for tests."
    _idle(v)
    after = unpack(v.norms["resid"])
    ids = model.to_tokens(v.prompt)
    ref = [float(R.capture(model.hf, ids, "resid_pre", [x])[x].norm(dim=-1).median()) for x in range(3)]
    np.testing.assert_allclose(after, ref, rtol=1e-5)
    assert not np.allclose(before, after)


def test_export_html_carries_the_finished_run(model):
    v = SteerView(model, PROMPT, positive=POS, negative=NEG, layer=1, scale=3.0, max_new_tokens=3)
    v.request("generate")
    _idle(v)
    html = v.to_html()
    assert '"_view_kind": "steer"' in html and v.run["id"] in html


@pytest.mark.embedded
def test_embedded_first_token_arrives_before_the_generation_ends():
    """On the real model: the first step message is sent while the rest of the generation still runs (its time
    is well under the whole run's), and the run equals wb.steer."""
    model = wb.load()
    v = SteerView(
        model,
        "I went to the park today and",
        positive="The food was delicious",
        negative="The food was",
        layer=6,
        max_new_tokens=16,
    )
    _idle(v)
    times = []
    sent = Sent(v)
    real_send = sent.items.append
    sent_items = sent.items

    def stamp(item):
        times.append(time.perf_counter())
        real_send(item)

    v.send = lambda content, buffers=None: stamp((content, buffers))
    t0 = time.perf_counter()
    v.request("generate")
    _idle(v)
    total = time.perf_counter() - t0
    steps = [i for i, (c, _) in enumerate(sent_items) if c.get("event") == "step"]
    assert len(steps) == 16
    first = times[steps[0]] - t0
    assert first < total / 4, (first, total)
    want = wb.steer(
        model,
        "I went to the park today and",
        vector=("The food was delicious", "The food was"),
        layer=6,
        max_new_tokens=16,
    )
    assert v.run["text"] == str(want) and v.run["baseline"] == want.baseline


def test_a_prompt_sent_with_generate_runs_first_and_its_norms_after(model, monkeypatch):
    """Enter in the prompt box sends the edited prompt with the request: the generation is the first job (no
    measuring forward in front of it), and the new prompt's norms follow."""
    v = SteerView(model, PROMPT, positive=POS, negative=NEG, layer=1, scale=3.0, max_new_tokens=3)
    _idle(v)
    order = []
    real = v.submit

    def spy(kind, *a, **k):
        order.append(kind)
        return real(kind, *a, **k)

    monkeypatch.setattr(v, "submit", spy)
    new = "Hello world! This is a tiny tokenizer for tests."
    v.request("generate", prompt=new)
    _idle(v)
    assert order == ["generate", "norms"] and v.prompt == new and v.run["prompt"] == new
    want = wb.steer(model, new, vector=(POS, NEG), layer=1, scale=3.0, max_new_tokens=3)
    assert v.run["text"] == str(want) and repr(new) in v.code
    ref = [
        float(R.capture(model.hf, model.to_tokens(new), "resid_pre", [x])[x].norm(dim=-1).median())
        for x in range(3)
    ]
    np.testing.assert_allclose(unpack(v.norms["resid"]), ref, rtol=1e-5)
    v.request("generate", prompt=5)
    assert v.status == "error" and "not text" in v.error
