"""The traced engine: many edited runs of one prompt in one nnsight forward pass (local or on NDIF).

Row 0 is the source run (the clean prompt when patching, the reference when resampling, the prompt itself
when ablating), row 1 the unedited base run, rows 2.. one run each, whose list of edits is applied jointly.
The trace body visits every (layer, site) some run edits, in forward order, reads the site's module once,
and applies the edits of every row there, while the source row's activation at that very place is already
computed: one forward pass serves a whole chunk of runs.

`run_rows` is the entry point of every op: it uses the replay engine (`replay.run`) when that applies and
this one otherwise. `run_examples` runs many examples' rows (a dataset op) in left-padded forwards: on NDIF
all of them in one request.
"""

from __future__ import annotations

import sys
import threading
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import SiteError
from ..model import Model
from . import replay
from .batching import BatchOutput, Chunk, Progress, check_cancel, in_chunks, report, rows_per_chunk
from .edits import Edit, lowered
from .kernels import apply_edits, copy_positions, eager_pattern, edit_pattern, read, slot
from .padding import example_attention_inputs, example_view, left_pad, pad_id
from .sites import site as site_record

Rows = Sequence[Sequence[Edit]]


def run_rows(
    model: Model,
    source_ids: torch.Tensor,
    base_ids: torch.Tensor,
    rows: Rows,
    metric: Any,
    *,
    top_k: int = 0,
    progress: Progress = None,
    cancel: threading.Event | None = None,
    chunk: int | None = None,
) -> BatchOutput:
    """The metric of every run in `rows` (each a list of edits applied jointly to the base prompt), chunked.

    Edits must be checked (`edits.checked_edits` / `Cell.checked`) for this prompt length."""
    for row in rows:
        for e in row:
            check_kind(model, e)
    fast = replay.run(model, source_ids, base_ids, rows, metric, top_k=top_k, progress=progress, cancel=cancel,
                      chunk=chunk)  # fmt: skip
    if fast is not None:
        return fast
    n_tokens = base_ids.shape[1]
    # Remote: the whole sweep is one request (the server has the memory); locally, chunks that fit.
    size = chunk or (max(1, len(rows)) if model.remote else rows_per_chunk(model, n_tokens))

    def one(part: list) -> Chunk:
        return (*_trace_chunk(model, source_ids, base_ids, part, metric, top_k), slice(2, None))

    return in_chunks(rows, size, one, top_k=top_k, progress=progress, cancel=cancel)


