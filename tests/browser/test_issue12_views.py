"""Issue 12, views: a set of cells built by shift-clicks and applied jointly, every site in the picker, path mode,
and export of views other than a heatmap, clicked in a real JupyterLab on the embedded model."""

from __future__ import annotations

import json

import pytest

from .conftest import ARTIFACTS, make_notebook, run_notebook, start_server
from .test_issue10_views import kernel
from .test_views import heatmap, shot, view, wait_status

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

CLEAN = "The Eiffel Tower is located in the city of"
CORRUPT = "The Colosseum is located in the city of"
SET = [(23, 4), (22, 3)]  # two heads, applied jointly

SETUP = f"""
import json, pathlib
import workbench as wb
from workbench.engine.edits import Cell
from workbench.widgets import AttentionView, PatchView
model = wb.load()
metric = wb.logit_diff(" Paris", " Rome")
joint = wb.patch(model, {CLEAN!r}, {CORRUPT!r}, metric=metric, cells=[Cell("head", l, head=h) for l, h in {SET!r}])
alone = [float(wb.patch(model, {CLEAN!r}, {CORRUPT!r}, metric=metric, site="head", layer=l, head=h)) for l, h in {SET!r}]
_ = pathlib.Path("expected12.json").write_text(json.dumps({{"joint": float(joint), "top": joint.top_tokens[0], "alone": alone}}))
"""

CELLS = [
    SETUP,
    f'pv = PatchView(model, {CLEAN!r}, {CORRUPT!r}, target=" Paris", foil=" Rome", site="head")\npv',
    'av = AttentionView(model, "When Mary and John went to the store, John gave a drink to")\nav',
]


@pytest.fixture(scope="module")
def nb(browser_context):
    server = start_server("lab", make_notebook(CELLS), "issue12.ipynb")
    page = browser_context.new_page()
    try:
        run_notebook(page, server, "issue12.ipynb", 2)
        yield {"app": "lab", "page": page, "server": server}
    finally:
        page.close()
        server.stop()


def expected(nb) -> dict:
    return json.loads((nb["server"].root / "expected12.json").read_text())


def click_at(hm, row: int, col: int, modifiers: list[str] | None = None) -> None:
    hm.scroll_into_view_if_needed()
    box = hm.bounding_box()
    rows = int(hm.get_attribute("data-rows"))
    cols = int(hm.get_attribute("data-cols"))
    hm.click(
        position={"x": (col + 0.5) * box["width"] / cols, "y": (row + 0.5) * box["height"] / rows},
        modifiers=modifiers or [],
    )


def test_shift_click_two_heads_and_apply_the_set(nb):
    page = nb["page"]
    pv = view(page, "patch")
    hm = heatmap(pv, "sweep")
    assert (hm.get_attribute("data-rows"), hm.get_attribute("data-cols")) == ("30", "9")
    for r, c in SET:
        click_at(hm, r, c, ["Shift"])
    page.wait_for_function(
        "() => document.querySelectorAll('[data-kind=patch] [data-testid=wb-set-cell]').length === 2"
    )
    chips = pv.locator("[data-testid=wb-set-cell]")
    assert [chips.nth(i).text_content().rstrip("×") for i in range(2)] == ["head L23 H4", "head L22 H3"]
    assert hm.get_attribute("data-outlined") == "set:23,4 set:22,3"
    # the set is a trait: the kernel has it (it survives reload and export)
    out = kernel(page, "print(pv.cells)")
    assert out.strip() == "[['head', 23, None, 4], ['head', 22, None, 3]]", out
    assert pv.locator("[data-testid=wb-result-label]").count() == 0  # shift-clicks computed nothing
    pv.locator("[data-testid=wb-apply-set]").click()
    label = pv.locator("[data-testid=wb-result-label]")
    label.wait_for(timeout=60_000)
    wait_status(pv, "done")
    assert label.text_content().startswith(
        "patch set of 2: Cell('head', 23, head=4), Cell('head', 22, head=3)"
    )
    exp = expected(nb)
    shown = float(pv.locator("[data-testid=wb-metric]").get_attribute("data-value"))
    assert shown == pytest.approx(exp["joint"], rel=1e-5, abs=1e-5)
    assert all(shown != pytest.approx(a, abs=1e-4) for a in exp["alone"])  # jointly, not one of them
    assert pv.locator("[data-testid=wb-prediction]").get_attribute("data-top") == exp["top"]
    # the logit lens of the joint run (wb.logit_lens(edits=)), not a note
    title = pv.locator("[data-testid=wb-lens-title]")
    title.wait_for(timeout=30_000)
    assert "jointly edited run (all 2 cells" in title.text_content()
    lens = heatmap(pv, "patched-lens")
    assert lens.get_attribute("data-rows") == "30"
    out = kernel(
        page,
        "import numpy as np\n"
        f"edits = [wb.Edit(Cell('head', l, head=h), 'source') for l, h in {SET!r}]\n"
        f"want = wb.logit_lens(model, {CORRUPT!r}, top_k=5, edits=edits, source={CLEAN!r})\n"
        "got = wb.widgets.unpack(pv.result['lens']['top_probs'])\n"
        "print(np.allclose(got, want.top_probs, rtol=1e-5, atol=1e-6), want.top_tokens[-1][-1][0] == joint.top_tokens[0])",
    )
    assert out.split() == ["True", "True"], out
    # Code and history: the joint patch's to_code(), shown by the Code button and kept in the history entry
    pv.locator("[data-testid=wb-copy-code]").click()
    code = pv.locator("[data-testid=wb-code]").text_content()
    assert "model.trace(batch)" in code and "edit(" in code
    out = kernel(
        page, "print(pv.code == joint.to_code() == pv.history[-1]['code'], pv.history[-1]['label'][:15])"
    )
    assert out.split() == ["True", "patch", "set", "of", "2:"], out
    entry = pv.locator("[data-testid=wb-history-entry]").last
    assert "patch set of 2" in entry.text_content()
    pv.locator("[data-testid=wb-copy-code]").click()  # hide the code box again
    shot(nb, pv, "issue12-set")


