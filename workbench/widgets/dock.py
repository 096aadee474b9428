"""`view.dock()`: show a view in JupyterLab's right side panel (the `sidecar` widget).

The view stays in sight while the notebook scrolls. Where no side panel exists (Colab, VS Code, marimo) the
view is shown inline below the cell with a one-line note saying why, so a notebook written in JupyterLab
still runs top to bottom everywhere. Without an IPython kernel (a plain script) there is nothing to dock
into: a `WorkbenchError` says so.
"""

from __future__ import annotations

import contextlib
import html
import os
import sys
from typing import Any

ANCHORS = ("right", "split-right", "split-left", "split-top", "split-bottom", "tab-before", "tab-after")


class Dock:
    """What `view.dock()` returns; `.close()` closes the side panel (the view stays usable and can be shown again).

    `.state` is "pending" until the browser has shown the panel, then "docked"; "inline" when the view was shown
    in the cell instead (`.reason` says why); "closed" after `.close()`. `.sidecar` is the `sidecar.Sidecar`.
    """

    def __init__(
        self, view: Any, title: str, sidecar: Any = None, reason: str = "", note: Any = None, box: Any = None
    ):
        self.view = view
        self.title = title
        self.sidecar = sidecar
        self.reason = reason
        self.note = note
        self.box = box
        self._closed = False

    @property
    def state(self) -> str:
        if self._closed:
            return "closed"
        if self.note is None:
            return "inline"
        return str(self.note.state)

    @property
    def docked(self) -> bool:
        return self.state == "docked"

    def _state_changed(self, change: dict) -> None:
        if change["new"] == "inline" and self.box is not None:
            # the browser found no side panel (e.g. Notebook 7): show the view under the note instead
            self.reason = "this front end has no JupyterLab side panel"
            if self.sidecar is not None:
                with contextlib.suppress(Exception):
                    self.sidecar.close()
                self.sidecar = None
            self.box.children = (*self.box.children, self.view)

    def close(self) -> None:
        """Close the side panel (and the inline copy shown instead of it); a no-op when already closed."""
        if self._closed:
            return
        self._closed = True
        if self.sidecar is not None:
            with contextlib.suppress(Exception):
                self.sidecar.close()
        if self.box is not None:
            with contextlib.suppress(Exception):
                self.box.children = tuple(c for c in self.box.children if c is not self.view)
        if self.note is not None:
            with contextlib.suppress(Exception):
                self.note.state = "closed"
        if getattr(self.view, "_wb_dock", None) is self:
            with contextlib.suppress(AttributeError):
                self.view._wb_dock = None

    def _ipython_display_(self) -> None:
        """Nothing: the cell already shows the dock's note (its state is decided in the browser, later)."""

    def __repr__(self) -> str:
        name = type(self.view).__name__
        state = self.state
        if state == "inline":
            return f"<Dock: {name} shown inline ({self.reason})>"
        return f"<Dock: {name} {self.title!r}, {state}; .close() closes the side panel>"


def _no_side_panel() -> str:
    """Why this front end has no JupyterLab side panel, or "" when it may have one (JupyterLab, Notebook 7)."""
    if "google.colab" in sys.modules:
        return "Colab has no side panel"
    ip = _ipython()
    user_ns = getattr(ip, "user_ns", {}) or {}
    if "__vsc_ipynb_file__" in user_ns or "VSCODE_PID" in os.environ:
        return "VS Code's notebooks have no side panel for widgets"
    if any(os.environ.get(k) for k in ("VOILA_KERNEL_ID", "VOILA_REQUEST_URL", "VOILA_BASE_URL")):
        return "Voila pages have no side panel"
    return ""


def _in_marimo() -> bool:
    if "marimo" not in sys.modules:
        return False
    try:
        import marimo

        return bool(marimo.running_in_notebook())
    except Exception:
        return False


def _ipython() -> Any:
    with contextlib.suppress(Exception):
        from IPython import get_ipython

        return get_ipython()
    return None


def _note(text: str) -> None:
    from IPython.display import display

    display(
        {
            "text/plain": text,
            "text/html": f'<div class="wb-dock-note" style="opacity:.75;font-size:12px">{html.escape(text)}</div>',
        },
        raw=True,
    )


