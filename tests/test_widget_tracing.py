"""CausalTraceView on tiny models: messages in, state out; the restored cell equals the trace's own value; bad input
shows in the view (earlier panels kept) and the view is never left busy."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import workbench as wb
import workbench.ops
import workbench.testing
from workbench.ops.tracing_restore import restore_state
from workbench.widgets import CausalTraceView, unpack

PROMPT = "The Eiffel Tower is located in the city of"
SUBJECT = "Eiffel Tower"
OPTS = dict(samples=3, window=3)


@pytest.fixture(scope="module")
def model():
    return workbench.testing.tiny_model("llama")


@pytest.fixture(scope="module")
def view(model):
    return CausalTraceView(model, PROMPT, subject=SUBJECT, **OPTS)


def _idle(v):
    v.wait(120)
    assert v.status in ("done", "idle", "error"), v.status
    assert not v.runner.busy_for(v)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize(
    ("kind", "sever"), [("resid", None), ("mlp", None), ("attn", None), ("resid", "mlp"), ("resid", "attn")]
)
def test_restore_state_equals_the_trace_value(family, kind, sever):
    m = workbench.testing.tiny_model(family)
    tr = wb.causal_trace(m, PROMPT, subject=SUBJECT, kind=kind, sever=sever, **OPTS)
    L, T = tr.values.shape
    for layer, pos in [(0, 0), (0, 1), (L // 2, 2), (L - 1, T - 1)]:
        r = restore_state(m, tr, layer, pos)
        assert abs(r.value - float(tr.values[layer, pos])) < 1e-5, (layer, pos)
        assert abs(r.high - tr.high) < 1e-5 and abs(r.low - tr.low) < 1e-5
        assert r.top_probs.shape == (5,) and np.all(np.diff(r.top_probs) <= 1e-7)
        assert r.lens_ids.shape == (L,) and r.lens_probs.shape == (L,) and r.lens_target.shape == (L,)
        # the last layer's lens is the model's own output at the last position: its target prob is the value
        assert abs(float(r.lens_target[-1]) - r.value) < 1e-5
        assert int(r.lens_ids[-1]) == int(r.top_ids[0])
        expected = [layer] if kind == "resid" else list(wb.ops.tracing.window_layers(layer, 3, L))
        assert r.layers == expected


def test_restore_state_refuses_bad_cells(model):
    tr = wb.causal_trace(model, PROMPT, subject=SUBJECT, **OPTS)
    with pytest.raises(wb.WorkbenchError):
        restore_state(model, tr, model.n_layers, 0)
    with pytest.raises(wb.WorkbenchError):
        restore_state(model, tr, 0, -1)


def test_three_panels_are_the_three_traces(model, view):
    assert view.status == "done" and view.error == ""
    assert sorted(view.traces) == ["attn", "mlp", "resid"] and view.stale == []
    for kind in ("resid", "mlp", "attn"):
        ref = wb.causal_trace(model, PROMPT, subject=SUBJECT, kind=kind, **OPTS)
        p = view.traces[kind]
        assert p["values"]["dtype"] == "float32" and isinstance(p["values"]["data"], bytes)
        np.testing.assert_allclose(unpack(p["values"]), ref.values, atol=1e-6)
        assert p["labels"] == ref.labels and any(t.endswith("*") for t in p["labels"])
        assert p["subject"] == list(ref.subject) and p["target"] == ref.target
        assert abs(p["high"] - ref.high) < 1e-6 and abs(p["low"] - ref.low) < 1e-6
    code = view.to_code()
    assert code == view.code
    for title in ("hidden state (kind='resid')", "MLP (kind='mlp')", "attention (kind='attn')"):
        assert title in code
    assert "noise" in code and "model.trace" in code


def test_click_restores_one_state(view):
    tr = view._shown_result("mlp")
    view.request("restore", panel="mlp", layer=1, position=2)
    _idle(view)
    r = view.restored
    assert view.error == "" and r["kind"] == "mlp" and r["layer"] == 1 and r["position"] == 2
    assert abs(r["value"] - float(tr.values[1, 2])) < 1e-5
    assert len(r["top_tokens"]) == 5 and unpack(r["top_probs"]).shape == (5,)
    assert len(r["lens_tokens"]) == view.n_layers and unpack(r["lens_probs"]).shape == (view.n_layers,)
    assert r["layers"] == [0, 1, 2] and r["token"] == tr.labels[2]
    assert view.history[-1]["label"].startswith("restore MLP L1")


@pytest.mark.parametrize(
    "msg",
    [
        dict(panel="nope", layer=0, position=0),
        dict(panel="resid", layer=99, position=0),
        dict(panel="resid", layer=0, position=-1),
        dict(panel="resid", layer="x", position=0),
        dict(panel="resid", layer=0.5, position=0),
    ],
)
def test_bad_restore_requests_show_an_error_and_keep_the_result(view, msg):
    view.request("restore", panel="resid", layer=0, position=1)
    _idle(view)
    before = dict(view.restored)
    view.request("restore", **msg)
    _idle(view)
    assert view.status == "error" and view.error
    assert view.restored == before
    view.request("restore", panel="resid", layer=0, position=1)  # the next good click works
    _idle(view)
    assert view.status == "done" and view.error == ""


def test_sever_reruns_only_the_hidden_state_and_window_only_mlp_attn(model, monkeypatch):
    v = CausalTraceView(model, PROMPT, subject=SUBJECT, **OPTS)
    calls = []
    real = workbench.ops.causal_trace

    def counting(*a, **k):
        calls.append((k["kind"], k["sever"], k["window"]))
        return real(*a, **k)

    monkeypatch.setattr(workbench.ops, "causal_trace", counting)
    v.sever = "mlp"
    _idle(v)
    assert calls == [("resid", "mlp", 3)]
    assert v.traces["resid"]["settings"]["sever"] == "mlp" and v.stale == []
    ref = real(model, PROMPT, subject=SUBJECT, kind="resid", sever="mlp", **OPTS)
    np.testing.assert_allclose(unpack(v.traces["resid"]["values"]), ref.values, atol=1e-6)
    calls.clear()
    v.window = 1
    _idle(v)
    assert sorted(c[0] for c in calls) == ["attn", "mlp"]
    calls.clear()
    v.sever = ""  # back to a cached setting: nothing runs
    v.window = 3
    _idle(v)
    assert calls == [] and v.stale == [] and v.status != "running"
    v.request("restore", panel="resid", layer=1, position=3)
    _idle(v)
    assert v.restored["sever"] == ""


def test_bad_settings_show_an_error_and_keep_the_panels(view):
    shown = {k: bytes(p["values"]["data"]) for k, p in view.traces.items()}
    view.subject = "Nowhere Tower"
    _idle(view)
    assert view.status == "error" and "not in the prompt" in view.error
    assert "back to the settings shown" in view.error and view.subject == SUBJECT
    assert {k: bytes(p["values"]["data"]) for k, p in view.traces.items()} == shown and view.stale == []
    view.samples = 0
    _idle(view)
    assert view.status == "error" and "samples" in view.error and view.samples == OPTS["samples"]
    view.noise = -1.0
    _idle(view)
    assert view.status == "error" and view.noise == 3.0
    view.request("restore", panel="attn", layer=0, position=0)
    _idle(view)
    assert view.status == "done" and view.error == ""


def test_cancel_stops_the_rest_and_keeps_what_finished(model, monkeypatch):
    started = threading.Event()
    real = workbench.ops.causal_trace

    def slow_mlp(*a, **k):
        if k["kind"] == "mlp":
            started.set()
            cancel = k["cancel"]
            while not cancel.wait(0.01):
                pass
            raise wb.CancelledError("cancelled")
        return real(*a, **k)

    monkeypatch.setattr(workbench.ops, "causal_trace", slow_mlp)
    v = CausalTraceView(model, PROMPT, subject=SUBJECT, wait=False, **OPTS)
    assert started.wait(60)
    assert v.status == "running" and "MLP 2/3" in v.progress_text
    v.cancel()
    _idle(v)
    assert v.status == "idle" and v.progress_text == "cancelled" and v.error == ""
    assert list(v.traces) == ["resid"]
    monkeypatch.setattr(workbench.ops, "causal_trace", real)
    v.recompute()
    _idle(v)
    assert sorted(v.traces) == ["attn", "mlp", "resid"] and v.status == "done"


def test_constructor_errors(model):
    with pytest.raises(wb.WorkbenchError, match="subject="):
        CausalTraceView(model, PROMPT)
    with pytest.raises(wb.WorkbenchError, match="sever"):
        CausalTraceView(model, PROMPT, subject=SUBJECT, sever="both")
    v = CausalTraceView(model, PROMPT, subject="Mars")  # not in the prompt: shown in the view, not raised
    _idle(v)
    assert v.status == "error" and "not in the prompt" in v.error and v.traces == {}


def test_over_a_dataset_group_means_and_an_example(model):
    ds = wb.datasets.facts()[:3]
    v = CausalTraceView(model, ds, samples=2, window=3)
    _idle(v)
    assert v.status == "done" and v.dataset["n"] == 3
    ref = wb.causal_trace(model, ds, kind="mlp", samples=2, window=3)
    p = v.traces["mlp"]
    assert p["grouped"] and p["labels"] == list(ref.groups) and p["n"] == 3
    np.testing.assert_allclose(unpack(p["values"]), ref.values, atol=1e-6, equal_nan=True)
    assert unpack(p["sem"]).shape == (model.n_layers, 6)
    v.request("restore", panel="mlp", layer=0, position=0)  # a group mean cannot be restored
    _idle(v)
    assert v.status == "error" and "Open an example" in v.error
    v.open_example(1)
    p = v.traces["mlp"]
    assert not p["grouped"]
    np.testing.assert_allclose(unpack(p["values"]), ref.per_example[1].values, atol=1e-6)
    v.request("restore", panel="mlp", layer=1, position=2)
    _idle(v)
    assert v.error == "" and abs(v.restored["value"] - float(ref.per_example[1].values[1, 2])) < 1e-5
    code = v.to_code()  # the code of the grids shown: fact 1's own traces
    assert code == v.code and code.count("# ---- ") == 3
    assert repr(ds[1].clean) in code
    with pytest.raises(wb.WorkbenchError):
        v.open_example(99)
    assert v.example == 1 and v.status == "error"
    v.open_example(-1)
    assert v.traces["mlp"]["grouped"] and v.restored == {}
