"""PatchView: activation patching (and ablation) by click, drag or sweep."""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import traitlets

from ..engine.sites import SITE_TABLE, SITES
from ..engine.sites import site as site_record
from .base import WorkbenchWidget, _errors, _ops, check_int, finite, message_error, pack, pack_lens, readable
from .dataset import answer_text, example_rows, is_dataset, matching, offered_aligns, prediction_state

MODES = ("patch", "ablate", "path")
METHODS = ("zero", "mean", "resample")
# what a receiver of path patching is: a head (its q, k and v), or one of its inputs (the Site table says)
# (a whole head first, as the picker lists them)
RECEIVER_SITES = tuple(
    sorted((n for n, r in SITE_TABLE.items() if r.receiver), key=lambda n: not SITE_TABLE[n].sender)
)


def _cell(site: str, layer: Any, position: Any = None, head: Any = None):
    from ..engine.edits import Cell  # torch is imported with the engine, not with the widgets

    return Cell(site, layer, position, head)


def _path_op(name: str):
    """wb.path_patch / wb.path_patch_sweep, or a readable error while this Workbench does not have them."""
    import workbench

    fn = getattr(_ops(), name, None) or getattr(workbench, name, None)
    if fn is None:
        raise _errors().WorkbenchError(
            f"Path mode needs wb.{name}, which this version of Workbench does not have yet. Switch mode to "
            "'patch' or 'ablate' meanwhile (the set of cells works there)."
        )
    return fn


