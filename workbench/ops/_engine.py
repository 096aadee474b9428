"""Batched interventions: many patched runs of one prompt in one forward pass.

Row 0 is the source run (the clean prompt when patching, the reference when resampling, the prompt itself
when ablating), row 1 the unpatched base run, rows 2.. one intervention each. At every layer the rows that
intervene there get their activation replaced, by indexing, while the source row's activation at that very
layer is already computed: one forward pass serves a whole chunk of cells.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import CancelledError, WorkbenchError
from ..model import Model, site_value
from .metrics import BoundMetric

Progress = Callable[[float, str], None] | None


@dataclass(frozen=True)
class Cell:
    """One intervention: at `layer`, `position` (None = all) and `head` (None = whole site)."""

    layer: int
    position: int | None = None
    head: int | None = None


@dataclass
class BatchOutput:
    values: torch.Tensor  # metric per cell [n]
    source: float  # metric of the source row
    base: float  # metric of the unpatched base row
    top_ids: torch.Tensor | None  # [n, k] when top_k was asked
    top_probs: torch.Tensor | None


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise CancelledError("Cancelled: the computation was stopped before it finished; nothing changed.")


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 1024**3


def rows_per_chunk(model: Model, n_tokens: int, limit: int = 256) -> int:
    """How many patched rows one forward may carry: a quarter of free memory, at most `limit`."""
    cfg = model.config
    d_mlp = int(getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * model.d_model)
    per_token = 4 * (12 * model.d_model + 4 * d_mlp + 3 * model.n_heads * n_tokens)
    per_row = max(1, per_token * n_tokens)
    budget = int(os.environ.get("WORKBENCH_MEMORY_BUDGET", _available_bytes() // 4))
    return max(1, min(limit, budget // per_row))


def _group_by_layer(cells: Sequence[Cell], first_row: int) -> dict[int, list[tuple[int, Cell]]]:
    groups: dict[int, list[tuple[int, Cell]]] = defaultdict(list)
    for i, cell in enumerate(cells):
        groups[cell.layer].append((first_row + i, cell))
    return groups


def _apply(
    x: torch.Tensor,
    model: Model,
    site: str,
    group: list[tuple[int, Cell]],
    mode: str,
    values: dict[int, torch.Tensor] | None,
) -> None:
    """Edit `x` (the live site activation [B, T, D]) in place for the rows in `group`."""
    b, t = x.shape[0], x.shape[1]
    if site == "head":
        x = x.view(b, t, model.n_heads, model.d_head)
    for row, cell in group:
        index: tuple = (row,)
        src_index: tuple = (0,)
        if cell.position is not None:
            index += (cell.position,)
            src_index += (cell.position,)
        elif cell.head is not None:
            index += (slice(None),)
            src_index += (slice(None),)
        if cell.head is not None:
            index += (cell.head,)
            src_index += (cell.head,)
        if mode == "copy":
            x[index] = x[src_index]
        elif mode == "zero":
            x[index] = 0.0
        elif mode == "mean":  # mean over the base row's positions
            mean = x[1].mean(dim=0)
            x[index] = mean[cell.head] if cell.head is not None else mean
        elif mode == "value":
            assert values is not None
            x[index] = values[row].to(x.dtype)
        else:
            raise WorkbenchError(f"unknown intervention mode {mode!r}")


def _apply_vectorised(x: torch.Tensor, model: Model, site: str, group: list[tuple[int, Cell]]) -> bool:
    """Fast path for the common sweep case: copy mode, every cell of the group has a position."""
    if not group or any(c.position is None for _, c in group):
        return False
    b, t = x.shape[0], x.shape[1]
    rows = torch.tensor([r for r, _ in group])
    pos = torch.tensor([c.position for _, c in group])
    if site == "head":
        if any(c.head is None for _, c in group):
            return False
        heads = torch.tensor([c.head for _, c in group])
        x4 = x.view(b, t, model.n_heads, model.d_head)
        x4[rows, pos, heads] = x4[0, pos, heads]
    else:
        x[rows, pos] = x[0, pos]
    return True


def run_batch(
    model: Model,
    source_ids: torch.Tensor,
    base_ids: torch.Tensor,
    site: str,
    cells: Sequence[Cell],
    metric: BoundMetric,
    *,
    mode: str = "copy",
    values: Sequence[torch.Tensor] | None = None,
    top_k: int = 0,
    progress: Progress = None,
    cancel: threading.Event | None = None,
    chunk: int | None = None,
) -> BatchOutput:
    """Metric of every intervention in `cells` (chunked; each chunk is one forward pass)."""
    n_tokens = base_ids.shape[1]
    size = chunk or rows_per_chunk(model, n_tokens)
    outs, tops, probs = [], [], []
    source_metric = base_metric = float("nan")
    n = len(cells)
    for start in range(0, max(n, 1), size):
        check_cancel(cancel)
        part = list(cells[start : start + size])
        part_values = None
        if values is not None:
            part_values = {2 + i: v for i, v in enumerate(values[start : start + size])}
        metric_rows, top_i, top_p = _trace_chunk(
            model, source_ids, base_ids, site, part, metric, mode, part_values, top_k
        )
        source_metric, base_metric = float(metric_rows[0]), float(metric_rows[1])
        outs.append(metric_rows[2:])
        if top_k:
            tops.append(top_i[2:])
            probs.append(top_p[2:])
        if progress is not None:
            progress(min(1.0, (start + len(part)) / max(n, 1)), f"{min(n, start + len(part))}/{n} runs")
    return BatchOutput(
        values=torch.cat(outs) if outs else torch.empty(0),
        source=source_metric,
        base=base_metric,
        top_ids=torch.cat(tops) if top_k else None,
        top_probs=torch.cat(probs) if top_k else None,
    )


def _trace_chunk(
    model: Model,
    source_ids: torch.Tensor,
    base_ids: torch.Tensor,
    site: str,
    cells: list[Cell],
    metric: BoundMetric,
    mode: str,
    values: dict[int, torch.Tensor] | None,
    top_k: int,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One forward pass over [source, base, *cells]; returns the metric per row (and top-k if asked)."""
    batch = torch.cat([source_ids, base_ids] + [base_ids] * len(cells), dim=0)
    groups = _group_by_layer(cells, first_row=2)
    last_layer = max(groups) if groups else -1
    top_i = top_p = None
    with torch.no_grad(), model.nn.trace(batch, logits_to_keep=1):
        for layer in range(last_layer + 1):
            if layer in groups:
                x = site_value(model, site, layer)
                if mode != "copy" or not _apply_vectorised(x, model, site, groups[layer]):
                    _apply(x, model, site, groups[layer], mode, values)
        logits = model.nn.output.logits[:, -1].float()
        result = metric(logits, logits[0]).save()
        if top_k:
            probs = torch.softmax(logits, dim=-1).topk(top_k, dim=-1)
            top_i = probs.indices.save()
            top_p = probs.values.save()
    return result, top_i, top_p


def collect(model: Model, ids: torch.Tensor, site: str, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """The activation of `site` at each of `layers` for a [B, T] batch: {layer: [B, T, D]}."""
    wanted = sorted(set(layers))
    saved: dict[int, torch.Tensor] = {}
    with torch.no_grad(), model.nn.trace(ids, logits_to_keep=1):
        for layer in wanted:
            saved[layer] = site_value(model, site, layer).clone().save()
    return {k: v.detach() for k, v in saved.items()}
