"""Activation patching: put the clean run's activation into the corrupt run and read the metric."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .. import codegen
from ..data.dataset import Dataset
from ..engine.batching import BatchOutput, Progress
from ..engine.edits import Cell, Edit, as_cells
from ..engine.sites import site as site_record
from ..engine.traced import collect, run_examples, run_rows
from ..errors import SiteError, TokenizationError, WorkbenchError
from ..model import Model
from ..remote import job_status
from ..validate import as_bool, as_int
from .metrics import Metric, as_metric
from .over_dataset import (
    Runner,
    column_rows,
    dataset_cells,
    dataset_cells_options,
    example_cells,
    is_dataset,
    no_second_prompt,
)
from .results import SweepResult, Value

MetricLike = Metric | Callable[[torch.Tensor], Any]


def pair_tokens(model: Model, clean: str, corrupt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of a clean/corrupt pair, which must have the same length (positions line up)."""
    c = model.to_tokens(clean, what="clean prompt")
    k = model.to_tokens(corrupt, what="corrupt prompt")
    if c.shape[1] != k.shape[1]:
        raise TokenizationError(
            f"The clean and corrupt prompts must have the same number of tokens so positions line up, but "
            f"clean has {c.shape[1]}: {model.str_tokens(c)} and corrupt has {k.shape[1]}: {model.str_tokens(k)}. "
            "Reword one of them (e.g. pick a name or word that is the same number of tokens)."
        )
    return c, k


def check_cell(
    model: Model, site: str, layer: int, position: int | None, head: int | None, n_tokens: int
) -> Cell:
    """The single-cell shorthand (site=, layer=, position=, head=) as a checked Cell."""
    return Cell(site, layer, position, head).checked(model, n_tokens)


def target_cells(
    model: Model,
    n_tokens: int,
    *,
    cells: Any,
    site: str,
    layer: Any,
    position: Any,
    head: Any,
    op: str,
) -> list[Cell]:
    """The cells an op edits jointly: `cells=` (a list of wb.Cell), or the single-cell keywords."""
    if cells is not None:
        given = [k for k, v in (("layer", layer), ("position", position), ("head", head)) if v is not None]
        if given:
            raise WorkbenchError(
                f"{op}: give either cells= or the single-cell keywords ({', '.join(given)}=), not both; "
                "put every place in cells=[wb.Cell(site, layer, position=..., head=...), ...]."
            )
        return [c.checked(model, n_tokens) for c in as_cells(cells)]
    if layer is None:
        raise SiteError(
            f"{op} needs layer= (an integer; with site=, position=, head=) or cells=[wb.Cell(...), ...] for several places."
        )
    return [check_cell(model, site, layer, position, head, n_tokens)]


def cells_options(cells: list[Cell]) -> dict[str, Any]:
    """How an op's options record its cells: the single-cell fields for one cell, else a list."""
    if len(cells) == 1:
        c = cells[0]
        return dict(site=c.site, layer=c.layer, position=c.position, head=c.head)
    return dict(cells=[(c.site, c.layer, c.position, c.head) for c in cells])


def check_top_k(model: Model, top_k: int, *, lo: int = 0) -> int:
    """How many next-token candidates to report: lo..min(100, vocab) (0 = none, for patch and ablate)."""
    return as_int(top_k, "top_k", lo=lo, hi=min(100, model.vocab_size))


def sweep_cells(
    model: Model, site: str, n_tokens: int, by_position: bool
) -> tuple[list[Cell], tuple[int, ...]]:
    """Every cell of a sweep, in row-major order of the result grid, and the grid's shape."""
    rec = site_record(model.check_site(site))
    as_bool(by_position, "by_position")
    layers = range(1) if rec.embed_only else range(model.n_layers)
    heads = range(model.n_kv_heads if rec.heads == "kv" else model.n_heads)
    positions = range(n_tokens)
    if not rec.per_head:
        return [Cell(site, lyr, p) for lyr in layers for p in positions], (len(layers), n_tokens)
    if by_position:
        cells = [Cell(site, lyr, p, h) for lyr in layers for p in positions for h in heads]
        return cells, (len(layers), n_tokens, len(heads))
    return [Cell(site, lyr, None, h) for lyr in layers for h in heads], (len(layers), len(heads))


def sweep_axes(site: str, by_position: bool) -> tuple[str, ...]:
    if not site_record(site).per_head:
        return ("layer", "position")
    return ("layer", "position", "head") if by_position else ("layer", "head")


