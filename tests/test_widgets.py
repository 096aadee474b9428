"""Widget logic on tiny models: a click becomes one engine call whose result crosses as binary buffers."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

import workbench as wb
import workbench.testing
from workbench.widgets import AttentionView, LensView, PatchView, Workbench, pack, unpack
from workbench.widgets.attention import thumbnails
from workbench.widgets.base import Job, Runner, WorkbenchWidget, html_from_state

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


@pytest.fixture(scope="module")
def model():
    return workbench.testing.tiny_model("llama")


def test_pack_roundtrip_and_dtypes():
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    p = pack(a)
    assert p["dtype"] == "float32" and p["shape"] == [2, 3] and isinstance(p["data"], bytes)
    np.testing.assert_array_equal(unpack(p), a.astype(np.float32))
    q = pack(np.array([[1, 2]], dtype=np.int64))
    assert q["dtype"] == "int32" and unpack(q).dtype == np.int32
    with pytest.raises(TypeError):
        pack(np.array(["x"]))


def test_lens_view_sends_top_k_only(model):
    lv = LensView(model, CLEAN)
    assert lv.status == "done" and lv.error == ""
    d = lv.data
    L, T = model.n_layers, len(model.to_str_tokens(CLEAN))
    assert d["top_ids"]["shape"] == [L, T, 5] and d["top_ids"]["dtype"] == "int32"
    assert d["top_probs"]["dtype"] == "float32" and isinstance(d["top_probs"]["data"], bytes)
    ref = wb.logit_lens(model, CLEAN)
    np.testing.assert_array_equal(unpack(d["top_ids"]), ref.top_ids)
    assert list(d["pinned"]) == [ref.top_tokens[-1][-1][0]]  # follows the prediction by default
    assert set(d["id_text"]) == {str(i) for i in np.unique(ref.top_ids)}  # never the whole vocabulary
    assert "data" not in json.dumps({k: v for k, v in d.items() if k == "id_text"})


def test_lens_view_recomputes_on_prompt_and_pins(model):
    lv = LensView(model, CLEAN)
    lv.prompt = CORRUPT
    lv.wait()
    assert lv.data["tokens"] == model.to_str_tokens(CORRUPT)
    lv.pinned = [" Mary", " John"]
    lv.wait()
    assert set(lv.data["pinned"]) == {" Mary", " John"}
    np.testing.assert_allclose(
        unpack(lv.data["pinned"][" John"]["prob"]),
        wb.logit_lens(model, CORRUPT).prob(" John"),
        rtol=1e-5,
        atol=1e-6,
    )


def test_patch_click_matches_the_engine(model):
    pv = PatchView(model, CLEAN, CORRUPT, target=" Mary", foil=" John")
    assert pv.tokens_clean == model.to_str_tokens(CLEAN)
    pv.click(1, 9).wait()
    assert pv.status == "done", pv.error
    want = wb.patch(
        model, CLEAN, CORRUPT, metric=wb.logit_diff(" Mary", " John"), site="resid_pre", layer=1, position=9
    )
    assert pv.result["value"] == pytest.approx(float(want), rel=1e-5)
    assert pv.result["top_tokens"] == want.top_tokens
    assert pv.result["cell"] == [1, 9]
    assert pv.result["lens"]["top_ids"]["shape"][0] == model.n_layers
    assert pv.history[-1]["label"].startswith("patch resid_pre L1 pos 9")
    assert "trace" in pv.to_code() or "nnsight" in pv.to_code()


def test_patch_heads_ablate_and_sweep(model):
    pv = PatchView(model, CLEAN, CORRUPT, target=" Mary", foil=" John", site="head")
    pv.click(2, 3).wait()
    assert pv.status == "done", pv.error
    assert pv.result["head"] == 3 and pv.result["position"] is None
    pv.run_sweep().wait()
    assert pv.sweep["values"]["shape"] == [model.n_layers, model.n_heads]
    ref = wb.patch_sweep(model, CLEAN, CORRUPT, metric=wb.logit_diff(" Mary", " John"), site="head")
    np.testing.assert_allclose(unpack(pv.sweep["values"]), ref.values, rtol=1e-4, atol=1e-5)
    pv.mode, pv.site = "ablate", "mlp_out"
    pv.click(0, 2).wait()
    assert pv.result["label"].startswith("zero-ablate mlp_out L0 pos 2"), pv.error


def test_click_error_is_readable_in_the_widget(model):
    pv = PatchView(model, CLEAN, CORRUPT, target="Mary and John")
    pv.click(0, 0).wait()
    assert pv.status == "error"
    assert pv.error.startswith("TokenizationError") and "one token" in pv.error
    pv.request("no_such_kind")
    assert "Unknown request" in pv.error


def test_cancel_before_start_leaves_kernel_usable(model):
    pv = PatchView(model, CLEAN, CORRUPT, target=" Mary", foil=" John")
    gate = threading.Event()
    # occupy the worker, queue a sweep, cancel it before it runs
    blocker = Job(pv, "block", "b", lambda p, c: gate.wait(5), lambda r: None, "block")
    pv.runner.submit(blocker)
    pv.run_sweep()
    pv.cancel()
    gate.set()
    pv.wait()
    assert pv.sweep == {}
    pv.click(0, 1).wait()
    assert pv.status == "done"


def test_cancel_during_sweep(model):
    pv = PatchView(model, CLEAN, CORRUPT, target=" Mary", foil=" John")
    seen = []

    def slow(progress, cancel):
        for i in range(50):
            progress(i / 50, f"chunk {i}")
            seen.append(i)
            if cancel.is_set():
                raise wb.CancelledError("cancelled")
            time.sleep(0.01)

    def nan_first(progress, cancel):
        progress(float("nan"), "remote status")
        return slow(progress, cancel)

    pv.submit("sweep", "s1", nan_first, lambda r: None, slot="sweep")
    time.sleep(0.1)
    pv.cancel()
    pv.wait()
    assert pv.status == "idle" and pv.progress_text == "cancelled" and len(seen) < 50


def test_runner_never_interleaves_and_replaces_pending():
    class M:
        lock = threading.RLock()

    runner = Runner(M())
    log: list[str] = []

    class Owner:
        def _execute(self, job):
            log.append(f"start {job.request_id}")
            time.sleep(0.05)
            log.append(f"end {job.request_id}")

        def _superseded(self, job):
            log.append(f"superseded {job.request_id}")

    o = Owner()
    runner.submit(Job(o, "patch", "a", None, None, "click"))
    while runner.current is None:
        time.sleep(0.001)
    for rid in ("b", "c"):  # a second click while one runs is queued; a third replaces it
        runner.submit(Job(o, "patch", rid, None, None, "click"))
    assert runner.wait_idle(5)
    assert log == ["start a", "superseded b", "end a", "start c", "end c"]


def test_attention_view_thumbnails_and_head(model):
    av = AttentionView(model, CLEAN)
    T = len(model.to_str_tokens(CLEAN))
    assert av.thumbs["shape"] == [model.n_layers, model.n_heads, min(T, 16), min(T, 16)]
    av.open_head(1, 2)
    pat = unpack(av.pattern["data"])
    ref = wb.attention(model, CLEAN).patterns[1, 2]
    np.testing.assert_allclose(pat, ref, rtol=1e-5, atol=1e-6)
    av.open_head(99, 0)
    assert av.status == "error" and "SiteError" in av.error
    big = np.random.rand(2, 3, 40, 40).astype(np.float32)
    th = thumbnails(big)
    assert th.shape == (2, 3, 16, 16) and th.max() == pytest.approx(big.max())


def test_workbench_shares_prompt(model):
    w = Workbench(model, CLEAN)
    assert [type(v).__name__ for v in w.views] == ["LensView", "PatchView", "AttentionView"]
    w.lens.prompt = CORRUPT
    assert w.attention.prompt == CORRUPT and w.patch.clean == CORRUPT
    w.lens.wait()
    assert w.attention.tokens == model.to_str_tokens(CORRUPT)


def test_standalone_html_escapes_and_embeds(model):
    lv = LensView(model, "x </script><img src=x onerror=alert(1)>")
    html = lv.to_html()
    assert html.count("</script>") == 3  # only our own three script elements close
    assert "<!--" not in html
    assert '"__b64__"' in html and "StaticModel" in html
    page = html_from_state({"_view_kind": "lens", "data": {"a": pack(np.zeros(2))}})
    assert "wb-root" in page


def test_echo_and_sync_tags():
    t = WorkbenchWidget.class_traits()
    assert t["selected"].metadata.get("echo_update") is False
    assert LensView.class_traits()["hover"].metadata.get("echo_update") is False


@pytest.mark.parametrize("method", ["mean", "resample"])
def test_ablate_methods_match_the_engine(model, method):
    pv = PatchView(
        model, CLEAN, CORRUPT, target=" Mary", foil=" John", mode="ablate", method=method, site="attn_out"
    )
    pv.click(1, 4).wait()
    assert pv.status == "done", pv.error
    ref = wb.ablate(
        model,
        CLEAN,
        metric=wb.logit_diff(" Mary", " John"),
        site="attn_out",
        layer=1,
        position=4,
        method=method,
        reference=CORRUPT,
    )
    assert pv.result["value"] == pytest.approx(float(ref), rel=1e-5, abs=1e-6)
    assert pv.result["label"].startswith(f"{method}-ablate attn_out L1 pos 4")


# --------------------------------------------------------------------------- issue 10: views and widget plumbing


def _blocker(owner, gate):
    """A job that holds the model's worker until `gate` is set."""
    return Job(owner, "block", "b", lambda p, c: gate.wait(10), lambda r: None, "block")


