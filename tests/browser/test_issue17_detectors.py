"""Issue 17, AttentionView's head detectors: pick a detector in a real JupyterLab on the embedded model; the kernel
computes the scores, the thumbnails get a ring coloured by each head's score, the top heads are listed (the same
heads as wb.head_detectors), and a click on a listed head opens its pattern."""

from __future__ import annotations

import json

import pytest

from .conftest import make_notebook, run_notebook, start_server
from .test_issue10_views import kernel
from .test_views import heatmap, shot, view, wait_status

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

PROMPT = "When Mary and John went to the store, John gave a drink to"

CELLS = [
    "import json, pathlib\n"
    "import workbench as wb\n"
    "from workbench.widgets import AttentionView\n"
    "model = wb.load()\n"
    "scores = wb.head_detectors(model)\n"
    "_ = pathlib.Path('expected17.json').write_text(json.dumps({name: scores.top(name, 10) for name in scores}))\n",
    f"av = AttentionView(model, {PROMPT!r})\nav",
]

RING = """([el, row, col]) => {
  // the colour of the ring around thumbnail (row, col): 1.2 css px inside the cell's left edge, at mid height
  const rows = Number(el.getAttribute('data-rows')), cols = Number(el.getAttribute('data-cols'));
  const cw = el.width / cols, ch = el.height / rows, dpr = el.width / el.getBoundingClientRect().width;
  const d = el.getContext('2d').getImageData(Math.floor(col * cw + 1.2 * dpr), Math.round((row + 0.5) * ch), 1, 1).data;
  return [d[0], d[1], d[2]];
}"""


@pytest.fixture(scope="module")
def nb(browser_context):
    server = start_server("lab", make_notebook(CELLS), "issue17.ipynb")
    page = browser_context.new_page()
    try:
        run_notebook(page, server, "issue17.ipynb", 1)
        yield {"app": "lab", "page": page, "server": server}
    finally:
        page.close()
        server.stop()


def ring(hm, row: int, col: int) -> list[int]:
    return hm.evaluate(f"(el, a) => ({RING})([el, ...a])", [row, col])


def test_pick_a_detector_colours_the_heads_and_lists_the_top(nb):
    page = nb["page"]
    expected = json.loads((nb["server"].root / "expected17.json").read_text())
    av = view(page, "attention")
    hm = heatmap(av, "heads")
    assert hm.get_attribute("data-detector") == ""
    plain = [ring(hm, r, c) for r, c in [(18, 6), (0, 0)]]
    assert plain[0] == plain[1], "no detector: every ring is the background"
    av.locator("[data-testid=wb-detector]").select_option("induction")
    page.wait_for_function(
        "() => document.querySelectorAll('[data-kind=attention] [data-testid=wb-detector-head]').length === 10",
        timeout=120_000,
    )
    wait_status(av, "done")
    assert hm.get_attribute("data-detector") == "induction"
    heads = av.locator("[data-testid=wb-detector-head]")
    want = expected["induction"]
    got = [
        (int(heads.nth(i).get_attribute("data-layer")), int(heads.nth(i).get_attribute("data-head")))
        for i in range(10)
    ]
    assert got == [tuple(lh) for lh, _ in want]
    (l0, h0), s0 = want[0]
    assert heads.nth(0).text_content() == f"L{l0}H{h0} {s0:.2f}"
    # the top head's ring is the strongest tint; a head that scores ~0 keeps the background
    top, low, bg = ring(hm, l0, h0), ring(hm, 0, 0), plain[1]
    assert sum(abs(a - b) for a, b in zip(top, bg, strict=True)) > 150, (top, bg)
    assert sum(abs(a - b) for a, b in zip(top, low, strict=True)) > 100, (top, low)
    assert kernel(page, "print(av.detector, av.detector_scores['name'])").split() == [
        "induction",
        "induction",
    ]
    shot(nb, av, "issue17-induction")
    # a listed head opens its pattern
    heads.nth(0).click()
    title = av.locator("[data-testid=wb-pattern-title]")
    title.wait_for()
    assert title.text_content().startswith(f"Layer {l0}, head {h0}:")
    # another detector needs no new computation; none removes the colouring
    av.locator("[data-testid=wb-detector]").select_option("previous_token")
    page.wait_for_function(
        "(h) => document.querySelector('[data-kind=attention] [data-testid=wb-detector-head]')?.dataset.layer === String(h)",
        arg=expected["previous_token"][0][0][0],
    )
    shot(nb, av, "issue17-previous-token")
    av.locator("[data-testid=wb-detector]").select_option("")
    page.wait_for_function(
        "() => document.querySelector('[data-kind=attention] [data-testid=wb-heatmap][data-role=heads]')"
        ".getAttribute('data-detector') === ''"
    )
    assert av.locator("[data-testid=wb-detector-head]").count() == 0
    (l1, h1), _ = want[1]  # the top head is selected now (outlined): check the second
    assert ring(hm, l1, h1) == bg
