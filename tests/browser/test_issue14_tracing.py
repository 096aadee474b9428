"""Issue 14, CausalTraceView clicked in a real JupyterLab on the embedded model (3 noised samples to keep it short):
three panels appear, hovering a cell shows its value and effect, clicking a cell restores that state and shows the
restored prediction (equal to the panel's value), changing the sever control re-runs the hidden-state panel."""

from __future__ import annotations

import json
import re

import pytest

from .conftest import ARTIFACTS, make_notebook, run_notebook, start_server
from .test_issue10_views import kernel
from .test_views import cell_center, click_cell, heatmap, shot, view, wait_status

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

CELLS = [
    "import json\nimport workbench as wb\nmodel = wb.load()",
    'tv = wb.CausalTraceView(model, "The Eiffel Tower is located in the city of", subject="Eiffel Tower", samples=3)\ntv',
]


@pytest.fixture(scope="module")
def nb(browser_context):
    server = start_server("lab", make_notebook(CELLS), "issue14.ipynb")
    page = browser_context.new_page()
    try:
        run_notebook(page, server, "issue14.ipynb", 1)
        yield {"app": "lab", "page": page, "server": server}
    finally:
        page.close()
        server.stop()


def test_three_panels_hover_click_restore_and_sever(nb):
    page = nb["page"]
    tv = view(page, "tracing")
    wait_status(tv, "done", timeout=240_000)
    for kind in ("resid", "mlp", "attn"):
        hm = heatmap(tv, f"trace-{kind}")
        assert (hm.get_attribute("data-rows"), hm.get_attribute("data-cols")) == ("10", "30")
    titles = tv.locator("[data-testid=wb-trace-title]").all_text_contents()
    assert titles[0].startswith("Impact of restoring state after corrupted input")
    assert titles[1].startswith("Impact of restoring MLP after corrupted input")
    assert titles[2].startswith("Impact of restoring Attn after corrupted input")
    labels = tv.locator("[data-testid=wb-trace-panel-resid] .wb-rowlabel").all_text_contents()
    assert labels[1:4] == ["␣E*", "iffel*", "␣Tower*"], labels
    boxes = [tv.locator(f"[data-testid=wb-trace-panel-{k}]").bounding_box() for k in ("resid", "mlp", "attn")]
    assert boxes[0]["y"] == boxes[1]["y"] == boxes[2]["y"], boxes  # side by side, as ROME's figure
    assert (
        boxes[0]["x"] + boxes[0]["width"] <= boxes[1]["x"]
        and boxes[1]["x"] + boxes[1]["width"] <= boxes[2]["x"]
    )
    shot(nb, tv, "issue14-tracing-panels")

    exp = json.loads(
        kernel(
            page,
            "tr = tv._shown_result('mlp'); print(json.dumps({'v': float(tr.values[5, 3]), 'low': float(tr.low)}))",
        )
    )
    x, y = cell_center(heatmap(tv, "trace-mlp"), 3, 5)  # row = token 3 (' Tower*'), column = layer 5
    page.mouse.move(x, y - 1)
    page.mouse.move(x, y)
    tip = tv.locator("[data-testid=wb-tooltip]:visible")
    tip.wait_for(timeout=5_000)
    text = tip.text_content()
    m = re.search(r"= (\S+)effect = value − low = (\S+)", text)
    assert m and "layer 5" in text and "Tower*" in text, text
    assert float(m.group(1)) == pytest.approx(exp["v"], abs=2e-3)
    assert float(m.group(2)) == pytest.approx(exp["v"] - exp["low"], abs=2e-3)
    shot(nb, tv, "issue14-tracing-hover")

    click_cell(heatmap(tv, "trace-mlp"), 3, 5)
    tv.locator("[data-testid=wb-trace-top-token]").first.wait_for(timeout=60_000)
    wait_status(tv, "done", timeout=60_000)
    title = tv.locator("[data-testid=wb-trace-restored-title]").text_content()
    assert "MLP at layers 0–9" in title and "␣Tower*" in title, title
    got = float(re.search(r"= (\S+) \(effect", title).group(1))
    assert got == pytest.approx(exp["v"], abs=2e-3)
    assert tv.locator("[data-testid=wb-trace-top-token]").count() == 5
    assert heatmap(tv, "trace-lens").get_attribute("data-rows") == "30"
    shot(nb, tv, "issue14-tracing-restored")
    with page.expect_download() as dl:
        tv.locator("[data-testid=wb-export-png]").click()
    png = ARTIFACTS / "lab-issue14-tracing-export.png"
    dl.value.save_as(str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    tv.locator("[data-testid=wb-trace-sever]").select_option("mlp")
    page.wait_for_function(
        "() => document.querySelector('[data-kind=tracing] [data-testid=wb-trace-title]').textContent.includes('MLP severed')",
        timeout=240_000,
    )
    wait_status(tv, "done", timeout=240_000)
    out = kernel(page, "print(tv.traces['resid']['settings']['sever'], tv.stale, tv.status)")
    assert out.split() == ["mlp", "[]", "done"], out
    shot(nb, tv, "issue14-tracing-severed")
