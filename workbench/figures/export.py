"""Static export (PDF / SVG / PNG) through kaleido and the system's Chrome or Chromium, offline.

kaleido >= 1 renders with plotly.js (the copy inside the plotly package, no CDN) in a headless Chrome it
finds; we find the browser ourselves ($BROWSER_PATH, then chromium / chrome on PATH and the usual install
places) and pass its path, and turn MathJax off (kaleido would fetch it from a CDN). Nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import WorkbenchError

FORMATS = {".pdf": "pdf", ".svg": "svg", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "msedge")
_PLACES = (
    "/usr/bin/chromium",
    "/usr/lib/chromium/chromium",
    "/snap/bin/chromium",
    "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
    "/Applications/Chromium.app/Contents/MacOS/Chromium",
    "C:/Program Files/Google/Chrome/Application/chrome.exe",
)
INSTALL_HINT = (
    "Static figures (PDF/SVG/PNG) need Chrome or Chromium: install it (Debian/Ubuntu: "
    "`apt-get install -y chromium`; macOS: Google Chrome) or set BROWSER_PATH to its executable. "
    "Interactive figures (.plot(), .html) need no browser."
)


def find_browser() -> str:
    """The Chrome/Chromium executable kaleido will drive, or a WorkbenchError naming what to install."""
    env = os.environ.get("BROWSER_PATH")
    if env:
        if os.path.isfile(env) and os.access(env, os.X_OK):
            return env
        raise WorkbenchError(f"BROWSER_PATH={env!r} is not an executable file. {INSTALL_HINT}")
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return found
    for place in _PLACES:
        if os.path.isfile(place) and os.access(place, os.X_OK):
            return place
    raise WorkbenchError(f"No Chrome or Chromium found on this machine. {INSTALL_HINT}")


def _kaleido():
    try:
        import kaleido
    except ImportError as e:
        raise WorkbenchError(
            "Static figures need the kaleido package (>= 1.0): `pip install 'kaleido>=1'`; " + INSTALL_HINT
        ) from e
    return kaleido


def figure_bytes(fig, fmt: str, *, scale: float = 1.0) -> bytes:
    """Render a plotly figure to bytes in `fmt` (pdf, svg, png, jpeg, webp) offline."""
    browser = find_browser()
    kaleido = _kaleido()
    from kaleido.errors import ChromeNotFoundError

    layout = fig.layout
    opts = dict(format=fmt, width=layout.width or 800, height=layout.height or 500, scale=scale)
    try:
        return kaleido.calc_fig_sync(fig.to_dict(), opts=opts, kopts=dict(path=browser, mathjax=False))
    except ChromeNotFoundError as e:
        raise WorkbenchError(f"kaleido could not start the browser at {browser!r}. {INSTALL_HINT}") from e


def save_figure(fig, path: str | os.PathLike, *, scale: float = 1.0) -> Path:
    """Write `fig` to `path`: .pdf, .svg, .png (also .jpg, .webp; .html writes an interactive page)."""
    p = Path(path)
    ext = p.suffix.lower()
    if ext == ".html":
        fig.write_html(str(p), include_plotlyjs=True, full_html=True)  # plotly.js inlined: opens offline
        return p
    if ext not in FORMATS:
        raise WorkbenchError(
            f"Cannot tell the figure format from {str(path)!r}: use a path ending in .pdf, .svg, .png, "
            ".jpg, .webp or .html."
        )
    if not p.parent.exists():
        raise WorkbenchError(f"No such folder: {str(p.parent)!r}.")
    data = figure_bytes(fig, FORMATS[ext], scale=scale)
    p.write_bytes(data)
    return p


def save_result_figure(result, path: str | os.PathLike, *, scale: float = 1.0, **plot_options: Any) -> Path:
    """`result.plot(**plot_options)` written to `path` (format from the extension)."""
    return save_figure(result.plot(**plot_options), path, scale=scale)
