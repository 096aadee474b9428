"""Ablation: remove an activation (zero, mean, or resampled from another prompt) and read the metric."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .. import codegen
from ..data.dataset import Dataset
from ..engine.batching import BatchOutput, Progress, check_cancel
from ..engine.edits import Cell, Edit
from ..engine.sites import site as site_record
from ..engine.traced import collect, run_rows
from ..errors import WorkbenchError
from ..model import Model
from ..remote import job_status
from ..validate import as_bool
from .metrics import Metric, as_metric
from .over_dataset import (
    Job,
    Runner,
    column_rows,
    dataset_cells,
    dataset_cells_options,
    example_cells,
    is_dataset,
)
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
    groups: list[list[Cell]],
    bound,
    method: str,
    reference: str | Sequence[str] | None,
    top_k: int,
    progress: Progress,
    cancel: threading.Event | None,
) -> BatchOutput:
    """One run per group of cells (a group's cells ablated jointly); resampling averages the metric over the
    reference prompts."""
    jobs = _jobs(model, ids, prompt, groups, method, reference)
    outs = []
    for i, (source, base, rows) in enumerate(jobs):
        check_cancel(cancel)
        sub = progress
        if progress is not None and len(jobs) > 1:
            sub = lambda f, msg, i=i: progress((i + f) / len(jobs), msg)  # noqa: E731
        outs.append(run_rows(model, source, base, rows, bound, top_k=top_k, progress=sub, cancel=cancel))
    return _combined(outs)


def _jobs(
    model: Model,
    ids: torch.Tensor,
    prompt: str,
    groups: list[list[Cell]],
    method: str,
    reference: str | Sequence[str] | None,
) -> list[Job]:
    """The engine calls of an ablation (source ids, base ids, rows): one, or one per resampling reference."""
    refs = _references(reference)
    _check_method(method)
    cells = [c for group in groups for c in group]

    def rows(value_of) -> list[list[Edit]]:
        return [[Edit(c, value_of(c)) for c in group] for group in groups]

    if method == "zero" or (method == "mean" and not refs):
        return [(ids, ids, rows(lambda c: method))]
    if method == "mean":
        if any(site_record(c.site).pattern for c in cells):
            raise WorkbenchError(
                "method='mean' does not apply to attention patterns: use 'zero' or 'resample'."
            )
        means = _reference_means(model, refs, cells)

        def mean_of(c: Cell) -> torch.Tensor:
            mean = means[(c.site, c.layer)]
            return mean[c.head] if c.head is not None else mean

        return [(ids, ids, rows(mean_of))]
    if not refs:
        raise WorkbenchError(
            "method='resample' needs reference= a prompt (or list) of the same token length."
        )
    return [(pair_tokens(model, ref, prompt)[0], ids, rows(lambda c: "source")) for ref in refs]


def _combined(outs: list[BatchOutput]) -> BatchOutput:
    """An ablation's output from its engine calls: resampling's metric is the mean over the references; the
    unablated prompt's metric is the base run's (a resampling source is another prompt)."""
    return BatchOutput(
        values=torch.stack([o.values for o in outs]).mean(0),
        source=outs[0].base,
        base=outs[0].base,
        top_ids=outs[0].top_ids,
        top_probs=outs[0].top_probs,
    )


def ablate(
    model: Model,
    prompt: str | Dataset,
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
    align: str = "exact",
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> Value:
    """Metric of `prompt` with the activation at (site, layer, position, head) ablated, or at every cell of
    `cells=[wb.Cell(...), ...]` at once (jointly, in one run).

    zero: set to 0. mean: the mean over the prompt's positions (or over every token of `reference`
    prompts). resample: the activation of `reference` prompt(s) at the same position (the metric is
    averaged over references). `.clean` is the unablated metric.

    Over a `wb.Dataset`: each example's clean prompt ablated the same way (a position names a column of
    `align=`); resampling without `reference=` uses each example's corrupt prompt.
    """
    m = as_metric(metric)
    if is_dataset(prompt):
        cells_ = dataset_cells(cells, site, layer, position, head, "wb.ablate")
        return _ablate_dataset(model, prompt, m, cells_, method, reference, top_k, align, progress, cancel)
    ids = model.to_tokens(prompt)
    targets = target_cells(
        model, ids.shape[1], cells=cells, site=site, layer=layer, position=position, head=head, op="wb.ablate"
    )
    _check_method(method)
    top_k = check_top_k(model, top_k)
    bound = m.bind(model)
    with model.lock, job_status(model, progress, cancel):
        out = _run(model, ids, prompt, [targets], bound, method, reference, top_k, progress, cancel)
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
    prompt: str | Dataset,
    *,
    metric: MetricLike,
    site: str = "mlp_out",
    method: str = "zero",
    reference: str | Sequence[str] | None = None,
    by_position: bool = False,
    align: str = "exact",
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> SweepResult:
    """Ablate every (layer, position) — or (layer, head) / (layer, position, head) — one at a time, batched.

    `.clean` is the unablated metric; `.corrupt` is NaN (there is no corrupt run), so `.normalized` is NaN:
    read `.values` or `.values - .clean`. Over a `wb.Dataset`: a DatasetSweepResult (columns by `align=`).
    """
    m = as_metric(metric)
    if is_dataset(prompt):
        return _ablate_sweep_dataset(
            model, prompt, m, site, method, reference, by_position, align, progress, cancel
        )
    ids = model.to_tokens(prompt)
    by_position = as_bool(by_position, "by_position")
    cells, shape = sweep_cells(model, site, ids.shape[1], by_position)
    bound = m.bind(model)
    with model.lock, job_status(model, progress, cancel):
        out = _run(model, ids, prompt, [[c] for c in cells], bound, method, reference, 0, progress, cancel)
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


def _example_reference(method: str, reference: Any, ds: Dataset, i: int) -> Any:
    """Resampling over a Dataset without reference=: the example's own corrupt prompt."""
    if method == "resample" and reference is None:
        if ds[i].corrupt is None:
            raise WorkbenchError(
                "method='resample' over a Dataset needs reference= prompts or corrupt prompts in the Dataset "
                "(each example resamples from its own corrupt prompt)."
            )
        return ds[i].corrupt
    return reference


