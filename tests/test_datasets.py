"""Datasets (issue #13), proven right: construction and bad input; every op over a Dataset equals, example
by example, the single-pair op (`.per_example[i]`) and its `.values` is their mean (1e-4), on every tiny
family and the embedded model, for align exact, right (different lengths) and roles (template fields and
explicit spans); a roles patch equals an independent plain-hook patch of all the span's positions at once;
`to_code()` of a dataset result reproduces `.values` and `.per_example`; figures and frames.
"""

from __future__ import annotations

import numpy as np
import pytest

import workbench as wb
from tests import reference as R
from tests.conftest import ATOL, assert_close, run_code, tiny
from workbench.data import alignment
from workbench.errors import TokenizationError, WorkbenchError
from workbench.testing import FAMILIES

# IOI-style prompts whose names are single tokens in the tiny tokenizer and the embedded model's.
LONG = "When{A} and{B} went to the store,{C} gave a drink to"
SHORT = "When{A} and{B} went home,{C} gave a drink to"
ROWS = [{"A": " Mary", "B": " John"}, {"A": " John", "B": " Mary"}]


def _fill(t: str, a: str, b: str, c: str) -> str:
    return t.format(A=a, B=b, C=c)


def _pairs(templates):
    clean = [_fill(t, r["A"], r["B"], r["B"]) for t, r in zip(templates, ROWS, strict=True)]
    corrupt = [_fill(t, r["A"], r["B"], r["A"]) for t, r in zip(templates, ROWS, strict=True)]
    return clean, corrupt


def dataset(model, kind: str) -> wb.Dataset:
    """exact: same lengths; right: different lengths; template: roles from a template; spans: explicit."""
    target, foil = [r["A"] for r in ROWS], [r["B"] for r in ROWS]
    if kind == "exact":
        return wb.Dataset(*_pairs([LONG, LONG]), target=target, foil=foil)
    if kind == "template":
        return wb.Dataset.from_template(
            LONG.replace("{C}", "{B}"),
            corrupt=LONG.replace("{C}", "{A}"),
            rows=ROWS,
            target="{A}",
            foil="{B}",
        )
    clean, corrupt = _pairs([LONG, SHORT])
    if kind == "right":
        return wb.Dataset(clean, corrupt, target=target, foil=foil)
    spans = []
    for c in clean:  # "the names" (When [A and B]) and "the end" (the 3 tokens before the last)
        n = model.to_tokens(c).shape[1]
        spans.append({"names": (1, 4), "end": (n - 4, n - 1)})
    return wb.Dataset(clean, corrupt, target=target, foil=foil, spans=spans)


ALIGN = {"exact": "exact", "right": "right", "template": "roles", "spans": "roles"}
KINDS = tuple(ALIGN)


def metric_of(ds: wb.Dataset, i: int):
    return wb.logit_diff(ds[i].target, ds[i].foil)


def span_cells(site, layer, positions, head=None):
    return [wb.Cell(site, layer, p, head) for p in positions]


# =============================================================================================
# construction and bad input


def test_construction(model=None):
    ds = wb.Dataset.from_template(LONG, corrupt=LONG.replace("{C}", "{A}"), rows=[{**r, "C": r["B"]} for r in ROWS],
                                  target="{A}", foil="{B}")  # fmt: skip
    assert len(ds) == 2 and ds[0].clean == _fill(LONG, " Mary", " John", " John")
    assert ds[0].corrupt == _fill(LONG, " Mary", " John", " Mary") and ds[1].target == " John"
    recs = wb.Dataset.from_records([{"clean": "a b", "corrupt": "a c", "target": " Paris", "foil": " Rome"}])
    assert recs[0].foil == " Rome" and len(ds[:1]) == 1


