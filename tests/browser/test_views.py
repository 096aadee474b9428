"""The views in a real JupyterLab 4 and Notebook 7, clicked as a person would, on the embedded model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from .conftest import ARTIFACTS, make_notebook, run_notebook, start_server

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

CLEAN = "The Eiffel Tower is located in the city of"
CORRUPT = "The Colosseum is located in the city of"
XSS = "A <img src=x onerror=alert(1)> <script>alert(2)</script> \"dq\" 'sq'\nnext"
LONG = " ".join(["The cat sat on the mat and the dog sat on the log."] * 40)
CELL = (24, 9)  # resid_pre, layer 24, last position: the answer moves here
HEAD = (23, 4)

SETUP = f"""
import json, pathlib, time
import workbench as wb
from workbench.widgets import AttentionView, LensView, PatchView
model = wb.load()
CLEAN, CORRUPT = {CLEAN!r}, {CORRUPT!r}
metric = wb.logit_diff(" Paris", " Rome")
exp = {{"corrupt_top": wb.logit_lens(model, CORRUPT).top_tokens[-1][-1][0]}}
for l, p in [{CELL}, ({CELL[0] - 1}, {CELL[1]})]:
    v = wb.patch(model, CLEAN, CORRUPT, metric=metric, site="resid_pre", layer=l, position=p)
    exp[f"resid_pre {{l}},{{p}}"] = {{"top": v.top_tokens[0], "value": float(v)}}
