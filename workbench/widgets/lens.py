"""LensView: the logit lens as a layers x tokens heatmap, with pinned tokens followed through the layers."""

from __future__ import annotations

from typing import Any

import traitlets

from .base import WorkbenchWidget, _ops, pack_lens


class LensView(WorkbenchWidget):
    """`LensView(model, prompt, top_k=5, pinned=())`: top-1 token in each (layer, position) cell.

    Colour = probability; switch to rank / probability of a pinned token, entropy or KL to the final layer.
    Hover a cell for the top-k; press Enter on a cell (or type a token) to pin it; editing the prompt recomputes.
    """

    _view_kind = traitlets.Unicode("lens").tag(sync=True)
    prompt = traitlets.Unicode("").tag(sync=True)
    top_k = traitlets.Int(5).tag(sync=True)
    mode = traitlets.Unicode("prob").tag(sync=True)
    pinned = traitlets.List(traitlets.Unicode()).tag(sync=True)
    focus = traitlets.Unicode("").tag(sync=True)
    data = traitlets.Dict().tag(sync=True)
    hover = traitlets.List().tag(sync=True, echo_update=False)

    def __init__(
        self,
        model: Any,
        prompt: str,
        *,
        top_k: int = 5,
        pinned: tuple[str, ...] | list[str] = (),
        **kwargs: Any,
    ):
        super().__init__(model, prompt=prompt, top_k=top_k, pinned=list(pinned), **kwargs)
        self._quiet = False
        self.observe(self._changed, names=["prompt", "pinned", "top_k"])
        self.recompute(wait=True)

    def _changed(self, _change: Any) -> None:
        if not self._quiet:
            self.recompute()

    def recompute(self, wait: bool = False) -> None:
        """Run the logit lens for the current prompt (one ops call)."""
        prompt, top_k, pinned = self.prompt, self.top_k, list(self.pinned)

        def run(progress, cancel):
            lens = _ops().logit_lens(
                self.model, prompt, top_k=top_k, tokens=pinned or None, progress=progress, cancel=cancel
            )
            if pinned:
                return lens, pinned, pack_lens(lens, pinned)
            # follow the model's own prediction when nothing is pinned, so rank/pinned modes have a token
            tid, text = int(lens.top_ids[-1, -1, 0]), str(lens.top_tokens[-1][-1][0])
            data = pack_lens(lens, [text], [tid])
            try:
                pins = [text] if self.model.token_id(text) == tid else []
            except Exception:  # a byte fragment that does not re-tokenize: show it, but do not pin it by text
                pins = []
            return lens, pins, data

        def done(out):
            lens, pins, data = out
            self.last_result = lens
            self._quiet = True
            try:
                with self.hold_trait_notifications():
                    self.pinned = pins
                    self.data = data
                    if self.focus not in data["pinned"]:
                        self.focus = next(iter(data["pinned"]), "")
            finally:
                self._quiet = False
            self._record(f"lens {prompt[:40]!r}", lens)

        self.submit("lens", "", run, done, slot="lens", wait=wait)