def _sent(view):
    """Record what the widget sends to the front end."""
    out: list[dict] = []
    view.send = lambda content, buffers=None: out.append(content)
    return out


def test_cancel_a_queued_job_ends_the_running_state(model):
    pv = PatchView(model, CLEAN, CORRUPT, target=" Mary", foil=" John")
    other = LensView(model, CLEAN)
    gate = threading.Event()
    pv.runner.submit(_blocker(other, gate))  # another view's job occupies the worker
    pv.run_sweep()
    assert pv.status == "running" and pv.progress_text == "queued"
    pv.cancel()
    assert pv.status == "idle" and pv.progress_text == "cancelled"  # not "running"/"queued" forever
    gate.set()
    pv.wait()
    assert pv.sweep == {} and pv.status == "idle"
    pv.click(0, 1).wait()
    assert pv.status == "done"


def test_a_model_used_by_views_is_freed_after_del(monkeypatch):
    import gc
    import weakref

    from workbench.widgets import base

    monkeypatch.setattr(base, "RUNNER_IDLE_EXIT", 0.2)
    refs = []
    for _ in range(3):  # as re-running `model = wb.load()` and its view cells in a notebook does
        m = workbench.testing.tiny_model("llama")
        refs.append(weakref.ref(m))
        lv = LensView(m, CLEAN)
        lv.prompt = CORRUPT  # runs on the model's worker thread
        lv.wait()
        pv = PatchView(m, CLEAN, CORRUPT, target=" Mary", foil=" John")
        pv.click(1, 3).wait()
        pv.run_sweep().wait()
        assert pv.status == "done", pv.error
        lv.close()
        pv.close()
        del lv, pv, m
    gc.collect()
    assert [r() is None for r in refs] == [True, True, True]
    end = time.monotonic() + 5
    while any(t.name == "workbench-runner" for t in threading.enumerate()) and time.monotonic() < end:
        time.sleep(0.05)
    assert not any(t.name == "workbench-runner" for t in threading.enumerate()), (
        "the idle worker did not exit"
    )


