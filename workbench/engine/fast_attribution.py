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
from .padding import left_pad, pad_id
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
    if not applies(model, sites):
        return None
    return _attribution(model, {"input_ids": clean_ids}, {"input_ids": corrupt_ids}, [0], [metric], sites)[0]


def applies(model: Model, sites: Sequence[str]) -> bool:
    """Whether the local attribution (one example or a padded batch) can run for these sites."""
    if not allowed(model) or model.arch.replay:
        return False
    recs = [site_record(s) for s in sites]
    return not any(r.name not in _SITES and not (r.pattern or r.embed_only) for r in recs)


def attribution_padded(
    model: Model, examples: Sequence[tuple[torch.Tensor, torch.Tensor, Any]], sites: Sequence[str]
) -> list[tuple[dict[tuple[str, int], torch.Tensor], torch.Tensor]] | None:
    """`attribution` of many (clean ids, corrupt ids, metric) examples at once: the clean prompts in one
    left-padded forward, the corrupt ones in another (attention mask and explicit position ids, so each
    example sees the positions it has alone), one backward of the sum of the examples' metrics (each row's
    gradient is its own metric's: rows do not interact). Each example's products come without its pad.
    None when the local path does not apply."""
    if not applies(model, sites):
        return None
    pid = pad_id(model.tokenizer)
    clean = left_pad([c for c, _, _ in examples], pid)
    corrupt = left_pad([k for _, k, _ in examples], pid)
    assert clean.pad == corrupt.pad, "clean and corrupt prompts of an example have one length"
    return _attribution(
        model, clean.inputs(), corrupt.inputs(), clean.pad, [m for _, _, m in examples], sites
    )


def _attribution(
    model: Model,
    clean_inputs: dict[str, torch.Tensor],
    corrupt_inputs: dict[str, torch.Tensor],
    pads: list[int],
    metrics: Sequence[Any],
    sites: Sequence[str],
) -> list[tuple[dict[tuple[str, int], torch.Tensor], torch.Tensor]]:
    """Row i of the batches is example i, its first `pads[i]` columns padding (cut from its products)."""
    recs = [site_record(s) for s in sites]
    hf = model.hf
    n_layers = model.n_layers
    patterns = any(r.pattern for r in recs)
    # a pattern's gradient comes from its heads' outputs and the values they read
    hooked = list(
        dict.fromkeys([r.name for r in recs if not r.pattern] + (["head", "v"] if patterns else []))
    )

    def run(
        inputs: dict[str, torch.Tensor], grad: bool
    ) -> tuple[dict[tuple[str, int], torch.Tensor], torch.Tensor]:
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
                logits = hf(**inputs, logits_to_keep=1).logits[:, -1].float()
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
                clean_acts, clean_logits = run(clean_inputs, grad=False)
            for p in params:
                p.requires_grad_(False)
            corrupt_acts, corrupt_logits = run(corrupt_inputs, grad=True)
            # rows do not interact, so the gradient of the sum at row i is example i's metric's own
            value = sum(
                m(corrupt_logits[i : i + 1], clean_logits[i].clone())[0] for i, m in enumerate(metrics)
            )
            keys = [k for k in corrupt_acts if k[0] != "values" and not site_record(k[0]).pattern]
            grads = torch.autograd.grad(value, [corrupt_acts[k] for k in keys], allow_unused=True)
        finally:
            for p in params:
                p.requires_grad_(True)
    out = []
    for i, pad in enumerate(pads):
        products, grad_of = {}, {}
        for key, g in zip(keys, grads, strict=True):
            diff = (clean_acts[key][i, pad:] - corrupt_acts[key][i, pad:]).detach()
            grad_of[key] = g[i, pad:] if g is not None else torch.zeros_like(diff)
            if key[0] in sites:
                products[key] = diff * grad_of[key]
        for j in range(n_layers) if patterns else ():
            heads = grad_of[("head", j)].view(-1, model.n_heads, model.d_head)  # [T, H, d]
            used = corrupt_acts.get(("values", j), corrupt_acts[("v", j)])
            value = slot(used.detach(), model.site_ref("v", j).layout)[i, pad:]  # [T, kv, d]
            probs = ("pattern", j)
            dprobs = clean_acts[probs][i, :, pad:, pad:] - corrupt_acts[probs][i, :, pad:, pad:]  # [H, T, T]
            products[("pattern", j)] = dprobs * pattern_grad(heads, value.transpose(0, 1))
        with torch.no_grad():
            logits = torch.stack([clean_logits[i], corrupt_logits[i].detach()])
            baselines = metrics[i](logits, clean_logits[i].clone()).float()
        out.append((products, baselines))
    return out
