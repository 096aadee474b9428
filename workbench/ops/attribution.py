"""Attribution patching: a first-order estimate of every patch at once, (clean - corrupt) . d metric / d act.

One forward pass over [clean, corrupt] and one backward pass from the corrupt row's metric give the
estimate for every layer, position (and head) of every requested site. A pattern's estimate sums
(P_clean - P_corrupt) * d metric / d P over the keys, with d metric / d P = d metric / d O_h @ V_h^T
(O_h the head's output, V_h the values it reads): per query position and head, like patch_sweep(site="pattern").
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch

from .. import codegen
from ..data.dataset import Dataset
from ..data.predict import batch_size_for
from ..engine import fast_attribution
from ..engine.batching import BatchOutput, Progress, check_cancel
from ..engine.kernels import eager_pattern, pattern_grad, pattern_sums, read, site_sums
from ..engine.padding import left_pad, pad_id
from ..engine.sites import SITE_TABLE
from ..engine.sites import site as site_record
from ..engine.traced import eager_function
from ..errors import SiteError, WorkbenchError
from ..model import Model
from ..remote import job_status
from ..validate import as_bool, as_list
from .dataset_results import DatasetSweepResult
from .metrics import Metric, as_metric
from .over_dataset import Runner, is_dataset, no_second_prompt, one_request
from .patching import MetricLike, pair_tokens, sweep_axes
from .results import SweepResult

# Forward order of the sites inside one block (gradients are read in the reverse order).
_ORDER = tuple(sorted(SITE_TABLE, key=lambda name: SITE_TABLE[name].order))


def _reads(model: Model, sites: list[str]) -> tuple[list, list, list, Any, list, list, list[bool]]:
    """What an attribution trace reads, per (site, layer) in forward order: the keys, the envoys read (a
    pattern's gradient is read at its head outputs), the attention envoys of patterns, the eager attention
    function, (path, input?) of each read, the head layouts and whether each site is per head. Plain lists
    only: they go into trace bodies that run on NDIF too."""
    keys = [
        (site, layer)
        for layer in range(model.n_layers)
        for site in sites
        if layer == 0 or not site_record(site).embed_only
    ]
    refs = [model.site_ref(site, layer) for site, layer in keys]
    read_refs = [model.site_ref("head", ref.layer) if ref.pattern else ref for ref in refs]
    envoys = [model.envoy(ref) for ref in read_refs]
    attn_envoys = [model.envoy(ref) if ref.pattern else None for ref in refs]
    eager_fn = eager_function(model) if any(ref.pattern for ref in refs) else None
    wheres = [(ref.path, ref.use_input) for ref in read_refs]
    layouts = [ref.layout for ref in refs]
    is_head = [site_record(site).per_head for site, _ in keys]
    return keys, envoys, attn_envoys, eager_fn, wheres, layouts, is_head


def _trace(model: Model, batch: torch.Tensor, sites: list[str], bound) -> tuple[dict, torch.Tensor]:
    """(clean - corrupt) * grad for every (site, layer), summed per position ([T]) or per head ([T, H],
    zero-padded to n_heads for key-value heads), from one traced forward and backward.

    A pattern's gradient is read at its heads' outputs (the head site: output = probabilities @ values),
    d metric / d P = d metric / d O_h @ V_h^T, with the probabilities and values of the attention function."""
    keys, envoys, attn_envoys, eager_fn, wheres, layouts, is_head = _reads(model, sites)
    n_heads = model.n_heads
    nn = model.nn
    embed = model.embed()
    embed_where = (model.site_ref("embed", 0).path, False)
    # Saved values must be bound to plain names in the body: that is what comes back (also from NDIF).
    with torch.enable_grad(), nn.trace(batch, logits_to_keep=1, **model.trace_options()):
        embedded = embed.output
        if not embedded.requires_grad:  # frozen weights (as on NDIF): start the graph at the embeddings
            embedded.requires_grad_(True)
        live = {embed_where: embedded}  # a module read once (fused q|k|v, the embeddings)
        acts = []
        patterns = {}  # index -> (clean - corrupt probabilities [H, T, T], corrupt values [kv, T, d])
        for i, (envoy, where) in enumerate(zip(envoys, wheres, strict=True)):
            if attn_envoys[i] is not None:
                inputs = attn_envoys[i].source.attention_interface_1.inputs
                probs = eager_pattern(inputs, eager_fn).detach()
                patterns[i] = (probs[0] - probs[1], inputs[0][3][1].detach())
            if where not in live:
                live[where] = read(envoy, where[1])
                if layouts[i] is not None and not where[1] and attn_envoys[i] is None:
                    # the model may change a q/k/v projection output in place (OLMo's clip_qkv): it gets a
                    # copy, so the activation and its gradient are the projection's output as returned
                    envoy.output = live[where].clone()
            acts.append(live[where])
        logits = nn.output.logits[:, -1].float()
        values = bound(logits.clone(), logits[0].clone())  # the metric may edit them
        baselines = values.detach().save()
        diffs = [(a[0] - a[1]).detach() for a in acts]
        grads = [None] * len(acts)
        with values[1].backward():
            for i in reversed(range(len(acts))):
                grads[i] = acts[i].grad[1]
        sums = []
        for i in range(len(acts)):
            if i in patterns:
                dprobs, value = patterns[i]
                g = grads[i].view(grads[i].shape[0], n_heads, -1)  # [T, H, d]
                sums.append(pattern_sums(dprobs * pattern_grad(g, value)))
            else:
                sums.append(site_sums(diffs[i] * grads[i], layouts[i], n_heads))
        empty = torch.zeros(0)
        resid_products = torch.stack(
            [p for p, h in zip(sums, is_head, strict=True) if not h] or [empty]
        ).save()
        head_products = torch.stack([p for p, h in zip(sums, is_head, strict=True) if h] or [empty]).save()
    products: dict[tuple[str, int], torch.Tensor] = {}
    counts = {False: 0, True: 0}
    for key, head in zip(keys, is_head, strict=True):
        products[key] = (head_products if head else resid_products)[counts[head]]
        counts[head] += 1
    return products, baselines


def _trace_examples(
    model: Model, pairs: list[tuple[torch.Tensor, torch.Tensor, object]], sites: list[str]
) -> list[tuple[dict, torch.Tensor]]:
    """`_trace` for many pairs in one traced forward and backward (one NDIF request): rows 2i / 2i + 1 are
    pair i's clean / corrupt prompt, left-padded with an attention mask and explicit position ids; each pair's
    metric on its own rows, and the backward of the sum of the corrupt rows' metrics gives each pair its own
    gradient (the examples do not interact). Returns each pair's products ([T_i] / [T_i, H]) and baselines."""
    keys, envoys, attn_envoys, eager_fn, wheres, layouts, is_head = _reads(model, sites)
    n_heads = model.n_heads
    batch = left_pad([t for c, k, _ in pairs for t in (c, k)], pad_id(model.tokenizer))
    pads = [batch.pad[2 * i] for i in range(len(pairs))]
    metrics = [bound for _, _, bound in pairs]
    nn = model.nn
    embed = model.embed()
    embed_where = (model.site_ref("embed", 0).path, False)
    with (
        torch.enable_grad(),
        nn.trace(
            batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            logits_to_keep=1,
            **model.trace_options(),
        ),
    ):
        embedded = embed.output
        if not embedded.requires_grad:
            embedded.requires_grad_(True)
        live = {embed_where: embedded}
        acts = []
        patterns = {}
        for i, (envoy, where) in enumerate(zip(envoys, wheres, strict=True)):
            if attn_envoys[i] is not None:
                inputs = attn_envoys[i].source.attention_interface_1.inputs
                probs = eager_pattern(inputs, eager_fn).detach()  # [B, H, T, T], padded keys masked
                patterns[i] = (probs, inputs[0][3].detach())
            if where not in live:
                live[where] = read(envoy, where[1])
                if layouts[i] is not None and not where[1] and attn_envoys[i] is None:
                    envoy.output = live[where].clone()
            acts.append(live[where])
        logits = nn.output.logits[:, -1].float()
        parts = []
        for j, metric in enumerate(metrics):
            own = logits[2 * j : 2 * j + 2]
            parts.append(metric(own.clone(), own[0].clone()).float().reshape(-1))
        values = torch.cat(parts)  # [clean_0, corrupt_0, clean_1, ...]
        baselines = values.detach().save()
        grads = [None] * len(acts)
        with values[1::2].sum().backward():
            for i in reversed(range(len(acts))):
                grads[i] = acts[i].grad
        resid_rows, head_rows = [], []
        for j, pad in enumerate(pads):
            c, k = 2 * j, 2 * j + 1
            per_resid, per_head = [], []
            for i in range(len(acts)):
                g = grads[i][k, pad:]
                if i in patterns:
                    probs, value = patterns[i]
                    dprobs = probs[c, :, pad:, pad:] - probs[k, :, pad:, pad:]
                    gh = g.view(g.shape[0], n_heads, -1)
                    prod = pattern_sums(dprobs * pattern_grad(gh, value[k, :, pad:]))
                else:
                    diff = (acts[i][c, pad:] - acts[i][k, pad:]).detach()
                    prod = site_sums(diff * g, layouts[i], n_heads)
                (per_head if is_head[i] else per_resid).append(prod)
            if per_resid:
                resid_rows.append(torch.stack(per_resid))  # [n_resid_keys, T_j]
            if per_head:
                head_rows.append(torch.stack(per_head))  # [n_head_keys, T_j, H]
        # one tensor each (what comes back from a request): examples side by side along positions
        empty = torch.zeros(0)
        resid_all = (torch.cat(resid_rows, dim=1) if resid_rows else empty).save()
        head_all = (torch.cat(head_rows, dim=1) if head_rows else empty).save()
    lengths = [int(c.shape[-1]) for c, _, _ in pairs]
    out = []
    at = 0
    for j, n in enumerate(lengths):
        products: dict[tuple[str, int], torch.Tensor] = {}
        counts = {False: 0, True: 0}
        for key, head in zip(keys, is_head, strict=True):
            stack = head_all if head else resid_all
            products[key] = stack[counts[head], at : at + n]
            counts[head] += 1
        at += n
        out.append((products, baselines[2 * j : 2 * j + 2]))
    return out


def _check_sites(model: Model, site: str | Sequence[str]) -> tuple[list[str], list[str]]:
    """The requested sites (each once, in the order given) and the same in forward order."""
    example = "site='resid_pre' or site=['resid_pre', 'attn_out', 'mlp_out']"
    sites = [site] if isinstance(site, str) else as_list(site, "site=", example)
    for s in sites:
        model.check_site(s)
        if site_record(s).pattern and eager_function(model) is None:
            raise SiteError(
                f"Pattern attribution recomputes the probabilities with the family's eager attention function, "
                f"which {model.config.model_type!r} does not define: estimate the heads with site='head'."
            )
    sites = list(dict.fromkeys(sites))  # a site listed twice is computed once
    return sites, [s for s in _ORDER if s in sites]


def _products(
    model: Model, c: torch.Tensor, k: torch.Tensor, ordered: list[str], bound
) -> tuple[dict[tuple[str, int], torch.Tensor], torch.Tensor]:
    """One pair's (clean - corrupt) * grad per (site, layer), summed to [T] (or [T, n_heads]), and the
    [clean, corrupt] metrics: the local fast path, else one traced forward and backward."""
    fast = fast_attribution.attribution(model, c, k, ordered, bound)  # local models: no graph for clean
    if fast is None:
        return _trace(model, torch.cat([c, k]), ordered, bound)
    return _summed(model, fast[0]), fast[1]


def _summed(model: Model, full: dict[tuple[str, int], torch.Tensor]) -> dict[tuple[str, int], torch.Tensor]:
    return {
        key: pattern_sums(p)
        if site_record(key[0]).pattern
        else site_sums(p, model.site_ref(*key).layout, model.n_heads)
        for key, p in full.items()
    }


def _grid(
    model: Model, products: dict[tuple[str, int], torch.Tensor], s: str, by_position: bool
) -> torch.Tensor:
    """The estimates of site `s`: [L, T] or, per head, [L, T, H] (by_position) or [L, H]."""
    rec = site_record(s)
    per_layer = []
    for layer in range(1 if rec.embed_only else model.n_layers):
        prod = products[(s, layer)].float()  # [T] or [T, n_heads] (padded)
        if rec.per_head:
            per_head = prod[:, : model.n_kv_heads if rec.heads == "kv" else model.n_heads]  # [T, H]
            per_layer.append(per_head if by_position else per_head.sum(0))
        else:
            per_layer.append(prod)
    return torch.stack(per_layer)


def attribution_patch(
    model: Model,
    clean: str | Dataset,
    corrupt: str | None = None,
    *,
    metric: MetricLike,
    site: str | Sequence[str] = "resid_pre",
    by_position: bool = False,
    align: str = "exact",
    batched: bool | None = None,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> SweepResult | dict[str, SweepResult]:
    """Gradient estimate of `patch_sweep` (same shapes); a list of sites gives {site: result} from one pass.

    Over a `wb.Dataset` (in place of clean/corrupt): each example's estimate as one pair's, with its own
    metric; a column of `align=` that spans several positions (a role) gets the SUM of their estimates (the
    first-order estimate of patching the span jointly). A DatasetSweepResult (mean, `.per_example`, `.sem`)
    per site. Local models run the examples in left-padded batches (`batched=False`: one at a time)."""
    m = as_metric(metric)
    if is_dataset(clean):
        no_second_prompt("wb.attribution_patch", corrupt)
        return _attribution_dataset(model, clean, m, site, by_position, align, batched, progress, cancel)
    if corrupt is None:
        raise WorkbenchError(
            "wb.attribution_patch needs a corrupt prompt: wb.attribution_patch(model, clean, corrupt, ...), "
            "or a wb.Dataset in place of both."
        )
    c, k = pair_tokens(model, clean, corrupt)
    sites, ordered = _check_sites(model, site)
    by_position = as_bool(by_position, "by_position")
    bound = m.bind(model)
    check_cancel(cancel)
    with model.lock, job_status(model, progress, cancel):
        products, baselines = _products(model, c, k, ordered, bound)
    if progress is not None:
        progress(1.0, "attribution done")
    results: dict[str, SweepResult] = {}
    tokens = model.str_tokens(k)
    for s in sites:
        values = _grid(model, products, s, by_position)
        options = dict(
            op="attribution_patch",
            clean=clean,
            corrupt=corrupt,
            metric=m.name,
            site=s,
            by_position=by_position,
        )
        clean_m, corrupt_m = float(baselines[0]), float(baselines[1])
        results[s] = SweepResult(
            values=(values + corrupt_m).numpy(),
            clean=clean_m,
            corrupt=corrupt_m,
            axes=sweep_axes(s, by_position),
            tokens=tokens,
            options=options,
            _code=lambda options=options: codegen.attribution_code(model, m, options),
        )
    return results[sites[0]] if isinstance(site, str) else results


def _columns(grid: torch.Tensor, s: str, by_position: bool, columns: list[list[int]]) -> torch.Tensor:
    """An example's estimates over the dataset's columns: a column's value is the SUM of its positions'
    estimates (the first-order estimate of patching them jointly). [L, H] grids have no positions."""
    if site_record(s).per_head and not by_position:
        return grid
    return torch.stack([grid[:, col].sum(1) for col in columns], dim=1)  # [L, C] or [L, C, H]


def _attribution_dataset(
    model: Model,
    ds: Dataset,
    m: Metric,
    site: str | Sequence[str],
    by_position: object,
    align: str,
    batched: bool | None,
    progress: Progress,
    cancel: threading.Event | None,
) -> DatasetSweepResult | dict[str, DatasetSweepResult]:
    sites, ordered = _check_sites(model, site)
    by_position = as_bool(by_position, "by_position")
    if batched is not None:
        batched = as_bool(batched, "batched")
    runner = Runner(model, ds, m, align, corrupt=True, progress=progress, cancel=cancel)
    n = len(ds)
    with model.lock, job_status(model, progress, cancel):
        if batched is not False and fast_attribution.applies(model, ordered):
            outs = _padded(model, runner, ordered, progress, cancel)
        else:
            if batched:
                raise WorkbenchError(
                    "batched=True needs the local attribution path (a local CPU model without hooks, a family "
                    "the fast engine covers); leave batched= unset to run one example at a time."
                )
            if one_request(model):  # remote: every example in one traced forward and backward
                check_cancel(cancel)
                outs = _trace_examples(model, [(*runner.ids(i), runner.bound[i]) for i in range(n)], ordered)
            else:
                outs = runner.each(lambda i, _p: _products(model, *runner.ids(i), ordered, runner.bound[i]))
    results: dict[str, DatasetSweepResult] = {}
    for s in sites:
        rows, shapes = [], []
        for i, (products, baselines) in enumerate(outs):
            grid = _columns(_grid(model, products, s, by_position), s, by_position, runner.al.positions[i])
            corrupt_m = float(baselines[1])
            rows.append(BatchOutput(grid + corrupt_m, float(baselines[0]), corrupt_m, None, None))
            shapes.append(tuple(grid.shape))
        options = dict(op="attribution_patch", dataset=n, metric=m.name, site=s, by_position=by_position)
        results[s] = runner.sweep_result(
            rows,
            shapes,
            axes=sweep_axes(s, by_position),
            options=options,
            code=lambda options=options: codegen.dataset_attribution_code(model, m, options, ds, runner.al),
        )
    return results[sites[0]] if isinstance(site, str) else results


def _padded(
    model: Model, runner: Runner, ordered: list[str], progress: Progress, cancel: threading.Event | None
) -> list[tuple[dict[tuple[str, int], torch.Tensor], torch.Tensor]]:
    """Every example's products and baselines, many examples per left-padded forward and backward."""
    n = len(runner.ds)
    width = max(runner.al.clean_ids[i].shape[1] for i in range(n))
    # a backward keeps every layer's activations: a quarter of the lens/prediction batch
    size = max(1, batch_size_for(model, width) // 4)
    outs: list = []
    for start in range(0, n, size):
        check_cancel(cancel)
        part = range(start, min(n, start + size))
        examples = [(*runner.ids(i), runner.bound[i]) for i in part]
        got = fast_attribution.attribution_padded(model, examples, ordered)
        assert got is not None  # `applies` was checked
        outs += [(_summed(model, full), baselines) for full, baselines in got]
        if progress is not None:
            progress(len(outs) / n, f"{len(outs)}/{n} examples")
    return outs
