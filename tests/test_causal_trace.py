"""wb.causal_trace (issue 14) against an independent plain-hook implementation of ROME's causal tracing.

`tests/reference.py:reference_causal_trace` is written from ROME's experiments/causal_trace.py
(`trace_with_patch`, `trace_important_window`) and notebooks/causal_trace_frozen_mlp_attn.ipynb
(`trace_with_repatch`, `trace_important_states_3`): one (S+1)-row batch per (layer, position), noise added to
the embedding output of rows 1..S at the subject, the restored state copied from row 0. With the same noise
tensor every value, `.high` and `.low` must agree at 1e-5.

The tiny models are random and nearly flat, so the reference comparisons use a copy whose unembedding is
scaled up (`sharp`): p(target) then moves by ~0.1-0.4 across the grid, and each test also checks that the
grid is not flat (so it can fail). The fast path is compared with the traced path on every family, also
after user edits of the model. Embedded-model cases are marked `embedded`.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import workbench as wb
from tests import reference as R
from tests.conftest import CLEAN, assert_close, run_code
from tests.test_trust import EDITS, apply_edit
from workbench.engine import fast
from workbench.errors import WorkbenchError
from workbench.testing import FAMILIES, tiny_model

TOL = 1e-5
SUBJECT = "Eiffel Tower"  # tokens 1..2 of CLEAN in the tiny tokenizer
REF_FAMILIES = ("gpt2", "llama", "gpt_neox")
# (kind, window, sever): every kind, several windows, both severed paths (and a severed window kind)
CASES = [
    ("resid", 10, None),
    ("mlp", 1, None),
    ("mlp", 2, None),
    ("mlp", 3, None),
    ("mlp", 10, None),
    ("attn", 1, None),
    ("attn", 2, None),
    ("attn", 3, None),
    ("attn", 10, None),
    ("resid", 10, "mlp"),
    ("resid", 10, "attn"),
    ("attn", 3, "mlp"),
    ("mlp", 2, "attn"),
]


def _case_id(case):
    kind, window, sever = case
    return f"{kind}-w{window}" + (f"-sever_{sever}" if sever else "")


_SHARP: dict[str, object] = {}


def sharp(family: str):
    """A tiny model whose unembedding is scaled by 8 (peaked predictions: p(target) visibly moves)."""
    if family not in _SHARP:
        m = tiny_model(family)
        with torch.no_grad():
            m.hf.get_output_embeddings().weight.mul_(8.0)
        _SHARP[family] = m
    return _SHARP[family]


def ref(model, tr, kind=None, window=None, sever="same", target=None, batch=1, cells=None):
    """The reference trace of CausalTrace `tr`'s prompt with tr's own noise tensor and target."""
    o = tr.options
    ids = model.to_tokens(o["prompt"])
    return R.reference_causal_trace(
        model.hf,
        ids,
        tr.subject,
        tr.noise,
        tr.target_id if target is None else target,
        kind=o["kind"] if kind is None else kind,
        window=o["window"] if window is None else window,
        sever=o["sever"] if sever == "same" else sever,
        batch=batch,
        cells=cells,
    )


def check_against_reference(model, tr, what, batch=1, min_spread=1e-2):
    values, high, low = ref(model, tr, batch=batch)
    assert tr.values.dtype == np.float32 and tr.values.shape == values.shape
    assert_close(tr.values, values, TOL, f"{what} values")
    assert_close(tr.high, high, TOL, f"{what} high")
    assert_close(tr.low, low, TOL, f"{what} low")
    assert_close(tr.effect, values - np.float32(low), TOL, f"{what} effect")
    spread = float(values.max() - values.min())
    assert spread > min_spread, f"{what}: the reference grid is flat ({spread:.3g}), the test could not fail"
    return values


# ------------------------------------------------------------------------------ the reference, tiny models
# every case on llama; on gpt2 and gpt_neox a few by default, the rest marked slow
QUICK = {
    ("resid", 10, None),
    ("mlp", 3, None),
    ("attn", 2, None),
    ("resid", 10, "mlp"),
    ("resid", 10, "attn"),
}
REF_PARAMS = [
    pytest.param(f, c, id=f"{f}-{_case_id(c)}", marks=() if f == "llama" or c in QUICK else pytest.mark.slow)
    for f in REF_FAMILIES
    for c in CASES
]


@pytest.mark.parametrize(("family", "case"), REF_PARAMS)
def test_equals_rome_reference(family, case):
    kind, window, sever = case
    m = sharp(family)
    tr = wb.causal_trace(
        m, CLEAN, subject=SUBJECT, kind=kind, window=window, sever=sever, samples=3, noise=6.0, progress=False
    )
    assert tr.subject == (1, 3) and tr.noise.shape == (3, 2, m.d_model)
    check_against_reference(m, tr, f"{family} {_case_id(case)}")


@pytest.mark.parametrize("family", REF_FAMILIES)
def test_given_noise_tensor_and_target(family):
    """noise= a tensor is added as given (another sample count, a non-default target)."""
    m = sharp(family)
    noise = torch.randn(5, 2, m.d_model, generator=torch.Generator().manual_seed(7)) * 2.0
    target = int(torch.softmax(R.run_last_logits(m.hf, m.to_tokens(CLEAN))[0], -1).argsort()[-2])
    for kind, window, sever in [("resid", 10, None), ("mlp", 3, None), ("resid", 10, "mlp")]:
        tr = wb.causal_trace(
            m, CLEAN, subject=SUBJECT, target=target, kind=kind, window=window, sever=sever, noise=noise,
            samples=5, progress=False,
        )  # fmt: skip
        assert torch.equal(tr.noise, noise) and tr.target_id == target
        check_against_reference(
            m, tr, f"{family} {kind} w{window} sever {sever} given noise", min_spread=1e-3
        )


@pytest.mark.parametrize("family", REF_FAMILIES)
def test_severing_and_windows_change_the_numbers(family):
    """The severed paths and the windows are not no-ops on these models (so the comparisons above can fail)."""
    m = sharp(family)
    kw = dict(subject=SUBJECT, samples=3, noise=6.0, progress=False)
    plain = wb.causal_trace(m, CLEAN, **kw).values
    for sever in ("mlp", "attn"):
        severed = wb.causal_trace(m, CLEAN, sever=sever, **kw).values
        assert np.abs(severed - plain).max() > 1e-3, f"{family}: sever={sever} changed nothing"
        # only positions at or after the subject can change (the noise starts there)
        assert_close(severed[:, 0], plain[:, 0], TOL, f"{family} sever {sever} position 0")
    w1 = wb.causal_trace(m, CLEAN, kind="mlp", window=1, **kw).values
    w3 = wb.causal_trace(m, CLEAN, kind="mlp", window=3, **kw).values
    assert np.abs(w1 - w3).max() > 1e-3


def test_window_convention():
    from workbench.ops.tracing import window_layers

    for L in (1, 3, 7, 30):
        for w in (1, 2, 3, 4, 10, 31):
            for layer in range(L):
                assert list(window_layers(layer, w, L)) == list(R.trace_window(layer, w, L)), (L, w, layer)
    assert list(R.trace_window(5, 10, 30)) == list(range(0, 10))
    assert list(R.trace_window(5, 2, 30)) == [4, 5]
    assert list(R.trace_window(5, 3, 30)) == [4, 5, 6]


def test_reference_batching_is_the_same():
    """The reference's batch= (several cells' batches in one forward) only changes float noise."""
    m = sharp("llama")
    tr = wb.causal_trace(
        m, CLEAN, subject=SUBJECT, kind="attn", window=2, sever=None, samples=2, progress=False
    )
    one = ref(m, tr)
    many = ref(m, tr, batch=9)
    assert_close(many[0], one[0], 1e-6, "reference batch=9 vs batch=1")


# ------------------------------------------------------------------------------ fast path vs traced path
DIFF_CASES = [
    ("resid", 10, None),
    ("mlp", 3, None),
    ("attn", 2, None),
    ("resid", 10, "mlp"),
    ("resid", 10, "attn"),
]


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_equals_traced(family):
    m = tiny_model(family)
    for kind, window, sever in DIFF_CASES:
        kw = dict(
            subject=SUBJECT, kind=kind, window=window, sever=sever, samples=2, noise=5.0, progress=False
        )
        a = wb.causal_trace(m, CLEAN, **kw)
        with fast.disabled():
            b = wb.causal_trace(m, CLEAN, **kw)
        what = f"{family} {kind} w{window} sever {sever}"
        assert torch.equal(a.noise, b.noise), what
        assert_close(a.values, b.values, TOL, f"{what} fast vs traced values")
        assert_close(a.high, b.high, TOL, f"{what} high")
        assert_close(a.low, b.low, TOL, f"{what} low")
        assert a.values.max() - a.values.min() > 1e-5, f"{what}: flat grid"


# each edit on one family by default (alternating), on the other marked slow
EDIT_PARAMS = [
    pytest.param(f, e, id=f"{f}-{e}", marks=() if (i + (f == "gpt2")) % 2 == 1 else pytest.mark.slow)
    for i, e in enumerate(EDITS)
    for f in ("llama", "gpt2")
]


@pytest.mark.parametrize(("family", "edit"), EDIT_PARAMS)
def test_trace_follows_edited_model(family, edit):
    """Warm the caches with a trace, edit the model the way users do, trace again: fast == traced ==
    the reference on the edited model (same noise)."""
    m = tiny_model(family, seed=3)
    with torch.no_grad():
        m.hf.get_output_embeddings().weight.mul_(8.0)
    noise = torch.randn(3, 2, m.d_model, generator=torch.Generator().manual_seed(1)) * 3.0
    kws = [dict(kind="resid"), dict(kind="mlp", window=3), dict(kind="resid", sever="attn")]
    before = [
        wb.causal_trace(m, CLEAN, subject=SUBJECT, noise=noise, samples=3, progress=False, **kw) for kw in kws
    ]
    logits = R.run_last_logits(m.hf, m.to_tokens(CLEAN))
    what = f"{family} {apply_edit(m, edit, np.random.default_rng(11))}"
    if torch.equal(R.run_last_logits(m.hf, m.to_tokens(CLEAN)), logits):
        pytest.skip(f"{what} changes nothing (e.g. a zero bias scaled)")
    changed = False
    for kw, old in zip(kws, before, strict=True):
        # the clean top-1 may change with the edit: keep the target fixed
        args = dict(subject=SUBJECT, noise=noise, samples=3, target=old.target_id, progress=False, **kw)
        new = wb.causal_trace(m, CLEAN, **args)
        with fast.disabled():
            plain = wb.causal_trace(m, CLEAN, **args)
        assert_close(new.values, plain.values, TOL, f"{what} {kw}: fast vs traced")
        values, high, low = ref(m, new)
        assert_close(new.values, values, TOL, f"{what} {kw}: vs reference")
        assert_close((new.high, new.low), (high, low), TOL, f"{what} {kw}: high/low vs reference")
        changed |= bool(np.abs(new.values - old.values).max() > 1e-4)
    assert changed, f"{what}: the edit changed no trace value (the test would not see a stale cache)"


# ------------------------------------------------------------------------------ float noise
def test_float_noise_is_seeded_unit_normal_times_std():
    m = tiny_model("gpt2")
    ids = m.to_tokens(CLEAN)
    tr = wb.causal_trace(m, CLEAN, subject=SUBJECT, samples=4, noise=3.0, seed=5, progress=False)
    a, b = tr.subject
    std = float(R.capture(m.hf, ids, "embed")[0][a:b].std())
    assert_close(tr.noise_std, std, 1e-6, "noise_std")
    unit = torch.randn(4, b - a, m.d_model, generator=torch.Generator().manual_seed(5))
    assert_close(tr.noise, unit * 3.0 * std, 1e-5, ".noise")
    again = wb.causal_trace(m, CLEAN, subject=SUBJECT, samples=4, noise=3.0, seed=5, progress=False)
    assert torch.equal(again.noise, tr.noise) and np.array_equal(again.values, tr.values)
    other = wb.causal_trace(m, CLEAN, subject=SUBJECT, samples=4, noise=3.0, seed=6, progress=False)
    assert not torch.equal(other.noise, tr.noise)
    assert np.abs(other.values - tr.values).max() > 1e-6
    doubled = wb.causal_trace(m, CLEAN, subject=SUBJECT, samples=4, noise=6.0, seed=5, progress=False)
    assert_close(doubled.noise, 2 * tr.noise, 1e-5, "noise=6 is twice noise=3")


# ------------------------------------------------------------------------------ bad input
def test_bad_input_names_the_fix():
    m = tiny_model("llama")
    kw = dict(samples=2, progress=False)
    good = wb.causal_trace(m, CLEAN, subject=SUBJECT, **kw)
    bad = [
        (dict(subject="Big Ben"), "subject"),
        (dict(subject=""), "subject"),
        (dict(subject=SUBJECT, window=0), "window"),
        (dict(subject=SUBJECT, kind="mlp", window=-2), "window"),
        (dict(subject=SUBJECT, samples=0), "samples"),
        (dict(subject=SUBJECT, noise=torch.zeros(2, 3, m.d_model)), "noise"),
        (dict(subject=SUBJECT, noise=torch.zeros(2, m.d_model)), "noise"),
        (dict(subject=SUBJECT, target=" Paris Rome"), "target"),
        (dict(subject=SUBJECT, kind="mlp", sever="mlp"), "sever"),
        (dict(subject=SUBJECT, kind="attn", sever="attn"), "sever"),
        (dict(subject=SUBJECT, kind="hidden"), "kind"),
        (dict(subject=SUBJECT, sever="resid"), "sever"),
    ]
    for args, word in bad:
        merged = {**kw, **args}
        with pytest.raises(WorkbenchError) as info:
            wb.causal_trace(m, CLEAN, **merged)
        msg = str(info.value)
        assert word in msg, f"{args}: the message does not name {word!r}: {msg}"
    after = wb.causal_trace(m, CLEAN, subject=SUBJECT, **kw)  # the model still works
    assert np.array_equal(after.values, good.values)
    assert abs(after.high - good.high) <= TOL


def test_subject_as_span():
    m = sharp("gpt2")
    by_text = wb.causal_trace(m, CLEAN, subject=SUBJECT, samples=2, progress=False)
    by_span = wb.causal_trace(m, CLEAN, subject=(1, 3), samples=2, progress=False)
    assert by_span.subject == (1, 3)
    assert_close(by_span.values, by_text.values, 0.0, "subject=(1, 3) vs text")
    assert by_text.labels[1:3] == [t + "*" for t in by_text.tokens[1:3]] and "*" not in by_text.labels[0]


# ------------------------------------------------------------------------------ to_code, pickling
@pytest.mark.parametrize(
    "kw", [dict(kind="resid"), dict(kind="mlp", window=3), dict(kind="resid", sever="mlp")], ids=str
)
def test_to_code_reproduces_values(kw):
    m = tiny_model("gpt2")  # to_code rebuilds the unedited tiny model
    tr = wb.causal_trace(m, CLEAN, subject=SUBJECT, samples=2, noise=5.0, progress=False, **kw)
    ns = run_code(tr.to_code())
    assert_close(np.asarray(ns["result"]), tr.values, TOL, f"to_code {kw}")
    back = pickle.loads(pickle.dumps(tr))
    assert back.to_code() == tr.to_code()
    assert_close(back.values, tr.values, 0.0, "pickled values")
    assert torch.equal(back.noise, tr.noise)


# ------------------------------------------------------------------------------ over a dataset
FACTS = [
    # (prompt, subject span, target): subjects of 2, 1 and 3 tokens, prompts of different lengths
    ("The Eiffel Tower is located in the city of", (1, 3), " Paris"),
    ("The Colosseum is located in the city of", (1, 2), " Rome"),
    ("When Mary and John went to the store, John gave a drink to", (1, 4), " Mary"),
]


def rome_groups(grids, spans):
    """ROME's average_causal_effects.ipynb grouping, by hand: per group the (fact, token) columns pooled."""
    pools = [[] for _ in range(6)]
    for g, (a, b) in zip(grids, spans, strict=True):
        T = g.shape[1]
        last_e, first_a, last_a = b - 1, b, T - 1
        pools[0].append(g[:, [a]])
        pools[1].append(g[:, a + 1 : last_e])
        pools[2].append(g[:, [last_e]])
        pools[3].append(g[:, [first_a]])
        pools[4].append(g[:, first_a + 1 : last_a])
        pools[5].append(g[:, [last_a]])
    L = grids[0].shape[0]
    values, sem, counts = np.full((L, 6), np.nan), np.full((L, 6), np.nan), np.zeros(6, int)
    for k, pool in enumerate(pools):
        cols = np.concatenate(pool, axis=1)  # [L, n]
        counts[k] = cols.shape[1]
        if cols.shape[1]:
            values[:, k] = cols.mean(1)
        if cols.shape[1] > 1:
            sem[:, k] = cols.std(1, ddof=1) / np.sqrt(cols.shape[1])
    return values, sem, counts


