"""Issue 10, views: stale errors, stuck lens, late validation, hidden spaces, empty drag grid, unreadable text,
lost sweeps, history that looks alike, exports with no answer and the anywidget deprecation warning, each clicked
in a real JupyterLab on the embedded model."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import make_notebook, run_notebook, start_server
from .test_views import cell_center, click_cell, heatmap, shot, view, wait_status

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

CLEAN = "The Eiffel Tower is located in the city of"
CORRUPT = "The Colosseum is located in the city of"
SHORT = "The Colosseum is in"
LONG = " ".join(["The cat sat on the mat and the dog sat on the log."] * 5)

CELLS = [
    "import workbench as wb\nfrom workbench.widgets import AttentionView, LensView, PatchView\nmodel = wb.load()",
    f'pv = PatchView(model, {CLEAN!r}, {CORRUPT!r}, target=" Paris", foil=" Rome")\npv',
    f"lv = LensView(model, {CLEAN!r})\nlv",
    'av = AttentionView(model, "When Mary and John went to the store, John gave a drink to")\nav',
    f"long = LensView(model, {LONG!r})\nlong",
]


@pytest.fixture(scope="module")
def nb(browser_context):
    server = start_server("lab", make_notebook(CELLS), "issue10.ipynb")
    page = browser_context.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text))
    try:
        run_notebook(page, server, "issue10.ipynb", 4)
        yield {"app": "lab", "page": page, "server": server, "console": console}
    finally:
        page.close()
        server.stop()


def kernel(page, code: str) -> str:
    """Run code in the notebook's kernel (as a later cell would) and return its stdout."""
    return page.evaluate(
        """async (code) => {
          const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
          let out = '';
          const f = k.requestExecute({ code });
          f.onIOPub = (msg) => { if (msg.header.msg_type === 'stream') out += msg.content.text;
                                 if (msg.header.msg_type === 'error') out += 'ERROR ' + msg.content.ename + ': ' + msg.content.evalue; };
          await f.done;
          return out;
        }""",
        code,
    )


def type_into(locator, text: str) -> None:
    """Replace the field's text by typing it key by key, with no Enter (the view must react while typing)."""
    locator.click()
    locator.press("Control+a")
    locator.press("Backspace")
    locator.press_sequentially(text, delay=15)


def test_kernel_runs_this_checkout(nb):
    out = kernel(nb["page"], "import workbench, pathlib; print(pathlib.Path(workbench.__file__).resolve())")
    assert str(Path(__file__).resolve().parents[2]) in out, out


def test_no_anywidget_deprecation_warning(nb):
    warnings = [m for m in nb["console"] if "Deprecation" in m and "anywidget" in m]
    assert warnings == [], warnings[0][:300]


def test_lens_refuses_a_multi_token_pin_and_stays_usable(nb):
    page = nb["page"]
    lv = view(page, "lens")
    chips = lv.locator("[data-testid=wb-pinned]")
    before = chips.count()
    pin = lv.locator("[data-testid=wb-pin-input]")
    pin.fill(" Eiffel")  # two tokens for this tokenizer
    pin.press("Enter")
    err = lv.locator("[data-testid=wb-error]")
    err.wait_for(state="visible", timeout=30_000)
    assert "Cannot pin ' Eiffel'" in err.text_content() and "not added" in err.text_content()
    page.wait_for_timeout(300)
    assert chips.count() == before  # refused and dropped, not stuck in the list without a chip
    shot(nb, lv, "issue10-lens-bad-pin")
    # the next action works and clears the error
    prompt = lv.locator("[data-testid=wb-prompt]")
    prompt.fill(CORRUPT)
    prompt.press("Enter")
    lv.locator("[data-testid=wb-token]", has_text="osse").first.wait_for(timeout=60_000)
    wait_status(lv, "done")
    assert err.is_hidden()
    # a prompt that fails never leaves the box over another prompt's heatmap
    prompt.fill("   ")
    prompt.press("Enter")
    err.filter(has_text="back to the prompt shown").wait_for(timeout=60_000)
    assert prompt.input_value() == CORRUPT
    assert lv.locator("[data-testid=wb-token]", has_text="osse").count() >= 1
    shot(nb, lv, "issue10-lens-bad-prompt")


def test_attention_error_banner_goes_after_a_good_click(nb):
    page = nb["page"]
    av = view(page, "attention")
    kernel(page, "av.open_head(99, 0)")
    err = av.locator("[data-testid=wb-error]")
    err.wait_for(state="visible", timeout=30_000)
    assert "SiteError" in err.text_content()
    click_cell(heatmap(av, "heads"), 3, 2)
    av.locator("[data-testid=wb-pattern-title]").wait_for(timeout=30_000)
    err.wait_for(state="hidden", timeout=30_000)
    wait_status(av, "done")


def test_patch_view_validates_while_typing_and_clears(nb):
    page = nb["page"]
    pv = view(page, "patch")
    click_cell(heatmap(pv, "sweep"), 20, 9)
    wait_status(pv, "done")
    pv.locator("[data-testid=wb-copy-code]").click()
    code = pv.locator("[data-testid=wb-code]")
    assert "trace" in code.text_content() or "nnsight" in code.text_content()
    corrupt = pv.locator("[data-testid=wb-corrupt]")
    type_into(corrupt, SHORT)  # no Enter, no Sweep
    err = pv.locator("[data-testid=wb-error]")
    err.filter(has_text="same token length").wait_for(timeout=10_000)
    assert pv.locator("[data-testid=wb-status]").text_content() == "error"
    assert corrupt.input_value() == SHORT  # the field kept what was typed (and its focus)
    assert "no intervention for the current inputs" in code.text_content()  # not the old prompts' code
    shot(nb, pv, "issue10-patch-typing-error")
    type_into(corrupt, CORRUPT)
    err.wait_for(state="hidden", timeout=10_000)
    assert pv.locator("[data-testid=wb-status]").text_content() != "error"
    pv.locator("[data-testid=wb-copy-code]").click()  # hide the code box again


