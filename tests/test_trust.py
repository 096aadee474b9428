"""The fast paths never return stale or poisoned numbers under real use (issue 10).

Differential tests: after the edits users make to a model (in place, through `.data`, a replaced `.data`,
`load_state_dict`, an in-place permutation, a hook, a swapped module, a buffer), with an in-place metric,
and with other threads using the model while a job runs, every fast path (cached single-cell patch,
sweep, logit lens, attribution) equals the plain traced path. Property-based with a fixed budget.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import workbench as wb
from tests.conftest import ATOL, CLEAN, CORRUPT, FOIL, TARGET, assert_close
from workbench.engine import fast_attribution
from workbench.engine import replay as F
from workbench.engine.model_key import model_key
from workbench.testing import FAMILIES, tiny_model

EDITS = (
    "inplace",
    "data_write",
    "data_replace",
    "permute",
    "load_state_dict",
    "hook",
    "swap_module",
    "buffer",
    "setting",
)
BUDGET = settings(
    max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def metric():
    return wb.logit_diff(TARGET, FOIL)


def _matrices(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.hf.named_parameters() if p.dim() == 2]


def _blocks(model):
    from workbench.model import _get_path

    return _get_path(model.hf, model.arch.layers)


def _scale_output(_module, _args, out):
    """A user's hook that changes a block's output (as steering hooks do)."""
    return (out[0] * 1.3, *out[1:]) if isinstance(out, tuple) else out * 1.3


def apply_edit(model, kind: str, rng: np.random.Generator) -> str:
    """Change what the model computes the way users do; returns a description for failure messages."""
    mats = _matrices(model)
    name, w = mats[int(rng.integers(len(mats)))]
    if kind == "inplace":
        with torch.no_grad():
            w.mul_(0.5)
    elif kind == "data_write":  # e.g. zeroing neurons: bumps no version counter
        cols = max(1, w.shape[1] // 3)
        w.data[:, :cols] = 0
    elif kind == "data_replace":
        w.data = w.data * 1.5 + 0.1
    elif kind == "permute":  # same storage, same sum: only the content order changes
        perm = torch.from_numpy(rng.permutation(w.shape[0]))
        w.data[:] = w.data[perm].clone()
    elif kind == "load_state_dict":
        state = model.hf.state_dict()
        state[name] = state[name] * -1.0
        model.hf.load_state_dict(state)
    elif kind == "hook":
        blocks = _blocks(model)
        j = int(rng.integers(len(blocks)))
        blocks[j].register_forward_hook(_scale_output)
        name = f"hook on block {j}"
    elif kind == "swap_module":  # a new module with no parameters of its own (e.g. an activation)
        blocks = _blocks(model)
        j = int(rng.integers(len(blocks)))
        mlp = next(m for n, m in blocks[j].named_modules() if n.endswith("mlp"))
        act_name = next(n for n, m in mlp.named_children() if not list(m.parameters()))
        setattr(mlp, act_name, torch.nn.Tanh())
        name = f"block {j} mlp.{act_name} -> Tanh"
    elif kind == "setting":  # a module's plain attribute, e.g. a norm's epsilon
        norms = [
            (n, m) for n, m in model.hf.named_modules() if hasattr(m, "variance_epsilon") or hasattr(m, "eps")
        ]
        if norms:
            name, norm = norms[int(rng.integers(len(norms)))]
            attr = "variance_epsilon" if hasattr(norm, "variance_epsilon") else "eps"
            setattr(norm, attr, 4.0)
            name = f"{name}.{attr} = 4.0"
        else:  # OLMo's norms have no settings: an attention module's score scaling instead
            scaled = [
                (n, m) for n, m in model.hf.named_modules() if isinstance(getattr(m, "scaling", None), float)
            ]
            name, attn = scaled[int(rng.integers(len(scaled)))]
            attn.scaling *= 3.0
            name = f"{name}.scaling *= 3"
    elif kind == "buffer":
        bufs = [(n, b) for n, b in model.hf.named_buffers() if b.is_floating_point() and b.numel() > 1]
        if not bufs:  # GPT-2 has no float buffers: edit a bias through .data instead
            bufs = [(n, p) for n, p in model.hf.named_parameters() if p.dim() == 1]
        name, b = bufs[int(rng.integers(len(bufs)))]
        b.data.mul_(1.7)
    return f"{kind} {name}"


def _patch(model, **kw):
    return wb.patch(model, CLEAN, CORRUPT, metric=metric(), **kw)


CELLS = [
    dict(site="resid_pre", layer=1, position=3),
    dict(site="attn_out", layer=0, position=5),
    dict(site="mlp_out", layer=1, position=2),
    dict(site="head", layer=2, head=1),
    dict(site="resid_post", layer=0, position=7),
]


@pytest.mark.parametrize("family", FAMILIES)
@BUDGET
@given(kind=st.sampled_from(EDITS), seed=st.integers(0, 2**16), which=st.integers(0, len(CELLS) - 1))
def test_fast_paths_see_every_edit(family, kind, seed, which):
    """Warm every cache, edit the model, then fast == traced for a click, a sweep, the lens, attribution."""
    model = tiny_model(family, seed=seed % 7)
    cell = CELLS[which]
    before = _patch(model, **cell)  # warm: cached runs and packed weights of the unedited model
    wb.logit_lens(model, CORRUPT, top_k=3)
    wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site="attn_out")
    what = f"{family} {apply_edit(model, kind, np.random.default_rng(seed))}"
    fast = _patch(model, **cell)
    fast_sweep = wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site="attn_out")
    fast_lens = wb.logit_lens(model, CORRUPT, top_k=3, tokens=[TARGET])
    fast_attr = wb.attribution_patch(model, CLEAN, CORRUPT, metric=metric(), site="mlp_out")
    with F.disabled():
        plain = _patch(model, **cell)
        plain_sweep = wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site="attn_out")
        plain_lens = wb.logit_lens(model, CORRUPT, top_k=3, tokens=[TARGET])
        plain_attr = wb.attribution_patch(model, CLEAN, CORRUPT, metric=metric(), site="mlp_out")
    assert abs(float(fast) - float(plain)) <= ATOL, (what, cell, float(fast), float(plain), float(before))
    assert abs(fast.clean - plain.clean) <= ATOL and abs(fast.corrupt - plain.corrupt) <= ATOL, what
    assert_close(fast_sweep.values, plain_sweep.values, ATOL, what + " sweep")
    assert_close(fast_lens.top_probs, plain_lens.top_probs, ATOL, what + " lens")
    assert_close(fast_lens.prob(TARGET), plain_lens.prob(TARGET), ATOL, what + " lens prob")
    assert_close(fast_attr.values, plain_attr.values, ATOL, what + " attribution")


def test_user_hooks_send_every_op_to_the_traced_path():
    """With a user's hook anywhere, the fast paths step aside (nnsight reads module outputs before their
    hooks, and replays skip hooked calls): found by the test above (gemma2, a block hook, mlp_out)."""
    from tests.engine_rows import Cell, fast_run
    from workbench.engine import fast_lens as _fast_lens
    from workbench.ops.patching import pair_tokens

    model = tiny_model("gemma2", seed=0)
    c, k = pair_tokens(model, CLEAN, CORRUPT)
    assert fast_run(model, c, k, "mlp_out", [Cell(1, 2)], metric().bind(model)) is not None
    handle = _blocks(model)[1].register_forward_hook(_scale_output)
    try:
        assert fast_run(model, c, k, "mlp_out", [Cell(1, 2)], metric().bind(model)) is None
        assert not _fast_lens.enabled(model)
        assert fast_attribution.attribution(model, c, k, ["resid_pre"], metric().bind(model)) is None
        got = _patch(model, site="mlp_out", layer=1, position=2)
        with F.disabled():
            want = _patch(model, site="mlp_out", layer=1, position=2)
    finally:
        handle.remove()
    assert float(got) == float(want)
    assert fast_run(model, c, k, "mlp_out", [Cell(1, 2)], metric().bind(model)) is not None


def test_model_key_sees_each_kind_of_edit():
    """The cache key changes for every edit kind (the differential test above checks the numbers)."""
    for kind in EDITS:
        model = tiny_model("llama", seed=1)
        key = model_key(model)
        assert model_key(model) == key, "the key is stable when nothing changes"
        apply_edit(model, kind, np.random.default_rng(0))
        assert model_key(model) != key, kind


@pytest.mark.embedded
def test_embedded_data_write_is_seen():
    """The reported case: zeroing neurons through `.data` on the embedded model (was -4.14 instead of -2.91,
    and a stale lens even on a new prompt)."""
    model = wb.load()
    clean, corrupt = "The Eiffel Tower is located in the city of", "The Colosseum is located in the city of"
    m = wb.logit_diff(" Paris", " Rome")
    kw = dict(metric=m, site="resid_pre", layer=10, position=3)
    before = wb.patch(model, clean, corrupt, **kw)
    wb.logit_lens(model, "The capital of France is")  # warm: the packed weights of the unedited model
    down = model.hf.model.layers[20].mlp.down_proj.weight
    saved = down.detach().clone()
    try:
        down.data[:, :800] = 0
        after = wb.patch(model, clean, corrupt, **kw)
        lens_after = wb.logit_lens(model, "The capital of Italy is")
        with F.disabled():
            want = wb.patch(model, clean, corrupt, **kw)
            want_lens = wb.logit_lens(model, "The capital of Italy is")
    finally:
        down.data.copy_(saved)
    assert abs(float(after) - float(want)) <= 1e-4, (float(after), float(want))
    assert abs(float(after) - float(before)) > 0.1  # the edit matters, so the check above can fail
    assert_close(lens_after.top_probs, want_lens.top_probs, 1e-4, "lens after the .data edit")


# ------------------------------------------------------------------------------------ in-place metrics
def _inplace_metric(model):
    t, f = model.token_id(TARGET), model.token_id(FOIL)

    def scaled_diff(logits):
        logits /= 0.5  # edits its argument
        return logits[:, t] - logits[:, f]

    return scaled_diff


@pytest.mark.parametrize("fast", [True, False])
def test_inplace_metric_cannot_corrupt_cached_runs(fast):
    """A metric that divides its logits in place gets 2x the logit difference every time, and top-k and
    later calls are unaffected (was: every later call's clean 19.25 instead of 4.81)."""
    model = tiny_model("llama", seed=2)
    plain_metric = metric()
    ctx = F.disabled() if not fast else _nothing()
    with ctx:
        ref = _patch(model, site="resid_pre", layer=1, position=3)
        ref_sweep = wb.patch_sweep(model, CLEAN, CORRUPT, metric=plain_metric, site="resid_pre")
        for _ in range(3):
            v = wb.patch(
                model, CLEAN, CORRUPT, metric=_inplace_metric(model), site="resid_pre", layer=1, position=3
            )
            assert abs(v.clean - 2 * ref.clean) <= 2 * ATOL and abs(v.corrupt - 2 * ref.corrupt) <= 2 * ATOL
            assert abs(float(v) - 2 * float(ref)) <= 2 * ATOL
            assert_close(v.top_probs, ref.top_probs, ATOL, "top-k after an in-place metric")
            s = wb.patch_sweep(model, CLEAN, CORRUPT, metric=_inplace_metric(model), site="resid_pre")
            assert_close(s.values, 2 * ref_sweep.values, 2 * ATOL, "sweep with an in-place metric")
            a = wb.attribution_patch(model, CLEAN, CORRUPT, metric=_inplace_metric(model), site="resid_pre")
            assert abs(a.clean - 2 * ref.clean) <= 2 * ATOL
        again = _patch(model, site="resid_pre", layer=1, position=3)
    assert abs(again.clean - ref.clean) <= ATOL and abs(float(again) - float(ref)) <= ATOL


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ------------------------------------------------------------------------------------ other threads
def _in_thread(fn, timeout: float):
    """Run fn in a new thread; (finished within timeout, result or exception)."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    return t, box


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_other_threads_during_a_sweep(family):
    """While a sweep runs (lock held, linear forwards and hooks swapped in), another thread's direct
    submodule call computes its true numbers, and its whole-model forward and nnsight trace wait and then
    compute theirs; the sweep's numbers and every later sweep equal a sweep run alone."""
    model = tiny_model(family, seed=3)
    ids = model.to_tokens(OTHER_PROMPT)
    with torch.no_grad():
        want_logits = model.hf(ids).logits.clone()
    head = model.hf.get_output_embeddings()
    x = torch.randn(4, model.d_model)
    with torch.no_grad():
        want_head = head(x).clone()
    want_vector = wb.steering_vector(model, CLEAN, CORRUPT, layer=1)
    with F.disabled():
        alone = wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site="head", by_position=True)
    checks: dict = {}

    def progress(fraction, _message):
        if checks:
            return
        # inside the sweep: the worker holds the lock and its swaps are in place
        t, box = _in_thread(lambda: head(x).detach().clone(), 30)
        checks["submodule"] = (t.is_alive(), box)
        fwd_thread, fwd_box = _in_thread(lambda: model.hf(ids).logits.detach().clone(), 0.5)
        checks["forward"] = (fwd_thread, fwd_box, fwd_thread.is_alive())
        trace_thread, trace_box = _in_thread(lambda: _trace_logits(model, ids), 0.5)
        checks["trace"] = (trace_thread, trace_box, trace_thread.is_alive())
        vec_thread, vec_box = _in_thread(lambda: wb.steering_vector(model, CLEAN, CORRUPT, layer=1), 0.5)
        checks["steering_vector"] = (vec_thread, vec_box, vec_thread.is_alive())

    swept = wb.patch_sweep(
        model, CLEAN, CORRUPT, metric=metric(), site="head", by_position=True, progress=progress
    )
    alive, box = checks["submodule"]
    assert not alive and "error" not in box, box
    assert_close(box["value"], want_head, 1e-5, "a direct submodule call from another thread")
    for what, want in (("forward", want_logits), ("trace", want_logits), ("steering_vector", want_vector)):
        thread, result, was_waiting = checks[what]
        assert was_waiting, f"the other thread's {what} did not wait for the running sweep"
        thread.join(60)
        assert not thread.is_alive() and "error" not in result, (what, result)
        assert_close(result["value"], want, 1e-5, f"another thread's {what}")
    assert_close(swept.values, alone.values, ATOL, "the sweep that ran beside other threads")
    later = wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site="head", by_position=True)
    assert_close(later.values, alone.values, ATOL, "a later sweep")


