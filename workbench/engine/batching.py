"""What every engine shares: the output of a batch of runs, cancellation, progress, and memory budgets."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

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
