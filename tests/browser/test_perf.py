"""Drawing speed in a real Chromium, with no kernel: the standalone page of a 30 x 2048 logit lens."""

from __future__ import annotations

import json

import numpy as np
import pytest

from workbench.widgets.base import html_from_state, pack

from .conftest import ARTIFACTS

pytestmark = pytest.mark.browser


def synthetic_lens_state(L: int = 30, T: int = 2048, k: int = 5) -> dict:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 500, size=(L, T, k)).astype(np.int32)
    probs = np.sort(rng.random((L, T, k)).astype(np.float32), axis=-1)[..., ::-1] / 2
    return {
        "_view_kind": "lens",
        "prompt": "synthetic",
        "status": "done",
        "mode": "prob",
        "pinned": [" tok1"],
        "focus": " tok1",
        "data": {
            "tokens": [f" t{i}" for i in range(T)],
            "top_ids": pack(ids),
            "top_probs": pack(probs),
            "entropy": pack(rng.random((L, T))),
            "kl": pack(rng.random((L, T))),
            "id_text": {str(i): f" tok{i}" for i in range(500)},
            "pinned": {" tok1": {"prob": pack(rng.random((L, T))), "rank": pack(rng.integers(0, 9, (L, T)))}},
        },
    }


def test_heatmap_30x2048_draws_under_100ms(browser_context, tmp_path):
    page_file = tmp_path / "lens-2048.html"
    page_file.write_text(html_from_state(synthetic_lens_state()))
    page = browser_context.new_page()
    try:
        page.goto(page_file.as_uri())
        hm = page.locator("[data-testid=wb-heatmap][data-role=lens]")
        hm.wait_for(timeout=20_000)
        assert (hm.get_attribute("data-rows"), hm.get_attribute("data-cols")) == ("30", "2048")
        first = float(hm.get_attribute("data-draw-ms"))
        # redraws: colour mode switches (each one a full canvas draw of 61,440 cells)
        times = []
        for mode in ["entropy", "pinned", "rank", "prob"]:
            page.locator("[data-testid=wb-mode]").select_option(mode)
            times.append(float(hm.get_attribute("data-draw-ms")))
        print(
            f"\n30x2048 heatmap: first draw {first:.1f} ms, redraws {', '.join(f'{t:.1f}' for t in times)} ms"
        )
        (ARTIFACTS / "heatmap-2048-timing.json").write_text(
            json.dumps({"first_ms": first, "redraws_ms": times})
        )
        page.screenshot(path=str(ARTIFACTS / "heatmap-2048.png"))
        assert np.median(times) < 100
    finally:
        page.close()