@pytest.mark.parametrize("kw", [dict(kind="resid"), dict(kind="attn", window=2)], ids=str)
def test_dataset_trace(kw):
    m = sharp("gpt2")
    tok = m.tokenizer
    for prompt, (_, b), target in FACTS:  # the spans are the subjects' tokens
        assert R.single_token(tok, target)
        assert len(m.to_tokens(prompt)[0]) > b + 1
    ds = wb.Dataset(
        clean=[f[0] for f in FACTS], spans=[{"subject": f[1]} for f in FACTS], target=[f[2] for f in FACTS]
    )
    dt = wb.causal_trace(m, ds, samples=3, noise=4.0, progress=False, **kw)
    assert len(dt.per_example) == len(FACTS) and dt.values.shape == (m.n_layers, 6)
    grids = []
    for i, (prompt, span, target) in enumerate(FACTS):
        ex = dt.per_example[i]
        assert ex.subject == span and ex.target_id == R.single_token(tok, target)
        single = wb.causal_trace(
            m, prompt, subject=span, target=target, noise=ex.noise, samples=3, progress=False, **kw
        )
        assert_close(ex.values, single.values, TOL, f"fact {i} per_example vs single")
        assert_close((ex.high, ex.low), (single.high, single.low), TOL, f"fact {i} high/low")
        values, high, low = ref(m, ex)
        assert_close(ex.values, values, TOL, f"fact {i} vs reference")
        grids.append(ex.values)
    values, sem, counts = rome_groups(grids, [f[1] for f in FACTS])
    assert list(dt.counts) == list(counts)
    assert_close(dt.values, values, TOL, "grouped values")
    assert_close(dt.sem, sem, TOL, "grouped sem")
    assert_close(dt.high, np.mean([e.high for e in dt.per_example]), TOL, "high")
    assert_close(dt.effect, dt.values - np.float32(dt.low), TOL, "effect")
    # one noise scale for all facts: the std over every fact's subject-token embeddings (ROME's rule)
    embs = [R.capture(m.hf, m.to_tokens(p), "embed")[0][a:b] for p, (a, b), _ in FACTS]
    std = float(torch.cat(embs).std())
    assert_close(dt.noise_std, std, 1e-6, "dataset noise_std")
    for i, ex in enumerate(dt.per_example):
        ratio = float(ex.noise.std()) / (4.0 * std)
        assert 0.7 < ratio < 1.3, (
            f"fact {i}: noise std {float(ex.noise.std()):.3g} is not ~4 x the pooled std"
        )


