"""Path patching (`wb.path_patch`, `wb.path_patch_sweep`) against the independent hook reference
(`tests/reference.py`, section "path patching"), on every tiny family and on the embedded model, float32 1e-4;
the fast path against the traced path; consistency with `wb.patch`; generated code; bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import workbench as wb
from tests import reference as R
from tests.conftest import ATOL, CLEAN, CORRUPT, FOIL, TARGET, assert_close, run_code, tiny
from tests.test_trust import EDITS, apply_edit
from workbench.engine import fast, path_replay
from workbench.testing import FAMILIES

# Tiny models: 3 layers; 4 heads (gpt2, gpt_neox: no GQA) or 6 query heads on 2 key-value heads.
SENDERS = [wb.Cell("head", 0, head=1), wb.Cell("head", 1, position=4, head=2)]
RECEIVERS = {
    "logits": "logits",
    "q": [wb.Cell("q", 2, head=1)],
    "head": [wb.Cell("head", 2, head=3)],
    "k_v": [wb.Cell("k", 2, head=1), wb.Cell("v", 2, position=6, head=0)],
    "two_layers": [wb.Cell("q", 2, position=8, head=0), wb.Cell("head", 2, head=1)],
}


def metric():
    return wb.logit_diff(TARGET, FOIL)


def ref_metric(model):
    return R.logit_diff(model.tokenizer, TARGET, FOIL)


def as_ref(cells):
    if cells == "logits":
        return "logits"
    return [(c.site, c.layer, c.position, c.head) for c in cells]


def senders_ref(cells):
    return [(c.layer, c.position, c.head) for c in cells]


class Spy:
    """Counts the calls where the local fast path answered (so a test knows which path it checked)."""

    def __init__(self, monkeypatch):
        self.hits = 0
        original = path_replay.run

        def run(*args, **kwargs):
            out = original(*args, **kwargs)
            self.hits += out is not None
            return out

        monkeypatch.setattr(path_replay, "run", run)


# =============================================================================================
# tiny families


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("which", list(RECEIVERS))
def test_path_patch_equals_reference(family, which, monkeypatch):
    model = tiny(family)
    receivers = RECEIVERS[which]
    if which == "two_layers":  # receivers at layers 1 and 2: the senders must be below both
        receivers = [wb.Cell("q", 1, position=8, head=0), wb.Cell("head", 2, head=1)]
        senders = [wb.Cell("head", 0, head=1), wb.Cell("head", 0, position=3, head=2)]
    else:
        senders = SENDERS
    expected = R.reference_path_patch(
        model.hf, model.tokenizer, CLEAN, CORRUPT, ref_metric(model), senders_ref(senders), as_ref(receivers)
    )
    spy = Spy(monkeypatch)
    value = wb.path_patch(model, CLEAN, CORRUPT, metric=metric(), senders=senders, receivers=receivers)
    assert spy.hits == 1, "the local fast path did not run"
    with fast.disabled():
        traced = wb.path_patch(model, CLEAN, CORRUPT, metric=metric(), senders=senders, receivers=receivers)
    assert spy.hits == 1
    assert_close(float(value), expected, what=f"{family} fast path, receivers {which}")
    assert_close(float(traced), expected, what=f"{family} traced path, receivers {which}")
    patched = R.reference_patch(model.hf, model.tokenizer, CLEAN, CORRUPT, ref_metric(model), "resid_pre", 0)
    for v in (value, traced):
        assert_close(v.clean, patched["clean"], what="clean baseline")
        assert_close(v.corrupt, patched["corrupt"], what="corrupt baseline")
    assert_close(value.top_probs, traced.top_probs, what="top-k probabilities, fast vs traced")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("which", ["logits", "q", "head"])
def test_path_patch_sweep_equals_reference(family, which, monkeypatch):
    model = tiny(family)
    receivers = RECEIVERS[which]
    expected = R.reference_path_patch_sweep(
        model.hf, model.tokenizer, CLEAN, CORRUPT, ref_metric(model), as_ref(receivers)
    )
    spy = Spy(monkeypatch)
    sweep = wb.path_patch_sweep(model, CLEAN, CORRUPT, metric=metric(), receivers=receivers)
    assert spy.hits == 1
    with fast.disabled():
        traced = wb.path_patch_sweep(model, CLEAN, CORRUPT, metric=metric(), receivers=receivers)
    assert sweep.values.shape == (model.n_layers, model.n_heads) and sweep.axes == ("layer", "head")
    assert_close(sweep.values, expected, what=f"{family} fast sweep, receivers {which}")
    assert_close(traced.values, expected, what=f"{family} traced sweep, receivers {which}")
    top = model.n_layers if which == "logits" else 2
    assert np.isnan(sweep.values[top:]).all() and np.isfinite(sweep.values[:top]).all()
    assert np.ptp(sweep.values[:top]) > 1e-6, "every sender gave the same number"


@pytest.mark.parametrize("family", FAMILIES)
def test_all_heads_to_logits_equals_joint_patch_of_all_heads(family):
    """Every head a sender: nothing is frozen, so this is the plain patch of every head at once."""
    model = tiny(family)
    heads = [wb.Cell("head", lyr, head=h) for lyr in range(model.n_layers) for h in range(model.n_heads)]
    joint = wb.patch(model, CLEAN, CORRUPT, metric=metric(), cells=heads)
    value = wb.path_patch(model, CLEAN, CORRUPT, metric=metric(), senders=heads, receivers="logits")
    with fast.disabled():
        traced = wb.path_patch(model, CLEAN, CORRUPT, metric=metric(), senders=heads, receivers="logits")
    assert_close(float(value), float(joint), what=f"{family} fast path vs joint patch")
    assert_close(float(traced), float(joint), what=f"{family} traced path vs joint patch")
    assert abs(float(joint) - joint.corrupt) > 1e-6


@pytest.mark.parametrize("family", ("gpt2", "llama", "gpt_neox", "phi3"))
def test_q_receiver_sweep_rows_equal_single_calls(family):
    model = tiny(family)
    receivers = [wb.Cell("q", 2, head=1)]
    sweep = wb.path_patch_sweep(model, CLEAN, CORRUPT, metric=metric(), receivers=receivers)
    for layer in range(2):
        row = [
            float(
                wb.path_patch(
                    model,
                    CLEAN,
                    CORRUPT,
                    metric=metric(),
                    senders=[wb.Cell("head", layer, head=h)],
                    receivers=receivers,
                    top_k=0,
                )
            )  # fmt: skip
            for h in range(model.n_heads)
        ]
        assert_close(sweep.values[layer], row, what=f"{family} sweep row {layer} vs single calls")


@pytest.mark.parametrize("family", ("gpt2", "llama", "gpt_neox", "phi3", "gemma2"))
def test_to_code_reproduces_the_numbers(family):
    """The generated nnsight code (two traces) gives the same numbers; fused q|k|v layouts included."""
    model = tiny(family)
    for which in ("logits", "head", "k_v"):
        value = wb.path_patch(
            model, CLEAN, CORRUPT, metric=metric(), senders=SENDERS, receivers=RECEIVERS[which]
        )
        assert_close(run_code(value.to_code())["result"], float(value), what=f"{family} to_code {which}")
    sweep = wb.path_patch_sweep(model, CLEAN, CORRUPT, metric=metric(), receivers=RECEIVERS["q"])
    assert_close(run_code(sweep.to_code())["result"], sweep.values, what=f"{family} sweep to_code")


@pytest.mark.parametrize("family", ("llama", "gpt2"))
def test_fast_path_sees_weight_edits_and_steps_aside_for_hooks(family, monkeypatch):
    """After an in-place weight edit (through .data) the fast path recomputes; with a user hook it steps
    aside; both give the reference's numbers."""
    from workbench.testing import tiny_model

    model = tiny_model(family, seed=3)
    receivers = RECEIVERS["q"]
    before = wb.path_patch(model, CLEAN, CORRUPT, metric=metric(), senders=SENDERS, receivers=receivers)
    mlp = R._get(R.blocks(model.hf)[1], "mlp")
    weight = next(p for p in mlp.parameters() if p.dim() == 2)
    weight.data[:, :5] *= -2.0
    expected = R.reference_path_patch(
        model.hf, model.tokenizer, CLEAN, CORRUPT, ref_metric(model), senders_ref(SENDERS), as_ref(receivers)
    )
    spy = Spy(monkeypatch)
    after = wb.path_patch(model, CLEAN, CORRUPT, metric=metric(), senders=SENDERS, receivers=receivers)
    assert spy.hits == 1
    assert abs(float(after) - float(before)) > 1e-6, "the weight edit did not change the number"
    assert_close(float(after), expected, what="after a .data edit")
    handle = R.blocks(model.hf)[2].register_forward_hook(lambda mod, args, out: None)
    try:
        hooked = wb.path_patch(model, CLEAN, CORRUPT, metric=metric(), senders=SENDERS, receivers=receivers)
    finally:
        handle.remove()
    assert spy.hits == 1, "the fast path ran with a user hook on the model"
    assert_close(float(hooked), expected, what="with a user hook (traced path)")


