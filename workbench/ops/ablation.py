"""Ablation: remove an activation (zero, mean, or resampled from another prompt) and read the metric."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .. import codegen
from ..engine.batching import BatchOutput, Progress, check_cancel
from ..engine.edits import Cell, Edit
from ..engine.sites import site as site_record
from ..engine.traced import collect, run_rows
from ..errors import WorkbenchError
from ..model import Model
from ..remote import job_status
from ..validate import as_bool
from .metrics import as_metric
from .patching import (
    MetricLike,
    cells_options,
    check_top_k,
    pair_tokens,
    prediction,
    sweep_axes,
    sweep_cells,
    target_cells,
)
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


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise WorkbenchError(f"Unknown ablation method {method!r}. Methods: {', '.join(METHODS)}.")
    return method


def _reference_means(model: Model, refs: list[str], cells: list[Cell]) -> dict[tuple[str, int], torch.Tensor]:
    """The mean over every token of the reference prompts of each (site, layer) the cells touch."""
    sums: dict[tuple[str, int], torch.Tensor] = {}
    count = 0
    wanted = sorted({(c.site, c.layer) for c in cells})
    for ref in refs:
        ids = model.to_tokens(ref, what="reference prompt")
        for site in sorted({s for s, _ in wanted}):
            layers = [lyr for s, lyr in wanted if s == site]
            for layer, a in collect(model, ids, site, layers).items():
                sums[(site, layer)] = sums.get((site, layer), 0) + a[0].sum(0)
        count += ids.shape[1]
    return {key: total / count for key, total in sums.items()}


def _run(
    model: Model,
    ids: torch.Tensor,
    prompt: str,
    cells: list[Cell],
    bound,
    method: str,
    reference: str | Sequence[str] | None,
    top_k: int,
    progress: Progress,
    cancel: threading.Event | None,
    *,
    joint: bool,
) -> BatchOutput:
    """Ablate the cells, all in one run (`joint`) or one run each; resampling averages the metric over the
    reference prompts."""
    refs = _references(reference)
    _check_method(method)

    def rows(value_of) -> list[list[Edit]]:
        edits = [Edit(c, value_of(c)) for c in cells]
        return [edits] if joint else [[e] for e in edits]

    if method == "zero" or (method == "mean" and not refs):
        return run_rows(model, ids, ids, rows(lambda c: method), bound, top_k=top_k, progress=progress,
                        cancel=cancel)  # fmt: skip
    if method == "mean":
        if any(site_record(c.site).pattern for c in cells):
            raise WorkbenchError(
                "method='mean' does not apply to attention patterns: use 'zero' or 'resample'."
            )
        means = _reference_means(model, refs, cells)

        def mean_of(c: Cell) -> torch.Tensor:
            mean = means[(c.site, c.layer)]
            return mean[c.head] if c.head is not None else mean

        return run_rows(model, ids, ids, rows(mean_of), bound, top_k=top_k, progress=progress, cancel=cancel)
    if not refs:
        raise WorkbenchError(
            "method='resample' needs reference= a prompt (or list) of the same token length."
        )
    outs = []
    for i, ref in enumerate(refs):
        check_cancel(cancel)
        r, _ = pair_tokens(model, ref, prompt)
        sub = None if progress is None else (lambda f, msg, i=i: progress((i + f) / len(refs), msg))
        outs.append(run_rows(model, r, ids, rows(lambda c: "source"), bound, top_k=top_k, progress=sub,
                             cancel=cancel))  # fmt: skip
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
    layer: int | None = None,
    position: int | None = None,
    head: int | None = None,
    cells: Any = None,
    method: str = "zero",
    reference: str | Sequence[str] | None = None,
    top_k: int = 5,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> Value:
    """Metric of `prompt` with the activation at (site, layer, position, head) ablated, or at every cell of
    `cells=[wb.Cell(...), ...]` at once (jointly, in one run).

    zero: set to 0. mean: the mean over the prompt's positions (or over every token of `reference`
    prompts). resample: the activation of `reference` prompt(s) at the same position (the metric is
    averaged over references). `.clean` is the unablated metric.
    """
    m = as_metric(metric)
    ids = model.to_tokens(prompt)
    targets = target_cells(
        model, ids.shape[1], cells=cells, site=site, layer=layer, position=position, head=head, op="wb.ablate"
    )
    _check_method(method)
    top_k = check_top_k(model, top_k)
    bound = m.bind(model)
    with model.lock, job_status(model, progress, cancel):
        out = _run(model, ids, prompt, targets, bound, method, reference, top_k, progress, cancel, joint=True)
    options = dict(
        op="ablate",
        prompt=prompt,
        metric=m.name,
        **cells_options(targets),
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
        out = _run(model, ids, prompt, cells, bound, method, reference, 0, progress, cancel, joint=False)
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
