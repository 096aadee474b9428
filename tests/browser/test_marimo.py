"""marimo: the views in a `marimo run` app through `mo.ui.anywidget(view)`, clicked as a person would.

marimo runs the anywidget ES module itself (no Jupyter widget manager) and renders it inside a shadow root;
this checks the views' styles reach it, a click and a drag go to the kernel, and the view redraws.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from . import _servers
from .conftest import ARTIFACTS

pytestmark = pytest.mark.browser

CLEAN = "The Eiffel Tower is located in the city of"
CORRUPT = "The Colosseum Tower is located in the city of"
CELL = (2, 8)

APP = """
import marimo

app = marimo.App(width="full")


@app.cell
def _():
    import json
    import pathlib

    import marimo as mo
    import torch

    torch.set_num_threads(1)
    import workbench as wb
    from workbench.testing import tiny_model

    model = tiny_model("llama")
    clean, corrupt = {clean!r}, {corrupt!r}
    metric = wb.logit_diff(" Paris", " Rome")
    exp = {{}}
    for l, p, sl, sp in [({row}, {col}, None, None), (1, 8, 1, 3)]:
        v = wb.patch(model, clean, corrupt, metric=metric, site="resid_pre", layer=l, position=p,
                     source_layer=sl, source_position=sp)
        exp[f"{{l}},{{p}},{{sl}},{{sp}}"] = {{"top": v.top_tokens[0], "value": float(v)}}
    pathlib.Path({out!r}).write_text(json.dumps(exp))
    return clean, corrupt, mo, model, wb


@app.cell
def _(clean, corrupt, mo, model, wb):
    pv = wb.PatchView(model, clean, corrupt, target=" Paris", foil=" Rome")
    view = mo.ui.anywidget(pv)
    view
    return


if __name__ == "__main__":
    app.run()
"""


@pytest.fixture
def marimo_app():
    root = Path(tempfile.mkdtemp(prefix="wb-marimo-"))
    out = root / "expected.json"
    (root / "app.py").write_text(
        APP.format(clean=CLEAN, corrupt=CORRUPT, row=CELL[0], col=CELL[1], out=str(out))
    )
    server = _servers.marimo_run(root, "app.py")
    try:
        yield server, out
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def cell_center(hm, row: int, col: int) -> tuple[float, float]:
    box = hm.bounding_box()
    rows, cols = int(hm.get_attribute("data-rows")), int(hm.get_attribute("data-cols"))
    return box["x"] + (col + 0.5) * box["width"] / cols, box["y"] + (row + 0.5) * box["height"] / rows


def test_marimo_view_renders_and_a_click_recomputes(browser_context, marimo_app):
    server, out = marimo_app
    page = browser_context.new_page()
    page.set_viewport_size({"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        t0 = time.monotonic()
        page.goto(f"{server.base}/?access_token={server.token}")
        pv = page.locator("[data-testid=wb-view][data-kind=patch]")  # Playwright's CSS pierces shadow roots
        pv.wait_for(timeout=120_000)
        print(f"\n[marimo] app rendered in {time.monotonic() - t0:.1f} s")
        exp = json.loads(out.read_text())
        # rendered in a shadow root, with the views' own styles there (not the page's defaults)
        assert pv.evaluate("el => el.getRootNode() instanceof ShadowRoot")
        assert pv.evaluate("el => !!el.getRootNode().getElementById('wb-styles')")
        assert pv.evaluate("el => getComputedStyle(el).borderTopStyle") == "solid"
        hm = pv.locator("[data-testid=wb-heatmap][data-role=sweep]")
        assert (hm.get_attribute("data-rows"), hm.get_attribute("data-cols")) == ("3", "9")
        # the clean run's lens arrives by a custom message and binary buffers
        clean_hm = pv.locator("[data-testid=wb-heatmap][data-role=clean]")
        clean_hm.wait_for(timeout=60_000)
        # a click patches in the kernel and the view redraws with the result
        page.mouse.click(*cell_center(hm, *CELL))
        label = pv.locator("[data-testid=wb-result-label]")
        label.filter(has_text=f"L{CELL[0]} pos {CELL[1]}").wait_for(timeout=60_000)
        pv.locator("[data-testid=wb-status][data-state=done]").wait_for(timeout=60_000)
        want = exp[f"{CELL[0]},{CELL[1]},None,None"]
        assert pv.locator("[data-testid=wb-prediction]").get_attribute("data-top") == want["top"]
        value = float(pv.locator("[data-testid=wb-metric]").get_attribute("data-value"))
        assert value == pytest.approx(want["value"], rel=1e-4, abs=1e-4)
        pv.screenshot(path=str(ARTIFACTS / "marimo-patch-clicked.png"))
        # a drag from the clean run onto the map finds its target inside the shadow root
        sx, sy = cell_center(clean_hm, 1, 3)
        dx, dy = cell_center(hm, 1, 8)
        page.mouse.move(sx, sy)
        page.mouse.down()
        page.mouse.move((sx + dx) / 2, (sy + dy) / 2, steps=5)
        page.mouse.move(dx, dy, steps=5)
        page.mouse.up()
        label.filter(has_text="L1 pos 3 → L1 pos 8").wait_for(timeout=60_000)
        pv.locator("[data-testid=wb-status][data-state=done]").wait_for(timeout=60_000)
        value = float(pv.locator("[data-testid=wb-metric]").get_attribute("data-value"))
        assert value == pytest.approx(exp["1,8,1,3"]["value"], rel=1e-4, abs=1e-4)
        # the sweep (progress, then the filled map) runs the same way
        pv.locator("[data-testid=wb-sweep]").click()
        pv.locator("[data-testid=wb-caption]", has_text="normalised effect").wait_for(timeout=60_000)
        pv.locator("[data-testid=wb-status][data-state=done]").wait_for(timeout=60_000)
        pv.screenshot(path=str(ARTIFACTS / "marimo-patch-swept.png"))
        assert not errors, errors
    finally:
        page.close()
