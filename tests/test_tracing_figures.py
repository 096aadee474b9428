"""Figures, frames, static export and reprs of causal traces (CausalTrace, DatasetCausalTrace) on a tiny
model: the figure's data are the result's arrays (transposed: tokens down, layers across), the labels mark
the subject, the colour runs from .low to .high, and the frames are tidy."""

from __future__ import annotations

import numpy as np
import pytest

import workbench as wb
from workbench.figures import causal_trace_frame, plot_causal_traces, visible_token

from .conftest import CLEAN, tiny

SUBJECT = "Eiffel Tower"


@pytest.fixture(scope="module")
def model():
    return tiny("llama")


@pytest.fixture(scope="module")
def traces(model):
    common = dict(subject=SUBJECT, samples=3, window=2)
    return {
        "resid": wb.causal_trace(model, CLEAN, kind="resid", **common),
        "mlp": wb.causal_trace(model, CLEAN, kind="mlp", **common),
        "attn": wb.causal_trace(model, CLEAN, kind="attn", **common),
        "severed": wb.causal_trace(model, CLEAN, kind="resid", sever="mlp", **common),
    }


@pytest.fixture(scope="module")
def facts(model):
    ds = wb.Dataset.from_records(
        [
            {"clean": CLEAN, "spans": {"subject": (1, 4)}},
            {"clean": "The Colosseum is located in the city of", "spans": {"subject": (1, 3)}},
            {"clean": "Paris is a city in the country of", "spans": {"subject": (0, 1)}},
        ]
    )
    return wb.causal_trace(model, ds, samples=2, kind="mlp", window=2)


def full_title(fig) -> str:
    return f"{fig.layout.title.text}<br>{fig.layout.title.subtitle.text or ''}"


# ---------------------------------------------------------------------------------------------- one prompt


@pytest.mark.parametrize("name", ["resid", "mlp", "attn", "severed"])
def test_trace_figure_data_are_the_values(traces, name):
    tr = traces[name]
    fig = tr.plot()
    (heat,) = fig.data
    np.testing.assert_array_equal(np.asarray(heat.z), tr.values.T)  # [T, L]: tokens down, layers across
    n_layers, n_tokens = tr.values.shape
    assert list(heat.x) == list(range(n_layers)) and list(heat.y) == list(range(n_tokens))
    ticks = list(fig.layout.yaxis.ticktext)
    assert ticks == [visible_token(t) for t in tr.labels]
    a, b = tr.subject
    assert [t.endswith("*") for t in ticks] == [a <= i < b for i in range(n_tokens)]
    assert fig.layout.yaxis.autorange == "reversed"  # first token at the top
    assert "layer" in fig.layout.xaxis.title.text
    assert heat.zmin == pytest.approx(tr.low) and heat.zmax == pytest.approx(tr.high)
    assert heat.colorbar.title.text == "p(target)"
    title = full_title(fig)
    assert visible_token(tr.target) in title and "causal_trace" in title
    assert "Eiffel Tower" in title  # the prompt in the subtitle
    # hover: value and effect of the cell
    layer, pos = n_layers - 1, n_tokens - 1
    hover = heat.hovertext[pos][layer]
    assert f"layer {layer}" in hover and f"{tr.values[layer, pos]:.3g}" in hover
    assert f"{tr.effect[layer, pos]:.3g}" in hover


def test_trace_titles_say_what_was_restored(traces):
    assert "restoring hidden state" in traces["resid"].plot().layout.title.text
    assert "MLP (window 2)" in traces["mlp"].plot().layout.title.text
    assert "attention (window 2)" in traces["attn"].plot().layout.title.text
    assert "severed mlp" in traces["severed"].plot().layout.title.text
    assert "centre of 2 restored MLP layers" in traces["mlp"].plot().layout.xaxis.title.text
    hover = traces["mlp"].plot().data[0].hovertext[0][0]
    assert "restores mlp_out L0..L0" in hover  # window 2 at layer 0: layers 0..0 (ROME's convention)


