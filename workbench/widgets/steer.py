"""SteerView: a steering studio. Drag the layer and scale, press Generate, and watch the steered and unsteered
continuations stream in side by side (`wb.steer` / `wb.steer_sweep`, one batched generation).

The tokens stream as custom messages ("stream": a "start" event, then one "step" event per generated token,
sent from inside the generation step that produced it); the finished run lands in the `run` trait (what a
reload or an HTML export shows). A remote model generates in one NDIF request: nothing streams, and the
whole run arrives in `run` at once.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import traitlets

from ..validate import as_number
from .base import WorkbenchWidget, _errors, _ops, finite, id_text, message_error, pack

POSITIONS = ("all", "last")
MAX_NEW_TOKENS = 256
MAX_SWEEP = 8  # extra scales beside the slider's (one batched row each)


def _steering():
    from ..ops import steering

    return steering


def _nice(x: float) -> float:
    """x rounded up to 1, 2 or 5 times a power of ten (a slider end that reads well)."""
    if not math.isfinite(x) or x <= 0:
        return 10.0
    p = 10 ** math.floor(math.log10(x))
    return next(m * p for m in (1, 2, 5, 10) if m * p >= x)


def _describe_vector(vector: Any) -> dict[str, Any]:
    """What the view says about a vector= argument (a tensor, an array, or a function vector's record)."""
    if not isinstance(vector, torch.Tensor | np.ndarray | list | tuple) and hasattr(vector, "vector"):
        heads = []
        for h in list(getattr(vector, "heads", None) or [])[:64]:
            try:
                heads.append([int(h[0]), int(h[1])])
            except (TypeError, ValueError, IndexError):
                continue
        return {"kind": "function vector", "label": type(vector).__name__, "heads": heads}
    return {"kind": "vector", "label": type(vector).__name__, "heads": []}


class SteerView(WorkbenchWidget):
    """`SteerView(model, prompt, vector=..., layer=None, scale=1.0, positions="all", max_new_tokens=24,
    sweep=(), positive=None, negative=None)`: a steering studio.

    The vector is `vector=` (a [d_model] tensor or array, or a function vector: anything with a `.vector`, as
    `wb.function_vector` returns) or the contrastive pair `positive=` / `negative=` (or `vector=(positive,
    negative)`: `wb.steering_vector` at the layer the slider picks; every layer's vector is computed once, up
    front). `layer=None` takes the vector's own `.layer` when it has one, else n_layers // 5. Sliders set `layer` and `scale`,
    a select `positions` ("all" / "last", see `wb.steer`); Generate runs `wb.steer` (or `wb.steer_sweep` when
    `sweep` lists more scales: one batched generation, one row per scale) and streams the unsteered and steered
    continuations side by side, token by token, marking where they diverge. Runs go to the history; Cancel
    stops a run (its tokens so far stay); `to_code()` is the nnsight code of the current settings.

    The scale slider spans +-2x the residual norm at the starting layer (`scale_range=(lo, hi)` to set it), and
    the view shows the push (|scale * vector| / the prompt's median resid_pre norm) as it moves. On a remote
    model each Generate is one NDIF request: nothing streams, the whole run arrives at once. `generate()` does
    what the button does, from Python; `first_token_s` is the last run's time from request to first token.
    """

    _view_kind = traitlets.Unicode("steer").tag(sync=True)
    prompt = traitlets.Unicode("").tag(sync=True)
    layer = traitlets.Int(0).tag(sync=True)
    scale = traitlets.Float(1.0).tag(sync=True)
    positions = traitlets.Unicode("all").tag(sync=True)
    max_new_tokens = traitlets.Int(24).tag(sync=True)
    # more scales to run beside `scale`, one row each (a scale sweep in the same batched generation)
    sweep = traitlets.List(traitlets.Float()).tag(sync=True)
    n_layers = traitlets.Int(0).tag(sync=True)
    scale_min = traitlets.Float(-10.0).tag(sync=True)
    scale_max = traitlets.Float(10.0).tag(sync=True)
    scale_step = traitlets.Float(0.1).tag(sync=True)
    # {"kind": "vector" | "function vector" | "pair", "label", "positive", "negative", "heads": [[l, h]], "d_model"}
    vector_info = traitlets.Dict().tag(sync=True)
    # the prompt's median resid_pre norm at every layer and the vector's norm there (float32 [L] each): the
    # view shows scale * |vector| / |resid| as the slider moves; {} while they are computed
    norms = traitlets.Dict().tag(sync=True)
    # the last run: {"id", "state" ("running"/"done"/"cancelled"/"failed"), "live", "prompt", "settings",
    # "rows": [{"label", "scale", "relative", "ids" int32 [n], "pieces", "probs" float32 [n], "top_ids" int32
    # [n, k], "top_probs" float32 [n, k], "diverges_at", "done"}], "id_text", "steps", "ms_first"}
    run = traitlets.Dict().tag(sync=True)

    def __init__(
        self,
        model: Any,
        prompt: str,
        vector: Any = None,
        *,
        layer: int | None = None,
        scale: float = 1.0,
        positions: str = "all",
        max_new_tokens: int = 24,
        sweep: Any = (),
        positive: str | None = None,
        negative: str | None = None,
        scale_range: tuple[float, float] | None = None,
        **kwargs: Any,
    ):
        errors = _errors()
        st = _steering()
        if not isinstance(prompt, str) or not prompt.strip():
            raise errors.WorkbenchError(
                f"SteerView(model, prompt, vector=...) takes a prompt text, got {type(prompt).__name__}"
                f"{'' if not isinstance(prompt, str) else ' (empty)'}."
            )
        if st._is_pair(vector) and positive is None and negative is None and len(vector) == 2:
            (positive, negative), vector = vector, None  # vector=(positive, negative), as wb.steer takes it
        pair = positive is not None or negative is not None
        if pair and vector is not None:
            raise errors.WorkbenchError(
                "SteerView takes vector= or positive=/negative= (a contrastive pair), not both."
            )
        if pair and not (isinstance(positive, str) and isinstance(negative, str)):
            raise errors.WorkbenchError(
                "SteerView(positive=..., negative=...) needs both prompts of the contrastive pair as text, e.g. "
                "positive='The food was delicious', negative='The food was'."
            )
        if not pair and vector is None:
            raise errors.WorkbenchError(
                "SteerView needs a direction: vector= (a [d_model] tensor or array, or a function vector from "
                "wb.function_vector) or positive= and negative= prompts (a contrastive pair)."
            )
        if layer is None:
            own = getattr(vector, "layer", None)
            layer = own if isinstance(own, int) and not isinstance(own, bool) else max(0, model.n_layers // 5)
        layer = model.check_layer(layer)
        st.check_positions(positions)
        if scale_range is not None:
            try:
                lo, hi = (as_number(x, "scale_range") for x in scale_range)
            except (TypeError, ValueError):
                raise errors.WorkbenchError(
                    f"scale_range=(lo, hi) takes two numbers, got {scale_range!r}."
                ) from None
            if not lo < hi:
                raise errors.WorkbenchError(f"scale_range=(lo, hi) needs lo < hi, got {scale_range!r}.")
            scale_range = (lo, hi)
        self._pair: tuple[str, str] | None = None
        self._vectors: dict[int, torch.Tensor] = {}  # layer -> vector (one for every layer of a pair)
        self._fixed: torch.Tensor | None = None
        if pair:
            self._pair = (positive, negative)
            self._vectors = st.pair_vectors(model, positive, negative)
            info = {"kind": "pair", "label": "contrastive pair", "positive": positive, "negative": negative}
        else:
            self._fixed = st._as_vector(model, vector)
            info = _describe_vector(vector)
        info["d_model"] = int(model.d_model)
        self._quiet = False
        self._stream: dict[str, Any] | None = None  # the run being streamed (rows so far), for a cancel
        self.first_token_s: float | None = None  # seconds from the Generate request to the first token sent
        super().__init__(
            model,
            prompt=prompt,
            layer=layer,
            scale=float(as_number(scale, "scale")),
            positions=positions,
            max_new_tokens=int(max_new_tokens),
            sweep=self._checked_sweep(sweep),
            n_layers=int(model.n_layers),
            vector_info=info,
            **kwargs,
        )
        self._check_tokens(self.max_new_tokens)
        self._handlers.update(generate=self._on_generate)
        self._norms_for(prompt, scale_range)
        self.observe(self._settings_edited, names=["layer", "scale", "positions", "max_new_tokens", "sweep"])
        self.observe(self._prompt_edited, names=["prompt"])
        self.code = self.to_code()

    # ---- settings
    def _checked_sweep(self, sweep: Any) -> list[float]:
        if sweep is None:
            return []
        items = [sweep] if isinstance(sweep, int | float) else list(sweep)
        if len(items) > MAX_SWEEP:
            raise _errors().WorkbenchError(
                f"sweep= has {len(items)} scales; the view runs at most {MAX_SWEEP} beside the slider's."
            )
        return [as_number(s, f"sweep[{i}]") for i, s in enumerate(items)]

    def _check_tokens(self, n: int) -> None:
        if not 1 <= int(n) <= MAX_NEW_TOKENS:
            raise _errors().WorkbenchError(f"max_new_tokens must be 1..{MAX_NEW_TOKENS}, got {n}.")

    def vector_at(self, layer: int) -> torch.Tensor:
        """The [d_model] vector the view adds at `layer` (a pair's differs per layer)."""
        if self._fixed is not None:
            return self._fixed
        return self._vectors[int(layer)]

    def _settings(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "layer": int(self.layer),
            "scale": float(self.scale),
            "positions": self.positions,
            "max_new_tokens": int(self.max_new_tokens),
            "sweep": [float(s) for s in self.sweep],
        }

    def _scales(self, s: dict[str, Any]) -> list[float]:
        """The slider's scale first, then the sweep's others (duplicates dropped)."""
        out = [s["scale"]]
        for x in s["sweep"]:
            if x not in out:
                out.append(x)
        return out

    def _settings_edited(self, change: Any) -> None:
        if self._quiet:
            return
        if not 0 <= self.layer < self.n_layers:
            self._fail(_errors().WorkbenchError(f"layer {self.layer} is outside 0..{self.n_layers - 1}."))
            return
        try:
            self.code = self.to_code()
        except Exception as exc:  # noqa: BLE001 - a bad setting shows in the view; Generate says what to fix
            self._fail(exc)

    def _prompt_edited(self, change: Any) -> None:
        if self._quiet:
            return
        self._settings_edited(change)
        self._norms_for(self.prompt, None, background=True)

    def _norms_for(
        self, prompt: str, scale_range: tuple[float, float] | None, background: bool = False
    ) -> None:
        """The prompt's median resid_pre norm at every layer (one forward) and the vector's norms: the view
        shows the push relative to the stream; at construction they also set the scale slider's range."""
        model = self.model

        def run(progress, cancel):
            from ..engine.traced import collect
            from ..remote import job_status

            ids = model.to_tokens(prompt)
            with job_status(model, progress, cancel):
                acts = collect(model, ids, "resid_pre", list(range(model.n_layers)))
            return np.asarray([float(acts[x][0].norm(dim=-1).median()) for x in range(model.n_layers)])

        def done(resid):
            vec = np.asarray([float(self.vector_at(x).norm()) for x in range(model.n_layers)])
            if self.prompt != prompt:
                return
            self.norms = {"resid": pack(resid.astype(np.float32)), "vector": pack(vec.astype(np.float32))}
            if not background:
                self._set_range(resid, vec, scale_range)

        def failed(exc):
            return ""  # the prompt's problem shows when Generate runs it

        if background:
            self.submit("norms", "", run, done, slot="norms", quiet=True, failed=failed)
        else:
            try:
                self.submit("norms", "", run, done, slot="norms", wait=True)
            except Exception as exc:  # noqa: BLE001 - shown in the view; the defaults stay
                self._fail(exc)
            if not self.norms:
                self._set_range(None, None, scale_range)

    def _set_range(self, resid: Any, vec: Any, scale_range: tuple[float, float] | None) -> None:
        if scale_range is not None:
            lo, hi = scale_range
        else:
            hi = 10.0
            if resid is not None and vec is not None and vec[self.layer] > 0:
                hi = _nice(2.0 * float(resid[self.layer]) / float(vec[self.layer]))  # up to a 2x push
            lo = -hi
        hi = max(hi, abs(self.scale))
        lo = min(lo, -abs(self.scale)) if scale_range is None else min(lo, self.scale)
        self.scale_min, self.scale_max = float(lo), float(hi)
        self.scale_step = float(_nice((hi - lo) / 400.0) / 2) if hi > lo else 0.1

    # ---- Generate
    def _on_generate(self, content: dict, _buffers: list) -> None:
        """The Generate button: the settings are the traits (the sliders set them before the click arrives); an
        edited prompt comes with the request, and its residual norms are measured after the generation."""
        received = time.perf_counter()
        prompt = content.get("prompt")
        if prompt is not None:
            if not isinstance(prompt, str):
                raise message_error(f"The view sent a prompt that is not text: {type(prompt).__name__}.")
            self._quiet = True
            try:
                self.prompt = prompt
            finally:
                self._quiet = False
        try:
            self.generate(request_id=str(content.get("id") or ""), _received=received)
        finally:
            if prompt is not None:
                self._settings_edited(None)
                self._norms_for(self.prompt, None, background=True)  # queued behind the generation

    def generate(
        self, *, wait: bool = False, request_id: str = "", _received: float | None = None
    ) -> SteerView:
        """Run the current settings (the Generate button): stream the tokens, then show and record the run."""
        received = time.perf_counter() if _received is None else _received
        s = self._settings()
        if s["positions"] not in POSITIONS:
            raise message_error(f"positions is 'all' or 'last', got {s['positions']!r}.")
        if not 0 <= s["layer"] < self.n_layers:
            raise message_error(f"layer {s['layer']} is outside 0..{self.n_layers - 1}.")
        self._check_tokens(s["max_new_tokens"])
        self.first_token_s = None
        scales = self._scales(s)
        vec = self.vector_at(s["layer"])
        model = self.model
        run_id = request_id or f"run{time.monotonic_ns()}"
        labels = ["unsteered"] + [f"scale {x:g}" for x in scales]
        stream: dict[str, Any] = {"id": run_id, "settings": s, "steps": []}

        def on_token(step: Any) -> None:
            stream["steps"].append(step)
            if not step.live:
                return  # a remote run: the whole run arrives in `run` when the request returns
            if len(stream["steps"]) == 1:
                self.first_token_s = time.perf_counter() - received
            self.send(
                {
                    "kind": "stream",
                    "event": "step",
                    "run": run_id,
                    "step": int(step.step),
                    "ids": [None if t is None else int(t) for t in step.ids],
                    "pieces": [str(p) for p in step.pieces],
                    "probs": {"shape": [len(step.probs)], "dtype": "float32"},
                },
                buffers=[np.asarray([np.nan if p is None else p for p in step.probs], np.float32).tobytes()],
            )

        def run(progress, cancel):
            self._stream = stream
            self.send(
                {
                    "kind": "stream",
                    "event": "start",
                    "run": run_id,
                    "live": not model.remote,
                    "prompt": s["prompt"],
                    "settings": s,
                    "rows": [
                        {"label": lab, "scale": sc} for lab, sc in zip(labels, [None, *scales], strict=True)
                    ],
                }
            )
            common = dict(
                vector=vec,
                layer=s["layer"],
                max_new_tokens=s["max_new_tokens"],
                positions=s["positions"],
                on_token=on_token,
                progress=progress,
                cancel=cancel,
            )
            if len(scales) == 1:
                return _ops().steer(model, s["prompt"], scale=scales[0], **common)
            return _ops().steer_sweep(model, s["prompt"], scales=scales, **common)

        def done(result):
            self._stream = None
            results = [result] if len(scales) == 1 else list(result.results)
            self.run = self._finished(run_id, s, scales, results)
            self.last_result = result
            text = str(results[0])
            where = " last" if s["positions"] == "last" else ""
            self._record(
                f"L{s['layer']} ×{s['scale']:g}{where}: {text[:40]!r}",
                result,
                args={k: v for k, v in s.items() if k != "prompt"} | {"prompt": s["prompt"][:60]},
            )

        def failed(exc):
            self._stream = None
            cancelled = isinstance(exc, _errors().CancelledError)
            if stream["steps"]:  # tokens were shown: keep them, marked
                self.run = self._partial(
                    run_id, s, scales, stream["steps"], "cancelled" if cancelled else "failed"
                )
            return ""

        self.submit("generate", run_id, run, done, slot="generate", wait=wait, failed=failed)
        return self

    # ---- the run as the view draws it
    def _row(
        self, label: str, scale: float | None, tokens: list[int], pieces: list[str], probs: Any
    ) -> dict[str, Any]:
        return {
            "label": label,
            "scale": scale,
            "ids": pack(np.asarray(tokens, np.int32)),
            "pieces": [str(p) for p in pieces],
            "probs": pack(np.asarray(probs, np.float32)),
        }

    def _finished(
        self, run_id: str, s: dict[str, Any], scales: list[float], results: list[Any]
    ) -> dict[str, Any]:
        first = results[0]
        base = self._row(
            "unsteered", None, first.baseline_tokens, first.baseline_pieces, first.baseline_probs
        )
        rows = [base]
        ids_all, toks_all = [], []
        for sc, r in zip(scales, results, strict=True):
            row = self._row(f"scale {sc:g}", sc, r.tokens, r.pieces, r.token_probs)
            row["relative"] = finite(r.relative)
            row["diverges_at"] = r.diverges_at
            row["done"] = bool(r.stopped_at_eos)
            row["top_ids"] = pack(np.asarray(r.top_ids, np.int32))
            row["top_probs"] = pack(np.asarray(r.top_probs, np.float32))
            ids_all.append(np.asarray(r.top_ids))
            toks_all.append(r.top_tokens)
            rows.append(row)
        texts = {}
        for ids, toks in zip(ids_all, toks_all, strict=True):
            texts.update(id_text(ids, toks))
        return {
            "id": run_id,
            "state": "done",
            "live": not self.model.remote,
            "prompt": s["prompt"],
            "settings": s,
            "rows": rows,
            "id_text": texts,
            "resid_norm": finite(first.resid_norm),
            "text": str(first),
            "baseline": str(first.baseline),
            "steps": int(s["max_new_tokens"]),
            "ms_first": finite(None if self.first_token_s is None else 1000 * self.first_token_s),
        }

    def _partial(
        self, run_id: str, s: dict[str, Any], scales: list[float], steps: list[Any], state: str
    ) -> dict[str, Any]:
        n_rows = len(steps[0].ids)
        toks: list[list[int]] = [[] for _ in range(n_rows)]
        pieces: list[list[str]] = [[] for _ in range(n_rows)]
        probs: list[list[float]] = [[] for _ in range(n_rows)]
        for step in steps:
            for r in range(n_rows):
                if step.ids[r] is not None:
                    toks[r].append(int(step.ids[r]))
                    pieces[r].append(step.pieces[r])
                    probs[r].append(float(step.probs[r]))
        rows = [self._row("unsteered", None, toks[0], pieces[0], probs[0])]
        for r, sc in enumerate(scales, start=1):
            row = self._row(f"scale {sc:g}", sc, toks[r], pieces[r], probs[r])
            row["diverges_at"] = _steering().first_difference(toks[r], toks[0])
            rows.append(row)
        return {
            "id": run_id,
            "state": state,
            "live": not self.model.remote,
            "prompt": s["prompt"],
            "settings": s,
            "rows": rows,
            "id_text": {},
            "steps": len(steps),
        }

    # ---- code
    def to_code(self) -> str:
        """Standalone nnsight code of the current settings (layer, scale, positions, sweep, prompt)."""
        from .. import codegen

        s = self._settings()
        scales = self._scales(s)
        options = {
            "prompt": s["prompt"],
            "layer": s["layer"],
            "max_new_tokens": s["max_new_tokens"],
            "positions": s["positions"],
            "pair": self._pair,
        }
        vec = self.vector_at(s["layer"])
        if len(scales) == 1:
            return codegen.steer_code(
                self.model, {**options, "op": "steer", "scale": scales[0], "baseline": True}, vec
            )
        return codegen.steer_sweep_code(self.model, {**options, "op": "steer_sweep", "scales": scales}, vec)