def test_target_shows_the_leading_space_and_warns(nb):
    page = nb["page"]
    pv = view(page, "patch")
    target = pv.locator("[data-testid=wb-target]")
    type_into(target, "Paris")
    warn = pv.locator("[data-testid=wb-warning]")
    warn.filter(has_text="no leading space").wait_for(timeout=10_000)
    assert pv.locator("[data-testid=wb-target-tokens] [data-testid=wb-word-token]").all_text_contents() == [
        "Paris"
    ]
    shot(nb, pv.locator(".wb-controls"), "issue10-target-no-space")
    type_into(target, " Paris")
    pv.locator("[data-testid=wb-target-tokens] [data-testid=wb-word-token]", has_text="\u2423Paris").wait_for(
        timeout=10_000
    )
    warn.wait_for(state="hidden", timeout=10_000)
    shot(nb, pv.locator(".wb-controls"), "issue10-target-space")
    wait_status(pv, "idle")


def test_clean_grid_shows_the_clean_lens_and_patched_lens_is_readable(nb):
    page = nb["page"]
    pv = view(page, "patch")
    src = heatmap(pv, "clean")
    page.wait_for_function(
        "() => document.querySelector('[data-kind=patch] [data-role=clean]').getAttribute('data-lens') === '1'",
        timeout=60_000,
    )
    assert int(src.get_attribute("data-label-px")) >= 10  # top-1 tokens written in the cells
    x, y = cell_center(src, 29, 9)
    page.mouse.move(x, y)
    tip = pv.locator("[data-testid=wb-tooltip]:visible")
    tip.wait_for(state="visible")
    assert "clean run" in tip.text_content() and "Paris" in tip.text_content()
    shot(nb, src, "issue10-clean-grid")
    click_cell(heatmap(pv, "sweep"), 24, 9)
    pv.locator("[data-testid=wb-result-label]").filter(has_text="L24 pos 9").wait_for(timeout=60_000)
    wait_status(pv, "done")
    lens = heatmap(pv, "patched-lens")
    assert int(lens.get_attribute("data-label-px")) >= 11
    shot(nb, pv.locator("[data-testid=wb-result]"), "issue10-patched-lens")


def test_long_prompt_lens_keeps_cell_text(nb):
    page = nb["page"]
    lv = view(page, "lens", 1)
    hm = heatmap(lv, "lens")
    assert int(hm.get_attribute("data-cols")) >= 55
    assert int(hm.get_attribute("data-label-px")) >= 11
    shot(nb, lv, "issue10-lens-long")


def test_switching_modes_keeps_the_sweep_and_history_shows_what_differs(nb):
    page = nb["page"]
    pv = view(page, "patch")
    pv.locator("[data-testid=wb-sweep]").click()
    wait_status(pv, "running")
    wait_status(pv, "done", timeout=180_000)
    caption = pv.locator("[data-testid=wb-caption]")
    assert "normalised effect" in caption.text_content()
    pv.locator("[data-testid=wb-mode]").select_option("ablate")
    page.wait_for_function(
        "() => document.querySelector('[data-kind=patch] [data-testid=wb-caption]').textContent.includes('ablate')"
    )
    pv.locator("[data-testid=wb-mode]").select_option("patch")
    page.wait_for_function(
        "() => document.querySelector('[data-kind=patch] [data-testid=wb-caption]').textContent.includes('normalised effect')",
        timeout=5_000,
    )
    # two runs that differ only in the foil: their history entries say so
    foil = pv.locator("[data-testid=wb-foil]")
    type_into(foil, " London")
    foil.press("Enter")
    pv.locator("[data-testid=wb-foil-tokens] [data-testid=wb-word-token]", has_text="London").wait_for()
    click_cell(heatmap(pv, "sweep"), 24, 9)
    pv.locator("[data-testid=wb-history-args]", has_text="foil=␣London").wait_for(timeout=60_000)
    wait_status(pv, "done")
    texts = pv.locator("[data-testid=wb-history-args]").all_text_contents()
    assert "foil=␣Rome" in texts[0] and "foil=␣London" in texts[-1], texts
    shot(nb, pv.locator("[data-testid=wb-history]"), "issue10-history")


def test_save_png_from_a_later_cell_writes_the_file(nb):
    page = nb["page"]
    out = kernel(page, "p = lv.save_png('lens.png'); q = lv.save_svg('lens.svg'); print(p, q)")
    assert "lens.png" in out and "ERROR" not in out, out
    root = nb["server"].root
    page.wait_for_timeout(2000)  # the kernel reads the browser's answer after the cell
    assert (root / "lens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = (root / "lens.svg").read_text()
    assert "<svg" in svg and "Colosseum" in svg  # titled with the prompt the lens shows
    fresh = kernel(
        page,
        f"try:\n    LensView(model, {CLEAN!r}).save_png('x.png')\nexcept wb.WorkbenchError as e:\n    print(type(e).__name__, e)",
    )
    assert "ExportError" in fresh and "no front end" in fresh
