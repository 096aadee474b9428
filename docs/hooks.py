"""mkdocs hooks: the teaching notebooks (../notebooks/*.ipynb) as pages, and the changelog.

Notebooks are converted to Markdown with nbconvert at build time, as stored (outputs stripped): the pages
show the code and the prose, and the tests (tests/test_notebooks.py) are what runs them.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def _title(path: Path) -> str:
    return path.stem.split("_", 1)[-1].replace("_", " ").capitalize() if "_" in path.stem else path.stem


def on_config(config, **kwargs):
    for item in config["nav"]:
        if isinstance(item, dict) and "Notebooks" in item:
            item["Notebooks"] = [{"Overview": "notebooks/index.md"}] + [
                {_title(p): f"notebooks/{p.stem}.md"} for p in _notebooks()
            ]
    return config


def _link_pages(markdown: str) -> str:
    """`01_quickstart.ipynb` in the notebooks' README becomes a link to its page."""
    return re.sub(r"`(\d\d_[A-Za-z0-9_]+)\.ipynb`", r"[`\1`](\1.md)", markdown)


def on_files(files, config, **kwargs):
    from nbconvert import MarkdownExporter

    exporter = MarkdownExporter()
    for nb in _notebooks():
        body, _ = exporter.from_filename(str(nb))
        source = f"*Stored in `notebooks/{nb.name}` without outputs; run it in Jupyter to see the views.*\n\n"
        files.append(File.generated(config, f"notebooks/{nb.stem}.md", content=source + body))
    readme = NOTEBOOKS / "README.md"
    if readme.is_file():
        files.append(File.generated(config, "notebooks/index.md", content=_link_pages(readme.read_text())))
    changelog = ROOT / "CHANGELOG.md"
    files.append(File.generated(config, "changelog.md", content=changelog.read_text()))
    return files
