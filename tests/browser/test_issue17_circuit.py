"""Issue 17, CircuitView clicked in a real JupyterLab (Debian Chromium via Playwright) on the tiny Llama (grouped-query
attention) with two IOI-style pairs, to keep it quick: the circuit draws with its faithfulness and the curve; dragging
the slider measures the new circuit (the number shown is wb.faithfulness of graph.top(n)); hovering a node shows its
attribution in and out; clicking a node and an edge shows the exact patch beside the estimate (equal to wb.patch /
wb.edge_patch run in the kernel); pinning a node out drops its edges and faithfulness recomputes; the keyboard moves
the selection and Enter patches; SVG and PNG export; dark theme."""

from __future__ import annotations

import json

import pytest

from .conftest import ARTIFACTS, make_notebook, start_server
from .test_issue10_views import kernel
from .test_views import shot, view, wait_status

pytestmark = [pytest.mark.browser]

CELLS = [
    "import json\nimport workbench as wb\nfrom workbench.testing import tiny_model\nmodel = tiny_model('llama')\n"
    "ds = wb.Dataset(clean=['When Mary and John went to the store, John gave a drink to',"
    " 'When John and Mary went to the store, Mary gave a drink to'],"
    " corrupt=['When Mary and John went to the store, Mary gave a drink to',"
    " 'When John and Mary went to the store, John gave a drink to'],"
    " target=[' Mary', ' John'], foil=[' John', ' Mary'])\n"
    "m = wb.logit_diff()\ng = wb.edge_attribution(model, ds, metric=m)",
    "cv = wb.CircuitView(model, ds, g, n=10)\ncv",
]
LONG = 180_000


@pytest.fixture(scope="module")
def nb(browser_context):
    server = start_server("lab", make_notebook(CELLS), "issue17.ipynb")
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(server.url("issue17.ipynb"))
        page.wait_for_function(
            "() => window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=60_000
        )
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        page.wait_for_timeout(1500)  # the kernel connects
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        page.wait_for_selector("[data-testid=wb-view][data-kind=circuit]", timeout=240_000)
        yield {"app": "lab", "page": page, "server": server, "errors": errors}
    finally:
        page.close()
        server.stop()


def _settled(page, timeout: float = LONG) -> dict:
    """Wait until the kernel's work is done (faithfulness and the curve), then the view's state."""
    out = kernel(
        page,
        f"cv.wait({timeout / 1000})\n"
        "print(json.dumps({'n': cv.n, 'status': cv.status, 'error': cv.error, 'key': cv.circuit['key'],"
        " 'fkey': cv.faithfulness.get('key'), 'value': cv.faithfulness.get('value'),"
        " 'size': cv.circuit['size'], 'pinned_out': cv.pinned_out, 'inspected': cv.inspected,"
        " 'curve_done': cv.curve['done']}))",
    )
    return json.loads(out)


def _fmt3(v: float) -> str:
    return f"{v:.3f}"


def test_the_circuit_draws_with_its_faithfulness_and_curve(nb):
    page = nb["page"]
    cv = view(page, "circuit")
    st = _settled(page)
    assert st["status"] == "done" and st["fkey"] == st["key"] and st["curve_done"], st
    page.wait_for_function(
        "() => document.querySelector('[data-kind=circuit] [data-testid=wb-circuit-faith]').dataset.stale === 'false'",
        timeout=LONG,
    )
    exp = float(kernel(page, "print(float(wb.faithfulness(model, ds, g.top(10), metric=m)))"))
    assert cv.locator("[data-testid=wb-circuit-faith]").text_content() == _fmt3(exp)
    # every node of every layer, the ten kept edges
    assert cv.locator("[data-testid=wb-circuit-node]").count() == 1 + 3 * (6 + 2 + 1) + 1
    assert cv.locator("[data-testid=wb-circuit-edge]").count() == 10
    assert cv.locator("[data-testid=wb-circuit-drawn]").text_content().startswith("10 drawn of 10 kept edges")
    title = cv.locator("[data-testid=wb-circuit-curve-title]")
    page.wait_for_function(
        "() => document.querySelector('[data-kind=circuit] [data-testid=wb-circuit-curve-title]').dataset.done === 'true'",
        timeout=LONG,
    )
    assert "6/6 sizes" in title.text_content()
    shot(nb, cv, "issue17-circuit")


