"""`view.dock()` in a real JupyterLab 4 (the sidecar's right side panel) and Notebook 7 (inline fallback)."""

from __future__ import annotations

import pytest

from .conftest import ARTIFACTS, make_notebook, start_server

pytestmark = pytest.mark.browser

CLEAN = "The Eiffel Tower is located in the city of"
SETUP = f"""
import torch
torch.set_num_threads(1)
import workbench as wb
from workbench.testing import tiny_model
model = tiny_model("llama")
CLEAN = {CLEAN!r}
"""
DOCK = 'lv = wb.LensView(model, CLEAN)\ndock = lv.dock(title="Lens (docked)")\ndock'
LONG = 'print("\\n".join(f"line {i}" for i in range(300)))'  # a tall output to scroll past


def open_notebook(browser_context, app: str):
    server = start_server(app, make_notebook([SETUP, DOCK, LONG]))
    page = browser_context.new_page()
    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto(server.url("views.ipynb"))
    page.wait_for_function(
        "() => window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=60_000
    )
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    page.wait_for_timeout(1500)  # the kernel connects
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    return server, page


def run_code(page, code: str) -> None:
    """Execute code in the notebook's kernel (as a later cell would), from the page."""
    page.evaluate(
        "(code) => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.requestExecute({code}).done",
        code,
    )


def test_dock_opens_in_jupyterlab_right_panel(browser_context):
    server, page = open_notebook(browser_context, "lab")
    try:
        docked = page.locator("#jp-right-stack .jupyterlab-sidecar [data-testid=wb-view][data-kind=lens]")
        docked.wait_for(timeout=120_000)
        note = page.locator(".jp-Notebook [data-testid=wb-dock-note]")
        note.and_(page.locator("[data-state=docked]")).wait_for(timeout=30_000)
        assert "Lens (docked) is docked in the side panel" in note.text_content()
        # the right side bar has the tab, and the view is in the right part of the shell, not in the notebook
        tab = page.locator(".jp-SideBar.jp-mod-right .lm-TabBar-tab", has_text="Lens (docked)")
        assert tab.count() == 1
        box = docked.bounding_box()
        assert box["x"] > 1400 / 2, box
        assert page.locator(".jp-Notebook [data-testid=wb-view]").count() == 0
        hm = docked.locator("[data-testid=wb-heatmap][data-role=lens]")
        assert (hm.get_attribute("data-rows"), hm.get_attribute("data-cols")) == ("3", "9")
        # scroll the notebook to its end: the docked view stays where it was, in sight
        note_y = note.bounding_box()["y"]
        page.locator(".jp-Notebook .jp-Cell").last.locator("text=line 299").wait_for(timeout=60_000)
        page.locator(".jp-Notebook .jp-Cell").last.locator("text=line 299").scroll_into_view_if_needed()
        assert note.bounding_box()["y"] < note_y - 300, "the notebook did not scroll"
        after = docked.bounding_box()
        assert (after["x"], after["y"]) == (box["x"], box["y"])
        assert docked.is_visible()
        # it is the live view: a new prompt recomputes in the kernel and redraws in the panel
        prompt = docked.locator("[data-testid=wb-prompt]")
        prompt.fill("The cat sat on the mat")
        prompt.press("Enter")
        docked.locator("[data-testid=wb-token]", has_text="mat").first.wait_for(timeout=60_000)
        docked.locator("[data-testid=wb-status][data-state=done]").wait_for(timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "lab-dock.png"))
        # dock.close() removes the panel and its tab
        run_code(page, "dock.close()")
        docked.wait_for(state="detached", timeout=30_000)
        tab.wait_for(state="detached", timeout=30_000)
        assert page.locator(".jupyterlab-sidecar").count() == 0
        # anchor="split-right": beside the notebook in the main area, wider than the side bar
        run_code(page, 'dock = lv.dock(title="Lens (split)", anchor="split-right")')
        beside = page.locator("#jp-main-dock-panel .jupyterlab-sidecar [data-testid=wb-view][data-kind=lens]")
        beside.wait_for(timeout=60_000)
        assert beside.bounding_box()["x"] > box["x"] - 600 and beside.bounding_box()["width"] > box["width"]
        page.screenshot(path=str(ARTIFACTS / "lab-dock-split-right.png"))
    finally:
        page.close()
        server.stop()


def test_dock_falls_back_inline_in_notebook7(browser_context):
    """Notebook 7's shell has no side panel the sidecar extension can use: the view appears under the note."""
    server, page = open_notebook(browser_context, "notebook")
    try:
        note = page.locator(".jp-Notebook [data-testid=wb-dock-note][data-state=inline]")
        note.wait_for(timeout=120_000)
        assert "is shown below instead" in note.text_content()
        inline = page.locator(".jp-Notebook .jp-Cell").nth(1).locator("[data-testid=wb-view][data-kind=lens]")
        inline.wait_for(timeout=30_000)
        hm = inline.locator("[data-testid=wb-heatmap][data-role=lens]")
        assert hm.get_attribute("data-rows") == "3"
        inline.scroll_into_view_if_needed()
        page.locator(".jp-Notebook .jp-Cell").nth(1).screenshot(
            path=str(ARTIFACTS / "notebook-dock-inline.png")
        )
    finally:
        page.close()
        server.stop()