OTHER_PROMPT = "The cat sat on the mat and the dog"


def _trace_logits(model, ids):
    with torch.no_grad(), model.nn.trace(ids):
        out = model.nn.output.logits.save()
    return out.detach().clone()


def test_user_thread_busy_first_then_op_waits():
    """An op started while another thread runs a long forward waits for it and is exact."""
    model = tiny_model("llama", seed=4)
    with F.disabled():
        want = _patch(model, site="resid_pre", layer=1, position=2)
    started, release = threading.Event(), threading.Event()

    def slow(_m, _a, _o):
        if threading.current_thread().name == "user":
            started.set()
            release.wait(10)

    handle = model.hf.model.layers[0].register_forward_hook(slow)
    user = threading.Thread(target=lambda: model.hf(model.to_tokens(CLEAN)), name="user")
    user.start()
    assert started.wait(10)
    op, box = _in_thread(lambda: _patch(model, site="resid_pre", layer=1, position=2), 0.3)
    assert op.is_alive(), "the op did not wait for the other thread's forward"
    release.set()
    user.join(10)
    op.join(60)
    handle.remove()
    assert "error" not in box, box
    assert abs(float(box["value"]) - float(want)) <= ATOL


# ------------------------------------------------------------------------------------ cancel, failures
@pytest.mark.parametrize("op", ["patch_sweep", "ablate_sweep"])
def test_head_sweep_cancel_stops_within_a_block(op):
    """Cancelling a head sweep (one batch of every head) stops it at the next block, and the next sweep
    is exact (a cancelled job leaves nothing behind)."""
    model = tiny_model("llama", seed=5)
    cancel = threading.Event()
    calls = []
    blocks = _blocks(model)

    def counting(forward):
        def run(*args, **kwargs):
            calls.append(1)
            if len(calls) == 1 and cancelling:
                cancel.set()
            return forward(*args, **kwargs)

        return run

    cancelling = False
    # counted through the blocks' forwards, not hooks: with a user's hook the fast paths step aside
    saved = [b.__dict__.get("forward") for b in blocks]
    for b in blocks:
        b.forward = counting(b.forward)
    try:
        if op == "patch_sweep":
            run = lambda **kw: wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site="head", **kw)  # noqa: E731
        else:
            run = lambda **kw: wb.ablate_sweep(model, CLEAN, metric=metric(), site="head", **kw)  # noqa: E731
        run()  # warm: cached runs and probes, so the sweep's own block calls are what is counted
        calls.clear()
        cancelling = True
        with pytest.raises(wb.CancelledError):
            run(cancel=cancel)
        assert len(calls) == 1, f"{len(calls)} block calls: the cancel was honoured late"
        cancelling = False
        got = run()
        with F.disabled():
            want = run()
    finally:
        for b, forward in zip(blocks, saved, strict=True):
            if forward is None:
                del b.forward
            else:
                b.forward = forward
    assert_close(got.values, want.values, ATOL, "after a cancelled sweep")