# A one-line note shown in the cell that docked the view. It checks, in the browser, that the front end really
# opened a side panel (the sidecar extension renders into JupyterLab's shell; Notebook 7 and Voila cannot), and
# when none appears it asks the kernel to show the view inline below the note instead.
_PROBE_ESM = """
const TEXT = {
  pending: (t) => `Docking ${t} in the side panel...`,
  docked: (t) => `${t} is docked in the side panel (dock.close() closes it).`,
  inline: (t) => `No JupyterLab side panel here: ${t} is shown below instead.`,
  closed: (t) => `${t}: the side panel was closed.`,
};
function sidecarShown() {
  for (const n of document.getElementsByClassName("jupyterlab-sidecar")) if (n.isConnected) return true;
  return false;
}
export default {
  render({ model, el }) {
    const note = document.createElement("div");
    note.className = "wb-dock-note";
    note.setAttribute("data-testid", "wb-dock-note");
    note.style.cssText = "opacity:.75;font-size:12px;padding:2px 0;font-family:var(--jp-ui-font-family,sans-serif)";
    el.append(note);
    const show = () => {
      const s = String(model.get("state"));
      note.setAttribute("data-state", s);
      note.textContent = (TEXT[s] || TEXT.pending)(String(model.get("title")));
    };
    const decide = (s) => {
      if (model.get("state") !== "pending") return;
      model.set("state", s);
      model.save_changes();
    };
    let obs = null;
    let timer = 0;
    const stop = () => { if (obs) obs.disconnect(); obs = null; clearTimeout(timer); };
    model.on("change:state", show);
    show();
    if (model.get("state") === "pending") {
      if (sidecarShown()) decide("docked");
      else {
        obs = new MutationObserver(() => { if (sidecarShown()) { stop(); decide("docked"); } });
        obs.observe(document.body, { childList: true, subtree: true });
        // Notebook 7 (body[data-notebook]) has a right panel the sidecar extension cannot use: decide sooner
        const wait = Number(model.get("timeout_ms")) / (document.body.dataset.notebook ? 4 : 1);
        timer = setTimeout(() => { stop(); decide(sidecarShown() ? "docked" : "inline"); }, wait);
      }
    }
    return () => { stop(); model.off("change:state", show); };
  },
};
"""


def _probe_class():
    import anywidget
    import traitlets

    class DockNote(anywidget.AnyWidget):
        """The note under a docking cell; `state` is pending -> docked | inline (set by the browser), closed."""

        _esm = _PROBE_ESM
        title = traitlets.Unicode("").tag(sync=True)
        state = traitlets.Unicode("pending").tag(sync=True)
        timeout_ms = traitlets.Int(4000).tag(sync=True)

    return DockNote


_DockNote: Any = None


def dock_view(view: Any, title: str | None = None, anchor: str = "right") -> Dock:
    """Open `view` in JupyterLab's right side panel (a `sidecar.Sidecar`), so it stays in sight while you scroll.

    `title` labels the panel's tab (default: the view's class name); `anchor="right"` is the right side bar,
    `"split-right"`, `"split-bottom"`, `"tab-after"`, ... put it next to the notebook in the main area instead.
    Returns a `Dock`; `dock.close()` closes the panel (closing its tab does the same). The view is the same
    object and keeps working; docking it again replaces its previous panel. The cell shows a one-line note.

    Where there is no JupyterLab side panel the view is shown inline under that note: Colab, VS Code and Voila
    are recognised at once; in other front ends (Notebook 7) the browser finds no panel and the view appears
    inline after a few seconds. In marimo, and with no IPython kernel, a `WorkbenchError` names what to use.
    """
    global _DockNote
    from ..errors import WorkbenchError

    if anchor not in ANCHORS:
        raise WorkbenchError(f"dock(anchor={anchor!r}): pick one of {', '.join(ANCHORS)}.")
    title = str(title) if title is not None else f"Workbench {type(view).__name__}"
    if _in_marimo():
        raise WorkbenchError(
            "view.dock(): marimo has no side panel for widgets; show the view with mo.ui.anywidget(view)."
        )
    ip = _ipython()
    if ip is None or not hasattr(ip, "kernel"):
        raise WorkbenchError(
            "view.dock() needs a notebook front end (JupyterLab): there is no IPython kernel here. "
            "In a script use view.save_html(path) to get a page you can open."
        )
    from IPython.display import display

    old = getattr(view, "_wb_dock", None)
    if isinstance(old, Dock):
        old.close()
    reason = _no_side_panel()
    if reason:
        _note(f"view.dock(): {reason}; showing the view here instead.")
        display(view)
        return Dock(view, title, None, reason)
    try:
        from sidecar import Sidecar
    except ImportError as exc:
        raise WorkbenchError(
            "view.dock() needs the sidecar package (JupyterLab's side panel widget): pip install sidecar, "
            "then reload the JupyterLab page. Or display the view inline: just put `view` last in a cell."
        ) from exc
    import ipywidgets

    sc = Sidecar(title=title, anchor=anchor)
    with sc:
        display(view)
    if _DockNote is None:
        _DockNote = _probe_class()
    note = _DockNote(title=title)
    box = ipywidgets.VBox([note])
    dock = Dock(view, title, sc, note=note, box=box)
    note.observe(dock._state_changed, names="state")
    display(box)
    with contextlib.suppress(AttributeError):
        view._wb_dock = dock
    return dock