@pytest.mark.parametrize("family", ("llama", "gpt2", "gpt_neox", "gemma2"))
@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(EDITS), seed=st.integers(0, 2**16))
def test_fast_path_equals_traced_after_model_edits(family, kind, seed):
    """Differential: warm the caches, edit the model the ways users do (tests/test_trust.py), then the fast
    path equals the traced path for a sweep to the logits and a path patch to a head."""
    from workbench.testing import tiny_model

    model = tiny_model(family, seed=seed % 5)
    receivers = RECEIVERS["head"]
    wb.path_patch_sweep(model, CLEAN, CORRUPT, metric=metric())
    wb.path_patch(model, CLEAN, CORRUPT, metric=metric(), senders=SENDERS, receivers=receivers)
    what = f"{family} {apply_edit(model, kind, np.random.default_rng(seed))}"
    sweep = wb.path_patch_sweep(model, CLEAN, CORRUPT, metric=metric())
    value = wb.path_patch(model, CLEAN, CORRUPT, metric=metric(), senders=SENDERS, receivers=receivers)
    with fast.disabled():
        plain_sweep = wb.path_patch_sweep(model, CLEAN, CORRUPT, metric=metric())
        plain = wb.path_patch(model, CLEAN, CORRUPT, metric=metric(), senders=SENDERS, receivers=receivers)
    assert_close(sweep.values, plain_sweep.values, what=what + " sweep to logits")
    assert_close(float(value), float(plain), what=what + " head receiver")
    assert_close([sweep.clean, sweep.corrupt], [plain.clean, plain.corrupt], what=what + " baselines")


