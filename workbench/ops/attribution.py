"""Attribution patching: a first-order estimate of every patch at once, (clean - corrupt) . d metric / d act.

One forward pass over [clean, corrupt] and one backward pass from the corrupt row's metric give the
estimate for every layer, position (and head) of every requested site.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch

from .. import codegen
from ..model import Model
from ..remote import job_status
from ..validate import as_bool, as_list
from . import _fast_sweep
from ._engine import Progress, check_cancel
from ._kernels import read
from .metrics import as_metric
from .patching import MetricLike, pair_tokens, sweep_axes
from .results import SweepResult

# Forward order of the sites inside one block (gradients are read in the reverse order).
_ORDER = ("resid_pre", "head", "attn_out", "mlp_out", "resid_post")


def _trace(model: Model, batch: torch.Tensor, sites: list[str], bound) -> tuple[dict, torch.Tensor]:
    keys = [(site, layer) for layer in range(model.n_layers) for site in sites]
    refs = [model.site_ref(site, layer) for site, layer in keys]
    is_head = [site == "head" for site, _ in keys]
    nn = model.nn
    embed = model.embed()
    # Saved values must be bound to plain names in the body: that is what comes back (also from NDIF).
    with torch.enable_grad(), nn.trace(batch, logits_to_keep=1, **model.trace_options()):
        embedded = embed.output
        if not embedded.requires_grad:  # frozen weights (as on NDIF): start the graph at the embeddings
            embedded.requires_grad_(True)
        acts = [read(*ref) for ref in refs]
        logits = nn.output.logits[:, -1].float()
        values = bound(logits.clone(), logits[0].clone())  # the metric may edit them
        baselines = values.detach().save()
        diffs = [(a[0] - a[1]).detach() for a in acts]
        grads = [None] * len(acts)
        with values[1].backward():
            for i in reversed(range(len(acts))):
                grads[i] = acts[i].grad[1]
        prods = [diffs[i] * grads[i] for i in range(len(acts))]
        empty = torch.zeros(0)
        resid_products = torch.stack(
            [p for p, h in zip(prods, is_head, strict=True) if not h] or [empty]
        ).save()
        head_products = torch.stack([p for p, h in zip(prods, is_head, strict=True) if h] or [empty]).save()
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
    sites = list(dict.fromkeys(sites))  # a site listed twice is computed once
    by_position = as_bool(by_position, "by_position")
    ordered = [s for s in _ORDER if s in sites]
    bound = m.bind(model)
    check_cancel(cancel)
    with model.lock, job_status(model, progress, cancel):
        fast = _fast_sweep.attribution(model, c, k, ordered, bound)  # local models: no graph for clean
        products, baselines = fast if fast is not None else _trace(model, torch.cat([c, k]), ordered, bound)
    if progress is not None:
        progress(1.0, "attribution done")
    results: dict[str, SweepResult] = {}
    tokens = model.str_tokens(k)
    for s in sites:
        per_layer = []
        for layer in range(model.n_layers):
            prod = products[(s, layer)].float()  # [T, D]
            if s == "head":
                per_head = prod.view(prod.shape[0], model.n_heads, model.d_head).sum(-1)  # [T, H]
                per_layer.append(per_head if by_position else per_head.sum(0))
            else:
                per_layer.append(prod.sum(-1))
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
