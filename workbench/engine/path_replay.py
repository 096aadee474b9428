"""Path patching on a local model without a trace: the frozen runs of many sender sets, batched.

Step 1 of path patching runs the corrupt prompt with every attention head's output frozen at its corrupt
value except the senders', which get their clean value. With every head frozen, a block's attention output
is the output projection of a known tensor (the corrupt run's head outputs, the senders' slots clean), so
no query, key, value or softmax is computed: each block's attention module is replaced (in this thread, for
the duration of the call) by a stand-in that returns the corrupt run's attention output for every row, and
`o_proj(z)` with the row's sender slots set for the rows that have senders in that block. Norms and MLPs run
as the model's own blocks. A row joins the batch at its lowest sender's layer, from the corrupt run's cached
block input (`replay.baseline`): below it the row is the corrupt run.

- receivers = logits: step 1's last-position logits are the answer (its final stream is the receiver input).
- q/k/v receivers: step 1 runs to the highest receiver layer, where the real attention runs once with hooks
  that record the receivers' module slices; step 2 (`edited`) runs every row from the lowest receiver layer
  with those slices set (hooks), as the plain model's blocks.

Work per row: one output projection per sender layer, and norms + MLP from the sender's layer up (logits),
versus whole blocks for a head patch sweep. Exactness is checked, not assumed: the stand-in's attention
output for the corrupt run (`o_proj` of its head outputs, through the attention sub-block's output module
when that is not the attention module, e.g. Gemma-2's post-attention norm) must equal the cached run's, else
the caller traces. Applies where `replay.enabled_for` does (local CPU models of the checked families, no
user hooks, no grad).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..model import Model, _get_path
from .batching import BatchOutput, Collected, Progress, check_cancel, report
from .edits import Cell, Edit
from .fast import first
from .hooks import edit_hooks
from .kernels import slot
from .replay import (
    Baseline,
    NotReplayable,
    ReplayCache,
    call_block,
    enabled_for,
    final_logits,
    prepared,
    probe,
    rows_budget,
    session,
)
from .threads import mine, swapped_forwards


class _Stop(Exception):
    """Ends a frozen run once the highest receiver's inputs are recorded."""


@dataclass
class _Heads:
    """Per layer: the clean/corrupt head outputs [2, T, H, d] and the corrupt attention output [1, T, D]."""

    z: list[torch.Tensor]
    attn: list[torch.Tensor]


def enabled(model: Model, n_tokens: int) -> bool:
    """Whether the local path applies (else the caller traces)."""
    return enabled_for(model, "head", "set", n_tokens) and enabled_for(model, "q", "set", n_tokens)


def _heads(model: Model, base: Baseline, layers: range) -> _Heads | None:
    """The frozen values of `layers`, verified against the cached corrupt run (None: the model's attention
    output is not the output projection of its head outputs, so the stand-in would be wrong)."""
    z: list[Any] = [None] * model.n_layers
    attn: list[Any] = [None] * model.n_layers
    for j in layers:
        head_ref = model.site_ref("head", j)
        z[j] = slot(base.acts["head"][j], head_ref.layout)  # [2, T, H, d]
        out = model.module(head_ref)(base.acts["head"][j][1:2])  # o_proj(corrupt head outputs)
        attn[j] = out
        attn_ref, out_ref = model.site_ref("pattern", j), model.site_ref("attn_out", j)
        seen = out if out_ref.path == attn_ref.path else first(model.module(out_ref)(out))
        cached = base.acts["attn_out"][j][1:2]
        if seen.shape != cached.shape or not torch.allclose(seen, cached, rtol=1e-4, atol=1e-5):
            return None
    return _Heads(z, attn)


def _senders_at(rows: Sequence[Sequence[Cell]]) -> dict[int, list[tuple[int, Cell]]]:
    """{layer: [(row, sender cell), ...]}."""
    at: dict[int, list[tuple[int, Cell]]] = {}
    for i, row in enumerate(rows):
        for cell in row:
            at.setdefault(cell.layer, []).append((i, cell))
    return at