v = wb.patch(model, CLEAN, CORRUPT, metric=metric, site="head", layer={HEAD[0]}, head={HEAD[1]})
exp["head {HEAD[0]},{HEAD[1]}"] = {{"top": v.top_tokens[0], "value": float(v)}}
_ = pathlib.Path("expected.json").write_text(json.dumps(exp))
"""


def cells(app: str) -> list[str]:
    out = [
        SETUP,
        'pv = PatchView(model, CLEAN, CORRUPT, target=" Paris", foil=" Rome")\npv',
        "lv = LensView(model, CLEAN)\nlv",
        'av = AttentionView(model, "When Mary and John went to the store, John gave a drink to")\nav',
        f"xss = LensView(model, {XSS!r})\nxss",
    ]
    if app == "lab":
        out.append(f"long = AttentionView(model, {LONG!r})\nlong")
        out.append(
            'from workbench.widgets import Workbench\nwbv = Workbench(model, CLEAN, CORRUPT, target=" Paris", foil=" Rome")\nwbv'
        )
    return out


@pytest.fixture(scope="module", params=["lab", "notebook"])
def nb(request, browser_context):
    app = request.param
    server = start_server(app, make_notebook(cells(app)))
    page = browser_context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    try:
        n = len(cells(app)) - 1 + (2 if app == "lab" else 0)  # the Workbench holds three views
        run_notebook(page, server, "views.ipynb", n)
        yield {"app": app, "page": page, "server": server, "dialogs": dialogs}
    finally:
        page.close()
        server.stop()


def view(page, kind: str, nth: int = 0):
    return page.locator(f"[data-testid=wb-view][data-kind={kind}]").nth(nth)


def heatmap(v, role: str):
    return v.locator(f"[data-testid=wb-heatmap][data-role={role}]")


def click_cell(hm, row: int, col: int) -> None:
    """Click the centre of cell (row, col), as a person would: Playwright waits until the heatmap is stable
    and checks that the point really hits it (a raw mouse click can land elsewhere while the page reflows)."""
    hm.scroll_into_view_if_needed()
    box = hm.bounding_box()
    rows = int(hm.get_attribute("data-rows"))
    cols = int(hm.get_attribute("data-cols"))
    hm.click(position={"x": (col + 0.5) * box["width"] / cols, "y": (row + 0.5) * box["height"] / rows})


def cell_center(hm, row: int, col: int, scroll: bool = True) -> tuple[float, float]:
    if scroll:
        hm.scroll_into_view_if_needed()
    box = hm.bounding_box()
    rows = int(hm.get_attribute("data-rows"))
    cols = int(hm.get_attribute("data-cols"))
    return box["x"] + (col + 0.5) * box["width"] / cols, box["y"] + (row + 0.5) * box["height"] / rows


def expected(nb) -> dict:
    return json.loads((nb["server"].root / "expected.json").read_text())


def shot(nb, locator, name: str) -> Path:
    path = ARTIFACTS / f"{nb['app']}-{name}.png"
    locator.scroll_into_view_if_needed()
    locator.screenshot(path=str(path))
    return path


def wait_status(v, text: str, timeout: float = 60_000) -> None:
    v.locator(f"[data-testid=wb-status][data-state={text}]").wait_for(timeout=timeout)


def test_views_render(nb):
    page = nb["page"]
    pv = view(page, "patch")
    assert pv.locator("[data-testid=wb-tokens-clean] [data-testid=wb-token]").count() == 10
    assert (
        pv.locator("[data-testid=wb-tokens-corrupt] [data-testid=wb-token]").nth(1).text_content()
        == "\u2423Col"
    )
    hm = heatmap(pv, "sweep")
    assert (hm.get_attribute("data-rows"), hm.get_attribute("data-cols")) == ("30", "10")
    lv = view(page, "lens")
    lhm = heatmap(lv, "lens")
    assert (lhm.get_attribute("data-rows"), lhm.get_attribute("data-cols")) == ("30", "10")
    assert lv.locator("[data-testid=wb-error]").is_hidden()
    shot(nb, pv, "patch-initial")
    shot(nb, lv, "lens")
    shot(nb, view(page, "attention"), "attention")


def test_click_patches_like_the_engine(nb):
    page = nb["page"]
    exp = expected(nb)
    pv = view(page, "patch")
    hm = heatmap(pv, "sweep")
    click_cell(hm, *CELL)
    assert hm.get_attribute("data-selected") == f"{CELL[0]},{CELL[1]}"
    label = pv.locator("[data-testid=wb-result-label]")
    label.filter(has_text=f"L{CELL[0]} pos {CELL[1]}").wait_for(timeout=60_000)
    wait_status(pv, "done")
    want = exp[f"resid_pre {CELL[0]},{CELL[1]}"]
    pred = pv.locator("[data-testid=wb-prediction]")
    assert pred.get_attribute("data-top") == want["top"]
    assert want["top"] != exp["corrupt_top"], "the chosen patch should change the prediction"
    value = float(pv.locator("[data-testid=wb-metric]").get_attribute("data-value"))
    assert value == pytest.approx(want["value"], rel=1e-4, abs=1e-4)
    # the patched run's lens is drawn with the causal cone shaded
    assert heatmap(pv, "patched-lens").get_attribute("data-rows") == "30"
    res = pv.locator("[data-testid=wb-result]")
    latency = float(res.get_attribute("data-latency-ms"))
    compute = float(res.get_attribute("data-compute-ms"))
    print(
        f"\n[{nb['app']}] click -> redraw {latency:.0f} ms, engine {compute:.0f} ms, overhead {latency - compute:.0f} ms"
    )
    (ARTIFACTS / f"{nb['app']}-timing-click.json").write_text(
        json.dumps({"latency_ms": latency, "compute_ms": compute})
    )
    assert latency - compute < 150 + 250, "click overhead far above target"
    shot(nb, pv, "patch-clicked")


def test_keyboard_moves_and_applies(nb):
    page = nb["page"]
    exp = expected(nb)
    pv = view(page, "patch")
    hm = heatmap(pv, "sweep")
    hm.focus()
    page.keyboard.press("ArrowUp")
    assert hm.get_attribute("data-selected") == f"{CELL[0] - 1},{CELL[1]}"
    page.keyboard.press("Enter")
    pv.locator("[data-testid=wb-result-label]").filter(has_text=f"L{CELL[0] - 1} pos {CELL[1]}").wait_for()
    wait_status(pv, "done")
    want = exp[f"resid_pre {CELL[0] - 1},{CELL[1]}"]
    assert pv.locator("[data-testid=wb-prediction]").get_attribute("data-top") == want["top"]


def test_history_and_code(nb):
    pv = view(nb["page"], "patch")
    entries = pv.locator("[data-testid=wb-history-entry]")
    assert entries.count() >= 2
    checks = pv.locator("[data-testid=wb-history-check]")
    checks.nth(0).check()
    pv.locator("[data-testid=wb-history-check]").nth(1).check()
    assert pv.locator("[data-testid=wb-compare] tr").count() == 3
    pv.locator("[data-testid=wb-copy-code]").click()
    code = pv.locator("[data-testid=wb-code]").text_content()
    assert "nnsight" in code or "trace" in code


def test_sweep_cancel_then_complete(nb):
    page = nb["page"]
    pv = view(page, "patch")
    pv.locator("[data-testid=wb-sweep]").click()
    wait_status(pv, "running")
    assert pv.locator("[data-testid=wb-progress]").is_visible()
    pv.locator("[data-testid=wb-cancel]").click()
    pv.locator("[data-testid=wb-status]", has_text="cancelled").wait_for(timeout=60_000)
    t0 = time.monotonic()
    pv.locator("[data-testid=wb-sweep]").click()
    wait_status(pv, "running")
    shot(nb, pv, "patch-sweep-running")
    wait_status(pv, "done", timeout=180_000)
    print(f"\n[{nb['app']}] resid_pre sweep 30x10 in {time.monotonic() - t0:.1f} s (browser to redraw)")
    assert "normalised effect" in pv.locator("[data-testid=wb-caption]").text_content()
    shot(nb, pv, "patch-sweep-done")


def test_switch_site_to_heads(nb):
    page = nb["page"]
    exp = expected(nb)
    pv = view(page, "patch")
    pv.locator("[data-testid=wb-site]").select_option("head")
    hm = heatmap(pv, "sweep")
    page.wait_for_function(
        "() => document.querySelector('[data-kind=patch] [data-role=sweep]').getAttribute('data-cols') === '9'"
    )
    click_cell(hm, *HEAD)
    pv.locator("[data-testid=wb-result-label]").filter(has_text=f"L{HEAD[0]} H{HEAD[1]}").wait_for(
        timeout=60_000
    )
    wait_status(pv, "done")
    want = exp[f"head {HEAD[0]},{HEAD[1]}"]
    assert pv.locator("[data-testid=wb-prediction]").get_attribute("data-top") == want["top"]
    value = float(pv.locator("[data-testid=wb-metric]").get_attribute("data-value"))
    assert value == pytest.approx(want["value"], rel=1e-4, abs=1e-4)
    shot(nb, pv, "patch-heads")
    pv.locator("[data-testid=wb-site]").select_option("resid_pre")


def test_drag_clean_cell_onto_corrupt_cell(nb):
    page = nb["page"]
    pv = view(page, "patch")
    src = heatmap(pv, "clean")
    dst = heatmap(pv, "sweep")
    src.scroll_into_view_if_needed()
    dst.scroll_into_view_if_needed()
    sx, sy = cell_center(src, 12, 3, scroll=False)
    dx, dy = cell_center(dst, 12, 9, scroll=False)
    page.mouse.move(sx, sy)
    page.mouse.down()
    page.mouse.move((sx + dx) / 2, (sy + dy) / 2, steps=5)
    page.mouse.move(dx, dy, steps=5)
    page.mouse.up()
    pv.locator("[data-testid=wb-result-label]").filter(has_text="L12 pos 3 → L12 pos 9").wait_for(
        timeout=60_000
    )
    wait_status(pv, "done")


def test_ablate_mode(nb):
    page = nb["page"]
    pv = view(page, "patch")
    pv.locator("[data-testid=wb-mode]").select_option("ablate")
    pv.locator("[data-testid=wb-site]").select_option("mlp_out")
    click_cell(heatmap(pv, "sweep"), 0, 3)
    pv.locator("[data-testid=wb-result-label]").filter(has_text="zero-ablate mlp_out L0 pos 3").wait_for(
        timeout=60_000
    )
    wait_status(pv, "done")
    shot(nb, pv, "ablate")
    pv.locator("[data-testid=wb-mode]").select_option("patch")
    pv.locator("[data-testid=wb-site]").select_option("resid_pre")


def test_click_error_shows_in_widget(nb):
    page = nb["page"]
    pv = view(page, "patch")
    target = pv.locator("[data-testid=wb-target]")
    target.fill("Paris and France")
    target.press("Enter")
    target.blur()
    page.wait_for_timeout(300)
    click_cell(heatmap(pv, "sweep"), 5, 5)
    err = pv.locator("[data-testid=wb-error]")
    err.wait_for(state="visible", timeout=30_000)
    assert "TokenizationError" in err.text_content()
    assert pv.locator("[data-testid=wb-status]").text_content() == "error"
    shot(nb, pv, "patch-error")
    target.fill(" Paris")
    target.press("Enter")
    target.blur()


def test_lens_hover_modes_pins_and_prompt(nb):
    page = nb["page"]
    lv = view(page, "lens")
    hm = heatmap(lv, "lens")
    x, y = cell_center(hm, 29, 9)
    page.mouse.move(x, y)
    tip = lv.locator("[data-testid=wb-tooltip]")
    tip.wait_for(state="visible")
    assert "Paris" in tip.text_content()
    lv.locator("[data-testid=wb-mode]").select_option("entropy")
    lv.locator("[data-testid=wb-pin-input]").fill(" Rome")
    lv.locator("[data-testid=wb-pin-input]").press("Enter")
    lv.locator("[data-testid=wb-pinned]").nth(1).wait_for(timeout=60_000)
    wait_status(lv, "done")
    lv.locator("[data-testid=wb-linechart] polyline").nth(1).wait_for()
    shot(nb, lv, "lens-pinned-entropy")
    lv.locator("[data-testid=wb-mode]").select_option("rank")
    prompt = lv.locator("[data-testid=wb-prompt]")
    prompt.fill(CORRUPT)
    prompt.press("Enter")
    lv.locator("[data-testid=wb-token]", has_text="osse").first.wait_for(timeout=60_000)
    wait_status(lv, "done")
    shot(nb, lv, "lens-new-prompt")


def test_attention_open_head_and_hover(nb):
    page = nb["page"]
    av = view(page, "attention")
    grid = heatmap(av, "heads")
    assert (grid.get_attribute("data-rows"), grid.get_attribute("data-cols")) == ("30", "9")
    click_cell(grid, 3, 2)
    av.locator("[data-testid=wb-pattern-title]").wait_for(timeout=30_000)
    pat = heatmap(av, "pattern")
    assert pat.get_attribute("data-rows") == "14"
    tok = av.locator("[data-testid=wb-headview] [data-testid=wb-token]").nth(9)
    tok.hover()
    page.wait_for_function(
        "() => document.querySelector('[data-kind=attention] [data-role=pattern]').getAttribute('data-highlight') === '9'"
    )
    shot(nb, av, "attention-head")


def test_xss_prompt_renders_as_text(nb):
    page = nb["page"]
    xv = view(page, "lens", 1)
    toks = xv.locator("[data-testid=wb-tokens] [data-testid=wb-token]")
    text = "".join(toks.all_text_contents())
    assert "<img" in text and "<script>" in text and '"dq"' in text.replace("\u2423", " ")
    assert "\u21b5" in text  # newline marker
    assert page.locator("img[src=x]").count() == 0
    assert page.locator(".wb-root script").count() == 0
    assert nb["dialogs"] == []
    shot(nb, xv, "xss")


def test_exports_png_and_standalone_html(nb, browser_context):
    page = nb["page"]
    lv = view(page, "lens")
    with page.expect_download() as dl:
        lv.locator("[data-testid=wb-export-png]").click()
    png = ARTIFACTS / f"{nb['app']}-export.png"
    dl.value.save_as(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with page.expect_download() as dl:
        lv.locator("[data-testid=wb-export-svg]").click()
    svg = ARTIFACTS / f"{nb['app']}-export.svg"
    dl.value.save_as(svg)
    assert "<svg" in svg.read_text()
    with page.expect_download(timeout=30_000) as dl:
        lv.locator("[data-testid=wb-export-html]").click()
    html = ARTIFACTS / f"{nb['app']}-export.html"
    dl.value.save_as(html)
    # opens with no kernel: a plain file:// page
    p2 = browser_context.new_page()
    try:
        p2.goto(html.as_uri())
        hm = p2.locator("[data-testid=wb-heatmap][data-role=lens]")
        hm.wait_for(timeout=15_000)
        assert hm.get_attribute("data-rows") == "30"
        p2.screenshot(path=str(ARTIFACTS / f"{nb['app']}-standalone.png"))
    finally:
        p2.close()


def test_dark_theme(nb):
    page = nb["page"]
    page.evaluate(
        "() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})"
    )
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'", timeout=30_000)
    page.wait_for_timeout(800)
    lv = view(page, "lens")
    # redraw the canvas in the new theme (a real user would interact; a click re-renders)
    lv.locator("[data-testid=wb-mode]").select_option("prob")
    wait_status(lv, "done")
    bg = lv.evaluate("el => getComputedStyle(el).backgroundColor")
    rgb = [int(x) for x in bg[bg.index("(") + 1 : bg.index(")")].split(",")[:3]]
    assert sum(rgb) / 3 < 100, bg
    shot(nb, lv, "lens-dark")
    shot(nb, view(page, "patch"), "patch-dark")
    shot(nb, view(page, "attention"), "attention-dark")
    page.evaluate(
        "() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Light'})"
    )


def test_attention_512_tokens_responsive(nb):
    if nb["app"] != "lab":
        pytest.skip("the 512-token view runs once, on the lab server, to keep the suite near 5 minutes")
    page = nb["page"]
    av = view(page, "attention", 1)
    n = av.locator("[data-testid=wb-tokens] [data-testid=wb-token]").count()
    assert n >= 400
    grid = heatmap(av, "heads")
    t0 = time.monotonic()
    click_cell(grid, 5, 1)
    av.locator("[data-testid=wb-pattern-title]").wait_for(
        timeout=120_000
    )  # a wait, not the target: open time is printed
    opened = time.monotonic() - t0
    tok = av.locator("[data-testid=wb-headview] [data-testid=wb-token]").nth(300)
    tok.scroll_into_view_if_needed()
    t1 = time.monotonic()
    tok.hover()
    pattern = av.locator("[data-role=pattern]").first.element_handle()  # this view's own pattern
    page.wait_for_function("(el) => el.getAttribute('data-highlight') === '300'", arg=pattern)
    hover = time.monotonic() - t1
    print(
        f"\n[{nb['app']}] {n} tokens: open head {opened * 1000:.0f} ms, hover highlight {hover * 1000:.0f} ms"
    )
    (ARTIFACTS / "attention-512-timing.json").write_text(
        json.dumps({"tokens": n, "open_ms": opened * 1000, "hover_ms": hover * 1000})
    )
    assert hover < 1.0
    shot(nb, av, "attention-512")


def test_workbench_tabs_share_the_prompt(nb):
    if nb["app"] != "lab":
        pytest.skip("the Workbench runs once, on the lab server, to keep the suite near 5 minutes")
    page = nb["page"]
    tabs = page.locator(".jupyter-widgets .lm-TabBar-tab, .jupyter-widgets .p-TabBar-tab")
    titles = [t.strip() for t in tabs.all_text_contents()]
    assert titles[-3:] == ["Logit lens", "Patching", "Attention"]
    tabs.nth(tabs.count() - 2).click()
    pv = view(page, "patch", 1)
    pv.wait_for(state="visible")
    click_cell(heatmap(pv, "sweep"), *CELL)
    pv.locator("[data-testid=wb-result-label]").filter(has_text=f"L{CELL[0]} pos {CELL[1]}").wait_for(
        timeout=60_000
    )
    wait_status(pv, "done")
    assert (
        pv.locator("[data-testid=wb-prediction]").get_attribute("data-top")
        == expected(nb)[f"resid_pre {CELL[0]},{CELL[1]}"]["top"]
    )
    shot(nb, pv, "workbench-patch-tab")
    # editing the lens prompt recomputes the other tabs
    tabs.nth(tabs.count() - 3).click()
    lv = view(page, "lens", 2)
    lv.locator("[data-testid=wb-prompt]").fill("The Colosseum is located in the city of")
    lv.locator("[data-testid=wb-prompt]").press("Enter")
    tabs.nth(tabs.count() - 1).click()
    av = view(page, "attention", 2)
    av.locator("[data-testid=wb-token]", has_text="osse").first.wait_for(timeout=60_000)
    shot(nb, av, "workbench-attention-tab")
