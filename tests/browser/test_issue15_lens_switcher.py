"""Issue 15, LensView's lens switcher clicked in a real JupyterLab (Debian Chromium via Playwright) on a tiny
randomly initialised Llama (3 layers, a real tokenizer): switch to patchscope, edit its target prompt, press
generate and see the generated tokens as a strip coloured by commit layer under the extended grid."""

from __future__ import annotations

import json
import re

import pytest

from .conftest import make_notebook, run_notebook, start_server
from .test_issue10_views import kernel, type_into
from .test_views import cell_center, heatmap, shot, view, wait_status

pytestmark = [pytest.mark.browser]

PROMPT = "When Mary and John went to the store, John gave a drink to"
CELLS = [
    "import json\nimport workbench as wb\nimport workbench.testing\nmodel = workbench.testing.tiny_model('llama')",
    f"lv = wb.LensView(model, {PROMPT!r})\nlv",
]


@pytest.fixture(scope="module")
def nb(browser_context):
    server = start_server("lab", make_notebook(CELLS), "issue15.ipynb")
    page = browser_context.new_page()
    try:
        run_notebook(page, server, "issue15.ipynb", 1)
        yield {"app": "lab", "page": page, "server": server}
    finally:
        page.close()
        server.stop()


def test_patchscope_target_prompt_and_generate_strip(nb):
    page = nb["page"]
    lv = view(page, "lens")
    wait_status(lv, "done")
    tuned = lv.locator("[data-testid=wb-lens] option[value=tuned]")
    assert tuned.is_disabled() and "wb.tuned_lens(model)" in tuned.get_attribute("title")

    # switch to patchscope: the grid is the patchscope's, with its target prompt box
    lv.locator("[data-testid=wb-lens]").select_option("patchscope")
    page.wait_for_function(
        "() => document.querySelector('[data-kind=lens] [data-testid=wb-title]').textContent === 'Patchscope'",
        timeout=60_000,
    )
    wait_status(lv, "done")
    box = lv.locator("[data-testid=wb-target-prompt]")
    assert box.is_visible() and box.input_value().startswith("cat -> cat\n1135 -> 1135")
    shot(nb, lv, "issue15-patchscope")

    # edit the target prompt (Shift+Enter breaks the line, Enter runs)
    box.click()
    box.press("Control+a")
    box.press("Backspace")
    box.press_sequentially("x -> x")
    box.press("Shift+Enter")
    box.press_sequentially("y -> y")
    box.press("Shift+Enter")
    box.press_sequentially("?")
    box.press("Enter")
    page.wait_for_function(
        "() => document.querySelector('[data-kind=lens] [data-testid=wb-status]').dataset.state === 'done'",
        timeout=60_000,
    )
    page.wait_for_timeout(300)
    wait_status(lv, "done")
    got = json.loads(
        kernel(
            page,
            "ps = wb.patchscope(model, lv.prompt, target_prompt='x -> x\\ny -> y\\n?', progress=False)\n"
            "print(json.dumps({'shown': lv.data['target_prompt'], 'lens': lv.data['lens'], "
            "'same': bool((ps.top_ids == lv.last_result.top_ids).all()), 'top': ps.top_tokens[1][2][0]}))",
        )
    )
    assert got == {"shown": "x -> x\ny -> y\n?", "lens": "patchscope", "same": True, "top": got["top"]}, got
    # the hover reads the patched run's top-k
    x, y = cell_center(heatmap(lv, "lens"), 1, 2)
    page.mouse.move(x, y - 1)
    page.mouse.move(x, y)
    tip = lv.locator("[data-testid=wb-tooltip]:visible")
    tip.wait_for(timeout=5_000)
    assert "patched into the target prompt" in tip.text_content()
    shot(nb, lv, "issue15-patchscope-target-hover")
    page.mouse.move(0, 0)

    # a bad target prompt: the error shows, the grid and the box stay on what is shown
    type_into(box, " ")
    box.press("Enter")
    lv.locator("[data-testid=wb-status][data-state=error]").wait_for(timeout=60_000)
    assert "target_prompt" in lv.locator("[data-testid=wb-error]").text_content()
    assert box.input_value() == "x -> x\ny -> y\n?"

    # generate: the strip of generated tokens coloured by commit layer, under the grid extended over them
    lv.locator("[data-testid=wb-max-new]").fill("6")
    lv.locator("[data-testid=wb-generate]").click()
    lv.locator("[data-testid=wb-gen-token]").first.wait_for(timeout=60_000)
    wait_status(lv, "done")
    exp = json.loads(
        kernel(
            page,
            "g = lv.generation_result\nprint(json.dumps({'n': len(g.tokens), 'commit': g.commit_layer.tolist(), "
            "'cols': len(g.lens.tokens), 'L': model.n_layers}))",
        )
    )
    tokens = lv.locator("[data-testid=wb-gen-token]")
    assert tokens.count() == exp["n"] == 6
    assert [int(t.get_attribute("data-commit")) for t in tokens.all()] == exp["commit"]
    assert heatmap(lv, "lens").get_attribute("data-cols") == str(exp["cols"])
    assert lv.locator("[data-testid=wb-title]").text_content() == "Logit lens"
    # each committed token has its layer's colour (viridis: L0 purple, last layer yellow)
    colours = [t.evaluate("e => getComputedStyle(e).backgroundColor") for t in tokens.all()]
    for c, layer in zip(colours, exp["commit"], strict=True):
        if layer >= 0:
            assert re.match(r"rgb\(\d+, \d+, \d+\)", c), c
    assert lv.locator("[data-testid=wb-gen-legend]").text_content().startswith("commit layer: early L0")
    shot(nb, lv, "issue15-generated-strip")
    # PNG export still works with the strip
    with page.expect_download() as dl:
        lv.locator("[data-testid=wb-export-png]").click()
    assert dl.value.path().read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = kernel(page, "print(lv.to_code() == lv.generation_result.to_code(), lv.status)")
    assert out.split() == ["True", "done"], out
