"""Attribution patching of a local model without a trace: (clean - corrupt) * d metric / d act per site.

Same numbers as the traced version (`ops.attribution._trace`) with less work: the clean run has no graph,
the parameters are frozen during the corrupt run (no weight gradients), and one `autograd.grad` call reads
every site's gradient. Patterns: the runs use eager attention (whose attention modules return the
probabilities), and d metric / d P = d metric / d O_h @ V_h^T from the head and value sites' tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from ..model import Model
from .fast import allowed, first
from .kernels import pattern_grad, slot
from .onednn import onednn_linears
from .replay import _SITES
from .sites import site as site_record
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
    recs = [site_record(s) for s in sites]
    if any(r.name not in _SITES and not (r.pattern or r.embed_only) for r in recs):
        return None
    hf = model.hf
    n_layers = model.n_layers
    patterns = any(r.pattern for r in recs)
    # a pattern's gradient comes from its heads' outputs and the values they read
    hooked = list(
        dict.fromkeys([r.name for r in recs if not r.pattern] + (["head", "v"] if patterns else []))
    )

    def run(ids: torch.Tensor, grad: bool) -> tuple[dict[tuple[str, int], torch.Tensor], torch.Tensor]:
        acts: dict[tuple[str, int], torch.Tensor] = {}
        handed: dict[tuple[str, int], torch.Tensor] = {}
        handles = []

        def probs(j):
            def hook(_mod, _args, out):
                acts[("pattern", j)] = out[1].detach()  # eager attention: (output, probabilities)

            return hook

        def pre(key):
            def hook(_mod, args, kwargs):
                acts[key] = args[0] if args else kwargs["hidden_states"]

            return hook

        def post(key, copy: bool):
            def hook(_mod, _args, out):
                acts[key] = first(out)
                # a per-head projection output the model may change in place (OLMo's clip_qkv clamps q/k/v):
                # hand the model a copy, so the captured activation and its gradient are the output as returned
                if not copy:
                    return None
                handed[key] = out.clone()  # what the model goes on with (clipped in place, for OLMo)
                return handed[key]

            return hook

        try:
            # (the embed hook comes before the one below that makes the embeddings require grad in place)
            for name, j in [
                (x, j) for j in range(n_layers) for x in hooked if j == 0 or not site_record(x).embed_only
            ]:
                ref = model.site_ref(name, j)
                mod = model.module(ref)
                if ref.use_input:
                    handles.append(mod.register_forward_pre_hook(mine(pre((name, j))), with_kwargs=True))
                else:
                    copy = ref.layout is not None
                    handles.append(mod.register_forward_hook(mine(post((name, j), copy))))
            if patterns:
                for j in range(n_layers):
                    attn = model.module(model.site_ref("pattern", j))
                    handles.append(attn.register_forward_hook(mine(probs(j))))
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
        # the values attention read (after any in-place change), kept apart from the site's activation
        for (name, j), x in handed.items():
            if name == "v":
                acts[("values", j)] = x
        return acts, logits

    eager = model.eager_attention() if patterns else contextlib.nullcontext()
    with model.lock, eager:
        params = [p for p in hf.parameters() if p.requires_grad]
        try:
            with torch.no_grad(), onednn_linears(model):
                clean_acts, clean_logits = run(clean_ids, grad=False)
            for p in params:
                p.requires_grad_(False)
            corrupt_acts, corrupt_logits = run(corrupt_ids, grad=True)
            logits = torch.cat([clean_logits, corrupt_logits.detach()])
            value = metric(corrupt_logits, clean_logits[0].clone())[0]
            keys = [k for k in corrupt_acts if k[0] != "values" and not site_record(k[0]).pattern]
            grads = torch.autograd.grad(value, [corrupt_acts[k] for k in keys], allow_unused=True)
        finally:
            for p in params:
                p.requires_grad_(True)
    products, grad_of = {}, {}
    for key, g in zip(keys, grads, strict=True):
        diff = (clean_acts[key][0] - corrupt_acts[key][0]).detach()
        grad_of[key] = g[0] if g is not None else torch.zeros_like(diff)
        if key[0] in sites:
            products[key] = diff * grad_of[key]
    for j in range(n_layers) if patterns else ():
        heads = grad_of[("head", j)].view(-1, model.n_heads, model.d_head)  # [T, H, d]
        used = corrupt_acts.get(("values", j), corrupt_acts[("v", j)])
        value = slot(used.detach(), model.site_ref("v", j).layout)[0]  # [T, kv, d]
        dprobs = clean_acts[("pattern", j)][0] - corrupt_acts[("pattern", j)][0]  # [H, T, T]
        products[("pattern", j)] = dprobs * pattern_grad(heads, value.transpose(0, 1))
    with torch.no_grad():
        baselines = metric(logits, clean_logits[0].clone()).float()
    return products, baselines
