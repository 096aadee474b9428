"""Attention probabilities per layer and head, [L, H, T_query, T_key]."""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence

import torch

from .. import codegen
from ..engine.batching import Progress, check_cancel
from ..engine.kernels import eager_pattern
from ..errors import SiteError
from ..model import Model, require_local
from ..remote import job_status
from ..validate import as_list
from .results import AttentionResult


def attention(
    model: Model,
    prompt: str,
    *,
    layers: Sequence[int] | None = None,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> AttentionResult:
    """Attention patterns of `prompt` [L, H, T, T] (grouped-query heads expanded to query heads)."""
    ids = model.to_tokens(prompt)
    if layers is not None:
        if isinstance(layers, str):
            raise SiteError(
                f"layers= takes a list of layer numbers, got the string {layers!r}: e.g. layers=[0, 5]."
            )
        layers = [model.check_layer(x) for x in as_list(layers, "layers=", "layers=[0, 5] (or None for all)")]
    wanted = sorted(set(layers)) if layers is not None else list(range(model.n_layers))
    check_cancel(cancel)
    envoys = [model.attn_envoy(layer) for layer in wanted]
    eager_fn = getattr(sys.modules[type(envoys[0]._module).__module__], "eager_attention_forward", None)
    if eager_fn is not None:
        # Recompute the probabilities from the attention function's own inputs with the family's eager code:
        # exact whatever implementation runs (SDPA returns no weights), and it works on NDIF too.
        with (
            model.lock,
            job_status(model, progress, cancel),
            torch.no_grad(),
            model.nn.trace(ids, logits_to_keep=1, **model.trace_options()),
        ):
            patterns = []
            for envoy in envoys:
                patterns.append(eager_pattern(envoy.source.attention_interface_1.inputs, eager_fn)[0].float())
            stacked = torch.stack(patterns).save()
    else:
        require_local(model, f"Attention patterns of model_type {model.config.model_type!r}")
        with model.lock, model.eager_attention(), torch.no_grad(), model.nn.trace(ids, logits_to_keep=1):
            patterns = []
            for envoy in envoys:
                patterns.append(envoy.output[1][0].float())
            stacked = torch.stack(patterns).save()
    if progress is not None:
        progress(1.0, "attention done")
    options = dict(op="attention", prompt=prompt, layers=layers)
    return AttentionResult(
        patterns=stacked.numpy(),
        tokens=model.str_tokens(ids),
        layers=wanted,
        options=options,
        _code=lambda: codegen.attention_code(model, options),
    )
