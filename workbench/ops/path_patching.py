"""Path patching (Wang et al. 2022, "Interpretability in the Wild"), clean into corrupt like `wb.patch`.

The effect of some heads (senders) on other heads' inputs or on the logits (receivers) through direct paths
and MLPs only, not through other heads: (1) run the corrupt prompt with the senders' outputs set to their
clean values and every other attention head's output frozen at its corrupt value (MLPs and norms
recomputed), and record the receivers' inputs; (2) run the corrupt prompt again with only those receiver
inputs patched in, and read the metric.
"""

from __future__ import annotations

import threading
import types
from typing import Any

import numpy as np
import torch

from .. import codegen
from ..data.dataset import Dataset
from ..engine.batching import Progress
from ..engine.edits import Cell, as_cells
from ..engine.path_traced import run
from ..engine.sites import site as site_record
from ..errors import SiteError, WorkbenchError
from ..model import Model
from ..remote import job_status
from ..validate import as_bool
from .metrics import Metric, as_metric
from .over_dataset import Runner, example_cells, is_dataset, no_second_prompt
from .patching import MetricLike, check_top_k, pair_tokens, run_value
from .results import SweepResult, Value


def _example(model: Model) -> str:
    return f"wb.Cell('head', {max(model.n_layers - 2, 0)}, head=0)"


def check_senders(model: Model, senders: Any, n_tokens: int) -> list[Cell]:
    """The senders as checked `head` cells (position None = every position, or one position)."""
    hint = " (every head of a layer: [wb.Cell('head', l, head=h) for h in range(model.n_heads)])"
    out = []
    for s in as_cells(senders, "senders", _example(model), hint):
        if not site_record(s.site).sender:
            raise SiteError(
                f"Path patching sends from attention heads: a sender must be wb.Cell('head', layer, head=h), got "
                f"{s!r}. For a whole attention layer list its heads, [wb.Cell('head', {s.layer}, head=h) for h "
                "in range(model.n_heads)]; to patch an MLP or a residual site with every path open, use "
                "wb.patch(..., cells=[...])."
            )
        cell = s.checked(model, n_tokens)
        if cell not in out:
            out.append(cell)
    return out


def check_receivers(model: Model, receivers: Any, n_tokens: int) -> list[Cell] | None:
    """The receivers as checked q/k/v/head cells, or None for "logits"."""
    if isinstance(receivers, str):
        if receivers == "logits":
            return None
        raise WorkbenchError(
            f"receivers={receivers!r}: use receivers='logits' (the final residual stream) or a list of "
            f"q/k/v/head cells, e.g. receivers=[wb.Cell('q', {model.n_layers - 1}, head=0)]."
        )
    example = f"wb.Cell('q', {model.n_layers - 1}, head=0)"
    out = []
    for r in as_cells(receivers, "receivers", example, " (or receivers='logits', the final residual stream)"):
        if not site_record(r.site).receiver:
            raise SiteError(
                f"A receiver is a head's input: wb.Cell('q' | 'k' | 'v', layer, head=h) for one of its query, "
                f"key or value, or wb.Cell('head', layer, head=h) for all three; got {r!r}. For the effect on "
                "the output use receivers='logits'."
            )
        cell = r.checked(model, n_tokens)  # k/v: key-value head indices, with a message for query indices
        if cell not in out:
            out.append(cell)
    return out