def test_keyboard_adds_to_the_set(nb):
    page = nb["page"]
    pv = view(page, "patch")
    hm = heatmap(pv, "sweep")
    click_at(hm, 10, 1, ["Shift"])  # selects (10, 1) and adds it
    hm.press("ArrowRight")
    hm.press("Space")
    out = kernel(page, "print(pv.cells[-2:])")
    assert out.strip() == "[['head', 10, None, 1], ['head', 10, None, 2]]", out
    hm.press("Space")  # out again
    click_at(hm, 10, 1, ["Shift"])
    page.wait_for_function(
        "() => document.querySelectorAll('[data-kind=patch] [data-testid=wb-set-cell]').length === 2"
    )


def test_the_site_picker_offers_every_site(nb):
    page = nb["page"]
    pv = view(page, "patch")
    sites = pv.locator("[data-testid=wb-site] option").all_text_contents()
    want = kernel(page, "from workbench.engine.sites import SITES; print(' '.join(SITES))").split()
    assert sites == want and "resid_mid" in sites and "embed" in sites  # SmolLM2 blocks are sequential
    pv.locator("[data-testid=wb-site]").select_option("k")
    hm = heatmap(pv, "sweep")
    page.wait_for_function(
        "() => document.querySelector('[data-kind=patch] [data-role=sweep]').getAttribute('data-cols') === '3'"
    )
    assert hm.get_attribute("data-rows") == "30"  # 3 key-value heads per layer
    pv.locator("[data-testid=wb-site]").select_option("embed")
    page.wait_for_function(
        "() => document.querySelector('[data-kind=patch] [data-role=sweep]').getAttribute('data-rows') === '1'"
    )
    pv.locator("[data-testid=wb-site]").select_option("head")
    page.wait_for_function(
        "() => document.querySelector('[data-kind=patch] [data-role=sweep]').getAttribute('data-cols') === '9'"
    )


