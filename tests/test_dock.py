"""`view.dock()` without a browser: its errors and fallbacks (the panel itself: tests/browser/test_dock.py)."""

from __future__ import annotations

import sys
import types

import pytest

import workbench as wb
from workbench.widgets import dock as dock_mod

from .conftest import CLEAN, tiny


@pytest.fixture(scope="module")
def view():
    return wb.LensView(tiny("llama"), CLEAN)


def test_every_view_has_dock(view):
    assert callable(view.dock)
    assert wb.PatchView.dock is wb.LensView.dock is wb.AttentionView.dock


def test_no_kernel_is_a_clear_error(view):
    with pytest.raises(wb.WorkbenchError, match="no IPython kernel.*save_html"):
        view.dock()


def test_bad_anchor(view):
    with pytest.raises(wb.WorkbenchError, match="anchor='left'.*split-right"):
        view.dock(anchor="left")


def test_marimo_names_mo_ui_anywidget(view, monkeypatch):
    fake = types.SimpleNamespace(running_in_notebook=lambda: True)
    monkeypatch.setitem(sys.modules, "marimo", fake)
    with pytest.raises(wb.WorkbenchError, match=r"mo\.ui\.anywidget\(view\)"):
        view.dock()


@pytest.mark.parametrize(
    "env, module, reason",
    [
        ({"VOILA_KERNEL_ID": "k"}, None, "Voila"),
        ({"VSCODE_PID": "1"}, None, "VS Code"),
        ({}, "google.colab", "Colab"),
    ],
)
def test_known_front_ends_without_a_side_panel(monkeypatch, env, module, reason):
    for k in ("VOILA_KERNEL_ID", "VOILA_REQUEST_URL", "VOILA_BASE_URL", "VSCODE_PID"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if module:
        monkeypatch.setitem(sys.modules, module, types.ModuleType(module))
    assert reason in dock_mod._no_side_panel()


def test_inline_fallback_shows_the_view(view, monkeypatch):
    """With a kernel but no side panel (here: Voila), the note and the view are displayed inline."""
    shown = []
    monkeypatch.setenv("VOILA_KERNEL_ID", "k")
    monkeypatch.setattr(dock_mod, "_ipython", lambda: types.SimpleNamespace(kernel=object(), user_ns={}))
    monkeypatch.setattr("IPython.display.display", lambda *a, **k: shown.append(a[0]))
    d = view.dock(title="x")
    assert d.state == "inline" and not d.docked and "Voila" in d.reason
    assert shown[-1] is view
    assert "Voila" in shown[0]["text/plain"]
    d.close()
    assert d.state == "closed"