def receiver_inputs(model: Model, receivers: list[Cell]) -> list[Cell]:
    """The q/k/v cells the receivers read: a `head` receiver is its query and (grouped-query attention) its
    key-value head's key and value, kv head h // (n_heads / n_kv_heads)."""
    group = model.n_heads // model.n_kv_heads
    out: list[Cell] = []
    for r in receivers:
        rec = site_record(r.site)
        cells = (  # a whole head (a sender's output, not one of its inputs) receives through its q, k and v
            [Cell(s, r.layer, r.position, r.head if s == "q" else r.head // group) for s in "qkv"]
            if rec.sender
            else [r]
        )
        out += [c for c in cells if c not in out]
    return out


def _query_heads(model: Model, cell: Cell) -> set[int]:
    """The query heads whose input a receiver cell is (a key/value head feeds its whole group)."""
    if site_record(cell.site).heads == "kv":
        group = model.n_heads // model.n_kv_heads
        return set(range(cell.head * group, (cell.head + 1) * group))
    return {cell.head}


def check_paths(model: Model, senders: list[Cell], receivers: list[Cell] | None) -> None:
    """Every sender must lie strictly below every receiver, and no head may send to itself."""
    if receivers is None:
        return
    for r in receivers:
        for s in senders:
            heads = _query_heads(model, r)
            if s.layer == r.layer and s.head in heads:
                shared = (
                    f" (key-value head {r.head} is read by query heads {min(heads)}..{max(heads)})"
                    if len(heads) > 1
                    else ""
                )
                raise WorkbenchError(
                    f"Sender {s!r} and receiver {r!r} are the same head{shared}: a head cannot be path-patched "
                    "into its own input. Remove it from senders= or from receivers=."
                )
    for r in receivers:
        for s in senders:
            if s.layer >= r.layer:
                raise WorkbenchError(
                    f"Receiver {r!r} is at or below sender {s!r} (layer {r.layer} <= {s.layer}): a head's output "
                    "reaches only later layers. Drop the senders at layers >= "
                    f"{min(x.layer for x in receivers)} or pick receivers above layer {max(x.layer for x in senders)}."
                )


def _options(op: str, clean: str, corrupt: str, metric: Any, senders: Any, receivers: Any) -> dict[str, Any]:
    def cells(cs: list[Cell]) -> list[tuple]:
        return [(c.site, c.layer, c.position, c.head) for c in cs]

    options = dict(op=op, clean=clean, corrupt=corrupt, metric=metric.name, site="head")
    if senders is not None:
        options["senders"] = cells(senders)
    options["receivers"] = "logits" if receivers is None else cells(receivers)
    return options


def path_patch(
    model: Model,
    clean: str | Dataset,
    corrupt: str | None = None,
    *,
    metric: MetricLike,
    senders: Any,
    receivers: Any = "logits",
    top_k: int = 5,
    align: str = "exact",
    direct: bool = False,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> Value:
    """The metric of the corrupt run when only the paths from `senders` to `receivers` carry the clean run.

    senders: `wb.Cell("head", layer, head=h)` cells (position None = every position, or one position). Only
    heads send: path patching is defined by freezing the other heads; for an MLP or residual site use
    `wb.patch`. receivers: "logits" (the final residual stream), or cells at q, k, v (a head's query, or a
    key-value head's key/value: with grouped-query attention k/v heads index the n_kv_heads) or head (its q, k
    and v; with grouped-query attention the k and v of its key-value head h // (n_heads / n_kv_heads), which
    every query head of that group reads). Every receiver must be above every sender's layer. The paths run
    through MLPs and the residual stream, never through another head, so nothing moves between positions:
    to the logits only a sender's output at the last position counts. `direct=True` freezes the MLPs too, so
    only the direct path from each sender to each receiver carries: with one sender and one receiver that is
    exactly one edge of a circuit graph (`wb.edge_patch` of that edge).

    Over a `wb.Dataset` (in place of clean/corrupt): every example path-patched alike (a position names a
    column of `align=`); a DatasetValue (mean, `.per_example`, `.sem`).
    """
    m = as_metric(metric)
    if is_dataset(clean):
        no_second_prompt("wb.path_patch", corrupt)
        return _path_patch_dataset(
            model, clean, m, senders, receivers, top_k, align, progress, cancel, direct
        )
    c, k = pair_tokens(model, clean, corrupt)
    n_tokens = k.shape[1]
    sender_cells = check_senders(model, senders, n_tokens)
    receiver_cells = check_receivers(model, receivers, n_tokens)
    check_paths(model, sender_cells, receiver_cells)
    top_k = check_top_k(model, top_k)
    bound = m.bind(model)
    inputs = None if receiver_cells is None else receiver_inputs(model, receiver_cells)
    options = _options("path_patch", clean, corrupt, m, sender_cells, receiver_cells)
    direct = as_bool(direct, "direct")
    if direct:
        options["direct"] = True
    with model.lock, job_status(model, progress, cancel):
        out = run(model, c, k, [sender_cells], inputs, bound, top_k=top_k, progress=progress, cancel=cancel,
                  direct=direct)  # fmt: skip
    return run_value(model, out, options, lambda: codegen.path_patch_code(model, m, options))


def path_patch_sweep(
    model: Model,
    clean: str | Dataset,
    corrupt: str | None = None,
    *,
    metric: MetricLike,
    receivers: Any = "logits",
    align: str = "exact",
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> SweepResult:
    """`path_patch` with every head (all positions) as the only sender in turn: [layer, head], batched.

    Heads at or above the lowest receiver's layer have no path to it: their cells are NaN (for "logits" every
    head has one). Over a `wb.Dataset`: a DatasetSweepResult [layer, head] (mean, `.per_example`, `.sem`)."""
    m = as_metric(metric)
    if is_dataset(clean):
        no_second_prompt("wb.path_patch_sweep", corrupt)
        return _path_patch_sweep_dataset(model, clean, m, receivers, align, progress, cancel)
    c, k = pair_tokens(model, clean, corrupt)
    n_tokens = k.shape[1]
    receiver_cells = check_receivers(model, receivers, n_tokens)
    bound = m.bind(model)
    inputs = None if receiver_cells is None else receiver_inputs(model, receiver_cells)
    below = model.n_layers if receiver_cells is None else min(r.layer for r in receiver_cells)
    if below == 0:
        raise WorkbenchError(
            f"No head lies below receivers at layer 0 ({receiver_cells[0]!r}), so the sweep would be all NaN: "
            "pick receivers at layer 1 or above, or receivers='logits'."
        )
    senders = [Cell("head", layer, None, h) for layer in range(below) for h in range(model.n_heads)]
    values = np.full((model.n_layers, model.n_heads), np.nan, dtype=np.float32)
    options = _options("path_patch_sweep", clean, corrupt, m, None, receiver_cells)
    with model.lock, job_status(model, progress, cancel):
        out = run(model, c, k, [[s] for s in senders], inputs, bound, progress=progress, cancel=cancel)
    values[:below] = out.values.float().numpy().reshape(below, model.n_heads)
    return SweepResult(
        values=values,
        clean=out.source,
        corrupt=out.base,
        axes=("layer", "head"),
        tokens=model.str_tokens(k),
        options=options,
        _code=lambda: codegen.path_patch_code(model, m, options),
    )


def _dataset_cells(cells: Any, name: str, model: Model) -> list[Cell]:
    return as_cells(
        cells, name, _example(model) if name == "senders" else f"wb.Cell('q', {model.n_layers - 1}, head=0)"
    )


def _example_receivers(model: Model, runner: Runner, i: int, receivers: Any) -> list[Cell] | None:
    n_tokens = runner.al.clean_ids[i].shape[1]
    if isinstance(receivers, str):
        return check_receivers(model, receivers, n_tokens)
    return check_receivers(model, example_cells(runner.al, i, _dataset_cells(receivers, "receivers", model), model),
                           n_tokens)  # fmt: skip


def _dataset_options(op: str, n: int, m: Metric, senders: Any, receivers: Any) -> dict[str, Any]:
    def cells(cs: list[Cell]) -> list[tuple]:
        return [(c.site, c.layer, c.position, c.head) for c in cs]

    options: dict[str, Any] = dict(op=op, dataset=n, metric=m.name, site="head")
    if senders is not None:
        options["senders"] = cells(senders)
    options["receivers"] = "logits" if receivers is None else cells(receivers)
    return options


def _path_patch_dataset(
    model: Model,
    ds: Dataset,
    m: Metric,
    senders: Any,
    receivers: Any,
    top_k: int,
    align: str,
    progress: Progress,
    cancel: threading.Event | None,
    direct: bool = False,
) -> Value:
    top_k = check_top_k(model, top_k)
    direct = as_bool(direct, "direct")
    runner = Runner(model, ds, m, align, corrupt=True, progress=progress, cancel=cancel)
    given = _dataset_cells(senders, "senders", model)
    given_receivers = None if isinstance(receivers, str) else _dataset_cells(receivers, "receivers", model)
    per: list[tuple[list[Cell], list[Cell] | None]] = []
    for i in range(len(ds)):
        n_tokens = runner.al.clean_ids[i].shape[1]
        s = check_senders(model, example_cells(runner.al, i, given, model), n_tokens)
        r = _example_receivers(model, runner, i, receivers)
        check_paths(model, s, r)
        per.append((s, r))

    def one(i: int, prog: Progress) -> Value:
        c, k = runner.ids(i)
        s, r = per[i]
        inputs = None if r is None else receiver_inputs(model, r)
        out = run(model, c, k, [s], inputs, runner.bound[i], top_k=top_k, progress=prog, cancel=cancel,
                  direct=direct)  # fmt: skip
        return run_value(model, out, {}, lambda: "")

    with model.lock, job_status(model, progress, cancel):
        values = runner.each(one)
    options = _dataset_options("path_patch", len(ds), m, given, given_receivers)
    if direct:
        options["direct"] = True
    return runner.value_result(
        values, options=options, code=lambda: codegen.dataset_code(model, m, options, ds, runner.al)
    )


def _path_patch_sweep_dataset(
    model: Model,
    ds: Dataset,
    m: Metric,
    receivers: Any,
    align: str,
    progress: Progress,
    cancel: threading.Event | None,
) -> SweepResult:
    runner = Runner(model, ds, m, align, corrupt=True, progress=progress, cancel=cancel)
    given_receivers = None if isinstance(receivers, str) else _dataset_cells(receivers, "receivers", model)
    per = [_example_receivers(model, runner, i, receivers) for i in range(len(ds))]
    below = model.n_layers if per[0] is None else min(r.layer for r in per[0])
    if below == 0:
        raise WorkbenchError(
            f"No head lies below receivers at layer 0 ({per[0][0]!r}), so the sweep would be all NaN: "
            "pick receivers at layer 1 or above, or receivers='logits'."
        )
    senders = [Cell("head", layer, None, h) for layer in range(below) for h in range(model.n_heads)]

    def one(i: int, prog: Progress) -> Any:
        c, k = runner.ids(i)
        inputs = None if per[i] is None else receiver_inputs(model, per[i])
        out = run(model, c, k, [[s] for s in senders], inputs, runner.bound[i], progress=prog, cancel=cancel)
        values = torch.full((model.n_layers, model.n_heads), float("nan"))
        values[:below] = out.values.float().reshape(below, model.n_heads)
        return types.SimpleNamespace(values=values, source=out.source, base=out.base)

    with model.lock, job_status(model, progress, cancel):
        outs = runner.each(one)
    options = _dataset_options("path_patch_sweep", len(ds), m, None, given_receivers)
    return runner.sweep_result(
        outs,
        [(model.n_layers, model.n_heads)] * len(outs),
        axes=("layer", "head"),
        options=options,
        code=lambda: codegen.dataset_code(model, m, options, ds, runner.al),
    )