def test_trace_effect_option(traces):
    tr = traces["resid"]
    heat = tr.plot(effect=True).data[0]
    np.testing.assert_allclose(np.asarray(heat.z), tr.effect.T, rtol=0, atol=1e-7)
    assert heat.zmin == 0 and heat.zmax == pytest.approx(tr.high - tr.low)
    assert heat.colorbar.title.text == "effect on p(target)"
    custom = tr.plot(zmin=0, zmax=1, colorscale="Greys", title="mine").data[0]
    assert (custom.zmin, custom.zmax) == (0, 1)
    with pytest.raises(wb.WorkbenchError, match="unknown option"):
        tr.plot(what="value")
    with pytest.raises(wb.WorkbenchError, match="effect="):
        tr.plot(effect="yes")


def test_three_panels_share_tokens_and_colour_scale(traces):
    three = [traces["resid"], traces["mlp"], traces["attn"]]
    fig = plot_causal_traces(three)
    assert len(fig.data) == 3
    for heat, tr in zip(fig.data, three, strict=True):
        np.testing.assert_array_equal(np.asarray(heat.z), tr.values.T)
        assert heat.coloraxis == "coloraxis"
    ca = fig.layout.coloraxis
    assert ca.cmin == pytest.approx(min(t.low for t in three))
    assert ca.cmax == pytest.approx(max(t.high for t in three))
    names = [a.text for a in fig.layout.annotations]
    assert names == ["hidden state", "MLP (window 2)", "attention (window 2)"]
    assert list(fig.layout.yaxis.ticktext) == [visible_token(t) for t in three[0].labels]
    eff = plot_causal_traces(three, effect=True)
    np.testing.assert_allclose(np.asarray(eff.data[1].z), three[1].effect.T, atol=1e-7)
    with pytest.raises(wb.WorkbenchError, match="list of CausalTrace"):
        plot_causal_traces([])


def test_three_panels_refuse_different_prompts(model, traces):
    other = wb.causal_trace(model, "The Colosseum is located in the city of", subject="Colosseum", samples=2)
    with pytest.raises(wb.WorkbenchError, match="same prompt"):
        plot_causal_traces([traces["resid"], other])


def test_trace_frame_is_tidy(traces):
    tr = traces["mlp"]
    df = tr.to_frame()
    n_layers, n_tokens = tr.values.shape
    assert len(df) == n_layers * n_tokens
    columns = ["layer", "position", "token", "is_subject", "value", "effect", "kind", "target"]
    assert list(df.columns) == columns
    np.testing.assert_array_equal(df["value"].to_numpy(), tr.values.reshape(-1))
    np.testing.assert_array_equal(df["effect"].to_numpy(), tr.effect.reshape(-1))
    row = df[(df.layer == 1) & (df.position == 2)].iloc[0]
    assert row.value == tr.values[1, 2] and row.token == tr.tokens[2]
    a, b = tr.subject
    assert df.groupby("position")["is_subject"].first().tolist() == [a <= i < b for i in range(n_tokens)]
    assert set(df["kind"]) == {"mlp"} and set(df["target"]) == {tr.target}
    assert df.attrs["options"]["kind"] == "mlp"
    assert causal_trace_frame(tr).equals(df)


def test_trace_repr_names_kind_subject_high_low(traces):
    tr = traces["mlp"]
    text = repr(tr)
    assert "CausalTrace" in text and "MLP" in text and "window 2" in text
    a, b = tr.subject
    assert f"subject tokens {a}..{b - 1} {''.join(tr.tokens[a:b])!r}" in text  # ' Eiffel Tower'
    assert "Eiffel" in text
    assert ".high" in text and ".low" in text and f"{tr.high:.4g}" in text and f"{tr.low:.4g}" in text
    assert "hidden state" in repr(traces["resid"]) and "mlp severed" in repr(traces["severed"])


# ---------------------------------------------------------------------------------------------- over facts