def test_failed_baseline_leaves_no_cache_entry():
    """A forward that fails while the fast path computes its cached runs leaves no entry behind, and the
    model answers exactly once the failure is gone."""
    model = tiny_model("gpt2", seed=6)
    block = _blocks(model)[1]
    boom = {"on": True}
    forward = block.forward

    def failing(*args, **kwargs):
        if boom["on"]:
            raise RuntimeError("a user's forward failed")
        return forward(*args, **kwargs)

    block.forward = failing  # no hook: the fast path runs, and fails inside its baseline forward
    try:
        with pytest.raises(Exception, match="a user's forward failed"):
            _patch(model, site="resid_pre", layer=1, position=2)
        assert not F._BASELINES.get(model), "a failed run was cached"
        boom["on"] = False
        got = _patch(model, site="resid_pre", layer=1, position=2)
        assert F._BASELINES.get(model), "the fast path did not run (nothing was cached)"
    finally:
        block.forward = forward
    with F.disabled():
        want = _patch(model, site="resid_pre", layer=1, position=2)
    assert abs(float(got) - float(want)) <= ATOL


def test_interrupts_leave_the_model_usable():
    """A KeyboardInterrupt (the kernel's interrupt) inside a user's forward or inside a sweep releases the
    model: nothing stays swapped or hooked, and another thread's op runs and is exact."""
    from workbench.engine.model_key import structure_key

    model = tiny_model("llama", seed=8)
    with F.disabled():
        want = _patch(model, site="resid_pre", layer=1, position=2)
    before = structure_key(model)

    def interrupt(_m, _a, _o):
        raise KeyboardInterrupt

    handle = model.hf.model.layers[0].register_forward_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        model.hf(model.to_tokens(CLEAN))
    handle.remove()

    def stop(_fraction, _message):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site="head", by_position=True, progress=stop)
    assert structure_key(model) == before, "a forward or hook was left behind"
    op, box = _in_thread(lambda: _patch(model, site="resid_pre", layer=1, position=2), 60)
    assert not op.is_alive(), "the model stayed locked after an interrupt"
    assert "error" not in box and abs(float(box["value"]) - float(want)) <= ATOL


def test_transformers_output_capture_hooks_keep_the_fast_paths():
    """`output_hidden_states=True` leaves transformers' capture hooks on the blocks; they only record, so the
    fast paths stay on (they turned off for the rest of the session) and stay exact."""
    from tests.engine_rows import Cell, fast_run
    from workbench.ops.patching import pair_tokens

    model = tiny_model("llama", seed=9)
    with torch.no_grad():
        model.hf(model.to_tokens(CLEAN), output_hidden_states=True, output_attentions=True)
    assert any(m._forward_hooks for m in model.hf.modules()), "transformers left no hooks: nothing to check"
    assert not F.has_hooks(model)
    c, k = pair_tokens(model, CLEAN, CORRUPT)
    assert fast_run(model, c, k, "resid_pre", [Cell(1, 2)], metric().bind(model)) is not None
    got = _patch(model, site="mlp_out", layer=1, position=2)
    with F.disabled():
        want = _patch(model, site="mlp_out", layer=1, position=2)
    assert abs(float(got) - float(want)) <= ATOL
