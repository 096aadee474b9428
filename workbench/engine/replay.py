"""Exact patch sweeps that compute only what a patch can change (local models).

A patch at (layer l, position p) leaves every layer below l and (causal attention) every position before p
exactly as in the base (corrupt) run. So each patched run here starts at block l, from the base run's cached
input to that block, and runs only positions p.. with the base run's keys and values for positions < p.
Rows that start at different layers share one call per block: at block j the batch holds every row that
started at or below j (rows join as the loop climbs). Only the last position is unembedded.

Work done: sum over cells of (L - l)(T - p) token-block evaluations, which is the minimum any exact method
needs (mlp_out and resid_post patches start one block higher, since their block's output is a sum the
patch only adds to). The plain batched path (`traced._trace_chunk`) does L * T for every cell.

How the blocks are driven: one cheap "probe" forward of the model per start position p, with every block's
forward replaced by a recorder, captures the keyword arguments the model passes its blocks for a run of
positions p.. after a cache of length p (masks, rotary embeddings, position ids). The blocks are then called
directly with those arguments, a stand-in cache that serves the base run's keys and values (expanded over
the batch), and the batch of patched hidden states. Edits inside a block (attn_out, head) are forward
hooks on the site's module that touch only the rows joining at that block.

The base/source runs (block inputs, site activations, keys and values, final logits) are cached per
(model, prompt pair) under a `ModelKey` (a content hash of every parameter and buffer plus the modules,
forwards and hooks), so a single click costs about one partial forward and no edit of the model, through
`.data` or otherwise, is missed. Everything the sweep changes on modules (forwards, hooks) acts only in the
calling thread (`_threads`), under `model.lock`; metrics get copies of cached logits.

The runs use oneDNN's float32 linear layers (`onednn`, about 2x MKL's on AMD CPUs).

A run may edit several positions of one site and layer (a role's tokens, align="roles"): it starts at the
first of them. Several prompt pairs of one length replay together (`run_many`, a dataset's examples): one
batched forward gives every example's baseline, the rows of all examples that start at one position share
each block call (each row gets its own example's block input and its own keys and values of positions <
start), and the probe, run once per start over the whole stack, must find the same block arguments for
every example (else NotReplayable and the examples run one by one).

Applies to: local models of the families whose `Arch.replay` is "" (transformers 5 decoder blocks that
return the hidden state and take the cache as a keyword; each is tested exact on its tiny model) with no
user hooks (`has_hooks`), no grad. Sliding-window layers (Gemma-3, Mistral) are exact too: the runs keep
every position in their caches (`_full_cache`) and the model's own masks apply the window.
Everything else (remote models, families that opt out) returns None and the caller uses the general path.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..model import Model, _get_path
from .batching import Collected, check_cancel, report, rows_per_chunk
from .fast import allowed, disabled, first, has_hooks
from .kernels import finish_logits, slot
from .model_key import ModelKey, model_key, structure_key
from .onednn import onednn_linears
from .sites import SITE_TABLE
from .sites import site as site_record
from .threads import mine, swapped_forwards

# Sites the replay edits: the stream itself between blocks, or a module tensor inside a block (a hook).
_SITES = tuple(name for name, rec in SITE_TABLE.items() if rec.replay)  # what `Site.replay` says it edits
_KINDS = ("source", "zero", "mean", "set", "add")

_BASELINES: weakref.WeakKeyDictionary[Model, OrderedDict] = weakref.WeakKeyDictionary()
_MAX_BASELINES = 2  # prompt pairs kept per model


def enabled_for(model: Model, site: str, kind: str, n_tokens: int) -> bool:
    """Whether the fast path applies (else the caller falls back to the general path), for prompts of any
    length `n_tokens`: a sliding window shorter than the prompt is replayed exactly too."""
    if not allowed(model):
        return False
    if model.arch.replay or site not in _SITES or kind not in _KINDS:
        return False
    return not site_record(site).sequential_only or model._sequential()


# ------------------------------------------------------------------------------------------- baselines
@dataclass
class Baseline:
    """The source (row 0) and base (row 1) runs of one prompt pair."""

    hidden: list[
        torch.Tensor
    ]  # L + 1 entries [2, T, D]: input of block j; entry L is the last block's output
    acts: dict[str, list[torch.Tensor]]  # in-block sites and mlp_out: L module tensors [2, T, W] per site
    keys: list[torch.Tensor]  # base run's keys per block [1, kv_heads, T, d_head]
    values: list[torch.Tensor]
    logits: torch.Tensor  # [2, V] last position, float32
    probes: dict[int, list[tuple[tuple, dict[str, Any]]]] = field(default_factory=dict)  # start -> block args


def replay_sites(model: Model, only: str | None = None) -> list[str]:
    """The module tensors a baseline keeps: in-block sites and terms added after the block (all of them, or
    only site `only`'s, which a stack of examples needs)."""
    return [
        name
        for name, rec in SITE_TABLE.items()
        if rec.replay in ("hook", "added")
        and (not rec.sequential_only or model._sequential())
        and (only is None or name == only)
    ]


def baseline(model: Model, source_ids: torch.Tensor, base_ids: torch.Tensor, version: ModelKey) -> Baseline:
    """The cached source/base runs of this pair for the model as `version` describes it (computed with one
    batch-2 forward on a miss; stored only when the model's structure did not change meanwhile)."""
    key = (tuple(source_ids.flatten().tolist()), tuple(base_ids.flatten().tolist()))
    per_model = _BASELINES.setdefault(model, OrderedDict())
    hit = per_model.get(key)
    if hit is not None and hit[0] == version:
        per_model.move_to_end(key)
        return hit[1]
    bases, complete = forward_baselines(model, source_ids, base_ids, replay_sites(model))
    base = bases[0]
    if not complete or structure_key(model) != version.structure:
        return base  # something else ran or changed the model meanwhile: use it once, never cache it
    per_model[key] = (version, base)
    while len(per_model) > _MAX_BASELINES:
        per_model.popitem(last=False)
    return base


def forward_baselines(
    model: Model, source_ids: torch.Tensor, base_ids: torch.Tensor, sites: Sequence[str]
) -> tuple[list[Baseline], bool]:
    """The baselines of N equal-length pairs (`source_ids`, `base_ids` [N, T]) from one forward of the 2N
    rows (source i, base i, ...), keeping the module tensors of `sites`; and whether every block ran."""
    n = base_ids.shape[0]
    run = capture(model, torch.stack([source_ids, base_ids], dim=1).reshape(2 * n, -1), sites)
    bases = []
    for i in range(n):
        two = slice(2 * i, 2 * i + 2)
        bases.append(run.baseline(two, 2 * i + 1))
    return bases, run.complete


@dataclass
class Captured:
    """One forward of a batch with everything a replay reads: block inputs, module tensors, keys and
    values, last-position logits (each with the batch's rows)."""

    hidden: list[Any]  # L + 1 entries [B, T, D] (None where a block did not run)
    acts: dict[str, list[torch.Tensor]]
    keys: list[torch.Tensor]  # [B, kv_heads, T, d_head] per block
    values: list[torch.Tensor]
    logits: torch.Tensor  # [B, V] float32
    complete: bool  # every block ran

    def baseline(self, rows: Any, base_row: int) -> Baseline:
        """The Baseline of source/base rows `rows` (two rows: source first), base row `base_row`'s cache."""
        one = slice(base_row, base_row + 1)
        return Baseline(
            [None if h is None else h[rows] for h in self.hidden],
            {name: [a[rows] for a in v] for name, v in self.acts.items()},
            [k[one] for k in self.keys],
            [v[one] for v in self.values],
            self.logits[rows],
        )


def capture(
    model: Model, batch: torch.Tensor, sites: Sequence[str], hooks: Sequence[tuple[Any, Any]] = ()
) -> Captured:
    """One forward of `batch` [B, T] keeping what a replay reads (the module tensors of `sites`); `hooks`
    are (module, forward hook) pairs active during it (this thread only), e.g. noise on the embeddings."""
    n_layers = model.n_layers
    hidden: list[Any] = [None] * (n_layers + 1)
    acts: dict[str, list[Any]] = {x: [None] * n_layers for x in sites}
    handles = []

    def grab_in(j: int):
        def hook(_mod, args, kwargs):
            hidden[j] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

        return hook

    def grab(names: list[str], j: int, use_input: bool):
        def keep(x: torch.Tensor) -> None:
            x = x.detach().clone()
            for name in names:
                acts[name][j] = x

        if use_input:
            return lambda _mod, args, kwargs: keep(args[0] if args else next(iter(kwargs.values())))
        return lambda _mod, _args, out: keep(first(out))

    def grab_out(store: list, j: int):
        def hook(_mod, _args, out):
            store[j] = first(out).detach().clone()

        return hook

    blocks = _get_path(model.hf, model.arch.layers)
    try:
        for mod, fn in hooks:
            handles.append(mod.register_forward_hook(mine(fn)))
        for j in range(n_layers):
            handles.append(blocks[j].register_forward_pre_hook(mine(grab_in(j)), with_kwargs=True))
            where: dict[tuple[str, bool], list[str]] = {}
            for name in sites:
                ref = model.site_ref(name, j)
                where.setdefault((ref.path, ref.use_input), []).append(name)
            for (_path, use_input), names in where.items():
                mod = model.module(model.site_ref(names[0], j))
                fn = mine(grab(names, j, use_input))
                handles.append(
                    mod.register_forward_pre_hook(fn, with_kwargs=True)
                    if use_input
                    else mod.register_forward_hook(fn)
                )
        handles.append(blocks[n_layers - 1].register_forward_hook(mine(grab_out(hidden, n_layers))))
        with torch.no_grad():
            out = model.hf(batch, past_key_values=_full_cache(), use_cache=True, logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    if not all(a is not None for v in acts.values() for a in v):
        raise NotReplayable("a site module did not run in the baseline forward")
    cache = getattr(out.past_key_values, "self_attention_cache", out.past_key_values)
    return Captured(
        hidden,
        acts,  # type: ignore[arg-type]
        [cache.layers[j].keys.detach() for j in range(n_layers)],
        [cache.layers[j].values.detach() for j in range(n_layers)],
        out.logits[:, -1].float(),
        all(h is not None for h in hidden),
    )


def _full_cache() -> Any:
    """A cache that keeps every position in every layer, sliding-window layers included: the replay serves
    the base run's keys and values of all earlier positions, and the model's masks then apply the window."""
    from transformers import DynamicCache

    return DynamicCache()


class NotReplayable(Exception):
    """The probe found block arguments the replay cannot reproduce: use the general path."""


CACHE = object()  # stands for the model's cache object in recorded block arguments


def _record(
    model: Model,
    base_ids: torch.Tensor,
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    start: int,
) -> list[tuple[tuple, dict[str, Any]]]:
    """The block arguments of a forward of `base_ids[:, start:]` after a cache of the given keys/values."""
    from transformers import Cache

    blocks = _get_path(model.hf, model.arch.layers)
    recorded: list[tuple[tuple, dict[str, Any]]] = []

    def recorder(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        args = tuple(CACHE if isinstance(v, Cache) else v for v in args)
        kwargs = {k: CACHE if isinstance(v, Cache) else v for k, v in kwargs.items()}
        recorded.append((args, kwargs))
        return hidden_states

    cache = _full_cache()
    if start:
        for j in range(model.n_layers):
            cache.update(keys[j][..., :start, :], values[j][..., :start, :], j)
    with torch.no_grad(), swapped_forwards([(block, recorder) for block in blocks]):
        model.hf(base_ids[:, start:], past_key_values=cache, use_cache=True, logits_to_keep=1)
    if len(recorded) != model.n_layers:
        raise NotReplayable(f"recorded {len(recorded)} block calls for {model.n_layers} blocks")
    return recorded


def probe(model: Model, base: Baseline, base_ids: torch.Tensor, start: int) -> list[tuple[tuple, dict]]:
    """The arguments the model passes each block for positions start.. after a cache of `start` positions."""
    if start in base.probes:
        return base.probes[start]
    recorded = _record(model, base_ids, base.keys, base.values, start)
    for args, kw in recorded:
        for v in (*args, *kw.values()):
            tensors = v if isinstance(v, tuple | list) else (v,)
            for t in tensors:
                if isinstance(t, torch.Tensor) and t.dim() >= 3 and t.shape[0] != 1:
                    raise NotReplayable("a block argument has a batch dimension")
    base.probes[start] = recorded
    return recorded


def _one_row(v: Any, n: int) -> Any:
    """A block argument recorded for a stack of n examples as the one-row argument every example shares:
    tensors with a batch dimension must hold the same row n times (else the examples differ: NotReplayable)."""
    if isinstance(v, tuple | list):
        return type(v)(_one_row(x, n) for x in v)
    if not isinstance(v, torch.Tensor) or v.dim() < 2 or v.shape[0] == 1:
        return v
    if v.shape[0] != n or not bool((v == v[:1]).all()):
        raise NotReplayable("a block argument differs between the examples of a stack")
    return v[:1]


class Stack:
    """Equal-length prompt pairs replayed together: each example's baseline, and their base rows stacked
    (block inputs, keys and values) for the rows of many examples in one block call. One pair is a stack of
    one, served exactly as before (its base rows expanded over the batch)."""

    def __init__(self, bases: Sequence[Baseline], base_ids: torch.Tensor) -> None:
        self.bases, self.base_ids, self.n = list(bases), base_ids, len(bases)
        self._hidden: dict[int, torch.Tensor] = {}
        self._keys: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.probes: dict[int, list[tuple[tuple, dict]]] = {}

    def hidden(self, entry: int, examples: Sequence[int], start: int) -> torch.Tensor:
        """The base runs' input of block `entry` at positions start.. for rows of these examples (a copy)."""
        if self.n == 1:
            return self.bases[0].hidden[entry][1:2, start:].expand(len(examples), -1, -1).clone()
        if entry not in self._hidden:
            self._hidden[entry] = torch.cat([b.hidden[entry][1:2] for b in self.bases])
        return self._hidden[entry][torch.tensor(examples), start:]

    def kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The base runs' keys and values of block `layer`, [n, kv_heads, T, d_head]."""
        if layer not in self._keys:
            self._keys[layer] = (
                torch.cat([b.keys[layer] for b in self.bases]),
                torch.cat([b.values[layer] for b in self.bases]),
            )
        return self._keys[layer]

    def prefix(
        self, layer: int, start: int, n: int, rows: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of positions < start for a batch of n rows (of examples `rows`)."""
        if self.n == 1:
            base = self.bases[0]
            k, v = base.keys[layer][..., :start, :], base.values[layer][..., :start, :]
            return k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)
        assert rows is not None and len(rows) == n
        k, v = self.kv(layer)
        return k[rows, :, :start], v[rows, :, :start]

    def probe(self, model: Model, start: int) -> list[tuple[tuple, dict]]:
        if self.n == 1:
            return probe(model, self.bases[0], self.base_ids, start)
        if start not in self.probes:
            keys, values = zip(*(self.kv(j) for j in range(model.n_layers)), strict=True)
            recorded = _record(model, self.base_ids, keys, values, start)
            self.probes[start] = [
                (_one_row(args, self.n), {k: _one_row(v, self.n) for k, v in kw.items()})
                for args, kw in recorded
            ]
        return self.probes[start]


class ReplayCache:
    """Serves the base run's keys/values of positions < start, expanded over the batch, before new ones
    (for a stack of examples, each row gets its own example's: `rows` holds them, set before a block call)."""

    def __init__(self, base: Baseline | Stack, start: int) -> None:
        self.stack = base if isinstance(base, Stack) else Stack([base], torch.empty(0))
        self.start = start
        self.rows: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *a, **kw):
        if self.start == 0:
            return key_states, value_states
        k, v = self.stack.prefix(layer_idx, self.start, key_states.shape[0], self.rows)
        k = torch.cat([k.to(key_states.dtype), key_states], dim=-2)
        v = torch.cat([v.to(value_states.dtype), value_states], dim=-2)
        return k, v

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.start


# ------------------------------------------------------------------------------------------- the edits
def _entry_layer(site: str, cell: Any) -> int:
    return cell.layer + 1 if site_record(site).after_block else cell.layer


def _site_value(
    model: Model, base: Baseline, cell: Any, kind: str, value: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(new value, base value) of the cell's slot: [T or 1, width]."""
    site, rec = cell.site, site_record(cell.site)
    if rec.replay == "stream":
        act = base.hidden[cell.layer + rec.after_block]
    else:
        act = slot(base.acts[site][cell.layer], model.site_ref(site, cell.layer).layout)
    if cell.head is not None:
        act = act[:, :, cell.head]
    pos = slice(None) if cell.position is None else slice(cell.position, cell.position + 1)
    old = act[1, pos]
    if kind == "source":
        new = act[0, pos]
    elif kind == "zero":
        new = torch.zeros_like(old)
    elif kind == "mean":
        new = act[1].mean(dim=0, keepdim=True).expand_as(old)
    else:
        assert value is not None
        given = value.to(old.dtype).reshape(-1, old.shape[-1]).expand_as(old)
        new = old + given if kind == "add" else given
    return new, old


@dataclass
class _Part:
    """One edit of a run: its position relative to the run's start (None: every position), its head."""

    position: int | None
    head: int | None
    new: torch.Tensor  # value put in the slot [P, width] (P = 1, or T - start for all positions)
    old: torch.Tensor


@dataclass
class _Row:
    out: int  # index in its example's result
    ex: int  # its example in the stack
    entry: int  # the block the row joins at (L: after the last block)
    parts: list[_Part]


def _join(model: Model, stack: Stack, site: str, rows: list[_Row], entry: int, start: int) -> torch.Tensor:
    """Hidden states [n, T - start, D] of rows joining at block `entry` (input edits applied)."""
    x = stack.hidden(entry, [r.ex for r in rows], start)
    how = site_record(site).replay
    if how == "stream":
        for i, r in enumerate(rows):
            for part in r.parts:
                if part.position is None:
                    x[i] = part.new
                else:
                    x[i, part.position] = part.new[0]
    elif how == "added":  # block entry - 1 added residual_scale * mlp_out to the stream
        scale = model.residual_scale(entry - 1)
        for i, r in enumerate(rows):
            for part in r.parts:
                if part.position is None:
                    x[i] += (part.new - part.old) * scale
                else:
                    x[i, part.position] += (part.new[0] - part.old[0]) * scale
    return x


def _hook_edit(model: Model, site: str, layer: int, rows: list[_Row], row0: int):
    """(module, hook kind, hook) editing rows row0.. of an in-block site's module tensor at this block."""
    ref = model.site_ref(site, layer)

    def edit(x: torch.Tensor) -> None:
        x = slot(x, ref.layout)
        for i, r in enumerate(rows):
            for part in r.parts:
                at: tuple = (row0 + i, slice(None) if part.position is None else part.position)
                if part.head is not None:
                    at += (part.head,)
                x[at] = part.new if part.position is None else part.new[0]

    if ref.use_input:
        return (
            model.module(ref),
            "pre",
            lambda _mod, args, kwargs: edit(args[0] if args else next(iter(kwargs.values()))),
        )
    return model.module(ref), "post", lambda _mod, _args, out: edit(first(out))


# ------------------------------------------------------------------------------------------- the sweep
def call_block(block: Any, h: torch.Tensor, recorded: tuple[tuple, dict], cache: ReplayCache) -> torch.Tensor:
    """Block `block` on hidden states `h` with its probe-recorded arguments, `cache` standing for the model's."""
    args = tuple(cache if v is CACHE else v for v in recorded[0])
    kwargs = {k: cache if v is CACHE else v for k, v in recorded[1].items()}
    return first(block(h, *args, **kwargs))


def final_logits(model: Model, h: torch.Tensor) -> torch.Tensor:
    """Float32 logits of final hidden states `h` (the final norm, the unembedding, the family's divisor and
    soft cap)."""
    norm = _get_path(model.hf, model.arch.final_norm)
    head = _get_path(model.hf, model.arch.unembed)
    return finish_logits(head(norm(h)), model.logit_divisor, model.logit_softcap).float()


def _run_group(
    model: Model,
    stack: Stack,
    site: str,
    rows: list[_Row],
    start: int,
    cancel: threading.Event | None = None,
) -> torch.Tensor:
    """Last-position logits [n, V] of rows that all start at position `start` (rows sorted by entry);
    `cancel` is checked before every block."""
    n_layers = model.n_layers
    kwargs = stack.probe(model, start)
    cache = ReplayCache(stack, start)
    blocks = _get_path(model.hf, model.arch.layers)
    h: torch.Tensor | None = None
    examples: list[int] = []
    i = 0
    for j in range(rows[0].entry, n_layers):
        check_cancel(cancel)
        joining = []
        while i < len(rows) and rows[i].entry == j:
            joining.append(rows[i])
            i += 1
        row0 = 0 if h is None else h.shape[0]
        if joining:
            x = _join(model, stack, site, joining, j, start)
            h = x if h is None else torch.cat([h, x])
            examples += [r.ex for r in joining]
            cache.rows = torch.tensor(examples) if stack.n > 1 else None
        assert h is not None
        handle = None
        if joining and site_record(site).replay == "hook":
            mod, kind, fn = _hook_edit(model, site, j, joining, row0)
            fn = mine(fn)
            handle = (
                mod.register_forward_pre_hook(fn, with_kwargs=True)
                if kind == "pre"
                else mod.register_forward_hook(fn)
            )
        try:
            h = call_block(blocks[j], h, kwargs[j], cache)
        finally:
            if handle is not None:
                handle.remove()
    if i < len(rows):  # rows that join after the last block (mlp_out / resid_post of the last layer)
        x = _join(model, stack, site, rows[i:], n_layers, start)
        h = x if h is None else torch.cat([h, x])
    assert h is not None
    return final_logits(model, h[:, -1])


def rows_budget(model: Model, n_tokens: int, limit: int = 1024) -> int:
    """Rows one block call may carry: a quarter of free memory (or $WORKBENCH_MEMORY_BUDGET), at most `limit`."""
    return rows_per_chunk(model, n_tokens, limit=limit)


@contextlib.contextmanager
def session(model: Model) -> Iterator[ModelKey]:
    """One fast-path call: the model lock, the model's key (for every cache the call reads) and oneDNN
    linear layers keyed on it."""
    with model.lock:
        version = model_key(model)
        with onednn_linears(model, version):
            yield version


def prepared(
    model: Model, source_ids: torch.Tensor, base_ids: torch.Tensor, version: ModelKey
) -> Baseline | None:
    """The pair's baseline with the block arguments of a run from position 0 recorded; None when the replay
    cannot reproduce the model's block calls (the caller takes the general path)."""
    try:
        with torch.no_grad():
            base = baseline(model, source_ids, base_ids, version)
            probe(model, base, base_ids, 0)
    except NotReplayable:
        return None
    return base


def single_site(rows: Sequence[Sequence[Any]]) -> tuple[str, str] | None:
    """(site, kind) when every run is one edit and all share a site and kind."""
    if not rows or any(len(r) != 1 for r in rows):
        return None
    return one_site(rows)


def one_site(rows: Sequence[Sequence[Any]]) -> tuple[str, str] | None:
    """(site, kind) when all runs edit one site with one kind and each run edits one layer: one edit, or
    several at distinct (position, head) places of that layer (a role's tokens), which the replay serves
    by starting the run at the first edited position. None otherwise."""
    if not rows or any(len(r) == 0 for r in rows):
        return None
    site, kind = rows[0][0].cell.site, rows[0][0].kind
    for row in rows:
        layer = row[0].cell.layer
        seen = set()
        for e in row:
            if e.cell.site != site or e.kind != kind or e.cell.layer != layer:
                return None
            if len(row) > 1:
                place = (e.cell.position, e.cell.head)
                if e.cell.position is None or place in seen:
                    return None
                seen.add(place)
    return site, kind


def _make_row(
    model: Model, base: Baseline, kind: str, ex: int, out: int, edits: Sequence[Any]
) -> tuple[int, _Row]:
    """(start position, row) of one run: it starts at its first edited position (0 for all positions)."""
    cells = [e.cell for e in edits]
    start = 0 if cells[0].position is None else min(c.position for c in cells)
    parts = []
    for e in edits:
        new, old = _site_value(model, base, e.cell, kind, e.tensor())
        parts.append(
            _Part(None if e.cell.position is None else e.cell.position - start, e.cell.head, new, old)
        )
    return start, _Row(out, ex, _entry_layer(cells[0].site, cells[0]), parts)


def _stack(
    model: Model, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], site: str, version: ModelKey
) -> Stack | None:
    """The stack of these pairs' baselines (one pair: its cached baseline), None when not replayable."""
    base_ids = torch.cat([b for _, b in pairs])
    if len(pairs) == 1:
        base = prepared(model, pairs[0][0], pairs[0][1], version)
        return None if base is None else Stack([base], base_ids)
    sources = torch.cat([s for s, _ in pairs])
    per = max(1, rows_per_chunk(model, base_ids.shape[1]) // 2)  # pairs per baseline forward
    bases: list[Baseline] = []
    try:
        with torch.no_grad():
            for lo in range(0, len(pairs), per):
                part, complete = forward_baselines(
                    model, sources[lo : lo + per], base_ids[lo : lo + per], replay_sites(model, site)
                )
                if not complete:
                    return None
                bases += part
            stack = Stack(bases, base_ids)
            stack.probe(model, 0)
    except NotReplayable:
        return None
    return stack


def run(
    model: Model,
    source_ids: torch.Tensor,
    base_ids: torch.Tensor,
    rows: Sequence[Sequence[Any]],
    metric: Any,
    *,
    top_k: int = 0,
    progress: Any = None,
    cancel: threading.Event | None = None,
    chunk: int | None = None,
) -> Any:
    """The fast path of `traced.run_rows` (same arguments, same BatchOutput) for runs that edit one site
    (`one_site`); None when it does not apply."""
    outs = run_many(
        model, [(source_ids, base_ids)], [rows], [metric], top_k=top_k, progress=progress, cancel=cancel,
        chunk=chunk,
    )  # fmt: skip
    return None if outs is None else outs[0]


# Positions one block call of a stack carries at most (rows x positions from the start): past a few
# thousand the matmuls gain nothing, and the calls' activations stay ~100s of MB on a small model.
STACK_TOKENS = 4096


def run_many(
    model: Model,
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    rows: Sequence[Sequence[Sequence[Any]]],
    metrics: Sequence[Any],
    *,
    top_k: int = 0,
    progress: Any = None,
    cancel: threading.Event | None = None,
    chunk: int | None = None,
) -> list[Any] | None:
    """`run` for several prompt pairs of one length at once (example i: `pairs[i]`, its runs `rows[i]`, its
    metric `metrics[i]`): the runs of every example that start at one position share each block call, so
    a dataset sweep costs what one long batch does. One BatchOutput per example (each equals its own `run`
    within float32 reordering); None when the replay does not apply (the caller runs them one by one)."""
    if not pairs:
        return None
    n_tokens = pairs[0][1].shape[1]
    if any(s.shape != b.shape or b.shape != (1, n_tokens) for s, b in pairs):
        return None
    shared = {one_site(r) for r in rows}
    if len(shared) != 1 or None in shared:
        return None
    site, kind = shared.pop()  # type: ignore[misc]
    if not enabled_for(model, site, kind, n_tokens):
        return None
    with session(model) as version:
        stack = _stack(model, pairs, site, version)
        if stack is None:
            return None
        groups: dict[int, list[_Row]] = {}
        for ex, (base, ex_rows) in enumerate(zip(stack.bases, rows, strict=True)):
            for idx, edits in enumerate(ex_rows):
                start, row = _make_row(model, base, kind, ex, idx, edits)
                groups.setdefault(start, []).append(row)
        size = chunk or rows_budget(model, n_tokens)
        outs = [Collected(len(r), top_k) for r in rows]
        done, n = 0, sum(len(r) for r in rows)
        with torch.no_grad():
            for start in sorted(groups):
                group = sorted(groups[start], key=lambda r: (r.entry, r.ex, r.out))
                per_call = size
                if stack.n > 1:  # a stack's block calls: at most STACK_TOKENS rows x positions
                    per_call = min(size, max(1, STACK_TOKENS // (n_tokens - start)))
                for lo in range(0, len(group), per_call):
                    check_cancel(cancel)
                    part = group[lo : lo + per_call]
                    try:
                        logits = _run_group(model, stack, site, part, start, cancel)
                    except NotReplayable:
                        return None
                    exs = torch.tensor([r.ex for r in part])
                    for e in exs.unique().tolist():
                        sel = (exs == e).nonzero().flatten()
                        part_logits = logits if len(sel) == len(part) else logits[sel]
                        idx = torch.tensor([part[k].out for k in sel.tolist()])
                        outs[e].add(idx, part_logits, metrics[e], stack.bases[e].logits[0])
                    done += len(part)
                    report(progress, done, n)
            return [o.output(m, b.logits) for o, m, b in zip(outs, metrics, stack.bases, strict=True)]


__all__ = [
    "CACHE",
    "Baseline",
    "NotReplayable",
    "ReplayCache",
    "Stack",
    "baseline",
    "call_block",
    "capture",
    "disabled",
    "enabled_for",
    "final_logits",
    "forward_baselines",
    "has_hooks",
    "one_site",
    "prepared",
    "probe",
    "rows_budget",
    "run",
    "run_many",
    "session",
    "single_site",
]
