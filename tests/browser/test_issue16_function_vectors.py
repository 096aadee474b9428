"""Issue 16, FunctionVectorView clicked in a real JupyterLab (Debian Chromium via Playwright) on the embedded model
(antonyms, a few short prompts to keep it quick): the heatmap computes with a progress bar and Cancel, Compute runs it
again; the top heads are outlined; clicking a head shows its decoded mean output and where it looks on an in-context
prompt; shift-click adds a head and the head's button takes it out (the vector and its accuracy curve follow);
a prompt tried in the box gives the text `wb.steer` gives with the same settings; dark theme; PNG export."""

from __future__ import annotations

import json

import pytest

from .conftest import ARTIFACTS, make_notebook, start_server
from .test_issue10_views import kernel
from .test_views import click_cell, heatmap, shot, view, wait_status

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

TOP_N = 6
CELLS = [
    "import json\nimport workbench as wb\nmodel = wb.load()\ntask = wb.datasets.task('antonyms')",
    f"fv = wb.FunctionVectorView(model, task, n_shots=4, n_prompts=3, top_n={TOP_N}, eval_prompts=12)\nfv",
]
LONG = 600_000


@pytest.fixture(scope="module")
def nb(browser_context):
    server = start_server("lab", make_notebook(CELLS), "issue16.ipynb")
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(server.url("issue16.ipynb"))
        page.wait_for_function(
            "() => window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=60_000
        )
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        page.wait_for_timeout(1500)  # the kernel connects
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        page.wait_for_selector("[data-testid=wb-view][data-kind=function_vector]", timeout=240_000)
        yield {"app": "lab", "page": page, "server": server, "errors": errors}
    finally:
        page.close()
        server.stop()


def _state(page) -> dict:
    return json.loads(
        kernel(
            page,
            "print(json.dumps({'heads': fv.heads, 'eval_heads': fv.evaluation.get('heads'), 'stale': fv.stale,"
            " 'status': fv.status, 'top': [list(h) for h, _ in fv.effects_result.top_heads(30)]}))",
        )
    )


def _outlined(hm) -> list[list[int]]:
    text = hm.get_attribute("data-outlined") or ""
    return [[int(x) for x in part.split(":")[1].split(",")] for part in text.split()]


def test_progress_cancel_and_compute_again(nb):
    page = nb["page"]
    fv = view(page, "function_vector")
    wait_status(fv, "running", timeout=120_000)
    assert fv.locator("[data-testid=wb-progress]").is_visible()
    page.wait_for_function(
        "() => document.querySelector('[data-kind=function_vector] [data-testid=wb-status]').textContent.includes('head effects')",
        timeout=120_000,
    )
    shot(nb, fv, "issue16-fv-computing")
    fv.locator("[data-testid=wb-cancel]").click()
    wait_status(fv, "idle", timeout=120_000)
    assert fv.locator("[data-testid=wb-status]").text_content() == "idle (cancelled)"
    assert fv.locator("[data-testid=wb-error]").is_hidden()
    assert heatmap(fv, "fv-heads").get_attribute("data-rows") == "0"  # nothing half-drawn
    fv.locator("[data-testid=wb-fv-recompute]").click()
    wait_status(fv, "running", timeout=60_000)
    wait_status(fv, "done", timeout=LONG)


def test_heatmap_click_a_head_and_its_attention(nb):
    page = nb["page"]
    fv = view(page, "function_vector")
    wait_status(fv, "done", timeout=LONG)
    hm = heatmap(fv, "fv-heads")
    assert (hm.get_attribute("data-rows"), hm.get_attribute("data-cols")) == ("30", "9")
    st = _state(page)
    assert st["stale"] == [] and st["heads"] == st["top"][:TOP_N] == st["eval_heads"]
    assert _outlined(hm) == st["heads"]
    title = fv.locator("[data-testid=wb-fv-chart-title]").text_content()
    assert "baseline" in title and "best layer" in title, title
    assert fv.locator("[data-testid=wb-fv-head-chip]").count() == TOP_N
    shot(nb, fv, "issue16-fv-computed")

    layer, head = st["top"][0]
    click_cell(hm, layer, head)
    fv.locator("[data-testid=wb-fv-attn-strip]").wait_for(timeout=LONG)
    wait_status(fv, "done", timeout=LONG)
    assert fv.locator("[data-testid=wb-fv-head-title]").text_content() == f"Layer {layer}, head {head}"
    assert "rank 1 of 270" in fv.locator("[data-testid=wb-fv-head-effect]").text_content()
    exp = json.loads(
        kernel(
            page,
            f"from workbench.figures.theme import visible_token as vt\n"
            f"d = fv.effects_result.decode_head({layer}, {head})\n"
            f"a = wb.attention(model, fv.effects_result.dataset.clean[0])\n"
            f"print(json.dumps({{'tokens': [vt(t) for t, _ in d], 'n': len(a.tokens),"
            f" 'argmax': int(a.patterns[{layer}, {head}, -1].argmax())}}))",
        )
    )
    shown = fv.locator("[data-testid=wb-fv-head-token] code").all_text_contents()
    assert shown == exp["tokens"], (shown, exp)
    strip = fv.locator("[data-testid=wb-fv-attn-strip] [data-testid=wb-token]")
    assert strip.count() == exp["n"]
    weights = [float(w) for w in strip.evaluate_all("els => els.map(e => e.getAttribute('data-weight'))")]
    assert weights.index(max(weights)) == exp["argmax"]
    shot(nb, fv, "issue16-fv-head")


