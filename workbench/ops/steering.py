"""Steering: add a direction to the residual stream (resid_pre of one layer) during greedy generation.

One engine serves `wb.steer`, `wb.steer_sweep` and `wb.SteerView`: the prompt is repeated once per row of one
batched `nn.generate` (row 0 the unsteered baseline, which adds exactly zero, then one row per scale), so
the baseline and every scale come from the same forward passes. Locally the trace body runs step by step
in lockstep with the model (nnsight's interleaver), so `on_token` sees each token as soon as its step's
logits exist, before the next step starts. A remote model runs the same trace in one NDIF request, with no
callback inside it; `on_token` then receives every step once the request returns (`SteerStep.live` False).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import codegen
from ..engine.batching import Progress, check_cancel
from ..engine.kernels import read
from ..engine.traced import collect
from ..errors import TokenizationError, WorkbenchError
from ..model import Model
from ..remote import job_status
from ..validate import as_bool, as_int, as_list, as_number
from .results import SteerResult, SteerSweepResult

POSITIONS = ("all", "last")
TOP_K = 5  # each step's alternatives kept per row (the view's tooltips; tests compare them with wb.intervene)
MAX_ROWS = 16  # scales in one batched generation


def steering_vector(model: Model, positive: str, negative: str, layer: int) -> torch.Tensor:
    """resid_pre[layer] at the last token of `positive` minus that of `negative` (contrastive pair)."""
    layer = model.check_layer(layer)
    return pair_vectors(model, positive, negative, [layer])[layer]


def pair_vectors(
    model: Model, positive: str, negative: str, layers: Sequence[int] | None = None
) -> dict[int, torch.Tensor]:
    """`steering_vector` at each of `layers` (default: every layer) from one run of each prompt:
    {layer: resid_pre[layer] at the last token of positive minus negative} (two requests remotely)."""
    layers = list(range(model.n_layers)) if layers is None else [model.check_layer(x) for x in layers]
    pos_ids = model.to_tokens(positive, what="positive prompt")
    neg_ids = model.to_tokens(negative, what="negative prompt")
    with (
        model.lock,
        job_status(model, None, None),
    ):  # both runs on the same model state; remote errors redacted
        pos = collect(model, pos_ids, "resid_pre", layers)
        neg = collect(model, neg_ids, "resid_pre", layers)
    return {x: (pos[x][0, -1] - neg[x][0, -1]).float() for x in layers}


def _eos_ids(model: Model) -> set[int]:
    eos = getattr(getattr(model.hf, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = model.tokenizer.eos_token_id
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


def _as_vector(model: Model, vector: object) -> torch.Tensor:
    """A float32 CPU copy of a user's steering vector ([d_model]); refuses what cannot be steered with.

    Besides tensors and arrays it takes any object with a `.vector` attribute (a function vector from
    `wb.function_vector`, or your own record), read as that attribute."""
    if not isinstance(vector, torch.Tensor | np.ndarray | list | tuple) and hasattr(vector, "vector"):
        inner = vector.vector
        if not isinstance(inner, torch.Tensor | np.ndarray | list | tuple):
            raise WorkbenchError(
                f"vector= got a {type(vector).__name__} whose .vector is a {type(inner).__name__}: it must be a "
                "[d_model] tensor or array (e.g. the .vector of wb.function_vector(model, task))."
            )
        vector = inner
    if isinstance(vector, torch.Tensor):
        if vector.is_meta:
            raise WorkbenchError(
                "The steering vector is on the meta device: it has a shape but no values. Build it on a real "
                "device (e.g. wb.steering_vector(model, positive, negative, layer), or torch.randn(d_model))."
            )
        if vector.is_complex() or vector.dtype == torch.bool:
            raise WorkbenchError(f"The steering vector must be real numbers, got dtype {vector.dtype}.")
        vec = vector.detach().to(device="cpu", dtype=torch.float32).clone()  # grad, bf16, GPU: converted
    else:
        try:
            arr = np.asarray(vector)
        except (TypeError, ValueError):
            arr = np.asarray(None)
        if arr.dtype.kind not in "iuf":
            raise WorkbenchError(
                f"vector= takes a [d_model] tensor or array of real numbers, an object with a .vector (a "
                f"function vector) or a (positive, negative) pair of prompts, got {type(vector).__name__}."
            )
        vec = torch.tensor(arr, dtype=torch.float32)
    if vec.dim() > 1 and vec.numel() == model.d_model:
        vec = vec.flatten()  # e.g. [1, d_model]
    if vec.shape != (model.d_model,):
        raise WorkbenchError(
            f"The steering vector has shape {tuple(vec.shape)}; it must be ({model.d_model},), this model's "
            "d_model (a vector made on another model does not fit this one)."
        )
    if not torch.isfinite(vec).all():
        bad = int((~torch.isfinite(vec)).sum())
        raise WorkbenchError(
            f"The steering vector has {bad} non-finite entries (NaN or inf): adding it would break every "
            "activation after that layer. Check how it was computed (e.g. a division by a zero norm)."
        )
    return vec


def check_positions(positions: Any) -> str:
    """ "all" or "last", or a WorkbenchError naming both."""
    if not isinstance(positions, str) or positions not in POSITIONS:
        raise WorkbenchError(
            f"positions= is 'all' (add the vector at every position, prompt and generated) or 'last' (at the "
            f"prompt's last token and at each generated token only), got {positions!r}."
        )
    return positions


def check_length(model: Model, ids: torch.Tensor, max_new_tokens: int) -> None:
    """The prompt plus the new tokens must fit in the model's context."""
    if ids.shape[1] + max_new_tokens > model.n_ctx:
        raise TokenizationError(
            f"The prompt is {ids.shape[1]} tokens and max_new_tokens={max_new_tokens}: together "
            f"{ids.shape[1] + max_new_tokens}, more than this model's context of {model.n_ctx}. Ask for at most "
            f"max_new_tokens={max(0, model.n_ctx - ids.shape[1])} or shorten the prompt."
        )


