"""Issue 13, views over a dataset, clicked in a real JupyterLab on the embedded model: PatchView(model, ds)'s mean
map with mean ± sem on hover, a cell's distribution over the examples with the best and worst ones, an example
opened as its single pair and back, the filter and its recomputed mean, cancel; DatasetView's rows; LensView(model,
ds)'s mean lens map with mean ± sem on hover and an example opened as its single-prompt lens."""

from __future__ import annotations

import json
import re

import pytest

from .conftest import make_notebook, run_notebook, start_server
from .test_issue10_views import kernel, type_into
from .test_views import cell_center, heatmap, shot, view, wait_status

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

ROWS = [
    {"A": " Mary", "B": " John", "C": " Tom"},
    {"A": " Anna", "B": " Mark", "C": " Paul"},
    {"A": " Sarah", "B": " David", "C": " James"},
    {"A": " Emma", "B": " Peter", "C": " Paul"},
]
CELL = (0, 10)  # embed at the second mention of {B} (the name the corrupt prompt changes)

SETUP = f"""
import json, pathlib
import numpy as np
import workbench as wb
model = wb.load()
ds = wb.Dataset.from_template("Then,{{A}} and{{B}} went to the park.{{B}} gave a ball to",
    corrupt="Then,{{A}} and{{B}} went to the park.{{C}} gave a ball to", rows={ROWS!r}, target="{{A}}", foil="{{B}}")
def summary(r):
    d = r.clean_mean - r.corrupt_mean
    return {{"mean": float(r.normalized[{CELL!r}]), "sem": float(r.sem[{CELL!r}] / abs(d)), "n": r.n_examples,
            "per": ((r.per_example[(slice(None),) + {CELL!r}] - r.corrupt_mean) / d).tolist()}}
full = wb.patch_sweep(model, ds, metric=wb.logit_diff(), site="embed")
sub = wb.patch_sweep(model, ds[[1, 3]], metric=wb.logit_diff(), site="embed")
_ = pathlib.Path("expected13.json").write_text(json.dumps({{"full": summary(full), "sub": summary(sub),
    "clean": ds.clean, "tokens": [model.to_str_tokens(c) for c in ds.clean]}}))
"""

CELLS = [
    SETUP,
    'pv = wb.PatchView(model, ds, site="embed")\npv',
    "dv = wb.DatasetView(ds, model)\ndv",
    "lv = wb.LensView(model, ds[:3])\nlv",
]


@pytest.fixture(scope="module")
def nb(browser_context):
    server = start_server("lab", make_notebook(CELLS), "issue13.ipynb")
    page = browser_context.new_page()
    try:
        run_notebook(page, server, "issue13.ipynb", 3)
        yield {"app": "lab", "page": page, "server": server}
    finally:
        page.close()
        server.stop()


def expected(nb) -> dict:
    return json.loads((nb["server"].root / "expected13.json").read_text())


def tooltip_spread(page, pv, row: int, col: int) -> tuple[float, float, int]:
    x, y = cell_center(heatmap(pv, "sweep"), row, col)
    page.mouse.move(x, y - 1)
    page.mouse.move(x, y)
    tip = pv.locator("[data-testid=wb-tooltip]:visible")
    tip.wait_for(timeout=5_000)
    m = re.search(r"mean ± sem: (\S+) ± (\S+), n = (\d+)", tip.text_content())
    assert m, tip.text_content()
    return float(m.group(1)), float(m.group(2)), int(m.group(3))