def test_toggle_heads_rebuilds_the_vector_and_its_curve(nb):
    page = nb["page"]
    fv = view(page, "function_vector")
    wait_status(fv, "done", timeout=LONG)
    st = _state(page)
    hm = heatmap(fv, "fv-heads")
    extra = st["top"][TOP_N]  # the next head in rank: shift-click adds it
    box = hm.bounding_box()
    hm.click(
        position={"x": (extra[1] + 0.5) * box["width"] / 9, "y": (extra[0] + 0.5) * box["height"] / 30},
        modifiers=["Shift"],
    )
    page.wait_for_function(
        f"() => document.querySelectorAll('[data-kind=function_vector] [data-testid=wb-fv-head-chip]').length === {TOP_N + 1}",
        timeout=LONG,
    )
    wait_status(fv, "done", timeout=LONG)
    st = _state(page)
    assert st["heads"] == [*st["top"][:TOP_N], extra] == st["eval_heads"] and st["stale"] == []
    assert _outlined(hm) == st["heads"]
    assert fv.locator("[data-testid=wb-fv-chart-title]").get_attribute("data-stale") == "false"
    shot(nb, fv, "issue16-fv-toggled-in")
    # the opened head (the top one) out, with its button
    fv.locator("[data-testid=wb-fv-toggle]").click()
    page.wait_for_function(
        f"() => document.querySelectorAll('[data-kind=function_vector] [data-testid=wb-fv-head-chip]').length === {TOP_N}",
        timeout=LONG,
    )
    wait_status(fv, "done", timeout=LONG)
    st = _state(page)
    assert st["heads"] == [*st["top"][1:TOP_N], extra] == st["eval_heads"] and st["stale"] == []
    assert fv.locator("[data-testid=wb-fv-toggle]").text_content() == "Add to the vector"


def test_try_the_vector_on_a_prompt(nb):
    page = nb["page"]
    fv = view(page, "function_vector")
    wait_status(fv, "done", timeout=LONG)
    box = fv.locator("[data-testid=wb-fv-prompt]")
    box.click()
    box.press("Control+a")
    box.press("Backspace")
    box.press_sequentially("Q: <img src=x onerror=alert(1)> tall")
    box.press("Shift+Enter")
    box.press_sequentially("A:")
    layer = fv.locator("[data-testid=wb-fv-layer]")
    layer.fill("9")
    layer.dispatch_event("change")
    fv.locator("[data-testid=wb-fv-tokens]").fill("6")
    fv.locator("[data-testid=wb-fv-generate]").click()
    fv.locator("[data-testid=wb-fv-steered] [data-testid=wb-fv-piece]").first.wait_for(timeout=LONG)
    wait_status(fv, "done", timeout=LONG)
    out = json.loads(
        kernel(
            page,
            "t = fv.trial\n"
            "kw = {'positions': t['positions']} if 'last' in fv.position_modes else {}\n"
            "r = wb.steer(model, t['prompt'], vector=fv.function_vector.vector, layer=t['layer'] + 1,"
            " scale=t['scale'], max_new_tokens=t['max_new_tokens'], **kw)\n"
            "print(json.dumps({'prompt': t['prompt'], 'layer': t['layer'], 'n': t['max_new_tokens'],"
            " 'text': t['text'], 'base': t['baseline'], 'steer': str(r), 'steer_base': r.baseline}))",
        )
    )
    assert out["prompt"] == "Q: <img src=x onerror=alert(1)> tall\nA:" and out["layer"] == 9 and out["n"] == 6
    assert out["text"] == out["steer"] and out["base"] == out["steer_base"], out
    pieces = "".join(fv.locator("[data-testid=wb-fv-steered] [data-testid=wb-fv-piece]").all_text_contents())
    assert pieces.replace("␣", " ").replace("↵", "\n") == out["text"]
    assert fv.locator("img").count() == 0 and not nb["errors"]
    assert "after block 9" in fv.locator("[data-testid=wb-fv-trial-title]").text_content()
    shot(nb, fv, "issue16-fv-tried")
    with page.expect_download() as dl:
        fv.locator("[data-testid=wb-export-png]").click()
    png = ARTIFACTS / "lab-issue16-fv-export.png"
    dl.value.save_as(str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dark_theme(nb):
    page = nb["page"]
    fv = view(page, "function_vector")
    page.evaluate(
        "() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})"
    )
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'", timeout=30_000)
    page.wait_for_timeout(1500)
    st = _state(page)
    click_cell(heatmap(fv, "fv-heads"), *st["heads"][0])  # redraw in the new theme
    wait_status(fv, "done", timeout=LONG)
    bg = fv.evaluate("el => getComputedStyle(el).backgroundColor")
    rgb = [int(x) for x in bg[bg.index("(") + 1 : bg.index(")")].split(",")[:3]]
    assert sum(rgb) / 3 < 100, bg
    shot(nb, fv, "issue16-fv-dark")
    page.evaluate(
        "() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Light'})"
    )
