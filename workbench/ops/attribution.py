"""Attribution patching: a first-order estimate of every patch at once, (clean - corrupt) . d metric / d act.

One forward pass over [clean, corrupt] and one backward pass from the corrupt row's metric give the
estimate for every layer, position (and head) of every requested site. A pattern's estimate sums
(P_clean - P_corrupt) * d metric / d P over the keys, with d metric / d P = d metric / d O_h @ V_h^T
(O_h the head's output, V_h the values it reads): per query position and head, like patch_sweep(site="pattern").
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch

from .. import codegen
from ..engine import fast_attribution
from ..engine.batching import Progress, check_cancel
from ..engine.kernels import eager_pattern, pattern_grad, pattern_sums, read, site_sums
from ..engine.sites import SITE_TABLE
from ..engine.sites import site as site_record
from ..engine.traced import eager_function
from ..errors import SiteError
from ..model import Model
from ..remote import job_status
from ..validate import as_bool, as_list
from .metrics import as_metric
from .patching import MetricLike, pair_tokens, sweep_axes
from .results import SweepResult

# Forward order of the sites inside one block (gradients are read in the reverse order).
_ORDER = tuple(sorted(SITE_TABLE, key=lambda name: SITE_TABLE[name].order))


def _trace(model: Model, batch: torch.Tensor, sites: list[str], bound) -> tuple[dict, torch.Tensor]:
    """(clean - corrupt) * grad for every (site, layer), summed per position ([T]) or per head ([T, H],
    zero-padded to n_heads for key-value heads), from one traced forward and backward.

    A pattern's gradient is read at its heads' outputs (the head site: output = probabilities @ values),
    d metric / d P = d metric / d O_h @ V_h^T, with the probabilities and values of the attention function."""
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


def attribution_patch(
    model: Model,
    clean: str,
    corrupt: str,
    *,
    metric: MetricLike,
    site: str | Sequence[str] = "resid_pre",
    by_position: bool = False,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> SweepResult | dict[str, SweepResult]:
    """Gradient estimate of `patch_sweep` (same shapes); a list of sites gives {site: result} from one pass."""
    m = as_metric(metric)
    c, k = pair_tokens(model, clean, corrupt)
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
    by_position = as_bool(by_position, "by_position")
    ordered = [s for s in _ORDER if s in sites]
    bound = m.bind(model)
    check_cancel(cancel)
    with model.lock, job_status(model, progress, cancel):
        fast = fast_attribution.attribution(model, c, k, ordered, bound)  # local models: no graph for clean
        if fast is not None:
            full, baselines = fast
            products = {
                key: pattern_sums(p)
                if site_record(key[0]).pattern
                else site_sums(p, model.site_ref(*key).layout, model.n_heads)
                for key, p in full.items()
            }
        else:
            products, baselines = _trace(model, torch.cat([c, k]), ordered, bound)
    if progress is not None:
        progress(1.0, "attribution done")
    results: dict[str, SweepResult] = {}
    tokens = model.str_tokens(k)
    for s in sites:
        per_layer = []
        for layer in range(1 if site_record(s).embed_only else model.n_layers):
            prod = products[(s, layer)].float()  # [T] or [T, n_heads] (padded)
            rec = site_record(s)
            if rec.per_head:
                per_head = prod[:, : model.n_kv_heads if rec.heads == "kv" else model.n_heads]  # [T, H]
                per_layer.append(per_head if by_position else per_head.sum(0))
            else:
                per_layer.append(prod)
        values = torch.stack(per_layer)
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