def test_bad_input_names_the_fix():
    model = tiny("gpt2")
    with pytest.raises(WorkbenchError, match="empty"):
        wb.Dataset(clean=[])
    with pytest.raises(WorkbenchError, match="different lengths.*clean has 2 rows, corrupt has 1"):
        wb.Dataset(clean=["a b", "c d"], corrupt=["a c"])
    with pytest.raises(WorkbenchError, match="field.*C|C.*field|'C'"):
        wb.Dataset.from_template(LONG, rows=ROWS)  # the rows have no C
    # a target of several tokens in one row: the error names that row
    ds = wb.Dataset(*_pairs([LONG, LONG]), target=[" Mary", " Eiffel Tower"], foil=[" John", " Mary"])
    with pytest.raises(WorkbenchError, match="Example 1") as err:
        wb.patch_sweep(model, ds, metric=wb.logit_diff())
    assert "token" in str(err.value)
    # a corruption that changes the length under align="exact": the example and the fix
    bad = wb.Dataset(
        clean=[_fill(LONG, " Mary", " John", " John")], corrupt=[_fill(LONG, " Mary", " John", " Eiffel Tower")],
        target=" Mary", foil=" John",
    )  # fmt: skip
    with pytest.raises(TokenizationError, match="Example 0.*same number of tokens.*Reword"):
        wb.patch(model, bad, metric=wb.logit_diff(), layer=0, position=0)
    # different lengths under align="exact": lists the examples and suggests right / roles
    with pytest.raises(TokenizationError, match="align='right'.*align='roles'"):
        wb.patch_sweep(model, dataset(model, "right"), metric=wb.logit_diff())
    with pytest.raises(WorkbenchError, match="No column"):
        wb.patch(
            model, dataset(model, "template"), metric=wb.logit_diff(), layer=0, position="{Z}", align="roles"
        )
    with pytest.raises(WorkbenchError, match="source"):
        wb.intervene(model, dataset(model, "exact"), [wb.Edit(wb.Cell("resid_pre", 0, 1))], metric=wb.logit_diff(),
                     source="x")  # fmt: skip
    # the model stays usable
    ok = wb.patch(model, dataset(model, "exact"), metric=wb.logit_diff(), layer=1, position=-1)
    assert np.isfinite(float(ok)) and ok.n_examples == 2


# =============================================================================================
# every op over a Dataset = the single-pair op per example, and the mean of them