def test_dataset_view_lists_the_examples(nb):
    dv = view(nb["page"], "dataset")
    exp = expected(nb)
    rows = dv.locator("[data-testid=wb-ds-row]")
    assert rows.count() == 4
    first = rows.nth(0).locator("[data-testid=wb-ds-tokens] [data-testid=wb-token]")
    assert first.count() == len(exp["tokens"][0])
    dv.locator("[data-testid=wb-ds-pred]", has_text="…").first.wait_for(state="detached", timeout=60_000)
    preds = dv.locator("[data-testid=wb-ds-pred]").all_text_contents()
    out = kernel(
        nb["page"],
        "from workbench.data.predict import predictions\nprint(json.dumps([p.top_token for p in predictions(model, ds)]))",
    )
    assert preds == [t.replace(" ", "␣") for t in json.loads(out)]
    assert dv.locator("[data-testid=wb-ds-ok]").nth(0).text_content() in ("✓", "✗")
    type_into(dv.locator("[data-testid=wb-ds-filter]"), "Paul")
    nb["page"].wait_for_function(
        "() => document.querySelectorAll('[data-kind=dataset] [data-testid=wb-ds-row]').length === 2"
    )
    assert [r.get_attribute("data-index") for r in dv.locator("[data-testid=wb-ds-row]").all()] == ["1", "3"]
    shot(nb, dv, "issue13-dataset-view")
    type_into(dv.locator("[data-testid=wb-ds-filter]"), "")


def test_sweep_hover_shows_mean_and_sem(nb):
    page = nb["page"]
    pv = view(page, "patch")
    assert pv.locator("[data-testid=wb-ds-count]").text_content() == "4 of 4 examples"
    pv.locator("[data-testid=wb-sweep]").click()
    wait_status(pv, "done", timeout=180_000)
    hm = heatmap(pv, "sweep")
    assert (hm.get_attribute("data-rows"), hm.get_attribute("data-cols")) == ("1", "15")
    exp = expected(nb)["full"]
    mean, sem, n = tooltip_spread(page, pv, *CELL)
    assert n == 4
    assert mean == pytest.approx(exp["mean"], abs=2e-3) and sem == pytest.approx(exp["sem"], abs=2e-3)
    assert "Mean over 4 examples" in pv.locator("[data-testid=wb-caption]").text_content()
    shot(nb, pv, "issue13-patch-mean")


def test_click_a_cell_shows_the_distribution_and_best_worst(nb):
    page = nb["page"]
    pv = view(page, "patch")
    x, y = cell_center(heatmap(pv, "sweep"), *CELL)
    page.mouse.click(x, y)
    dist = pv.locator("[data-testid=wb-distribution]")
    dist.wait_for(timeout=10_000)
    exp = expected(nb)
    summary = pv.locator("[data-testid=wb-dist-summary]")
    assert float(summary.get_attribute("data-mean")) == pytest.approx(exp["full"]["mean"], abs=1e-4)
    assert float(summary.get_attribute("data-sem")) == pytest.approx(exp["full"]["sem"], abs=1e-4)
    points = pv.locator("[data-testid=wb-dist-point]")
    assert points.count() == 4
    got = sorted(float(p.get_attribute("data-value")) for p in points.all())
    assert got == pytest.approx(sorted(exp["full"]["per"]), abs=1e-4)
    best = pv.locator("[data-testid=wb-best] [data-testid=wb-example]")
    worst = pv.locator("[data-testid=wb-worst] [data-testid=wb-example]")
    assert best.count() == 2 and worst.count() == 2
    top = max(range(4), key=lambda i: exp["full"]["per"][i])
    assert best.nth(0).get_attribute("data-example") == str(top)
    assert exp["clean"][top] in best.nth(0).text_content()  # the example's text, as text
    assert pv.locator("[data-testid=wb-distribution] img, [data-testid=wb-distribution] script").count() == 0
    shot(nb, pv, "issue13-distribution")


