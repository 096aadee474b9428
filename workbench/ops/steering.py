"""Steering: add a direction to the residual stream (resid_pre of one layer) during greedy generation."""

from __future__ import annotations

import threading

import numpy as np
import torch

from .. import codegen
from ..engine.batching import Progress, check_cancel
from ..engine.kernels import read
from ..engine.traced import collect
from ..errors import TokenizationError, WorkbenchError
from ..model import Model
from ..remote import job_status
from ..validate import as_bool, as_int, as_number
from .results import SteerResult


def steering_vector(model: Model, positive: str, negative: str, layer: int) -> torch.Tensor:
    """resid_pre[layer] at the last token of `positive` minus that of `negative` (contrastive pair)."""
    layer = model.check_layer(layer)
    pos_ids = model.to_tokens(positive, what="positive prompt")
    neg_ids = model.to_tokens(negative, what="negative prompt")
    with (
        model.lock,
        job_status(model, None, None),
    ):  # both runs on the same model state; remote errors redacted
        pos = collect(model, pos_ids, "resid_pre", [layer])[layer]
        neg = collect(model, neg_ids, "resid_pre", [layer])[layer]
    return (pos[0, -1] - neg[0, -1]).float()


def _eos_ids(model: Model) -> set[int]:
    eos = getattr(getattr(model.hf, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = model.tokenizer.eos_token_id
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


def _as_vector(model: Model, vector: object) -> torch.Tensor:
    """A float32 CPU copy of a user's steering vector ([d_model]); refuses what cannot be steered with."""
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
                f"vector= takes a [d_model] tensor or array of real numbers or a (positive, negative) pair of "
                f"prompts, got {type(vector).__name__}."
            )
        vec = torch.tensor(arr, dtype=torch.float32)
    if vec.dim() > 1 and vec.numel() == model.d_model:
        vec = vec.flatten()  # e.g. [1, d_model]
    if vec.shape != (model.d_model,):
        raise WorkbenchError(
            f"The steering vector has shape {tuple(vec.shape)}; it must be ({model.d_model},)."
        )
    if not torch.isfinite(vec).all():
        bad = int((~torch.isfinite(vec)).sum())
        raise WorkbenchError(
            f"The steering vector has {bad} non-finite entries (NaN or inf): adding it would break every "
            "activation after that layer. Check how it was computed (e.g. a division by a zero norm)."
        )
    return vec


def _generate(
    model: Model, ids: torch.Tensor, layer: int, add: torch.Tensor | None, max_new_tokens: int
) -> tuple[list[int], torch.Tensor]:
    """Greedy continuation (ids of the new tokens, ending with EOS if the model stopped early).

    nnsight runs no code after a step loop that generation leaves early, so generation is held to exactly
    `max_new_tokens` (EOS suppressed) while each step's unsuppressed greedy pick is recorded; the output is
    cut where that pick was EOS, which is exactly where plain greedy decoding stops.
    """
    ref = model.site_ref("resid_pre", layer)
    envoy = model.envoy(ref)
    nn = model.nn
    with (
        torch.no_grad(),
        nn.generate(
            ids,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            **model.trace_options(),
        ) as tracer,
    ):
        picks, norms = [], []
        for _ in tracer.iter[:max_new_tokens]:
            h = read(envoy, ref.use_input)
            if not norms:  # the first step sees the whole prompt: its residual norms, before steering
                norms.append(h[0].norm(dim=-1).float())
            if add is not None:
                h += add.to(h.dtype)
            picks.append(nn.output.logits[0, -1].argmax())
        greedy = torch.stack(picks).save()
        prompt_norms = norms[0].save()
        generated = tracer.result.save()
    tokens = generated[0, ids.shape[1] :].tolist()
    eos = _eos_ids(model)
    for i, pick in enumerate(greedy.tolist()):
        if pick in eos:
            return tokens[:i] + [pick], prompt_norms
    return tokens, prompt_norms


def steer(
    model: Model,
    prompt: str,
    *,
    vector: torch.Tensor | np.ndarray | tuple[str, str],
    layer: int,
    scale: float = 1.0,
    max_new_tokens: int = 20,
    baseline: bool = True,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> SteerResult:
    """Greedy continuation of `prompt` with `scale * vector` added to resid_pre[layer] at every position.

    `vector` is a [d_model] tensor or array (any dtype or device; it is copied to float32) or a
    (positive, negative) prompt pair (see `steering_vector`). `scale` multiplies the vector as given. How
    strong that is depends on the residual stream's size at that layer, so the result reports it:
    `.resid_norm` is the median norm of resid_pre[layer] over the prompt's positions, `.added_norm` the
    norm of `scale * vector` and `.relative` their ratio (shown in the repr). A push well below 1x usually
    turns the text towards the concept (0.4x in notebooks/06_steering.ipynb); near 1x and above the vector
    tends to overwrite it (repetition, only newlines).
    The result is the generated text; `.baseline` is the unsteered continuation.
    """
    layer = model.check_layer(layer)
    max_new_tokens = as_int(max_new_tokens, "max_new_tokens", lo=1, hi=1024)
    scale = as_number(scale, "scale")
    baseline = as_bool(baseline, "baseline")
    ids = model.to_tokens(prompt)
    if ids.shape[1] + max_new_tokens > model.n_ctx:
        raise TokenizationError(
            f"The prompt is {ids.shape[1]} tokens and max_new_tokens={max_new_tokens}: together "
            f"{ids.shape[1] + max_new_tokens}, more than this model's context of {model.n_ctx}. Ask for at most "
            f"max_new_tokens={max(0, model.n_ctx - ids.shape[1])} or shorten the prompt."
        )
    if not isinstance(vector, tuple):
        vec = _as_vector(model, vector)  # checked before any work, and converted once
    check_cancel(cancel)
    with model.lock, job_status(model, progress, cancel):
        if isinstance(vector, tuple):
            if len(vector) != 2 or not all(isinstance(v, str) for v in vector):
                raise WorkbenchError(
                    "vector= takes a [d_model] tensor or a (positive, negative) pair of prompts."
                )
            vec = _as_vector(model, steering_vector(model, vector[0], vector[1], layer))
            pair = vector
        else:
            pair = None
        add = scale * vec
        if not torch.isfinite(add).all():
            raise WorkbenchError(
                f"scale={scale!r} times the steering vector overflows float32: use a smaller scale."
            )
        steered, norms = _generate(model, ids, layer, add, max_new_tokens)
        check_cancel(cancel)
        base = _generate(model, ids, layer, None, max_new_tokens)[0] if baseline else []
    if progress is not None:
        progress(1.0, "generated")
    options = dict(
        op="steer", prompt=prompt, layer=layer, scale=scale, max_new_tokens=max_new_tokens, pair=pair
    )
    resid_norm = float(norms.float().median())
    added_norm = float((scale * vec).norm())

    def decode(tokens: list[int]) -> str:
        return model.tokenizer.decode(tokens, skip_special_tokens=True)

    return SteerResult(
        decode(steered),
        baseline=decode(base) if baseline else "",
        vector=vec.numpy(),
        tokens=steered,
        resid_norm=resid_norm,
        added_norm=added_norm,
        relative=added_norm / resid_norm if resid_norm > 0 else float("inf"),
        options=options,
        _code=lambda: codegen.steer_code(model, options, vec),
    )
