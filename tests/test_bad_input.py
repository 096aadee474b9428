"""Bad input (issue 10): every kind of wrong value is a WorkbenchError that names the problem and the fix,
integer-like values are accepted the same way everywhere, `to_code()` is valid Python, results have a
short repr and pickle. After every error the model still gives the right numbers."""

from __future__ import annotations

import ast
import math
import pickle

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.codegen import lit

from .conftest import CLEAN, CORRUPT, FOIL, OTHER, TARGET, assert_close, run_code, tiny


@pytest.fixture(scope="module")
def model():
    return tiny("llama")


def metric():
    return wb.logit_diff(TARGET, FOIL)


_REFERENCE: dict[int, float] = {}


def still_works(model) -> None:
    """A correct call after an error gives the same value as on a fresh model state."""
    v = float(wb.patch(model, CLEAN, CORRUPT, metric=metric(), site="resid_pre", layer=1, position=3))
    expected = _REFERENCE.setdefault(id(model), v)
    assert v == pytest.approx(expected, abs=1e-5)
    assert wb.logit_lens(model, CLEAN).top_ids.shape[0] == model.n_layers


def raises(fn, *needles, kind=wb.WorkbenchError, absent=()):
    with pytest.raises(kind) as info:
        fn()
    msg = str(info.value)
    for needle in needles:
        assert needle.lower() in msg.lower(), f"message does not mention {needle!r}: {msg!r}"
    for word in absent:
        assert word not in msg, f"message should not say {word!r}: {msg!r}"
    return msg


# =============================================================================================
# 1. Types: one validator for every integer-like index


INTEGER_LIKE = [
    np.int64(1),
    np.int32(1),
    np.uint8(1),
    torch.tensor(1),
    np.array(1),
    torch.tensor(1, dtype=torch.int16),
]


@pytest.mark.parametrize("one", INTEGER_LIKE, ids=lambda v: f"{type(v).__name__}")
def test_integer_like_indices_are_accepted_everywhere(model, one):
    still_works(model)
    two = one + 1  # same type, value 2
    ref = wb.patch(model, CLEAN, CORRUPT, metric=metric(), site="head", layer=1, position=2, head=2)
    got = wb.patch(model, CLEAN, CORRUPT, metric=metric(), site="head", layer=one, position=two, head=two)
    assert float(got) == pytest.approx(float(ref), abs=1e-6)
    assert got.options["layer"] == 1 and type(got.options["layer"]) is int
    assert type(got.options["position"]) is int and type(got.options["head"]) is int
    drag = wb.patch(
        model, CLEAN, CORRUPT, metric=metric(), layer=two, position=two, source_layer=one, source_position=one
    )
    assert type(drag.options["source_layer"]) is int and type(drag.options["source_position"]) is int
    a = wb.ablate(model, CLEAN, metric=metric(), site="mlp_out", layer=one, position=two, top_k=two)
    assert len(a.top_tokens) == 2
    lens = wb.logit_lens(model, CLEAN, top_k=two, tokens=[one, TARGET])
    assert lens.top_ids.shape[-1] == 2 and lens.options["tokens"] == [1, TARGET]
    assert wb.attention(model, CLEAN, layers=[one]).layers == [1]
    assert wb.attention(model, CLEAN, layers=one).layers == [1]
    vec = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))
    s = wb.steer(model, CLEAN, vector=vec, layer=one, max_new_tokens=two, baseline=False)
    assert len(s.tokens) <= 2
    assert type(s.options["layer"]) is int and type(s.options["max_new_tokens"]) is int
    # token ids from argmax
    logits = model.hf(model.to_tokens(CLEAN)).logits[0, -1]
    top = logits.argmax()
    v = wb.patch(model, CLEAN, CORRUPT, metric=wb.logit_diff(top, np.int64(3)), layer=0, position=0)
    assert math.isfinite(float(v))
    for r in (got, drag, a, lens, s):
        assert "np." not in r.to_code() and "tensor(1" not in r.to_code()
        compile(r.to_code(), "<to_code>", "exec")
    still_works(model)


