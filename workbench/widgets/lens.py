"""LensView: the logit lens as a layers x tokens heatmap, with pinned tokens followed through the layers."""

from __future__ import annotations

from typing import Any

import numpy as np
import traitlets

from .base import WorkbenchWidget, _errors, _ops, pack, pack_lens
from .dataset import answer_text, example_rows, is_dataset, offered_aligns

MAX_PINS = 16  # each pin is one more [L, T] probability and rank map to compute and send


class LensView(WorkbenchWidget):
    """`LensView(model, prompt, top_k=5, pinned=())`: top-1 token in each (layer, position) cell.

    Colour = probability; switch to rank / probability of a pinned token, entropy or KL to the final layer.
    Hover a cell for the top-k; press Enter on a cell (or type a token) to pin it; editing the prompt recomputes.
    A pin must be one token (at most MAX_PINS of them); a pin or prompt that fails is refused and the view keeps
    showing the last prompt that worked (the prompt box goes back to it), with a message saying so.

    `LensView(model, ds)` with a wb.Dataset: the map is `wb.logit_lens(model, ds, align=...)`'s mean over the
    examples (each example's target probability through the lens) by layer and column; hover a cell for
    mean ± sem and n, click it for every example's value (best and worst examples); click an example (or
    `open_example(i)`) for its own single-prompt lens (its target pinned), and back (`open_example(-1)`).
    """

    _view_kind = traitlets.Unicode("lens").tag(sync=True)
    prompt = traitlets.Unicode("").tag(sync=True)
    top_k = traitlets.Int(5).tag(sync=True)
    mode = traitlets.Unicode("prob").tag(sync=True)
    pinned = traitlets.List(traitlets.Unicode()).tag(sync=True)
    focus = traitlets.Unicode("").tag(sync=True)
    data = traitlets.Dict().tag(sync=True)
    hover = traitlets.List().tag(sync=True, echo_update=False)
    # over a dataset ({} for one prompt): {"n", "name", "examples": [{clean, corrupt, target, foil}],
    # "aligns": {align: "" or why not}}
    dataset = traitlets.Dict().tag(sync=True)
    # the dataset lens: {"values": float32 [L, C] mean, "per_example": float32 [N, L, C], "sem": [L, C],
    # "columns", "align", "metric"} as binary buffers; {} until computed
    ds_lens = traitlets.Dict().tag(sync=True)
    align = traitlets.Unicode("exact").tag(sync=True)
    # the example shown as a single prompt, or -1: the dataset
    example = traitlets.Int(-1).tag(sync=True)

    def __init__(
        self,
        model: Any,
        prompt: str,
        *,
        top_k: int = 5,
        pinned: tuple[str, ...] | list[str] = (),
        align: str | None = None,
        **kwargs: Any,
    ):
        ds = prompt if is_dataset(prompt) else None
        if ds is not None:
            aligns = offered_aligns(model, ds, corrupt=False)
            if align is None:  # the first that works: exact, then roles, then right
                align = next((a for a in ("exact", "roles", "right") if not aligns[a]), "exact")
            kwargs["dataset"] = {
                "n": len(ds),
                "name": ds.name,
                "examples": example_rows(model, ds),
                "aligns": aligns,
            }
            kwargs["align"] = align
            prompt = ""
        elif align is not None:
            raise _errors().WorkbenchError("align= applies to LensView over a wb.Dataset, not to one prompt.")
        self._ds = ds
        self._ds_results: dict[str, Any] = {}  # align -> DatasetLensResult
        if isinstance(pinned, str):
            pinned = [pinned]
        pins = list(dict.fromkeys(pinned))
        problem = self._pin_problem(model, pins)
        if problem:
            raise _errors().TokenizationError(problem)
        super().__init__(model, prompt=prompt, top_k=top_k, pinned=pins, **kwargs)
        self._quiet = False
        self._shown: tuple[str, list[str]] | None = None  # (prompt, pins) of the data on screen
        self.observe(self._changed, names=["prompt", "pinned", "top_k"])
        if ds is None:
            self.recompute(wait=True)
            return
        self.observe(self._open_example, names=["example"])
        self.observe(lambda _change: self._quiet or self.recompute_dataset(), names=["align"])
        self.recompute_dataset(wait=True)

    # ---- over a dataset
    @property
    def over_dataset(self) -> bool:
        """Whether the view shows a dataset's mean lens (not one prompt, nor one of its examples opened)."""
        return self._ds is not None and self.example < 0

    @property
    def dataset_examples(self) -> Any:
        """The wb.Dataset this view was given (None for one prompt)."""
        return self._ds

    @property
    def dataset_result(self) -> Any:
        """The DatasetLensResult shown for the current align (None until computed)."""
        return self._ds_results.get(self.align)

    def recompute_dataset(self, wait: bool = False) -> None:
        """`wb.logit_lens(model, ds, align=align, top_k=top_k)` (one ops call), shown as the mean map."""
        ds, align, top_k = self._ds, self.align, self.top_k
        if align in self._ds_results:
            self._show_dataset(self._ds_results[align])
            return

        def run(progress, cancel):
            return _ops().logit_lens(
                self.model, ds, top_k=top_k, align=align, progress=progress, cancel=cancel
            )

        def done(r):
            self._ds_results[align] = r
            if self.align == align:
                self._show_dataset(r)
            self._record(f"lens over {len(ds)} examples (align {align})", r, args={"align": align})

        def failed(exc):
            # the align picker goes back to the map shown (if any), so it never names another alignment
            shown = self.ds_lens.get("align") if self.ds_lens else None
            if shown and shown != self.align:
                self._set_quietly(align=shown)
                return f"align is back to {shown!r}, the map shown."
            return ""

        self.submit("lens", "", run, done, slot="lens", wait=wait, failed=failed)

    def _show_dataset(self, r: Any) -> None:
        if self.over_dataset:
            self.last_result = r
        self.ds_lens = {
            "values": pack(np.asarray(r.values, np.float32)),
            "per_example": pack(np.asarray(r.per_example, np.float32)),
            "sem": pack(np.asarray(r.sem, np.float32)),
            "columns": list(r.columns),
            "align": r.options.get("align", self.align),
            "metric": "target probability"
            if str(r.options.get("metric", "prob()")) == "prob()"
            else str(r.options["metric"]),
        }

    def _open_example(self, change: Any) -> None:
        """Open example i as its single-prompt lens (its clean prompt, its target pinned), or go back (-1)."""
        i = change["new"]
        if i < 0:
            self.selected = []
            r = self._ds_results.get(self.align)
            if r is not None:
                self.last_result = r
            return
        if i >= len(self._ds):
            self.example = -1
            raise _errors().WorkbenchError(f"Example {i} does not exist: the dataset has {len(self._ds)}.")
        e = self._ds[i]
        target = answer_text(self.model, e.target)
        pins = [target] if target and not self._pin_problem(self.model, [target]) else []
        self._set_quietly(prompt=e.clean, pinned=pins, focus=pins[0] if pins else "", selected=[])
        self.recompute()

    def open_example(self, i: int) -> LensView:
        """Show example i of the dataset as its single-prompt lens (clicking it in the list); -1 goes back."""
        self.example = int(i)
        return self

    @staticmethod
    def _pin_problem(model: Any, pins: list[str]) -> str:
        """Why these pins cannot be followed ("" if they can): too many, or not exactly one token each."""
        if len(pins) > MAX_PINS:
            return f"At most {MAX_PINS} pinned tokens (got {len(pins)}): unpin some first."
        for tok in pins:
            if not isinstance(tok, str) or not tok:
                return f"Cannot pin {tok!r}: give a token such as ' Paris'."
            try:
                model.token_id(tok)
            except Exception as exc:  # noqa: BLE001 - the message says what is wrong with the token
                try:
                    pieces = model.str_tokens(model.tokenizer(tok, add_special_tokens=False).input_ids)
                except Exception:  # noqa: BLE001
                    pieces = []
                if len(pieces) > 1:
                    return (
                        f"Cannot pin {tok!r}: it is {len(pieces)} tokens {pieces}, and a pin follows one token "
                        f"(pin a piece, e.g. {pieces[0]!r})."
                    )
                return f"Cannot pin {tok!r}: {exc}"
        return ""

    def _set_quietly(self, **traits: Any) -> None:
        self._quiet = True
        try:
            with self.hold_trait_notifications():
                for k, v in traits.items():
                    setattr(self, k, v)
        finally:
            self._quiet = False

    def _changed(self, change: Any) -> None:
        if self._quiet:
            return
        if (
            self.over_dataset
        ):  # the mean map: top_k is part of its computation, pins and prompt are an example's
            if change["name"] == "top_k":
                self._ds_results.clear()
                self.recompute_dataset()
            return
        if change["name"] == "pinned":
            new = list(dict.fromkeys(t for t in change["new"] if t != ""))
            problem = self._pin_problem(self.model, new)
            if problem:  # refuse the pin: the list goes back to the pins that work, and the message says why
                old = list(change["old"])
                focus = self.focus if self.focus in old else (old[0] if old else "")
                self._set_quietly(pinned=old, focus=focus)
                self._set_error(problem + " The pin was not added.")
                return
            if new != list(change["new"]):
                self._set_quietly(pinned=new)
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
            data["prompt"] = prompt  # the view titles (and exports) what it shows, not what the box holds
            focus = self.focus if self.focus in data["pinned"] else next(iter(data["pinned"]), "")
            self._set_quietly(pinned=pins, data=data, focus=focus)
            self._shown = (prompt, list(pins))
            self._record(f"lens {prompt[:40]!r}", lens, args={"prompt": prompt, "pinned": list(pins)})

        def failed(exc):
            # never leave the prompt box (or the pins) describing other data than the heatmap shows
            if self._shown is None:
                self._set_quietly(data={})
                return "Nothing to show: fix the prompt and press Enter."
            shown_prompt, shown_pins = self._shown
            notes = []
            if self.prompt != shown_prompt:
                notes.append(f"The prompt box is back to the prompt shown: {shown_prompt[:80]!r}.")
            if list(self.pinned) != shown_pins:
                notes.append("The pins are back to those shown.")
            focus = self.focus if self.focus in shown_pins else (shown_pins[0] if shown_pins else "")
            self._set_quietly(prompt=shown_prompt, pinned=shown_pins, focus=focus)
            return " ".join(notes)

        self.submit("lens", "", run, done, slot="lens", wait=wait, failed=failed)