def check_ops(model, kind: str, light: bool = False) -> None:
    ds = dataset(model, kind)
    align = ALIGN[kind]
    al = alignment(model, ds, align)
    m = wb.logit_diff()
    n, L, H = len(ds), model.n_layers, model.n_heads
    layer = L // 2
    roles = align == "roles"
    last = len(al.columns) - 1
    col = 1  # a name column (roles: "{A}"/"names"; positions: the first name or from the end)

    def pos(i, j):
        return al.positions[i][j]

    def check(result, singles, what):
        singles = np.asarray(singles, dtype=np.float64)
        assert_close(result.per_example, singles, what=f"{model.source} {kind} {what} per_example")
        mean = result.values if isinstance(result, wb.SweepResult) else float(result)
        assert_close(mean, singles.mean(0), what=f"{kind} {what} mean")

    # patch and ablate with cells= over columns (jointly; roles: all the span's positions)
    cells = [wb.Cell("resid_pre", layer, col), wb.Cell("mlp_out", 0, last)]
    v = wb.patch(model, ds, metric=m, cells=cells, align=align)
    check(v, [float(wb.patch(model, ds[i].clean, ds[i].corrupt, metric=metric_of(ds, i),
                             cells=span_cells("resid_pre", layer, pos(i, col)) + span_cells("mlp_out", 0, pos(i, last))))
              for i in range(n)], "patch cells=")  # fmt: skip
    assert_close(v.clean, [wb.patch(model, ds[i].clean, ds[i].corrupt, metric=metric_of(ds, i), layer=0).clean
                           for i in range(n)], what="patch clean baselines")  # fmt: skip
    a = wb.ablate(
        model, ds, metric=m, cells=[wb.Cell("head", layer, col, head=1)], method="resample", align=align
    )
    check(a, [float(wb.ablate(model, ds[i].clean, metric=metric_of(ds, i), cells=span_cells("head", layer, pos(i, col), 1),
                              method="resample", reference=ds[i].corrupt)) for i in range(n)], "ablate resample")  # fmt: skip
    a = wb.ablate(model, ds, metric=m, site="attn_out", layer=0, position=col, method="mean", align=align)
    check(a, [float(wb.ablate(model, ds[i].clean, metric=metric_of(ds, i), cells=span_cells("attn_out", 0, pos(i, col)),
                              method="mean")) for i in range(n)], "ablate mean")  # fmt: skip

    # intervene: "source" from each example's corrupt prompt, zero, set
    vec = np.linspace(-1, 1, model.d_model, dtype=np.float32)
    edits = [wb.Edit(wb.Cell("resid_pre", layer, col)), wb.Edit(wb.Cell("mlp_out", 0, last), "zero"),
             wb.Edit(wb.Cell("resid_post", 0, 0), vec)]  # fmt: skip
    v = wb.intervene(model, ds, edits, metric=m, align=align)

    def own(i):
        out = []
        for e in edits:
            out += [
                wb.Edit(c, e.value) for c in span_cells(e.cell.site, e.cell.layer, pos(i, e.cell.position))
            ]
        return out

    check(v, [float(wb.intervene(model, ds[i].clean, own(i), metric=metric_of(ds, i), source=ds[i].corrupt))
              for i in range(n)], "intervene")  # fmt: skip

    # path patching: senders at every position / at a column; receivers the logits or a column's queries
    senders = [wb.Cell("head", 0, head=0), wb.Cell("head", 0, col, head=1)]
    v = wb.path_patch(model, ds, metric=m, senders=senders, align=align)
    check(v, [float(wb.path_patch(model, ds[i].clean, ds[i].corrupt, metric=metric_of(ds, i),
                                  senders=[senders[0]] + span_cells("head", 0, pos(i, col), 1)))
              for i in range(n)], "path_patch")  # fmt: skip
    # light (the embedded model): the [layer, head] sweeps in one layout, embed-site sweeps in the others
    heads = not light or kind == "right"
    receivers = [wb.Cell("q", L - 1, last, head=0)]
    s = None if not heads else wb.path_patch_sweep(model, ds, metric=m, receivers=receivers, align=align)
    if heads:
        check(s, [wb.path_patch_sweep(model, ds[i].clean, ds[i].corrupt, metric=metric_of(ds, i),
                                      receivers=span_cells("q", L - 1, pos(i, last), 0)).values
                  for i in range(n)], "path_patch_sweep")  # fmt: skip
    if light and heads:
        s = wb.path_patch_sweep(model, ds, metric=m, align=align)
        check(s, [wb.path_patch_sweep(model, ds[i].clean, ds[i].corrupt, metric=metric_of(ds, i)).values
                  for i in range(n)], "path_patch_sweep logits")  # fmt: skip

    # sweeps: [layer, column] (roles: each cell = the joint patch of the column's positions), [layer, head]
    site_p, site_a = (
        ("resid_pre", "mlp_out") if not light else ("resid_pre" if kind == "exact" else "embed", "embed")
    )
    sw = wb.patch_sweep(model, ds, metric=m, site=site_p, align=align)
    ab = wb.ablate_sweep(model, ds, metric=m, site=site_a, method="zero", align=align)
    assert sw.values.shape == (1 if site_p == "embed" else L, len(al.columns))
    if roles:
        layers = [0] if light else range(L)
        sub = [[[float(wb.patch(model, ds[i].clean, ds[i].corrupt, metric=metric_of(ds, i),
                                cells=span_cells(site_p, lyr, pos(i, j)))) for j in range(len(al.columns))]
                for lyr in layers] for i in range(n)]  # fmt: skip
        assert_close(
            sw.per_example[:, list(layers)], sub, what=f"{kind} patch_sweep per_example (joint spans)"
        )
        sub = [[[float(wb.ablate(model, ds[i].clean, metric=metric_of(ds, i), cells=span_cells(site_a, lyr, pos(i, j))))
                 for j in range(len(al.columns))] for lyr in layers] for i in range(n)]  # fmt: skip
        assert_close(
            ab.per_example[:, list(layers)], sub, what=f"{kind} ablate_sweep per_example (joint spans)"
        )
        assert_close(sw.values, sw.per_example.mean(0), what="patch_sweep mean")
    else:
        cols = [[p[0] for p in al.positions[i]] for i in range(n)]
        check(sw, [wb.patch_sweep(model, ds[i].clean, ds[i].corrupt, metric=metric_of(ds, i), site=site_p).values[:, cols[i]]
                   for i in range(n)], "patch_sweep")  # fmt: skip
        check(ab, [wb.ablate_sweep(model, ds[i].clean, metric=metric_of(ds, i), site=site_a, method="zero").values[:, cols[i]]
                   for i in range(n)], "ablate_sweep")  # fmt: skip
    if heads:
        hs = wb.ablate_sweep(model, ds, metric=m, site="head", method="mean", align=align)
        assert hs.values.shape == (L, H)
        check(hs, [wb.ablate_sweep(model, ds[i].clean, metric=metric_of(ds, i), site="head", method="mean").values
                   for i in range(n)], "ablate_sweep heads")  # fmt: skip
    assert_close(sw.clean, [float(wb.patch(model, ds[i].clean, ds[i].corrupt, metric=metric_of(ds, i), layer=0).clean)
                            for i in range(n)], what="sweep clean")  # fmt: skip
    norm = (sw.values - sw.corrupt.mean()) / (sw.clean.mean() - sw.corrupt.mean())
    assert_close(sw.normalized, norm, what="normalized of the means")
    if not light:
        hp = wb.patch_sweep(model, ds, metric=m, site="head", by_position=True, align=align)
        assert hp.values.shape == (L, len(al.columns), H)
        i, lyr, j, h = n - 1, L - 1, col, H - 1
        one = wb.patch(
            model,
            ds[i].clean,
            ds[i].corrupt,
            metric=metric_of(ds, i),
            cells=span_cells("head", lyr, pos(i, j), h),
        )
        assert_close(hp.per_example[i, lyr, j, h], float(one), what=f"{kind} head sweep by column")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_ops_equal_the_single_pair_results(family, kind):
    check_ops(tiny(family), kind)


