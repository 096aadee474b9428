"""Voila: a notebook served as a page (no code cells) renders its views, and a click recomputes in the kernel.

One notebook that mirrors the quickstart on a tiny model (fast), and one run of the real quickstart on the
embedded model (marked `embedded`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from . import _servers
from .conftest import ARTIFACTS, make_notebook

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
CLEAN = "The Eiffel Tower is located in the city of"
CORRUPT = "The Colosseum Tower is located in the city of"  # 9 tokens, like CLEAN, for the tiny tokenizer
CELL = (2, 8)  # the last layer, last position of the tiny llama


def mirror_of_quickstart(out: Path) -> dict:
    """The quickstart's steps (lens, patch view with a click from Python, dock) on a tiny model."""
    setup = f"""
import json, pathlib
import torch
torch.set_num_threads(1)
import workbench as wb
from workbench.testing import tiny_model
model = tiny_model("llama")
clean, corrupt = {CLEAN!r}, {CORRUPT!r}
metric = wb.logit_diff(" Paris", " Rome")
exp = {{}}
for l, p in [(1, 8), {CELL}]:
    v = wb.patch(model, clean, corrupt, metric=metric, site="resid_pre", layer=l, position=p)
    exp[f"{{l}},{{p}}"] = {{"top": v.top_tokens[0], "value": float(v)}}
_ = pathlib.Path({str(out)!r}).write_text(json.dumps(exp))
"""
    return make_notebook(
        [
            setup,
            "wb.LensView(model, clean)",
            'view = wb.PatchView(model, clean, corrupt, target=" Paris", foil=" Rome")\nview',
            "view.click(1, 8).wait()\nprint(float(view.last_result))",
            'lv = wb.LensView(model, "The cat sat on the mat")\n_ = lv.dock(title="docked lens")',
        ]
    )


@pytest.fixture
def page(browser_context):
    p = browser_context.new_page()
    p.set_viewport_size({"width": 1400, "height": 1000})
    yield p
    p.close()


def click_cell(hm, row: int, col: int) -> None:
    """Click the centre of heatmap cell (row, col) with the mouse, as a person would."""
    hm.scroll_into_view_if_needed()
    box = hm.bounding_box()
    rows, cols = int(hm.get_attribute("data-rows")), int(hm.get_attribute("data-cols"))
    hm.click(position={"x": (col + 0.5) * box["width"] / cols, "y": (row + 0.5) * box["height"] / rows})


def open_voila(page, server, n_views: int, timeout_ms: int) -> float:
    t0 = time.monotonic()
    page.goto(f"{server.base}/?token={server.token}", timeout=timeout_ms)
    page.wait_for_function(
        f"() => document.querySelectorAll('[data-testid=wb-view]').length >= {n_views}", timeout=timeout_ms
    )
    return time.monotonic() - t0


def test_voila_renders_views_and_a_click_recomputes(page):
    root = Path(tempfile.mkdtemp(prefix="wb-voila-"))
    out = root / "expected.json"
    (root / "quick.ipynb").write_text(json.dumps(mirror_of_quickstart(out)))
    server = _servers.voila(root, "quick.ipynb")
    try:
        took = open_voila(page, server, 3, 180_000)
        print(f"\n[voila] page with 3 views in {took:.1f} s")
        exp = json.loads(out.read_text())
        assert page.locator(".jp-Cell-inputWrapper, .jp-InputArea").count() == 0, "Voila shows no code"
        pv = page.locator("[data-testid=wb-view][data-kind=patch]")
        label = pv.locator("[data-testid=wb-result-label]")
        # the click made from Python before the page was sent is drawn
        label.filter(has_text="L1 pos 8").wait_for(timeout=30_000)
        before = pv.locator("[data-testid=wb-metric]").get_attribute("data-value")
        assert float(before) == pytest.approx(exp["1,8"]["value"], rel=1e-4, abs=1e-4)
        # a person clicks another cell: the kernel patches there and the view redraws with its result
        hm = pv.locator("[data-testid=wb-heatmap][data-role=sweep]")
        click_cell(hm, *CELL)
        label.filter(has_text=f"L{CELL[0]} pos {CELL[1]}").wait_for(timeout=60_000)
        pv.locator("[data-testid=wb-status][data-state=done]").wait_for(timeout=60_000)
        want = exp[f"{CELL[0]},{CELL[1]}"]
        assert pv.locator("[data-testid=wb-prediction]").get_attribute("data-top") == want["top"]
        value = float(pv.locator("[data-testid=wb-metric]").get_attribute("data-value"))
        assert value == pytest.approx(want["value"], rel=1e-4, abs=1e-4)
        assert value != float(before)
        pv.screenshot(path=str(ARTIFACTS / "voila-patch-clicked.png"))
        # view.dock() in Voila: shown inline, with a note saying why
        assert page.get_by_text("Voila pages have no side panel").count() == 1
        assert page.locator("[data-testid=wb-view][data-kind=lens]").count() == 2
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.embedded
def test_voila_serves_the_quickstart(page):
    """The real notebooks/01_quickstart.ipynb on the embedded model: every view renders, a click recomputes."""
    root = Path(tempfile.mkdtemp(prefix="wb-voila-qs-"))
    shutil.copy(REPO / "notebooks" / "01_quickstart.ipynb", root / "01_quickstart.ipynb")
    server = _servers.voila(root, "01_quickstart.ipynb")
    try:
        # lens, patch, attention, and the Workbench's three tabs
        took = open_voila(page, server, 6, 300_000)
        print(f"\n[voila] quickstart (embedded model) executed and rendered in {took:.1f} s")
        (ARTIFACTS / "voila-quickstart-timing.json").write_text(json.dumps({"page_s": took}))
        pv = page.locator("[data-testid=wb-view][data-kind=patch]").first
        label = pv.locator("[data-testid=wb-result-label]")
        label.filter(has_text="L26 pos 9").wait_for(timeout=30_000)  # the notebook's view.click(26, 9)
        before = float(pv.locator("[data-testid=wb-metric]").get_attribute("data-value"))
        t0 = time.monotonic()
        click_cell(pv.locator("[data-testid=wb-heatmap][data-role=sweep]"), 12, 2)
        label.filter(has_text="L12 pos 2").wait_for(timeout=60_000)
        pv.locator("[data-testid=wb-status][data-state=done]").wait_for(timeout=60_000)
        print(f"[voila] click -> redraw {1000 * (time.monotonic() - t0):.0f} ms")
        after = float(pv.locator("[data-testid=wb-metric]").get_attribute("data-value"))
        assert after != before
        assert pv.locator("[data-testid=wb-prediction]").get_attribute("data-top")
        pv.screenshot(path=str(ARTIFACTS / "voila-quickstart-patch.png"))
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
