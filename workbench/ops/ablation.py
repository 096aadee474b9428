"""Ablation: remove an activation (zero, mean, or resampled from another prompt) and read the metric."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import torch

from .. import codegen
from ..errors import WorkbenchError
from ..model import Model
from ..remote import job_status
from ..validate import as_bool
from ._engine import BatchOutput, Cell, Progress, check_cancel, collect, run_batch
from .metrics import as_metric
from .patching import MetricLike, check_cell, check_top_k, pair_tokens, prediction, sweep_axes, sweep_cells
from .results import SweepResult, Value

METHODS = ("zero", "mean", "resample")


def _references(reference: str | Sequence[str] | None) -> list[str]:
    if reference is None:
        return []
    if isinstance(reference, str):
        return [reference]
    if not isinstance(reference, list | tuple) or not all(isinstance(r, str) for r in reference):
        raise WorkbenchError(
            f"reference= takes a prompt or a list of prompts (strings), got {type(reference).__name__}: "
            "e.g. reference='The Colosseum is located in the city of'."
        )
    return list(reference)


def _run(
    model: Model,
    ids: torch.Tensor,
    prompt: str,
    site: str,
    cells: list[Cell],
    bound,
    method: str,
    reference: str | Sequence[str] | None,
    top_k: int,
    progress: Progress,
    cancel: threading.Event | None,
) -> BatchOutput:
    """Ablate every cell; resampling averages the metric over the reference prompts."""
    refs = _references(reference)
    if method not in METHODS:
        raise WorkbenchError(f"Unknown ablation method {method!r}. Methods: {', '.join(METHODS)}.")
    if method == "zero":
        return run_batch(
            model, ids, ids, site, cells, bound, mode="zero", top_k=top_k, progress=progress, cancel=cancel
        )
    if method == "mean" and not refs:
        return run_batch(
            model, ids, ids, site, cells, bound, mode="mean", top_k=top_k, progress=progress, cancel=cancel
        )
    if method == "mean":
        # Mean over every token of the reference prompts, per layer.
        layers = sorted({c.layer for c in cells})
        sums: dict[int, torch.Tensor] = {}
        count = 0
        for ref in refs:
            acts = collect(model, model.to_tokens(ref, what="reference prompt"), site, layers)
            for layer, a in acts.items():
                sums[layer] = sums.get(layer, 0) + a[0].sum(0)
            count += acts[layers[0]].shape[1]
        values = []
        for cell in cells:
            mean = sums[cell.layer] / count
            if site == "head":
                mean = mean.view(model.n_heads, model.d_head)[cell.head]
            values.append(mean)
        return run_batch(
            model,
            ids,
            ids,
            site,
            cells,
            bound,
            mode="value",
            values=values,
            top_k=top_k,
            progress=progress,
            cancel=cancel,
        )
    if not refs:
        raise WorkbenchError(
            "method='resample' needs reference= a prompt (or list) of the same token length."
        )
    outs = []
    for i, ref in enumerate(refs):
        check_cancel(cancel)
        r, _ = pair_tokens(model, ref, prompt)
        sub = None if progress is None else (lambda f, msg, i=i: progress((i + f) / len(refs), msg))
        outs.append(run_batch(model, r, ids, site, cells, bound, top_k=top_k, progress=sub, cancel=cancel))
    return BatchOutput(
        values=torch.stack([o.values for o in outs]).mean(0),
        source=outs[0].base,
        base=outs[0].base,
        top_ids=outs[0].top_ids,
        top_probs=outs[0].top_probs,
    )


def ablate(
    model: Model,
    prompt: str,
    *,
    metric: MetricLike,
    site: str = "mlp_out",
    layer: int,
    position: int | None = None,
    head: int | None = None,
    method: str = "zero",
    reference: str | Sequence[str] | None = None,
    top_k: int = 5,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> Value:
    """Metric of `prompt` with the activation at (site, layer, position, head) ablated.

    zero: set to 0. mean: the mean over the prompt's positions (or over every token of `reference`
    prompts). resample: the activation of `reference` prompt(s) at the same position (the metric is
    averaged over references). `.clean` is the unablated metric.
    """
    m = as_metric(metric)
    ids = model.to_tokens(prompt)
    cell = check_cell(model, site, layer, position, head, ids.shape[1])
    top_k = check_top_k(model, top_k)
    bound = m.bind(model)
    with model.lock, job_status(model, progress, cancel):
        out = _run(model, ids, prompt, site, [cell], bound, method, reference, top_k, progress, cancel)
    options = dict(
        op="ablate",
        prompt=prompt,
        metric=m.name,
        site=site,
        layer=cell.layer,
        position=cell.position,
        head=cell.head,
        method=method,
        reference=reference,
    )
    pred = prediction(model, out)
    return Value(
        float(out.values[0]),
        clean=out.base,
        corrupt=float("nan"),
        options=options,
        _code=lambda: codegen.ablate_code(model, m, options),
        **pred,
    )


def ablate_sweep(
    model: Model,
    prompt: str,
    *,
    metric: MetricLike,
    site: str = "mlp_out",
    method: str = "zero",
    reference: str | Sequence[str] | None = None,
    by_position: bool = False,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> SweepResult:
    """Ablate every (layer, position) — or (layer, head) / (layer, position, head) — one at a time, batched.

    `.clean` is the unablated metric; `.corrupt` is NaN (there is no corrupt run), so `.normalized` is NaN:
    read `.values` or `.values - .clean`.
    """
    m = as_metric(metric)
    ids = model.to_tokens(prompt)
    by_position = as_bool(by_position, "by_position")
    cells, shape = sweep_cells(model, site, ids.shape[1], by_position)
    bound = m.bind(model)
    with model.lock, job_status(model, progress, cancel):
        out = _run(model, ids, prompt, site, cells, bound, method, reference, 0, progress, cancel)
    options = dict(
        op="ablate_sweep",
        prompt=prompt,
        metric=m.name,
        site=site,
        method=method,
        reference=reference,
        by_position=by_position,
    )
    return SweepResult(
        values=out.values.float().numpy().reshape(shape).astype(np.float32),
        clean=out.base,
        corrupt=float("nan"),
        axes=sweep_axes(site, by_position),
        tokens=model.str_tokens(ids),
        options=options,
        _code=lambda: codegen.ablate_code(model, m, options),
    )