@pytest.fixture(scope="module")
def embedded():
    return wb.load()


@pytest.mark.parametrize("kind", KINDS)
def test_ops_equal_the_single_pair_results_embedded(embedded, kind):
    check_ops(embedded, kind, light=True)


# =============================================================================================
# a roles patch = an independent plain-hook patch of all the span's positions at once


@pytest.mark.parametrize("family", ("gpt2", "llama", "gpt_neox", "gemma2"))
@pytest.mark.parametrize("kind", ("template", "spans"))
def test_roles_patch_matches_plain_hooks(family, kind):
    model = tiny(family)
    ds = dataset(model, kind)
    al = alignment(model, ds, "roles")
    multi = [j for j in range(len(al.columns)) if len(al.positions[0][j]) > 1]
    assert multi, "the dataset must have a role of several tokens"
    for j in range(len(al.columns)):
        for site in ("resid_pre", "mlp_out"):
            v = wb.patch(
                model, ds, metric=wb.logit_diff(), site=site, layer=1, position=al.columns[j], align="roles"
            )
            for i in range(len(ds)):
                ref_metric = R.logit_diff(model.tokenizer, ds[i].target, ds[i].foil)
                edits = [(site, 1, p, None, "source", None) for p in al.positions[i][j]]
                ref = R.reference_joint(
                    model.hf, model.tokenizer, ds[i].corrupt, ref_metric, edits, source=ds[i].clean
                )
                assert_close(
                    v.per_example[i],
                    ref["value"],
                    what=f"{family} {kind} {site} column {al.columns[j]!r} ex {i}",
                )
                assert_close(v.clean[i], ref["clean"], what="clean baseline")
                assert_close(v.corrupt[i], ref["corrupt"], what="corrupt baseline")
    # a head span patched jointly
    j = multi[0]
    v = wb.patch(
        model, ds, metric=wb.logit_diff(), site="head", layer=2, position=al.columns[j], head=1, align="roles"
    )
    for i in range(len(ds)):
        ref_metric = R.logit_diff(model.tokenizer, ds[i].target, ds[i].foil)
        edits = [("head", 2, p, 1, "source", None) for p in al.positions[i][j]]
        ref = R.reference_joint(
            model.hf, model.tokenizer, ds[i].corrupt, ref_metric, edits, source=ds[i].clean
        )
        assert_close(v.per_example[i], ref["value"], what=f"{family} {kind} head span ex {i}")


# =============================================================================================
# to_code() of a dataset result reproduces .values and .per_example


def code_results(model, kind):
    ds = dataset(model, kind)
    align = ALIGN[kind]
    m = wb.logit_diff()
    L = model.n_layers
    return [
        wb.patch_sweep(model, ds, metric=m, site="resid_pre", align=align),
        wb.patch_sweep(model, ds, metric=m, site="k", by_position=True, align=align),
        wb.patch_sweep(model, ds, metric=m, site="pattern", align=align),
        wb.ablate_sweep(model, ds, metric=m, site="mlp_out", method="mean", reference=["The cat sat on the mat"], align=align),
        wb.ablate_sweep(model, ds, metric=m, site="head", method="resample", align=align),
        wb.patch(model, ds, metric=m, cells=[wb.Cell("resid_pre", 1, 1), wb.Cell("v", 2, -1, head=0)], align=align),
        wb.ablate(model, ds, metric=m, cells=[wb.Cell("head", 1, 1, head=0), wb.Cell("mlp_out", 0)], method="zero", align=align),
        wb.ablate(model, ds, metric=m, site="attn_out", layer=0, position=-1, method="resample", align=align),
        wb.intervene(model, ds, [wb.Edit(wb.Cell("resid_pre", 1, 1)), wb.Edit(wb.Cell("mlp_out", 0, -1), "zero"),
                                 wb.Edit(wb.Cell("resid_post", 0, 0), wb.Add(np.ones(model.d_model, np.float32), 0.5))],
                     metric=m, align=align),  # fmt: skip
        wb.path_patch(model, ds, metric=m, senders=[wb.Cell("head", 0, head=0), wb.Cell("head", 0, 1, head=1)], align=align),
        wb.path_patch_sweep(model, ds, metric=m, receivers=[wb.Cell("q", L - 1, -1, head=0)], align=align),
        wb.path_patch_sweep(model, ds, metric=m, align=align),
    ]  # fmt: skip


