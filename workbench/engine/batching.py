"""What every engine shares: the output of a batch of runs, cancellation, progress, and memory budgets."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import CancelledError
from ..model import Model

Progress = Callable[[float, str], None] | None


@dataclass
class BatchOutput:
    values: torch.Tensor  # metric per run [n]
    source: float  # metric of the source row
    base: float  # metric of the unedited base row
    top_ids: torch.Tensor | None  # [n, k] when top_k was asked
    top_probs: torch.Tensor | None


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise CancelledError("Cancelled: the computation was stopped before it finished; nothing changed.")


def available_bytes() -> int:
    """Free memory (MemAvailable), or 4 GiB where /proc/meminfo is missing."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 1024**3


def rows_per_chunk(model: Model, n_tokens: int, limit: int = 256) -> int:
    """How many edited rows one forward may carry: a quarter of free memory, at most `limit`."""
    cfg = model.config
    d_mlp = int(getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * model.d_model)
    per_token = 4 * (12 * model.d_model + 4 * d_mlp + 3 * model.n_heads * n_tokens)
    per_row = max(1, per_token * n_tokens)
    budget = int(os.environ.get("WORKBENCH_MEMORY_BUDGET", available_bytes() // 4))
    return max(1, min(limit, budget // per_row))


def report(progress: Progress, done: int, n: int) -> None:
    """Tell `progress` (if any) that `done` of `n` runs are finished."""
    if progress is not None:
        progress(min(1.0, done / max(n, 1)), f"{min(n, done)}/{n} runs")


Chunk = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, slice]


def in_chunks(
    rows: Sequence[Any],
    size: int,
    one: Callable[[list], Chunk],
    *,
    top_k: int,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> BatchOutput:
    """The traced engines' loop: `one(part)` runs a chunk of rows in one forward and returns the metric of
    every batch row (row 0 source, row 1 base), the top-k ids and probabilities, and the slice of the batch
    that holds the part's answers. With no rows one chunk still runs, for the source and base metrics."""
    outs, tops, probs = [], [], []
    source_metric = base_metric = float("nan")
    n = len(rows)
    for start in range(0, max(n, 1), size):
        check_cancel(cancel)
        part = list(rows[start : start + size])
        values, top_i, top_p, answer = one(part)
        source_metric, base_metric = float(values[0]), float(values[1])
        outs.append(values[answer])
        if top_k:
            tops.append(top_i[answer])
            probs.append(top_p[answer])
        report(progress, start + len(part), n)
    return BatchOutput(
        values=torch.cat(outs) if outs else torch.empty(0),
        source=source_metric,
        base=base_metric,
        top_ids=torch.cat(tops) if top_k else None,
        top_probs=torch.cat(probs) if top_k else None,
    )


class Collected:
    """The fast engines' results: the metric (and top-k) of every run, filled in chunk by chunk at the runs'
    indices."""

    def __init__(self, n: int, top_k: int) -> None:
        self.top_k = top_k
        self.values = torch.empty(n)
        self.top_ids = torch.zeros(n, max(top_k, 1), dtype=torch.long)
        self.top_probs = torch.zeros(n, max(top_k, 1))

    def add(self, idx: torch.Tensor, logits: torch.Tensor, metric: Any, reference: torch.Tensor) -> None:
        """Runs `idx` ended in last-position `logits` [n, V]; `reference` is the source row's [V]."""
        if self.top_k:  # before the metric, which may edit its logits
            top = torch.softmax(logits, dim=-1).topk(self.top_k, dim=-1)
            self.top_ids[idx], self.top_probs[idx] = top.indices, top.values
        self.values[idx] = metric(logits, reference.clone()).float()

    def output(self, metric: Any, ends: torch.Tensor) -> BatchOutput:
        """The BatchOutput, with the source and base metrics from their logits `ends` [2, V]."""
        both = metric(ends.clone(), ends[0].clone()).float()
        return BatchOutput(
            values=self.values,
            source=float(both[0]),
            base=float(both[1]),
            top_ids=self.top_ids if self.top_k else None,
            top_probs=self.top_probs if self.top_k else None,
        )
