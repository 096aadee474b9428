"""Runs over a noise-corrupted base: causal tracing's engine (Meng et al. 2022, ROME's `trace_with_patch`).

The base is the prompt with Gaussian noise added to the embedding module's output at the subject's positions,
once per sample (S noised rows); the source is the clean prompt (row 0). A run restores some states from the
clean run (its edits, all "source") and may freeze one site at the positions it restores, in every layer, at
its own noised value (ROME's severed paths). Its value is p(target) at the last position, the mean over the S
noised samples; `high` is p(target) on the clean prompt and `low` on the noised rows with nothing restored.

Two engines give the same numbers:
- the replay (local models the patch-sweep replay serves): one forward of the clean and noised rows caches
  every block input, the sites' module tensors and the keys and values; each run then starts at the first
  block its edits change, from its own sample's cached state, and computes only positions from the restored
  one on (earlier positions and layers cannot change), the runs of all samples and cells sharing block calls;
  a run that restores only positions before the subject is the noised run itself (p = low, nothing to run);
- the trace (everything else, remote included): [clean, S noised, S rows per run...] in one nnsight forward
  per chunk (on NDIF one request), the noise added in the trace body, the edits applied in forward order.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..model import Model, _get_path
from . import replay
from .batching import Progress, check_cancel, report, rows_per_chunk
from .edits import Edit
from .kernels import read, slot
from .padding import left_pad, pad_id
from .sites import site as site_record
from .threads import mine

# The sites a run may restore or freeze: the block output, and the two terms a block adds to the stream.
SITES = ("resid_post", "attn_out", "mlp_out")


@dataclass(frozen=True)
class Noise:
    """What corrupts the base: `noise` [S, n, D] added at positions span[0]..span[1]-1 of the embeddings,
    multiplied by `scale` x the standard deviation of the clean prompt's embeddings there when `scale` is
    set (ROME's "s3" rule: unit normal noise and scale 3.0), or added as given when `scale` is None."""

    noise: torch.Tensor
    span: tuple[int, int]
    scale: float | None = None

    @property
    def samples(self) -> int:
        return int(self.noise.shape[0])


@dataclass
class Traced:
    """p(target) of every run (mean over the samples), the clean and noised baselines, what was added."""

    values: torch.Tensor  # float32 [n_runs]
    high: float
    low: float
    target: int
    std: float  # the standard deviation the noise was scaled by (nan when it was given as is)
    noise: torch.Tensor  # [S, n, D]: the noise added


@dataclass(frozen=True)
class Fact:
    """One prompt's runs over its noised base (a dataset op traces many): token ids [1, T], its noise, its
    runs (lists of restoring edits) and its target (None: its clean top-1)."""

    ids: torch.Tensor
    noise: Noise
    rows: Sequence[Sequence[Edit]]
    target: int | None = None


# Batch rows one NDIF request carries at most (a dataset of facts may need several requests).
REMOTE_ROWS = 8192


def run(
    model: Model,
    ids: torch.Tensor,
    noise: Noise,
    rows: Sequence[Sequence[Edit]],
    *,
    target: int | None = None,
    freeze: str | None = None,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> Traced:
    """p(target) (None: the clean top-1) of each run in `rows` (edits restoring states from the clean run)
    over the noised base; `freeze` names a site frozen at its noised value at each run's restored positions
    in every layer. The replay when it applies, else the trace."""
    fast = _replayed(model, ids, noise, rows, target, freeze, progress, cancel)
    if fast is not None:
        return fast
    return _traced(model, [Fact(ids, noise, rows, target)], freeze, progress, cancel)[0]


def run_many(
    model: Model,
    facts: Sequence[Fact],
    *,
    freeze: str | None = None,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> list[Traced]:
    """`run` for many prompts: locally one after another (each on the replay when it applies); on NDIF the
    facts' rows go in left-padded batches, all in one request up to REMOTE_ROWS batch rows."""
    if model.remote:
        return _traced(model, facts, freeze, progress, cancel)
    out = []
    for i, f in enumerate(facts):
        share = _share(progress, i, len(facts))
        out.append(
            run(model, f.ids, f.noise, f.rows, target=f.target, freeze=freeze, progress=share, cancel=cancel)
        )
    return out


def _share(progress: Progress, i: int, n: int) -> Progress:
    """Fact i's share of a many-fact run's progress."""
    if progress is None or n == 1:
        return progress

    def report(fraction: float, message: str) -> None:
        progress((i + min(max(fraction, 0.0), 1.0)) / n, f"fact {i + 1}/{n} ({message})")

    return report


def subject_std(model: Model, facts: Sequence[tuple[torch.Tensor, tuple[int, int]]]) -> float:
    """The std of the embedding vectors of every fact's subject tokens, pooled (ROME's noise scale): one
    traced forward of the subjects' token ids laid end to end (the embeddings do not depend on position)."""
    ids = torch.cat([ids[0, a:b] for ids, (a, b) in facts])[None]
    embed = model.envoy(model.site_ref("embed", 0))
    nn = model.nn
    with torch.no_grad(), nn.trace(ids, logits_to_keep=1, **model.trace_options()):
        std = read(embed, False)[0].float().std().save()
    return float(std)


def frozen(row: Sequence[Edit], freeze: str | None, n_layers: int) -> list[tuple[int, int]]:
    """(layer, position) of every cell a run freezes: `freeze`'s site at its restored positions, all layers
    except where the run restores that very site."""
    if freeze is None:
        return []
    restored = {(e.cell.layer, e.cell.position) for e in row if e.cell.site == freeze}
    positions = sorted({e.cell.position for e in row if e.cell.position is not None})
    return [(j, p) for p in positions for j in range(n_layers) if (j, p) not in restored]


# ------------------------------------------------------------------------------------------- the trace
# A piece of a chunk: (fact index, first run, end run).
Piece = tuple[int, int, int]


def _traced(
    model: Model,
    facts: Sequence[Fact],
    freeze: str | None,
    progress: Progress,
    cancel: threading.Event | None,
) -> list[Traced]:
    """Every fact's runs on the traced path, packed into forwards of at most a chunk's batch rows (remote:
    REMOTE_ROWS per request), each piece of a fact carrying its clean and noised rows."""
    width = max(f.ids.shape[1] for f in facts)
    budget = REMOTE_ROWS if model.remote else rows_per_chunk(model, width)
    pieces: list[Piece] = []
    for k, f in enumerate(facts):
        step = max(1, budget // f.noise.samples - 1)
        pieces += [(k, lo, min(lo + step, len(f.rows))) for lo in range(0, max(1, len(f.rows)), step)]
    chunks: list[list[Piece]] = [[]]
    used = 0
    for piece in pieces:
        cost = (1 + piece[2] - piece[1]) * facts[piece[0]].noise.samples + 1
        if chunks[-1] and used + cost > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(piece)
        used += cost
    values: list[list[torch.Tensor]] = [[] for _ in facts]
    ends: list[tuple[float, float, int, float]] = [(float("nan"),) * 3 + (float("nan"),)] * len(facts)  # type: ignore[list-item]
    total = max(1, sum(len(f.rows) for f in facts))
    done = 0
    for part in chunks:
        check_cancel(cancel)
        for (k, lo, hi), (got, end) in zip(part, _trace_chunk(model, facts, part, freeze), strict=True):
            values[k].append(got)
            ends[k] = end
            done += hi - lo
        report(progress, done, total)
    out = []
    for k, f in enumerate(facts):
        high, low, tgt, std = ends[k]
        scale = f.noise.scale
        out.append(
            Traced(
                torch.cat(values[k]).float() if values[k] else torch.zeros(0),
                high,
                low,
                int(tgt),
                std if scale is not None else float("nan"),
                f.noise.noise.float() * (scale * std if scale is not None else 1.0),
            )
        )
    return out


def _trace_chunk(
    model: Model, facts: Sequence[Fact], part: list[Piece], freeze: str | None
) -> list[tuple[torch.Tensor, tuple[float, float, int, float]]]:
    """One forward of every piece's [clean, S noised, S rows per run] (left-padded when there are several):
    per piece, p(target) of each of its runs (mean over the samples) and (high, low, target, std)."""
    ids: list[torch.Tensor] = []
    layout = []  # per piece: (first batch row, batch rows, samples)
    for k, lo, hi in part:
        f = facts[k]
        n_rows = (1 + hi - lo) * f.noise.samples + 1
        layout.append((len(ids), n_rows, f.noise.samples))
        ids += [f.ids] * n_rows
    padded = left_pad(ids, pad_id(model.tokenizer)) if len(part) > 1 else None
    pads = [0] * len(part) if padded is None else [padded.pad[o] for o, _, _ in layout]
    # (layer, forward order, site) -> (destination rows, source rows, columns): restores copy from the clean
    # row, freezes from the run's own sample's noised row.
    moves: dict[tuple[int, int, str], tuple[list[int], list[int], list[int]]] = defaultdict(
        lambda: ([], [], [])
    )
    specs = []  # per piece, for the noise: (first row, rows, first subject column, end column, noise, scale)
    wants = []
    for (k, lo, hi), (o, n_rows, n_samples), pad in zip(part, layout, pads, strict=True):
        f = facts[k]
        a, b = f.noise.span
        specs.append((o, n_rows, pad + a, pad + b, f.noise.noise.float(), f.noise.scale))
        wants.append(-1 if f.target is None else int(f.target))
        for r, row in enumerate(f.rows[lo:hi]):
            first = o + 1 + n_samples * (1 + r)
            places = [(e.cell.layer, e.cell.site, e.cell.position, False) for e in row]
            places += [(j, freeze, p, True) for j, p in frozen(row, freeze, model.n_layers)]
            for layer, site, position, own in places:
                dst, src, col = moves[(layer, site_record(site).order, site)]
                for s in range(n_samples):
                    dst.append(first + s)
                    src.append(o + 1 + s if own else o)
                    col.append(pad + position)
    steps = []
    for key in sorted(moves):
        ref = model.site_ref(key[2], key[0])
        dst, src, col = moves[key]
        steps.append((model.envoy(ref), ref.use_input, ref.layout, torch.tensor(dst), torch.tensor(src),
                      torch.tensor(col)))  # fmt: skip
    embed = model.envoy(model.site_ref("embed", 0))
    clean_rows = torch.tensor([o for o, _, _ in layout])
    want = torch.tensor(wants)
    counts = torch.tensor([n for _, n, _ in layout])
    inputs = (
        {"input_ids": torch.cat(ids)}
        if padded is None
        else {"input_ids": padded.input_ids, "attention_mask": padded.attention_mask,
              "position_ids": padded.position_ids}
    )  # fmt: skip
    nn = model.nn
    # The body reads plain values only (a request carries a copy of them; never the Model).
    with torch.no_grad(), nn.trace(**inputs, logits_to_keep=1, **model.trace_options()):
        emb = read(embed, False)
        stds = []
        for o, n_rows, a, b, z, scale in specs:
            if scale is None:
                stds.append(torch.full((), float("nan")))
                added = z.to(emb.dtype)
            else:
                std = emb[o, a:b].float().std()
                stds.append(std)
                added = (z * (scale * std)).to(emb.dtype)
            emb[o + 1 : o + n_rows, a:b] += added.repeat((n_rows - 1) // z.shape[0], 1, 1)
        for envoy, use_input, layout_, dst, src, col in steps:
            x = slot(read(envoy, use_input), layout_)
            x[dst, col] = x[src, col]
        logits = nn.output.logits[:, -1].float()
        chosen = torch.where(want < 0, logits[clean_rows].argmax(dim=-1), want)
        rows_target = chosen.repeat_interleave(counts)
        picked = logits.gather(1, rows_target[:, None])[:, 0]
        probs = torch.exp(picked - torch.logsumexp(logits, dim=-1)).save()
        targets = chosen.save()
        std_used = torch.stack(stds).save()
    probs = probs.detach().float()
    out = []
    for i, ((_, lo, hi), (o, _, n_samples)) in enumerate(zip(part, layout, strict=True)):
        runs = probs[o + 1 + n_samples : o + 1 + n_samples * (1 + hi - lo)].reshape(hi - lo, n_samples)
        high, low = float(probs[o]), float(probs[o + 1 : o + 1 + n_samples].mean())
        out.append((runs.mean(dim=1), (high, low, int(targets[i]), float(std_used[i]))))
    return out


# ------------------------------------------------------------------------------------------- the replay
@dataclass
class _Row:
    """One (run, sample) row of the replay: it joins the batch at block `entry`, where `at_entry` edits the
    stream ((position, value, added) each); `hooks[(site, layer)]` are the (position, value) it sets there."""

    run: int
    sample: int
    entry: int
    at_entry: list[tuple[int, torch.Tensor, bool]]
    hooks: dict[tuple[str, int], list[tuple[int, torch.Tensor]]]


def _replayed(
    model: Model,
    ids: torch.Tensor,
    noise: Noise,
    rows: Sequence[Sequence[Edit]],
    target: int | None,
    freeze: str | None,
    progress: Progress,
    cancel: threading.Event | None,
) -> Traced | None:
    n_tokens, n_samples = ids.shape[1], noise.samples
    sites = {e.cell.site for row in rows for e in row} | ({freeze} if freeze else set())
    if not sites <= set(SITES) or any(e.cell.position is None for row in rows for e in row):
        return None
    if not all(replay.enabled_for(model, s, "source", n_tokens) for s in sites):
        return None
    kept = [s for s in replay.replay_sites(model) if s in sites]
    with replay.session(model):
        try:
            with torch.no_grad():
                run_, std = _noised_forward(model, ids, noise, kept)
                if not run_.complete:
                    return None
                bases = [run_.baseline([0, 1 + s], 1 + s) for s in range(n_samples)]
                stack = replay.Stack(bases, ids.expand(n_samples, -1))
                stack.probe(model, 0)
        except replay.NotReplayable:
            return None
        probs_all = torch.softmax(run_.logits, dim=-1)
        tgt = int(probs_all[0].argmax()) if target is None else int(target)
        sums = torch.zeros(len(rows), dtype=torch.float64)
        groups: dict[int, list[_Row]] = defaultdict(list)
        for r, row in enumerate(rows):
            if max(e.cell.position for e in row) < noise.span[0]:  # type: ignore[type-var]
                # Before the subject the clean and noised runs are one (causal attention): nothing to restore.
                sums[r] = probs_all[1:, tgt].double().sum()
                continue
            start = min(e.cell.position for e in row)  # type: ignore[type-var]
            for s in range(n_samples):
                groups[start].append(_make_row(model, bases[s], r, s, row, freeze, start))
        size = replay.rows_budget(model, n_tokens)
        done, total = 0, sum(len(g) for g in groups.values())
        with torch.no_grad():
            for start in sorted(groups):
                group = sorted(groups[start], key=lambda x: (x.entry, x.run, x.sample))
                per_call = min(size, max(1, replay.STACK_TOKENS // (n_tokens - start)))
                for lo in range(0, len(group), per_call):
                    check_cancel(cancel)
                    part = group[lo : lo + per_call]
                    try:
                        logits = _run_group(model, stack, part, start, cancel)
                    except replay.NotReplayable:
                        return None
                    p = torch.softmax(logits, dim=-1)[:, tgt].double()
                    sums.index_add_(0, torch.tensor([x.run for x in part]), p)
                    done += len(part)
                    report(progress, done, total)
    scale = noise.scale
    return Traced(
        (sums / n_samples).float(),
        float(probs_all[0, tgt]),
        float(probs_all[1:, tgt].mean()),
        tgt,
        std if scale is not None else float("nan"),
        noise.noise.float() * (scale * std if scale is not None else 1.0),
    )


def _noised_forward(
    model: Model, ids: torch.Tensor, noise: Noise, sites: list[str]
) -> tuple[replay.Captured, float]:
    """One forward of [clean, S noised rows] with everything the replay reads, and the std used."""
    a, b = noise.span
    used: list[float] = []

    def add_noise(_mod: Any, _args: Any, out: Any) -> None:
        emb = out[0] if isinstance(out, tuple) else out
        if noise.scale is None:
            added = noise.noise
        else:
            std = emb[0, a:b].float().std()
            used.append(float(std))
            added = noise.noise.float() * (noise.scale * std)
        emb[1:, a:b] += added.to(emb.dtype)

    embed = model.module(model.site_ref("embed", 0))
    batch = ids.expand(1 + noise.samples, -1).contiguous()
    captured = replay.capture(model, batch, sites, hooks=[(embed, add_noise)])
    return captured, used[0] if used else float("nan")


def _make_row(
    model: Model,
    base: replay.Baseline,
    run: int,
    sample: int,
    row: Sequence[Edit],
    freeze: str | None,
    start: int,
) -> _Row:
    """Sample `sample`'s row of run `run`: restores from the clean row (0) of its baseline, freezes from its
    noised row (1). It joins at the first block its edits change (block l + 1 for a block output or an MLP
    output of block l, which are the stream after block l; block l for an attention output)."""
    places = [(e.cell.site, e.cell.layer, e.cell.position, 0) for e in row]
    places += [(freeze, j, p, 1) for j, p in frozen(row, freeze, model.n_layers)]

    def value(site: str, layer: int, position: int, which: int) -> torch.Tensor:
        if site == "resid_post":
            return base.hidden[layer + 1][which, position]
        return slot(base.acts[site][layer], model.site_ref(site, layer).layout)[which, position]

    def entry_of(site: str, layer: int) -> int:
        return layer + 1 if site_record(site).after_block else layer

    restored = [p for p in places if p[3] == 0]
    entry = min(entry_of(site, layer) for site, layer, _, _ in restored)
    at_entry: list[tuple[int, torch.Tensor, bool]] = []
    hooks: dict[tuple[str, int], list[tuple[int, torch.Tensor]]] = defaultdict(list)
    for site, layer, position, which in places:
        if entry_of(site, layer) < entry or (site == "attn_out" and layer < entry):
            continue  # below where the row joins nothing has moved: freezing there changes nothing
        rel = position - start
        new = value(site, layer, position, which)
        if site == "resid_post" and layer + 1 == entry:
            at_entry.append((rel, new, False))
        elif site == "mlp_out" and layer + 1 == entry:  # the stream after block `layer` holds its noised term
            old = value(site, layer, position, 1)
            at_entry.append((rel, (new - old) * model.residual_scale(layer), True))
        elif site == "resid_post":
            raise replay.NotReplayable("a run restores block outputs at two layers")
        else:
            hooks[(site, layer)].append((rel, new))
    return _Row(run, sample, entry, at_entry, dict(hooks))


def _run_group(
    model: Model, stack: replay.Stack, rows: list[_Row], start: int, cancel: threading.Event | None
) -> torch.Tensor:
    """Last-position logits [n, V] of rows that start at position `start` (sorted by entry block)."""
    n_layers = model.n_layers
    kwargs = stack.probe(model, start)
    cache = replay.ReplayCache(stack, start)
    blocks = _get_path(model.hf, model.arch.layers)
    h: torch.Tensor | None = None
    members: list[_Row] = []
    i = 0

    def join(entry: int) -> None:
        nonlocal h, i
        joining = []
        while i < len(rows) and rows[i].entry == entry:
            joining.append(rows[i])
            i += 1
        if not joining:
            return
        x = stack.hidden(entry, [r.sample for r in joining], start)
        for k, r in enumerate(joining):
            for rel, v, added in r.at_entry:
                if added:
                    x[k, rel] += v.to(x.dtype)
                else:
                    x[k, rel] = v.to(x.dtype)
        h = x if h is None else torch.cat([h, x])
        members.extend(joining)
        cache.rows = torch.tensor([r.sample for r in members]) if stack.n > 1 else None

    for j in range(rows[0].entry, n_layers):
        check_cancel(cancel)
        join(j)
        assert h is not None
        handles = []
        for site in SITES[1:]:
            edits = [(k, rel, v) for k, r in enumerate(members) for rel, v in r.hooks.get((site, j), [])]
            if edits:
                handles.append(_hook(model, site, j, edits))
        try:
            h = replay.call_block(blocks[j], h, kwargs[j], cache)
        finally:
            for handle in handles:
                handle.remove()
    join(n_layers)  # rows whose only change is the last block's output
    assert h is not None and i == len(rows)
    return replay.final_logits(model, h[:, -1])


def _hook(model: Model, site: str, layer: int, edits: list[tuple[int, int, torch.Tensor]]) -> Any:
    """A hook on `site`'s module at `layer` setting x[row, position] = value for each edit (this thread)."""
    ref = model.site_ref(site, layer)
    rows = torch.tensor([k for k, _, _ in edits])
    pos = torch.tensor([p for _, p, _ in edits])
    vals = torch.stack([v for _, _, v in edits])

    def put(x: torch.Tensor) -> None:
        x = slot(x, ref.layout)
        x[rows, pos] = vals.to(x.dtype)

    mod = model.module(ref)
    if ref.use_input:
        fn = mine(lambda _mod, args, kwargs: put(args[0] if args else next(iter(kwargs.values()))))
        return mod.register_forward_pre_hook(fn, with_kwargs=True)
    return mod.register_forward_hook(
        mine(lambda _mod, _args, out: put(out[0] if isinstance(out, tuple) else out))
    )


__all__ = ["REMOTE_ROWS", "SITES", "Fact", "Noise", "Traced", "frozen", "run", "run_many", "subject_std"]