def _call(fn: Any, *args: Any, progress: Any, cancel: Any, **kwargs: Any) -> Any:
    """Call an op, passing progress/cancel only if it takes them."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for name, value in (("progress", progress), ("cancel", cancel)):
        if takes_all or name in params:
            kwargs[name] = value
    return fn(*args, **kwargs)


class PatchView(WorkbenchWidget):
    """`PatchView(model, clean, corrupt, target=" Paris", foil=" Rome", site="resid_pre", mode="patch")`.

    Click a (layer, position) cell — or (layer, head) with a per-head site (head, q, k, v, pattern) — to patch the
    clean activation into the corrupt run there and see the patched prediction and logit lens; drag a clean-run
    cell onto a corrupt-run cell to patch across positions/layers; "Sweep" fills the map (cancellable).
    mode="ablate" ablates the clean prompt instead (method zero / mean / resample, with `corrupt` as the resample
    reference). Shift-click adds a cell to the set (`cells`) or removes it; "Apply set" patches or ablates every
    cell of the set jointly, in one run. mode="path": click heads to pick the receivers (or "logits") and Sweep
    fills the senders' map with `wb.path_patch_sweep`; "Apply set" runs `wb.path_patch` with the set as senders.
    The metric is logit_diff(target, foil), or logprob(target) without a foil, or `metric=` any metric.

    `PatchView(model, ds)` with a wb.Dataset: the map is the mean over the examples (each scored on its own
    target/foil), with mean ± sem in the hover; clicking a swept cell shows the distribution of the per-example
    effects with the best and worst examples; clicking an example opens its single-pair view (`example=i`; -1 is
    the dataset). `filter_text` / `correct_only` narrow the examples and the mean recomputes; `align=` picks the
    columns ("exact", "right", "roles").
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
    n_kv_heads = traitlets.Int(0).tag(sync=True)
    # the sites this model offers, as the Site table describes them: {"name", "doc", "heads", "layers"}
    sites = traitlets.List(traitlets.Dict()).tag(sync=True)
    # the set of cells applied jointly: [site, layer, position | None, head | None] each
    cells = traitlets.List().tag(sync=True)
    # path mode: "logits" or a list of receiver cells [site, layer, None, head]; clicks add `receiver_site` cells
    receivers = traitlets.Union([traitlets.Unicode(), traitlets.List()], default_value="logits").tag(
        sync=True
    )
    receiver_site = traitlets.Unicode("head").tag(sync=True)
    sweep = traitlets.Dict().tag(sync=True)
    result = traitlets.Dict().tag(sync=True)
    # target/foil as the model sees them: {"target": {"tokens": [...], "warning": "...", "error": "..."}, ...}
    inputs = traitlets.Dict().tag(sync=True)
    # the clean run's logit lens, drawn in the drag-source grid
    clean_lens = traitlets.Dict().tag(sync=True)
    # over a dataset ({} for one pair): {"n", "name", "examples": [{clean, corrupt, target, foil}], "aligns":
    # {align: "" or why not}, "columns": [...], "shown": [indices the filter keeps], "predictions": {...}}
    dataset = traitlets.Dict().tag(sync=True)
    align = traitlets.Unicode("exact").tag(sync=True)
    filter_text = traitlets.Unicode("").tag(sync=True)
    correct_only = traitlets.Bool(False).tag(sync=True)
    # the example shown as a single pair, or -1: the dataset
    example = traitlets.Int(-1).tag(sync=True)

    def __init__(
        self,
        model: Any,
        clean: Any,
        corrupt: str = "",
        target: str | None = None,
        foil: str | None = None,
        *,
        site: str = "resid_pre",
        mode: str = "patch",
        method: str = "zero",
        metric: Any = None,
        cells: list | None = None,
        receivers: str | list = "logits",
        align: str | None = None,
        **kwargs: Any,
    ):
        ds = clean if is_dataset(clean) else None
        if ds is not None:
            if corrupt:
                raise _errors().WorkbenchError(
                    "PatchView got a wb.Dataset and a corrupt prompt: a Dataset carries each example's corrupt "
                    "prompt; call PatchView(model, ds, ...) without it."
                )
            clean, target, foil = "", None, None
            aligns = offered_aligns(model, ds, corrupt=ds.corrupt is not None)
            if align is None:  # the first that works: exact, then roles, then right
                align = next((a for a in ("exact", "roles", "right") if not aligns[a]), "exact")
            kwargs["dataset"] = {
                "n": len(ds),
                "name": ds.name,
                "examples": example_rows(model, ds),
                "aligns": aligns,
                "columns": [],
                "shown": list(range(len(ds))),
                "predictions": {},
                "has_corrupt": ds.corrupt is not None,
            }
            if ds.corrupt is None and mode == "patch":
                mode = "ablate"
        self._ds = ds
        self._correct: list[bool] | None = None
        self._ids: list[int] = list(range(len(ds))) if ds is not None else []
        self._al: Any = None
        # dataset sweeps: (sweep key, align) -> (the examples it covers, DatasetSweepResult)
        self._ds_sweeps: dict[tuple, tuple[tuple[int, ...], Any]] = {}
        self._ds_wanted: set[tuple] = set()  # keys the user swept: a filter change recomputes them
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
            n_kv_heads=int(getattr(model, "n_kv_heads", None) or model.n_heads),
            sites=self._offered_sites(model),
            cells=[self._tuple(c) for c in (cells or [])],
            receivers=receivers if isinstance(receivers, str) else [self._tuple(c) for c in receivers],
            align=align or "exact",
            **kwargs,
        )
        self._metric = metric
        self._sweeps: dict[
            tuple, dict
        ] = {}  # one sweep per (mode, site, method, target, foil, receivers): switching keeps them
        self._problems: list[str] = []
        self._problem_kind = "WorkbenchError"
        self._handlers.update(
            patch=self._on_patch, ablate=self._on_ablate, sweep=self._on_sweep, apply_set=self._on_apply_set
        )
        self.observe(self._prompts_changed, names=["clean", "corrupt"])
        self.observe(self._setup_changed, names=["target", "foil", "site", "mode", "method", "receivers"])
        self.observe(lambda _change: self._validate(), names=["receiver_site"])
        if ds is not None:
            self.observe(lambda _change: self._ds_changed(), names=["align", "filter_text", "correct_only"])
            self.observe(self._open_example, names=["example"])
        self._validate()
        self._compute_clean_lens()

    @staticmethod
    def _offered_sites(model: Any) -> list[dict[str, Any]]:
        """Every site of the Site table this model has (resid_mid only for sequential blocks), for the picker."""
        out = []
        for name in SITES:
            rec = site_record(name)
            if rec.sequential_only and not model._sequential():
                continue
            out.append(
                {
                    "name": rec.name,
                    "doc": rec.doc,
                    "heads": rec.heads,
                    "layers": 1 if rec.embed_only else int(model.n_layers),
                }
            )
        return out

    @staticmethod
    def _tuple(c: Any) -> list:
        """A wb.Cell (or a [site, layer, position, head] list) as the list the `cells` trait holds."""
        if hasattr(c, "site") and hasattr(c, "layer"):
            return [c.site, c.layer, c.position, c.head]
        return list(c)

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
        if self.over_dataset:
            self._validate_dataset()
            return
        problems: list[str] = []
        kinds: list[str] = []  # which WorkbenchError class each problem is
        tokens: dict[str, list[str]] = {"clean": [], "corrupt": []}
        need_corrupt = self.mode != "ablate" or self.method == "resample"
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
            self.mode != "ablate"
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
        self._setting_problems(problems, kinds)
        with self.hold_trait_notifications():
            self.tokens_clean = tokens["clean"]
            self.tokens_corrupt = tokens["corrupt"]
            self.inputs = inputs
        self._report(problems, kinds)

    def _setting_problems(self, problems: list[str], kinds: list[str]) -> None:
        """What is wrong with the site, mode, method and receivers (one pair or a dataset alike)."""
        offered = [s["name"] for s in self.sites]
        if self.site not in offered:
            try:  # the model's own reason (e.g. resid_mid in a block with parallel attention and MLP)
                self.model.check_site(self.site)
                why = f"Unknown site {self.site!r}"
            except Exception as exc:  # noqa: BLE001 - shown in the widget
                why = str(exc).rstrip(".")
            problems.append(f"{why}. Pick one of {', '.join(offered)}.")
            kinds.append("SiteError")
        for name, value, allowed in (
            ("mode", self.mode, MODES),
            ("method", self.method, METHODS),
            ("receiver_site", self.receiver_site, RECEIVER_SITES),
        ):
            if value not in allowed:
                problems.append(f"Unknown {name} {value!r}: pick one of {', '.join(allowed)}.")
                kinds.append("WorkbenchError")
        if self.mode == "path" and not (self.receivers == "logits" or isinstance(self.receivers, list)):
            problems.append(f"receivers={self.receivers!r}: use 'logits' or a list of head cells.")
            kinds.append("WorkbenchError")

    def _report(self, problems: list[str], kinds: list[str]) -> None:
        self._problems = problems
        self._problem_kind = kinds[0] if kinds else "WorkbenchError"
        if problems:
            self._set_error(f"{self._problem_kind}: " + "\n".join(problems))
        elif self.status == "error" or self.error:
            self._clear_error()

    # ---- over a dataset
    @property
    def over_dataset(self) -> bool:
        """Whether the view shows a dataset (not one pair: no dataset, or one of its examples opened)."""
        return self._ds is not None and self.example < 0

    @property
    def dataset_examples(self) -> Any:
        """The wb.Dataset this view was given (None for one pair)."""
        return self._ds

    def subset(self) -> Any:
        """The examples the filter keeps, as a Dataset (what the map's mean is over)."""
        if self._ds is None:
            raise _errors().WorkbenchError("This PatchView shows one prompt pair, not a wb.Dataset.")
        if not self._ids:
            raise _errors().WorkbenchError(self._no_match())
        return self._ds[list(self._ids)]

    def _no_match(self) -> str:
        what = [f"text {self.filter_text.strip()!r}"] if self.filter_text.strip() else []
        if self.correct_only:
            what.append("correct only")
        return (
            f"No example of the {len(self._ds)} matches the filter ({', '.join(what)}): loosen it (clear the "
            "filter box or untick correct only)."
        )

    def _validate_dataset(self) -> None:
        """Over a dataset: the filter keeps some examples, `align` works for them, the mode needs what the
        dataset has; the site/mode checks are one pair's."""
        from ..data.align import alignment

        problems: list[str] = []
        kinds: list[str] = []
        ds = self._ds
        if self.mode == "path":
            problems.append(
                "Path patching over a dataset is not available yet: open one example (click it in the list) or "
                "switch mode to patch or ablate."
            )
            kinds.append("WorkbenchError")
        needs_corrupt = self.mode == "patch" or (self.mode == "ablate" and self.method == "resample")
        if needs_corrupt and ds.corrupt is None:
            problems.append(
                f"{'Patching' if self.mode == 'patch' else 'Resample ablation'} needs corrupt prompts and this "
                "dataset has none: give corrupt=[...] (or a corrupt template) to the Dataset, or use ablate mode."
            )
            kinds.append("WorkbenchError")
        self._setting_problems(problems, kinds)
        columns: list[str] = []
        self._al = None
        if not self._ids:
            problems.append(self._no_match())
            kinds.append("WorkbenchError")
        else:
            try:
                self._al = alignment(
                    self.model, ds[list(self._ids)], self.align, corrupt=ds.corrupt is not None
                )
                columns = list(self._al.columns)
            except Exception as exc:  # noqa: BLE001 - shown in the widget
                problems.append(str(exc))
                kinds.append(
                    type(exc).__name__ if isinstance(exc, _errors().WorkbenchError) else "WorkbenchError"
                )
        with self.hold_trait_notifications():
            self.tokens_clean = []
            self.tokens_corrupt = []
            self.inputs = {}
            self.dataset = {**self.dataset, "columns": columns, "shown": list(self._ids)}
        self._report(problems, kinds)

    def _ds_changed(self) -> None:
        """The filter or the alignment changed: new subset, new columns, and the mean over the kept examples (from
        the sweep already computed when it covers them, else recomputed if the user had swept)."""
        if self._ds is None:
            return
        if self.correct_only and self._correct is None:
            self._predict()
            return
        self._ids = matching(self._ds, self.filter_text, self._correct if self.correct_only else None)
        if not self.over_dataset:
            return
        self._stale()
        self.selected = []
        self._validate()
        self._restore_sweep()

    def _restore_sweep(self) -> None:
        """Show the dataset sweep of the current settings over the kept examples, if there is one."""
        key = self._ds_key()
        cached = self._ds_sweeps.get(key)
        self.sweep = {}
        if self._problems:
            return
        if cached is not None:
            sub = self._sub_sweep(cached)
            if sub is not None:
                self.last_result = sub
                self.sweep = self._pack_sweep(sub, self.mode, self.site, self.method, None)
                return
        if key in self._ds_wanted:
            self.request("sweep")

    def _sub_sweep(self, cached: tuple[tuple[int, ...], Any]) -> Any:
        """The cached sweep's examples that the filter keeps, as a DatasetSweepResult of their own (each
        example's sweep does not depend on the others), or None when it does not cover them or its columns
        differ (align="right" over a subset of other lengths)."""
        from ..ops.dataset_results import DatasetSweepResult

        ids, r = cached
        if self._al is None or list(r.columns) != list(self._al.columns):
            return None
        where = {e: j for j, e in enumerate(ids)}
        if any(i not in where for i in self._ids):
            return None
        if tuple(self._ids) == tuple(ids):
            return r
        rows = [where[i] for i in self._ids]
        per = r.per_example[rows]
        return DatasetSweepResult(
            values=per.mean(0).astype(np.float32),
            clean=np.asarray(r.clean)[rows],
            corrupt=np.asarray(r.corrupt)[rows],
            axes=r.axes,
            tokens=list(r.tokens),
            options={**r.options, "n_examples": len(rows), "dataset": len(rows)},
            _code=r._code,
            per_example=per,
            examples=[r.examples[j] for j in rows],
            columns=list(r.columns),
            dataset=self._ds[list(self._ids)],
        )

    def _ds_key(self) -> tuple:
        """A dataset sweep's settings (each example scores its own target and foil)."""
        return (self.mode, self.site, self.method if self.mode == "ablate" else "", self.align)

    def _predict(self) -> None:
        """Each example's clean prediction (workbench.data.predict, as ds.filter_correct uses), then refilter."""
        if getattr(self.model, "remote", False):
            self._set_error(
                "WorkbenchError: correct only needs each example's prediction, not computed for remote models."
            )
            return
        ds = self._ds

        def run(progress, cancel):
            from ..data.predict import predictions

            progress(0.0, f"predicting {len(ds)} examples")
            return predictions(self.model, ds)

        def done(preds):
            self._correct = [bool(p.correct) for p in preds]
            self.dataset = {**self.dataset, "predictions": prediction_state(preds)}
            self._ds_changed()

        def failed(exc):
            self.correct_only = False
            return "correct only is off again."

        self.submit("predictions", "", run, done, slot="predictions", failed=failed)

    def _open_example(self, change: Any) -> None:
        """Open example i as a single pair (its clean/corrupt prompts, target and foil), or go back (-1)."""
        i = change["new"]
        if i >= 0:
            if i >= len(self._ds):
                self.example = -1
                raise _errors().WorkbenchError(
                    f"Example {i} does not exist: the dataset has {len(self._ds)}."
                )
            e = self._ds[i]
            cached = self._ds_sweeps.get(self._ds_key())
            with self.hold_trait_notifications():
                self.clean = e.clean
                self.corrupt = e.corrupt or ""
                self.target = answer_text(self.model, e.target)
                self.foil = answer_text(self.model, e.foil)
            self._stale()
            self.selected = []
            self._validate()
            if not self.clean_lens:
                self._compute_clean_lens()
            self.sweep = self._sweeps.get(self._sweep_key(), {})
            # the dataset sweep holds this example's own sweep (per_example[i] is the single-pair result): with
            # align="exact" its columns are the example's positions, so its map is filled at once
            if cached is not None and self.align == "exact" and i in cached[0]:
                one = cached[1].example(cached[0].index(i))
                one.tokens = self.model.to_str_tokens(e.corrupt or e.clean)
                packed = self._pack_sweep(one, self.mode, self.site, self.method, None)
                self._sweeps[self._sweep_key()] = packed
                self.sweep = packed
        else:
            self._stale()
            self.selected = []
            self._validate()
            self._restore_sweep()

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
        if change["name"] == "receivers" and self.mode != "path":
            return  # receivers only matter in path mode
        self._stale()
        self.selected = []
        self._validate()
        if self.over_dataset:
            self._restore_sweep()
        else:
            self.sweep = self._sweeps.get(self._sweep_key(), {})

    def _sweep_key(self) -> tuple:
        if self.mode == "path":
            return ("path", "head", "", self.target, self.foil, json.dumps(self.receivers))
        return (self.mode, self.site, self.method if self.mode == "ablate" else "", self.target, self.foil)

    def _inputs_key(self) -> tuple:
        if self.over_dataset:
            return ("dataset", tuple(self._ids), *self._ds_key())
        return (self.example, self.clean, self.corrupt, *self._sweep_key())

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
        if self.over_dataset:  # each example's own target and foil
            return ops.logit_diff() if self._ds.foil is not None else ops.logprob()
        if not self.target:
            from ..errors import WorkbenchError

            raise WorkbenchError(
                "PatchView needs target= (a single token, e.g. ' Paris') or metric= to score runs."
            )
        return ops.logit_diff(self.target, self.foil) if self.foil else ops.logprob(self.target)

    # ---- clicks: each becomes one intervention (and the lens of the intervened run)
    def _site_info(self, name: str | None = None) -> dict[str, Any]:
        name = self.site if name is None else name
        for info in self.sites:
            if info["name"] == name:
                return info
        raise _errors().SiteError(
            f"Unknown site {name!r}: pick one of {', '.join(s['name'] for s in self.sites)}."
        )

    def _n_heads_of(self, info: dict[str, Any]) -> int:
        return int(self.n_kv_heads if info["heads"] == "kv" else self.n_heads)

    def _cell(self, content: dict) -> dict[str, Any]:
        """The (layer, position | head) of a request, checked: integers in range, or a message saying what was wrong."""
        info = self._site_info()
        layer = check_int(content, "layer", 0, int(info["layers"]) - 1)
        if info["heads"]:
            head = check_int(content, "head", 0, self._n_heads_of(info) - 1)
            pos = None
        else:
            toks = self.tokens_clean if self.mode == "ablate" else self.tokens_corrupt
            if self.over_dataset:
                toks = self.dataset.get("columns") or []  # a column of the alignment
            if not toks:
                raise message_error("No tokens to patch: fix the prompts first.")
            pos = check_int(content, "position", 0, len(toks) - 1)
            head = None
        return {"layer": layer, "position": pos, "head": head}

    def _ui_cell(self, content: dict, cell: dict) -> list[int]:
        ui = content.get("cell")
        if ui is None:
            return [cell["layer"], cell["head"] if cell["head"] is not None else cell["position"]]
        if not isinstance(ui, (list, tuple)) or len(ui) != 2:
            raise message_error(f"The view sent cell={ui!r}: it must be [row, column].")
        return [
            check_int({"row": ui[0]}, "row", 0, 10**6, what="cell row"),
            check_int({"col": ui[1]}, "col", 0, 10**6, what="cell column"),
        ]

    def _where(self, cell: dict) -> str:
        col = f"H{cell['head']}" if cell["head"] is not None else f"pos {cell['position']}"
        return f"L{cell['layer']} {col}"

    def _on_patch(self, content: dict, _buffers: list) -> None:
        ops = _ops()
        self._check_ready()
        cell = self._cell(content)
        if self.over_dataset:
            if content.get("source_layer") is not None:
                raise _errors().WorkbenchError(
                    "A drag (patch from another cell) works on one prompt pair: open an example first."
                )
            self._dataset_click("patch", content, cell)
            return
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
            where = self._where(cell)
            if extra:
                where = f"L{extra['source_layer']} pos {extra['source_position']} → {where}"
            if key == self._inputs_key():  # inputs changed while it ran: do not show it for the new ones
                self._show(f"patch {site} {where}", value, lens, site, cell, ui_cell, extra)

        self.submit("patch", str(content.get("id", "")), run, done, slot="click")

    def _on_ablate(self, content: dict, _buffers: list) -> None:
        ops = _ops()
        self._check_ready()
        cell = self._cell(content)
        if self.over_dataset:
            self._dataset_click("ablate", content, cell)
            return
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
            where = self._where(cell)
            if key == self._inputs_key():
                self._show(f"{method}-ablate {site} {where}", value, lens, site, cell, ui_cell, {})

        self.submit("ablate", str(content.get("id", "")), run, done, slot="click")

    def _dataset_click(self, mode: str, content: dict, cell: dict) -> None:
        """A click on the mean map before a sweep: wb.patch / wb.ablate over the kept examples at that cell (a
        position is a column); the result carries every example's value for the distribution."""
        ops = _ops()
        ds, align, site, method, metric = self.subset(), self.align, self.site, self.method, self.metric()
        ids = list(self._ids)
        ui_cell = self._ui_cell(content, cell)
        key = self._inputs_key()

        def run(progress, cancel):
            go = dict(metric=metric, site=site, **cell, align=align, progress=progress, cancel=cancel)
            if mode == "ablate":
                return ops.ablate(self.model, ds, method=method, **go)
            return ops.patch(self.model, ds, **go)

        def done(value):
            if key != self._inputs_key():
                return
            label = f"{'patch' if mode == 'patch' else method + '-ablate'} {site} {self._where(cell)} over {len(ids)} examples"
            self._show(label, value, None, site, cell, ui_cell, {})
            self.result = {
                **self.result,
                "top_tokens": [],
                "top_probs": pack(np.zeros(0, np.float32)),
                "per_example": pack(np.asarray(value.per_example, np.float32)),
                "clean_each": pack(np.asarray(value.clean, np.float32)),
                "corrupt_each": pack(np.asarray(value.corrupt, np.float32)),
                "ids": pack(np.asarray(ids, np.int32)),
                "clean": finite(value.clean_mean),
                "corrupt": finite(value.corrupt_mean),
                "lens_note": "over a dataset: open an example (click it below) for its prediction and logit lens",
            }

        self.submit(mode, str(content.get("id", "")), run, done, slot="click")

    def _show(
        self,
        label: str,
        value: Any,
        lens: Any,
        site: str,
        cell: dict,
        ui_cell: list | None,
        extra: dict,
        cells: list | None = None,
    ) -> None:
        self.last_result = value
        self.result = {
            "label": label,
            "site": site,
            "layer": cell.get("layer"),
            "position": cell.get("position"),
            "head": cell.get("head"),
            **extra,
            "cell": None if ui_cell is None else [int(ui_cell[0]), int(ui_cell[1])],
            "cells": cells if cells is not None else [[site, cell["layer"], cell["position"], cell["head"]]],
            "value": finite(value),
            "clean": finite(getattr(value, "clean_mean", getattr(value, "clean", None))),
            "corrupt": finite(getattr(value, "corrupt_mean", getattr(value, "corrupt", None))),
            "top_tokens": [str(t) for t in getattr(value, "top_tokens", [])],
            "top_probs": pack(getattr(value, "top_probs", [])),
            "lens": pack_lens(lens) if lens is not None else {},
            "compute_ms": round(self.compute_ms, 1),
        }
        args = self._args()
        if cells is not None:
            args["cells"] = cells
        self._record(label, value, args=args)

    def _args(self) -> dict[str, Any]:
        if self.over_dataset:
            args: dict[str, Any] = {
                "dataset": f"{len(self._ids)}/{len(self._ds)} examples",
                "align": self.align,
            }
            if self.filter_text.strip():
                args["filter"] = self.filter_text.strip()
            if self.correct_only:
                args["correct_only"] = True
            args.update(site=self.site, mode=self.mode)
            if self.mode == "ablate":
                args["method"] = self.method
            return args
        args = {"clean": self.clean, "corrupt": self.corrupt, "target": self.target, "foil": self.foil}
        args.update(site=self.site, mode=self.mode)
        if self.mode == "ablate":
            args["method"] = self.method
        if self.mode == "path":
            args["receivers"] = self.receivers
        return args

    # ---- the set: cells applied jointly
    def _cell_of(self, entry: Any, what: str):
        """One [site, layer, position, head] entry of the `cells`/`receivers` trait as a wb.Cell (shape checked here,
        ranges by the op, which names the fix)."""
        if not isinstance(entry, (list, tuple)) or len(entry) != 4 or not isinstance(entry[0], str):
            raise message_error(
                f"{what} holds {entry!r:.80}: each entry must be [site, layer, position, head]."
            )
        fields = {"layer": entry[1], "position": entry[2], "head": entry[3]}
        return _cell(
            entry[0],
            check_int(fields, "layer", 0, 10**6, what=f"{what} layer"),
            check_int(fields, "position", 0, 10**6, optional=True, what=f"{what} position"),
            check_int(fields, "head", 0, 10**6, optional=True, what=f"{what} head"),
        )

    def set_cells(self) -> list:
        """The set (the `cells` trait) as wb.Cell values, in the order they were added."""
        if not isinstance(self.cells, list) or not self.cells:
            raise _errors().WorkbenchError(
                "The set is empty: shift-click cells of the map to add them (or set view.cells), then Apply set."
            )
        return [self._cell_of(c, "cells") for c in self.cells]

    def receiver_cells(self) -> str | list:
        """The receivers of path mode: "logits" or wb.Cell values."""
        if self.receivers == "logits":
            return "logits"
        if not isinstance(self.receivers, list) or not self.receivers:
            raise _errors().WorkbenchError(
                "No receivers: click heads of the map in path mode to pick them, or press Logits."
            )
        return [self._cell_of(c, "receivers") for c in self.receivers]

    def _runner(
        self, mode: str, clean: str, corrupt: str, metric: Any, method: str, receivers: Any, **what: Any
    ) -> Callable[[Any, Any], Any]:
        """run(progress, cancel) of the mode's op: on a set (`cells=`) or a sweep (`site=`, receivers for path
        mode). A missing path op fails here, before anything is submitted."""
        sweep = "site" in what
        ops = _ops()
        path_op = _path_op("path_patch_sweep" if sweep else "path_patch") if mode == "path" else None
        senders = {} if sweep else {"senders": what.get("cells")}
        reference = (corrupt or None) if method != "zero" else None
        if is_dataset(clean):  # each example's own corrupt prompt (resample: its own reference)
            what = {**what, "align": self.align}
            corrupt, reference = None, None  # type: ignore[assignment]

        def run(progress: Any, cancel: Any) -> Any:
            go = {"metric": metric, "progress": progress, "cancel": cancel}
            if mode == "path":
                return _call(path_op, self.model, clean, corrupt, receivers=receivers, **senders, **go)
            if mode == "ablate":
                ablate = ops.ablate_sweep if sweep else ops.ablate
                return ablate(self.model, clean, method=method, reference=reference, **what, **go)
            if is_dataset(clean):
                return (ops.patch_sweep if sweep else ops.patch)(self.model, clean, **what, **go)
            return (ops.patch_sweep if sweep else ops.patch)(self.model, clean, corrupt, **what, **go)

        return run

    def _on_apply_set(self, content: dict, _buffers: list) -> None:
        self._check_ready()
        cells = self.set_cells()
        tuples = [self._tuple(c) for c in cells]
        mode, method, metric = self.mode, self.method, self.metric()
        clean, corrupt = (self.subset(), "") if self.over_dataset else (self.clean, self.corrupt)
        receivers = self.receiver_cells() if mode == "path" else None
        key = self._inputs_key()

        run_set = self._runner(mode, clean, corrupt, metric, method, receivers, cells=cells)

        def run(progress, cancel):
            value = run_set(progress, cancel)
            lens, note = None, ""
            if is_dataset(clean):
                note = f"the mean over {len(clean)} examples (open an example for its prediction and lens)"
            elif mode == "path":
                note = "path patching: its prediction and metric above (no lens: its second run patches the receivers' inputs)"
            else:
                try:
                    lens = self._set_lens(cells, mode, method, clean, corrupt, cancel)
                except _errors().WorkbenchError as exc:
                    note = f"the lens of the joint run failed: {readable(exc)}"
            return value, lens, note

        def done(out):
            value, lens, note = out
            what = {"patch": "patch", "ablate": f"{method}-ablate", "path": "path-patch"}[mode]
            label = f"{what} set of {len(cells)}: " + ", ".join(repr(c) for c in cells)
            if mode == "path":
                label += f" → {receivers if receivers == 'logits' else ', '.join(map(repr, receivers))}"
            if key == self._inputs_key():
                self._show(label[:300], value, lens, "set", {}, None, {}, cells=tuples)
                if note:
                    self.result = {**self.result, "lens_note": note}

        self.submit("apply set", str(content.get("id", "")), run, done, slot="click")

    def _set_lens(self, cells: list, mode: str, method: str, clean: str, corrupt: str, cancel: Any) -> Any:
        """The logit lens of the run "Apply set" scores: wb.patch(cells=)'s corrupt run with every cell from the
        clean run, or wb.ablate(cells=)'s clean run with every cell ablated (resample: from the reference)."""
        from ..engine.edits import Edit
        from ..ops.ablation import _reference_means

        ops = _ops()
        if mode == "patch":
            edits, prompt, source = [Edit(c, "source") for c in cells], corrupt, clean
        elif method == "resample":
            edits, prompt, source = [Edit(c, "source") for c in cells], clean, corrupt
        elif (
            method == "mean" and corrupt
        ):  # the mean over the reference prompt's tokens, as wb.ablate takes it
            means = _reference_means(self.model, [corrupt], cells)
            values = [means[(c.site, c.layer)] for c in cells]
            edits = [Edit(c, v if c.head is None else v[c.head]) for c, v in zip(cells, values, strict=True)]
            prompt, source = clean, None
        else:
            edits, prompt, source = [Edit(c, method) for c in cells], clean, None
        return ops.logit_lens(self.model, prompt, top_k=5, edits=edits, source=source, cancel=cancel)

    # ---- sweep
    def _on_sweep(self, content: dict, _buffers: list) -> None:
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
        receivers = self.receiver_cells() if mode == "path" else None
        receivers_trait = self.receivers
        if self.over_dataset:
            self._dataset_sweep(content, mode, site, method, metric)
            return
        run = self._runner(mode, clean, corrupt, metric, method, receivers, site=site)

        def done(sw):
            if (clean, corrupt) != (self.clean, self.corrupt) or self.over_dataset:
                return  # the prompts changed while it ran: the sweep is of prompts no longer shown
            self.last_result = sw
            packed = self._pack_sweep(sw, mode, site, method, receivers_trait)
            self._sweeps[skey] = packed
            if skey == self._sweep_key():
                self.sweep = packed
            label = {"patch": "patch", "ablate": f"{method}-ablate", "path": "path-patch"}[mode]
            label += f" sweep {site}" if mode != "path" else f" sweep → {receivers_trait}"
            self._record(label[:300], sw, args=self._args())

        self.submit("sweep", str(content.get("id", "")), run, done, slot="sweep")

    def _pack_sweep(self, sw: Any, mode: str, site: str, method: str, receivers: Any) -> dict[str, Any]:
        """A sweep as the `sweep` trait: the (mean) grid and, over a dataset, every example's grid [N, ...] and
        baselines [N] as float32 buffers, and which examples they are."""
        clean, corrupt = sw.clean_mean, sw.corrupt_mean
        normalized = None
        if (
            mode != "ablate"
            and finite(clean) is not None
            and finite(corrupt) is not None
            and clean != corrupt
        ):
            normalized = pack(sw.normalized)
        packed: dict[str, Any] = {
            "values": pack(sw.values),
            "normalized": normalized,
            "clean": finite(clean),
            "corrupt": finite(corrupt),
            "axes": list(sw.axes),
            "site": "head" if mode == "path" else site,
            "mode": mode,
            "method": method,
            "receivers": receivers if mode == "path" else None,
        }
        if hasattr(sw, "per_example"):
            packed.update(
                per_example=pack(sw.per_example),
                clean_each=pack(np.asarray(sw.clean, np.float32)),
                corrupt_each=pack(np.asarray(sw.corrupt, np.float32)),
                ids=pack(np.asarray(self._ids, np.int32)),
                align=self.align,
                columns=list(sw.columns),
            )
        return packed

    def _dataset_sweep(self, content: dict, mode: str, site: str, method: str, metric: Any) -> None:
        """Sweep over the kept examples (progress: "k/N examples"); kept per (settings, align) so that a filter
        that keeps fewer of them is answered from it."""
        ds, ids, key = self.subset(), tuple(self._ids), self._ds_key()
        self._ds_wanted.add(key)
        run = self._runner(mode, ds, "", metric, method, None, site=site)

        def done(sw):
            self._ds_sweeps[key] = (ids, sw)
            if self.over_dataset and key == self._ds_key() and ids == tuple(self._ids):
                self.last_result = sw
                self.sweep = self._pack_sweep(sw, mode, site, method, None)
            label = {"patch": "patch", "ablate": f"{method}-ablate"}.get(mode, mode)
            self._record(f"{label} sweep {site} over {len(ids)} examples", sw, args=self._args())

        self.submit("sweep", str(content.get("id", "")), run, done, slot="sweep")

    # ---- python-side conveniences (what a click does)
    def cell_at(self, layer: int, col: int) -> list:
        """The [site, layer, position, head] of heatmap cell (layer, col) for the current site."""
        info = self._site_info()
        if info["heads"]:
            return [self.site, int(layer), None, int(col)]
        return [self.site, int(layer), int(col), None]

    def click(self, layer: int, col: int) -> PatchView:
        """Apply the patch/ablation at heatmap cell (layer, col) as a click does; returns self (see .wait()).

        In path mode a click picks a receiver instead (as in the view)."""
        if self.mode == "path":
            return self.toggle_receiver(layer, col)
        head = bool(self._site_info()["heads"])
        self.request(
            self.mode if self.mode == "ablate" else "patch",
            layer=layer,
            position=None if head else col,
            head=col if head else None,
            cell=[layer, col],
        )
        return self

    def toggle(self, layer: int, col: int) -> PatchView:
        """Add heatmap cell (layer, col) of the current site to the set, or remove it (a shift-click)."""
        # in path mode the set is the senders: heads
        cell = ["head", int(layer), None, int(col)] if self.mode == "path" else self.cell_at(layer, col)
        cells = [list(c) for c in self.cells]
        self.cells = [c for c in cells if c != cell] if cell in cells else [*cells, cell]
        return self

    def toggle_receiver(self, layer: int, head: int) -> PatchView:
        """Add query head (layer, head) to the receivers as a `receiver_site` cell, or remove it (a click in path
        mode); k and v receivers are key-value heads, so query head h picks key-value head h // group."""
        site = self.receiver_site
        if site_record(site).heads == "kv":
            head = int(head) // max(1, int(self.n_heads) // max(1, int(self.n_kv_heads)))
        cell = [site, int(layer), None, int(head)]
        current = [] if self.receivers == "logits" else [list(c) for c in self.receivers]
        new = [c for c in current if c != cell] if cell in current else [*current, cell]
        self.receivers = new or "logits"
        return self

    def apply_set(self) -> PatchView:
        """Apply every cell of the set jointly (the "Apply set" button); returns self (see .wait())."""
        self.request("apply_set")
        return self

    def run_sweep(self) -> PatchView:
        self.request("sweep")
        return self

    def open_example(self, i: int) -> PatchView:
        """Show example i of the dataset as a single pair (clicking it in the list); -1 goes back."""
        self.example = int(i)
        return self
