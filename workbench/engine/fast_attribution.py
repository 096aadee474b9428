"""Attribution patching of a local model without a trace: (clean - corrupt) * d metric / d act per site.

Same numbers as the traced version (`ops.attribution._trace`) with less work: the clean run has no graph,
the parameters are frozen during the corrupt run (no weight gradients), and one `autograd.grad` call reads
every site's gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..model import Model
from .fast import allowed, first
from .onednn import onednn_linears
from .replay import _SITES
from .threads import mine


def attribution(
    model: Model, clean_ids: torch.Tensor, corrupt_ids: torch.Tensor, sites: Sequence[str], metric: Any
) -> tuple[dict[tuple[str, int], torch.Tensor], torch.Tensor] | None:
    """(clean - corrupt) * d metric / d act for every (site, layer), and the [clean, corrupt] metrics.

    Same numbers as the traced version (`attribution._trace`) with less work: the clean run has no graph,
    the parameters are frozen during the corrupt run (no weight gradients), and one `autograd.grad` call
    reads every site's gradient. None when the fast path does not apply (the caller traces instead).
    """
    if not allowed(model) or model.arch.replay:
        return None
    if any(s not in _SITES or (s == "embed") for s in sites):
        return None
    hf = model.hf
    n_layers = model.n_layers

    def run(ids: torch.Tensor, grad: bool) -> tuple[dict[tuple[str, int], torch.Tensor], torch.Tensor]:
        acts: dict[tuple[str, int], torch.Tensor] = {}
        handles = []

        def pre(key):
            def hook(_mod, args, kwargs):
                acts[key] = args[0] if args else kwargs["hidden_states"]

            return hook

        def post(key):
            def hook(_mod, _args, out):
                acts[key] = first(out)

            return hook

        try:
            for name, j in [(x, j) for j in range(n_layers) for x in sites]:
                ref = model.site_ref(name, j)
                mod = model.module(ref)
                if ref.use_input:
                    handles.append(mod.register_forward_pre_hook(mine(pre((name, j))), with_kwargs=True))
                else:
                    handles.append(mod.register_forward_hook(mine(post((name, j)))))
            if grad:
                embed = hf.get_input_embeddings()
                handles.append(
                    embed.register_forward_hook(mine(lambda _m, _a, out: out.requires_grad_(True)))
                )
            with torch.set_grad_enabled(grad):
                logits = hf(ids, logits_to_keep=1).logits[:, -1].float()
        finally:
            for h in handles:
                h.remove()
        return acts, logits

    with model.lock:
        params = [p for p in hf.parameters() if p.requires_grad]
        try:
            with torch.no_grad(), onednn_linears(model):
                clean_acts, clean_logits = run(clean_ids, grad=False)
            for p in params:
                p.requires_grad_(False)
            corrupt_acts, corrupt_logits = run(corrupt_ids, grad=True)
            logits = torch.cat([clean_logits, corrupt_logits.detach()])
            value = metric(corrupt_logits, clean_logits[0].clone())[0]
            keys = list(corrupt_acts)
            grads = torch.autograd.grad(value, [corrupt_acts[k] for k in keys], allow_unused=True)
        finally:
            for p in params:
                p.requires_grad_(True)
    products = {}
    for key, g in zip(keys, grads, strict=True):
        diff = (clean_acts[key][0] - corrupt_acts[key][0]).detach()
        products[key] = diff * (g[0] if g is not None else torch.zeros_like(diff))
    with torch.no_grad():
        baselines = metric(logits, clean_logits[0].clone()).float()
    return products, baselines