# ------------------------------------------------------------------------------------------ streaming


@dataclass(frozen=True)
class SteerStep:
    """One generation step, as it is produced: each row's new token (None once the row has stopped).

    `rows` names the rows ("baseline", "scale 4"), `ids` their new token ids, `pieces` the text each token
    adds to its row's decoded continuation (the pieces of a row add up to its text; a token that ends
    inside a multi-byte character adds "" and the next one carries it), `probs` each pick's probability
    under the model's next-token distribution at that step. `live` is False when the steps are replayed
    after a remote request (NDIF runs the generation in one request: nothing streams)."""

    step: int
    rows: tuple[str, ...]
    ids: tuple[int | None, ...]
    pieces: tuple[str, ...]
    probs: tuple[float | None, ...]
    live: bool = True


class _Detok:
    """Each new token's share of the decoded text of its row, so that the shares add up to that text."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def push(self, token: int, last: bool = False) -> str:
        """The text `token` adds ("" while it ends inside a character, unless it is the row's `last`)."""
        self.ids.append(int(token))
        full = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if full.endswith("\ufffd") and not last:  # a multi-byte character cut by a token boundary: wait
            return ""
        keep = len(os.path.commonprefix([self.text, full]))  # all of it, unless the decoder rewrote the end
        piece, self.text = full[keep:], full
        return piece


class _Rows:
    """The rows of one batched generation as they grow: tokens (cut at EOS), pieces and probabilities."""

    def __init__(self, model: Model, labels: list[str]) -> None:
        self.labels = tuple(labels)
        self.eos = _eos_ids(model)
        self.tokens: list[list[int]] = [[] for _ in labels]
        self.pieces: list[list[str]] = [[] for _ in labels]
        self.probs: list[list[float]] = [[] for _ in labels]
        self.done = [False] * len(labels)
        self._detok = [_Detok(model.tokenizer) for _ in labels]

    def add(self, step: int, picks: list[int], probs: list[float], live: bool, final: bool) -> SteerStep:
        """Record step `step`'s greedy picks (one per row) and say what is new (`final`: the last step)."""
        ids: list[int | None] = []
        pieces: list[str] = []
        shown: list[float | None] = []
        for r, (tok, p) in enumerate(zip(picks, probs, strict=True)):
            if self.done[r]:
                ids.append(None)
                pieces.append("")
                shown.append(None)
                continue
            self.done[r] = tok in self.eos  # the EOS pick ends the row (kept, as plain greedy decoding does)
            piece = self._detok[r].push(tok, last=final or self.done[r])
            self.tokens[r].append(int(tok))
            self.pieces[r].append(piece)
            self.probs[r].append(float(p))
            ids.append(int(tok))
            pieces.append(piece)
            shown.append(float(p))
        return SteerStep(step, self.labels, tuple(ids), tuple(pieces), tuple(shown), live)


OnToken = Callable[[SteerStep], Any] | None


def _generate(
    model: Model,
    ids: torch.Tensor,
    layer: int,
    adds: torch.Tensor,
    positions: str,
    max_new_tokens: int,
    emit: Callable[[int, torch.Tensor, torch.Tensor], None] | None,
) -> dict[str, torch.Tensor]:
    """Greedy continuation of `ids` once per row of `adds` [B, d_model], row b adding adds[b] at
    resid_pre[layer] ("all": every position; "last": positions T-1 and later, T the prompt length).

    nnsight runs no code after a step loop that generation leaves early, so generation is held to exactly
    `max_new_tokens` (EOS suppressed) while each step's unsuppressed greedy pick is recorded; the caller
    cuts each row where that pick was EOS, which is exactly where plain greedy decoding stops. Each step's
    top-k probabilities are kept, not the vocabulary. `emit(step, picks, top_probs)` (local only) runs
    inside the step, after its logits exist and before the next step starts.

    Which absolute positions a step's input covers: with the KV cache, step 0 is the prompt (0..T-1) and
    step s > 0 the one new token (T-1+s); without it step s is 0..T-1+s. Either way the input's last
    `s + 1` positions are the ones >= T-1, so "last" adds at `h[:, S - s - 1:]` (clamped at 0), S the
    input's length.
    """
    ref = model.site_ref("resid_pre", layer)
    envoy = model.envoy(ref)
    nn = model.nn
    use_input = ref.use_input
    last = positions == "last"
    k = min(TOP_K, model.vocab_size)
    batch = ids.repeat(adds.shape[0], 1)
    with (
        torch.no_grad(),
        nn.generate(
            batch,
            attention_mask=torch.ones_like(batch),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            **model.trace_options(),
        ) as tracer,
    ):
        picks, top_ids, top_probs, norms = [], [], [], []
        for step in tracer.iter[:max_new_tokens]:
            h = read(envoy, use_input)
            if not norms:  # the first step sees the whole prompt: its residual norms, before steering
                norms.append(h[0].norm(dim=-1).float())
            add = adds.to(h.dtype)[:, None, :]
            if last:
                h[:, max(0, h.shape[1] - step - 1) :] += add
            else:
                h += add
            logits = nn.output.logits[:, -1].float()
            pick = logits.argmax(-1)
            top = torch.softmax(logits, -1).topk(k, -1)
            picks.append(pick)
            top_ids.append(top.indices)
            top_probs.append(top.values)
            if emit is not None:
                emit(step, pick, top.values)
        # nnsight hands back only what is .save()d itself (not a container of saved values)
        all_picks = torch.stack(picks, 1).save()  # [B, n]
        all_ids = torch.stack(top_ids, 1).save()  # [B, n, k]
        all_probs = torch.stack(top_probs, 1).save()
        prompt_norms = norms[0].save()
        generated = tracer.result.save()
    return {
        "picks": all_picks.detach().cpu(),
        "top_ids": all_ids.detach().cpu(),
        "top_probs": all_probs.detach().cpu(),
        "norms": prompt_norms.detach().cpu(),
        "generated": generated[:, ids.shape[1] :].detach().cpu(),
    }


@dataclass
class _RowsOut:
    """What `_run` returns: each row's tokens, pieces, probabilities and top-k, and the prompt's norms."""

    rows: _Rows
    top_ids: np.ndarray  # [B, n, k]
    top_probs: np.ndarray
    norms: torch.Tensor


def _run(
    model: Model,
    ids: torch.Tensor,
    layer: int,
    adds: torch.Tensor,
    labels: list[str],
    positions: str,
    max_new_tokens: int,
    on_token: OnToken,
    progress: Progress,
    cancel: threading.Event | None,
) -> _RowsOut:
    """One batched generation of the rows `adds` (call under model.lock and job_status): streams each
    step to `on_token` (live locally; replayed after the request remotely) and honours `cancel` per step."""
    rows = _Rows(model, labels)
    remote = bool(model.remote)

    def emit(step: int, pick: torch.Tensor, probs: torch.Tensor) -> None:
        check_cancel(cancel)
        got = probs[:, 0].tolist()  # the pick's probability: the argmax of the distribution
        chosen = pick.tolist()
        event = rows.add(step, chosen, got, live=True, final=step == max_new_tokens - 1)
        if on_token is not None:
            on_token(event)
        if progress is not None:
            progress((step + 1) / max_new_tokens, f"token {step + 1}/{max_new_tokens}")
        check_cancel(cancel)

    out = _generate(model, ids, layer, adds, positions, max_new_tokens, None if remote else emit)
    picks = out["picks"].tolist()
    if remote:  # the whole generation arrived at once: record (and replay) its steps
        for step in range(max_new_tokens):
            probs = out["top_probs"][:, step, 0].tolist()
            event = rows.add(
                step, [p[step] for p in picks], probs, live=False, final=step == max_new_tokens - 1
            )
            if on_token is not None and any(t is not None for t in event.ids):
                on_token(event)
    # the generated ids are the truth: before EOS they are the picks (greedy), unless the model's generation
    # config changes the choice (e.g. a repetition penalty); then they win and the pieces follow them
    for r in range(len(labels)):
        n = len(rows.tokens[r])
        real = out["generated"][r, :n].tolist()
        if rows.done[r]:
            real = real[: n - 1] + [rows.tokens[r][-1]]  # the EOS pick, suppressed in the generated ids
        if real != rows.tokens[r]:
            rows.tokens[r] = real
            det = _Detok(model.tokenizer)
            rows.pieces[r] = [det.push(t, last=i == len(real) - 1) for i, t in enumerate(real)]
    return _RowsOut(rows, out["top_ids"].numpy(), out["top_probs"].numpy(), out["norms"])


# ------------------------------------------------------------------------------------------ public ops


def _checked(
    model: Model, prompt: str, layer: Any, max_new_tokens: Any, positions: Any
) -> tuple[torch.Tensor, int, int, str]:
    layer = model.check_layer(layer)
    max_new_tokens = as_int(max_new_tokens, "max_new_tokens", lo=1, hi=1024)
    positions = check_positions(positions)
    ids = model.to_tokens(prompt)
    check_length(model, ids, max_new_tokens)
    return ids, layer, max_new_tokens, positions


def _resolve(model: Model, vector: Any, layer: int) -> tuple[torch.Tensor, tuple[str, str] | None]:
    """The [d_model] vector of `vector=` (a pair of prompts is run here, under the caller's lock)."""
    if _is_pair(vector):
        if len(vector) != 2:
            raise WorkbenchError(
                "vector= takes a [d_model] tensor or a (positive, negative) pair of prompts."
            )
        return _as_vector(model, steering_vector(model, vector[0], vector[1], layer)), (vector[0], vector[1])
    return _as_vector(model, vector), None


def _is_pair(vector: Any) -> bool:
    return isinstance(vector, tuple) and bool(vector) and all(isinstance(v, str) for v in vector)


def _scaled(vec: torch.Tensor, scale: float) -> torch.Tensor:
    add = scale * vec
    if not torch.isfinite(add).all():
        raise WorkbenchError(
            f"scale={scale!r} times the steering vector overflows float32: use a smaller scale."
        )
    return add


def _result(
    model: Model,
    got: _RowsOut,
    row: int,
    base_row: int | None,
    vec: torch.Tensor,
    scale: float,
    options: dict[str, Any],
) -> SteerResult:
    """Row `row` of a run as a SteerResult (with the baseline row's text when there is one)."""
    rows = got.rows
    n = len(rows.tokens[row])
    resid_norm = float(got.norms.float().median())
    added_norm = float((scale * vec).norm())
    base = rows.tokens[base_row] if base_row is not None else []
    diverge = first_difference(rows.tokens[row], base) if base_row is not None else None
    top_ids = got.top_ids[row, :n].astype(np.int32)
    return SteerResult(
        _decode(model, rows.tokens[row]),
        baseline=_decode(model, base) if base_row is not None else "",
        vector=vec.numpy(),
        tokens=list(rows.tokens[row]),
        pieces=list(rows.pieces[row]),
        baseline_tokens=list(base),
        baseline_pieces=list(rows.pieces[base_row]) if base_row is not None else [],
        baseline_probs=np.asarray(rows.probs[base_row] if base_row is not None else [], np.float32),
        token_probs=np.asarray(rows.probs[row], np.float32),
        top_ids=top_ids,
        top_probs=got.top_probs[row, :n].astype(np.float32),
        top_tokens=[[model.tokenizer.decode([int(i)]) for i in step] for step in top_ids.tolist()],
        diverges_at=diverge,
        stopped_at_eos=bool(rows.done[row]),
        resid_norm=resid_norm,
        added_norm=added_norm,
        relative=added_norm / resid_norm if resid_norm > 0 else float("inf"),
        options=options,
        _code=lambda: codegen.steer_code(model, options, vec),
    )


def first_difference(tokens: Sequence[int], other: Sequence[int]) -> int | None:
    """The first index where two token lists differ (one ending before the other differs there); None if equal."""
    n = min(len(tokens), len(other))
    i = next((i for i in range(n) if tokens[i] != other[i]), None)
    return n if i is None and len(tokens) != len(other) else i


def _decode(model: Model, tokens: list[int]) -> str:
    return model.tokenizer.decode(tokens, skip_special_tokens=True)


def steer(
    model: Model,
    prompt: str,
    *,
    vector: Any,
    layer: int,
    scale: float = 1.0,
    max_new_tokens: int = 20,
    baseline: bool = True,
    positions: str = "all",
    on_token: OnToken = None,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> SteerResult:
    """Greedy continuation of `prompt` with `scale * vector` added to resid_pre[layer] during generation.

    `vector` is a [d_model] tensor or array (any dtype or device; it is copied to float32), any object with
    a `.vector` attribute (a function vector from `wb.function_vector`), or a (positive, negative) prompt
    pair (see `steering_vector`). `positions="all"` adds it at every position of every forward (the prompt
    and each generated token); `"last"` adds it at the prompt's last token (position T-1) and at every
    generated token's position (T, T+1, ...: each is fed back in at the next step), never at positions
    0..T-2 of the prompt.

    `scale` multiplies the vector as given. How strong that is depends on the residual stream's size at
    that layer, so the result reports it: `.resid_norm` is the median norm of resid_pre[layer] over the
    prompt's positions, `.added_norm` the norm of `scale * vector` and `.relative` their ratio (shown in the
    repr). A push well below 1x usually turns the text towards the concept (0.4x in
    notebooks/06_steering.ipynb); near 1x and above the vector tends to overwrite it.

    The result is the generated text; `.baseline` is the unsteered continuation, generated in the same
    batch (row 0 adds zero), and `.diverges_at` the first token where the two differ. `on_token(step)`
    receives a `SteerStep` for every generated token as soon as it exists (rows "baseline", "steered");
    on a remote model the generation is one request and the steps arrive together after it.
    """
    ids, layer, max_new_tokens, positions = _checked(model, prompt, layer, max_new_tokens, positions)
    scale = as_number(scale, "scale")
    baseline = as_bool(baseline, "baseline")
    given = None if _is_pair(vector) else _as_vector(model, vector)  # checked before any work, converted once
    check_cancel(cancel)
    with model.lock, job_status(model, progress, cancel):
        vec, pair = _resolve(model, vector, layer) if given is None else (given, None)
        add = _scaled(vec, scale)
        adds = torch.stack([torch.zeros_like(add), add]) if baseline else add[None]
        labels = ["baseline", "steered"] if baseline else ["steered"]
        got = _run(model, ids, layer, adds, labels, positions, max_new_tokens, on_token, progress, cancel)
    if progress is not None:
        progress(1.0, "generated")
    options = dict(
        op="steer",
        prompt=prompt,
        layer=layer,
        scale=scale,
        max_new_tokens=max_new_tokens,
        pair=pair,
        positions=positions,
        baseline=baseline,
    )
    return _result(model, got, len(labels) - 1, 0 if baseline else None, vec, scale, options)


def steer_sweep(
    model: Model,
    prompt: str,
    *,
    vector: Any,
    layer: int,
    scales: Sequence[float],
    max_new_tokens: int = 20,
    positions: str = "all",
    on_token: OnToken = None,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> SteerSweepResult:
    """`wb.steer` at several scales in one batched generation: row 0 the unsteered baseline, then one row
    per scale (at most 16). Each row is what `wb.steer(..., scale=s)` returns (tests check the tokens and
    the probabilities); `.results[i]` is the SteerResult of `scales[i]`, `.baseline` the unsteered text.
    Remotely it is one request. `on_token` gets a `SteerStep` per step with rows "baseline", "scale s", ...
    """
    ids, layer, max_new_tokens, positions = _checked(model, prompt, layer, max_new_tokens, positions)
    items = as_list(scales, "scales", "scales=[1.0, 2.0, 4.0]")
    if len(items) > MAX_ROWS:
        raise WorkbenchError(
            f"scales= has {len(items)} scales; one batched generation takes at most {MAX_ROWS}: split them."
        )
    values = [as_number(s, f"scales[{i}]") for i, s in enumerate(items)]
    given = None if _is_pair(vector) else _as_vector(model, vector)
    check_cancel(cancel)
    with model.lock, job_status(model, progress, cancel):
        vec, pair = _resolve(model, vector, layer) if given is None else (given, None)
        adds = torch.stack([torch.zeros_like(vec)] + [_scaled(vec, s) for s in values])
        labels = ["baseline"] + [f"scale {s:g}" for s in values]
        got = _run(model, ids, layer, adds, labels, positions, max_new_tokens, on_token, progress, cancel)
    if progress is not None:
        progress(1.0, "generated")
    options = dict(
        op="steer_sweep",
        prompt=prompt,
        layer=layer,
        scales=values,
        max_new_tokens=max_new_tokens,
        pair=pair,
        positions=positions,
    )
    results = [
        _result(model, got, i + 1, 0, vec, s, {**options, "op": "steer", "scale": s, "baseline": True})
        for i, s in enumerate(values)
    ]
    return SteerSweepResult(
        results=results,
        scales=values,
        baseline=_decode(model, got.rows.tokens[0]),
        baseline_tokens=list(got.rows.tokens[0]),
        options=options,
        _code=lambda: codegen.steer_sweep_code(model, options, vec),
    )
