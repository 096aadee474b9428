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


def _cache_kv(cache: Any, n_layers: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    cache = getattr(cache, "self_attention_cache", cache)
    keys, values = [], []
    for j in range(n_layers):
        layer = cache.layers[j]
        keys.append(layer.keys[1:2].detach())
        values.append(layer.values[1:2].detach())
    return keys, values


def baseline(model: Model, source_ids: torch.Tensor, base_ids: torch.Tensor, version: ModelKey) -> Baseline:
    """The cached source/base runs of this pair for the model as `version` describes it (computed with one
    batch-2 forward on a miss; stored only when the model's structure did not change meanwhile)."""
    key = (tuple(source_ids.flatten().tolist()), tuple(base_ids.flatten().tolist()))
    per_model = _BASELINES.setdefault(model, OrderedDict())
    hit = per_model.get(key)
    if hit is not None and hit[0] == version:
        per_model.move_to_end(key)
        return hit[1]
    n_layers = model.n_layers
    hidden: list[Any] = [None] * (n_layers + 1)
    sites = [  # the module tensors the replay reads: in-block sites and terms added after the block
        name
        for name, rec in SITE_TABLE.items()
        if rec.replay in ("hook", "added") and (not rec.sequential_only or model._sequential())
    ]
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
            out = model.hf(
                torch.cat([source_ids, base_ids]),
                past_key_values=_full_cache(),
                use_cache=True,
                logits_to_keep=1,
            )
    finally:
        for h in handles:
            h.remove()
    if not all(a is not None for v in acts.values() for a in v):
        raise NotReplayable("a site module did not run in the baseline forward")
    keys, values = _cache_kv(out.past_key_values, n_layers)
    base = Baseline(hidden, acts, keys, values, out.logits[:, -1].float())
    complete = all(h is not None for h in hidden) and all(a is not None for v in acts.values() for a in v)
    if not complete or structure_key(model) != version.structure:
        return base  # something else ran or changed the model meanwhile: use it once, never cache it
    per_model[key] = (version, base)
    while len(per_model) > _MAX_BASELINES:
        per_model.popitem(last=False)
    return base


def _full_cache() -> Any:
    """A cache that keeps every position in every layer, sliding-window layers included: the replay serves
    the base run's keys and values of all earlier positions, and the model's masks then apply the window."""
    from transformers import DynamicCache

    return DynamicCache()


class NotReplayable(Exception):
    """The probe found block arguments the replay cannot reproduce: use the general path."""


CACHE = object()  # stands for the model's cache object in recorded block arguments


def probe(model: Model, base: Baseline, base_ids: torch.Tensor, start: int) -> list[tuple[tuple, dict]]:
    """The arguments the model passes each block for positions start.. after a cache of `start` positions."""
    if start in base.probes:
        return base.probes[start]
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
            cache.update(base.keys[j][..., :start, :], base.values[j][..., :start, :], j)
    with torch.no_grad(), swapped_forwards([(block, recorder) for block in blocks]):
        model.hf(base_ids[:, start:], past_key_values=cache, use_cache=True, logits_to_keep=1)
    if len(recorded) != model.n_layers:
        raise NotReplayable(f"recorded {len(recorded)} block calls for {model.n_layers} blocks")
    for args, kw in recorded:
        for v in (*args, *kw.values()):
            tensors = v if isinstance(v, tuple | list) else (v,)
            for t in tensors:
                if isinstance(t, torch.Tensor) and t.dim() >= 3 and t.shape[0] != 1:
                    raise NotReplayable("a block argument has a batch dimension")
    base.probes[start] = recorded
    return recorded


class ReplayCache:
    """Serves the base run's keys/values of positions < start, expanded over the batch, before new ones."""

    def __init__(self, base: Baseline, start: int) -> None:
        self.base, self.start = base, start

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *a, **kw):
        if self.start == 0:
            return key_states, value_states
        n = key_states.shape[0]
        k = self.base.keys[layer_idx][..., : self.start, :].to(key_states.dtype)
        v = self.base.values[layer_idx][..., : self.start, :].to(value_states.dtype)
        k = torch.cat([k.expand(n, -1, -1, -1), key_states], dim=-2)
        v = torch.cat([v.expand(n, -1, -1, -1), value_states], dim=-2)
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
class _Row:
    out: int  # index in the result
    cell: Any
    entry: int  # the block the row joins at (L: after the last block)
    new: torch.Tensor  # value put in the slot [P, width] (P = 1, or T - start for all positions)
    old: torch.Tensor


