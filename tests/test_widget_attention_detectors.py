"""AttentionView's detector colouring in the kernel: picking a detector computes wb.head_detectors once and sends
the chosen detector's [L, H] scores and top heads; a bad name or a failure shows in the view and resets the
selector."""

from __future__ import annotations

import numpy as np

import workbench as wb
from tests.conftest import assert_close, tiny
from workbench.widgets import AttentionView
from workbench.widgets.base import unpack

PROMPT = "The cat sat on the mat and the cat sat"


def test_pick_detectors():
    model = tiny("llama")
    want = wb.head_detectors(model)
    av = AttentionView(model, PROMPT)
    assert av.detector == "" and av.detector_scores == {}
    av.show_detector("induction").wait()
    got = av.detector_scores
    assert got["name"] == "induction" and av.status == "done"
    assert_close(unpack(got["scores"]), want["induction"], what="scores")
    assert [(layer, head) for layer, head, _ in got["top"]] == [lh for lh, _ in want.top("induction", 10)]
    assert "repeated random tokens" in got["source"]
    computed = av._detectors
    av.detector = "previous-token"
    av.wait()
    assert av._detectors is computed, "the scores are computed once"
    assert av.detector_scores["name"] == "previous_token"
    assert_close(unpack(av.detector_scores["scores"]), want["previous_token"])
    av.detector = ""
    assert av.detector_scores == {}


def test_constructor_detector_and_bad_name():
    model = tiny("gpt2")
    av = AttentionView(model, PROMPT, detector="duplicate_token")
    assert av.detector_scores["name"] == "duplicate_token"
    av.detector = "copying"
    assert av.detector == "duplicate_token", "the selector goes back"
    assert av.status == "error" and "Unknown head detector 'copying'" in av.error


def test_failure_shows_and_resets(monkeypatch):
    model = tiny("llama")
    av = AttentionView(model, PROMPT)

    def boom(*a, **k):
        raise wb.WorkbenchError("no detectors today")

    monkeypatch.setattr(wb.ops, "head_detectors", boom)
    av.detector = "induction"
    av.wait()
    assert av.status == "error" and "no detectors today" in av.error and "back to none" in av.error
    assert av.detector == "" and av.detector_scores == {}
    assert np.isfinite(unpack(av.thumbs)).all()