def test_dragging_the_slider_measures_the_new_circuit(nb):
    page = nb["page"]
    cv = view(page, "circuit")
    slider = cv.locator("[data-testid=wb-circuit-slider]")
    slider.scroll_into_view_if_needed()
    box = slider.bounding_box()
    value = int(slider.input_value())
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * value / 1000, y)
    page.mouse.down()
    for f in (0.6, 0.7, 0.8):  # a drag: several values on the way; the last one is measured
        page.mouse.move(box["x"] + box["width"] * f, y, steps=4)
        page.wait_for_timeout(60)
    page.mouse.up()
    page.wait_for_function(
        "() => Number(document.querySelector('[data-kind=circuit] [data-testid=wb-circuit-n]').value) > 10",
        timeout=30_000,
    )
    shown_n = int(cv.locator("[data-testid=wb-circuit-n]").input_value())
    page.wait_for_function(
        f"() => {{ const e = document.querySelector('[data-kind=circuit] [data-testid=wb-circuit-drawn]');"
        f" return e && e.textContent.includes('of {shown_n} kept'); }}",
        timeout=60_000,
    )
    st = _settled(page)
    assert st["n"] == shown_n and st["fkey"] == st["key"] and st["status"] == "done", st
    page.wait_for_function(
        "() => document.querySelector('[data-kind=circuit] [data-testid=wb-circuit-faith]').dataset.stale === 'false'",
        timeout=LONG,
    )
    exp = float(kernel(page, f"print(float(wb.faithfulness(model, ds, g.top({shown_n}), metric=m)))"))
    assert st["value"] == pytest.approx(exp, abs=1e-6)
    assert cv.locator("[data-testid=wb-circuit-faith]").text_content() == _fmt3(exp)
    assert cv.locator("[data-testid=wb-circuit-edge]").count() == min(shown_n, 500)
    shot(nb, cv, "issue17-circuit-slider")


def test_hover_a_node_and_click_it_and_an_edge(nb):
    page = nb["page"]
    cv = view(page, "circuit")
    node = cv.locator("[data-testid=wb-circuit-node][data-node=L1H3]")
    node.hover()
    tip = cv.locator("[data-testid=wb-tooltip]")
    tip.wait_for(state="visible", timeout=10_000)
    text = tip.text_content()
    out = float(kernel(page, "print(float(g.node_scores('head')[1, 3]))"))
    assert text.startswith("L1H3: attention head 3 of layer 1") and "out:" in text and "in:" in text, text
    shown = text.split("out: ")[1].split(" ")[0]
    assert float(shown) == pytest.approx(out, abs=1e-3), (shown, out)
    node.click()
    page.wait_for_function(
        "() => (document.querySelector('[data-kind=circuit] [data-testid=wb-circuit-inspect-title]') || {}).textContent === 'Node L1H3: exact vs estimate'",
        timeout=LONG,
    )
    st = _settled(page)
    exp = json.loads(
        kernel(
            page,
            "p = wb.patch(model, ds, metric=m, cells=[wb.Cell('head', 1, head=3)])\n"
            "print(json.dumps([float(p) - p.corrupt_mean, float(g.node_scores('head')[1, 3])]))",
        )
    )
    assert st["inspected"]["exact"] == pytest.approx(exp[0], abs=1e-6)
    assert st["inspected"]["estimate"] == pytest.approx(exp[1], abs=1e-6)
    assert float(cv.locator("[data-testid=wb-circuit-exact]").text_content()) == pytest.approx(
        exp[0], abs=1e-4
    )
    assert float(cv.locator("[data-testid=wb-circuit-estimate]").text_content()) == pytest.approx(
        exp[1], abs=1e-4
    )
    shot(nb, cv, "issue17-circuit-node")
    # the strongest edge (drawn last, on top): click a point on its curve
    edge = cv.locator("[data-testid=wb-circuit-edge]").last
    point = edge.evaluate(
        "g => { const p = g.querySelector('path'); const q = p.getPointAtLength(p.getTotalLength() * 0.5);"
        " const m = p.getScreenCTM(); return [q.x * m.a + q.y * m.c + m.e, q.x * m.b + q.y * m.d + m.f]; }"
    )
    hit = page.evaluate(
        "([x, y]) => { const e = document.elementFromPoint(x, y); const g = e && e.closest('[data-edge]');"
        " return g ? g.getAttribute('data-edge') : null; }",
        point,
    )
    assert hit is not None
    page.mouse.move(*point)
    assert "score" in tip.text_content()
    page.mouse.click(*point)
    page.wait_for_function(
        "() => ((document.querySelector('[data-kind=circuit] [data-testid=wb-circuit-inspect-title]') || {}).textContent || '').startsWith('Edge ')",
        timeout=LONG,
    )
    st = _settled(page)
    s, r, _ = (int(x) for x in hit.split(","))
    exp = json.loads(
        kernel(
            page,
            f"e = wb.Edge(g.senders[{s}], g.receivers[{r}])\nf = wb.edge_patch(model, ds, [e], metric=m)\n"
            "print(json.dumps([str(e), f.raw - f.corrupt, g.score(e)]))",
        )
    )
    assert st["inspected"]["name"] == exp[0]
    assert st["inspected"]["exact"] == pytest.approx(exp[1], abs=1e-6)
    assert st["inspected"]["estimate"] == pytest.approx(exp[2], abs=1e-6)
    assert float(cv.locator("[data-testid=wb-circuit-exact]").text_content()) == pytest.approx(
        exp[1], abs=1e-4
    )
    assert cv.locator("[data-testid=wb-circuit-checks-table] tr").count() == 3  # header + two checks
    shot(nb, cv, "issue17-circuit-edge")


