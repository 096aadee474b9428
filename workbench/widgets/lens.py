"""LensView: the logit lens as a layers x tokens heatmap, with pinned tokens followed through the layers."""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import numpy as np
import traitlets

from .base import WorkbenchWidget, _errors, _ops, check_int, id_text, pack, pack_lens
from .dataset import answer_text, example_rows, is_dataset, offered_aligns

MAX_PINS = 16  # each pin is one more [L, T] probability and rank map to compute and send
LENSES = ("logit", "tuned", "patchscope", "future")
IDENTITY_PROMPT = "cat -> cat\n1135 -> 1135\nhello -> hello\n?"  # workbench.ops.patchscope's default
NO_TUNED = (
    "No tuned lens given: train one with wb.tuned_lens(model) and pass tuned=... (or set view.tuned = tl)."
)
FUTURE_METHODS = ("fixed", "learned")
MAX_FUTURE = 8
MAX_NEW_TOKENS = 256


def _accepts(fn: Any, name: str) -> bool:
    """Whether `fn` takes a keyword `name` (or **kwargs)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _run_op(fn: Any, *args: Any, progress: Any, cancel: Any, **kwargs: Any) -> Any:
    """Call an op with progress/cancel when it takes them (the lazily imported ops may not)."""
    if _accepts(fn, "progress"):
        kwargs["progress"] = progress
    if _accepts(fn, "cancel"):
        kwargs["cancel"] = cancel
    return fn(*args, **kwargs)


def pack_future(fl: Any) -> dict[str, Any]:
    """A FutureLensResult (top_ids [L, T, n_future, k], top_tokens, accuracy [L, n_future]) as the grid's data:
    the t+1 step's top-k as the lens arrays (so hover/colour work as for a lens), and under "future" the top-1
    of every step, their probabilities (when the result has them) and the accuracy by layer."""
    ids = np.asarray(fl.top_ids)
    if ids.ndim != 4:
        raise _errors().WorkbenchError(
            f"A Future Lens result has top_ids [layers, positions, n_future, k]; got shape {ids.shape}."
        )
    n_layers, n_tokens, n_future, _k = ids.shape
    probs = getattr(fl, "top_probs", None)
    probs = None if probs is None else np.asarray(probs, np.float32)
    nan = np.full((n_layers, n_tokens), np.nan, np.float32)
    future: dict[str, Any] = {"ids": pack(ids[..., 0]), "n": int(n_future)}
    if probs is not None and probs.shape == ids.shape:
        future["probs"] = pack(probs[..., 0])
    acc = getattr(fl, "accuracy", None)
    if acc is not None and np.shape(acc) == (n_layers, n_future):
        future["accuracy"] = pack(np.asarray(acc, np.float32))
    options = getattr(fl, "options", {}) or {}
    future["method"] = str(options.get("method", ""))
    return {
        "tokens": list(fl.tokens),
        "top_ids": pack(ids[:, :, 0, :]),
        "top_probs": pack(
            probs[:, :, 0, :]
            if probs is not None and probs.shape == ids.shape
            else np.full(ids.shape[:2] + ids.shape[3:], np.nan, np.float32)
        ),  # fmt: skip
        "entropy": pack(nan),
        "kl": pack(nan),
        "id_text": id_text(ids, fl.top_tokens),
        "pinned": {},
        "future": future,
    }


def pack_generation(g: Any) -> dict[str, Any]:
    """A GenerationLens as the `generation` trait: the generated tokens and each one's commit layer (first layer
    from which it stays top-1), confident layer (first with p > 0.5) and probability at every layer."""
    return {
        "prompt": g.prompt,
        "text": g.text,
        "tokens": [str(t) for t in g.tokens],
        "commit_layer": pack(np.asarray(g.commit_layer, np.int32)),
        "confident_layer": pack(np.asarray(g.confident_layer, np.int32)),
        "prob": pack(np.asarray(g.prob, np.float32)),
        "n_prompt": int(g.prompt_tokens),
        "n_layers": int(np.shape(g.prob)[0]),
        "stopped_at_eos": bool(g.options.get("stopped_at_eos", False)),
    }


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

    The lens switcher (`lens=`, a trait) reads the same grid (hover, selection and pins kept) through another
    decoder: "logit" (`wb.logit_lens`), "tuned" (`wb.logit_lens(model, prompt, lens=tuned)` with the TunedLens
    given as `tuned=` or `view.tuned = tl`), "patchscope" (`wb.patchscope(model, prompt,
    target_prompt=target_prompt)`: the target prompt is editable in the view) and "future" (`wb.future_lens(model,
    prompt, n_future=n_future, method=future_method)`: each cell shows the next n_future tokens). A lens that
    cannot run says why in `lenses` (and its option in the view is disabled with that text as its tooltip).
    Each lens's last grid is kept: switching back shows it at once. A failed run keeps the grid shown, and the
    controls go back to what it shows.

    `generate()` (the "generate" button; `max_new_tokens`) runs `wb.generation_lens`: the generated tokens appear
    as a strip under the grid, each coloured by the layer where it committed (`generation`), and the logit grid
    is extended over the generated positions (`generation_lens(...).lens`). Editing the prompt drops it.
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
    # the lens switcher: which decoder reads the grid ("logit", "tuned", "patchscope", "future")
    lens = traitlets.Unicode("logit").tag(sync=True)
    # {lens: "" when it can run, else why not (the option's tooltip)}
    lenses = traitlets.Dict().tag(sync=True)
    target_prompt = traitlets.Unicode(IDENTITY_PROMPT).tag(sync=True)
    n_future = traitlets.Int(3).tag(sync=True)
    future_method = traitlets.Unicode("fixed").tag(sync=True)
    max_new_tokens = traitlets.Int(20).tag(sync=True)
    # the generation lens of the prompt ({} until "generate"): see pack_generation
    generation = traitlets.Dict().tag(sync=True)

    def __init__(
        self,
        model: Any,
        prompt: str,
        *,
        top_k: int = 5,
        pinned: tuple[str, ...] | list[str] = (),
        align: str | None = None,
        lens: Any = "logit",
        tuned: Any = None,
        target_prompt: str = IDENTITY_PROMPT,
        n_future: int = 3,
        future_method: str = "fixed",
        max_new_tokens: int = 20,
        **kwargs: Any,
    ):
        if not isinstance(lens, str):  # LensView(model, prompt, lens=tl): a TunedLens given as the lens
            tuned, lens = lens, "tuned"
        self._tuned = tuned
        problem = self._control_problem(lens, n_future, future_method, max_new_tokens)
        if problem:
            raise _errors().WorkbenchError(problem)
        why_not = self._availability().get(lens, "")
        if why_not:
            raise _errors().WorkbenchError(f"lens={lens!r} cannot run: {why_not}")
        ds = prompt if is_dataset(prompt) else None
        if ds is not None and lens != "logit":
            raise _errors().WorkbenchError(
                f"lens={lens!r} reads one prompt: LensView over a wb.Dataset shows the logit lens's mean (open an "
                "example, then switch the lens)."
            )
        kwargs.update(
            lens=lens,
            target_prompt=target_prompt,
            n_future=n_future,
            future_method=future_method,
            max_new_tokens=max_new_tokens,
            lenses=self._availability(),
        )
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
        # the controls (prompt, pins, lens, ...) of the data on screen
        self._shown: dict[str, Any] | None = None
        self._grids: dict[str, tuple[tuple, Any, list[str], dict]] = {}  # lens -> (key, result, pins, data)
        self._gen: Any = None  # the GenerationLens of `generation`
        self._handlers["generate"] = self._on_generate
        self.observe(
            self._changed,
            names=["prompt", "pinned", "top_k", "lens", "target_prompt", "n_future", "future_method"],
        )
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
        # One comm message: the example's prompt and pins with the status of the run they start (or the kept grid).
        # Sent apart, the front end showed the example's prompt beside the dataset's stale "done" and an empty grid
        # until the "running" update came (a check of "done" then read the grid before it was drawn).
        with self.hold_sync():
            self._set_quietly(prompt=e.clean, pinned=pins, focus=pins[0] if pins else "", selected=[])
            kept = self._kept_grid()
            if kept is not None:
                self._show(*kept)
                return
            self.status, self.error, self.progress = "running", "", 0.0
            self.progress_text = "queued" if not self.runner.idle() else ""
        self.recompute()  # submitted after the message is sent: the run's own updates come after it

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

    @property
    def generation_result(self) -> Any:
        """The GenerationLens shown as the strip (None until "generate", and after the prompt changes)."""
        return self._gen

    # ---- the lens switcher
    @property
    def tuned(self) -> Any:
        """The TunedLens the "tuned" lens reads through (None: that lens is offered disabled, saying how to get one)."""
        return self._tuned

    @tuned.setter
    def tuned(self, value: Any) -> None:
        self._tuned = value
        self._grids.pop("tuned", None)
        self.lenses = self._availability()
        if self.lens == "tuned":
            if value is None:
                self.lens = "logit"
            else:
                self.recompute()

    def _availability(self) -> dict[str, str]:
        """{lens: "" if it can run, else why not}."""
        ops = _ops()
        out = {"logit": "", "patchscope": ""}
        if self._tuned is not None:
            out["tuned"] = (
                ""
                if _accepts(ops.logit_lens, "lens")
                else "This version's wb.logit_lens has no lens= (the tuned lens is not in it): update Workbench."
            )
        else:
            out["tuned"] = NO_TUNED
        out["future"] = (
            ""
            if hasattr(ops, "future_lens")
            else "wb.future_lens is not in this version of Workbench: update it to read states with Future Lens."
        )
        return out

    def _control_problem(self, lens: Any, n_future: Any, method: Any, max_new: Any) -> str:
        if lens not in LENSES:
            return f"lens={lens!r} is not a lens: choose one of {', '.join(map(repr, LENSES))}."
        if isinstance(n_future, bool) or not isinstance(n_future, int) or not 1 <= n_future <= MAX_FUTURE:
            return f"n_future={n_future!r}: Future Lens reads 1..{MAX_FUTURE} tokens ahead (give e.g. n_future=3)."
        if method not in FUTURE_METHODS:
            return f"future_method={method!r}: choose 'fixed' (a generic context) or 'learned' (a trained prompt)."
        if isinstance(max_new, bool) or not isinstance(max_new, int) or not 1 <= max_new <= MAX_NEW_TOKENS:
            return f"max_new_tokens={max_new!r}: generate 1..{MAX_NEW_TOKENS} tokens (give e.g. 20)."
        return ""

    def _key(self) -> tuple:
        """What the grid of the current lens depends on (a kept grid with this key is shown as it is)."""
        lens, pins = self.lens, tuple(self.pinned)
        base = (lens, self.prompt, self.top_k)
        if lens == "logit":
            gen = self._gen if self._gen is not None and self._gen.prompt == self.prompt else None
            return (*base, pins, id(gen) if gen is not None else None)
        if lens == "tuned":
            return (*base, pins, id(self._tuned))
        if lens == "patchscope":
            return (*base, pins, self.target_prompt)
        return (*base, self.n_future, self.future_method)  # future: pins are not followed

    def _controls(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "pinned": list(self.pinned),
            "lens": self.lens,
            "target_prompt": self.target_prompt,
            "n_future": self.n_future,
            "future_method": self.future_method,
        }

    def _changed(self, change: Any) -> None:
        if self._quiet:
            return
        name = change["name"]
        if name == "prompt" and self._gen is not None:  # a generation belongs to its prompt
            self._gen = None
            self._grids.pop("logit", None)
            self.generation = {}
        if name in ("lens", "n_future", "future_method"):
            values = {"lens": self.lens, "n_future": self.n_future, "future_method": self.future_method}
            problem = self._control_problem(values["lens"], values["n_future"], values["future_method"], 1)
            if not problem and name == "lens":
                problem = self.lenses.get(self.lens, "")
            if not problem and name == "lens" and self.over_dataset and self.lens != "logit":
                problem = (
                    "Over a dataset the map is the logit lens's mean: open an example to switch the lens."
                )
            if problem:
                self._set_quietly(**{name: change["old"]})
                self._set_error(problem + f" {name} is back to {change['old']!r}.")
                return
            if name != "lens" and self.lens != "future":
                return  # a Future Lens setting: used when that lens is shown
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
        """Read the prompt through the current lens (one ops call; a grid kept for these settings is shown as is)."""
        key = self._key()
        kept = self._kept_grid()
        if kept is not None:
            self._show(*kept)
            return
        lens, prompt, top_k, pinned = self.lens, self.prompt, self.top_k, list(self.pinned)
        target_prompt, n_future, method = self.target_prompt, self.n_future, self.future_method
        tuned, gen, model = self._tuned, self._gen, self.model
        if gen is not None and gen.prompt != prompt:
            gen = None

        def run(progress, cancel):
            ops = _ops()
            if lens == "future":
                fl = _run_op(ops.future_lens, model, prompt, n_future=n_future, method=method,
                             progress=progress, cancel=cancel)  # fmt: skip
                return fl, pinned, pack_future(fl)
            if lens == "patchscope":
                result = ops.patchscope(model, prompt, target_prompt=target_prompt, top_k=top_k,
                                        progress=progress, cancel=cancel)  # fmt: skip
                # pins are followed through the patched runs (two more passes each); none are added for it
                return result, pinned, pack_lens(result, pinned)
            if lens == "tuned":
                if tuned is None:
                    raise _errors().WorkbenchError(NO_TUNED)
                if not _accepts(ops.logit_lens, "lens"):
                    raise _errors().WorkbenchError(self._availability()["tuned"])
                result = ops.logit_lens(model, prompt, lens=tuned, top_k=top_k, tokens=pinned or None,
                                        progress=progress, cancel=cancel)  # fmt: skip
                shown = result
            elif gen is not None:  # the logit lens over prompt + generated tokens
                result, shown = gen.lens, gen
            else:
                result = ops.logit_lens(model, prompt, top_k=top_k, tokens=pinned or None,
                                        progress=progress, cancel=cancel)  # fmt: skip
                shown = result
            pins, data = self._pinned_data(result, pinned)
            return shown, pins, data

        def done(out):
            shown, pins, data = out
            kept = (self._key_with(lens, pins, key), shown, pins, data)
            self._grids[lens] = kept
            if self._key() == key:  # else the view moved on: the grid is kept for when it comes back
                self._show(*kept, record=True)

        self.submit(f"{lens} lens", "", run, done, slot="lens", wait=wait, failed=self._failed)

    def _kept_grid(self) -> tuple | None:
        """The kept grid of the current lens when it was made for the current settings (else None: a run)."""
        kept = self._grids.get(self.lens)
        return kept if kept is not None and kept[0] == self._key() else None

    def _pinned_data(self, result: Any, pinned: list[str]) -> tuple[list[str], dict[str, Any]]:
        if pinned:
            return pinned, pack_lens(result, pinned)
        # follow the model's own prediction when nothing is pinned, so rank/pinned modes have a token
        tid, text = int(result.top_ids[-1, -1, 0]), str(result.top_tokens[-1][-1][0])
        data = pack_lens(result, [text], [tid])
        try:
            pins = [text] if self.model.token_id(text) == tid else []
        except Exception:  # a byte fragment that does not re-tokenize: show it, but do not pin it by text
            pins = []
        return pins, data

    @staticmethod
    def _key_with(lens: str, pins: list[str], key: tuple) -> tuple:
        """`key` with the pins the grid ended up following (a lens pins the model's prediction when none is)."""
        return key if lens == "future" else (*key[:3], tuple(pins), *key[4:])

    def _show(
        self, key: tuple, shown: Any, pins: list[str], data: dict[str, Any], record: bool = False
    ) -> None:
        """Draw a grid: `shown` is the result whose code the view gives (to_code)."""
        self.last_result = shown
        lens = key[0]
        # the view titles (and exports) what it shows, not what the box holds
        data = dict(data, prompt=key[1], lens=lens)
        if lens == "patchscope":
            data["target_prompt"] = key[-1]
        gen = self._gen
        if lens == "logit" and gen is not None and shown is gen:
            data["generated_from"] = int(gen.prompt_tokens)
        if lens == "future":
            pins = list(self.pinned)
        focus = self.focus if self.focus in data["pinned"] else next(iter(data["pinned"]), self.focus)
        self._set_quietly(pinned=pins, data=data, focus=focus)
        self._shown = self._controls()
        if record:
            args = {"lens": lens, "prompt": key[1], "pinned": list(pins)}
            if lens == "patchscope":
                args["target_prompt"] = key[-1]
            if lens == "future":
                args.update(n_future=key[3], method=key[4])
            what = "generation lens" if shown is gen and gen is not None else f"{lens} lens"
            self._record(f"{what} {key[1][:40]!r}", shown, args=args)
        else:
            with contextlib.suppress(Exception):
                self.code = shown.to_code()

    def _failed(self, exc: BaseException) -> str:
        """Never leave the controls (prompt, pins, lens, target prompt, ...) describing other data than the grid."""
        if self.runner.pending_for(self):
            return ""  # a newer request is queued: it is what the controls describe now
        if self._shown is None:
            self._set_quietly(data={})
            return "Nothing to show: fix the prompt and press Enter."
        shown = self._shown
        now = self._controls()
        notes = []
        labels = {
            "prompt": "The prompt box is back to the prompt shown: {!r}.",
            "lens": "The lens is back to the one shown: {!r}.",
            "target_prompt": "The target prompt is back to the one shown: {!r}.",
            "n_future": "n_future is back to {!r}.",
            "future_method": "The Future Lens method is back to {!r}.",
        }
        for name, text in labels.items():
            if now[name] != shown[name]:
                notes.append(text.format(shown[name][:80] if isinstance(shown[name], str) else shown[name]))
        if now["pinned"] != shown["pinned"]:
            notes.append("The pins are back to those shown.")
        focus = (
            self.focus if self.focus in shown["pinned"] else (shown["pinned"][0] if shown["pinned"] else "")
        )
        self._set_quietly(**shown, focus=focus)
        return " ".join(notes)

    # ---- the generation lens
    def generate(self, max_new_tokens: int | None = None, wait: bool = False) -> LensView:
        """Generate greedily from the prompt and read it with `wb.generation_lens` (the "generate" button)."""
        if max_new_tokens is not None:
            problem = self._control_problem("logit", 1, "fixed", max_new_tokens)
            if problem:
                raise _errors().WorkbenchError(problem)
            self.max_new_tokens = max_new_tokens
        if self._ds is not None and self.example < 0:
            raise _errors().WorkbenchError("Generate reads one prompt: open an example of the dataset first.")
        prompt, n, top_k, pinned, lens_asked = (
            self.prompt,
            self.max_new_tokens,
            self.top_k,
            list(self.pinned),
            self.lens,
        )
        model = self.model

        def run(progress, cancel):
            g = _ops().generation_lens(model, prompt, n, top_k=top_k, progress=progress, cancel=cancel)
            pins, data = self._pinned_data(g.lens, pinned)
            return g, pins, data

        def done(out):
            g, pins, data = out
            if self.prompt != prompt:
                return  # the prompt changed meanwhile: this generation belongs to no prompt shown
            self._gen = g
            self.generation = pack_generation(g)
            key = ("logit", prompt, top_k, tuple(pins), id(g))
            self._grids["logit"] = (key, g, pins, data)
            if self.lens == lens_asked:  # the user did not switch meanwhile: show the extended logit grid
                self._set_quietly(lens="logit")
                self._show(*self._grids["logit"], record=True)
            else:
                self._record(
                    f"generation lens {prompt[:40]!r}", g, args={"prompt": prompt, "max_new_tokens": n}
                )

        # a failed or cancelled generation changes nothing: the earlier grid and strip stay
        self.submit("generate", "", run, done, slot="generate", wait=wait, failed=lambda exc: "")
        return self

    def _on_generate(self, content: dict, _buffers: list) -> None:
        n = check_int(content, "max_new_tokens", 1, MAX_NEW_TOKENS, optional=True, what="max_new_tokens")
        self.generate(n)