def test_booleans_are_refused_as_indices(model):
    still_works(model)
    m = metric()
    cases = [
        lambda: wb.patch(model, CLEAN, CORRUPT, metric=m, site="head", layer=0, position=0, head=True),
        lambda: wb.patch(model, CLEAN, CORRUPT, metric=m, site="head", layer=0, head=np.bool_(False)),
        lambda: wb.patch(model, CLEAN, CORRUPT, metric=m, layer=True, position=0),
        lambda: wb.patch(model, CLEAN, CORRUPT, metric=m, layer=0, position=True),
        lambda: wb.patch(model, CLEAN, CORRUPT, metric=m, layer=1, position=1, source_layer=False),
        lambda: wb.patch(
            model, CLEAN, CORRUPT, metric=m, layer=1, position=1, source_position=torch.tensor(True)
        ),
        lambda: wb.ablate(model, CLEAN, metric=m, site="head", layer=0, head=True),
        lambda: wb.patch(model, CLEAN, CORRUPT, metric=wb.logit_diff(True, 3), layer=0, position=0),
        lambda: wb.prob(False),
        lambda: wb.logit_lens(model, CLEAN, top_k=True),
        lambda: wb.logit_lens(model, CLEAN, tokens=[True]),
        lambda: wb.attention(model, CLEAN, layers=[True]),
        lambda: wb.steer(model, CLEAN, vector=torch.zeros(model.d_model), layer=True, max_new_tokens=2),
        lambda: wb.steer(model, CLEAN, vector=torch.zeros(model.d_model), layer=0, max_new_tokens=True),
        lambda: wb.steering_vector(model, CLEAN, OTHER, True),
        lambda: wb.logit_lens(
            model,
            CORRUPT,
            intervention=wb.Intervention(site="resid_pre", layer=True, position=0, source=CLEAN),
        ),
    ]
    for fn in cases:
        raises(fn, "boolean")
    still_works(model)


def test_floats_are_the_wrong_type_not_out_of_range(model):
    still_works(model)
    m = metric()
    cases = [
        lambda: wb.patch(model, CLEAN, CORRUPT, metric=m, layer=1.0, position=0),
        lambda: wb.patch(model, CLEAN, CORRUPT, metric=m, layer=0, position=2.5),
        lambda: wb.patch(model, CLEAN, CORRUPT, metric=m, site="head", layer=0, head=1.0),
        lambda: wb.patch(model, CLEAN, CORRUPT, metric=m, layer=0, position=np.float32(2)),
        lambda: wb.patch(model, CLEAN, CORRUPT, metric=m, layer=torch.tensor(1.0), position=0),
        lambda: wb.patch(model, CLEAN, CORRUPT, metric=wb.logit_diff(5.0, 3), layer=0, position=0),
        lambda: wb.logit_lens(model, CLEAN, top_k=3.0),
        lambda: wb.attention(model, CLEAN, layers=[0.5]),
        lambda: wb.steer(model, CLEAN, vector=torch.zeros(model.d_model), layer=0, max_new_tokens=2.0),
    ]
    for fn in cases:
        raises(fn, "float", "wrong type", absent=("out of range",))
    # other non-integers name the type
    for bad in ("1", [1], None, np.array([1]), torch.tensor([1, 2])):
        raises(lambda bad=bad: wb.patch(model, CLEAN, CORRUPT, metric=m, layer=bad, position=0), "integer")
    still_works(model)