# ------------------------------------------------------------------------------ the embedded model
@pytest.fixture(scope="module")
def embedded():
    return wb.load()


EMBEDDED = "The Eiffel Tower is located in the city of"
SHORT = "The Eiffel Tower is in"  # 6 tokens: a full reference grid costs ~13 s of CPU instead of ~50 s
EMBEDDED_CASES = [dict(kind="resid"), dict(kind="mlp", window=10), dict(kind="resid", sever="mlp")]


@pytest.mark.embedded
def test_embedded_subject_tokens(embedded):
    from workbench.ops.tracing import subject_span

    ids = embedded.to_tokens(EMBEDDED)
    assert ids.shape == (1, 10)
    for subject in ("Eiffel Tower", " Eiffel Tower", "Eiffel"):
        want = (1, 4) if "Tower" in subject else (1, 3)
        assert subject_span(embedded, EMBEDDED, ids, subject) == want, subject


@pytest.mark.embedded
@pytest.mark.parametrize("kw", EMBEDDED_CASES, ids=str)
def test_embedded_equals_reference(embedded, kw):
    """Every layer at the last subject token and the last token (the reference's cells= subset)."""
    tr = wb.causal_trace(embedded, SHORT, subject="Eiffel Tower", samples=2, progress=False, **kw)
    assert tr.subject == (1, 4) and tr.values.shape == (30, 6)
    cells = [(layer, t) for layer in range(30) for t in (3, 5)]
    values, high, low = ref(embedded, tr, batch=20, cells=cells)
    what = f"embedded {kw}"
    assert_close(tr.values[:, [3, 5]], values[:, [3, 5]], TOL, f"{what} values")
    assert_close((tr.high, tr.low), (high, low), TOL, f"{what} high/low")
    assert tr.target == " Paris" and tr.high > 0.1 and tr.low < 0.01, (tr.high, tr.low)
    assert tr.labels[1:4] == [" E*", "iffel*", " Tower*"]
    assert values[:, [3, 5]].max() - values[:, [3, 5]].min() > 0.02