def test_exports_of_the_patch_set_and_the_head_view(nb):
    page = nb["page"]
    pv = view(page, "patch")
    pv.locator("[data-testid=wb-apply-set]").click()  # the site changes above made the last result stale
    pv.locator("[data-testid=wb-result-label]").wait_for(timeout=60_000)
    wait_status(pv, "done")
    with page.expect_download() as dl:
        pv.locator("[data-testid=wb-export-svg]").click()
    svg = ARTIFACTS / "lab-issue12-patch.svg"
    dl.value.save_as(svg)
    text = svg.read_text()
    assert "Set of cells (2)" in text and "head L23 H4" in text and "patch set of 2" in text
    assert text.count('data-outline="set"') == 2
    with page.expect_download() as dl:
        pv.locator("[data-testid=wb-export-png]").click()
    png = ARTIFACTS / "lab-issue12-patch-export.png"
    dl.value.save_as(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    av = view(page, "attention")
    click_at(heatmap(av, "heads"), 1, 2)
    av.locator("[data-testid=wb-pattern-title]").wait_for(timeout=30_000)
    av.locator("[data-testid=wb-headview] [data-testid=wb-token]").nth(5).hover()
    with page.expect_download() as dl:
        av.locator("[data-testid=wb-export-svg]").click()
    svg = ARTIFACTS / "lab-issue12-attention.svg"
    dl.value.save_as(svg)
    text = svg.read_text()
    assert "Head view" in text and "Layer 1, head 2" in text and "<line" in text
    with page.expect_download() as dl:
        av.locator("[data-testid=wb-export-png]").click()
    png = ARTIFACTS / "lab-issue12-attention-export.png"
    dl.value.save_as(png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    height = int.from_bytes(data[20:24], "big")
    pattern = heatmap(av, "pattern")
    rows = int(pattern.get_attribute("data-rows"))
    # the pattern and, under it, the head view (16 px a token), at 2x scale: not the heatmap alone
    assert height >= 2 * (pattern.bounding_box()["height"] + 16 * rows)


def test_path_mode_picks_receivers_and_sweeps_or_says_why_not(nb):
    page = nb["page"]
    pv = view(page, "patch")
    pv.locator("[data-testid=wb-mode]").select_option("path")
    pv.locator("[data-testid=wb-receivers]").wait_for()
    assert pv.locator("[data-testid=wb-receiver]").text_content() == "logits"
    hm = heatmap(pv, "sweep")
    pv.locator("[data-testid=wb-receiver-site]").select_option("q")
    click_at(hm, 20, 4)
    chip = pv.locator("[data-testid=wb-receiver]")
    chip.first.wait_for()
    page.wait_for_function(
        "() => document.querySelector('[data-kind=patch] [data-testid=wb-receiver]').textContent.startsWith('q L20 H4')"
    )
    assert hm.get_attribute("data-outlined").endswith("receiver:20,4")
    assert kernel(page, "print(pv.receivers)").strip() == "[['q', 20, None, 4]]"
    have = kernel(page, "print(hasattr(wb, 'path_patch_sweep'))").strip() == "True"
    pv.locator("[data-testid=wb-sweep]").click()
    if not have:  # the op has not landed: a readable message, and the view stays usable
        err = pv.locator("[data-testid=wb-error]")
        err.wait_for(state="visible", timeout=30_000)
        assert "wb.path_patch_sweep" in err.text_content()
        shot(nb, pv, "issue12-path-missing")
        pv.locator("[data-testid=wb-mode]").select_option("patch")
        return
    # the status may still say "done" from before the click: wait for the sweep's own caption
    pv.locator("[data-testid=wb-caption]", has_text="path patching from each sender head").wait_for(
        timeout=600_000
    )
    wait_status(pv, "done", timeout=600_000)
    caption = pv.locator("[data-testid=wb-caption]").text_content()
    assert caption.startswith("path patching from each sender head to q L20 H4")
    out = kernel(
        page,
        "import numpy as np\n"
        "want = wb.path_patch_sweep(model, pv.clean, pv.corrupt, metric=metric, receivers=[Cell('q', 20, head=4)])\n"
        "got = wb.widgets.unpack(pv.sweep['values'])\n"
        "print(np.allclose(got, want.values, rtol=1e-5, atol=1e-6, equal_nan=True), np.isnan(got[20:]).all())",
    )
    assert out.split() == ["True", "True"], out
    # senders at or above the receiver's layer have no path: NaN, drawn grey and named so, not a zero effect
    legend = pv.locator("[data-testid=wb-legend-nan]")
    assert legend.text_content() == "no path (sender at or above the receiver)"
    assert "Grey: no path" in caption
    box = hm.bounding_box()
    hm.hover(position={"x": 0.5 * box["width"] / 9, "y": 25.5 * box["height"] / 30})
    tip = pv.locator("[data-testid=wb-tooltip]:visible")
    tip.wait_for(timeout=5_000)
    assert "no path" in tip.text_content()
    shot(nb, pv, "issue12-path")
    # Apply senders: wb.path_patch of the shift-clicked set into the receiver, with its code; no lens, a note
    clear = pv.locator("[data-testid=wb-clear-set]")
    if clear.is_enabled():  # the heads the tests above put in the set are above the receiver
        clear.click()
    page.wait_for_function(
        "() => document.querySelectorAll('[data-kind=patch] [data-testid=wb-set-cell]').length === 0"
    )
    for r, c in [(10, 1), (12, 3)]:
        click_at(hm, r, c, ["Shift"])
    pv.locator("[data-testid=wb-apply-set]").click()
    note = pv.locator("[data-testid=wb-lens-note]")
    note.wait_for(timeout=120_000)
    wait_status(pv, "done")
    out = kernel(
        page,
        "one = wb.path_patch(model, pv.clean, pv.corrupt, metric=metric, senders=[Cell('head', 10, head=1), "
        "Cell('head', 12, head=3)], receivers=[Cell('q', 20, head=4)])\n"
        "print(abs(pv.result['value'] - float(one)) < 1e-4, pv.code == one.to_code())",
    )
    assert out.split() == ["True", "True"], out
    assert "no lens" in note.text_content()
    shot(nb, pv, "issue12-path-senders")
    pv.locator("[data-testid=wb-clear-set]").click()
    pv.locator("[data-testid=wb-mode]").select_option("patch")
