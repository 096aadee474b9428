"""Hatch build hook: build the views' JS bundle (js/ -> workbench/static/widget.js) inside the package build.

`python -m build`, `pip wheel .` and `pip install .` run `npm ci && npm run build` in js/, so the wheel and the
sdist carry `workbench/static/*` (git-ignored, shipped as hatch artifacts). The sdist also carries the js/
sources and this hook, so a wheel built from it rebuilds what is stale.

A bundle is fresh when `workbench/static/build-info.json` records the hash of the js/ sources it was built
from; a fresh bundle is reused (so sdist -> wheel does not run npm twice). Without npm a present bundle is used
(with a warning if it is stale), and a missing one fails with a message saying what to install. Editable
installs (`pip install -e .`) build only when no bundle exists; developers rebuild with `make js`.

`WORKBENCH_JS=force` always rebuilds, `WORKBENCH_JS=skip` never runs npm (a bundle must exist).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

# What the bundle is built from (relative to js/); node_modules and tests do not change widget.js.
SOURCES = ("package.json", "package-lock.json", "build.mjs", "tsconfig.json", "src")
BUNDLE = Path("workbench", "static", "widget.js")
INFO = Path("workbench", "static", "build-info.json")


LABEXT = Path("workbench", "labextensions", "interp-workbench")
LABEXT_SOURCES = ("package.json", "package-lock.json", "gen-notebooks.mjs", "tsconfig.json", "src/index.ts")


def sources_hash(js: Path, sources: tuple[str, ...] = SOURCES) -> str:
    h = hashlib.sha256()
    for name in sources:
        p = js / name
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p] if p.is_file() else []
        for f in files:
            h.update(f.relative_to(js).as_posix().encode() + b"\0")
            h.update(f.read_bytes() + b"\0")
    return h.hexdigest()


def recorded_hash(root: Path) -> str | None:
    try:
        return json.loads((root / INFO).read_text())["sources_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


class JSBundleHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        self._js_bundle(version)
        self._labextension(version)

    def _labextension(self, version: str) -> None:
        """The prebuilt JupyterLab extension (labextension/ -> workbench/labextensions/interp-workbench, shipped
        as shared data into share/jupyter/labextensions): built like the bundle, reused when fresh."""
        root = Path(self.root)
        src = root / "labextension"
        out = root / LABEXT
        if not (src / "package.json").is_file():
            if (out / "package.json").is_file():
                return
            raise RuntimeError(f"no labextension/ sources and no prebuilt extension ({LABEXT}) to ship")
        digest = sources_hash(src, LABEXT_SOURCES) + sources_hash(root / "notebooks", ("",))
        info = out / "build-info.json"
        try:
            fresh = json.loads(info.read_text())["sources_sha256"] == digest
        except (OSError, ValueError, KeyError, TypeError):
            fresh = False
        mode = os.environ.get("WORKBENCH_JS", "auto").strip().lower()
        built = (out / "package.json").is_file()
        if built and (mode == "skip" or (mode == "auto" and (fresh or version == "editable"))):
            return
        npm = shutil.which("npm")
        if npm is None:
            if built:
                return
            raise RuntimeError(
                "Building interp-workbench from source needs Node.js 18+ and npm to build its JupyterLab "
                "extension (labextension/), and npm was not found on PATH: install them, or install the "
                "prebuilt wheel: pip install interp-workbench."
            )
        self.app.display_info("workbench: building the JupyterLab extension (npm ci && npm run build)")
        quiet = ["--no-audit", "--no-fund", "--loglevel=error"]
        if self._npm(npm, src, "ci", *quiet) != 0:
            self._npm(npm, src, "install", *quiet, check=True)
        # jupyter-builder (a build requirement) must be found next to this interpreter
        os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
        self._npm(npm, src, "run", "build", check=True)
        if not (out / "package.json").is_file():
            raise RuntimeError(f"npm run build in labextension/ did not produce {LABEXT}")
        info.write_text(json.dumps({"sources_sha256": digest}) + "\n")

    def _js_bundle(self, version: str) -> None:
        root = Path(self.root)
        js = root / "js"
        bundle = root / BUNDLE
        mode = os.environ.get("WORKBENCH_JS", "auto").strip().lower()
        editable = version == "editable"
        if mode not in ("auto", "force", "skip"):
            raise RuntimeError(f"WORKBENCH_JS={mode!r}: use auto, force or skip")

        if not (js / "package.json").is_file():
            if bundle.is_file():
                return  # a tree with a built bundle and no JS sources: ship what is there
            raise RuntimeError(f"no JS sources (js/package.json) and no prebuilt bundle ({BUNDLE}) to ship")

        digest = sources_hash(js)
        fresh = bundle.is_file() and recorded_hash(root) == digest
        if mode == "skip" or (mode == "auto" and (fresh or (editable and bundle.is_file()))):
            if not bundle.is_file():
                raise RuntimeError(f"WORKBENCH_JS=skip but there is no bundle at {BUNDLE}")
            self.app.display_info(f"workbench: using the existing JS bundle {BUNDLE}")
            return

        npm = shutil.which("npm")
        if npm is None:
            if bundle.is_file():
                self.app.display_warning(
                    f"workbench: npm not found; shipping the existing {BUNDLE}, which may not match js/src "
                    "(install Node.js 18+ to rebuild it)"
                )
                return
            message = (
                "Building interp-workbench from source needs Node.js 18+ and npm to build its JS views "
                "(js/ -> workbench/static/widget.js), and npm was not found on PATH. Install Node.js 18+ "
                "with npm (e.g. your system's nodejs and npm packages) and retry, or install the "
                "prebuilt wheel: pip install interp-workbench."
            )
            if editable:
                self.app.display_warning(
                    f"workbench: {message} The editable install has no views until then."
                )
                return
            raise RuntimeError(message)

        self.app.display_info("workbench: building the JS bundle (npm ci && npm run build in js/)")
        quiet = ["--no-audit", "--no-fund", "--loglevel=error"]
        if self._npm(npm, js, "ci", *quiet) != 0:
            # a registry whose lock omits another platform's optional packages makes `npm ci` refuse the lock
            self.app.display_warning("workbench: `npm ci` failed; retrying with `npm install`")
            self._npm(npm, js, "install", *quiet, check=True)
        self._npm(npm, js, "run", "build", check=True)
        if not bundle.is_file():
            raise RuntimeError(f"npm run build did not produce {BUNDLE}")
        (root / INFO).write_text(json.dumps({"sources_sha256": digest}) + "\n")

    @staticmethod
    def _npm(npm: str, cwd: Path, *args: str, check: bool = False) -> int:
        # npm's output goes to stderr: it shows with pip -v and never mixes into a build frontend's stdout
        code = subprocess.call([npm, *args], cwd=cwd, stdout=sys.stderr)
        if check and code != 0:
            raise RuntimeError(f"`npm {' '.join(args)}` in {cwd} failed with exit code {code}")
        return code
