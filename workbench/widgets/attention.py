"""AttentionView: a layers x heads grid of pattern thumbnails; a click opens one head's full pattern. A detector
chosen in the view (induction, previous-token, duplicate-token) tints each thumbnail by that head's score
(`wb.head_detectors` on repeated random tokens, computed in the kernel on first use) and lists the top heads."""

from __future__ import annotations

from typing import Any

import numpy as np
import traitlets

from .base import WorkbenchWidget, _ops, check_int, pack

THUMB = 16
DETECTOR_TOP = 10  # heads listed beside the grid


def thumbnails(patterns: np.ndarray, size: int = THUMB) -> np.ndarray:
    """Max-pool [L, H, T, T] patterns to [L, H, S, S] (S = min(T, size)) for the grid; display only."""
    T = patterns.shape[-1]
    S = min(T, size)
    starts = (np.arange(S) * T) // S
    pooled = np.maximum.reduceat(patterns, starts, axis=2)
    pooled = np.maximum.reduceat(pooled, starts, axis=3)
    return pooled.astype(np.float32)


class AttentionView(WorkbenchWidget):
    """`AttentionView(model, prompt)`: click a head thumbnail to see its query x key pattern and head view."""

    _view_kind = traitlets.Unicode("attention").tag(sync=True)
    prompt = traitlets.Unicode("").tag(sync=True)
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    n_layers = traitlets.Int(0).tag(sync=True)
    n_heads = traitlets.Int(0).tag(sync=True)
    thumbs = traitlets.Dict().tag(sync=True)
    pattern = traitlets.Dict().tag(sync=True)
    # "" (no colouring), "induction", "previous_token" or "duplicate_token": set by the view's selector
    detector = traitlets.Unicode("").tag(sync=True)
    # the chosen detector's scores: {name, scores: float32 [L, H], top: [[layer, head, score], ...], source}
    detector_scores = traitlets.Dict().tag(sync=True)

    def __init__(self, model: Any, prompt: str, *, detector: str = "", **kwargs: Any):
        super().__init__(
            model, prompt=prompt, n_layers=int(model.n_layers), n_heads=int(model.n_heads), **kwargs
        )
        self._patterns: np.ndarray | None = None
        self._shown: str | None = None  # the prompt of the patterns on screen
        self._quiet = False
        self._detectors: Any = None  # HeadDetectorScores, computed once on first use
        self._handlers["head"] = self._on_head
        self.observe(lambda _c: None if self._quiet else self.recompute(), names=["prompt"])
        self.observe(self._on_detector, names=["detector"])
        self.recompute(wait=True)
        if detector:
            self._quiet = True
            try:
                self.detector = detector
            finally:
                self._quiet = False
            self._show_detector(wait=True)

    # ---- head detectors
    def show_detector(self, name: str) -> AttentionView:
        """Colour the thumbnails by a detector's scores ("induction", "previous_token", "duplicate_token"; "" for
        none), as the view's selector does."""
        self.detector = name
        return self

    def _on_detector(self, change: dict) -> None:
        if self._quiet:
            return
        self._show_detector(previous=change.get("old", ""))

    def _show_detector(self, wait: bool = False, previous: str = "") -> None:
        from ..ops.head_detectors import detector_name

        name = self.detector
        if not name:
            self.detector_scores = {}
            return
        try:
            key = detector_name(name)
        except Exception as exc:
            self._reset_detector(previous)
            self._fail(exc)
            return
        if self._detectors is not None:
            self._send_detector(key)
            return

        def run(progress, cancel):
            return _ops().head_detectors(self.model, progress=progress, cancel=cancel)

        def done(scores):
            self._detectors = scores
            current = self.detector
            if current:
                self._send_detector(detector_name(current))

        def failed(exc):
            self._reset_detector(previous)
            return "The detector selector is back to " + (repr(previous) if previous else "none") + "."

        self.submit("head detectors", "", run, done, slot="detectors", wait=wait, failed=failed)

    def _reset_detector(self, previous: str) -> None:
        self._quiet = True
        try:
            self.detector = previous
        finally:
            self._quiet = False
        if not previous:
            self.detector_scores = {}

    def _send_detector(self, key: str) -> None:
        scores = self._detectors
        o = scores.options
        self.detector_scores = {
            "name": key,
            "scores": pack(scores[key]),
            "top": [[layer, head, float(v)] for (layer, head), v in scores.top(key, DETECTOR_TOP)],
            "source": f"repeated random tokens: {o.get('n_seqs')} sequences of 2 x {o.get('seq_len')} (seed {o.get('seed')})",
        }
        self._clear_error()

    def recompute(self, wait: bool = False) -> None:
        prompt = self.prompt

        def failed(exc):
            # the prompt box must not describe other data than the grid shows
            if self._shown is None or self.prompt == self._shown:
                return ""
            self._quiet = True
            try:
                self.prompt = self._shown
            finally:
                self._quiet = False
            return f"The prompt box is back to the prompt shown: {self._shown[:80]!r}."

        def run(progress, cancel):
            return _ops().attention(self.model, prompt, progress=progress, cancel=cancel)

        def done(attn):
            self.last_result = attn
            self._patterns = np.asarray(attn.patterns, dtype=np.float32)
            with self.hold_trait_notifications():
                self.tokens = list(attn.tokens)
                self.thumbs = pack(thumbnails(self._patterns))
                self.pattern = {}
            self.code = attn.to_code()
            self._shown = prompt
            sel = list(self.selected)
            if (
                len(sel) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) for x in sel)
                and 0 <= sel[0] < self.n_layers
                and 0 <= sel[1] < self.n_heads
            ):
                self._send_head(*sel)

        self.submit("attention", "", run, done, slot="attention", wait=wait, failed=failed)

    def _send_head(self, layer: int, head: int) -> None:
        assert self._patterns is not None
        self.pattern = {
            "layer": int(layer),
            "head": int(head),
            "tokens": list(self.tokens),
            "data": pack(self._patterns[layer, head]),
        }

    def _on_head(self, content: dict, _buffers: list) -> None:
        from ..errors import SiteError

        try:
            layer = check_int(content, "layer", 0, self.n_layers - 1)
            head = check_int(content, "head", 0, self.n_heads - 1)
        except Exception as exc:
            raise SiteError(
                f"No such head: {exc} (layers 0..{self.n_layers - 1}, heads 0..{self.n_heads - 1})."
            ) from None
        self.selected = [layer, head]
        if self._patterns is not None:
            self._send_head(layer, head)
            self._clear_error()  # a success replaces an old error banner
            self.status = "done"
        else:
            self.recompute()

    def open_head(self, layer: int, head: int) -> AttentionView:
        """Open one head's full pattern, as a click on its thumbnail does."""
        self.request("head", layer=layer, head=head)
        return self