def test_click_an_example_opens_its_single_pair_and_back(nb):
    page = nb["page"]
    pv = view(page, "patch")
    exp = expected(nb)
    worst = pv.locator("[data-testid=wb-worst] [data-testid=wb-example]").nth(0)
    i = int(worst.get_attribute("data-example"))
    worst.click()
    title = pv.locator("[data-testid=wb-example-title]")
    title.wait_for(timeout=10_000)
    assert title.get_attribute("data-example") == str(i)
    page.wait_for_function(
        "(v) => document.querySelector('[data-kind=patch] [data-testid=wb-clean]').value === v",
        arg=exp["clean"][i],
    )
    assert pv.locator("[data-testid=wb-tokens-clean] [data-testid=wb-token]").count() == len(exp["tokens"][i])
    assert pv.locator("[data-testid=wb-ds-controls]").is_hidden()
    wait_status(pv, "done", timeout=60_000)
    # the example's own map, from the dataset sweep (per_example[i] is its single-pair sweep)
    x, y = cell_center(heatmap(pv, "sweep"), *CELL)
    page.mouse.move(x, y)
    tip = pv.locator("[data-testid=wb-tooltip]:visible")
    tip.wait_for(timeout=5_000)
    m = re.search(r"effect (-?[0-9.]+(?:e[-+]?[0-9]+)?)", tip.text_content())
    assert m, tip.text_content()
    out = kernel(
        page,
        f"r = wb.patch_sweep(model, ds[{i}].clean, ds[{i}].corrupt, metric=wb.logit_diff(ds[{i}].target, ds[{i}].foil), site='embed'); print(float(r.normalized[{CELL!r}]))",
    )
    assert float(m.group(1)) == pytest.approx(float(out), abs=2e-3)
    shot(nb, pv, "issue13-example")
    pv.locator("[data-testid=wb-back]").click()
    pv.locator("[data-testid=wb-ds-controls]").wait_for(timeout=10_000)
    assert pv.locator("[data-testid=wb-example-bar]").is_hidden()
    page.wait_for_function(
        "() => document.querySelector('[data-kind=patch] [data-role=sweep]').getAttribute('data-cols') === '15'"
    )
    assert tooltip_spread(page, pv, *CELL)[2] == 4


def test_filter_recomputes_the_mean(nb):
    page = nb["page"]
    pv = view(page, "patch")
    type_into(pv.locator("[data-testid=wb-ds-filter]"), "Paul")
    pv.locator("[data-testid=wb-ds-count][data-shown='2']").wait_for(timeout=20_000)
    exp = expected(nb)["sub"]
    page.wait_for_function(
        "() => /Mean over 2 examples/.test(document.querySelector('[data-kind=patch] [data-testid=wb-caption]').textContent)",
        timeout=20_000,
    )
    mean, sem, n = tooltip_spread(page, pv, *CELL)
    assert (
        n == 2 and mean == pytest.approx(exp["mean"], abs=2e-3) and sem == pytest.approx(exp["sem"], abs=2e-3)
    )
    assert [e.get_attribute("data-example") for e in pv.locator("[data-testid=wb-ds-example]").all()] == [
        "1",
        "3",
    ]
    out = kernel(page, "print(pv.dataset['shown'], pv.subset().clean == ds[[1, 3]].clean)")
    assert out.split() == ["[1,", "3]", "True"], out
    shot(nb, pv, "issue13-filtered")
    type_into(pv.locator("[data-testid=wb-ds-filter]"), "")
    pv.locator("[data-testid=wb-ds-count][data-shown='4']").wait_for(timeout=20_000)


def test_a_dataset_sweep_reports_examples_and_cancels(nb):
    page = nb["page"]
    pv = view(page, "patch")
    pv.locator("[data-testid=wb-site]").select_option("resid_pre")
    page.wait_for_function(
        "() => document.querySelector('[data-kind=patch] [data-role=sweep]').getAttribute('data-rows') === '30'"
    )
    pv.locator("[data-testid=wb-sweep]").click()
    pv.locator("[data-testid=wb-status]", has_text="examples").wait_for(timeout=60_000)
    assert re.search(r"\d/4 examples", pv.locator("[data-testid=wb-status]").text_content())
    shot(nb, pv, "issue13-running")
    pv.locator("[data-testid=wb-cancel]").click()
    pv.locator("[data-testid=wb-status]", has_text="cancelled").wait_for(timeout=60_000)
    out = kernel(page, "print(pv.status, pv.sweep == {}, pv.error == '')")
    assert out.split() == ["idle", "True", "True"], out
    pv.locator("[data-testid=wb-site]").select_option("embed")  # the embed sweep is still there
    page.wait_for_function(
        "() => document.querySelector('[data-kind=patch] [data-role=sweep]').getAttribute('data-rows') === '1'"
    )
    assert tooltip_spread(page, pv, *CELL)[2] == 4