def test_attention_whose_output_is_not_the_projection_falls_back(monkeypatch):
    """The stand-in assumes attention output = o_proj(head outputs); it checks that on the cached run, so a
    wrapped attention module (here one that scales its output) sends the call to the traced path."""
    from workbench.testing import tiny_model

    model = tiny_model("llama", seed=1)
    attn = R._get(R.blocks(model.hf)[1], "self_attn")
    inner = attn.forward
    attn.forward = lambda *args, **kwargs: (inner(*args, **kwargs)[0] * 1.5, None)
    try:
        spy = Spy(monkeypatch)
        value = wb.path_patch(model, CLEAN, CORRUPT, metric=metric(), senders=SENDERS, receivers="logits")
        assert spy.hits == 0, "the fast path ran on an attention module it cannot stand in for"
        expected = R.reference_path_patch(
            model.hf, model.tokenizer, CLEAN, CORRUPT, ref_metric(model), senders_ref(SENDERS), "logits"
        )
        with fast.disabled():
            traced = wb.path_patch(
                model, CLEAN, CORRUPT, metric=metric(), senders=SENDERS, receivers="logits"
            )
    finally:
        del attn.forward
    assert_close(float(value), float(traced), what="fallback vs traced")
    # The reference freezes the projection's input; the wrapper scales after it, in both runs alike.
    assert_close(float(value), expected, what="fallback vs reference")