@pytest.mark.parametrize("kind", ("exact", "right", "template", "spans"))
@pytest.mark.parametrize("family", ("gpt2", "llama", "gpt_neox"))
def test_to_code_reproduces_values_and_per_example(family, kind):
    model = tiny(family)
    for r in code_results(model, kind):
        ns = run_code(r.to_code())
        expected = r.values if isinstance(r, wb.SweepResult) else float(r)
        what = f"{family} {kind} {r.options}"
        assert_close(np.asarray(ns["result"], dtype=np.float64), expected, ATOL, what)
        assert_close(ns["per_example"], r.per_example, ATOL, what + " per_example")
        assert_close(ns["sem"], r.sem, ATOL, what + " sem")


# =============================================================================================
# figures, frames, reprs


def test_figures_frames_and_reprs():
    model = tiny("llama")
    ds = dataset(model, "template")
    m = wb.logit_diff()
    sw = wb.patch_sweep(model, ds, metric=m, align="roles")
    fig = sw.plot()
    hover = fig.data[0].hovertext[1][1]
    assert (
        "(sem)" in hover
        and f"{sw.sem[1, 1]:.3g}"[:4] in hover.replace("\u2212", "-")
        and "2 examples" in hover
    )
    assert "2 examples" in fig.layout.title.text and "roles" in fig.layout.title.text
    assert list(fig.layout.xaxis.ticktext)[1].startswith("{A}")
    fr = sw.to_frame()
    assert {"value", "sem", "n"} <= set(fr.columns) and len(fr) == sw.values.size
    assert_close(fr["value"].to_numpy(), sw.values.reshape(-1), what="frame mean")
    assert_close(fr["sem"].to_numpy(), sw.sem.reshape(-1), what="frame sem")
    assert (fr["n"] == 2).all() and fr["token"].iloc[1] == sw.columns[1]
    long = sw.to_frame(per_example=True)
    assert len(long) == 2 * sw.values.size and set(long["example"]) == {0, 1}
    assert_close(long["value"].to_numpy(), sw.per_example.reshape(-1), what="long frame values")
    hs = wb.patch_sweep(model, ds, metric=m, site="head", by_position=True, align="roles")
    assert "(sem)" in hs.plot(head=0).data[0].hovertext[0][0]
    ab = wb.ablate_sweep(model, ds, metric=m, align="roles")
    assert "(sem)" in ab.plot().data[0].hovertext[0][0]
    assert "over 2 examples" in repr(sw) and "±" in repr(sw)

    v = wb.patch(model, ds, metric=m, layer=1, position="{A}", align="roles")
    assert "over 2 examples" in repr(v) and "±" in repr(v)
    f = v.to_frame()
    assert f["value"].iloc[0] == pytest.approx(float(v)) and f["sem"].iloc[0] == pytest.approx(v.sem)
    assert f["column"].iloc[0] == "{A}" and f["n"].iloc[0] == 2
    per = v.to_frame(per_example=True)
    assert list(per["example"]) == [0, 1] and per["prompt"].iloc[1] == ds[1].clean
    assert_close(per["value"].to_numpy(), v.per_example, what="value frame per example")
    fig = v.plot()
    assert len(fig.data[0].x) == 2 and "2 examples" in fig.layout.title.text
    with pytest.raises(WorkbenchError, match="per_example"):
        v.to_frame(per_example="yes")


def test_roles_a_field_after_a_space_and_a_final_only_literal():
    """A field whose first token carries the template's space (" park" for "the {PLACE}") is the field's; a
    trailing literal that is only the final token ("... a{OBJ} to") is the final column, not an empty one."""
    model = wb.load()
    ds = wb.Dataset.from_template(
        "Then,{A} and{B} went to the {PLACE}.{B} gave a{OBJ} to",
        corrupt="Then,{A} and{B} went to the {PLACE}.{C} gave a{OBJ} to",
        rows=[{"A": " Mary", "B": " John", "C": " Tom", "PLACE": "park", "OBJ": " ball"}],
        target="{A}",
        foil="{B}",
    )
    from workbench.data.align import alignment

    al = alignment(model, ds, "roles")
    cols = dict(zip(al.columns, al.positions[0], strict=True))
    toks = al.tokens[0]
    assert [toks[p] for p in cols["{PLACE}"]] == [" park"]
    assert [toks[p] for p in cols["{OBJ}"]] == [" ball"]
    assert al.columns[-1] == "final" and cols["final"] == [len(toks) - 1]
    assert all(cols.values()), "no empty column"