def test_lens_view_over_a_dataset_hover_and_open_an_example(nb):
    page = nb["page"]
    lv = view(page, "lens")
    out = kernel(
        page,
        "r = wb.logit_lens(model, ds[:3])\n"
        "print(json.dumps({'L': r.values.shape[0], 'C': r.values.shape[1], 'mean': float(r.values[-1, -1]),"
        " 'sem': float(r.sem[-1, -1]), 'per': r.per_example[:, -1, -1].tolist()}))",
    )
    exp = json.loads(out)
    hm = heatmap(lv, "lens")
    page.wait_for_function(
        "(c) => document.querySelector('[data-kind=lens] [data-role=lens]').getAttribute('data-cols') === c",
        arg=str(exp["C"]),
    )
    assert hm.get_attribute("data-rows") == str(exp["L"])
    assert lv.locator("[data-testid=wb-prompt]").is_hidden()
    assert lv.locator("[data-testid=wb-ds-example]").count() == 3
    x, y = cell_center(hm, exp["L"] - 1, exp["C"] - 1)
    page.mouse.move(x, y - 1)
    page.mouse.move(x, y)
    tip = lv.locator("[data-testid=wb-tooltip]:visible")
    tip.wait_for(timeout=5_000)
    m = re.search(r"mean ± sem: (\S+) ± (\S+), n = (\d+)", tip.text_content())
    assert m, tip.text_content()
    assert int(m.group(3)) == 3
    assert float(m.group(1)) == pytest.approx(exp["mean"], abs=2e-3)
    assert float(m.group(2)) == pytest.approx(exp["sem"], abs=2e-3)
    shot(nb, lv, "issue13-lens-mean")
    x, y = cell_center(hm, exp["L"] - 1, exp["C"] - 1)  # the screenshot may have scrolled the page
    page.mouse.click(x, y)  # the cell's per-example values, as the strip plot
    lv.locator("[data-testid=wb-distribution]").wait_for(timeout=10_000)
    got = sorted(
        float(p.get_attribute("data-value")) for p in lv.locator("[data-testid=wb-dist-point]").all()
    )
    assert got == pytest.approx(sorted(exp["per"]), abs=1e-4)
    shot(nb, lv, "issue13-lens-distribution")
    # open example 1: its own single-prompt lens, its target pinned
    lv.locator("[data-testid=wb-ds-example][data-example='1']").click()
    lv.locator("[data-testid=wb-example-title][data-example='1']").wait_for(timeout=10_000)
    clean = expected(nb)["clean"][1]
    page.wait_for_function(
        "(v) => document.querySelector('[data-kind=lens] [data-testid=wb-prompt]').value === v", arg=clean
    )
    wait_status(lv, "done", timeout=60_000)
    assert lv.locator("[data-testid=wb-prompt]").is_visible()
    assert hm.get_attribute("data-cols") == str(len(expected(nb)["tokens"][1]))
    assert lv.locator("[data-testid=wb-pinned]").text_content().startswith("\u2423Anna")
    out = kernel(
        page,
        "one = wb.LensView(model, ds[1].clean, pinned=[ds[1].target])\n"
        "print(lv.prompt == one.prompt, lv.pinned == one.pinned, lv.data['tokens'] == one.data['tokens'],"
        " lv.data['top_ids'] == one.data['top_ids'])",
    )
    assert out.split() == ["True", "True", "True", "True"], out
    shot(nb, lv, "issue13-lens-example")
    lv.locator("[data-testid=wb-back]").click()
    lv.locator("[data-testid=wb-ds-controls]").wait_for(timeout=10_000)
    page.wait_for_function(
        "(c) => document.querySelector('[data-kind=lens] [data-role=lens]').getAttribute('data-cols') === c",
        arg=str(exp["C"]),
    )
