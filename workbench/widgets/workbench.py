"""Workbench: the views together in tabs, sharing one prompt and the selected cell."""

from __future__ import annotations

from typing import Any

import ipywidgets
import traitlets

from .attention import AttentionView
from .dataset import DatasetView, answer_text, is_dataset
from .lens import LensView
from .patch import PatchView


class Workbench(ipywidgets.VBox):
    """`Workbench(model, prompt, corrupt=None, target=None, foil=None, dataset=None)`: lens, patching and attention
    tabs, and a Dataset tab when given a dataset.

    Editing the prompt in any tab recomputes every view; the lens and patching maps share the selected cell.
    Without `corrupt` the patching tab starts in ablation mode on `prompt`; without `target` it scores the
    model's own prediction. `Workbench(model, ds)` with a wb.Dataset: the patching tab is over the dataset (its
    mean map), the lens and attention tabs show its first example, and the Dataset tab lists the examples;
    `dataset=ds` next to a prompt adds the Dataset tab only.
    """

    def __init__(
        self,
        model: Any,
        prompt: Any,
        corrupt: str | None = None,
        target: str | None = None,
        foil: str | None = None,
        *,
        dataset: Any = None,
        **kwargs: Any,
    ):
        over = is_dataset(prompt)
        if over:
            dataset = prompt
            first = dataset[0]
            prompt, target = first.clean, answer_text(model, first.target) or target
        self.lens = LensView(model, prompt)
        if target is None:
            target = self.lens.pinned[0] if self.lens.pinned else None
        if over:
            self.patch = PatchView(model, dataset)
        else:
            self.patch = PatchView(
                model, prompt, corrupt or "", target=target, foil=foil, mode="patch" if corrupt else "ablate"
            )
        self.attention = AttentionView(model, prompt)
        self.dataset = DatasetView(dataset, model) if dataset is not None else None
        children: list[Any] = [self.lens, self.patch, self.attention]
        names = ["Logit lens", "Patching", "Attention"]
        if self.dataset is not None:
            children.append(self.dataset)
            names.append("Dataset")
        self.tabs = ipywidgets.Tab(children=children)
        for i, name in enumerate(names):
            self.tabs.set_title(i, name)
        super().__init__(children=[self.tabs], **kwargs)
        self._links = [traitlets.link((self.lens, "prompt"), (self.attention, "prompt"))]
        if not over:  # over a dataset the patching tab has no single prompt to share
            self._links += [
                traitlets.link((self.lens, "prompt"), (self.patch, "clean")),
                traitlets.link((self.lens, "selected"), (self.patch, "selected")),
            ]

    @property
    def views(self) -> list:
        return [self.lens, self.patch, self.attention] + ([self.dataset] if self.dataset is not None else [])

    def to_code(self) -> str:
        return self.views[self.tabs.selected_index or 0].to_code()