def test_pin_a_node_out_and_faithfulness_recomputes(nb):
    page = nb["page"]
    cv = view(page, "circuit")
    top_sender = kernel(
        page, "print([e.sender for e in cv.circuit_result.edges if e.sender != 'embed'][0])"
    ).strip()
    cv.locator(f"[data-testid=wb-circuit-node][data-node={top_sender}]").click()
    cv.locator("[data-testid=wb-circuit-pin-out]").click()
    cv.locator(f"[data-testid=wb-circuit-pin-out-chip][data-node={top_sender}]").wait_for(timeout=30_000)
    st = _settled(page)
    assert st["pinned_out"] == [top_sender] and st["fkey"] == st["key"], st
    check = json.loads(
        kernel(
            page,
            "c = cv.circuit_result\n"
            f"touch = [e for e in c.edges if '{top_sender}' in (e.sender, e.receiver.split('.')[0])]\n"
            "print(json.dumps([len(touch), float(wb.faithfulness(model, ds, c, metric=m)), cv.faithfulness['value']]))",
        )
    )
    assert check[0] == 0 and check[1] == pytest.approx(check[2], abs=1e-6)
    page.wait_for_function(
        "() => document.querySelector('[data-kind=circuit] [data-testid=wb-circuit-faith]').dataset.stale === 'false'",
        timeout=LONG,
    )
    assert cv.locator("[data-testid=wb-circuit-faith]").text_content() == _fmt3(check[2])
    node = cv.locator(f"[data-testid=wb-circuit-node][data-node={top_sender}]")
    assert node.locator("[stroke-dasharray]").count() == 1  # drawn dashed: pinned out
    shot(nb, cv, "issue17-circuit-pinned")


def test_keyboard_moves_the_selection_and_enter_patches(nb):
    page = nb["page"]
    cv = view(page, "circuit")
    cv.locator("[data-testid=wb-circuit-node][data-node=L0H2]").click()
    _settled(page)
    svg = cv.locator("[data-testid=wb-circuit-svg]")
    svg.focus()
    svg.press("ArrowUp")
    svg.press("ArrowRight")
    assert cv.locator("[data-testid=wb-circuit-node-title]").text_content() == "L1H3"
    svg.press("Enter")
    page.wait_for_function(
        "() => (document.querySelector('[data-kind=circuit] [data-testid=wb-circuit-inspect-title]') || {}).textContent === 'Node L1H3: exact vs estimate'",
        timeout=LONG,
    )
    st = _settled(page)
    assert st["inspected"]["name"] == "L1H3" and st["error"] == ""


def test_export_svg_and_png(nb):
    page = nb["page"]
    cv = view(page, "circuit")
    with page.expect_download() as dl:
        cv.locator("[data-testid=wb-export-svg]").click()
    path = ARTIFACTS / "lab-issue17-circuit-export.svg"
    dl.value.save_as(str(path))
    svg = path.read_text()
    assert svg.startswith("<svg") and svg.count("<path") >= 5 and ">L2<" in svg and ">logits<" in svg
    with page.expect_download() as dl:
        cv.locator("[data-testid=wb-export-png]").click()
    png = ARTIFACTS / "lab-issue17-circuit-export.png"
    dl.value.save_as(str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not nb["errors"], nb["errors"]


def test_dark_theme(nb):
    page = nb["page"]
    cv = view(page, "circuit")
    page.evaluate(
        "() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})"
    )
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'", timeout=30_000)
    page.wait_for_timeout(2000)
    wait_status(cv, "done", timeout=LONG)
    bg = cv.evaluate("el => getComputedStyle(el).backgroundColor")
    rgb = [int(x) for x in bg[bg.index("(") + 1 : bg.index(")")].split(",")[:3]]
    assert sum(rgb) / 3 < 100, bg
    shot(nb, cv, "issue17-circuit-dark")
    page.evaluate(
        "() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Light'})"
    )
