"""Issue 16, SteerView driven in a real JupyterLab on the embedded model: drag the scale slider (the kernel's `scale`
follows), Generate and watch the tokens stream in (the count grows while the run is going), Cancel (the tokens so far
stay, and they are wb.steer's first tokens), Generate again and check that the steered and unsteered texts on the page
equal wb.steer with the same settings; a scale sweep adds one row per scale; light and dark screenshots."""

from __future__ import annotations

import json
import time

import pytest

from .conftest import ARTIFACTS, make_notebook, run_notebook, start_server
from .test_issue10_views import kernel
from .test_views import shot, view, wait_status

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

PROMPT = "I went to the park today and"
CELLS = [
    "import json\nimport workbench as wb\nmodel = wb.load()",
    f"sv = wb.SteerView(model, {PROMPT!r}, positive='The food was delicious', negative='The food was', layer=6,\n"
    "                 scale=0.1, max_new_tokens=96)\nsv",
]

EXPECTED = """
r = wb.steer(model, sv.prompt, vector=('The food was delicious', 'The food was'), layer=sv.layer, scale=sv.scale,
             max_new_tokens={n}, positions=sv.positions)
print(json.dumps({{'text': str(r), 'baseline': r.baseline, 'tokens': r.tokens, 'scale': sv.scale, 'layer': sv.layer}}))
"""


@pytest.fixture(scope="module")
def nb(browser_context):
    server = start_server("lab", make_notebook(CELLS), "issue16.ipynb")
    page = browser_context.new_page()
    try:
        run_notebook(page, server, "issue16.ipynb", 1)
        yield {"app": "lab", "page": page, "server": server}
    finally:
        page.close()
        server.stop()


def _tokens(col) -> list[str]:
    return col.locator("[data-testid=wb-steer-tok]").all_text_contents()