def _ablate_sweep_dataset(
    model: Model,
    ds: Dataset,
    m: Metric,
    site: str,
    method: str,
    reference: Any,
    by_position: Any,
    align: str,
    progress: Progress,
    cancel: threading.Event | None,
) -> SweepResult:
    by_position = as_bool(by_position, "by_position")
    _check_method(method)
    model.check_site(site)
    runner = Runner(model, ds, m, align, corrupt=False, progress=progress, cancel=cancel)
    shapes: list[tuple[int, ...]] = []

    def jobs(i: int) -> list[Job]:
        ids = runner.al.clean_ids[i]
        groups, shape = column_rows(model, site, runner.al.positions[i], by_position, ids.shape[1])
        shapes.append(shape)
        return _jobs(model, ids, ds[i].clean, groups, method, _example_reference(method, reference, ds, i))

    with model.lock, job_status(model, progress, cancel):
        outs = [_combined(o) for o in runner.run_many(jobs)]
    options = dict(op="ablate_sweep", dataset=len(ds), metric=m.name, site=site, method=method,
                   reference=reference, by_position=by_position)  # fmt: skip
    return runner.sweep_result(
        outs,
        shapes,
        axes=sweep_axes(site, by_position),
        options=options,
        code=lambda: codegen.dataset_code(model, m, options, ds, runner.al),
        ablation=True,
    )


def _ablate_dataset(
    model: Model,
    ds: Dataset,
    m: Metric,
    cells: list[Cell],
    method: str,
    reference: Any,
    top_k: int,
    align: str,
    progress: Progress,
    cancel: threading.Event | None,
) -> Value:
    _check_method(method)
    top_k = check_top_k(model, top_k)
    runner = Runner(model, ds, m, align, corrupt=False, progress=progress, cancel=cancel)
    per_cells = [example_cells(runner.al, i, cells, model) for i in range(len(ds))]

    def jobs(i: int) -> list[Job]:
        ref = _example_reference(method, reference, ds, i)
        return _jobs(model, runner.al.clean_ids[i], ds[i].clean, [per_cells[i]], method, ref)

    def value(out: BatchOutput) -> Value:
        return Value(float(out.values[0]), clean=out.base, corrupt=float("nan"), options={}, _code=lambda: "",
                     **prediction(model, out))  # fmt: skip

    with model.lock, job_status(model, progress, cancel):
        values = [value(_combined(o)) for o in runner.run_many(jobs, top_k=top_k)]
    options = dict(op="ablate", dataset=len(ds), metric=m.name, **dataset_cells_options(cells), method=method,
                   reference=reference)  # fmt: skip
    return runner.value_result(
        values, options=options, code=lambda: codegen.dataset_code(model, m, options, ds, runner.al)
    )