def _stand_in(
    model: Model,
    heads: _Heads,
    layer: int,
    order: list[int],
    senders: list[tuple[int, Cell]],
    original: Callable[..., Any],
    record: Callable[[], Any] | None,
    stop: bool,
    start: int,
) -> Callable[..., Any]:
    """The attention forward of block `layer` for a batch whose rows are `order` (row ids) and whose
    positions are start..: the frozen attention output per row. With `record` (the q/k/v hooks' context) the
    real attention also runs once, for its projections; `stop` then ends the run (the highest receiver
    layer)."""
    position = {row: i for i, row in enumerate(order)}
    o_proj = model.module(model.site_ref("head", layer))

    def forward(*args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        n = hidden.shape[0]
        out = heads.attn[layer][:, start:].expand(n, -1, -1).clone()
        if senders:
            sel = sorted({position[r] for r, _ in senders})
            z = heads.z[layer][1:2, start:].expand(len(sel), -1, -1, -1).clone()  # [m, T - start, H, d]
            where = {p: k for k, p in enumerate(sel)}
            clean = heads.z[layer][0, start:]
            for r, cell in senders:
                if cell.position is not None and cell.position < start:
                    continue  # a position the run does not carry (it cannot reach the last one)
                at = slice(None) if cell.position is None else cell.position - start
                z[where[position[r]], at, cell.head] = clean[at, cell.head]
            out[sel] = o_proj(z.reshape(len(sel), z.shape[1], -1)).to(out.dtype)
        if record is not None:
            with record():
                original(*args, **kwargs)
            if stop:
                raise _Stop
        return (out, None)

    return forward


def frozen(
    model: Model,
    base: Baseline,
    heads: _Heads,
    base_ids: torch.Tensor,
    rows: Sequence[Sequence[Cell]],
    inputs: Sequence[Cell] | None,
    cancel: threading.Event | None = None,
) -> torch.Tensor | list[list[torch.Tensor]]:
    """Step 1 for rows of senders (each row: its sender cells): last-position logits [n, V] when `inputs`
    is None (receivers = logits), else each row's recorded value of every q/k/v input cell ([T, d] or [d]).

    With every head frozen no information moves between positions (norms and MLPs act per position), so
    for the logits only the last position is carried through the blocks."""
    n_layers = model.n_layers
    start = base_ids.shape[1] - 1 if inputs is None else 0
    kwargs = probe(model, base, base_ids, 0)
    cache = ReplayCache(base, 0)
    blocks = _get_path(model.hf, model.arch.layers)
    entry = [min(c.layer for c in row) for row in rows]
    order_all = sorted(range(len(rows)), key=lambda i: (entry[i], i))
    by_layer = _senders_at(rows)
    top = n_layers - 1 if inputs is None else max(c.layer for c in inputs)
    recorded: list[list[Any]] = [[None] * len(inputs or ()) for _ in rows]
    h: torch.Tensor | None = None
    order: list[int] = []
    k = 0
    for j in range(entry[order_all[0]], top + 1):
        check_cancel(cancel)
        joining = []
        while k < len(order_all) and entry[order_all[k]] == j:
            joining.append(order_all[k])
            k += 1
        if joining:
            x = base.hidden[j][1:2, start:].expand(len(joining), -1, -1).clone()
            h = x if h is None else torch.cat([h, x])
            order += joining
        assert h is not None
        attn = model.module(model.site_ref("pattern", j))
        original = attn.forward
        wanted = [(i, c) for i, c in enumerate(inputs or ()) if c.layer == j]
        record = _recorder(model, wanted, order, recorded) if wanted else None
        stand_in = _stand_in(
            model, heads, j, list(order), by_layer.get(j, []), original, record, j == top, start
        )
        try:
            with swapped_forwards([(attn, stand_in)]):
                h = call_block(blocks[j], h, kwargs[j], cache)
        except _Stop:
            break
    if inputs is None:
        assert h is not None
        logits = final_logits(model, h[:, -1])
        back = torch.empty_like(logits)
        back[torch.tensor(order)] = logits
        return back
    return recorded


def _recorder(
    model: Model, wanted: list[tuple[int, Cell]], order: list[int], recorded: list[list[Any]]
) -> Callable[[], Any]:
    """A context manager factory: forward hooks that copy each wanted input cell of every row."""

    @contextlib.contextmanager
    def hooks():
        by_module: dict[tuple[str, bool], list[tuple[int, Cell]]] = {}
        for i, cell in wanted:
            ref = model.site_ref(cell.site, cell.layer)
            by_module.setdefault((ref.path, ref.use_input), []).append((i, cell))
        handles = []
        for group in by_module.values():
            ref = model.site_ref(group[0][1].site, group[0][1].layer)

            def grab(_mod: Any, _args: Any, out: Any, group: list = group) -> None:
                value = first(out)
                for i, cell in group:
                    view = slot(value, model.site_ref(cell.site, cell.layer).layout)
                    at = slice(None) if cell.position is None else cell.position
                    for b, row in enumerate(order):
                        recorded[row][i] = view[b, at, cell.head].detach().clone()

            handles.append(model.module(ref).register_forward_hook(mine(grab)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    return hooks


def edited(
    model: Model, base: Baseline, base_ids: torch.Tensor, rows: Sequence[Sequence[Edit]], cancel: Any = None
) -> torch.Tensor:
    """Step 2: last-position logits [n, V] of the corrupt run with each row's (set) edits at q/k/v sites;
    every row starts at the lowest edited layer from the corrupt run's block input."""
    entry = min(e.cell.layer for row in rows for e in row)
    kwargs = probe(model, base, base_ids, 0)
    cache = ReplayCache(base, 0)
    blocks = _get_path(model.hf, model.arch.layers)
    h = base.hidden[entry][1:2].expand(len(rows), -1, -1).clone()
    handles = edit_hooks(model, dict(enumerate(rows)))
    try:
        for j in range(entry, model.n_layers):
            check_cancel(cancel)
            h = call_block(blocks[j], h, kwargs[j], cache)
    finally:
        for handle in handles:
            handle.remove()
    return final_logits(model, h[:, -1])


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
) -> BatchOutput | None:
    """Path patching for each row of senders, to `inputs` (q/k/v cells; None = logits); None when the fast
    path does not apply (the caller traces)."""
    n_tokens = base_ids.shape[1]
    if (
        not rows
        or source_ids.shape != base_ids.shape
        or base_ids.shape[0] != 1
        or not enabled(model, n_tokens)
    ):
        return None
    with session(model) as version:
        base = prepared(model, source_ids, base_ids, version)
        if base is None:
            return None
        lowest = min(c.layer for row in rows for c in row)
        with torch.no_grad():
            heads = _heads(model, base, range(lowest, model.n_layers))
        if heads is None:
            return None
        size = chunk or rows_budget(model, n_tokens)
        n = len(rows)
        result = Collected(n, top_k)
        with torch.no_grad():
            for lo in range(0, n, size):
                check_cancel(cancel)
                part = list(rows[lo : lo + size])
                try:
                    out = frozen(model, base, heads, base_ids, part, inputs, cancel)
                    if inputs is None:
                        assert isinstance(out, torch.Tensor)
                        logits = out
                    else:
                        edits = [[Edit(c, v) for c, v in zip(inputs, values, strict=True)] for values in out]
                        logits = edited(model, base, base_ids, edits, cancel)
                except NotReplayable:
                    return None
                result.add(torch.arange(lo, lo + len(part)), logits, metric, base.logits[0])
                report(progress, lo + len(part), n)
            return result.output(metric, base.logits)
