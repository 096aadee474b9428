"""The contract between the Python views and their TypeScript: trait names, and the custom messages each side
sends and reads, enumerated on both sides so that neither can drift (no message sent that nobody reads, no trait
read under another name)."""

from __future__ import annotations

import re
from pathlib import Path

import anywidget
import pytest

import workbench as wb
import workbench.testing
from workbench.widgets import (
    AttentionView,
    CausalTraceView,
    CircuitView,
    DatasetView,
    FunctionVectorView,
    LensView,
    PatchView,
    SteerView,
    WorkbenchWidget,
)

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "js" / "src"
WIDGETS = ROOT / "workbench" / "widgets"
CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
FV_PAIRS = [
    ("cat", "dog"),
    ("dog", "cat"),
    ("mat", "log"),
    ("log", "mat"),
    ("Mary", "John"),
    ("John", "Mary"),
]
VIEWS = {
    "Lens": LensView,
    "Patch": PatchView,
    "Attention": AttentionView,
    "Dataset": DatasetView,
    "Tracing": CausalTraceView,
    "Steer": SteerView,
    "FunctionVector": FunctionVectorView,
    "Circuit": CircuitView,
}


def _interfaces() -> dict[str, set[str]]:
    """Field names of every `export interface <Name>Traits` in js/src/traits.ts."""
    text = (SRC / "traits.ts").read_text()
    out = {}
    for name, body in re.findall(r"export interface (\w+)Traits(?: extends \w+)? \{\n(.*?)\n\}", text, re.S):
        out[name] = set(re.findall(r"^  (\w+)\??:", body, re.M))
    return out


def _synced(cls: type) -> set[str]:
    return set(cls.class_traits(sync=True)) - set(anywidget.AnyWidget.class_traits(sync=True))


def _ts_list(text: str, name: str) -> list[str]:
    m = re.search(rf"{name}: \[(.*?)\]", text, re.S) or re.search(rf"{name} = \[(.*?)\]", text, re.S)
    assert m, f"no list {name} in protocol.ts"
    return re.findall(r'"(\w+)"', m.group(1))


def test_trait_interfaces_name_the_python_traitlets_exactly():
    ifaces = _interfaces()
    base = ifaces["Base"]
    assert base == _synced(WorkbenchWidget)
    assert set(ifaces) == {"Base", *VIEWS}
    for name, cls in VIEWS.items():
        assert ifaces[name] | base == _synced(cls), name
        assert not ifaces[name] & base, f"{name}Traits repeats a base trait"


def test_every_message_python_sends_is_handled_by_the_view():
    protocol = (SRC / "protocol.ts").read_text()
    handled = _ts_list(protocol, "KERNEL_MESSAGES")
    sent = []
    for path in sorted(WIDGETS.glob("*.py")):
        text = path.read_text()
        calls = re.findall(r"self\.send\(", text)
        kinds = re.findall(r'self\.send\(\s*\{\s*"kind":\s*"(\w+)"', text)
        assert len(calls) == len(kinds), (
            f"{path.name}: a send() whose kind is not a literal cannot be checked"
        )
        sent += kinds
    assert sorted(set(sent)) == sorted(handled)
    # the view's handler table has exactly these keys (a mapped type over KernelKind; vitest checks the object)
    view = (SRC / "view.ts").read_text()
    table = re.search(r"readonly kernelHandlers: KernelHandlers = \{(.*?)\n  \};", view, re.S)
    assert table and sorted(re.findall(r"^    (\w+): \(", table.group(1), re.M)) == sorted(handled)


@pytest.fixture(scope="module")
def views():
    model = workbench.testing.tiny_model("llama")
    circuit_ds = wb.Dataset([CLEAN], [CORRUPT], target=[" Mary"], foil=[" John"])
    out = {
        "lens": LensView(model, CLEAN),
        "patch": PatchView(model, CLEAN, CORRUPT, target=" Mary", foil=" John"),
        "attention": AttentionView(model, CLEAN),
        "dataset": DatasetView(wb.Dataset([CLEAN, CORRUPT], target=" Mary"), model),
        "tracing": CausalTraceView(model, CLEAN, subject="Mary", samples=2, window=3),
        "steer": SteerView(model, CLEAN, positive=" Mary", negative=" John", max_new_tokens=2),
        "function_vector": FunctionVectorView(
            model, wb.Task(FV_PAIRS, template="{x} -> {y}\n"), n_shots=2, n_prompts=2, top_n=3, eval_prompts=4
        ),
        "circuit": CircuitView(
            model, circuit_ds, wb.edge_attribution(model, circuit_ds, metric=wb.logit_diff()), n=5
        ),
    }
    for v in out.values():
        v.wait()
    return out


def test_every_request_the_view_sends_has_a_python_handler(views):
    protocol = (SRC / "protocol.ts").read_text()
    common = _ts_list(protocol, "common")
    for kind, view in views.items():
        assert sorted(view._handlers) == sorted(common + _ts_list(protocol, kind)), kind
    # the TypeScript sends only the kinds it declares, and sends every kind it declares
    declared = set(common) | {k for kind in views for k in _ts_list(protocol, kind)}
    sent: set[str] = set()
    for path in SRC.glob("*.ts"):
        text = path.read_text()
        assert path.name == "view.ts" or "model.send(" not in text, f"{path.name} sends around View.send"
        for first in re.findall(r"\b(?:send|sendCommon)\(([^,]*?),", text):
            sent |= set(re.findall(r'"(\w+)"', first))
    assert sent == declared, sent ^ declared


def test_the_receiver_picker_offers_the_receiver_sites_python_accepts():
    from workbench.widgets.patch import RECEIVER_SITES

    text = (SRC / "patch.ts").read_text()
    block = re.search(r"export const RECEIVER_SITES: \[string, string\]\[\] = \[(.*?)\n\];", text, re.S)
    assert block, "no RECEIVER_SITES in patch.ts"
    assert re.findall(r'^  \["(\w+)",', block.group(1), re.M) == list(RECEIVER_SITES)


def test_the_lens_switcher_offers_the_lenses_python_runs(views):
    """Issue 15: the switcher's options are LENSES in order, every lens has an availability entry, and the one
    request the lens view adds ("generate") is declared in protocol.ts and handled in Python."""
    from workbench.widgets.lens import LENSES

    text = (SRC / "lens.ts").read_text()
    block = re.search(r"export const LENS_OPTIONS: \[LensKind, string\]\[\] = \[(.*?)\n\];", text, re.S)
    assert block, "no LENS_OPTIONS in lens.ts"
    assert re.findall(r'^  \["(\w+)",', block.group(1), re.M) == list(LENSES)
    kinds = re.search(r"export type LensKind = (.*?);", (SRC / "traits.ts").read_text())
    assert kinds and re.findall(r'"(\w+)"', kinds.group(1)) == list(LENSES)
    assert sorted(views["lens"].lenses) == sorted(LENSES)
    assert _ts_list((SRC / "protocol.ts").read_text(), "lens") == ["generate"]
    assert 'this.send("generate", ' in text and "max_new_tokens" in text