def run_stacked(
    model: Model,
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    rows: Sequence[Rows],
    metrics: Sequence[Any],
    *,
    top_k: int = 0,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> list[BatchOutput]:
    """`run_rows` for many prompt pairs (example i: `pairs[i]`, its runs `rows[i]`, its bound metric
    `metrics[i]`), one BatchOutput each. Examples of one length replay together (`replay.run_many`: their
    runs share block calls); the rest, and everything the replay does not serve, run one by one."""
    for ex_rows in rows:
        for row in ex_rows:
            for e in row:
                check_kind(model, e)
    n_examples = len(pairs)
    total = max(1, sum(len(r) for r in rows))
    by_length: dict[tuple, list[int]] = defaultdict(list)
    for i, (c, k) in enumerate(pairs):
        by_length[(tuple(c.shape), tuple(k.shape))].append(i)
    outs: list[Any] = [None] * n_examples
    done = finished = 0

    def share(runs: int, label: str) -> Progress:
        if progress is None:
            return None
        before = done

        def report(fraction: float, message: str) -> None:
            frac = (before + min(max(fraction, 0.0), 1.0) * runs) / total
            progress(min(1.0, frac), f"{finished}/{n_examples} examples ({label}{message})")

        return report

    for idx in by_length.values():
        runs = sum(len(rows[i]) for i in idx)
        fast = None
        if len(idx) > 1:
            fast = replay.run_many(model, [pairs[i] for i in idx], [rows[i] for i in idx],
                                   [metrics[i] for i in idx], top_k=top_k,
                                   progress=share(runs, f"{len(idx)} at once: "), cancel=cancel)  # fmt: skip
        if fast is not None:
            for i, out in zip(idx, fast, strict=True):
                outs[i] = out
            done += runs
            finished += len(idx)
            continue
        for i in idx:
            outs[i] = run_rows(model, *pairs[i], rows[i], metrics[i], top_k=top_k,
                               progress=share(len(rows[i]), ""), cancel=cancel)  # fmt: skip
            done += len(rows[i])
            finished += 1
    if progress is not None:
        progress(1.0, f"{n_examples}/{n_examples} examples")
    return outs


def check_kind(model: Model, e: Edit) -> None:
    """Edits the engines cannot apply: the mean of an attention pattern, patterns without an eager function."""
    rec = site_record(e.cell.site)
    if rec.pattern:
        if e.kind == "mean":
            raise SiteError(
                "A mean over positions of an attention pattern is not a pattern (its rows would not sum to 1 "
                "over the keys each query may see): ablate a pattern with method='zero' or 'resample'."
            )
        if eager_function(model) is None:
            raise SiteError(
                f"Pattern edits need the family's eager attention function, which {model.config.model_type!r} "
                "does not define; edit the head's output (site='head') instead."
            )


def eager_function(model: Model) -> Any:
    """The family's `eager_attention_forward` (recomputes probabilities from the attention inputs)."""
    attn = model.module(model.site_ref("pattern", 0))
    return getattr(sys.modules[type(attn).__module__], "eager_attention_forward", None)


def plan(rows: Rows, first_row: int) -> dict[tuple[int, int, str], list[tuple]]:
    """Every row's edits grouped by (layer, forward order, site), as lowered tuples for the trace body."""
    groups: dict[tuple[int, int, str], list[tuple]] = defaultdict(list)
    for i, row in enumerate(rows):
        for e in row:
            rec = site_record(e.cell.site)
            groups[(e.cell.layer, rec.order, rec.name)].append(lowered(e, first_row + i))
    return dict(sorted(groups.items()))


def _vectorised(group: list[tuple], per_head: bool) -> tuple | None:
    """Index tensors for `kernels.copy_positions` when every edit copies one position (and head)."""
    if any(kind != "source" or pos is None or (per_head and head is None) for _, pos, head, kind, _ in group):
        return None
    rows = torch.tensor([r for r, *_ in group])
    pos = torch.tensor([p for _, p, *_ in group])
    heads = torch.tensor([h for _, _, h, *_ in group]) if per_head else None
    return rows, pos, heads


def _trace_chunk(
    model: Model, source_ids: torch.Tensor, base_ids: torch.Tensor, rows: list, metric: Any, top_k: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One forward pass over [source, base, *rows]; returns the metric per row (and top-k if asked)."""
    batch = torch.cat([source_ids, base_ids] + [base_ids] * len(rows), dim=0)
    steps = plan(rows, first_row=2)
    refs = {key: model.site_ref(key[2], key[0]) for key in steps}
    envoys = {key: model.envoy(ref) for key, ref in refs.items()}
    fast = {key: _vectorised(group, site_record(key[2]).per_head) for key, group in steps.items()}
    eager_fn = eager_function(model) if any(ref.pattern for ref in refs.values()) else None
    for key, ref in refs.items():
        if ref.pattern:  # nnsight instruments a forward's source only before that forward starts: here, not
            _ = envoys[key].source  # midway through the attention module (after its q/k/v edits)
    nn = model.nn
    # Saved values must be bound to plain names in the body: that is what comes back (also from NDIF).
    top_ids = top_probs = None
    with torch.no_grad(), nn.trace(batch, logits_to_keep=1, **model.trace_options()):
        live: dict[tuple[str, bool], torch.Tensor] = {}  # module tensors read so far (fused q|k|v: once)
        for key, group in steps.items():
            ref = refs[key]
            if ref.pattern:
                call = envoys[key].source.attention_interface_1
                inputs = call.inputs  # before the output: nnsight serves values in forward order
                edit_pattern(call.output[0], inputs, group, eager_fn, 0)
                continue
            where = (ref.path, ref.use_input)
            if where not in live:
                live[where] = read(envoys[key], ref.use_input)
            x = slot(live[where], ref.layout)
            if fast[key] is not None:
                copy_positions(x, *fast[key])
            else:
                apply_edits(x, group, 0, 1)
        logits = nn.output.logits[:, -1].float()
        metric_values = metric(logits.clone(), logits[0].clone()).save()  # the metric may edit them
        if top_k:
            top = torch.softmax(logits, dim=-1).topk(top_k, dim=-1)
            top_ids = top.indices.save()
            top_probs = top.values.save()
    return metric_values, top_ids, top_probs


def collect(model: Model, ids: torch.Tensor, site: str, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """The activation of `site` at each of `layers` for a [B, T] batch: {layer: [B, T, W]} (W the whole
    module width for per-head sites; cut heads with `kernels.slot(x, model.site_ref(site, l).layout)`).
    Patterns: {layer: [B, H, T, T]}."""
    wanted = sorted(set(layers))
    refs = [model.site_ref(site, layer) for layer in wanted]
    envoys = [model.envoy(ref) for ref in refs]
    pattern = refs[0].pattern
    eager_fn = eager_function(model) if pattern else None
    with torch.no_grad(), model.nn.trace(ids, logits_to_keep=1, **model.trace_options()):
        acts = []
        for ref, envoy in zip(refs, envoys, strict=True):
            if pattern:
                acts.append(eager_pattern(envoy.source.attention_interface_1.inputs, eager_fn).clone())
            else:
                acts.append(slot(read(envoy, ref.use_input), ref.layout).clone())
        stacked = torch.stack(acts).save()  # [n_layers, B, T, ...]
    return {layer: stacked[i].detach() for i, layer in enumerate(wanted)}


# An example of a multi-example run: its source and base token ids ([1, T], equal lengths), its rows (each a
# list of edits applied jointly, checked for length T) and its metric (bound).
Example = tuple[torch.Tensor, torch.Tensor, Rows, Any]


def run_examples(
    model: Model,
    examples: Sequence[Example],
    *,
    top_k: int = 0,
    progress: Progress = None,
    cancel: threading.Event | None = None,
    chunk: int | None = None,
) -> list[BatchOutput]:
    """Every example's `run_rows` output, many examples per forward: each example's [source, base, *rows]
    rows of one left-padded batch (attention mask and explicit position ids; example e's position p at column
    pad[e] + p), each edit applied in its own example's coordinates, each example's metric on its own rows.

    A remote model sends ONE request for all examples; locally the rows go in chunks that fit in memory (an
    example with more rows than a chunk holds is split, its source and base rows repeated in each part)."""
    for _, _, rows, _ in examples:
        for row in rows:
            for e in row:
                check_kind(model, e)
    for i, (source, base, _, _) in enumerate(examples):
        if source.shape != base.shape or source.dim() != 2 or source.shape[0] != 1:
            raise SiteError(
                f"Example {i}: source and base ids must both be [1, T] of one length, got "
                f"{tuple(source.shape)} and {tuple(base.shape)}."
            )
    if not examples:
        return []
    width = max(s.shape[1] for s, _, _, _ in examples)
    total = sum(len(rows) for _, _, rows, _ in examples)
    size = chunk or (total + 2 * len(examples) if model.remote else rows_per_chunk(model, width))
    size = max(size, 3)
    # Pieces (example, its rows from lo to hi), each costing 2 + hi - lo batch rows, packed greedily in order.
    pieces = []
    for e, (_, _, rows, _) in enumerate(examples):
        step = size - 2
        pieces += [(e, lo, min(lo + step, len(rows))) for lo in range(0, max(len(rows), 1), step)]
    chunks: list[list[tuple[int, int, int]]] = [[]]
    used = 0
    for piece in pieces:
        cost = 2 + piece[2] - piece[1]
        if chunks[-1] and used + cost > size:
            chunks.append([])
            used = 0
        chunks[-1].append(piece)
        used += cost
    values: list[list[torch.Tensor]] = [[] for _ in examples]
    tops: list[list[torch.Tensor]] = [[] for _ in examples]
    probs: list[list[torch.Tensor]] = [[] for _ in examples]
    ends: list[tuple[float, float]] = [(float("nan"), float("nan"))] * len(examples)
    done = 0
    for part in chunks:
        check_cancel(cancel)
        got, top_i, top_p, starts = _trace_examples(model, examples, part, top_k)
        for (e, lo, hi), start in zip(part, starts, strict=True):
            ends[e] = (float(got[start]), float(got[start + 1]))
            values[e].append(got[start + 2 : start + 2 + hi - lo])
            if top_k:
                tops[e].append(top_i[start + 2 : start + 2 + hi - lo])
                probs[e].append(top_p[start + 2 : start + 2 + hi - lo])
            done += hi - lo
        report(progress, done, total)
    return [
        BatchOutput(
            values=torch.cat(values[e]),
            source=ends[e][0],
            base=ends[e][1],
            top_ids=torch.cat(tops[e]) if top_k else None,
            top_probs=torch.cat(probs[e]) if top_k else None,
        )
        for e in range(len(examples))
    ]


def _trace_examples(
    model: Model, examples: Sequence[Example], part: list[tuple[int, int, int]], top_k: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, list[int]]:
    """One forward over the pieces `part` ((example, first row, end row) each): the metric of every batch row
    (top-k if asked) and the batch row where each piece starts (its source row; base next, then its runs)."""
    ids: list[torch.Tensor] = []
    spans: list[tuple[int, int]] = []
    metrics: list[Any] = []
    for e, lo, hi in part:
        source, base, _, metric = examples[e]
        start = len(ids)
        ids += [source, base] + [base] * (hi - lo)
        spans.append((start, len(ids)))
        metrics.append(metric)
    batch = left_pad(ids, pad_id(model.tokenizer))
    pads = [batch.pad[a] for a, _ in spans]
    # Per (layer, site), in forward order: every piece's edits in its own coordinates (rows 0 source, 1 base).
    grouped: dict[tuple[int, int, str], list[tuple]] = defaultdict(list)
    for (e, lo, hi), (a, b), pad in zip(part, spans, pads, strict=True):
        for key, group in plan(list(examples[e][2][lo:hi]), first_row=2).items():
            grouped[key].append((a, b, pad, group, _vectorised(group, site_record(key[2]).per_head)))
    # The body reads plain lists only (the request carries a copy of them; never the Model).
    steps = []
    for key in sorted(grouped):
        ref = model.site_ref(key[2], key[0])
        steps.append((ref, model.envoy(ref), grouped[key]))
    eager_fn = eager_function(model) if any(ref.pattern for ref, _, _ in steps) else None
    for ref, envoy, _ in steps:
        if ref.pattern:  # instrument the forward's source before it starts (as in _trace_chunk)
            _ = envoy.source
    nn = model.nn
    top_ids = top_probs = None
    with (
        torch.no_grad(),
        nn.trace(
            batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            logits_to_keep=1,
            **model.trace_options(),
        ),
    ):
        live: dict[tuple[str, bool], torch.Tensor] = {}
        for ref, envoy, entries in steps:
            if ref.pattern:
                call = envoy.source.attention_interface_1
                inputs = call.inputs
                out = call.output[0]
                for a, b, pad, group, _ in entries:
                    edit_pattern(example_view(out, a, b, pad), example_attention_inputs(inputs, a, b, pad),
                                 group, eager_fn, 0)  # fmt: skip
                continue
            where = (ref.path, ref.use_input)
            if where not in live:
                live[where] = read(envoy, ref.use_input)
            x = slot(live[where], ref.layout)
            for a, b, pad, group, fast in entries:
                view = example_view(x, a, b, pad)
                if fast is not None:
                    copy_positions(view, *fast)
                else:
                    apply_edits(view, group, 0, 1)
        logits = nn.output.logits[:, -1].float()
        parts = []
        for (a, b), metric in zip(spans, metrics, strict=True):
            own = logits[a:b]
            parts.append(metric(own.clone(), own[0].clone()).float().reshape(-1))  # the metric may edit them
        metric_values = torch.cat(parts).save()
        if top_k:
            top = torch.softmax(logits, dim=-1).topk(top_k, dim=-1)
            top_ids = top.indices.save()
            top_probs = top.values.save()
    return metric_values, top_ids, top_probs, [a for a, _ in spans]