def _join(model: Model, base: Baseline, site: str, rows: list[_Row], entry: int, start: int) -> torch.Tensor:
    """Hidden states [n, T - start, D] of rows joining at block `entry` (input edits applied)."""
    x = base.hidden[entry][1:2, start:].expand(len(rows), -1, -1).clone()
    how = site_record(site).replay
    if how == "stream":
        for i, r in enumerate(rows):
            if r.cell.position is None:
                x[i] = r.new
            else:
                x[i, 0] = r.new[0]
    elif how == "added":  # block entry - 1 added residual_scale * mlp_out to the stream
        scale = model.residual_scale(entry - 1)
        for i, r in enumerate(rows):
            if r.cell.position is None:
                x[i] += (r.new - r.old) * scale
            else:
                x[i, 0] += (r.new[0] - r.old[0]) * scale
    return x


def _hook_edit(model: Model, site: str, layer: int, rows: list[_Row], row0: int):
    """(module, hook kind, hook) editing rows row0.. of an in-block site's module tensor at this block."""
    ref = model.site_ref(site, layer)

    def edit(x: torch.Tensor) -> None:
        x = slot(x, ref.layout)
        for i, r in enumerate(rows):
            at: tuple = (row0 + i, slice(None) if r.cell.position is None else 0)
            if r.cell.head is not None:
                at += (r.cell.head,)
            x[at] = r.new if r.cell.position is None else r.new[0]

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
    base: Baseline,
    base_ids: torch.Tensor,
    site: str,
    rows: list[_Row],
    start: int,
    cancel: threading.Event | None = None,
) -> torch.Tensor:
    """Last-position logits [n, V] of rows that all start at position `start` (rows sorted by entry);
    `cancel` is checked before every block."""
    n_layers = model.n_layers
    kwargs = probe(model, base, base_ids, start)
    cache = ReplayCache(base, start)
    blocks = _get_path(model.hf, model.arch.layers)
    h: torch.Tensor | None = None
    i = 0
    for j in range(rows[0].entry, n_layers):
        check_cancel(cancel)
        joining = []
        while i < len(rows) and rows[i].entry == j:
            joining.append(rows[i])
            i += 1
        row0 = 0 if h is None else h.shape[0]
        if joining:
            x = _join(model, base, site, joining, j, start)
            h = x if h is None else torch.cat([h, x])
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
        x = _join(model, base, site, rows[i:], n_layers, start)
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
    """(site, kind) when every run is one edit and all share a site and kind (what the replay serves)."""
    if not rows or any(len(r) != 1 for r in rows):
        return None
    first_edit = rows[0][0]
    site, kind = first_edit.cell.site, first_edit.kind
    if any(r[0].cell.site != site or r[0].kind != kind for r in rows):
        return None
    return site, kind


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
    """The fast path of `traced.run_rows` (same arguments, same BatchOutput) for runs of one edit each at one
    site; None when it does not apply."""
    n_tokens = base_ids.shape[1]
    shared = single_site(rows)
    if shared is None or source_ids.shape != base_ids.shape or base_ids.shape[0] != 1:
        return None
    site, kind = shared
    if not enabled_for(model, site, kind, n_tokens):
        return None
    cells = [r[0].cell for r in rows]
    with session(model) as version:
        base = prepared(model, source_ids, base_ids, version)
        if base is None:
            return None
        groups: dict[int, list[_Row]] = {}
        for idx, cell in enumerate(cells):
            new, old = _site_value(model, base, cell, kind, rows[idx][0].tensor())
            start = 0 if cell.position is None else cell.position
            groups.setdefault(start, []).append(_Row(idx, cell, _entry_layer(site, cell), new, old))
        size = chunk or rows_budget(model, base_ids.shape[1])
        out = Collected(len(cells), top_k)
        done, n = 0, len(cells)
        with torch.no_grad():
            for start in sorted(groups):
                rows = sorted(groups[start], key=lambda r: (r.entry, r.out))
                for lo in range(0, len(rows), size):
                    check_cancel(cancel)
                    part = rows[lo : lo + size]
                    try:
                        logits = _run_group(model, base, base_ids, site, part, start, cancel)
                    except NotReplayable:
                        return None
                    out.add(torch.tensor([r.out for r in part]), logits, metric, base.logits[0])
                    done += len(part)
                    report(progress, done, n)
            return out.output(metric, base.logits)


__all__ = [
    "CACHE",
    "Baseline",
    "NotReplayable",
    "ReplayCache",
    "baseline",
    "call_block",
    "disabled",
    "enabled_for",
    "final_logits",
    "has_hooks",
    "prepared",
    "probe",
    "rows_budget",
    "run",
    "session",
    "single_site",
]