def test_tokens_given_as_one_string_is_one_token(model):
    one = wb.logit_lens(model, CLEAN, tokens=TARGET)
    listed = wb.logit_lens(model, CLEAN, tokens=[TARGET])
    assert one.options["tokens"] == [TARGET]
    assert np.array_equal(one.prob(TARGET), listed.prob(TARGET))
    tid = model.token_id(TARGET)
    assert np.array_equal(wb.logit_lens(model, CLEAN, tokens=np.int64(tid)).prob(tid), listed.prob(TARGET))
    assert wb.logit_lens(model, CLEAN, tokens=[]).options["tokens"] == []
    raises(lambda: wb.logit_lens(model, CLEAN, tokens={TARGET: 1}), "list")
    raises(lambda: wb.logit_lens(model, CLEAN, tokens=" Parisian"), "Parisian", kind=wb.TokenizationError)
    still_works(model)


# =============================================================================================
# 2. Raw torch/transformers errors become WorkbenchErrors


SURROGATE = "The Eiffel \ud800 Tower"


def test_lone_surrogates_are_a_tokenization_error(model):
    still_works(model)
    m = metric()
    cases = [
        lambda: wb.logit_lens(model, SURROGATE),
        lambda: wb.patch_sweep(model, SURROGATE, CORRUPT, metric=m),
        lambda: wb.patch(model, CLEAN, "\udfff" + CORRUPT, metric=m, layer=0, position=0),
        lambda: wb.patch(model, CLEAN, CORRUPT, metric=wb.prob("\ud800"), layer=0, position=0),
        lambda: wb.logit_diff(" Paris", "\udc80"),
        lambda: wb.logit_lens(model, CLEAN, tokens=["\ud83d"]),
        lambda: wb.logit_lens(model, CLEAN).prob("\ud800"),
        lambda: wb.ablate(model, CLEAN, metric=m, layer=0, method="mean", reference=SURROGATE),
        lambda: wb.steer(model, CLEAN, vector=(SURROGATE, OTHER), layer=1, max_new_tokens=2),
        lambda: wb.steering_vector(model, CLEAN, SURROGATE, 1),
        lambda: wb.attention(model, SURROGATE),
        lambda: model.to_str_tokens(SURROGATE),
    ]
    for fn in cases:
        raises(fn, "surrogate", kind=wb.TokenizationError)
    still_works(model)


def test_steering_vectors_are_converted_or_refused(model):
    still_works(model)
    vec = torch.randn(model.d_model, generator=torch.Generator().manual_seed(1))

    def steer(v, **kw):
        kw.setdefault("scale", 3.0)
        return wb.steer(model, CLEAN, vector=v, layer=1, max_new_tokens=3, baseline=False, **kw)

    ref = steer(vec)
    assert steer(vec.clone().requires_grad_(True)).tokens == ref.tokens
    assert steer(vec.double().numpy()).tokens == ref.tokens
    assert steer(vec.tolist()).tokens == ref.tokens
    assert steer(vec[None]).tokens == ref.tokens  # [1, d_model]
    assert steer(vec.bfloat16()).tokens == steer(vec.bfloat16().float()).tokens
    raises(lambda: steer(torch.empty(model.d_model, device="meta")), "meta")
    raises(lambda: steer(vec.to(torch.complex64)), "real")
    raises(lambda: steer(np.array(["a"] * model.d_model)), "real numbers")
    raises(lambda: steer(torch.randn(model.d_model + 1)), str(model.d_model))
    for bad in (float("nan"), float("inf"), -float("inf")):
        v = vec.clone()
        v[3] = bad
        raises(lambda v=v: steer(v), "non-finite")
        raises(lambda bad=bad: steer(vec, scale=bad), "finite")
    raises(lambda: steer(vec, scale=1e39), "overflow")
    for bad in (True, "2", None, torch.ones(2)):
        raises(lambda bad=bad: steer(vec, scale=bad), "scale")
    still_works(model)


BAD_METRICS = {
    "none": lambda logits: None,
    "str": lambda logits: "high",
    "dict": lambda logits: {"value": logits[:, 0]},
    "shape": lambda logits: logits[:, :3],
    "bool": lambda logits: logits[:, 0] > 0,
    "raises": lambda logits: logits[:, 10**6],
}