def test_wait_timeout_raises_a_clear_error(model):
    lv = LensView(model, CLEAN)
    gate = threading.Event()
    lv.runner.submit(_blocker(lv, gate))
    try:
        with pytest.raises(wb.WorkbenchError, match=r"timed out.*cancel\(\)") as info:
            lv.wait(0.2)
        assert isinstance(info.value, TimeoutError)
    finally:
        gate.set()
    assert lv.wait(10) is lv


def test_save_png_needs_a_front_end_and_says_so(model, tmp_path):
    lv = LensView(model, CLEAN)
    for fmt in ("png", "svg"):
        with pytest.raises(wb.WorkbenchError, match="no front end shows this view.*save_html"):
            getattr(lv, f"save_{fmt}")(tmp_path / f"x.{fmt}")
        assert not (tmp_path / f"x.{fmt}").exists()
    sent = _sent(lv)
    lv.request("attached")  # a front end drew the view
    assert sent[-1]["kind"] == "history"
    p = lv.save_png(tmp_path / "x.png")
    req = sent[-1]
    assert req["kind"] == "export" and req["format"] == "png"
    lv._on_msg(lv, {"kind": "export_result", "id": req["id"]}, [b"\x89PNG..."])
    assert p.read_bytes() == b"\x89PNG..."
    lv.request("detached")
    with pytest.raises(wb.WorkbenchError):
        lv.save_svg(tmp_path / "y.svg")