def test_drag_generate_stream_cancel_and_equal_to_steer(nb):
    page = nb["page"]
    sv = view(page, "steer")
    wait_status(sv, "done", timeout=120_000)
    slider = sv.locator("[data-testid=wb-steer-scale]")
    lo, hi = float(slider.get_attribute("min")), float(slider.get_attribute("max"))
    assert lo < 0 < hi
    shot(nb, sv, "issue16-steer-initial")

    # drag the scale slider's thumb from 0.1 to about 55% of the track (scale ~0.5: a push of ~0.4x)
    slider.scroll_into_view_if_needed()
    box = slider.bounding_box()
    frac0 = (0.1 - lo) / (hi - lo)
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + frac0 * box["width"], y)
    page.mouse.down()
    page.mouse.move(box["x"] + 0.55 * box["width"], y, steps=12)
    page.mouse.up()
    shown = float(sv.locator("[data-testid=wb-steer-scale-value]").input_value())
    assert shown > 0.3, shown
    assert "× the residual stream" in sv.locator("[data-testid=wb-steer-push]").text_content()
    deadline = time.monotonic() + 10
    while abs(float(kernel(page, "print(sv.scale)")) - float(slider.input_value())) > 1e-9:
        assert time.monotonic() < deadline, "the kernel's scale did not follow the slider"
        time.sleep(0.2)

    # Generate: tokens stream in while the run goes on
    sv.locator("[data-testid=wb-steer-generate]").click()
    steered = sv.locator("[data-testid=wb-steer-steered]")
    unsteered = sv.locator("[data-testid=wb-steer-unsteered]")
    steered.locator("[data-testid=wb-steer-tok]").nth(1).wait_for(timeout=120_000)
    n1 = len(_tokens(steered))
    assert sv.locator("[data-testid=wb-status]").get_attribute("data-state") == "running"
    page.wait_for_function(
        f"() => document.querySelectorAll('[data-kind=steer] [data-testid=wb-steer-steered] [data-testid=wb-steer-tok]').length > {n1 + 2}",
        timeout=120_000,
    )
    assert len(_tokens(unsteered)) >= n1 + 2, "the unsteered column streams beside the steered one"
    shot(nb, sv, "issue16-steer-streaming")

    sv.locator("[data-testid=wb-cancel]").click()
    sv.locator("[data-testid=wb-status][data-state=idle]").wait_for(timeout=60_000)
    page.wait_for_function(
        "() => document.querySelector('[data-kind=steer]').getAttribute('data-run-state') === 'cancelled'"
    )
    partial = _tokens(steered)
    assert 2 < len(partial) < 96, len(partial)
    assert "cancelled after" in sv.locator("[data-testid=wb-steer-note]").text_content()
    full = json.loads(kernel(page, EXPECTED.format(n=96)))
    assert "".join(partial) == full["text"][: len("".join(partial))], (
        "the tokens before the cancel are wb.steer's"
    )

    # Generate again with 20 tokens: the page shows wb.steer's texts
    tokens = sv.locator("[data-testid=wb-steer-tokens]")
    tokens.fill("20")
    tokens.press("Tab")
    sv.locator("[data-testid=wb-steer-generate]").click()
    page.wait_for_function(
        "() => document.querySelector('[data-kind=steer]').getAttribute('data-run-state') === 'done'",
        timeout=120_000,
    )
    wait_status(sv, "done", timeout=60_000)
    want = json.loads(kernel(page, EXPECTED.format(n=20)))
    assert abs(want["scale"] - shown) < 0.05
    assert "".join(_tokens(steered)) == want["text"]
    assert "".join(_tokens(unsteered)) == want["baseline"]
    assert want["text"] != want["baseline"], (
        "this scale must change the text, or the comparison shows nothing"
    )
    at = steered.get_attribute("data-diverges-at")
    assert (
        at
        and steered.locator(f"[data-testid=wb-steer-tok][data-i='{at}']").get_attribute("data-state")
        == "diverge"
    )
    assert sv.locator("[data-testid=wb-history-entry]").count() >= 1
    shot(nb, sv, "issue16-steer-done")
    with page.expect_download() as dl:
        sv.locator("[data-testid=wb-export-png]").click()
    png = ARTIFACTS / "lab-issue16-steer-export.png"
    dl.value.save_as(str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_rows_and_dark_theme(nb):
    page = nb["page"]
    sv = view(page, "steer")
    sweep = sv.locator("[data-testid=wb-steer-sweep]")
    sweep.fill("0.2, 1.2")
    sweep.press("Enter")  # applies the sweep and generates
    page.wait_for_function(
        "() => document.querySelectorAll('[data-kind=steer] [data-testid=wb-steer-sweep-row]').length === 2"
        " && document.querySelector('[data-kind=steer]').getAttribute('data-run-state') === 'done'",
        timeout=180_000,
    )
    wait_status(sv, "done", timeout=60_000)
    out = json.loads(
        kernel(
            page,
            "sw = wb.steer_sweep(model, sv.prompt, vector=('The food was delicious', 'The food was'), layer=sv.layer,"
            " scales=[sv.scale, 0.2, 1.2], max_new_tokens=sv.max_new_tokens)\nprint(json.dumps(sw.texts))",
        )
    )
    rows = sv.locator("[data-testid=wb-steer-sweep-row]")
    for i in range(2):
        assert "".join(_tokens(rows.nth(i))) == out[i + 1]
    assert "".join(_tokens(sv.locator("[data-testid=wb-steer-steered]"))) == out[0]
    shot(nb, sv, "issue16-steer-sweep")
    sv.locator("[data-testid=wb-steer-sweep]").fill("1, x")
    sv.locator("[data-testid=wb-steer-generate]").click()
    err = sv.locator("[data-testid=wb-steer-input-error]")
    err.wait_for(timeout=5_000)
    assert "not a number" in err.text_content()
    page.evaluate(
        "() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})"
    )
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'", timeout=30_000)
    page.wait_for_timeout(500)
    shot(nb, sv, "issue16-steer-dark")
    page.evaluate(
        "() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Light'})"
    )