@pytest.mark.parametrize("name", sorted(BAD_METRICS))
def test_bad_metrics_are_workbench_errors(model, name):
    still_works(model)
    fn = BAD_METRICS[name]
    for call in (
        lambda: wb.patch(model, CLEAN, CORRUPT, metric=fn, layer=1, position=2),
        lambda: wb.patch_sweep(model, CLEAN, CORRUPT, metric=fn),
        lambda: wb.ablate(model, CLEAN, metric=fn, layer=1),
        lambda: wb.ablate_sweep(model, CLEAN, metric=fn, site="head"),
        lambda: wb.attribution_patch(model, CLEAN, CORRUPT, metric=fn, site=["resid_pre", "head"]),
    ):
        raises(call, "metric")
    still_works(model)


NOT_DIFFERENTIABLE = {
    "item": lambda logits: torch.tensor([float(x) for x in logits[:, 5].tolist()]),
    "argmax": lambda logits: logits.argmax(-1).float(),
    "comparison": lambda logits: (logits[:, 5] > logits[:, 6]).float(),
    "detach": lambda logits: logits[:, 5].detach() - logits[:, 6].detach(),
    "numpy": lambda logits: logits[:, 5].detach().numpy(),
}


@pytest.mark.parametrize("name", sorted(NOT_DIFFERENTIABLE))
def test_attribution_needs_a_differentiable_metric(model, name):
    fn = NOT_DIFFERENTIABLE[name]
    raises(lambda: wb.attribution_patch(model, CLEAN, CORRUPT, metric=fn), "not differentiable")
    # the same metric is fine where no gradient is needed
    assert math.isfinite(float(wb.patch(model, CLEAN, CORRUPT, metric=fn, layer=1, position=2)))
    still_works(model)


def test_empty_and_bad_lists(model):
    still_works(model)
    raises(
        lambda: wb.attribution_patch(model, CLEAN, CORRUPT, metric=metric(), site=[]), "empty", "resid_pre"
    )
    raises(lambda: wb.attribution_patch(model, CLEAN, CORRUPT, metric=metric(), site=()), "empty")
    raises(
        lambda: wb.attribution_patch(model, CLEAN, CORRUPT, metric=metric(), site=["resid_pre", "mlp"]),
        "mlp_out",
    )
    raises(lambda: wb.attribution_patch(model, CLEAN, CORRUPT, metric=metric(), site=None), "site")
    raises(lambda: wb.attention(model, CLEAN, layers=[]), "empty")
    raises(lambda: wb.attention(model, CLEAN, layers=range(0)), "empty")
    raises(lambda: wb.attention(model, CLEAN, layers="01"), "string")
    raises(lambda: wb.ablate(model, CLEAN, metric=metric(), layer=0, method="mean", reference=5), "reference")
    twice = wb.attribution_patch(model, CLEAN, CORRUPT, metric=metric(), site=["mlp_out", "mlp_out"])
    assert list(twice) == ["mlp_out"]
    still_works(model)


def test_top_k_out_of_range(model):
    still_works(model)
    V = model.vocab_size
    for bad in (0, -1, V + 1, 101, 10**9):
        raises(lambda bad=bad: wb.logit_lens(model, CLEAN, top_k=bad), "top_k", "out of range")
    for bad in (-1, V + 1, 101):
        raises(
            lambda bad=bad: wb.patch(model, CLEAN, CORRUPT, metric=metric(), layer=0, position=0, top_k=bad),
            "top_k",
        )
        raises(lambda bad=bad: wb.ablate(model, CLEAN, metric=metric(), layer=0, top_k=bad), "top_k")
    assert len(wb.patch(model, CLEAN, CORRUPT, metric=metric(), layer=0, position=0, top_k=0).top_tokens) == 0
    still_works(model)


# =============================================================================================
# 3. steer checks the context length


