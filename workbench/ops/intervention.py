"""Interventions: any list of edits (from a source run, zero, mean, set, add) applied jointly to one run."""

from __future__ import annotations

import threading
from typing import Any

import torch

from .. import codegen
from ..data.dataset import Dataset
from ..engine.batching import Progress
from ..engine.edits import Edit, checked_edits
from ..engine.traced import run_rows
from ..errors import TokenizationError, WorkbenchError
from ..model import Model
from ..remote import job_status
from .metrics import Metric, as_metric
from .over_dataset import Runner, example_cells, is_dataset, no_second_prompt
from .patching import MetricLike, check_top_k, run_value
from .results import Value


def _no_metric(logits: torch.Tensor, clean: torch.Tensor | None = None) -> torch.Tensor:
    """The metric of a run asked for its prediction only: NaN for every row."""
    return torch.full((logits.shape[0],), float("nan"))


def source_tokens(model: Model, source: str, ids: torch.Tensor) -> torch.Tensor:
    """Token ids of the source prompt, which must be as long as the prompt (positions line up)."""
    src = model.to_tokens(source, what="source prompt")
    if src.shape[1] != ids.shape[1]:
        raise TokenizationError(
            f"The source prompt must have the same number of tokens as the prompt so positions line up, but "
            f"source has {src.shape[1]}: {model.str_tokens(src)} and the prompt has {ids.shape[1]}: "
            f"{model.str_tokens(ids)}. Reword one of them (e.g. a name or word of the same number of tokens)."
        )
    return src


def edit_source(model: Model, edits: list[Edit], source: str | None, ids: torch.Tensor) -> torch.Tensor:
    """Token ids of the run "source" edits copy from: the `source` prompt, or the prompt itself when no edit
    copies (a "source" edit without source= is an error that says what to pass)."""
    if source is not None:
        return source_tokens(model, source, ids)
    first = next((e for e in edits if e.kind == "source"), None)
    if first is not None:
        raise WorkbenchError(
            f"{first!r} copies from the source run, but no source= prompt was given: pass "
            "source='<a prompt of the same token length>' (the run to copy from), or give the edit "
            "another value ('zero', 'mean', a tensor, or wb.Add(tensor))."
        )
    return ids


def edits_options(edits: list[Edit]) -> list[tuple[str, int, int | None, int | None, str]]:
    """How the options record the edits: (site, layer, position, head, kind) each (tensors stay out)."""
    return [(e.cell.site, e.cell.layer, e.cell.position, e.cell.head, e.kind) for e in edits]


def intervene(
    model: Model,
    prompt: str | Dataset,
    edits: Any,
    *,
    metric: MetricLike | None = None,
    source: str | None = None,
    top_k: int = 5,
    align: str = "exact",
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> Value:
    """Metric of `prompt` run once with every edit of `edits=[wb.Edit(cell, value), ...]` applied jointly
    (NaN when `metric` is None), with that run's next-token top-k (`.top_tokens`, `.top_probs`).

    An edit's value is "source" (the cell's activation in the run of the `source` prompt, which must have
    the prompt's token length), "zero", "mean" (the prompt's own mean over positions), a tensor to set
    ([width] or [T, width]), or `wb.Add(tensor, scale=1.0)` to add (steering).
    `.clean` is the metric of the source run when `source=` is given, else of the unedited prompt;
    `.corrupt` is the metric of the unedited prompt (so `.normalized` reads like a patch's).

    Over a `wb.Dataset` (in place of the prompt): each example's clean prompt runs with the edits; a "source"
    edit copies from that example's corrupt prompt; an edit's position names a column of `align=` (all of a
    role's tokens). A DatasetValue: the mean, `.per_example`, `.sem`.
    """
    if is_dataset(prompt):
        no_second_prompt("wb.intervene", source, "source")
        if metric is None:
            raise WorkbenchError(
                "wb.intervene over a Dataset needs metric= (e.g. wb.logit_diff(), which reads each example's "
                "target and foil): the result is the metric's mean over the examples."
            )
        return _intervene_dataset(model, prompt, edits, as_metric(metric), top_k, align, progress, cancel)
    m = None if metric is None else as_metric(metric)
    ids = model.to_tokens(prompt)
    checked = checked_edits(model, edits, ids.shape[1])
    src = edit_source(model, checked, source, ids)
    top_k = check_top_k(model, top_k)
    bound = m.bind(model) if m is not None else _no_metric
    with model.lock, job_status(model, progress, cancel):
        out = run_rows(model, src, ids, [checked], bound, top_k=top_k, progress=progress, cancel=cancel)
    options = dict(
        op="intervene",
        prompt=prompt,
        source=source,
        metric=None if m is None else m.name,
        edits=edits_options(checked),
        top_k=top_k,
    )
    return run_value(model, out, options, lambda: codegen.intervene_code(model, m, options, checked))


def dataset_edits(edits: Any) -> list[Edit]:
    """A dataset op's `edits=`: a non-empty list of wb.Edit, unchecked (positions are columns)."""
    if isinstance(edits, Edit):
        edits = [edits]
    if not isinstance(edits, list | tuple) or not edits or not all(isinstance(e, Edit) for e in edits):
        raise WorkbenchError(
            "edits= takes a non-empty list of wb.Edit, e.g. edits=[wb.Edit(wb.Cell('resid_pre', 6, position=3), "
            "'zero')] (over a Dataset a position is a column index or a role name)."
        )
    for e in edits:
        _ = e.kind  # unknown strings fail here
    return list(edits)


def example_edits(model: Model, al: Any, i: int, edits: list[Edit]) -> list[Edit]:
    """Example i's edits: each edit's column stands for that example's positions (each edited alike)."""
    out: list[Edit] = []
    for e in edits:
        out += [Edit(c, e.value) for c in example_cells(al, i, [e.cell], model)]
    return checked_edits(model, out, al.clean_ids[i].shape[1])


def _intervene_dataset(
    model: Model,
    ds: Dataset,
    edits: Any,
    m: Metric,
    top_k: int,
    align: str,
    progress: Progress,
    cancel: threading.Event | None,
) -> Value:
    edits = dataset_edits(edits)
    copies = any(e.kind == "source" for e in edits)
    if copies and ds.corrupt is None:
        raise WorkbenchError(
            f"{next(e for e in edits if e.kind == 'source')!r} copies from the source run: over a Dataset that is "
            "each example's corrupt prompt, and this dataset has none. Give the Dataset corrupt=[...], or give the "
            "edit another value ('zero', 'mean', a tensor, or wb.Add(tensor))."
        )
    top_k = check_top_k(model, top_k)
    runner = Runner(model, ds, m, align, corrupt=copies, progress=progress, cancel=cancel)
    per_edits = [example_edits(model, runner.al, i, edits) for i in range(len(ds))]

    def job(i: int) -> tuple[Any, Any, list[list[Edit]]]:
        ids = runner.al.clean_ids[i]
        return (runner.al.corrupt_ids[i] if copies else ids), ids, [per_edits[i]]

    with model.lock, job_status(model, progress, cancel):  # remote: every example in one request
        values = [run_value(model, out, {}, lambda: "") for out in runner.run(job, top_k=top_k)]
    options = dict(
        op="intervene",
        dataset=len(ds),
        metric=m.name,
        edits=[(e.cell.site, e.cell.layer, e.cell.position, e.cell.head, e.kind) for e in edits],
        source="corrupt" if copies else None,
        top_k=top_k,
    )
    return runner.value_result(
        values,
        options=options,
        code=lambda: codegen.dataset_code(model, m, options, ds, runner.al, edits=edits),
    )
