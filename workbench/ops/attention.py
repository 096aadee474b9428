"""Attention probabilities per layer and head, [L, H, T_query, T_key]."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch

from .. import codegen
from ..model import Model
from ._engine import Progress, check_cancel
from .results import AttentionResult


def attention(
    model: Model,
    prompt: str,
    *,
    layers: Sequence[int] | None = None,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> AttentionResult:
    """Attention patterns of `prompt` (eager attention; grouped-query heads expanded to query heads)."""
    ids = model.to_tokens(prompt)
    wanted = (
        sorted({model.check_layer(x) for x in layers}) if layers is not None else list(range(model.n_layers))
    )
    check_cancel(cancel)
    envoys = [model.attn_envoy(layer) for layer in wanted]
    out: dict[str, torch.Tensor] = {}
    with (
        model.lock,
        model.eager_attention(),
        torch.no_grad(),
        model.nn.trace(ids, logits_to_keep=1, **model.trace_options()),
    ):
        patterns = []
        for envoy in envoys:
            patterns.append(envoy.output[1][0].float())
        out["patterns"] = torch.stack(patterns).save()
    stacked = out["patterns"]
    if progress is not None:
        progress(1.0, "attention done")
    options = dict(op="attention", prompt=prompt, layers=list(layers) if layers is not None else None)
    return AttentionResult(
        patterns=stacked.numpy(),
        tokens=model.str_tokens(ids),
        layers=wanted,
        options=options,
        _code=lambda: codegen.attention_code(model, options),
    )