def test_steer_checks_prompt_plus_new_tokens_against_the_context(model):
    still_works(model)
    n_ctx, n = model.n_ctx, model.to_tokens(CLEAN).shape[1]
    msg = raises(
        lambda: wb.steer(
            model, CLEAN, vector=torch.zeros(model.d_model), layer=0, max_new_tokens=n_ctx - n + 1
        ),
        str(n_ctx),
        str(n_ctx - n),
        kind=wb.TokenizationError,
    )
    assert "max_new_tokens" in msg
    still_works(model)


# =============================================================================================
# 4. to_code(): valid Python literals, sanitised metric names


def test_lit_is_valid_python():
    for value in (
        float("nan"),
        float("inf"),
        -float("inf"),
        np.float64(1.5),
        np.float32(0.25),
        np.int64(3),
        np.bool_(True),
        np.str_("a\nb"),
        torch.tensor(2),
        [np.float64("nan"), (np.int8(1),), {"k": np.float16(2)}],
        None,
    ):
        code = lit(value)
        assert "np." not in code and "tensor" not in code, code
        back = eval(code, {})  # noqa: S307
        expected = value.tolist() if hasattr(value, "tolist") else value
        if isinstance(expected, float) and math.isnan(expected):
            assert math.isnan(back)
        elif not isinstance(value, list):
            assert back == expected


def test_to_code_is_valid_python_for_numpy_typed_input(model):
    vec = torch.randn(model.d_model, generator=torch.Generator().manual_seed(2))
    prompt = np.str_(CLEAN)
    results = {
        "patch": wb.patch(
            model,
            prompt,
            CORRUPT,
            metric=metric(),
            site="head",
            layer=np.int64(1),
            position=np.int64(8),
            head=torch.tensor(2),
        ),
        "ablate": wb.ablate(
            model,
            prompt,
            metric=metric(),
            site="attn_out",
            layer=np.int32(1),
            position=np.int64(-1),
            method="resample",
            reference=(OTHER,),
        ),
        "sweep": wb.patch_sweep(model, prompt, CORRUPT, metric=metric(), site="mlp_out"),
        "ablate_sweep": wb.ablate_sweep(model, CLEAN, metric=metric(), by_position=np.bool_(False)),
        "attribution": wb.attribution_patch(model, CLEAN, CORRUPT, metric=metric()),
        "lens": wb.logit_lens(model, prompt, top_k=np.int64(3), tokens=np.int64(5)),
        "attention": wb.attention(model, prompt, layers=np.array([2, 0])),
        "steer": wb.steer(
            model, CLEAN, vector=vec, layer=np.int64(1), scale=np.float64(4.0), max_new_tokens=np.int64(3)
        ),
    }
    steered = results["steer"]
    results["steer_on_result"] = wb.steer(
        model, steered, vector=vec, layer=1, scale=np.float32(0.5), max_new_tokens=2
    )
    assert type(results["ablate_sweep"].options["by_position"]) is bool
    for name, r in results.items():
        code = r.to_code()
        compile(code, f"<{name}>", "exec")
        tree = ast.parse(code)
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert not names & {"nan", "inf", "np", "array", "tensor"}, (name, names)
    # and a few actually run, with the same numbers
    assert_close(float(run_code(results["patch"].to_code())["result"]), float(results["patch"]), what="patch")
    assert_close(
        float(run_code(results["ablate"].to_code())["result"]), float(results["ablate"]), what="ablate"
    )
    got = run_code(results["attention"].to_code())["result"]
    assert_close(got, results["attention"].patterns, what="attention")
    assert str(run_code(steered.to_code())["result"]).endswith(str(steered))