def prediction(model: Model, out: BatchOutput) -> dict[str, Any]:
    """The first intervened run's next-token top-k (ids, probabilities, token strings)."""
    if out.top_ids is None or out.top_probs is None:
        return {"top_ids": np.zeros(0, np.int32), "top_probs": np.zeros(0, np.float32), "top_tokens": []}
    ids = out.top_ids[0].to(torch.int32).numpy()
    return {
        "top_ids": ids,
        "top_probs": out.top_probs[0].float().numpy(),
        "top_tokens": model.str_tokens(ids.tolist()),
    }


def run_value(model: Model, out: BatchOutput, options: dict[str, Any], code: Callable[[], str]) -> Value:
    """An op's Value from its one-run output: the run's metric, the source and base runs' metrics as clean and
    corrupt, the run's prediction, and `code` for to_code()."""
    return Value(
        float(out.values[0]),
        clean=out.source,
        corrupt=out.base,
        options=options,
        _code=code,
        **prediction(model, out),
    )


def moved_source(
    model: Model,
    source_ids: torch.Tensor,
    cell: Cell,
    source_layer: int | None,
    source_position: int | None,
) -> torch.Tensor | None:
    """The source run's activation for `cell` when it comes from another layer or position (a drag), else
    None (the source is the patched cell itself). A missing source layer/position means the cell's own."""
    layer = cell.layer if source_layer is None else model.check_layer(source_layer, "source_layer")
    if source_position is not None and cell.position is None:
        raise WorkbenchError("source_position needs position= too (a drag moves one position to another).")
    n_tokens = source_ids.shape[1]
    position = (
        cell.position
        if source_position is None
        else model.check_position(source_position, n_tokens, "source_position")
    )
    if site_record(cell.site).embed_only and layer != 0:
        raise WorkbenchError(
            f"Site {cell.site!r} has only layer 0 (source_layer={layer}): a drag can move it across "
            "positions only (source_position=)."
        )
    if layer == cell.layer and position == cell.position:
        return None
    act = collect(model, source_ids, cell.site, [layer])[layer][0]
    if cell.head is not None:
        act = act[..., cell.head, :] if not site_record(cell.site).pattern else act[cell.head]
    return act if position is None else act[position]


