"""Issue 15's view: LensView's lens switcher (logit / tuned / patchscope / future) over one grid, the editable
patchscope target prompt, and the "generate" button (the generation lens as a strip, the grid extended over the
generated positions), with bad input, progress and cancel.

`wb.tuned_lens` and `wb.future_lens` were not on main when this was written: the tuned and future modes are
tested here with STAND-INS of their contracts' shape (`StandInTunedLens` with a `wb.logit_lens` that takes
`lens=`, and `stand_in_future_lens` returning a `StandInFutureLensResult`), monkeypatched into `workbench.ops`.
They check the view's wiring, not the science of those lenses; the last tests run the real ops (now merged)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import workbench as wb
import workbench.ops
import workbench.testing
from workbench.widgets import LensView, unpack
from workbench.widgets.base import Job
from workbench.widgets.lens import IDENTITY_PROMPT, NO_TUNED

CLEAN = "When Mary and John went to the store, John gave a drink to"
TARGET = "x -> x\ny -> y\n?"


@pytest.fixture(scope="module")
def model():
    return workbench.testing.tiny_model("llama")


def test_the_default_target_prompt_is_patchscope_s():
    import importlib
    import inspect

    ps_module = importlib.import_module("workbench.ops.patchscope")

    assert IDENTITY_PROMPT == ps_module.IDENTITY_PROMPT
    assert inspect.signature(ps_module.patchscope).parameters["target_prompt"].default == IDENTITY_PROMPT


# ----------------------------------------------------------------------------- stand-ins (tuned / future)


class StandInTunedLens:
    """STAND-IN for wb.tuned_lens(model)'s TunedLens (not on main yet): identity translators, so its read-out
    is the logit lens (the issue's own property of an identity tuned lens)."""

    def __init__(self, model_name: str = "tiny"):
        self.model_name = model_name


@pytest.fixture
def tuned_stand_in(monkeypatch):
    """A `wb.logit_lens` that takes `lens=` (the tuned branch's contract); it records the lens it was given."""
    real = workbench.ops.logit_lens
    calls: list = []

    def logit_lens(model, prompt, *, lens=None, **kwargs):
        calls.append(lens)
        if isinstance(lens, StandInTunedLens) and lens.model_name != "tiny":
            raise wb.WorkbenchError(f"This tuned lens was trained for {lens.model_name!r}, not this model.")
        return real(model, prompt, **kwargs)

    monkeypatch.setattr(workbench.ops, "logit_lens", logit_lens)
    return calls


class StandInFutureLensResult:
    """STAND-IN for wb.future_lens's FutureLensResult (not on main yet), of the contract's shape:
    .top_ids [L, T, n_future, k], .top_tokens, .predicted [L][T] -> n_future strings, .accuracy [L, n_future]."""

    def __init__(self, model, prompt, n_future, method):
        lens = wb.logit_lens(model, prompt, top_k=3, progress=False)
        n_layers, n_tokens, k = lens.top_ids.shape
        # made-up predictions for t+1..t+n: the lens's top-k shifted by the step (a shape, not a science)
        self.top_ids = np.stack([(lens.top_ids + j) for j in range(n_future)], axis=2).astype(np.int32)
        self.top_probs = np.stack([lens.top_probs / (j + 1) for j in range(n_future)], axis=2)
        self.top_tokens = [
            [
                [model.str_tokens(self.top_ids[lyr, t, j].tolist()) for j in range(n_future)]
                for t in range(n_tokens)
            ]
            for lyr in range(n_layers)
        ]
        self.predicted = [[[cell[j][0] for j in range(n_future)] for cell in row] for row in self.top_tokens]
        self.accuracy = np.linspace(0, 1, n_layers * n_future, dtype=np.float32).reshape(n_layers, n_future)
        self.tokens = lens.tokens
        self.options = {"op": "future_lens", "prompt": prompt, "n_future": n_future, "method": method}

    def to_code(self) -> str:
        return f"# stand-in future lens n_future={self.options['n_future']}\n"


@pytest.fixture
def future_stand_in(monkeypatch):
    calls: list = []

    def future_lens(model, prompt, n_future=3, method="fixed", context=None, *, progress=None, cancel=None):
        if n_future < 1:
            raise wb.WorkbenchError(f"n_future={n_future}: give 1 or more.")
        calls.append((prompt, n_future, method))
        return StandInFutureLensResult(model, prompt, n_future, method)

    monkeypatch.setattr(workbench.ops, "future_lens", future_lens, raising=False)
    return calls


def _ids(view):
    return unpack(view.data["top_ids"])


# ----------------------------------------------------------------------------- switching


def test_switching_lenses_keeps_pins_and_shows_each_lens_s_grid(model):
    lv = LensView(model, CLEAN, pinned=[" Mary"])
    lv.selected = [1, 3]
    logit_ids = _ids(lv).copy()
    assert lv.data["lens"] == "logit" and lv.lenses["logit"] == lv.lenses["patchscope"] == ""
    lv.lens = "patchscope"
    lv.wait()
    assert lv.status == "done" and lv.error == ""
    ps = wb.patchscope(model, CLEAN, top_k=5, progress=False)
    np.testing.assert_array_equal(_ids(lv), ps.top_ids)
    np.testing.assert_allclose(unpack(lv.data["top_probs"]), ps.top_probs, atol=1e-5)
    assert lv.data["lens"] == "patchscope" and lv.data["target_prompt"] == IDENTITY_PROMPT
    # the pins, the selection and the colour mode are the same grid's
    assert lv.pinned == [" Mary"] and list(lv.data["pinned"]) == [" Mary"] and lv.selected == [1, 3]
    np.testing.assert_allclose(unpack(lv.data["pinned"][" Mary"]["prob"]), ps.prob(" Mary"), atol=1e-5)
    assert type(lv.last_result).__name__ == "PatchscopeResult"
    assert "patchscope" in lv.to_code().lower() or "target" in lv.to_code()
    assert lv.code == lv.to_code()
    # back to logit: the kept grid is shown at once (no new run) and the code is the logit lens's again
    n_hist = len(lv.history)
    lv.lens = "logit"
    assert lv.status == "done" and lv.data["lens"] == "logit" and len(lv.history) == n_hist
    np.testing.assert_array_equal(_ids(lv), logit_ids)
    assert type(lv.last_result).__name__ == "LensResult" and lv.code == lv.to_code()
    assert [e["args"]["lens"] for e in lv.history] == ["logit", "patchscope"]


def test_patchscope_target_prompt_edit_reruns_and_bad_one_keeps_the_grid(model):
    lv = LensView(model, CLEAN, lens="patchscope", pinned=[" Mary"])
    assert lv.data["lens"] == "patchscope"
    lv.target_prompt = TARGET
    lv.wait()
    assert lv.status == "done" and lv.data["target_prompt"] == TARGET
    np.testing.assert_array_equal(
        _ids(lv), wb.patchscope(model, CLEAN, target_prompt=TARGET, progress=False).top_ids
    )
    shown = dict(lv.data)
    for bad in ["   ", ""]:
        lv.target_prompt = bad
        lv.wait()
        assert lv.status == "error" and "target_prompt" in lv.error, lv.error
        assert "back to the one shown" in lv.error
        assert lv.target_prompt == TARGET and lv.data == shown  # the earlier grid stays, the box describes it
    # fixed again: the error goes
    lv.target_prompt = IDENTITY_PROMPT
    lv.wait()
    assert lv.status == "done" and lv.error == "" and lv.data["target_prompt"] == IDENTITY_PROMPT


def test_switching_to_patchscope_with_a_bad_target_stays_on_the_lens_shown(model):
    lv = LensView(model, CLEAN)
    lv.target_prompt = "\n"  # kept for when patchscope is shown: no run in the logit lens
    assert lv.status == "done"
    lv.lens = "patchscope"
    lv.wait()
    assert lv.status == "error" and "target_prompt" in lv.error
    assert lv.lens == "logit" and lv.data["lens"] == "logit"
    assert "The lens is back to the one shown: 'logit'" in lv.error


def test_unknown_lens_and_bad_settings_are_refused(model):
    with pytest.raises(wb.WorkbenchError, match="not a lens"):
        LensView(model, CLEAN, lens="psychic")
    with pytest.raises(wb.WorkbenchError, match="n_future"):
        LensView(model, CLEAN, n_future=0)
    with pytest.raises(wb.WorkbenchError, match="max_new_tokens"):
        LensView(model, CLEAN, max_new_tokens=0)
    lv = LensView(model, CLEAN)
    lv.lens = "psychic"
    assert lv.lens == "logit" and lv.status == "error" and "not a lens" in lv.error
    lv.n_future = 0
    assert lv.n_future == 3 and "n_future" in lv.error


# ----------------------------------------------------------------------------- tuned


def test_tuned_without_a_lens_is_offered_disabled_saying_how_to_get_one(model):
    lv = LensView(model, CLEAN)
    assert lv.lenses["tuned"] == NO_TUNED
    assert "wb.tuned_lens(model)" in NO_TUNED and "tuned=" in NO_TUNED
    lv.lens = "tuned"
    assert lv.lens == "logit" and lv.status == "error" and "wb.tuned_lens(model)" in lv.error
    with pytest.raises(wb.WorkbenchError, match="tuned_lens"):
        LensView(model, CLEAN, lens="tuned")


def test_tuned_lens_stand_in_is_read_through_logit_lens_lens_tl(model, tuned_stand_in):
    tl = StandInTunedLens()
    lv = LensView(model, CLEAN, tuned=tl, pinned=[" Mary"])
    assert lv.lenses["tuned"] == "" and lv.tuned is tl
    lv.lens = "tuned"
    lv.wait()
    assert lv.status == "done" and lv.data["lens"] == "tuned" and tuned_stand_in[-1] is tl
    # identity translators: the tuned read-out is the logit lens
    np.testing.assert_array_equal(_ids(lv), wb.logit_lens(model, CLEAN, progress=False).top_ids)
    assert lv.pinned == [" Mary"]
    # a lens given as lens= is the tuned lens
    lv2 = LensView(model, CLEAN, lens=tl)
    assert lv2.lens == "tuned" and lv2.tuned is tl and lv2.data["lens"] == "tuned"
    # a lens for another model: its error shows, the view goes back to the lens shown
    lv.lens = "logit"
    lv.tuned = StandInTunedLens("gpt2")
    lv.lens = "tuned"
    lv.wait()
    assert lv.status == "error" and "trained for 'gpt2'" in lv.error and lv.lens == "logit"
    # taking the lens away disables the option again (and leaves the tuned lens if it was shown)
    lv2.tuned = None
    assert lv2.lens == "logit" and lv2.lenses["tuned"] == NO_TUNED


# ----------------------------------------------------------------------------- future


def test_future_lens_stand_in_cells_show_the_next_tokens(model, future_stand_in):
    lv = LensView(model, CLEAN, pinned=[" Mary"])
    assert lv.lenses["future"] == ""
    lv.lens = "future"
    lv.wait()
    assert lv.status == "done" and lv.data["lens"] == "future", lv.error
    fut = lv.data["future"]
    ids = unpack(fut["ids"])
    L, T = model.n_layers, len(lv.data["tokens"])
    assert ids.shape == (L, T, 3) and fut["n"] == 3 and unpack(fut["accuracy"]).shape == (L, 3)
    ref = StandInFutureLensResult(model, CLEAN, 3, "fixed")
    np.testing.assert_array_equal(ids, ref.top_ids[..., 0])
    # every predicted string has its text in id_text (the view shows .predicted through it)
    for lyr in (0, L - 1):
        for t in (0, T - 1):
            assert [lv.data["id_text"][str(i)] for i in ids[lyr, t]] == ref.predicted[lyr][t]
    assert lv.pinned == [" Mary"] and lv.data["pinned"] == {}  # pins kept, not followed by this lens
    assert lv.to_code().startswith("# stand-in future lens n_future=3")
    # the n_future control re-runs; pins do not (Future Lens does not read them)
    lv.n_future = 2
    lv.wait()
    assert unpack(lv.data["future"]["ids"]).shape == (L, T, 2) and future_stand_in[-1] == (CLEAN, 2, "fixed")
    runs = len(future_stand_in)
    lv.pinned = [" Mary", " John"]
    lv.wait()
    assert len(future_stand_in) == runs and lv.data["lens"] == "future"
    lv.future_method = "learned"
    lv.wait()
    assert future_stand_in[-1] == (CLEAN, 2, "learned") and lv.data["future"]["method"] == "learned"
    lv.future_method = "psychic"
    assert lv.future_method == "learned" and "future_method" in lv.error


def test_future_lens_missing_is_offered_disabled(model, monkeypatch):
    monkeypatch.delattr(workbench.ops, "future_lens", raising=False)
    lv = LensView(model, CLEAN)
    assert "future_lens" in lv.lenses["future"]
    lv.lens = "future"
    assert lv.lens == "logit" and lv.status == "error"


# ----------------------------------------------------------------------------- generate


def test_generate_shows_the_strip_and_extends_the_grid(model):
    lv = LensView(model, CLEAN)
    n_prompt = len(lv.data["tokens"])
    lv.generate(4)
    lv.wait()
    assert lv.status == "done" and lv.error == ""
    g = wb.generation_lens(model, CLEAN, 4, progress=False)
    gen = lv.generation
    assert gen["tokens"] == g.tokens and gen["n_prompt"] == n_prompt and gen["n_layers"] == model.n_layers
    np.testing.assert_array_equal(unpack(gen["commit_layer"]), g.commit_layer)
    np.testing.assert_array_equal(unpack(gen["confident_layer"]), g.confident_layer)
    np.testing.assert_allclose(unpack(gen["prob"]), g.prob, atol=1e-5)
    # the grid: the logit lens over prompt + generated
    assert lv.data["lens"] == "logit" and lv.data["generated_from"] == n_prompt
    assert len(lv.data["tokens"]) == n_prompt + len(g.tokens) == len(g.lens.tokens)
    np.testing.assert_array_equal(_ids(lv), g.lens.top_ids)
    assert lv.generation_result is lv.last_result and lv.to_code() == g.to_code() == lv.code
    assert lv.max_new_tokens == 4
    # from the view: a "generate" request; a bad count is refused and the strip stays
    lv.request("generate", max_new_tokens=2)
    lv.wait()
    assert len(lv.generation["tokens"]) <= 2 and lv.status == "done"
    kept = dict(lv.generation)
    lv.request("generate", max_new_tokens=0)
    assert lv.status == "error" and "max_new_tokens" in lv.error and lv.generation == kept
    lv.request("generate", max_new_tokens="many")
    assert lv.status == "error" and lv.generation == kept
    # a new prompt drops the generation (it belongs to its prompt)
    lv.prompt = "The cat sat"
    lv.wait()
    assert lv.generation == {} and lv.generation_result is None and "generated_from" not in lv.data


def test_generate_from_patchscope_switches_to_the_extended_logit_grid(model):
    lv = LensView(model, CLEAN, lens="patchscope", target_prompt=TARGET)
    lv.generate(3)
    lv.wait()
    assert lv.lens == "logit" and lv.data["lens"] == "logit" and "generated_from" in lv.data
    # patchscope again: its kept grid (prompt positions only), the strip stays
    lv.lens = "patchscope"
    assert lv.data["lens"] == "patchscope" and lv.data["target_prompt"] == TARGET and lv.generation
    assert len(lv.data["tokens"]) == lv.generation["n_prompt"]
    # and back: the extended grid is kept too
    lv.lens = "logit"
    assert lv.data["generated_from"] == lv.generation["n_prompt"]


def test_a_generation_that_fails_or_is_too_long_keeps_earlier_results(model):
    lv = LensView(model, CLEAN)
    lv.generate(2).wait()
    kept, data = dict(lv.generation), dict(lv.data)
    lv.generate(model.n_ctx)  # too long for the context: the op says so
    lv.wait()
    assert lv.status == "error" and "context" in lv.error
    assert lv.generation == kept and lv.data == data


def _blocker(view, gate):
    return Job(view, "block", "b", lambda p, c: gate.wait(10), lambda r: None, "block")


def test_cancel_a_running_and_a_queued_generation(model, monkeypatch):
    lv = LensView(model, CLEAN)
    lv.generate(2).wait()
    kept, data = dict(lv.generation), dict(lv.data)
    real = workbench.ops.generation_lens
    steps = []

    def slow_generation_lens(*args, progress=None, cancel=None, **kwargs):  # a long generation, cancellable
        for i in range(200):
            progress(i / 200, f"token {i}")
            steps.append(i)
            if cancel.is_set():
                raise wb.CancelledError("cancelled")
            time.sleep(0.01)
        return real(*args, progress=progress, cancel=cancel, **kwargs)

    monkeypatch.setattr(workbench.ops, "generation_lens", slow_generation_lens)
    lv.generate(5)
    time.sleep(0.2)
    assert lv.status == "running" and lv.progress > 0
    lv.cancel()
    lv.wait()
    assert lv.status == "idle" and lv.progress_text == "cancelled" and len(steps) < 200
    assert lv.generation == kept and lv.data == data  # nothing lost
    # queued behind another job, then cancelled: never stuck "running"
    gate = threading.Event()
    lv.runner.submit(_blocker(LensView(model, "x"), gate))
    lv.generate(3)
    assert lv.status == "running"
    lv.cancel()
    assert lv.status == "idle"
    gate.set()
    lv.wait()
    assert lv.generation == kept
    # the kernel is usable afterwards
    monkeypatch.setattr(workbench.ops, "generation_lens", real)
    lv.generate(1).wait()
    assert lv.status == "done" and len(lv.generation["tokens"]) == 1


def test_a_failed_lens_run_with_a_newer_request_queued_does_not_revert_it(model, monkeypatch):
    lv = LensView(model, CLEAN, lens="patchscope")
    real = workbench.ops.patchscope
    gate = threading.Event()

    def gated_patchscope(*args, **kwargs):  # the first run waits until the newer request is queued
        gate.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(workbench.ops, "patchscope", gated_patchscope)
    lv.target_prompt = " "  # runs (waiting at the gate) and then fails
    time.sleep(0.1)
    lv.target_prompt = TARGET  # queued behind it
    gate.set()
    lv.wait()
    assert lv.target_prompt == TARGET and lv.data["target_prompt"] == TARGET
    assert lv.status == "done" and lv.error == ""


def test_over_a_dataset_only_the_logit_lens(model):
    ds = wb.Dataset([CLEAN, "When Anna and Tom went to the park, Tom gave a ball to"], target=" Mary")
    with pytest.raises(wb.WorkbenchError, match="open an example"):
        LensView(model, ds, lens="patchscope")
    lv = LensView(model, ds)
    lv.lens = "patchscope"
    assert lv.lens == "logit" and "open an example" in lv.error
    with pytest.raises(wb.WorkbenchError, match="open an example"):
        lv.generate(2)
    lv.open_example(0)
    lv.wait()
    lv.lens = "patchscope"
    lv.wait()
    assert lv.data["lens"] == "patchscope" and lv.status == "done"


# ----------------------------------------------------------------------------- the real tuned / future ops


def test_tuned_mode_with_the_real_tuned_lens(model):
    """The real wb.TunedLens: an identity lens reads as the logit lens; a trained one as logit_lens(lens=)."""
    lv = LensView(model, CLEAN, tuned=wb.TunedLens.identity(model))
    lv.lens = "tuned"
    lv.wait()
    assert lv.status == "done" and lv.data["lens"] == "tuned", lv.error
    np.testing.assert_array_equal(_ids(lv), wb.logit_lens(model, CLEAN, progress=False).top_ids)
    trained = wb.tuned_lens(model, texts=[CLEAN, "The Eiffel Tower is in Paris."], steps=3, progress=False)
    lv.tuned = trained
    lv.wait()
    want = wb.logit_lens(model, CLEAN, lens=trained, progress=False)
    np.testing.assert_array_equal(_ids(lv), want.top_ids)
    np.testing.assert_allclose(unpack(lv.data["top_probs"]), want.top_probs, atol=1e-6)


def test_future_mode_with_the_real_future_lens(model):
    lv = LensView(model, CLEAN)
    lv.lens = "future"
    lv.wait()
    assert lv.status == "done" and lv.data["lens"] == "future", lv.error
    want = wb.future_lens(model, CLEAN, n_future=3, progress=False)
    np.testing.assert_array_equal(unpack(lv.data["future"]["ids"]), want.top_ids[..., 0])
    np.testing.assert_allclose(unpack(lv.data["future"]["accuracy"]), want.accuracy, atol=1e-6)