def test_custom_metric_name_cannot_inject_code(model):
    def fn(logits):
        return logits[:, 5] - logits[:, 6]

    fn.__name__ = "m\nimport os; os.system('echo injected')  # "
    out = wb.patch_sweep(model, CLEAN, CORRUPT, metric=fn)
    code = out.to_code()
    compile(code, "<to_code>", "exec")
    tree = ast.parse(code)
    calls = [ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert not any("system" in c for c in calls), calls
    assert not any(isinstance(n, ast.Import) and any(a.name == "os" for a in n.names) for n in ast.walk(tree))
    assert "\n" not in out.options["metric"]
    with pytest.raises(NotImplementedError):  # the stub says where to paste the metric; it never runs junk
        run_code(code)


# =============================================================================================
# 6. intervention= must be a wb.Intervention


def test_intervention_must_be_an_intervention(model):
    still_works(model)
    value = wb.patch(model, CLEAN, CORRUPT, metric=metric(), layer=1, position=3)
    for bad in (value, {"site": "resid_pre", "layer": 1}, ("resid_pre", 1), "resid_pre"):
        raises(lambda bad=bad: wb.logit_lens(model, CORRUPT, intervention=bad), "wb.Intervention")
    raises(
        lambda: wb.logit_lens(model, CORRUPT, intervention=wb.Intervention("resid_pre", 1, 3, kind="swap")),
        "zero",
    )
    raises(
        lambda: wb.logit_lens(model, CORRUPT, intervention=wb.Intervention("resid_pre", 1, 3, source=value)),
        "source",
    )
    good = wb.logit_lens(
        model, CORRUPT, intervention=wb.Intervention("resid_pre", np.int64(1), np.int64(3), source=CLEAN)
    )
    assert good.options["intervention"]["layer"] == 1 and type(good.options["intervention"]["layer"]) is int
    still_works(model)


# =============================================================================================
# 7. Short reprs; results pickle (and to_code() works after unpickling)


def _all_results(model):
    vec = torch.randn(model.d_model, generator=torch.Generator().manual_seed(4))
    return {
        "value": wb.patch(model, CLEAN, CORRUPT, metric=metric(), layer=1, position=3),
        "ablate": wb.ablate(model, CLEAN, metric=metric(), layer=1),
        "sweep": wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric()),
        "head_sweep": wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric(), site="head", by_position=True),
        "ablate_sweep": wb.ablate_sweep(model, CLEAN, metric=metric()),
        "attribution": wb.attribution_patch(model, CLEAN, CORRUPT, metric=metric()),
        "lens": wb.logit_lens(model, CLEAN, tokens=[TARGET]),
        "attention": wb.attention(model, CLEAN),
        "steer": wb.steer(model, CLEAN, vector=vec, layer=1, scale=2.0, max_new_tokens=4),
    }


def test_reprs_are_short_and_say_what_the_result_is(model):
    results = _all_results(model)
    for name, r in results.items():
        text = repr(r)
        assert len(text.splitlines()) <= 5 and len(text) <= 600, (name, len(text), text)
    sweep = results["sweep"]
    for needle in ("resid_pre", "logit_diff", "clean", "corrupt", "L", "pos", f"{sweep.clean:.4g}"):
        assert needle in repr(sweep), needle
    best = np.unravel_index(np.abs(sweep.values - sweep.corrupt).argmax(), sweep.shape)
    assert f"L{best[0]} pos {best[1]}" in repr(sweep)
    assert "unablated" in repr(results["ablate_sweep"])
    assert "head" in repr(results["head_sweep"])
    assert "normalized" in repr(results["value"]) and "resid_pre L1 pos 3" in repr(results["value"])
    assert "logit_lens" in repr(results["lens"]) and repr(results["lens"].tokens[-1]) in repr(results["lens"])
    assert "x".join(str(n) for n in results["attention"].patterns.shape) in repr(
        results["attention"]
    ).replace(" ", "")
    assert "residual norm" in repr(results["steer"])
    newlines = wb.SteerResult(
        "\n\n\n",
        baseline=" and then",
        tokens=[5, 5, 5],
        resid_norm=10.0,
        added_norm=30.0,
        relative=3.0,
        options=dict(layer=4, scale=8.0),
        _code=lambda: "",
    )
    assert "only whitespace" in repr(newlines) and "3x" in repr(newlines)
    # big results stay short: a 30-layer sweep printed whole was 5,400 characters
    big = wb.SweepResult(
        values=np.random.default_rng(0).normal(size=(30, 40)).astype(np.float32),
        clean=1.0,
        corrupt=0.0,
        axes=("layer", "position"),
        tokens=[f" tok{i}" for i in range(40)],
        options=dict(op="patch_sweep", site="resid_pre", metric="m"),
        _code=lambda: "result = None\n",
    )
    assert len(repr(big)) < 400