def test_success_clears_old_errors_and_error_always_has_a_message(model):
    av = AttentionView(model, CLEAN)
    av.open_head(99, 0)
    assert av.status == "error" and "SiteError" in av.error
    av.open_head(1, 2)
    assert av.status == "done" and av.error == ""  # no stale banner after a successful click
    pv = PatchView(model, CLEAN, CORRUPT, target=" Mary", foil=" John")
    pv.click(0, 1).wait()
    pv.status = "error"  # whatever sets the error status, it carries a message
    assert pv.error
    pv.error = ""  # and clearing the message clears the status
    assert pv.status != "error"


def test_malformed_messages_say_what_was_wrong(model):
    pv = PatchView(model, CLEAN, CORRUPT, target=" Mary", foil=" John")
    T = len(pv.tokens_corrupt)
    cases = [
        ({"kind": "patch", "layer": 1.7, "position": 2}, "layer=1.7"),  # not silently truncated to 1
        ({"kind": "patch", "layer": "1", "position": 2}, "layer='1' (str)"),
        ({"kind": "patch", "layer": True, "position": 2}, "layer=True"),
        ({"kind": "patch", "layer": 1, "position": T}, f"position={T}, outside 0..{T - 1}"),
        ({"kind": "patch", "layer": -1, "position": 0}, "layer=-1"),
        ({"kind": "patch", "layer": 1}, "no position"),
        ({"kind": "patch", "layer": 1, "position": 2, "source_layer": 0.5}, "source_layer=0.5"),
        ({"kind": "patch", "layer": 1, "position": 2, "cell": "x"}, "cell='x'"),
        ({"kind": "nope"}, "Unknown request 'nope'"),
        ({"kind": ["patch"]}, "Unknown request"),
    ]
    for content, want in cases:
        pv.error = ""
        pv._on_msg(pv, {"id": "r1", **content}, [])
        pv.wait()
        assert pv.status == "error" and want in pv.error, (content, pv.error)
        assert "MessageError" in pv.error and "(at " not in pv.error  # readable, not raw Python text
    assert pv.result == {}
    pv._on_msg(pv, "not a dict", [])
    assert "not an object" in pv.error
    av = AttentionView(model, CLEAN)
    av.request("head", layer=1, head=2.5)
    assert av.status == "error" and "head=2.5" in av.error


