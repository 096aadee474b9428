"""Path patching in one nnsight forward pass per chunk of runs (local or on NDIF), and the entry point.

The batch is [clean, corrupt, F_1..F_n, R_1..R_n]. The F rows are step 1, the frozen runs: from the lowest
sender's layer on, every head output (the output projection's input) of an F row is the corrupt row's,
except its senders' slots, which are the clean row's. The R rows are step 2: plain corrupt runs whose
receiver inputs (q/k/v slices) are copied from F_i at the receiver's module, in the same forward (a receiver's
input exists in F_i before R_i needs it: same module call). For receivers = logits there are no R rows and
F_i's logits are the answer. One forward serves a whole chunk, and a remote run is one request.

`run` tries the local fast path (`path_replay.run`) first, like `traced.run_rows` tries the replay.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch

from ..model import Model
from . import path_replay
from .batching import BatchOutput, Chunk, Progress, in_chunks, rows_per_chunk
from .edits import Cell
from .kernels import apply_edits, read, slot
from .sites import site as site_record


def run(
    model: Model,
    source_ids: torch.Tensor,
    base_ids: torch.Tensor,
    rows: Sequence[Sequence[Cell]],
    inputs: Sequence[Cell] | None,
    metric: Any,
    *,
    top_k: int = 0,
    progress: Progress = None,
    cancel: threading.Event | None = None,
    chunk: int | None = None,
    direct: bool = False,
) -> BatchOutput:
    """The path-patched metric of every row of senders (checked `head` cells) to `inputs` (checked q/k/v
    cells, every one above every sender's layer; None = the logits), in chunks. `direct`: the MLPs of the
    frozen runs are frozen too (at the corrupt run's outputs), so only the direct path (one edge) carries."""
    if not direct:
        fast = path_replay.run(model, source_ids, base_ids, rows, inputs, metric, top_k=top_k, progress=progress,
                               cancel=cancel, chunk=chunk)  # fmt: skip
        if fast is not None:
            return fast
    n_tokens = base_ids.shape[1]
    per_run = 1 if inputs is None else 2
    size = chunk or (
        max(1, len(rows)) if model.remote else max(1, rows_per_chunk(model, n_tokens) // per_run)
    )

    def one(part: list) -> Chunk:
        n = len(part)
        answer = slice(2, 2 + n) if inputs is None else slice(2 + n, 2 + 2 * n)
        return (*_trace_chunk(model, source_ids, base_ids, part, inputs, metric, top_k, direct), answer)

    return in_chunks(rows, size, one, top_k=top_k, progress=progress, cancel=cancel)


def _plan(
    model: Model, rows: Sequence[Sequence[Cell]], inputs: Sequence[Cell] | None, direct: bool = False
) -> list[tuple[int, str, list[tuple]]]:
    """The trace's steps in forward order: (layer, site, work). For a `head` step the work is the sender
    copies (row, position, head, "source", None) from the clean row 0; for a q/k/v step the receiver copies
    (F row, R row, position, head)."""
    n = len(rows)
    lowest = min(c.layer for row in rows for c in row)
    top = model.n_layers - 1 if inputs is None else max(c.layer for c in inputs) - 1
    steps: dict[tuple[int, int, str], list[tuple]] = {}
    for j in range(lowest, top + 1):
        steps[(j, site_record("head").order, "head")] = []
        if direct:  # the frozen runs' MLPs at their corrupt outputs too
            steps[(j, site_record("mlp_out").order, "mlp_out")] = []
    for i, row in enumerate(rows):
        for c in row:
            steps[(c.layer, site_record("head").order, "head")].append(
                (2 + i, c.position, c.head, "source", None)
            )
    for c in inputs or ():
        key = (c.layer, site_record(c.site).order, c.site)
        steps.setdefault(key, []).extend((2 + i, 2 + n + i, c.position, c.head) for i in range(n))
    return [(layer, name, work) for (layer, _, name), work in sorted(steps.items())]


def _trace_chunk(
    model: Model,
    source_ids: torch.Tensor,
    base_ids: torch.Tensor,
    rows: list,
    inputs: Sequence[Cell] | None,
    metric: Any,
    top_k: int,
    direct: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One forward over [clean, corrupt, F rows, R rows]; the metric of every batch row (and top-k)."""
    n = len(rows)
    n_rows = n if inputs is None else 2 * n
    batch = torch.cat([source_ids, base_ids] + [base_ids] * n_rows, dim=0)
    steps = _plan(model, rows, inputs, direct)
    refs = [model.site_ref(name, layer) for layer, name, _ in steps]
    envoys = [model.envoy(ref) for ref in refs]
    frozen = slice(2, 2 + n)
    nn = model.nn  # the body names only envoys, tensors and plain data: it is shipped to NDIF as it is
    top_ids = top_probs = None
    # Saved values must be bound to plain names in the body: that is what comes back (also from NDIF).
    with torch.no_grad(), nn.trace(batch, logits_to_keep=1, **model.trace_options()):
        live: dict[tuple[str, bool], torch.Tensor] = {}  # module tensors read so far (fused q|k|v: once)
        for (_, name, work), ref, envoy in zip(steps, refs, envoys, strict=True):
            where = (ref.path, ref.use_input)
            if where not in live:
                live[where] = read(envoy, ref.use_input)
            x = slot(live[where], ref.layout)
            if name == "head":
                x[frozen] = x[1]  # every F row's heads at their corrupt values ...
                apply_edits(x, work, 0, 1)  # ... but its senders' at their clean values
            elif name == "mlp_out":
                x[frozen] = x[1]  # direct paths only: the F rows' MLPs at their corrupt outputs
            else:
                for f_row, r_row, position, head in work:
                    apply_edits(x, [(r_row, position, head, "source", None)], f_row, 1)
        logits = nn.output.logits[:, -1].float()
        metric_values = metric(logits.clone(), logits[0].clone()).save()  # the metric may edit them
        if top_k:
            top = torch.softmax(logits, dim=-1).topk(top_k, dim=-1)
            top_ids = top.indices.save()
            top_probs = top.values.save()
    return metric_values, top_ids, top_probs