def test_results_pickle_round_trip(model):
    for name, r in _all_results(model).items():
        back = pickle.loads(pickle.dumps(r))
        assert type(back) is type(r), name
        assert back.to_code() == r.to_code(), name
        assert repr(back) == repr(r), name
        assert back.options == r.options, name
        for attr in ("values", "top_ids", "top_probs", "patterns", "entropy", "kl", "vector"):
            if hasattr(r, attr):
                assert np.array_equal(np.asarray(getattr(back, attr)), np.asarray(getattr(r, attr))), (
                    name,
                    attr,
                )
        if isinstance(r, float):
            assert float(back) == float(r) and back.clean == r.clean
        if isinstance(r, str):
            assert str(back) == str(r) and back.baseline == r.baseline and back.tokens == r.tokens
    lens = pickle.loads(pickle.dumps(wb.logit_lens(model, CLEAN, tokens=[TARGET])))
    assert lens.prob(TARGET).shape == lens.entropy.shape
    raises(lambda: lens.prob(FOIL), "unpickled", "tokens=")
    value = pickle.loads(pickle.dumps(wb.patch(model, CLEAN, CORRUPT, metric=metric(), layer=1, position=3)))
    assert_close(float(run_code(value.to_code())["result"]), float(value), what="unpickled patch to_code")


# =============================================================================================
# 8. Steering reports its strength relative to the residual stream


def test_steer_reports_the_residual_norm(model):
    vec = torch.randn(model.d_model, generator=torch.Generator().manual_seed(5))
    out = wb.steer(model, CLEAN, vector=vec, layer=2, scale=0.5, max_new_tokens=2, baseline=False)
    with torch.no_grad():
        hidden = model.hf(model.to_tokens(CLEAN), output_hidden_states=True).hidden_states[2][0]
    assert out.resid_norm == pytest.approx(float(hidden.norm(dim=-1).median()), rel=1e-4)
    assert out.added_norm == pytest.approx(0.5 * float(vec.norm()), rel=1e-5)
    assert out.relative == pytest.approx(out.added_norm / out.resid_norm)
    assert f"{out.relative:.4g}x" in repr(out)


@pytest.mark.parametrize("fast", ["1", "0"])
def test_metric_checks_on_fast_and_traced_paths(model, monkeypatch, fast):
    monkeypatch.setenv("WORKBENCH_FAST", fast)
    t, f = model.token_id(TARGET), model.token_id(FOIL)
    own = wb.attribution_patch(model, CLEAN, CORRUPT, metric=lambda logits: logits[:, t] - logits[:, f])
    builtin = wb.attribution_patch(model, CLEAN, CORRUPT, metric=metric())
    assert_close(own.values, builtin.values, what=f"custom differentiable metric, WORKBENCH_FAST={fast}")
    raises(
        lambda: wb.attribution_patch(model, CLEAN, CORRUPT, metric=NOT_DIFFERENTIABLE["argmax"]),
        "differentiable",
    )
    for fn in (BAD_METRICS["none"], BAD_METRICS["raises"]):
        raises(lambda fn=fn: wb.patch_sweep(model, CLEAN, CORRUPT, metric=fn, site="attn_out"), "metric")
        raises(lambda fn=fn: wb.attribution_patch(model, CLEAN, CORRUPT, metric=fn), "metric")
    still_works(model)


def test_a_token_string_as_metric_names_the_fix(model):
    raises(lambda: wb.patch_sweep(model, CLEAN, CORRUPT, metric=TARGET), "wb.prob")


