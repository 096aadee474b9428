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