def test_lens_pins_are_capped_and_bad_pins_refused(model):
    from workbench.widgets.lens import MAX_PINS

    lv = LensView(model, CLEAN, pinned=[" Mary"])
    singles = [t for t in (model.tokenizer.decode([i]) for i in range(model.vocab_size)) if t.strip()]
    singles = [
        t for t in dict.fromkeys(singles) if len(model.tokenizer(t, add_special_tokens=False).input_ids) == 1
    ]
    t0 = time.monotonic()
    lv.pinned = singles[: MAX_PINS + 5]
    assert time.monotonic() - t0 < 2 and lv.runner.idle()  # refused at once, nothing computed
    assert lv.pinned == [" Mary"] and lv.status == "error" and f"At most {MAX_PINS}" in lv.error
    with pytest.raises(wb.WorkbenchError, match="At most"):
        LensView(model, CLEAN, pinned=singles[: MAX_PINS + 1])
    multi = "Mary and John"  # not one token
    lv.pinned = [*lv.pinned, multi]
    assert lv.pinned == [" Mary"]  # dropped, not left in the list with no chip
    assert "Cannot pin 'Mary and John'" in lv.error and "not added" in lv.error
    # the view is not stuck: the next action works and clears the error
    lv.prompt = CORRUPT
    lv.wait()
    assert lv.status == "done" and lv.error == "" and lv.data["tokens"] == model.to_str_tokens(CORRUPT)
    lv.pinned = [" Mary", " John"]
    lv.wait()
    assert set(lv.data["pinned"]) == {" Mary", " John"}


def test_lens_failed_recompute_never_shows_another_prompts_data(model):
    lv = LensView(model, CLEAN)
    lv.wait()
    shown = lv.data
    lv.prompt = "   "  # an empty prompt fails in the engine
    lv.wait()
    assert lv.status == "error" and "back to the prompt shown" in lv.error
    assert lv.prompt == CLEAN and lv.data is shown and lv.data["prompt"] == CLEAN
    lv.prompt = CORRUPT
    lv.wait()
    assert lv.status == "done" and lv.error == "" and lv.data["prompt"] == CORRUPT


def test_patch_view_checks_input_as_it_changes(model):
    pv = PatchView(model, CLEAN, CORRUPT, target=" Mary", foil=" John")
    pv.click(1, 3).wait()
    assert pv.code and pv.status == "done"
    pv.corrupt = (
        "When Mary went to the store, Mary gave a drink to"  # fewer tokens: reported now, not at Sweep
    )
    assert pv.status == "error" and "same token length" in pv.error
    assert pv.code == "" and pv.result == {}  # no code or result of the previous prompts
    pv.run_sweep().wait()
    assert pv.status == "error" and "same token length" in pv.error and pv.sweep == {}
    pv.corrupt = CORRUPT  # fixed: the error goes, the badge with it
    assert pv.error == "" and pv.status != "error"
    pv.target = "Mary and John"
    assert pv.status == "error" and pv.error.startswith("TokenizationError") and "target" in pv.error
    assert pv.inputs["target"]["error"] and len(pv.inputs["target"]["tokens"]) > 1
    pv.target = " Mary"
    assert pv.error == "" and pv.status != "error"
    assert pv.inputs["target"]["tokens"] == [" Mary"] and pv.inputs["target"]["warning"] == ""


def test_patch_view_warns_when_a_target_lacks_its_space(model):
    # a word that is one token both with and without its leading space: typing it bare scores another token
    words = [model.tokenizer.decode([i]) for i in range(model.vocab_size)]
    word = next(
        w
        for w in words
        if w.isalpha()
        and len(w) > 2
        and len(model.tokenizer(" " + w, add_special_tokens=False).input_ids) == 1
    )
    pv = PatchView(model, CLEAN, CORRUPT, target=word)
    info = pv.inputs["target"]
    assert (
        info["tokens"] == [word]
        and "no leading space" in info["warning"]
        and repr(" " + word) in info["warning"]
    )
    assert pv.status != "error"  # a warning, not an error: the bare token is a legitimate choice