# =============================================================================================
# Property tests: any value is either accepted as what it means or refused with a WorkbenchError

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ANY_VALUE = st.one_of(
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.none(),
    st.lists(st.integers(-3, 3), max_size=3),
    st.integers(-5, 40).map(np.int64),
    st.integers(-5, 40).map(lambda i: torch.tensor(i)),
    st.floats(-5, 5).map(np.float32),
    st.floats(-5, 5).map(torch.tensor),
    st.booleans().map(np.bool_),
    st.complex_numbers(max_magnitude=3),
)
PROPERTY = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _integer(value):
    """The int a value stands for, or None when it is not an integer index."""
    if isinstance(value, bool | np.bool_ | float | np.floating | complex | str | list):
        return None
    if isinstance(value, torch.Tensor):
        return None if value.dtype.is_floating_point or value.dtype == torch.bool else int(value)
    return int(value) if isinstance(value, int | np.integer) else None


@PROPERTY
@given(layer=ANY_VALUE, position=ANY_VALUE)
def test_any_layer_and_position_is_accepted_or_a_site_error(model, layer, position):
    n = model.to_tokens(CORRUPT).shape[1]
    want_layer, want_pos = _integer(layer), _integer(position)
    ok = (
        want_layer is not None
        and 0 <= want_layer < model.n_layers
        and want_pos is not None
        and -n <= want_pos < n
    )
    try:
        v = wb.patch(model, CLEAN, CORRUPT, metric=metric(), layer=layer, position=position, top_k=0)
    except wb.SiteError as err:
        assert not ok, f"refused a valid cell ({layer!r}, {position!r}): {err}"
        return
    assert ok, f"accepted layer={layer!r}, position={position!r}"
    assert v.options["layer"] == want_layer and v.options["position"] == want_pos % n


@PROPERTY
@given(token=ANY_VALUE)
def test_any_token_id_is_accepted_or_a_tokenization_error(model, token):
    want = _integer(token)
    try:
        tid = model.token_id(token)
    except wb.TokenizationError:
        assert want is None or not 0 <= want < model.vocab_size or isinstance(token, str)
        return
    if isinstance(token, str):
        assert len(model.tokenizer(token, add_special_tokens=False).input_ids) == 1
    else:
        assert tid == want and type(tid) is int


@PROPERTY
@given(
    out=st.one_of(
        ANY_VALUE,
        st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
        st.tuples(st.integers(1, 4), st.integers(1, 4)).map(lambda s: torch.randn(*s)),
        st.sampled_from([torch.float16, torch.int32, torch.bool, torch.complex64]).map(
            lambda d: torch.ones(3, dtype=d)
        ),
    )
)
def test_any_metric_return_is_used_or_a_workbench_error(model, out):
    try:
        sweep = wb.patch_sweep(model, CLEAN, CORRUPT, metric=lambda logits: out, site="mlp_out")
    except wb.WorkbenchError:
        return
    assert sweep.values.shape == (model.n_layers, model.to_tokens(CORRUPT).shape[1])


@settings(max_examples=150, deadline=None)
@given(
    key=st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-_"), min_size=16, max_size=40),
    start=st.integers(0, 40),
    length=st.integers(6, 40),
    upper=st.booleans(),
    before=st.text(st.sampled_from(" :=/?&\"'"), max_size=3),
)
def test_redaction_hides_any_echo_of_six_or_more_key_characters(key, start, length, upper, before):
    import nnsight

    from workbench.remote import redact

    old = getattr(nnsight.CONFIG.API, "APIKEY", None)
    nnsight.CONFIG.API.APIKEY = key
    try:
        piece = key[start : start + length]
        if len(piece) < 6:
            piece = key[:length]
        echo = piece.upper() if upper else piece
        text = redact(f"error{before}{echo}{before}end")
    finally:
        nnsight.CONFIG.API.APIKEY = old
    low = text.lower()
    assert not any(key[i : i + 6] in low for i in range(len(key) - 5)), (key, echo, text)
