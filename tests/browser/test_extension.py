"""The JupyterLab extension (labextension/, shipped prebuilt): a "Workbench" section in the Launcher and
command-palette entries that open fresh copies of the teaching notebooks; the shipped files stay untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from .conftest import ARTIFACTS, Server

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
# the path of the document in JupyterLab's main area (the tab title is cut short)
CURRENT = "() => window.jupyterapp.shell.currentWidget?.context?.path ?? ''"
STEMS = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))


def _digests() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in NOTEBOOKS.glob("*.ipynb")}


@pytest.fixture(scope="module")
def lab(browser_context, tmp_path_factory):
    root = tmp_path_factory.mktemp("wb-ext")
    server = Server("lab", root)
    page = browser_context.new_page()
    try:
        page.goto(f"{server.base}/lab?token={server.token}")
        page.wait_for_selector(".jp-Launcher", timeout=90_000)
        yield server, page
    finally:
        page.close()
        server.stop()


def test_extension_is_installed_with_the_package():
    """The editable or wheel install put the prebuilt extension where JupyterLab finds it."""
    import sys

    share = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "interp-workbench"
    assert (share / "package.json").is_file(), f"no prebuilt extension in {share}"
    assert json.loads((share / "package.json").read_text())["jupyterlab"]["_build"]["load"]


def test_launcher_card_opens_a_fresh_copy(lab):
    server, page = lab
    before = _digests()
    section = page.locator(
        ".jp-Launcher-section", has=page.locator(".jp-Launcher-sectionTitle", has_text="Workbench")
    )
    section.wait_for()
    cards = section.locator(".jp-LauncherCard")
    assert cards.count() == len(STEMS)
    labels = [cards.nth(i).inner_text().strip() for i in range(cards.count())]
    assert "Workbench in five minutes" in labels
    section.screenshot(path=str(ARTIFACTS / "lab-extension-launcher.png"))
    cards.filter(has_text="Workbench in five minutes").click()  # as a person would: one click on the card
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=60_000)
    page.wait_for_function(f"() => ({CURRENT})() === '01_quickstart.ipynb'", timeout=30_000)
    copy = server.root / "01_quickstart.ipynb"
    assert copy.is_file()
    shipped = json.loads((NOTEBOOKS / "01_quickstart.ipynb").read_text())
    assert [c["source"] for c in json.loads(copy.read_text())["cells"]] == [
        c["source"] for c in shipped["cells"]
    ]
    page.screenshot(path=str(ARTIFACTS / "lab-extension-opened.png"))
    # a second copy never overwrites the first (or its edits)
    page.evaluate("() => window.jupyterapp.commands.execute('workbench:open-01_quickstart', {cwd: ''})")
    page.wait_for_function(f"() => ({CURRENT})() === '01_quickstart-2.ipynb'", timeout=30_000)
    assert (server.root / "01_quickstart-2.ipynb").is_file()
    assert _digests() == before, "a shipped notebook changed"


def test_command_palette_lists_every_notebook(lab):
    server, page = lab
    page.evaluate("() => window.jupyterapp.commands.execute('apputils:activate-command-palette')")
    search = page.locator(".lm-CommandPalette-input")
    search.fill("fresh copy")
    items = page.locator(".lm-CommandPalette-item")
    items.first.wait_for()
    texts = [items.nth(i).inner_text() for i in range(items.count())]
    assert sum("Open a fresh copy of" in t for t in texts) == len(STEMS), texts
    page.locator(".lm-CommandPalette-item", has_text="Attention and induction heads").click()
    page.wait_for_function(f"() => ({CURRENT})() === '05_attention_and_induction.ipynb'", timeout=30_000)
    assert (server.root / "05_attention_and_induction.ipynb").is_file()