def patch(
    model: Model,
    clean: str | Dataset,
    corrupt: str | None = None,
    *,
    metric: MetricLike,
    site: str = "resid_pre",
    layer: int | None = None,
    position: int | None = None,
    head: int | None = None,
    cells: Any = None,
    source_layer: int | None = None,
    source_position: int | None = None,
    top_k: int = 5,
    align: str = "exact",
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> Value:
    """Metric of the corrupt run with the clean activation at (site, layer, position, head), or at every
    cell of `cells=[wb.Cell(...), ...]` at once (jointly, in one run).

    `source_layer` / `source_position` take the clean activation from another layer or position of the
    same site (a drag from one cell to another); by default the source is the patched cell itself.

    Over a `wb.Dataset` (in place of clean/corrupt): every example patched the same way (a position names a
    column of `align=`, all of a role's tokens at once); the result's float is the mean, with `.per_example`.
    """
    m = as_metric(metric)
    if is_dataset(clean):
        no_second_prompt("wb.patch", corrupt)
        if source_layer is not None or source_position is not None:
            raise WorkbenchError(
                "source_layer= / source_position= (a drag) apply to one prompt pair, not a Dataset."
            )
        return _patch_dataset(model, clean, m, dataset_cells(cells, site, layer, position, head, "wb.patch"),
                              top_k, align, progress, cancel)  # fmt: skip
    c, k = pair_tokens(model, clean, _corrupt_of(corrupt, "wb.patch"))
    targets = target_cells(
        model, k.shape[1], cells=cells, site=site, layer=layer, position=position, head=head, op="wb.patch"
    )
    if (source_layer is not None or source_position is not None) and len(targets) != 1:
        raise WorkbenchError(
            "source_layer= / source_position= move one cell; they do not combine with cells=."
        )
    if source_layer is not None:
        source_layer = model.check_layer(source_layer, "source_layer")
    if source_position is not None:
        source_position = model.check_position(source_position, k.shape[1], "source_position")
    top_k = check_top_k(model, top_k)
    bound = m.bind(model)
    options = dict(
        op="patch",
        clean=clean,
        corrupt=corrupt,
        metric=m.name,
        **cells_options(targets),
        source_layer=source_layer,
        source_position=source_position,
    )
    with model.lock, job_status(model, progress, cancel):
        edits = [Edit(cell) for cell in targets]
        if len(targets) == 1:
            value = moved_source(model, c, targets[0], source_layer, source_position)
            if value is not None:
                edits = [Edit(targets[0], value)]
        out = run_rows(model, c, k, [edits], bound, top_k=top_k, progress=progress, cancel=cancel)
    return run_value(model, out, options, lambda: codegen.patch_code(model, m, options))


def patch_sweep(
    model: Model,
    clean: str | Dataset,
    corrupt: str | None = None,
    *,
    metric: MetricLike,
    site: str = "resid_pre",
    by_position: bool = False,
    align: str = "exact",
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> SweepResult:
    """Patch every (layer, position) — or (layer, head), or (layer, position, head) — in batched forwards.

    Per-head sites (head, q, k, v, pattern) sweep heads; k and v sweep the key-value heads. Over a
    `wb.Dataset`: a DatasetSweepResult (mean grid, `.per_example`, `.sem`) whose position columns follow
    `align=` ("exact", "right", or "roles": a role's tokens patched together)."""
    m = as_metric(metric)
    if is_dataset(clean):
        no_second_prompt("wb.patch_sweep", corrupt)
        return _patch_sweep_dataset(model, clean, m, site, by_position, align, progress, cancel)
    c, k = pair_tokens(model, clean, _corrupt_of(corrupt, "wb.patch_sweep"))
    by_position = as_bool(by_position, "by_position")
    cells, shape = sweep_cells(model, site, k.shape[1], by_position)
    bound = m.bind(model)
    with model.lock, job_status(model, progress, cancel):
        out = run_rows(model, c, k, [[Edit(cell)] for cell in cells], bound, progress=progress, cancel=cancel)
    options = dict(
        op="patch_sweep", clean=clean, corrupt=corrupt, metric=m.name, site=site, by_position=by_position
    )
    return SweepResult(
        values=out.values.float().numpy().reshape(shape),
        clean=out.source,
        corrupt=out.base,
        axes=sweep_axes(site, by_position),
        tokens=model.str_tokens(k),
        options=options,
        _code=lambda: codegen.sweep_code(model, m, options),
    )


def _corrupt_of(corrupt: str | None, op: str) -> str:
    if corrupt is None:
        raise WorkbenchError(
            f"{op} needs a corrupt prompt: {op}(model, clean, corrupt, ...), or a wb.Dataset in place of both."
        )
    return corrupt


def _patch_sweep_dataset(
    model: Model,
    ds: Dataset,
    m: Metric,
    site: str,
    by_position: Any,
    align: str,
    progress: Progress,
    cancel: threading.Event | None,
) -> SweepResult:
    """patch_sweep over a Dataset: each example's sweep over its columns, as one pair's sweep would run."""
    by_position = as_bool(by_position, "by_position")
    model.check_site(site)
    runner = Runner(model, ds, m, align, corrupt=True, progress=progress, cancel=cancel)
    shapes: list[tuple[int, ...]] = []
    pairs, edits = [], []
    for i in range(len(ds)):
        c, k = runner.ids(i)
        rows, shape = column_rows(model, site, runner.al.positions[i], by_position, c.shape[1])
        shapes.append(shape)
        pairs.append((c, k))
        edits.append([[Edit(cell) for cell in row] for row in rows])
    with model.lock, job_status(model, progress, cancel):  # examples of one length share forwards
        outs = run_examples(model, pairs, edits, runner.bound, progress=progress, cancel=cancel)
    options = dict(op="patch_sweep", dataset=len(ds), metric=m.name, site=site, by_position=by_position)
    return runner.sweep_result(
        outs,
        shapes,
        axes=sweep_axes(site, by_position),
        options=options,
        code=lambda: codegen.dataset_code(model, m, options, ds, runner.al),
    )


def _patch_dataset(
    model: Model,
    ds: Dataset,
    m: Metric,
    cells: list[Cell],
    top_k: int,
    align: str,
    progress: Progress,
    cancel: threading.Event | None,
) -> Value:
    """patch over a Dataset: each example's corrupt run with the clean activations at the cells' columns."""
    top_k = check_top_k(model, top_k)
    runner = Runner(model, ds, m, align, corrupt=True, progress=progress, cancel=cancel)
    per_cells = [example_cells(runner.al, i, cells, model) for i in range(len(ds))]

    pairs = [runner.ids(i) for i in range(len(ds))]
    edits = [[[Edit(x) for x in per_cells[i]]] for i in range(len(ds))]
    with model.lock, job_status(model, progress, cancel):  # examples of one length share forwards
        outs = run_examples(model, pairs, edits, runner.bound, top_k=top_k, progress=progress, cancel=cancel)
    values = [run_value(model, out, {}, lambda: "") for out in outs]
    options = dict(op="patch", dataset=len(ds), metric=m.name, **dataset_cells_options(cells))
    return runner.value_result(
        values, options=options, code=lambda: codegen.dataset_code(model, m, options, ds, runner.al)
    )