def test_patch_view_computes_the_clean_lens_for_the_drag_grid(model):
    pv = PatchView(model, CLEAN, CORRUPT, target=" Mary", foil=" John")
    pv.wait()
    T = len(model.to_str_tokens(CLEAN))
    assert pv.clean_lens["top_ids"]["shape"] == [model.n_layers, T, 3]
    assert pv.status == "idle"  # a background job: no "running"/"done" flicker
    np.testing.assert_array_equal(
        unpack(pv.clean_lens["top_ids"]), wb.logit_lens(model, CLEAN, top_k=3).top_ids
    )


def test_switching_modes_keeps_one_sweep_per_mode(model):
    pv = PatchView(model, CLEAN, CORRUPT, target=" Mary", foil=" John")
    pv.run_sweep().wait()
    patch_sweep = pv.sweep
    assert patch_sweep["mode"] == "patch"
    pv.mode = "ablate"
    assert pv.sweep == {}
    pv.run_sweep().wait()
    assert pv.sweep["mode"] == "ablate"
    pv.mode = "patch"
    assert pv.sweep is patch_sweep  # not thrown away
    pv.mode = "ablate"
    assert pv.sweep["mode"] == "ablate"


def test_history_is_sent_one_entry_at_a_time_with_its_arguments(model):
    from workbench.widgets.base import HISTORY_MAX

    pv = PatchView(model, CLEAN, CORRUPT, target=" Mary", foil=" John")
    assert "history" not in pv.keys  # not a synced trait: never re-sent whole
    sent = _sent(pv)
    for i in range(HISTORY_MAX + 10):
        pv.click(i % model.n_layers, i % 5).wait()
    adds = [m for m in sent if m["kind"] == "history_add"]
    assert len(adds) == HISTORY_MAX + 10
    assert max(len(json.dumps(m)) for m in adds) < 2000 and all("code" not in m["entry"] for m in adds)
    assert len(pv.history) == HISTORY_MAX and pv.history[-1]["code"]  # Python keeps the code
    assert pv.history[-1]["args"]["target"] == " Mary" and pv.history[-1]["args"]["site"] == "resid_pre"
    pv.request("attached")
    assert sent[-1]["kind"] == "history" and len(sent[-1]["entries"]) == HISTORY_MAX
    assert '"history"' in pv.to_html()  # the standalone page still shows the history


def test_attention_failed_recompute_reverts_the_prompt(model):
    av = AttentionView(model, CLEAN)
    av.prompt = "  "
    av.wait()
    assert av.status == "error" and "back to the prompt shown" in av.error
    assert av.prompt == CLEAN and av.tokens == model.to_str_tokens(CLEAN)
    av.prompt = CORRUPT
    av.wait()
    assert av.status == "done" and av.error == "" and av.tokens == model.to_str_tokens(CORRUPT)


def test_bad_input_while_a_job_runs_keeps_the_error_status(model):
    pv = PatchView(model, CLEAN, CORRUPT, target=" Mary", foil=" John")
    pv.wait()
    gate = threading.Event()
    started = threading.Event()

    def slow(progress, cancel):
        started.set()
        gate.wait(10)

    pv.submit("sweep", "s", slow, lambda r: None, slot="sweep")
    started.wait(5)
    pv.target = "Mary and John"  # checked at once, while the job runs
    assert pv.status == "error"
    gate.set()
    pv.wait()
    assert pv.status == "error" and "target" in pv.error  # not "done" over a shown error


def test_patch_view_sends_no_extra_request_for_a_remote_model(model, monkeypatch):
    monkeypatch.setattr(model, "remote", True)
    calls = []
    monkeypatch.setattr(wb.ops, "logit_lens", lambda *a, **k: calls.append(a))
    pv = PatchView(model, CLEAN, CORRUPT, target=" Mary", foil=" John")
    pv.wait()
    assert calls == [] and "remote" in pv.clean_lens["note"] and pv.status == "idle"