def test_dataset_figure_groups_and_hover(facts):
    fig = facts.plot()
    (heat,) = fig.data
    np.testing.assert_array_equal(np.asarray(heat.z), facts.values.T)  # [6, L]
    ticks = list(fig.layout.yaxis.ticktext)
    assert [t.split(" (n=")[0] for t in ticks] == list(facts.groups)
    assert ticks[0] == f"first subject token (n={facts.counts[0]})"
    assert fig.layout.yaxis.autorange == "reversed"
    assert heat.zmin == pytest.approx(facts.low) and heat.zmax == pytest.approx(facts.high)
    assert heat.colorbar.title.text == "p(target)"
    assert "mean over 3 facts" in fig.layout.title.text and "MLP (window 2)" in fig.layout.title.text
    g, layer = 2, 1  # last subject token
    hover = heat.hovertext[g][layer]
    assert f"{facts.values[layer, g]:.3g} \u00b1 {facts.sem[layer, g]:.3g} (sem)" in hover
    assert f"mean of {facts.counts[g]} (fact, token) values over 3 facts" in hover
    # a group with no positions (one-token subject facts have no middle tokens here) is NaN, not 0
    eff = facts.plot(effect=True).data[0]
    np.testing.assert_allclose(np.asarray(eff.z, dtype=float), facts.effect.T, atol=1e-7)


def test_dataset_figure_one_example(facts):
    fig = facts.plot(example=1)
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), facts.per_example[1].values.T)
    assert list(fig.layout.yaxis.ticktext) == [visible_token(t) for t in facts.per_example[1].labels]
    with pytest.raises(wb.WorkbenchError, match="fact index 0..2"):
        facts.plot(example=3)
    with pytest.raises(wb.WorkbenchError, match="unknown option"):
        facts.plot(head=0)


def test_dataset_frame(facts):
    df = facts.to_frame()
    n_layers = facts.values.shape[0]
    assert len(df) == n_layers * 6
    assert list(df.columns) == ["layer", "group", "group_index", "value", "effect", "sem", "count", "kind"]
    np.testing.assert_array_equal(df["value"].to_numpy(), facts.values.reshape(-1))
    np.testing.assert_array_equal(df["sem"].to_numpy(), facts.sem.reshape(-1))
    assert df[df.layer == 0]["group"].tolist() == list(facts.groups)
    assert df[df.layer == 0]["count"].tolist() == facts.counts.tolist()
    per = facts.to_frame(per_example=True)
    assert len(per) == sum(t.values.size for t in facts.per_example)
    assert {"example", "group", "token", "is_subject", "value", "effect"} <= set(per.columns)
    first = per[per.example == 0]
    np.testing.assert_array_equal(first["value"].to_numpy(), facts.per_example[0].values.reshape(-1))
    groups = first[first.layer == 0]["group"].tolist()  # "The Eiffel Tower is located in the city of"
    assert groups[1:4] == ["first subject token", "middle subject tokens", "last subject token"]
    assert groups[4] == "first subsequent token" and groups[-1] == "last token"
    # the group means are the means of these rows (ROME pools each group's (fact, token) values)
    sub = per[(per.layer == 2) & (per.group == "further tokens")]
    assert sub["value"].mean() == pytest.approx(float(facts.values[2, 4]), rel=1e-5)
    with pytest.raises(wb.WorkbenchError, match="per_example="):
        facts.to_frame(per_example="yes")


def test_dataset_repr_names_kind_and_high_low(facts):
    text = repr(facts)
    assert "DatasetCausalTrace" in text and "mlp" in text and "over 3 facts" in text
    assert f"clean {facts.high:.4g}" in text and f"noised {facts.low:.4g}" in text


# ---------------------------------------------------------------------------------------------- export


def test_save_figure_writes_svg_and_html(tmp_path, traces, facts):
    svg = traces["mlp"].save_figure(tmp_path / "trace.svg").read_text()
    assert "<svg" in svg[:300]
    for tok in traces["mlp"].labels:
        assert visible_token(tok) in svg
    assert "p(target)" in svg
    dsvg = facts.save_figure(tmp_path / "facts.svg", effect=True).read_text()
    assert "last subject token" in dsvg
    assert "plotly" in facts.save_figure(tmp_path / "facts.html").read_text()[:2000].lower()
