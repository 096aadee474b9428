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

from ..errors import CancelledError
from ..model import Model
from ._kernels import copy_positions, edit, heads_view, read
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


def _plan(cells: Sequence[Cell], first_row: int) -> dict[int, list[tuple[int, int | None, int | None]]]:
    """Cells grouped by layer, as plain (row, position, head) tuples for the trace body."""
    groups: dict[int, list[tuple[int, int | None, int | None]]] = defaultdict(list)
    for i, cell in enumerate(cells):
        groups[cell.layer].append((first_row + i, cell.position, cell.head))
    return groups


def _vectorised(
    group: list[tuple[int, int | None, int | None]], site: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """Index tensors for `_kernels.copy_positions` when every cell has a position (and a head for heads)."""
    if any(pos is None for _, pos, _ in group) or (site == "head" and any(h is None for _, _, h in group)):
        return None
    rows = torch.tensor([r for r, _, _ in group])
    pos = torch.tensor([p for _, p, _ in group])
    heads = torch.tensor([h for _, _, h in group]) if site == "head" else None
    return rows, pos, heads


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
    from ._fast_sweep import run as fast_run  # exact, computes only what a patch changes; None if n/a

    fast = fast_run(model, source_ids, base_ids, site, cells, metric, mode=mode, values=values, top_k=top_k,
                    progress=progress, cancel=cancel, chunk=chunk)  # fmt: skip
    if fast is not None:
        return fast
    n_tokens = base_ids.shape[1]
    # Remote: the whole sweep is one request (the server has the memory); locally, chunks that fit.
    size = chunk or (max(1, len(cells)) if model.remote else rows_per_chunk(model, n_tokens))
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
    plan = _plan(cells, first_row=2)
    layers = sorted(plan)
    refs = {layer: model.site_ref(site, layer) for layer in layers}
    fast = {layer: _vectorised(plan[layer], site) if mode == "copy" else None for layer in layers}
    dims = model.head_dims(site)
    nn = model.nn
    # Saved values must be bound to plain names in the body: that is what comes back (also from NDIF).
    top_ids = top_probs = None
    with torch.no_grad(), nn.trace(batch, logits_to_keep=1, **model.trace_options()):
        for layer in layers:
            x = read(*refs[layer])
            if dims is not None:
                x = heads_view(x, *dims)
            if fast[layer] is not None:
                copy_positions(x, *fast[layer])
            else:
                edit(x, plan[layer], mode, values)
        logits = nn.output.logits[:, -1].float()
        metric_values = metric(logits.clone(), logits[0].clone()).save()  # the metric may edit them
        if top_k:
            top = torch.softmax(logits, dim=-1).topk(top_k, dim=-1)
            top_ids = top.indices.save()
            top_probs = top.values.save()
    return metric_values, top_ids, top_probs


def collect(model: Model, ids: torch.Tensor, site: str, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """The activation of `site` at each of `layers` for a [B, T] batch: {layer: [B, T, D]}."""
    wanted = sorted(set(layers))
    refs = [model.site_ref(site, layer) for layer in wanted]
    with torch.no_grad(), model.nn.trace(ids, logits_to_keep=1, **model.trace_options()):
        acts = []
        for ref in refs:
            acts.append(read(*ref).clone())
        stacked = torch.stack(acts).save()  # [n_layers, B, T, D]
    return {layer: stacked[i].detach() for i, layer in enumerate(wanted)}
