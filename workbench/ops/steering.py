"""Steering: add a direction to the residual stream (resid_pre of one layer) during greedy generation."""

from __future__ import annotations

import threading

import numpy as np
import torch

from .. import codegen
from ..errors import WorkbenchError
from ..model import Model
from ..remote import job_status
from ._engine import Progress, check_cancel, collect
from ._kernels import read
from .results import SteerResult


def steering_vector(model: Model, positive: str, negative: str, layer: int) -> torch.Tensor:
    """resid_pre[layer] at the last token of `positive` minus that of `negative` (contrastive pair)."""
    model.check_layer(layer)
    pos = collect(model, model.to_tokens(positive, what="positive prompt"), "resid_pre", [layer])[layer]
    neg = collect(model, model.to_tokens(negative, what="negative prompt"), "resid_pre", [layer])[layer]
    return (pos[0, -1] - neg[0, -1]).float()


def _eos_ids(model: Model) -> set[int]:
    eos = getattr(getattr(model.hf, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = model.tokenizer.eos_token_id
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


def _generate(
    model: Model, ids: torch.Tensor, layer: int, add: torch.Tensor | None, max_new_tokens: int
) -> list[int]:
    """Greedy continuation (ids of the new tokens, ending with EOS if the model stopped early).

    nnsight runs no code after a step loop that generation leaves early, so generation is held to exactly
    `max_new_tokens` (EOS suppressed) while each step's unsuppressed greedy pick is recorded; the output is
    cut where that pick was EOS, which is exactly where plain greedy decoding stops.
    """
    ref = model.site_ref("resid_pre", layer)
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
        picks = []
        for _ in tracer.iter[:max_new_tokens]:
            if add is not None:
                h = read(*ref)
                h += add.to(h.dtype)
            picks.append(nn.output.logits[0, -1].argmax())
        greedy = torch.stack(picks).save()
        generated = tracer.result.save()
    tokens = generated[0, ids.shape[1] :].tolist()
    eos = _eos_ids(model)
    for i, pick in enumerate(greedy.tolist()):
        if pick in eos:
            return tokens[:i] + [pick]
    return tokens


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

    `vector` is a [d_model] tensor or a (positive, negative) prompt pair (see `steering_vector`).
    The result is the generated text; `.baseline` is the unsteered continuation.
    """
    model.check_layer(layer)
    if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= 1024:
        raise WorkbenchError(f"max_new_tokens must be an integer 1..1024, got {max_new_tokens!r}.")
    ids = model.to_tokens(prompt)
    check_cancel(cancel)
    with model.lock, job_status(model, progress, cancel):
        if isinstance(vector, tuple):
            if len(vector) != 2 or not all(isinstance(v, str) for v in vector):
                raise WorkbenchError(
                    "vector= takes a [d_model] tensor or a (positive, negative) pair of prompts."
                )
            vec = steering_vector(model, vector[0], vector[1], layer)
            pair = vector
        else:
            vec = torch.as_tensor(np.asarray(vector), dtype=torch.float32).flatten()
            pair = None
        if vec.shape != (model.d_model,):
            raise WorkbenchError(
                f"The steering vector has shape {tuple(vec.shape)}; it must be ({model.d_model},)."
            )
        steered = _generate(model, ids, layer, scale * vec, max_new_tokens)
        check_cancel(cancel)
        base = _generate(model, ids, layer, None, max_new_tokens) if baseline else []
    if progress is not None:
        progress(1.0, "generated")
    options = dict(
        op="steer", prompt=prompt, layer=layer, scale=scale, max_new_tokens=max_new_tokens, pair=pair
    )

    def decode(tokens: list[int]) -> str:
        return model.tokenizer.decode(tokens, skip_special_tokens=True)

    return SteerResult(
        decode(steered),
        baseline=decode(base) if baseline else "",
        vector=vec.numpy(),
        tokens=steered,
        options=options,
        _code=lambda: codegen.steer_code(model, options, vec),
    )
