"""Workbench: the views together in tabs, sharing one prompt and the selected cell."""

from __future__ import annotations

from typing import Any

import ipywidgets
import traitlets

from .attention import AttentionView
from .lens import LensView
from .patch import PatchView


class Workbench(ipywidgets.VBox):
    """`Workbench(model, prompt, corrupt=None, target=None, foil=None)`: lens, patching and attention tabs.

    Editing the prompt in any tab recomputes every view; the lens and patching maps share the selected cell.
    Without `corrupt` the patching tab starts in ablation mode on `prompt`; without `target` it scores the
    model's own prediction.
    """

    def __init__(
        self,
        model: Any,
        prompt: str,
        corrupt: str | None = None,
        target: str | None = None,
        foil: str | None = None,
        **kwargs: Any,
    ):
        self.lens = LensView(model, prompt)
        if target is None:
            target = self.lens.pinned[0] if self.lens.pinned else None
        self.patch = PatchView(
            model, prompt, corrupt or "", target=target, foil=foil, mode="patch" if corrupt else "ablate"
        )
        self.attention = AttentionView(model, prompt)
        self.tabs = ipywidgets.Tab(children=[self.lens, self.patch, self.attention])
        for i, name in enumerate(["Logit lens", "Patching", "Attention"]):
            self.tabs.set_title(i, name)
        super().__init__(children=[self.tabs], **kwargs)
        self._links = [
            traitlets.link((self.lens, "prompt"), (self.attention, "prompt")),
            traitlets.link((self.lens, "prompt"), (self.patch, "clean")),
            traitlets.link((self.lens, "selected"), (self.patch, "selected")),
        ]

    @property
    def views(self) -> list:
        return [self.lens, self.patch, self.attention]

    def to_code(self) -> str:
        return self.views[self.tabs.selected_index or 0].to_code()