@pytest.mark.embedded
@pytest.mark.slow
@pytest.mark.parametrize("kw", EMBEDDED_CASES, ids=str)
def test_embedded_equals_reference_every_cell(embedded, kw):
    tr = wb.causal_trace(embedded, SHORT, subject="Eiffel Tower", samples=2, progress=False, **kw)
    check_against_reference(embedded, tr, f"embedded {kw} every cell", batch=6, min_spread=0.02)


def test_a_noise_tensor_sets_the_sample_count() -> None:
    """noise=<an earlier trace's .noise> replays it without repeating samples= (10 is only the default)."""
    model = tiny_model("llama")
    first = wb.causal_trace(model, "The Eiffel Tower is in", subject=(1, 3), samples=3, progress=False)
    again = wb.causal_trace(
        model, "The Eiffel Tower is in", subject=(1, 3), noise=first.noise, progress=False
    )
    assert again.noise.shape[0] == 3
    assert np.abs(again.values - first.values).max() <= 1e-6
    with pytest.raises(wb.WorkbenchError, match="shape"):
        wb.causal_trace(model, "The Eiffel Tower is in", subject=(1, 3), noise=first.noise, samples=4)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_other_threads_during_a_causal_trace(family):
    """While the trace's replay runs (lock held, hooks and oneDNN linears in place), another thread's direct
    submodule call gets its true numbers and its whole-model forward waits and then computes its own; the
    trace equals one run alone on the traced path."""
    from tests.test_trust import OTHER_PROMPT, _in_thread

    model = tiny_model(family, seed=3)
    ids = model.to_tokens(OTHER_PROMPT)
    with torch.no_grad():
        want_logits = model.hf(ids).logits.clone()
    head = model.hf.get_output_embeddings()
    x = torch.randn(4, model.d_model)
    with torch.no_grad():
        want_head = head(x).clone()
    prompt, span = "The Eiffel Tower is in Paris", (1, 3)
    first = wb.causal_trace(model, prompt, subject=span, kind="mlp", window=2, samples=3, progress=False)
    with fast.disabled():
        alone = wb.causal_trace(model, prompt, subject=span, kind="mlp", window=2, noise=first.noise)
    checks: dict = {}

    def progress(fraction, _message):
        if checks or fraction <= 0.0:
            return
        t, box = _in_thread(lambda: head(x).detach().clone(), 30)
        checks["submodule"] = (t.is_alive(), box)
        fwd, fwd_box = _in_thread(lambda: model.hf(ids).logits.detach().clone(), 0.5)
        checks["forward"] = (fwd, fwd_box, fwd.is_alive())

    traced = wb.causal_trace(
        model, prompt, subject=span, kind="mlp", window=2, noise=first.noise, progress=progress
    )
    alive, box = checks["submodule"]
    assert not alive and "error" not in box, box
    assert_close(box["value"], want_head, 1e-5, "a direct submodule call from another thread")
    fwd, result, was_waiting = checks["forward"]
    assert was_waiting, "the other thread's forward did not wait for the running trace"
    fwd.join(60)
    assert not fwd.is_alive() and "error" not in result, result
    assert_close(result["value"], want_logits, 1e-5, "another thread's forward")
    assert_close(traced.values, alone.values, 1e-5, "the trace that ran beside another thread")
