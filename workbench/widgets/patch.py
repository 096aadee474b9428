"""PatchView: activation patching (and ablation) by click, drag or sweep."""

from __future__ import annotations

import contextlib
from typing import Any

import traitlets

from .base import WorkbenchWidget, _errors, _ops, check_int, finite, message_error, pack, pack_lens, readable

SITES = ("resid_pre", "resid_post", "attn_out", "mlp_out", "head")
MODES = ("patch", "ablate")
METHODS = ("zero", "mean", "resample")


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
    # target/foil as the model sees them: {"target": {"tokens": [...], "warning": "...", "error": "..."}, ...}
    inputs = traitlets.Dict().tag(sync=True)
    # the clean run's logit lens, drawn in the drag-source grid
    clean_lens = traitlets.Dict().tag(sync=True)

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
        self._sweeps: dict[
            tuple, dict
        ] = {}  # one sweep per (mode, site, method, target, foil): switching keeps them
        self._problems: list[str] = []
        self._problem_kind = "WorkbenchError"
        self._handlers.update(patch=self._on_patch, ablate=self._on_ablate, sweep=self._on_sweep)
        self.observe(self._prompts_changed, names=["clean", "corrupt"])
        self.observe(self._setup_changed, names=["target", "foil", "site", "mode", "method"])
        self._validate()
        self._compute_clean_lens()

    # ---- state
    def _word(self, text: str) -> dict[str, Any]:
        """A target/foil as the model sees it, and what is wrong or surprising about it."""
        info: dict[str, Any] = {"text": text, "tokens": [], "warning": "", "error": ""}
        if not text:
            return info
        try:
            ids = self.model.tokenizer(text, add_special_tokens=False).input_ids
            info["tokens"] = self.model.str_tokens(ids)
            self.model.token_id(text)
        except Exception as exc:  # noqa: BLE001 - shown next to the field and in the error box
            info["error"] = str(exc)
            return info
        if not text[:1].isspace():
            try:
                spaced = self.model.token_id(" " + text)
            except Exception:  # noqa: BLE001 - " word" is not one token: nothing to warn about
                spaced = None
            if spaced is not None:
                info["warning"] = (
                    f"{text!r} has no leading space: it scores the token {text!r}, not {' ' + text!r} "
                    f"(id {spaced}), the word after a space that models usually predict. Type a space first "
                    "if you mean that word."
                )
        return info

    def _validate(self) -> None:
        """Check the inputs as they change (no model run): token lists, equal lengths, one-token target/foil.

        Problems show at once in the error box; when the input becomes valid the error goes away.
        """
        problems: list[str] = []
        kinds: list[str] = []  # which WorkbenchError class each problem is
        tokens: dict[str, list[str]] = {"clean": [], "corrupt": []}
        need_corrupt = self.mode == "patch" or self.method == "resample"
        for name in ("clean", "corrupt"):
            text = getattr(self, name)
            if not text:
                if name == "clean" or need_corrupt:
                    what = "reference" if self.mode == "ablate" else name
                    problems.append(f"The {what} prompt is empty.")
                    kinds.append("TokenizationError")
                continue
            try:
                tokens[name] = self.model.to_str_tokens(text)
            except Exception as exc:  # noqa: BLE001 - shown in the widget
                problems.append(f"{name} prompt: {exc}")
                kinds.append("TokenizationError")
        if (
            self.mode == "patch"
            and tokens["clean"]
            and tokens["corrupt"]
            and len(tokens["clean"]) != len(tokens["corrupt"])
        ):
            problems.append(
                f"The clean prompt is {len(tokens['clean'])} tokens and the corrupt prompt "
                f"{len(tokens['corrupt'])}: patching needs prompts of the same token length (compare the "
                "token strips below and change a word)."
            )
            kinds.append("TokenizationError")
        inputs = {"target": self._word(self.target), "foil": self._word(self.foil)}
        if self._metric is None:
            if not self.target:
                problems.append("PatchView needs a target token (e.g. ' Paris') to score runs.")
                kinds.append("WorkbenchError")
            elif inputs["target"]["error"]:
                problems.append(f"target: {inputs['target']['error']}")
                kinds.append("TokenizationError")
            if self.foil and inputs["foil"]["error"]:
                problems.append(f"foil: {inputs['foil']['error']}")
                kinds.append("TokenizationError")
        for name, value, allowed in (
            ("site", self.site, SITES),
            ("mode", self.mode, MODES),
            ("method", self.method, METHODS),
        ):
            if value not in allowed:
                problems.append(f"Unknown {name} {value!r}: pick one of {', '.join(allowed)}.")
                kinds.append("SiteError" if name == "site" else "WorkbenchError")
        self._problems = problems
        self._problem_kind = kinds[0] if kinds else "WorkbenchError"
        with self.hold_trait_notifications():
            self.tokens_clean = tokens["clean"]
            self.tokens_corrupt = tokens["corrupt"]
            self.inputs = inputs
        if problems:
            self._set_error(f"{self._problem_kind}: " + "\n".join(problems))
        elif self.status == "error" or self.error:
            self._clear_error()

    def _check_ready(self) -> None:
        """Refuse a click or sweep on invalid input, with the same message the inputs show."""
        if self._problems:
            raise getattr(_errors(), self._problem_kind)("\n".join(self._problems))

    def _stale(self) -> None:
        """Inputs changed: results, selection and code of the old inputs must not stay on screen."""
        self.last_result = None
        self.code = ""
        self.result = {}

    def _prompts_changed(self, change: Any) -> None:
        self._sweeps.clear()
        self.sweep = {}
        if change["name"] == "clean":
            self.clean_lens = {}
        self._stale()
        self._validate()
        if change["name"] == "clean":
            self._compute_clean_lens()

    def _setup_changed(self, change: Any) -> None:
        self._stale()
        self.selected = []
        self._validate()
        self.sweep = self._sweeps.get(self._sweep_key(), {})

    def _sweep_key(self) -> tuple:
        return (self.mode, self.site, self.method if self.mode == "ablate" else "", self.target, self.foil)

    def _inputs_key(self) -> tuple:
        return (self.clean, self.corrupt, *self._sweep_key())

    def _compute_clean_lens(self) -> None:
        """The clean run's lens for the drag-source grid (a background job: no progress, no status)."""
        clean = self.clean
        if not self.tokens_clean:
            return
        if getattr(self.model, "remote", False):
            # one request per user action on NDIF: opening a view is not one, so the grid shows the tokens only
            self.clean_lens = {"note": "the clean run's lens is not computed for remote models"}
            return

        def run(progress, cancel):
            return _ops().logit_lens(self.model, clean, top_k=3, cancel=cancel)

        def done(lens):
            if self.clean == clean:
                self.clean_lens = pack_lens(lens)

        def failed(exc):
            if self.clean == clean:
                self.clean_lens = {"note": f"the clean run's lens failed: {readable(exc)}"}

        self.submit("clean lens", "", run, done, slot="clean_lens", quiet=True, failed=failed)

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
        """The (layer, position | head) of a request, checked: integers in range, or a message saying what was wrong."""
        head_site = self.site == "head"
        L = int(self.model.n_layers)
        layer = check_int(content, "layer", 0, L - 1)
        if head_site:
            head = check_int(content, "head", 0, int(self.model.n_heads) - 1)
            pos = None
        else:
            toks = self.tokens_clean if self.mode == "ablate" else self.tokens_corrupt
            if not toks:
                raise message_error("No tokens to patch: fix the prompts first.")
            pos = check_int(content, "position", 0, len(toks) - 1)
            head = None
        return {"layer": layer, "position": pos, "head": head}

    def _ui_cell(self, content: dict, cell: dict) -> list[int]:
        ui = content.get("cell")
        if ui is None:
            return [cell["layer"], cell["head"] if self.site == "head" else cell["position"]]
        if not isinstance(ui, (list, tuple)) or len(ui) != 2:
            raise message_error(f"The view sent cell={ui!r}: it must be [row, column].")
        return [
            check_int({"row": ui[0]}, "row", 0, 10**6, what="cell row"),
            check_int({"col": ui[1]}, "col", 0, 10**6, what="cell column"),
        ]

    def _on_patch(self, content: dict, _buffers: list) -> None:
        ops = _ops()
        self._check_ready()
        cell = self._cell(content)
        extra = {}
        if content.get("source_layer") is not None:
            extra = {
                "source_layer": check_int(content, "source_layer", 0, int(self.model.n_layers) - 1),
                "source_position": check_int(
                    content, "source_position", 0, max(0, len(self.tokens_clean) - 1), optional=True
                ),
            }
        clean, corrupt, site, metric = self.clean, self.corrupt, self.site, self.metric()
        ui_cell = self._ui_cell(content, cell)
        key = self._inputs_key()

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
            if key == self._inputs_key():  # inputs changed while it ran: do not show it for the new ones
                self._show(f"patch {site} {where}", value, lens, site, cell, ui_cell, extra)

        self.submit("patch", str(content.get("id", "")), run, done, slot="click")

    def _on_ablate(self, content: dict, _buffers: list) -> None:
        ops = _ops()
        self._check_ready()
        cell = self._cell(content)
        key = self._inputs_key()
        prompt, ref, site, method, metric = (
            self.clean,
            self.corrupt or None,
            self.site,
            self.method,
            self.metric(),
        )
        ui_cell = self._ui_cell(content, cell)

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
            if key == self._inputs_key():
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
        self._record(label, value, args=self._args())

    def _args(self) -> dict[str, Any]:
        args = {"clean": self.clean, "corrupt": self.corrupt, "target": self.target, "foil": self.foil}
        args.update(site=self.site, mode=self.mode)
        if self.mode == "ablate":
            args["method"] = self.method
        return args

    # ---- sweep
    def _on_sweep(self, content: dict, _buffers: list) -> None:
        ops = _ops()
        self._check_ready()
        skey = self._sweep_key()
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
            if (clean, corrupt) != (self.clean, self.corrupt):
                return  # the prompts changed while it ran: the sweep is of prompts no longer shown
            self.last_result = sw
            normalized = None
            if (
                mode == "patch"
                and finite(sw.clean) is not None
                and finite(sw.corrupt) is not None
                and sw.clean != sw.corrupt
            ):
                normalized = pack(sw.normalized)
            packed = {
                "values": pack(sw.values),
                "normalized": normalized,
                "clean": finite(sw.clean),
                "corrupt": finite(sw.corrupt),
                "axes": list(sw.axes),
                "site": site,
                "mode": mode,
                "method": method,
            }
            self._sweeps[skey] = packed
            if skey == self._sweep_key():
                self.sweep = packed
            label = f"{'patch' if mode == 'patch' else method + '-ablate'} sweep {site}"
            self._record(label, sw, args={**self._args(), "site": site, "mode": mode})

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