@pytest.mark.parametrize("use_fast", [True, False])
def test_chunks_progress_and_cancel(use_fast):
    """Runs split into chunks give the one-chunk numbers; progress reaches 1; a cancel stops the sweep with a
    CancelledError and the model stays usable."""
    import contextlib
    import threading

    from workbench.engine import path_traced
    from workbench.ops.patching import pair_tokens

    model = tiny("gpt_neox")
    c, k = pair_tokens(model, CLEAN, CORRUPT)
    rows = [[wb.Cell("head", lyr, None, h)] for lyr in range(2) for h in range(model.n_heads)]
    inputs = [wb.Cell("q", 2, None, 1), wb.Cell("v", 2, 4, 0)]
    bound = metric().bind(model)
    with contextlib.nullcontext() if use_fast else fast.disabled():
        whole = path_traced.run(model, c, k, rows, inputs, bound)
        seen = []
        parts = path_traced.run(
            model, c, k, rows, inputs, bound, chunk=3, progress=lambda f, _m: seen.append(f)
        )
        cancel = threading.Event()
        cancel.set()
        with pytest.raises(wb.CancelledError):
            wb.path_patch_sweep(model, CLEAN, CORRUPT, metric=metric(), cancel=cancel)
    assert_close(parts.values, whole.values, what="chunks of 3 vs one chunk")
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)
    after = wb.path_patch_sweep(model, CLEAN, CORRUPT, metric=metric(), receivers=[wb.Cell("q", 2, head=1)])
    assert_close(after.values[:2].reshape(-1), path_traced.run(model, c, k, rows, inputs[:1], bound).values)


def test_bad_input_names_the_fix_and_leaves_the_model_usable():
    model = tiny("llama")  # 6 query heads, 2 key-value heads
    m = metric()
    before = wb.path_patch(model, CLEAN, CORRUPT, metric=m, senders=SENDERS, receivers="logits")

    def fails(match, **kwargs):
        args = dict(senders=SENDERS, receivers="logits") | kwargs
        with pytest.raises(wb.WorkbenchError, match=match):
            wb.path_patch(model, CLEAN, CORRUPT, metric=m, **args)

    fails("senders= is empty", senders=[])
    fails("senders= takes", senders="head 3")
    fails("sender must be wb.Cell\\('head'", senders=[wb.Cell("mlp_out", 0)])
    fails("needs head=", senders=[wb.Cell("head", 0)])
    fails("out of range", senders=[wb.Cell("head", 0, head=6)])
    fails("same head", senders=[wb.Cell("head", 2, head=3)], receivers=[wb.Cell("q", 2, head=3)])
    fails("same head", senders=[wb.Cell("head", 1, head=3)], receivers=[wb.Cell("head", 1, head=3)])
    fails(
        "same head", senders=[wb.Cell("head", 1, head=4)], receivers=[wb.Cell("k", 1, head=1)]
    )  # its kv head
    fails("at or below sender", senders=[wb.Cell("head", 2, head=0)], receivers=[wb.Cell("q", 1, head=0)])
    fails("at or below sender", senders=[wb.Cell("head", 1, head=0)], receivers=[wb.Cell("v", 1, head=1)])
    fails("key-value heads \\(0..1\\)", receivers=[wb.Cell("k", 2, head=4)])  # a query-head index for k
    fails("key-value heads", receivers=[wb.Cell("v", 2, head=2)])
    fails("receivers='logits'", receivers="resid")
    fails("A receiver is a head's input", receivers=[wb.Cell("mlp_out", 2)])
    fails("A receiver is a head's input", receivers=[wb.Cell("pattern", 2, head=0)])
    fails("non-empty list", receivers=[])
    with pytest.raises(wb.WorkbenchError, match="No head lies below receivers at layer 0"):
        wb.path_patch_sweep(model, CLEAN, CORRUPT, metric=m, receivers=[wb.Cell("q", 0, head=0)])
    with pytest.raises(wb.WorkbenchError, match="A receiver is a head's input"):
        wb.path_patch_sweep(model, CLEAN, CORRUPT, metric=m, receivers=[wb.Cell("resid_pre", 2)])
    again = wb.path_patch(model, CLEAN, CORRUPT, metric=m, senders=SENDERS, receivers="logits")
    assert float(again) == float(before)
    assert_close(
        wb.patch(model, CLEAN, CORRUPT, metric=m, site="head", layer=1, head=2).corrupt, before.corrupt
    )


