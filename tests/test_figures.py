"""Figures (plotly), frames (pandas) and static export for every result type (workbench/figures/)."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

import workbench as wb
from workbench.figures import escape, visible_token
from workbench.figures.attention import grid_matrix
from workbench.figures.theme import label, visible_text

from .conftest import CLEAN, CORRUPT, FOIL, TARGET, tiny

HOSTILE = "A <b>x</b> and <img src=x onerror=alert(1)> $5 & $6"


@pytest.fixture(scope="module")
def model():
    return tiny("llama")


@pytest.fixture(scope="module")
def metric():
    return wb.logit_diff(TARGET, FOIL)


@pytest.fixture(scope="module")
def sweeps(model, metric):
    return {
        "resid_pre": wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric, site="resid_pre"),
        "head": wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric, site="head"),
        "head_pos": wb.patch_sweep(model, CLEAN, CORRUPT, metric=metric, site="head", by_position=True),
        "ablate": wb.ablate_sweep(model, CLEAN, metric=metric, site="mlp_out"),
        "attribution": wb.attribution_patch(model, CLEAN, CORRUPT, metric=metric, site="attn_out"),
    }


@pytest.fixture(scope="module")
def lens(model):
    return wb.logit_lens(model, CLEAN, top_k=3)


@pytest.fixture(scope="module")
def attn(model):
    return wb.attention(model, CLEAN)


@pytest.fixture(scope="module")
def value(model, metric):
    return wb.patch(model, CLEAN, CORRUPT, metric=metric, site="resid_pre", layer=1, position=2)


@pytest.fixture(scope="module")
def steered(model):
    return wb.steer(model, CLEAN, vector=(" love", " hate"), layer=1, scale=4.0, max_new_tokens=4)


def full_title(fig) -> str:
    """The title line and its subtitle (the prompts)."""
    return f"{fig.layout.title.text}<br>{fig.layout.title.subtitle.text or ''}"


def ticktext(axis) -> list[str]:
    return list(axis.ticktext)


# ---------------------------------------------------------------------------------------------- labels


def test_visible_token_matches_the_views_convention():
    # js/src/tokens.ts visibleToken: space ␣, CR ␍, newline ↵, tab →, empty ∅
    assert visible_token(" Paris") == "\u2423Paris"
    assert visible_token("a\nb\tc\rd") == "a\u21b5b\u2192c\u240dd"
    assert visible_token("") == "\u2205"
    assert escape("<b>&$") == "&lt;b&gt;&amp;&#36;"
    assert label(" <i>") == "\u2423&lt;i&gt;"


# ---------------------------------------------------------------------------------------------- sweeps


@pytest.mark.parametrize("name", ["resid_pre", "ablate", "attribution"])
def test_sweep_layer_position_figure(sweeps, name):
    s = sweeps[name]
    fig = s.plot()
    (trace,) = fig.data
    expected = s.normalized if name != "ablate" else s.values - np.float32(s.clean)
    assert np.array_equal(np.asarray(trace.z), expected)
    assert ticktext(fig.layout.xaxis) == [label(t) for t in s.tokens]
    assert fig.layout.xaxis.title.text == "position (token)" and fig.layout.yaxis.title.text == "layer"
    title = fig.layout.title.text
    for part in (s.options["op"], s.options["site"], escape(s.options["metric"])):
        assert part in title
    assert escape(CLEAN) in fig.layout.title.subtitle.text
    bar = fig.layout.coloraxis
    assert bar.cmid == 0 and bar.cmin == -bar.cmax  # diverging, centred at 0
    assert bar.colorbar.title.text == (
        "normalised effect" if name != "ablate" else escape(f"\u0394 {s.options['metric']} vs clean")
    )
    # hover names the layer, position and its token, and the value
    assert trace.hovertext[1][2].startswith(f"layer 1, position 2 ({label(s.tokens[2])})")


def test_sweep_what_options(sweeps):
    s = sweeps["resid_pre"]
    assert np.array_equal(s.plot(what="value").data[0].z, s.values)
    assert s.plot(what="value").layout.coloraxis.colorbar.title.text == escape(s.options["metric"])
    assert np.array_equal(s.plot(what="change").data[0].z, s.values - np.float32(s.clean))
    with pytest.raises(wb.WorkbenchError, match="normalized"):
        sweeps["ablate"].plot(what="normalized")  # no corrupt run


def test_sweep_layer_head_figure(sweeps, model):
    s = sweeps["head"]
    fig = s.plot()
    assert np.array_equal(fig.data[0].z, s.normalized)
    assert fig.layout.xaxis.title.text == "head"
    assert ticktext(fig.layout.xaxis) == [str(h) for h in range(model.n_heads)]
    one = s.plot(head=2)
    assert np.array_equal(one.data[0].z, s.normalized[:, [2]])


def test_sweep_layer_position_head_facets(sweeps, model):
    s = sweeps["head_pos"]
    fig = s.plot()
    assert len(fig.data) == model.n_heads  # one panel per head, one shared colour axis
    for h, trace in enumerate(fig.data):
        assert np.array_equal(trace.z, s.normalized[:, :, h])
        assert trace.coloraxis == "coloraxis"
    assert [a.text for a in fig.layout.annotations] == [f"head {h}" for h in range(model.n_heads)]
    single = s.plot(head=3)
    assert len(single.data) == 1 and np.array_equal(single.data[0].z, s.normalized[:, :, 3])
    assert ticktext(single.layout.xaxis) == [label(t) for t in s.tokens]


def test_templates(sweeps):
    s = sweeps["resid_pre"]
    assert s.plot(template="plotly_dark").layout.template.layout.paper_bgcolor == "rgb(17,17,17)"
    assert s.plot(template="plotly_white").layout.template.layout.plot_bgcolor == "white"
    assert s.plot().layout.template == s.plot(template=None).layout.template  # follows plotly's default


# ------------------------------------------------------------------------------------------------ lens


def test_lens_figure(lens):
    fig = lens.plot()
    (trace,) = fig.data
    assert np.array_equal(trace.z, lens.top_probs[..., 0])
    assert ticktext(fig.layout.xaxis) == [label(t) for t in lens.tokens]
    assert [list(r) for r in trace.text] == [[label(c[0], 8) for c in row] for row in lens.top_tokens]
    assert "logit_lens" in fig.layout.title.text and "top-1 probability" in fig.layout.title.text
    assert trace.colorbar.title.text == "top-1 probability" and (trace.zmin, trace.zmax) == (0, 1)
    hover = trace.hovertext[2][4]
    assert hover.startswith(f"layer 2, position 4 ({label(lens.tokens[4])})")
    for j in range(3):
        assert f"{j + 1}. {label(lens.top_tokens[2][4][j])}" in hover
    assert "entropy" in hover and "KL" in hover


def test_lens_what(lens):
    assert np.array_equal(lens.plot(what="entropy").data[0].z, lens.entropy)
    assert np.array_equal(lens.plot(what="kl").data[0].z, lens.kl)
    p = lens.plot(what="prob", token=TARGET)
    assert np.array_equal(p.data[0].z, lens.prob(TARGET))
    assert p.data[0].colorbar.title.text == f"p({label(TARGET)})"
    r = lens.plot(what="rank", token=TARGET).data[0]
    assert np.array_equal(r.customdata, lens.rank(TARGET))  # ranks; colour is log10(1 + rank)
    assert np.allclose(r.z, np.log10(1.0 + lens.rank(TARGET)))
    default = lens.plot(what="rank")  # the final prediction's rank
    assert f"rank of {label(lens.top_tokens[-1][-1][0])}" in default.layout.title.text


# ------------------------------------------------------------------------------------------- attention


def test_attention_pattern_and_grid(attn, model):
    fig = attn.plot(layer=1, head=2)
    assert np.array_equal(fig.data[0].z, attn.patterns[1, 2])
    assert ticktext(fig.layout.xaxis) == [label(t) for t in attn.tokens]
    assert ticktext(fig.layout.yaxis) == [label(t) for t in attn.tokens]
    assert fig.layout.yaxis.autorange == "reversed"
    assert "layer 1, head 2" in fig.layout.title.text
    grid = attn.plot()  # grid=True by default
    z = np.asarray(grid.data[0].z)
    t = len(attn.tokens)
    assert np.array_equal(z, grid_matrix(attn.patterns), equal_nan=True)
    assert np.array_equal(
        z[1 * (t + 1) : 1 * (t + 1) + t, 2 * (t + 1) : 2 * (t + 1) + t], attn.patterns[1, 2]
    )
    assert ticktext(grid.layout.xaxis) == [str(h) for h in range(model.n_heads)]
    assert ticktext(grid.layout.yaxis) == [str(x) for x in attn.layers]


def test_attention_subset_of_layers(model):
    a = wb.attention(model, CLEAN, layers=[2])
    assert np.array_equal(a.plot(layer=2, head=0).data[0].z, a.patterns[0, 0])
    with pytest.raises(
        wb.WorkbenchError, match=r"layer=0 is not in this attention result; it has layers \[2\]"
    ):
        a.plot(layer=0, head=0)


# ------------------------------------------------------------------------------------ value and steer


def test_value_figure(value):
    fig = value.plot()
    (bar,) = fig.data
    assert np.array_equal(bar.x, value.top_probs)
    assert ticktext(fig.layout.yaxis) == [label(t, 24) for t in value.top_tokens]
    note = fig.layout.annotations[0].text
    assert f"clean {value.clean:.3g}" in note and f"corrupt {value.corrupt:.3g}" in note
    assert f"{float(value):.3g}" in note and "normalised" in note
    title = fig.layout.title.text
    assert "patch" in title and "resid_pre" in title and "layer 1, position 2" in title


def test_steer_figure(steered):
    fig = steered.plot()
    run, text = fig.data[0].cells.values
    assert list(run) == ["prompt", "baseline", "steered (layer 1, scale 4.0)"]
    assert text[2] == escape(visible_text(str(steered)))[:40] or text[2].startswith(
        escape(visible_text(str(steered)))[:5]
    )
    assert text[0] == escape(CLEAN)
    assert "steer" in fig.layout.title.text and "layer 1" in fig.layout.title.text
    df = steered.to_frame()
    assert list(df.run) == ["prompt", "baseline", "steered"] and df.text.iloc[2] == str(steered)


# ---------------------------------------------------------------------------------------------- escaping


def test_html_like_text_is_escaped_everywhere(model, metric):
    results = [
        wb.logit_lens(model, HOSTILE, top_k=2),
        wb.attention(model, HOSTILE),
        wb.ablate_sweep(model, HOSTILE, metric=metric, site="resid_pre"),
        wb.ablate(model, HOSTILE, metric=metric, site="resid_pre", layer=0, position=1),
        wb.steer(model, HOSTILE, vector=(" love", " hate"), layer=0, scale=1.0, max_new_tokens=2),
    ]
    figs = [r.plot() for r in results] + [results[1].plot(layer=0, head=0)]
    for fig in figs:
        text = json.dumps(fig.to_plotly_json(), default=str)
        for raw in ("<b>x", "</b> and", "<img", "onerror=alert(1)>", "$5", "& $6"):
            assert raw not in text, (raw, full_title(fig))
        assert "&lt;img src=x onerror=alert(1)&gt;" in full_title(fig)
        assert "&lt;b&gt;x&lt;/b&gt;" in full_title(fig) and "&#36;5 &amp; &#36;6" in full_title(fig)
    ticks = ticktext(figs[0].layout.xaxis)
    assert "&lt;" in ticks and "&gt;" in ticks and "&amp;" in ticks and "&#36;" in ticks


# ------------------------------------------------------------------------------------------------ frames


@pytest.mark.parametrize("name", ["resid_pre", "head", "head_pos", "ablate", "attribution"])
def test_sweep_frame_round_trips(sweeps, name):
    s = sweeps[name]
    df = s.to_frame()
    assert list(df.columns) == ["layer", "position", "token", "head", "value", "normalized", "site"]
    assert len(df) == s.values.size and df["value"].dtype == s.values.dtype
    axes = list(s.axes)
    back = df.pivot_table(index="layer", columns=axes[1:], values="value", aggfunc="first")
    assert np.array_equal(back.to_numpy().reshape(s.values.shape), s.values)  # exactly, not approximately
    if "position" in axes:
        assert list(df.drop_duplicates("position").token) == list(s.tokens)
    else:
        assert df.position.isna().all() and df.token.isna().all()
    if "head" not in axes:
        assert df["head"].isna().all()
    assert df.attrs["options"]["op"] == s.options["op"]


def test_lens_frames_round_trip(lens):
    cells = lens.to_frame()
    assert list(cells.columns) == ["layer", "position", "token", "top_token", "top_prob", "entropy", "kl"]
    for col, arr in (("entropy", lens.entropy), ("kl", lens.kl), ("top_prob", lens.top_probs[..., 0])):
        assert np.array_equal(cells.pivot(index="layer", columns="position", values=col).to_numpy(), arr)
    top = lens.to_frame(what="topk")
    assert list(top.columns) == ["layer", "position", "token", "k", "pred_token", "pred_id", "prob"]
    assert np.array_equal(
        top.pivot_table(index="layer", columns=["position", "k"], values="prob")
        .to_numpy()
        .reshape(lens.top_probs.shape),
        lens.top_probs,
    )
    assert top.pred_token.tolist() == [t for layer in lens.top_tokens for cell in layer for t in cell]
    with_token = lens.to_frame(token=TARGET)
    assert np.array_equal(with_token.target_rank.to_numpy().reshape(lens.entropy.shape), lens.rank(TARGET))


def test_attention_and_value_frames(attn, value):
    df = attn.to_frame()
    assert list(df.columns) == ["layer", "head", "query", "query_token", "key", "key_token", "value"]
    back = df.pivot_table(index=["layer", "head"], columns=["query", "key"], values="value", aggfunc="first")
    assert np.array_equal(back.to_numpy().reshape(attn.patterns.shape), attn.patterns)
    one = value.to_frame()
    assert one.value.iloc[0] == float(value) and one.clean.iloc[0] == value.clean
    assert one.layer.iloc[0] == 1 and one.position.iloc[0] == 2
    top = value.to_frame(what="topk")
    assert np.array_equal(top.prob.to_numpy(), value.top_probs) and top.token.tolist() == value.top_tokens


# ------------------------------------------------------------------------------------------------ export


def _pdf_text(path) -> str:
    import unicodedata

    from pypdf import PdfReader

    # NFKC: Chromium draws "ff"/"fi" as ligature glyphs, which extract as U+FB00.. (ﬀ, ﬁ)
    return unicodedata.normalize("NFKC", "".join(page.extract_text() for page in PdfReader(str(path)).pages))


def test_static_export_pdf_svg_png_contain_the_token_labels(tmp_path, lens, model):
    svg = lens.save_figure(tmp_path / "lens.svg")
    pdf = lens.save_figure(tmp_path / "lens.pdf", template="plotly_white")
    text = svg.read_text()
    assert text.startswith("<svg") or "<svg" in text[:300]
    for tok in lens.tokens:
        assert visible_token(tok) in text  # text stays text in SVG
    pdf_text = _pdf_text(pdf)
    for tok in lens.tokens:
        assert visible_token(tok) in pdf_text  # with the ␣ marker, as characters
    assert "logit_lens" in pdf_text
    # hostile text is drawn as text: no element from the prompt appears in the SVG
    hostile = wb.logit_lens(model, HOSTILE, top_k=2).save_figure(tmp_path / "hostile.svg").read_text()
    assert "<img" not in hostile and "<b>x" not in hostile
    assert (
        "&lt;img src=x onerror=alert(1)&gt;" in hostile or "&#60;img src=x onerror=alert(1)&#62;" in hostile
    )
    assert "$5" in hostile  # shown literally, not typeset
    png = lens.save_figure(tmp_path / "lens.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_without_a_browser_names_what_to_install(tmp_path, lens, monkeypatch):
    from workbench.figures import export

    monkeypatch.setitem(sys.modules, "kaleido", None)  # not installed: `import kaleido` raises ImportError
    with pytest.raises(wb.WorkbenchError, match=r"pip install 'kaleido>=1'"):
        lens.save_figure(tmp_path / "x.png")
    monkeypatch.delitem(sys.modules, "kaleido")
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chrome"))
    with pytest.raises(wb.WorkbenchError, match="apt-get install -y chromium"):
        lens.save_figure(tmp_path / "x.pdf")
    monkeypatch.delenv("BROWSER_PATH")
    monkeypatch.setattr(export.shutil, "which", lambda name: None)
    monkeypatch.setattr(export, "_PLACES", ())
    with pytest.raises(wb.WorkbenchError, match="No Chrome or Chromium found.*chromium"):
        lens.save_figure(tmp_path / "x.svg")
    # interactive HTML needs no browser
    assert "plotly" in lens.save_figure(tmp_path / "x.html").read_text()[:2000].lower()
    with pytest.raises(wb.WorkbenchError, match=r"\.pdf, \.svg, \.png"):
        lens.save_figure(tmp_path / "x.docx")


# -------------------------------------------------------------------------------------------- bad input


def test_bad_options_and_empty_results(sweeps, lens, attn, value):
    s = sweeps["resid_pre"]
    with pytest.raises(wb.WorkbenchError, match="unknown option.*colour.*the options are: what, head"):
        s.plot(colour="red")
    with pytest.raises(wb.WorkbenchError, match=r"what='foo' is not one of 'normalized', 'value', 'change'"):
        s.plot(what="foo")
    with pytest.raises(wb.WorkbenchError, match="head= applies to head sweeps"):
        s.plot(head=0)
    n_heads = sweeps["head_pos"].values.shape[2]
    with pytest.raises(wb.WorkbenchError, match=rf"head={n_heads} is out of range.*head 0..{n_heads - 1}"):
        sweeps["head_pos"].plot(head=n_heads)
    with pytest.raises(wb.WorkbenchError, match="not a plotly template"):
        s.plot(template="plotly_neon")
    with pytest.raises(wb.WorkbenchError, match=r"what='top' is not one of 'prob', 'rank', 'entropy', 'kl'"):
        lens.plot(what="top")
    with pytest.raises(wb.WorkbenchError, match="token= applies to"):
        lens.plot(what="kl", token=TARGET)
    with pytest.raises(wb.WorkbenchError, match="unknown option"):
        lens.to_frame(columns=["x"])
    with pytest.raises(wb.WorkbenchError, match="head=9 is out of range"):
        attn.plot(layer=0, head=9)
    with pytest.raises(wb.WorkbenchError, match="Give both layer= and head="):
        attn.plot(layer=0)
    with pytest.raises(wb.WorkbenchError, match="grid=True draws every layer"):
        attn.plot(grid=True, head=1)

    empty = wb.SweepResult(
        values=np.zeros((0, 9), np.float32), clean=1.0, corrupt=0.0, axes=("layer", "position"),
        tokens=[], options=dict(op="patch_sweep"), _code=lambda: "",
    )  # fmt: skip
    with pytest.raises(wb.WorkbenchError, match="no cells"):
        empty.plot()
    assert len(empty.to_frame()) == 0
    unrun = wb.SweepResult(
        values=np.full((2, 3), np.nan, np.float32), clean=1.0, corrupt=0.0, axes=("layer", "position"),
        tokens=["a", "b", "c"], options=dict(op="patch_sweep"), _code=lambda: "",
    )  # fmt: skip
    with pytest.raises(wb.WorkbenchError, match="Every cell of this sweep is NaN"):
        unrun.plot()
    no_layers = wb.AttentionResult(
        patterns=np.zeros((0, 4, 9, 9), np.float32), tokens=list(attn.tokens), layers=[],
        options=dict(op="attention"), _code=lambda: "",
    )  # fmt: skip
    with pytest.raises(wb.WorkbenchError, match="attention result is empty"):
        no_layers.plot()
    bare = wb.Value(1.0, clean=2.0, corrupt=0.0, top_ids=np.zeros(0, np.int32), top_probs=np.zeros(0, np.float32),
                    top_tokens=[], options=dict(op="patch"), _code=lambda: "")  # fmt: skip
    with pytest.raises(wb.WorkbenchError, match="top_k=0"):
        bare.plot()
    assert math.isclose(bare.to_frame().normalized.iloc[0], 0.5)


# ------------------------------------------------------------------------------------------- embedded


@pytest.mark.embedded
def test_embedded_lens_figure_shows_paris():
    model = wb.load()
    lens = wb.logit_lens(model, "The Eiffel Tower is located in the city of")
    fig = lens.plot()
    assert fig.data[0].text[-1][-1] == "\u2423Paris"
    assert ticktext(fig.layout.xaxis)[-1] == "\u2423of"
    assert fig.layout.yaxis.title.text == "layer" and fig.data[0].z.shape == (
        model.n_layers,
        len(lens.tokens),
    )
