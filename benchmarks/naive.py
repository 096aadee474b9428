"""The naive nnsight baseline: one trace per cell, as a user would first write it.

Traces live in this file (nnsight reads the source of each `with` block back from disk).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch


def _read(model, site: str, layer: int) -> torch.Tensor:
    module = model.site_module(site, layer)
    value = module.input if site in ("resid_pre", "head") else module.output
    return value[0] if isinstance(value, tuple) else value


def clean_acts(model, clean_ids: torch.Tensor, site: str) -> list[torch.Tensor]:
    """The clean run's site activation at every layer: [T, D] each."""
    saved = []
    with torch.no_grad(), model.nn.trace(clean_ids, logits_to_keep=1):
        for layer in range(model.n_layers):
            saved.append(_read(model, site, layer)[0].clone().save())
    return [s.detach() for s in saved]


def patched_metric(
    model, corrupt_ids: torch.Tensor, site: str, layer: int, position, head, value: torch.Tensor, metric
) -> float:
    """One forward of the corrupt prompt with the site slot overwritten by `value`."""
    with torch.no_grad(), model.nn.trace(corrupt_ids, logits_to_keep=1):
        x = _read(model, site, layer)
        if site == "head":
            x = x.view(x.shape[0], x.shape[1], model.n_heads, model.d_head)
            if position is None:
                x[0, :, head] = value
            else:
                x[0, position, head] = value
        else:
            x[0, position] = value
        logits = model.nn.output.logits[:, -1].float()
        out = metric(logits, logits[0]).save()
    return float(out[0])


def sweep(
    model,
    clean_ids: torch.Tensor,
    corrupt_ids: torch.Tensor,
    site: str,
    cells: Sequence,
    metric: Callable,
    timing: dict | None = None,
) -> list[float]:
    """Metric for each cell (layer, position or None, head or None): one clean trace, one trace per cell."""
    t0 = time.perf_counter()
    acts = clean_acts(model, clean_ids, site)
    if timing is not None:
        timing["setup"] = time.perf_counter() - t0
    out = []
    for layer, position, head in cells:
        act = acts[layer]
        if site == "head":
            act = act.view(act.shape[0], model.n_heads, model.d_head)[:, head]
        value = act if position is None else act[position]
        out.append(patched_metric(model, corrupt_ids, site, layer, position, head, value, metric))
    return out