def test_results_print_and_cache_keys():
    model = tiny("gpt2")
    value = wb.path_patch(model, CLEAN, CORRUPT, metric=metric(), senders=SENDERS, receivers=RECEIVERS["q"])
    assert "path_patch" in repr(value)
    assert value.options["senders"] == [("head", 0, None, 1), ("head", 1, 4, 2)]
    assert value.options["receivers"] == [("q", 2, None, 1)]
    sweep = wb.path_patch_sweep(model, CLEAN, CORRUPT, metric=metric())
    assert "path_patch_sweep" in repr(sweep)
    assert np.isfinite(sweep.normalized).all()


# =============================================================================================
# the embedded model (SmolLM2-135M: 30 layers, 9 heads, 3 key-value heads)

E_CLEAN = "The Eiffel Tower is located in the city of"
E_CORRUPT = "The Colosseum is located in the city of"


@pytest.fixture(scope="module")
def embedded():
    return wb.load()


@pytest.mark.embedded
def test_embedded_sweep_to_logits_equals_reference(embedded):
    model = embedded
    rm = R.logit_diff(model.tokenizer, TARGET, FOIL)
    sweep = wb.path_patch_sweep(model, E_CLEAN, E_CORRUPT, metric=metric())
    expected = R.reference_path_patch_sweep(model.hf, model.tokenizer, E_CLEAN, E_CORRUPT, rm, batch=True)
    assert_close(sweep.values, expected, what="embedded sweep to logits")
    assert np.ptp(sweep.values) > 0.1


@pytest.mark.embedded
def test_embedded_head_receiver_fast_traced_reference(embedded):
    """A name-mover-like receiver high up: the sweep (fast) vs the reference, one sender set fast vs traced."""
    model = embedded
    rm = R.logit_diff(model.tokenizer, TARGET, FOIL)
    receivers = [wb.Cell("head", 24, head=4)]
    sweep = wb.path_patch_sweep(model, E_CLEAN, E_CORRUPT, metric=metric(), receivers=receivers)
    expected = R.reference_path_patch_sweep(
        model.hf, model.tokenizer, E_CLEAN, E_CORRUPT, rm, as_ref(receivers), batch=True
    )
    assert_close(sweep.values, expected, what="embedded sweep to head 24.4")
    assert np.isnan(sweep.values[24:]).all()
    senders = [wb.Cell("head", 3, head=2), wb.Cell("head", 10, position=3, head=7)]
    for recv in ("logits", receivers, [wb.Cell("k", 20, head=2)]):
        value = wb.path_patch(model, E_CLEAN, E_CORRUPT, metric=metric(), senders=senders, receivers=recv)
        with fast.disabled():
            traced = wb.path_patch(
                model, E_CLEAN, E_CORRUPT, metric=metric(), senders=senders, receivers=recv
            )
        ref = R.reference_path_patch(
            model.hf, model.tokenizer, E_CLEAN, E_CORRUPT, rm, senders_ref(senders), as_ref(recv)
        )
        assert_close(float(value), ref, what=f"embedded fast, receivers {recv}")
        assert_close(float(traced), ref, what=f"embedded traced, receivers {recv}")


@pytest.mark.embedded
def test_embedded_all_heads_equals_joint_patch(embedded):
    model = embedded
    heads = [wb.Cell("head", lyr, head=h) for lyr in range(model.n_layers) for h in range(model.n_heads)]
    joint = wb.patch(model, E_CLEAN, E_CORRUPT, metric=metric(), cells=heads)
    value = wb.path_patch(model, E_CLEAN, E_CORRUPT, metric=metric(), senders=heads)
    assert_close(float(value), float(joint), what="embedded: all heads to logits vs joint patch")
    assert abs(float(joint) - joint.corrupt) > 0.1
    assert_close(
        float(wb.path_patch(model, E_CLEAN, E_CORRUPT, metric=metric(), senders=heads)), float(value), ATOL
    )
