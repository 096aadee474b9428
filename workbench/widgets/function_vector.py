"""FunctionVectorView: find the heads that carry an in-context task, build the function vector from them, see
what it does (Todd et al. 2024), live.

- the [L, H] map of every head's causal indirect effect (`wb.head_effects`), computed with progress and cancel;
  a click opens a head: its mean output decoded (top tokens) and its attention pattern on one n-shot example
  (`wb.attention`);
- the chosen heads outlined: the top n (n adjustable) or any set (shift-click, or the head's button, toggles a
  head in or out); the vector is `wb.function_vector(model, effects, heads=...)`;
- zero-shot accuracy by layer with the vector (`wb.evaluate_vector`) against the unsteered baseline;
- a prompt box: greedy continuation with and without the vector (`wb.steer`) at a chosen layer.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import traitlets

from .base import WorkbenchWidget, _errors, _ops, check_int, finite, message_error, pack

HEAD_TOP_K = 10  # decoded tokens shown for a head's mean output
VECTOR_TOP_K = 15  # decoded tokens shown for the vector
MAX_NEW_TOKENS = 64
MAX_SCALE = 100.0


def _steer_positions() -> list[str]:
    """The `positions=` values `wb.steer` takes here (["all"] when it adds at every position only)."""
    try:
        params = inspect.signature(_ops().steer).parameters
    except (TypeError, ValueError):
        return ["all"]
    return ["last", "all"] if "positions" in params else ["all"]


def _heads_list(heads: Any) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in heads]


def _pieces(model: Any, ids: list[int]) -> list[str]:
    return [model.tokenizer.decode([int(i)]) for i in ids]


class FunctionVectorView(WorkbenchWidget):
    """`FunctionVectorView(model, task, n_shots=10, n_prompts=10, seed=0, top_n=10, eval_prompts=None)`: the heads
    that carry `task` (a `wb.Task`, a shipped task's name, or a `wb.HeadEffects` already computed), the function
    vector they make, and what it does.

    The heatmap is every head's causal indirect effect on p(answer) (`wb.head_effects` over `n_prompts`
    `n_shots`-shot prompts): layers down, heads across, diverging at 0, the chosen heads outlined. Click a head
    to see its mean output decoded and its attention on one n-shot example (`example`); shift-click (or Space,
    or the head's button) adds it to the vector or takes it out; `top_n` resets the choice to the top n heads.
    Every change of the heads rebuilds the vector and its zero-shot accuracy at every layer
    (`wb.evaluate_vector` over `eval_prompts` queries, default min(40, all)) against the baseline without it. The prompt box runs
    `wb.steer(model, prompt, vector=fv, layer=layer + 1, ...)`: the vector added after block `layer` (the
    accuracy curve's layer), the greedy continuation with and without it.

    Computations run in the background (`wait=True` blocks until the first ones are done); Cancel stops them and
    keeps what finished. `to_code()` is the nnsight code of what is shown.
    """

    _view_kind = traitlets.Unicode("function_vector").tag(sync=True)
    # the task: {"name", "n_pairs", "examples": [[x, y], ...] (the first few), "template", "description"}
    task = traitlets.Dict().tag(sync=True)
    n_shots = traitlets.Int(10).tag(sync=True)
    n_prompts = traitlets.Int(10).tag(sync=True)
    seed = traitlets.Int(0).tag(sync=True)
    top_n = traitlets.Int(10).tag(sync=True)
    eval_prompts = traitlets.Int(40).tag(sync=True)
    n_layers = traitlets.Int(0).tag(sync=True)
    n_heads = traitlets.Int(0).tag(sync=True)
    # the chosen heads [[layer, head], ...]: the vector is built from these
    heads = traitlets.List().tag(sync=True)
    # the head effects shown: {"values", "sem", "normalized" float32 [L, H], "top_tokens" [L][H] (each head's
    # decoded mean output, top-1), "clean", "corrupt" (mean p(answer)), "n", "settings": {n_shots, n_prompts, seed}}
    effects = traitlets.Dict().tag(sync=True)
    # the opened head: {"layer", "head", "effect", "sem", "normalized", "rank", "tokens" [k], "probs" float32 [k]}
    head = traitlets.Dict().tag(sync=True)
    # the n-shot example whose attention is shown (0..n_prompts-1)
    example = traitlets.Int(0).tag(sync=True)
    # the opened head's attention on that example: {"layer", "head", "example", "tokens", "target", "data" [T, T]}
    pattern = traitlets.Dict().tag(sync=True)
    # the vector shown: {"heads", "scores" float32 [k], "norm", "tokens" [k'], "probs" float32 [k']}
    vector = traitlets.Dict().tag(sync=True)
    # its zero-shot accuracy: {"accuracy", "sem", "mean_probs" float32 [L], "layers", "baseline", "baseline_prob",
    # "best_layer", "best_accuracy", "n", "heads"}
    evaluation = traitlets.Dict().tag(sync=True)
    # the parts that describe other settings or heads than the current ones ("effects", "vector", "evaluation",
    # "trial"): drawn marked, until the run for the current ones finishes
    stale = traitlets.List(traitlets.Unicode()).tag(sync=True)
    # the prompt box
    prompt = traitlets.Unicode("").tag(sync=True)
    layer = traitlets.Int(-1).tag(sync=True)  # the vector is added after block `layer` (-1: the best layer)
    scale = traitlets.Float(1.0).tag(sync=True)
    max_new_tokens = traitlets.Int(12).tag(sync=True)
    positions = traitlets.Unicode("last").tag(sync=True)
    position_modes = traitlets.List(traitlets.Unicode()).tag(sync=True)
    # the last try: {"prompt", "layer", "steer_layer", "scale", "positions", "max_new_tokens", "heads", "text",
    # "baseline", "pieces", "baseline_pieces", "diverges_at", "relative"}
    trial = traitlets.Dict().tag(sync=True)

    def __init__(
        self,
        model: Any,
        task: Any,
        *,
        n_shots: int = 10,
        n_prompts: int = 10,
        seed: int = 0,
        top_n: int = 10,
        eval_prompts: int | None = None,
        prompt: str | None = None,
        layer: int | None = None,
        max_new_tokens: int = 12,
        wait: bool = False,
        **kwargs: Any,
    ):
        from ..ops.vector_results import HeadEffects
        from ..ops.vectors import as_task
        from ..validate import as_int

        errors = _errors()
        effects = task if isinstance(task, HeadEffects) else None
        if effects is not None:
            if effects.task is None:
                raise errors.WorkbenchError(
                    "These head effects carry no task: compute them with wb.head_effects(model, task)."
                )
            if effects.values.shape != (model.n_layers, model.n_heads):
                raise errors.WorkbenchError(
                    f"These head effects are [{effects.n_layers} x {effects.n_heads}] but this model has "
                    f"{model.n_layers} layers x {model.n_heads} heads: compute them on this model."
                )
            o = effects.options
            n_shots, n_prompts, seed = int(o["n_shots"]), int(o["n_prompts"]), int(o["seed"])
            task = effects.task
        task = as_task(task)
        task.answer_ids(model)  # every answer one token: else an error naming the pairs, before any work
        n_shots = task.check_shots(n_shots)
        n_prompts = as_int(n_prompts, "n_prompts", lo=1, hi=1000)
        seed = as_int(seed, "seed")
        top_n = as_int(top_n, "top_n", lo=1, hi=model.n_layers * model.n_heads)
        eval_prompts = min(40, len(task)) if eval_prompts is None else eval_prompts
        eval_prompts = as_int(eval_prompts, "eval_prompts", lo=1, hi=len(task),
                              hint=f" (the task has {len(task)} pairs)")  # fmt: skip
        max_new_tokens = as_int(max_new_tokens, "max_new_tokens", lo=1, hi=MAX_NEW_TOKENS)
        if layer is not None:
            layer = as_int(layer, "layer", lo=0, hi=model.n_layers - 2,
                           hint=" (the vector is added after block `layer`, wb.steer's layer + 1)")  # fmt: skip
        if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
            raise errors.WorkbenchError(
                f"prompt= takes a text to continue, e.g. {task.query(task.pairs[0][0])!r}."
            )
        modes = _steer_positions()
        self._task = task
        self._effects: Any = effects  # the HeadEffects shown
        self._effects_key: tuple | None = None  # the settings of the effects shown
        self._results: dict[
            tuple, tuple[Any, Any]
        ] = {}  # vector key -> (FunctionVector, VectorEvaluation | None)
        self._vector_shown: tuple | None = None  # the vector key of the vector shown
        self._eval_shown: tuple | None = None  # the vector key of the evaluation shown
        self._patterns: dict[
            int, Any
        ] = {}  # example -> AttentionResult of that n-shot prompt (current effects)
        self._trial: Any = None  # the SteerResult shown
        self._trial_key: tuple | None = None
        self._quiet = False
        super().__init__(
            model,
            task=self._task_info(task),
            n_shots=n_shots,
            n_prompts=n_prompts,
            seed=seed,
            top_n=top_n,
            eval_prompts=eval_prompts,
            n_layers=int(model.n_layers),
            n_heads=int(model.n_heads),
            prompt=prompt if prompt is not None else task.query(task.pairs[0][0]),
            layer=-1 if layer is None else layer,
            max_new_tokens=max_new_tokens,
            positions=modes[0],
            position_modes=modes,
            **kwargs,
        )
        self._handlers.update(
            head=self._on_head,
            toggle=self._on_toggle,
            steer=self._on_steer,
            recompute=lambda c, b: self.recompute(),
        )
        self.observe(self._settings_set, names=["n_shots", "n_prompts", "seed"])
        self.observe(self._top_n_set, names=["top_n"])
        self.observe(self._heads_set, names=["heads"])
        self.observe(self._eval_prompts_set, names=["eval_prompts"])
        self.observe(self._example_set, names=["example"])
        if effects is not None:
            self._show_effects(effects, self._settings())
            self._set_quietly(heads=[list(h) for h, _ in effects.top_heads(top_n)])
            self._update_vector(wait=wait)
        else:
            self.recompute(wait=wait)

    @staticmethod
    def _task_info(task: Any) -> dict[str, Any]:
        return {
            "name": str(task.name),
            "n_pairs": len(task),
            "examples": [[str(x), str(y)] for x, y in task.pairs[:6]],
            "template": str(task.template),
            "description": str(getattr(task, "description", "") or ""),
        }

    # ---- state helpers
    def _set_quietly(self, **traits: Any) -> None:
        self._quiet = True
        try:
            with self.hold_trait_notifications():
                for k, v in traits.items():
                    setattr(self, k, v)
        finally:
            self._quiet = False

    def _settings(self) -> tuple[int, int, int]:
        return (int(self.n_shots), int(self.n_prompts), int(self.seed))

    def _vector_key(self, heads: Any = None) -> tuple:
        chosen = tuple(_heads_list(self.heads if heads is None else heads))
        return (self._effects_key, chosen, int(self.eval_prompts))

    def _update_stale(self) -> None:
        stale = []
        if self._effects_key is not None and self._effects_key != self._settings():
            stale.append("effects")
        key = self._vector_key()
        if self.vector and self._vector_shown != key:
            stale.append("vector")
        if self.evaluation and self._eval_shown != key:
            stale.append("evaluation")
        if self.trial and self._trial_key is not None and self._trial_key[0] != self._vector_key()[:2]:
            stale.append("trial")
        self.stale = stale

    @property
    def effects_result(self) -> Any:
        """The HeadEffects drawn in the heatmap (None until computed)."""
        return self._effects

    @property
    def function_vector(self) -> Any:
        """The FunctionVector shown (None until built)."""
        got = self._results.get(self._vector_shown) if self._vector_shown is not None else None
        return got[0] if got else None

    @property
    def evaluation_result(self) -> Any:
        """The VectorEvaluation drawn as the accuracy curve (None until computed)."""
        got = self._results.get(self._eval_shown) if self._eval_shown is not None else None
        return got[1] if got else None

    @property
    def trial_result(self) -> Any:
        """The SteerResult of the last prompt tried (None before)."""
        return self._trial

    # ---- the head effects
    def recompute(self, wait: bool = False) -> None:
        """`wb.head_effects` for the current n_shots / n_prompts / seed, then the top `top_n` heads' vector and its
        evaluation (one job: progress runs over all three; Cancel keeps the parts that finished)."""
        settings = self._settings()
        task, top_n = self._task, int(self.top_n)
        self._update_stale()

        def run(progress, cancel):
            def part(lo: float, hi: float, what: str):  # the status always names the part running
                return lambda f, msg="": progress(
                    lo + (hi - lo) * min(max(float(f), 0.0), 1.0), f"{what}: {msg}" if msg else what
                )

            progress(0.0, "head effects")
            n_shots, n_prompts, seed = settings
            eff = _ops().head_effects(self.model, task, n_shots=n_shots, n_prompts=n_prompts, seed=seed,
                                      progress=part(0.0, 0.7, "head effects"), cancel=cancel)  # fmt: skip
            if self._settings() != settings:  # the controls moved on while it ran: a newer run follows
                return eff, None, settings
            self._show_effects(eff, settings)
            self._set_quietly(heads=[list(h) for h, _ in eff.top_heads(top_n)])
            self._update_stale()
            got = self._vector_run(part(0.7, 1.0, "the vector"), cancel)
            return eff, got, settings

        def done(out):
            eff, got, s = out
            self._record(
                f"head effects {task.name!r}, {s[0]}-shot over {s[1]} prompts",
                eff,
                args={"n_shots": s[0], "n_prompts": s[1], "seed": s[2]},
            )
            if got is not None:
                self._vector_done(got)
            self._after_run()

        def failed(exc):
            self._update_stale()
            if isinstance(exc, _errors().CancelledError):
                return ""
            if self._effects_key is None:
                return "Nothing to show yet: fix the input and press Compute."
            if self._effects_key != self._settings():
                n_shots, n_prompts, seed = self._effects_key
                self._set_quietly(n_shots=n_shots, n_prompts=n_prompts, seed=seed)
                self._update_stale()
                return "The controls are back to the settings of the heatmap shown."
            return ""

        self.submit("head effects", "", run, done, slot="effects", wait=wait, failed=failed)

    def _show_effects(self, eff: Any, settings: tuple[int, int, int]) -> None:
        """Draw `eff` as the heatmap (the head opened and the patterns belong to the old one: closed)."""
        self._effects = eff
        self._effects_key = settings
        self._patterns = {}
        L, H = eff.values.shape
        tops = [
            [str(eff.head_top_tokens[lyr][h][0]) if eff.head_top_tokens else "" for h in range(H)]
            for lyr in range(L)
        ]
        with self.hold_trait_notifications():
            self.effects = {
                "values": pack(np.asarray(eff.values, np.float32)),
                "sem": pack(np.nan_to_num(np.asarray(eff.sem, np.float32), nan=0.0)),
                "normalized": pack(np.asarray(eff.normalized, np.float32)),
                "top_tokens": tops,
                "clean": finite(eff.clean_mean),
                "corrupt": finite(eff.corrupt_mean),
                "n": int(eff.n_examples),
                "settings": {"n_shots": settings[0], "n_prompts": settings[1], "seed": settings[2]},
            }
            self.head = {}
            self.pattern = {}
            if self.example >= eff.n_examples:
                self._set_quietly(example=0)

    def _settings_set(self, change: Any) -> None:
        if self._quiet:
            return
        self.recompute()

    # ---- the chosen heads, the vector and its evaluation
    def _top_n_set(self, change: Any) -> None:
        if self._quiet:
            return
        n = change["new"]
        total = int(self.n_layers) * int(self.n_heads)
        if not isinstance(n, int) or not 1 <= n <= total:
            self._set_quietly(top_n=change["old"])
            self._fail(_errors().WorkbenchError(f"top n = {n!r}: choose 1..{total} heads."))
            return
        if self._effects is None:
            return  # the effects run takes the top n when it finishes
        self.heads = [list(h) for h, _ in self._effects.top_heads(n)]

    def _check_heads(self, heads: Any) -> list[list[int]]:
        L, H = int(self.n_layers), int(self.n_heads)
        out: list[list[int]] = []
        if not isinstance(heads, list | tuple):
            raise message_error(f"heads must be a list of [layer, head] pairs, got {type(heads).__name__}.")
        for item in heads:
            ok = (
                isinstance(item, list | tuple)
                and len(item) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) for x in item)
            )
            if not ok or not (0 <= item[0] < L and 0 <= item[1] < H):
                raise message_error(
                    f"heads: {item!r:.40} is not a head: each is [layer 0..{L - 1}, head 0..{H - 1}]."
                )
            if list(item) in out:
                raise message_error(f"heads: head (layer {item[0]}, head {item[1]}) is listed twice.")
            out.append([int(item[0]), int(item[1])])
        return out

    def _heads_set(self, change: Any) -> None:
        if self._quiet:
            return
        try:
            heads = self._check_heads(change["new"])
        except Exception as exc:
            self._set_quietly(heads=change["old"])
            self._fail(exc)
            return
        if heads != change["new"]:
            self._set_quietly(heads=heads)
        self._update_vector()

    def _eval_prompts_set(self, change: Any) -> None:
        if self._quiet:
            return
        n = change["new"]
        if not isinstance(n, int) or not 1 <= n <= len(self._task):
            self._set_quietly(eval_prompts=change["old"])
            self._fail(
                _errors().WorkbenchError(f"eval prompts = {n!r}: the task has 1..{len(self._task)} queries.")
            )
            return
        self._update_vector()

    def toggle_head(self, layer: int, head: int) -> FunctionVectorView:
        """Add head (layer, head) to the vector, or take it out (as shift-click does); the vector is rebuilt."""
        self.request("toggle", layer=layer, head=head)
        return self

    def _on_toggle(self, content: dict, _buffers: list) -> None:
        layer = check_int(content, "layer", 0, self.n_layers - 1)
        head = check_int(content, "head", 0, self.n_heads - 1)
        heads = [list(h) for h in self.heads]
        if [layer, head] in heads:
            heads.remove([layer, head])
        else:
            heads.append([layer, head])
        self.heads = heads

    def _update_vector(self, wait: bool = False) -> None:
        """Build the vector of the current heads and evaluate it (from the cache when these heads ran before)."""
        if self._effects is None:
            return
        key = self._vector_key()
        if not key[1]:
            self._vector_shown = self._eval_shown = None
            with self.hold_trait_notifications():
                self.vector = {}
                self.evaluation = {}
            self._update_stale()
            self._after_run()
            self._done_now()
            return
        cached = self._results.get(key)
        if cached is not None and cached[1] is not None:
            self._show_vector(key, cached[0])
            self._show_evaluation(key, cached[1])
            self._update_stale()
            self._after_run()
            self._done_now()
            return
        self._update_stale()

        def run(progress, cancel):
            return self._vector_run(progress, cancel)

        def done(got):
            self._vector_done(got)
            self._after_run()

        def failed(exc):
            self._update_stale()
            return ""

        self.submit("function vector", "", run, done, slot="vector", wait=wait, failed=failed)

    def _vector_run(self, progress, cancel) -> tuple[tuple, Any, Any] | None:
        """(key, FunctionVector, VectorEvaluation) of the current heads over the current effects."""
        key = self._vector_key()
        if not key[1] or self._effects is None:
            return None
        cached = self._results.get(key)
        fv = cached[0] if cached else None
        if fv is None:
            progress(0.0, f"function vector of {len(key[1])} heads")
            fv = _ops().function_vector(self.model, self._effects, heads=list(key[1]))
            self._results[key] = (fv, None)
        if self._vector_key() == key:
            self._show_vector(key, fv)
            self._update_stale()
        progress(0.05, "zero-shot accuracy by layer")

        def part(f, msg=""):
            progress(0.05 + 0.95 * min(max(float(f), 0.0), 1.0), f"zero-shot accuracy: {msg}")

        ev = _ops().evaluate_vector(self.model, self._task, fv, n_prompts=key[2], seed=key[0][2] if key[0] else 0,
                                    progress=part, cancel=cancel)  # fmt: skip
        self._results[key] = (fv, ev)
        return key, fv, ev

    def _vector_done(self, got: tuple[tuple, Any, Any] | None) -> None:
        if got is None:
            return
        key, fv, ev = got
        if self._vector_key() == key:
            self._show_vector(key, fv)
            self._show_evaluation(key, ev)
        self._update_stale()
        self._record(
            f"vector of {len(fv.heads)} heads: best layer {ev.best_layer} accuracy {ev.best_accuracy:.2f} "
            f"(baseline {ev.baseline:.2f})",
            fv,
            args={"heads": [f"L{a}H{b}" for a, b in fv.heads], "eval_prompts": ev.n_examples},
            value=finite(ev.best_accuracy),
            top=[[str(t), finite(p)] for t, p in fv.decode(min(5, len(fv.top_tokens)))],
        )

    def _show_vector(self, key: tuple, fv: Any) -> None:
        k = min(VECTOR_TOP_K, len(fv.top_tokens))
        self._vector_shown = key
        self.vector = {
            "heads": [[int(a), int(b)] for a, b in fv.heads],
            "scores": pack(np.nan_to_num(np.asarray(fv.scores, np.float32), nan=0.0)),
            "norm": finite(fv.norm),
            "tokens": [str(t) for t in fv.top_tokens[:k]],
            "probs": pack(np.asarray(fv.top_probs[:k], np.float32)),
        }

    def _show_evaluation(self, key: tuple, ev: Any) -> None:
        self._eval_shown = key
        self.evaluation = {
            "accuracy": pack(np.asarray(ev.accuracy, np.float32)),
            "sem": pack(np.nan_to_num(np.asarray(ev.sem, np.float32), nan=0.0)),
            "mean_probs": pack(np.asarray(ev.mean_probs, np.float32)),
            "layers": [int(x) for x in ev.layers],
            "baseline": finite(ev.baseline),
            "baseline_prob": finite(ev.baseline_prob),
            "best_layer": int(ev.best_layer),
            "best_accuracy": finite(ev.best_accuracy),
            "n": int(ev.n_examples),
            "heads": [[int(a), int(b)] for a, b in key[1]],
        }

    def _done_now(self) -> None:
        """A request answered without a job (from a cache): it replaces an old error, unless work is running."""
        if not self.runner.busy_for(self):
            self._clear_error()
            self.status = "done"

    def _after_run(self) -> None:
        self.last_result = self.evaluation_result or self.function_vector or self._effects
        self.code = self.to_code()

    # ---- a click on a head: its decoded mean output and its attention on one example
    def _on_head(self, content: dict, _buffers: list) -> None:
        from ..errors import SiteError

        try:
            layer = check_int(content, "layer", 0, self.n_layers - 1)
            head = check_int(content, "head", 0, self.n_heads - 1)
        except Exception as exc:
            raise SiteError(
                f"No such head: {exc} (layers 0..{self.n_layers - 1}, heads 0..{self.n_heads - 1})."
            ) from None
        self.open_head(layer, head, request_id=str(content.get("id") or ""))

    def open_head(
        self, layer: int, head: int, *, request_id: str = "", wait: bool = False
    ) -> FunctionVectorView:
        """Show head (layer, head): its effect, its mean output decoded, its attention on the current example."""
        eff = self._effects
        if eff is None:
            raise _errors().WorkbenchError("The head effects are not computed yet: wait for the heatmap.")
        layer = int(layer)
        head = int(head)
        if not (0 <= layer < self.n_layers and 0 <= head < self.n_heads):
            raise _errors().SiteError(f"No such head (layer {layer}, head {head}).")
        flat = np.asarray(eff.values, np.float64).reshape(-1)
        rank = int(np.sum(flat > flat[layer * self.n_heads + head])) + 1
        decoded = eff.decode_head(layer, head, top_k=min(HEAD_TOP_K, eff.head_top_ids.shape[-1]))
        with self.hold_trait_notifications():
            self.head = {
                "layer": layer,
                "head": head,
                "effect": finite(eff.values[layer, head]),
                "sem": finite(eff.sem[layer, head]),
                "normalized": finite(eff.normalized[layer, head]),
                "rank": rank,
                "tokens": [str(t) for t, _ in decoded],
                "probs": pack(np.array([p for _, p in decoded], np.float32)),
            }
            self.selected = [layer, head]
            if self.pattern and (self.pattern.get("layer"), self.pattern.get("head")) != (layer, head):
                self.pattern = {}
        self._clear_error()
        self._send_pattern(request_id=request_id, wait=wait)
        return self

    def _example_set(self, change: Any) -> None:
        if self._quiet:
            return
        n = self._effects.n_examples if self._effects is not None else int(self.n_prompts)
        i = change["new"]
        if not isinstance(i, int) or not 0 <= i < n:
            self._set_quietly(example=change["old"])
            self._fail(
                _errors().WorkbenchError(f"Example {i!r} does not exist: the n-shot prompts are 0..{n - 1}.")
            )
            return
        self.pattern = {}
        if self.head:
            self._send_pattern()

    def _send_pattern(self, *, request_id: str = "", wait: bool = False) -> None:
        """The opened head's attention pattern on the current example (one wb.attention run per example)."""
        if not self.head or self._effects is None:
            return
        i = int(self.example)
        eff = self._effects

        def show(attn: Any) -> None:
            h = self.head
            if not h or self._effects is not eff or int(self.example) != i:
                return  # the user moved on: the newer request shows its own
            layer, head = int(h["layer"]), int(h["head"])
            target = (eff.dataset.target or [""])[i] if eff.dataset is not None else ""
            self.pattern = {
                "layer": layer,
                "head": head,
                "example": i,
                "tokens": [str(t) for t in attn.tokens],
                "target": str(target),
                "data": pack(np.asarray(attn.patterns[attn.layers.index(layer), head], np.float32)),
            }

        if i in self._patterns:
            show(self._patterns[i])
            self._done_now()
            return
        prompt = eff.dataset.clean[i]

        def run(progress, cancel):
            return _ops().attention(self.model, prompt, progress=progress, cancel=cancel)

        def done(attn):
            if self._effects is eff:
                self._patterns[i] = attn
            show(attn)

        self.submit(
            "attention pattern", request_id, run, done, slot="attention", wait=wait, failed=lambda exc: ""
        )

    # ---- the prompt box
    def _on_steer(self, content: dict, _buffers: list) -> None:
        prompt = content.get("prompt", self.prompt)
        if not isinstance(prompt, str):
            raise message_error(f"The view sent prompt={prompt!r:.40}: it must be text.")
        layer = check_int(content, "layer", 0, self.n_layers - 2, optional=True, what="layer")
        n = check_int(content, "max_new_tokens", 1, MAX_NEW_TOKENS, optional=True, what="max_new_tokens")
        scale = content.get("scale", self.scale)
        positions = content.get("positions", self.positions)
        self.steer(prompt, layer=layer, scale=scale, max_new_tokens=n, positions=positions,
                   request_id=str(content.get("id") or ""))  # fmt: skip

    def steer(
        self,
        prompt: str | None = None,
        *,
        layer: int | None = None,
        scale: float | None = None,
        max_new_tokens: int | None = None,
        positions: str | None = None,
        request_id: str = "",
        wait: bool = False,
    ) -> FunctionVectorView:
        """Continue `prompt` greedily with the vector shown added after block `layer` (wb.steer at layer + 1) and
        without it (the Generate button); the result goes to `trial`. Bad input shows in the view and raises."""
        try:
            return self._steer(prompt, layer, scale, max_new_tokens, positions, request_id, wait)
        except Exception as exc:
            self._fail(exc)
            raise

    def _steer(self, prompt, layer, scale, max_new_tokens, positions, request_id, wait) -> FunctionVectorView:
        errors = _errors()
        prompt = self.prompt if prompt is None else prompt
        if not isinstance(prompt, str) or not prompt.strip():
            raise errors.WorkbenchError(
                f"Type a prompt to continue, e.g. {self._task.query(self._task.pairs[0][0])!r} (a zero-shot query)."
            )
        fv = self.function_vector
        ev = self.evaluation_result
        if fv is None or self._vector_shown != self._vector_key():
            raise errors.WorkbenchError(
                "No vector for the chosen heads yet: wait for it to be built (or choose heads: top n, or shift-click)."
            )
        if layer is None:
            layer = int(self.layer) if int(self.layer) >= 0 else (ev.best_layer if ev is not None else 0)
        if (
            isinstance(layer, bool)
            or not isinstance(layer, int | np.integer)
            or not 0 <= int(layer) <= self.n_layers - 2
        ):
            raise errors.WorkbenchError(
                f"layer={layer!r}: the vector is added after block 0..{self.n_layers - 2} (wb.steer's layer 1.."
                f"{self.n_layers - 1}, the input of the next block)."
            )
        layer = int(layer)
        scale = self.scale if scale is None else scale
        if isinstance(scale, bool) or not isinstance(scale, int | float | np.number):
            raise errors.WorkbenchError(
                f"scale={scale!r:.30}: give a number, e.g. 1.0 (the vector as it is)."
            )
        scale = float(scale)
        if not np.isfinite(scale) or abs(scale) > MAX_SCALE:
            raise errors.WorkbenchError(
                f"scale={scale!r}: give a number between -{MAX_SCALE:g} and {MAX_SCALE:g}."
            )
        n = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 1 <= int(n) <= MAX_NEW_TOKENS:
            raise errors.WorkbenchError(f"max_new_tokens={n!r}: generate 1..{MAX_NEW_TOKENS} tokens.")
        n = int(n)
        positions = str(self.positions if positions is None else positions)
        if positions not in self.position_modes:
            raise errors.WorkbenchError(f"positions={positions!r}: one of {', '.join(self.position_modes)}.")
        self._set_quietly(prompt=prompt, layer=layer, scale=scale, max_new_tokens=n, positions=positions)
        key = self._vector_key()
        vec = np.asarray(fv.vector, np.float32)
        kwargs: dict[str, Any] = {"positions": positions} if "last" in self.position_modes else {}

        def run(progress, cancel):
            return _ops().steer(self.model, prompt, vector=vec, layer=layer + 1, scale=scale, max_new_tokens=n,
                                progress=progress, cancel=cancel, **kwargs)  # fmt: skip

        def done(res):
            self._trial = res
            self._trial_key = (key[:2], layer)
            pieces = getattr(res, "pieces", None)
            base_pieces = getattr(res, "baseline_pieces", None)
            if pieces is None:
                pieces = _pieces(self.model, list(getattr(res, "tokens", [])))
            if base_pieces is None:
                base_pieces = [str(res.baseline)] if res.baseline else []
            diverge = getattr(res, "diverges_at", None)  # (wb.steer without it: the texts are compared only)
            self.trial = {
                "prompt": prompt,
                "layer": layer,
                "steer_layer": layer + 1,
                "scale": scale,
                "positions": positions,
                "max_new_tokens": n,
                "heads": [[int(a), int(b)] for a, b in key[1]],
                "text": str(res),
                "baseline": str(res.baseline),
                "pieces": [str(p) for p in pieces],
                "baseline_pieces": [str(p) for p in base_pieces],
                "diverges_at": None if diverge is None else int(diverge),
                "diverge_known": hasattr(res, "diverges_at"),
                "same": str(res) == str(res.baseline),
                "relative": finite(getattr(res, "relative", None)),
            }
            self._update_stale()
            self._record(
                f"steer {prompt[:30]!r} after block {layer}: {str(res)[:30]!r} (without: {str(res.baseline)[:30]!r})",
                res,
                args={"prompt": prompt, "layer": layer, "scale": scale, "positions": positions},
                top=[],
            )
            self.code = self.to_code()

        self.submit("steer", request_id, run, done, slot="steer", wait=wait, failed=lambda exc: "")
        return self

    # ---- code
    def to_code(self) -> str:
        """The nnsight code of what the view shows: the head effects, the vector, its evaluation, the last try."""
        parts = []
        sections = [
            ("head effects (wb.head_effects)", self._effects),
            ("the function vector (wb.function_vector)", self.function_vector),
            ("zero-shot accuracy by layer (wb.evaluate_vector)", self.evaluation_result),
        ]
        if self._trial is not None:
            t = self.trial
            sections.append(
                (
                    f"the vector tried on a prompt (wb.steer at layer {t.get('steer_layer')} = after block "
                    f"{t.get('layer')})",
                    self._trial,
                )  # fmt: skip
            )
        for title, r in sections:
            if r is None:
                continue
            try:
                code = r.to_code()
            except Exception as exc:  # noqa: BLE001 - one part's code failing must not hide the others
                code = f"# (no code: {exc})\n"
            parts.append(f"# ---- {title} ----\n{code}")
        return "\n\n".join(parts)
