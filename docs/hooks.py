"""mkdocs hooks: the teaching notebooks (../notebooks/*.ipynb) as pages, the changelog, and a coverage check.

Notebooks are converted to Markdown with nbconvert at build time, as stored (outputs stripped): the pages
show the code and the prose, and the tests (tests/test_notebooks.py) are what runs them.

After the build, every name in `workbench.__all__` must have an entry in the reference (an anchor with its
canonical path); a public name with no page is a warning, so `mkdocs build --strict` (make docs) fails.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.workbench")
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


def on_post_build(config, **kwargs):
    import griffe

    package = griffe.load("workbench", search_paths=[str(ROOT)])
    anchors: set[str] = set()
    for page in Path(config["site_dir"]).rglob("*.html"):
        anchors.update(re.findall(r'id="(workbench\.[\w.]+)"', page.read_text(errors="replace")))
    missing = []
    for name in map(str, package.exports or ()):
        obj = package[name]
        path = obj.final_target.path if obj.is_alias else obj.path
        # an op wrapped in workbench/ops/__init__.py (`patch = _public("patch", patch)`) is an attribute to
        # griffe: its page documents the function under its module (workbench.ops.patching.patch)
        parent, _, leaf = path.rpartition(".")
        wrapped = (obj.final_target if obj.is_alias else obj).is_attribute
        if wrapped and any(a.startswith(parent + ".") and a.endswith("." + leaf) for a in anchors):
            continue
        if path not in anchors and not any(a.startswith(path + ".") for a in anchors):
            missing.append(f"wb.{name} ({path})")
    if missing:
        log.warning(
            "these public names (workbench.__all__) are on no page of docs/api/: " + ", ".join(missing)
        )
