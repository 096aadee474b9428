"""PatchView: activation patching (and ablation) by click, drag or sweep."""

from __future__ import annotations

import contextlib
from typing import Any

import traitlets

from .base import WorkbenchWidget, _ops, finite, pack, pack_lens

SITES = ("resid_pre", "resid_post", "attn_out", "mlp_out", "head")


class PatchView(WorkbenchWidget):
    """`PatchView(model, clean, corrupt, target=" Paris", foil=" Rome", site="resid_pre", mode="patch")`.

    Click a (layer, position) cell — or (layer, head) with site="head" — to patch the clean activation into the
    corrupt run there and see the patched prediction and logit lens; drag a clean-run cell onto a corrupt-run cell to
    patch across positions/layers; "Sweep" fills the map (cancellable). mode="ablate" ablates the clean prompt
    instead (method zero / mean / resample, with `corrupt` as the resample reference).
    The metric is logit_diff(target, foil), or logprob(target) without a foil, or `metric=` any metric.
    """

    _view_kind = traitlets.Unicode("patch").tag(sync=True)
    clean = traitlets.Unicode("").tag(sync=True)
    corrupt = traitlets.Unicode("").tag(sync=True)
    target = traitlets.Unicode("").tag(sync=True)
    foil = traitlets.Unicode("").tag(sync=True)
    site = traitlets.Unicode("resid_pre").tag(sync=True)
    mode = traitlets.Unicode("patch").tag(sync=True)
    method = traitlets.Unicode("zero").tag(sync=True)
    tokens_clean = traitlets.List(traitlets.Unicode()).tag(sync=True)
    tokens_corrupt = traitlets.List(traitlets.Unicode()).tag(sync=True)
    n_layers = traitlets.Int(0).tag(sync=True)
    n_heads = traitlets.Int(0).tag(sync=True)
    sweep = traitlets.Dict().tag(sync=True)
    result = traitlets.Dict().tag(sync=True)

    def __init__(
        self,
        model: Any,
        clean: str,
        corrupt: str = "",
        target: str | None = None,
        foil: str | None = None,
        *,
        site: str = "resid_pre",
        mode: str = "patch",
        method: str = "zero",
        metric: Any = None,
        **kwargs: Any,
    ):
        super().__init__(
            model,
            clean=clean,
            corrupt=corrupt or "",
            target=target or "",
            foil=foil or "",
            site=site,
            mode=mode,
            method=method,
            n_layers=int(model.n_layers),
            n_heads=int(model.n_heads),
            **kwargs,
        )
        self._metric = metric
        self._handlers.update(patch=self._on_patch, ablate=self._on_ablate, sweep=self._on_sweep)
        self.observe(self._prompts_changed, names=["clean", "corrupt"])
        self.observe(self._setup_changed, names=["target", "foil", "site", "mode", "method"])
        self._tokenize()

    # ---- state
    def _tokenize(self) -> None:
        try:
            self.tokens_clean = self.model.to_str_tokens(self.clean) if self.clean else []
            self.tokens_corrupt = self.model.to_str_tokens(self.corrupt) if self.corrupt else []
            self.error = ""
        except Exception as exc:
            self._fail(exc, "")

    def _prompts_changed(self, _change: Any) -> None:
        self._tokenize()
        self.sweep = {}
        self.result = {}

    def _setup_changed(self, change: Any) -> None:
        if change["name"] == "site" and change["new"] not in SITES:
            self.error = f"Unknown site {change['new']!r}: pick one of {', '.join(SITES)}."
            return
        self.result = {}
        self.selected = []

    def metric(self):
        """The metric of the current settings (the user's own `metric=` wins)."""
        ops = _ops()
        if self._metric is not None:
            return self._metric
        if not self.target:
            from ..errors import WorkbenchError

            raise WorkbenchError(
                "PatchView needs target= (a single token, e.g. ' Paris') or metric= to score runs."
            )
        return ops.logit_diff(self.target, self.foil) if self.foil else ops.logprob(self.target)

    # ---- clicks: each becomes one intervention (and the lens of the intervened run)
    def _cell(self, content: dict) -> dict[str, Any]:
        head_site = self.site == "head"
        layer = int(content["layer"])
        pos = content.get("position")
        head = content.get("head")
        return {
            "layer": layer,
            "position": None if head_site or pos is None else int(pos),
            "head": int(head) if head_site and head is not None else None,
        }

    def _on_patch(self, content: dict, _buffers: list) -> None:
        ops = _ops()
        cell = self._cell(content)
        src_layer = content.get("source_layer")
        src_pos = content.get("source_position")
        extra = {}
        if src_layer is not None:
            extra = {
                "source_layer": int(src_layer),
                "source_position": None if src_pos is None else int(src_pos),
            }
        clean, corrupt, site, metric = self.clean, self.corrupt, self.site, self.metric()
        ui_cell = content.get("cell") or [cell["layer"], cell["head"] if site == "head" else cell["position"]]

        def run(progress, cancel):
            value = ops.patch(
                self.model,
                clean,
                corrupt,
                metric=metric,
                site=site,
                **cell,
                **extra,
                progress=progress,
                cancel=cancel,
            )
            lens = None
            iv = None
            with contextlib.suppress(TypeError):
                iv = ops.Intervention(site=site, kind="patch", source=clean, **cell, **extra)
            if iv is not None:
                lens = ops.logit_lens(self.model, corrupt, top_k=5, intervention=iv, cancel=cancel)
            return value, lens

        def done(out):
            value, lens = out
            where = f"L{cell['layer']} " + (
                f"H{cell['head']}" if site == "head" else f"pos {cell['position']}"
            )
            if extra:
                where = f"L{extra['source_layer']} pos {extra['source_position']} → {where}"
            self._show(f"patch {site} {where}", value, lens, site, cell, ui_cell, extra)

        self.submit("patch", str(content.get("id", "")), run, done, slot="click")

    def _on_ablate(self, content: dict, _buffers: list) -> None:
        ops = _ops()
        cell = self._cell(content)
        prompt, ref, site, method, metric = (
            self.clean,
            self.corrupt or None,
            self.site,
            self.method,
            self.metric(),
        )
        ui_cell = content.get("cell") or [cell["layer"], cell["head"] if site == "head" else cell["position"]]

        def run(progress, cancel):
            value = ops.ablate(
                self.model,
                prompt,
                metric=metric,
                site=site,
                **cell,
                method=method,
                reference=ref if method != "zero" else None,
                progress=progress,
                cancel=cancel,
            )
            lens = None
            with contextlib.suppress(Exception):
                iv = ops.Intervention(
                    site=site, kind=method, source=ref if method == "resample" else None, **cell
                )
                lens = ops.logit_lens(self.model, prompt, top_k=5, intervention=iv, cancel=cancel)
            return value, lens

        def done(out):
            value, lens = out
            where = f"L{cell['layer']} " + (
                f"H{cell['head']}" if site == "head" else f"pos {cell['position']}"
            )
            self._show(f"{method}-ablate {site} {where}", value, lens, site, cell, ui_cell, {})

        self.submit("ablate", str(content.get("id", "")), run, done, slot="click")

    def _show(
        self, label: str, value: Any, lens: Any, site: str, cell: dict, ui_cell: list, extra: dict
    ) -> None:
        self.last_result = value
        self.result = {
            "label": label,
            "site": site,
            **cell,
            **extra,
            "cell": [int(ui_cell[0]), int(ui_cell[1])],
            "value": finite(value),
            "clean": finite(getattr(value, "clean", None)),
            "corrupt": finite(getattr(value, "corrupt", None)),
            "top_tokens": [str(t) for t in value.top_tokens],
            "top_probs": pack(value.top_probs),
            "lens": pack_lens(lens) if lens is not None else {},
            "compute_ms": round(self.compute_ms, 1),
        }
        self._record(label, value)

    # ---- sweep
    def _on_sweep(self, content: dict, _buffers: list) -> None:
        ops = _ops()
        clean, corrupt, site, mode, method, metric = (
            self.clean,
            self.corrupt,
            self.site,
            self.mode,
            self.method,
            self.metric(),
        )

        def run(progress, cancel):
            if mode == "ablate":
                return ops.ablate_sweep(
                    self.model,
                    clean,
                    metric=metric,
                    site=site,
                    method=method,
                    reference=(corrupt or None) if method != "zero" else None,
                    progress=progress,
                    cancel=cancel,
                )
            return ops.patch_sweep(
                self.model, clean, corrupt, metric=metric, site=site, progress=progress, cancel=cancel
            )

        def done(sw):
            self.last_result = sw
            normalized = None
            if (
                mode == "patch"
                and finite(sw.clean) is not None
                and finite(sw.corrupt) is not None
                and sw.clean != sw.corrupt
            ):
                normalized = pack(sw.normalized)
            self.sweep = {
                "values": pack(sw.values),
                "normalized": normalized,
                "clean": finite(sw.clean),
                "corrupt": finite(sw.corrupt),
                "axes": list(sw.axes),
                "site": site,
                "mode": mode,
                "method": method,
            }
            self._record(f"{'patch' if mode == 'patch' else method + '-ablate'} sweep {site}", sw)

        self.submit("sweep", str(content.get("id", "")), run, done, slot="sweep")

    # ---- python-side conveniences (what a click does)
    def click(self, layer: int, col: int) -> PatchView:
        """Apply the patch/ablation at heatmap cell (layer, col) as a click does; returns self (see .wait())."""
        head = self.site == "head"
        self.request(
            self.mode if self.mode == "ablate" else "patch",
            layer=layer,
            position=None if head else col,
            head=col if head else None,
            cell=[layer, col],
        )
        return self

    def run_sweep(self) -> PatchView:
        self.request("sweep")
        return self
